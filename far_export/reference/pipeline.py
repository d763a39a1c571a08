"""Backbone + head + VAE decoder loaded from files: the eager PyTorch pipeline end to end."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import (ModelCheckpoint, VAECheckpoint, build_model, build_vae,
                          load_model_checkpoint, load_vae_checkpoint)
from .sampler import sample_tokens


@dataclass
class ReferencePipeline:
    ckpt: ModelCheckpoint
    vae_ckpt: VAECheckpoint | None
    backbone: torch.nn.Module
    head: torch.nn.Module
    vae: torch.nn.Module | None

    @classmethod
    def load(cls, checkpoint: str, vae: str | None = None, weights: str = "ema",
             heads: int | None = None, force_heads: bool = False) -> "ReferencePipeline":
        ck = load_model_checkpoint(checkpoint, weights, heads, force_heads=force_heads)
        vk = load_vae_checkpoint(vae) if vae else None
        backbone, head = build_model(ck)
        return cls(ck, vk, backbone, head, build_vae(vk) if vk else None)

    def model_info(self) -> dict:
        """``kind``, ``head_kind`` and ``seq_len`` as a bundle manifest's model records them."""
        info = {"head_kind": self.ckpt.config.head.kind, "seq_len": self.backbone.cfg.seq_len}
        if getattr(self.ckpt.config, "kind", "") == "causal":
            info["kind"] = "causal"
        return info

    def check_k(self, K) -> int:
        """K as given, or the variant's default (FAR-Causal: K is L or left out)."""
        from far_runtime.variants import variant_for
        return variant_for(self.model_info()).check_k(K, self.model_info())

    def tokens(self, labels, **kw) -> torch.Tensor:
        if self.model_info().get("kind") == "causal":          # FAR-Causal: its own loop, K is L
            from .causal_sampler import sample_causal
            self.check_k(kw.pop("num_iter", None))
            return sample_causal(self.backbone, self.head, labels, **kw)
        return sample_tokens(self.backbone, self.head, labels, **kw)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return self.vae(tokens).numpy()

    def generate(self, labels, **kw) -> np.ndarray:
        """Images [B, 3, H, W] in [-1, 1]."""
        return self.decode(self.tokens(labels, **kw))
