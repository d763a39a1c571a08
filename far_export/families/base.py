"""What a model family is on the torch side: a backbone (masked, causal) read, built, exported,
sampled and verified, with the head kinds (shortcut, diffusion) shared by every family.

The exporter asks a family for everything that differs between FAR/MAR and FAR-Causal and for
nothing else: detection from a state dict and config inference (``checkpoint.py``), its
reference modules (``build_modules``), the manifest's model entry, its backbone graphs' torch
wrappers (``export/modules.py``) and validation points (``export/validate.py``), its reference
sampler (``reference/pipeline.py``) and its verify configurations (``verify.py``). The
runtime's half of a family is ``far_runtime.variants`` (specs, plan, loop); a family here
reads its variant there. ``families/__init__.py`` registers one instance per family.
"""
from __future__ import annotations

import torch

from far_runtime.errors import FarError
from far_runtime.specs import sample_inputs
from far_runtime.variants import Variant, validation_grid, variant_for

from ..reference.heads import SimpleMLPAdaLN


class Family:
    name = ""                  # far_runtime's variant family: the manifest's model.kind (absent: masked)
    config_class = None        # config.ModelConfig or config.CausalModelConfig
    backbone_class = None      # the reference backbone module
    heads_key = ""             # the backbone config field --heads sets
    graph_wrappers: dict = {}  # backbone graph name -> torch wrapper class (of the backbone)
    precisions = ("fp32", "fp16", "int8", "auto")
    verify_note = ""           # a line under verify's table

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # --- checkpoint and config ---------------------------------------------------------
    def detect(self, sd: dict) -> bool:
        """Whether a state dict has this family's backbone."""
        raise NotImplementedError

    def infer_config(self, sd: dict, args=None, metadata=None, heads=None, force_heads=False):
        raise NotImplementedError

    def config_from_dict(self, d: dict):
        return self.config_class.from_dict(d)

    def modules(self, cfg):
        """Backbone and head with fresh weights (on the current default device)."""
        return self.backbone_class(cfg.backbone), SimpleMLPAdaLN(cfg.head)

    def expected_keys(self, cfg) -> dict:
        """Every tensor name of a checkpoint of ``cfg`` and its shape (counted on meta tensors)."""
        with torch.device("meta"):
            backbone, head = self.modules(cfg)
            out = {k: v.shape for k, v in backbone.state_dict().items()}
            out.update({cfg.head.prefix + k: v.shape for k, v in head.state_dict().items()})
        return out

    def param_counts(self, cfg) -> dict:
        with torch.device("meta"):
            backbone, head = self.modules(cfg)
            return {"backbone": sum(p.numel() for p in backbone.parameters()),
                    "head": sum(p.numel() for p in head.parameters())}

    def build_modules(self, cfg, backbone_sd: dict, head_sd: dict):
        """Backbone and head with the given weights, in eval mode."""
        backbone, head = self.modules(cfg)
        backbone.load_state_dict(backbone_sd, strict=True)
        head.load_state_dict(head_sd, strict=True)
        return backbone.eval(), head.eval()

    def describe(self, cfg, counts: dict) -> list[str]:
        """``far-export inspect`` lines of the backbone and head."""
        raise NotImplementedError

    # --- the manifest's model entry and the runtime variant ------------------------------
    def kind_entry(self) -> dict:
        """``model.kind`` as the manifest writes it (absent for the masked family)."""
        return {"kind": self.name}

    def backbone_entry(self, cfg) -> dict:
        """The model-entry keys this family adds to the shared ones."""
        return {}

    def model_entry(self, cfg, vae_cfg=None) -> dict:
        bb, hd = cfg.backbone, cfg.head
        side = int(round(bb.seq_len ** 0.5))
        if side * side != bb.seq_len:
            raise FarError(f"The token sequence has {bb.seq_len} tokens, which is not a square grid.")
        diffusion = hd.kind == "diffusion"
        return {**self.kind_entry(), "seq_len": bb.seq_len, "token_dim": bb.token_dim,
                "cond_dim": hd.cond_dim, "num_classes": bb.num_classes, "head_kind": hd.kind,
                "diffusion_steps": hd.diffusion_steps if diffusion else 0,
                **self.backbone_entry(cfg),
                "image_size": side * vae_cfg.downsample if vae_cfg else 0,
                "image_channels": vae_cfg.out_ch if vae_cfg else 0,
                "vae_scale": vae_cfg.scale_factor if vae_cfg else 0.0,
                **({"timestep_respacing": hd.timestep_respacing}
                   if diffusion and hd.timestep_respacing else {})}

    def model_info(self, cfg) -> dict:
        """What the runtime's variant registry reads: kind, head kind and sequence length."""
        return self._info(cfg.backbone, cfg.head)

    def _info(self, backbone_cfg, head_cfg) -> dict:
        return {**self.kind_entry(), "head_kind": head_cfg.kind, "seq_len": backbone_cfg.seq_len}

    def variant(self, cfg) -> Variant:
        return variant_for(self.model_info(cfg))

    def module_variant(self, backbone, head) -> Variant:
        """The variant of built reference modules (what their configs say)."""
        return variant_for(self._info(backbone.cfg, head.cfg))

    def check_precision(self, cfg, precision: str) -> None:
        if precision not in self.precisions:
            raise FarError(f"{self.variant(cfg).title} bundles are {', '.join(self.precisions)} "
                           f"only for now (got --precision {precision}).")

    # --- export ------------------------------------------------------------------------
    def graph_module(self, name: str, backbone) -> torch.nn.Module:
        return self.graph_wrappers[name](backbone).eval()

    def validation_points(self, spec, module, model: dict, batches, rng):
        """``(dims, inputs, extra)`` per validation point of one graph: inputs in the spec's
        order, and ``extra`` more comparisons ``{name: (output, reference array)}``. By
        default the runtime's grid (``validation_grid``) with inputs drawn like the loop's."""
        for dims in validation_grid(spec, model, batches):
            yield dims, sample_inputs(spec, dims, model, rng), {}

    # --- reference and verify ----------------------------------------------------------
    def sample(self, backbone, head, labels, num_iter=None, mode=None, **kw) -> torch.Tensor:
        """The reference sampler: token latents [B, L, C]."""
        raise NotImplementedError

    def verify_configs(self, pipe, K=None, O=None, cfg=None, batch=None) -> list[tuple]:
        """``(K, O, cfg, batch, mode)`` per verify run of ``pipe``'s bundle (options given
        explicitly are the only value of their axis)."""
        raise NotImplementedError

    @staticmethod
    def verify_axes(pipe, O=None, cfg=None, batch=None) -> tuple[list, list, list]:
        """O, CFG and batch values of the verify runs: every fused O, CFG 1 and 3, batch 2."""
        Os = [O] if O is not None else (pipe.bundle.manifest["head_steps"] or [1])
        cfgs = [cfg] if cfg is not None else [1.0, 3.0]
        batches = [batch] if batch is not None else [2]
        max_batch = pipe.bundle.manifest["max_batch"]
        if any(b > max_batch for b in batches):
            raise FarError(f"--batch {batches[0]} is larger than the bundle's max batch {max_batch}.")
        return Os, cfgs, batches
