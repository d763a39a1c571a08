"""MAR's encoder-decoder backbone, with MAR's parameter names so its state dicts load as-is.

The encoder keeps only the buffer plus the known tokens. Which tokens are known is given as
an index tensor ``known_idx`` [B, n_known] (positions, sorted), never as a boolean mask, so
the gather has a dynamic length and exports to ONNX as a plain Gather.

Class labels carry an unconditional sentinel: label ``num_classes`` selects ``fake_latent``,
so a CFG batch (conditional rows, then their unconditional twins) is one call.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..config import BackboneConfig

LN_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """timm's ViT Block as MAR uses it (pre-norm, qkv bias, GELU MLP, no layer scale)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def random_init_(model: nn.Module, generator: torch.Generator | None = None, std: float = 0.02):
    """In place: N(0, std) for every matrix, LayerNorm 1/0, Linear biases 0 (MAR-like scale;
    the backbones' random weights for tests and for training from scratch)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
    return model


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        E, D, L, Bf = cfg.encoder_width, cfg.decoder_width, cfg.seq_len, cfg.buffer_size
        self.class_emb = nn.Embedding(cfg.num_classes, E)
        self.fake_latent = nn.Parameter(torch.zeros(1, E))
        self.z_proj = nn.Linear(cfg.token_dim, E, bias=True)
        self.z_proj_ln = nn.LayerNorm(E, eps=LN_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + Bf, E))
        self.encoder_blocks = nn.ModuleList(
            [Block(E, cfg.encoder_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(E, eps=LN_EPS)
        self.decoder_embed = nn.Linear(E, D, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + Bf, D))
        self.decoder_blocks = nn.ModuleList(
            [Block(D, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(D, eps=LN_EPS)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, L, D))

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02):
        """Random weights (MAR-like scale) for tests and training from scratch."""
        return random_init_(self, generator, std)

    def keep_index(self, known_idx: torch.Tensor) -> torch.Tensor:
        """Sequence indices kept by the encoder: all buffer slots, then the known positions."""
        B = known_idx.shape[0]
        buf = torch.arange(self.cfg.buffer_size, device=known_idx.device, dtype=known_idx.dtype)
        return torch.cat([buf.unsqueeze(0).expand(B, -1), known_idx + self.cfg.buffer_size], 1)

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.class_emb.weight, self.fake_latent], 0)
        return table[labels]

    def encode(self, tokens, labels, known_idx):
        x = self.z_proj(tokens)
        B, _, E = x.shape
        cls = self.class_embedding(labels).unsqueeze(1).expand(B, self.cfg.buffer_size, E)
        x = torch.cat([cls, x], 1)                      # buffer slots hold the class embedding
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = self.keep_index(known_idx)
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, E))
        for blk in self.encoder_blocks:
            x = blk(x)
        return self.encoder_norm(x), keep

    def decode(self, x, keep):
        x = self.decoder_embed(x)
        B, _, D = x.shape
        full = self.mask_token.expand(B, self.cfg.seq_len + self.cfg.buffer_size, D)
        # under autocast the Linear above gives bf16 while mask_token stays fp32: scatter needs
        # one dtype (a no-op in fp32, so the exported graph and fp32 numerics do not change)
        x = torch.scatter(full, 1, keep.unsqueeze(-1).expand(-1, -1, D), x.to(full.dtype))
        x = x + self.decoder_pos_embed_learned
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)[:, self.cfg.buffer_size:]
        return x + self.diffusion_pos_embed_learned

    def forward(self, tokens, labels, known_idx, pred_idx=None):
        """Condition vectors z: [B, L, D], or [B, n_pred, D] at ``pred_idx`` when given."""
        x, keep = self.encode(tokens, labels, known_idx)
        z = self.decode(x, keep)
        if pred_idx is None:
            return z
        return torch.gather(z, 1, pred_idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
