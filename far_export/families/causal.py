"""The causal family (FAR-Causal): a GPT-style transformer over raster tokens with a KV cache.

Detected by ``tok_embed.weight`` and ``blocks.0.attn.qkv.weight``; the config is
``config.infer_causal_config``; the model is ``reference/causal.py``. Three backbone graphs
(``far_runtime.variants.causal``): ``causal_prefill`` (labels -> z_0, the cache),
``causal_step`` (token i - 1, its position, cache -> z_i, cache) and ``causal_recompute``
(the whole prefix -> z of the next token, no cache).

Validation points (``validation_points``): token positions 0 (prefill), 1, L/2, L-1 (step and
recompute), every batch of the export's grid, CFG off (B rows) and on (2B rows: the
conditional labels, then the unconditional label for the twins, which share the tokens).
Inputs are real: the cache fed to a step at token i is the reference's own cache after tokens
0..i-2 (prefill then reference steps over random tokens), and a recompute point is also
compared with the cached reference's z (``z_vs_cached_reference``).

The reference sampler (``sample_causal``): L steps of one token each, the shortcut head O steps
per token. Randomness: a ``far_runtime.Randomness``; its ``noise`` [B, L, C] is used per
position (token i starts from ``temperature * noise[:, i]``, its CFG twin shares it); its
``orders`` are unused (the order is raster by construction) but still drawn, so one seed
gives the same noise here and in the runtime. ``use_cache=False`` recomputes the whole
prefix every step (``forward``). Verify runs the cache loop at every fused O and CFG 1 and 3,
and the recompute loop once more at the largest O and CFG.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from far_runtime.accel import accel_options, resolve
from far_runtime.errors import FarError
from far_runtime.randomness import Randomness, draw_randomness
from far_runtime.schedule import check_head_steps
from far_runtime.variants.causal import cfg_at, positions, step_position, token_rows

from ..config import CausalConfig, CausalModelConfig, HeadConfig, infer_causal_config
from ..reference.causal import CausalBackbone
from ..reference.heads import SimpleMLPAdaLN
from ..reference.sampler import shortcut_sample
from .base import Family


class PrefillGraph(nn.Module):
    """labels -> z of token 0, the KV cache with the class slots filled (rest zeros)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, labels):
        return self.backbone.prefill(labels)


class StepGraph(nn.Module):
    """token i - 1, its sequence position, cache -> z of token i, cache with slot pos written."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, token, pos, cache):
        return self.backbone.step(token, pos, cache)


class RecomputeGraph(nn.Module):
    """The whole prefix tokens [B, n, C] -> z of token n (no cache: every step from scratch)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, tokens, labels):
        return self.backbone(tokens, labels)[:, -1]


