"""The LDM KL-VAE (MAR's ``kl16``), key names as in LDM so ``kl16.ckpt`` loads as-is.

Decoding is all deployment needs; the encoder is here for the demo's own VAE training.
``decode_tokens`` takes the token sequence [B, L, C] (channels-last raster order), undoes the
latent scale and returns the image in [-1, 1].
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..config import VAEConfig


def Normalize(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, ch), num_channels=ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = Normalize(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = Normalize(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        h = self.norm(x)
        B, C, H, W = h.shape
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)
        k = self.k(h).reshape(B, C, H * W)
        v = self.v(h).reshape(B, C, H * W)
        w = torch.softmax((q @ k) * (C ** -0.5), dim=-1)
        h = (v @ w.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Level(nn.Module):
    """One resolution level: ``block``, ``attn`` and ``upsample``/``downsample`` as in LDM."""


def _mid(ch: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch)
    mid.attn_1 = AttnBlock(ch)
    mid.block_2 = ResnetBlock(ch, ch)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_ch, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            lvl = _Level()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                lvl.block.append(ResnetBlock(cin, cfg.ch * mult))
                cin = cfg.ch * mult
                if i in cfg.attn_levels:
                    lvl.attn.append(AttnBlock(cin))
            if i != len(cfg.ch_mult) - 1:
                lvl.downsample = Downsample(cin)
            self.down.append(lvl)
        self.mid = _mid(cin)
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for lvl in self.down:
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        up = []
        for i in reversed(range(len(cfg.ch_mult))):
            lvl = _Level()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                lvl.block.append(ResnetBlock(cin, cfg.ch * cfg.ch_mult[i]))
                cin = cfg.ch * cfg.ch_mult[i]
                if i in cfg.attn_levels:
                    lvl.attn.append(AttnBlock(cin))
            if i != 0:
                lvl.upsample = Upsample(cin)
            up.insert(0, lvl)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for lvl in reversed(self.up):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEDecoder(nn.Module):
    """``post_quant_conv`` + ``decoder``: the part of AutoencoderKL that sampling needs."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def decode_latent(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, tokens):
        """Tokens [B, h*w, C] (scaled latents, channels-last raster) to an image in [-1, 1]."""
        L, C = int(tokens.shape[1]), int(tokens.shape[2])   # static; only the batch is dynamic
        h = math.isqrt(L)
        z = tokens.transpose(1, 2).reshape(-1, C, h, L // h) / self.cfg.scale_factor
        return self.decode_latent(z)


class AutoencoderKL(VAEDecoder):
    """The whole VAE (encoder, ``quant_conv``, decoder), for training the demo's own VAE."""

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)

    def encode_moments(self, x):
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


def latent_to_tokens(z: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """[B, C, h, w] latent to the scaled token sequence [B, h*w, C] (channels-last raster)."""
    B, C, H, W = z.shape
    return (z * scale_factor).reshape(B, C, H * W).transpose(1, 2)
