"""Backbone + head + VAE decoder loaded from files: the eager PyTorch pipeline end to end.

The checkpoint's family (``far_export/families``) gives the sampling loop: K iterations over a
random order for FAR/MAR (``reference/sampler.py``), L steps of one token for FAR-Causal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import (ModelCheckpoint, VAECheckpoint, build_model, build_vae,
                          load_model_checkpoint, load_vae_checkpoint)
from ..families import Family, family_of_config


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

    @property
    def family(self) -> Family:
        return family_of_config(self.ckpt.config)

    def model_info(self) -> dict:
        """``kind``, ``head_kind`` and ``seq_len`` as a bundle manifest's model records them."""
        return self.family.model_info(self.ckpt.config)

    def check_k(self, K) -> int:
        """K as given, or the variant's default (FAR-Causal: K is L or left out)."""
        return self.family.variant(self.ckpt.config).check_k(K, self.model_info())

    def tokens(self, labels, **kw) -> torch.Tensor:
        """Token latents [B, L, C] of the family's reference sampler (``num_iter`` is K)."""
        return self.family.sample(self.backbone, self.head, labels, **kw)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return self.vae(tokens).numpy()

    def generate(self, labels, **kw) -> np.ndarray:
        """Images [B, 3, H, W] in [-1, 1]."""
        return self.decode(self.tokens(labels, **kw))