def check_labels(labels, num_classes: int) -> np.ndarray:
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise FarError(f"Class labels must be integers, got {labels!r}.") from None
    if len(labels) < 1:
        raise FarError("Batch size must be at least 1.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FarError(f"Class labels must be in 0..{num_classes - 1}, got {labels.tolist()}.")
    return labels


@torch.no_grad()
def sample_causal(backbone: CausalBackbone, head: SimpleMLPAdaLN, labels, head_steps: int = 8,
                  cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                  seed: int = 0, randomness: Randomness | None = None, use_cache: bool = True,
                  trace: list | None = None, progress=None, head_schedule=None, cfg_interval=None,
                  cfg_cache=None) -> torch.Tensor:
    """Token latents [B, L, C] of FAR-Causal sampling (see the module docstring). The
    acceleration options (``far_runtime/accel.py``) give each token its head steps and whether
    it is guided; the unconditional rows run where ``token_rows`` says (with the cache: until
    the last guided token, then the cache is cut to the conditional rows)."""
    c = backbone.cfg
    L, C, P = c.seq_len, c.token_dim, c.class_tokens
    labels = check_labels(labels, c.num_classes)
    B = len(labels)
    check_head_steps(head_steps, "O (shortcut head steps)")
    cfg_at(0, L, cfg, cfg_schedule)                        # validates the schedule name
    opts = resolve(accel_options(head_schedule, cfg_interval, cfg_cache), L, head_steps, cfg != 1.0,
                   list(range(L)), L, shortcut=True, cache_allowed=False)
    rows = token_rows([o.guided for o in opts], B, "cache" if use_cache else "recompute")
    if randomness is None:
        randomness = draw_randomness(seed, B, L, C)
    randomness.check(B, L, C)
    lab_c = torch.from_numpy(labels)
    lab_2 = torch.from_numpy(np.concatenate([labels, np.full(B, c.num_classes)]))
    noise = torch.from_numpy(randomness.noise)
    tokens = torch.zeros(B, L, C)
    z, cache = backbone.prefill(lab_2 if rows[0] > B else lab_c)
    for i, o in enumerate(opts):
        reps = rows[i] // B
        if i > 0:
            if use_cache:
                cache = cache[:, :, :rows[i]]          # the unconditional rows end after the last guided token
                pos = torch.tensor([step_position(i, P)], dtype=torch.int64)
                z, cache = backbone.step(tokens[:, i - 1].repeat(reps, 1), pos, cache)
            else:
                z = backbone(tokens[:, :i].repeat(reps, 1, 1), lab_2 if reps > 1 else lab_c)[:, i]
        cfg_i = cfg_at(i, L, cfg, cfg_schedule) if o.guided else None
        tokens[:, i] = shortcut_sample(head, noise[:, i] * temperature, z if o.guided else z[:B],
                                       o.head_steps, cfg_i)
        if trace is not None:
            trace.append(tokens.clone())
        if progress is not None:
            progress(i)
    return tokens


def _case(c, batch: int, use_cfg: bool, rng: np.random.Generator):
    """Labels (CFG: then the unconditional twins) and random tokens shared by the twins."""
    labels = rng.integers(0, c.num_classes, size=batch)
    if use_cfg:
        labels = np.concatenate([labels, np.full(batch, c.num_classes)])
    tokens = rng.standard_normal((batch, c.seq_len, c.token_dim)).astype(np.float32)
    tokens = np.concatenate([tokens, tokens]) if use_cfg else tokens
    return labels.astype(np.int64), tokens


class Causal(Family):
    name = "causal"
    config_class = CausalModelConfig
    backbone_class = CausalBackbone
    heads_key = "heads"
    graph_wrappers = {"causal_prefill": PrefillGraph, "causal_step": StepGraph,
                      "causal_recompute": RecomputeGraph}
    precisions = ("fp32",)     # fp16/int8 calibration records the masked loop's inputs
    verify_note = "(K = L: one token per step; last row: recompute mode)"

    def detect(self, sd):
        return "tok_embed.weight" in sd and "blocks.0.attn.qkv.weight" in sd

    def infer_config(self, sd, args=None, metadata=None, heads=None, force_heads=False):
        return infer_causal_config(sd, args, metadata, heads, force_heads)

    def backbone_entry(self, cfg):
        bb = cfg.backbone
        return {"class_tokens": bb.class_tokens, "context": bb.context, "depth": bb.depth,
                "heads": bb.heads, "head_dim": bb.head_dim}

    def describe(self, cfg, counts):
        bb, hd = cfg.backbone, cfg.head
        return [f"backbone    {counts['backbone'] / 1e6:.1f}M params: causal transformer (GPT-style, "
                f"KV cache), width {bb.width}, depth {bb.depth}, heads {bb.heads} ({bb.heads_rule}), "
                f"tokens {bb.seq_len}x{bb.token_dim} in raster order, {bb.class_tokens} class "
                f"token(s), context {bb.context}, classes {bb.num_classes}",
                f"head        {counts['head'] / 1e6:.1f}M params: shortcut (FAR shortcut), width "
                f"{hd.width}, depth {hd.depth}, out {hd.out_dim}, prefix {hd.prefix}",
                f"sampling    K = L = {bb.seq_len} steps of one token (not adjustable), O head "
                "steps per token"]

    @torch.no_grad()
    def validation_points(self, spec, module, model, batches, rng):
        name = spec.name
        if name not in self.graph_wrappers:
            yield from super().validation_points(spec, module, model, batches, rng)
            return
        backbone = module.backbone
        c = backbone.cfg
        at = positions(c.seq_len)
        for batch in batches:
            for use_cfg in (False, True):
                labels, tokens = _case(c, batch, use_cfg, rng)
                dims = {"batch": len(labels), "cfg": use_cfg}
                if name == "causal_prefill":
                    yield {**dims, "token": 0}, {"labels": labels}, {}
                    continue
                tok_t = torch.from_numpy(tokens)
                _, cache = backbone.prefill(torch.from_numpy(labels))
                for i in range(1, c.seq_len):
                    pos = torch.tensor([step_position(i, c.class_tokens)], dtype=torch.int64)
                    z_ref, new_cache = backbone.step(tok_t[:, i - 1], pos, cache)
                    if i in at and name == "causal_step":
                        yield {**dims, "token": i}, {"token": tokens[:, i - 1], "pos": pos.numpy(),
                                                      "cache": cache.numpy()}, {}
                    elif i in at:
                        yield ({**dims, "token": i, "n_known": i},
                               {"tokens": np.ascontiguousarray(tokens[:, :i]), "labels": labels},
                               {"z_vs_cached_reference": ("z", z_ref.numpy())})
                    cache = new_cache

    def sample(self, backbone, head, labels, num_iter=None, mode=None, **kw):
        v = self.module_variant(backbone, head)
        v.check_mode(mode)
        v.check_k(num_iter, {"seq_len": backbone.cfg.seq_len})
        return sample_causal(backbone, head, labels, use_cache=mode != "recompute", **kw)

    def verify_configs(self, pipe, K=None, O=None, cfg=None, batch=None):
        L = pipe.variant.check_k(K, pipe.model)
        Os, cfgs, (b,) = self.verify_axes(pipe, O, cfg, batch)
        return ([(L, o, c, b, "cache") for o in Os for c in cfgs]
                + [(L, max(Os), max(cfgs), b, "recompute")])


# --- writing: the trainer layout (the demo trainer, random test checkpoints) ----------------

HEAD_PREFIX = "diffloss.net."


def causal_head_config(bb: CausalConfig, depth: int, width: int) -> HeadConfig:
    """The shortcut head of a causal backbone ``bb`` (conditions of the backbone's width)."""
    return HeadConfig(kind="shortcut", width=width, depth=depth, token_dim=bb.token_dim,
                      cond_dim=bb.width, out_dim=bb.token_dim, prefix=HEAD_PREFIX)


def causal_state_dict(backbone, head) -> dict:
    """Backbone and head weights under the names ``infer_causal_config`` reads."""
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    sd.update({HEAD_PREFIX + k: v.detach().clone() for k, v in head.state_dict().items()})
    return sd


def causal_args(cfg: CausalConfig, **extra):
    """The trainer's ``args`` (an ``argparse.Namespace``): what the shapes cannot tell."""
    import argparse
    return argparse.Namespace(model="far_causal", num_heads=cfg.heads,
                              class_tokens=cfg.class_tokens, class_num=cfg.num_classes,
                              token_embed_dim=cfg.token_dim, seq_len=cfg.seq_len, **extra)
