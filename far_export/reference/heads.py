"""The two token heads, both MAR's SimpleMLPAdaLN shape (names as in MAR's diffloss.net).

- ``diffusion`` (MAR): output = epsilon and the learned variance range (2 x token_dim); the
  time input is the original DDPM timestep index 0..999.
- ``shortcut`` (FAR): output = velocity (token_dim); a second embedder ``step_embed`` takes
  the step-size level log2(1/d). The flow time t in [0, 1] is fed as ``TIME_SCALE * t`` so the
  sinusoid spans the same range as MAR's 0..999 timesteps (a choice of this toolkit: no
  official FAR code exists).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import HeadConfig

TIME_SCALE = 1000.0
LN_EPS = 1e-6


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32   # float64: validation
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(width, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.input_proj = nn.Linear(cfg.token_dim, W)
        self.time_embed = TimestepEmbedder(W, cfg.freq_dim)
        if cfg.kind == "shortcut":
            self.step_embed = TimestepEmbedder(W, cfg.freq_dim)
        self.cond_embed = nn.Linear(cfg.cond_dim, W)
        self.res_blocks = nn.ModuleList([ResBlock(W) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(W, cfg.out_dim)

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02):
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * std)
        return self

    def forward(self, x, t, c, level=None):
        """One head evaluation. ``t``: DDPM index (diffusion) or flow time in [0,1] (shortcut);
        ``level``: log2(1/d) of the shortcut step size d."""
        if self.cfg.kind == "shortcut":
            y = self.time_embed(t * TIME_SCALE) + self.step_embed(level)
        else:
            y = self.time_embed(t)
        y = y + self.cond_embed(c)
        h = self.input_proj(x)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)

    def velocity(self, x, t: float, d: float, c):
        """Shortcut velocity at scalar time t and step size d for every row."""
        n = x.shape[0]
        tt = torch.full((n,), float(t), dtype=x.dtype, device=x.device)
        lv = torch.full((n,), math.log2(1.0 / d), dtype=x.dtype, device=x.device)
        return self(x, tt, c, lv)
