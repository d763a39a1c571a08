"""The masked family (FAR: shortcut head, MAR: diffusion head): MAR's encoder-decoder backbone.

Detected by ``z_proj.weight``; the config is ``config.infer_model_config``; one backbone
graph (``backbone``: tokens, labels, known_idx, pred_idx -> z at the positions to predict),
validated on the runtime's grid; the reference sampler is ``reference/sampler.py`` (K
iterations over a random order); verify runs K (default min(16, L)) x every fused O x CFG
1 and 3.
"""
from __future__ import annotations

import itertools

from torch import nn

from ..config import ModelConfig, infer_model_config
from ..reference.backbone import Backbone
from ..reference.sampler import sample_tokens
from .base import Family


class BackboneGraph(nn.Module):
    """The ``backbone`` graph: the reference backbone as it is."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, tokens, labels, known_idx, pred_idx):
        return self.backbone(tokens, labels, known_idx, pred_idx)


def _m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


class Masked(Family):
    name = "masked"
    config_class = ModelConfig
    backbone_class = Backbone
    heads_key = "encoder_heads"
    graph_wrappers = {"backbone": BackboneGraph}

    def detect(self, sd):
        return "z_proj.weight" in sd

    def infer_config(self, sd, args=None, metadata=None, heads=None, force_heads=False):
        return infer_model_config(sd, args, metadata, heads, force_heads)

    def kind_entry(self):
        return {}                                  # FAR/MAR bundles have no model.kind

    def describe(self, cfg, counts):
        bb, hd = cfg.backbone, cfg.head
        what = (f"MAR diffusion, {hd.diffusion_steps} steps" if hd.kind == "diffusion"
                else "FAR shortcut")
        return [f"backbone    {_m(counts['backbone'])} params: width {bb.encoder_width}/{bb.decoder_width}, "
                f"depth {bb.encoder_depth}+{bb.decoder_depth}, heads {bb.encoder_heads}/{bb.decoder_heads} "
                f"({bb.heads_rule}), tokens {bb.seq_len}x{bb.token_dim}, buffer {bb.buffer_size}, "
                f"classes {bb.num_classes}",
                f"head        {_m(counts['head'])} params: {hd.kind} ({what}), "
                f"width {hd.width}, depth {hd.depth}, out {hd.out_dim}, prefix {hd.prefix}"]

    def sample(self, backbone, head, labels, num_iter=None, mode=None, **kw):
        self.module_variant(backbone, head).check_mode(mode)
        if num_iter is not None:
            kw["num_iter"] = num_iter
        return sample_tokens(backbone, head, labels, **kw)

    def verify_configs(self, pipe, K=None, O=None, cfg=None, batch=None):
        Os, cfgs, batches = self.verify_axes(pipe, O, cfg, batch)
        Ks = [K] if K is not None else [min(16, pipe.model["seq_len"])]
        return list(itertools.product(Ks, Os, cfgs, batches, [None]))
