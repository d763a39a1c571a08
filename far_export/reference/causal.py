"""FAR-Causal: a GPT-style causal transformer over raster-order tokens, the shortcut head on top.

Sequence (``P`` = ``class_tokens``, ``L`` = ``seq_len``, ``T = P + L - 1`` positions):
``[cls_0 .. cls_{P-1}, x_0 .. x_{L-2}]``; every class slot holds the class embedding
(``class_emb``, or ``fake_latent`` for the unconditional label ``num_classes``, as MAR/FAR do
for CFG), each token enters through ``tok_embed``; ``pos_embed`` [1, T, E] is added to all.
Pre-norm blocks with causal attention (timm names: ``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), a final ``norm``. The output at position ``P - 1 + i``
plus ``head_pos_embed[i]`` is the condition z of token ``i`` (so token 0 is conditioned on
the class alone, and z_i sees x_0..x_{i-1}). The head (``diffloss.net.*``) is the FAR
shortcut head of ``heads.py`` with ``cond_dim = E``. Its configuration is ``config.CausalConfig``;
the family that reads, exports and verifies it is ``far_export/families/causal.py``.

Inference runs ``prefill`` (the P class slots -> z_0 and the KV cache) then ``L - 1`` calls of
``step`` (token x_{i-1} at sequence position ``P + i - 1`` -> z_i, cache updated). The cache is
one tensor [depth, 2 (k, v), batch, heads, T, head_dim], preallocated at full size T: a step
writes its slot with a one-hot blend (exact for 0/1 weights) and attends to slots <= pos, so
every step has the same shapes. ``forward`` (the whole prefix at once, causal mask) is the
training path and the no-cache recompute path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CausalConfig
from .backbone import Mlp, random_init_

LN_EPS = 1e-6
NEG = -1e9          # attention logit of a masked slot (finite: exp underflows to 0 exactly)


class CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]                     # [B, H, N, hd]

    def _out(self, x, B, N, C):
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def forward(self, x):
        """Causal self-attention over the whole sequence; also returns k, v [B, H, N, hd]."""
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        att = (q * self.scale) @ k.transpose(-2, -1)
        causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
        att = torch.where(causal, att, torch.full_like(att, NEG))
        return self._out(att.softmax(dim=-1) @ v, B, N, C), k, v

    def step(self, x, pos, k_cache, v_cache):
        """One new position: x [B, 1, E], pos [1] int64, caches [B, H, T, hd]."""
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        T = k_cache.shape[2]
        slots = torch.arange(T, device=x.device).reshape(1, 1, T, 1)
        here = (slots == pos).to(x.dtype)
        k_cache = k_cache * (1.0 - here) + k * here
        v_cache = v_cache * (1.0 - here) + v * here
        att = (q * self.scale) @ k_cache.transpose(-2, -1)        # [B, H, 1, T]
        seen = slots.reshape(1, 1, 1, T) <= pos
        att = torch.where(seen, att, torch.full_like(att, NEG))
        return self._out(att.softmax(dim=-1) @ v_cache, B, N, C), k_cache, v_cache


class CausalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = CausalAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        h, k, v = self.attn(self.norm1(x))
        x = x + h
        return x + self.mlp(self.norm2(x)), k, v

    def step(self, x, pos, k_cache, v_cache):
        h, k_cache, v_cache = self.attn.step(self.norm1(x), pos, k_cache, v_cache)
        x = x + h
        return x + self.mlp(self.norm2(x)), k_cache, v_cache


class CausalBackbone(nn.Module):
    def __init__(self, cfg: CausalConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.width
        self.tok_embed = nn.Linear(cfg.token_dim, E, bias=True)
        self.class_emb = nn.Embedding(cfg.num_classes, E)
        self.fake_latent = nn.Parameter(torch.zeros(1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context, E))
        self.blocks = nn.ModuleList([CausalBlock(E, cfg.heads, cfg.mlp_ratio)
                                     for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(E, eps=LN_EPS)
        self.head_pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, E))

    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02):
        """Random weights for tests: N(0, std) matrices, LayerNorm 1/0, biases 0."""
        return random_init_(self, generator, std)

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.class_emb.weight, self.fake_latent], 0)
        return table[labels]

    def _prefix(self, labels):
        P, E = self.cfg.class_tokens, self.cfg.width
        cls = self.class_embedding(labels).unsqueeze(1).expand(labels.shape[0], P, E)
        return cls + self.pos_embed[:, :P]

    def _z(self, h, first: int):
        """Conditions from final hidden states h [B, n, E] for tokens first..first+n-1."""
        n = h.shape[1]
        return self.norm(h) + self.head_pos_embed[:, first:first + n]

    def forward(self, tokens, labels):
        """Conditions z [B, n + 1, E] of tokens 0..n from the known prefix tokens [B, n, C]."""
        P, n = self.cfg.class_tokens, tokens.shape[1]
        x = torch.cat([self._prefix(labels),
                       self.tok_embed(tokens) + self.pos_embed[:, P:P + n]], 1)
        for blk in self.blocks:
            x, _, _ = blk(x)
        return self._z(x[:, P - 1:], 0)

    def prefill(self, labels):
        """z_0 [B, E] and the cache [depth, 2, B, H, T, hd] holding the P class slots."""
        P, T = self.cfg.class_tokens, self.cfg.context
        x = self._prefix(labels)
        kv = []
        for blk in self.blocks:
            x, k, v = blk(x)
            kv.append(torch.stack([k, v]))
        cache = F.pad(torch.stack(kv), (0, 0, 0, T - P))
        return self._z(x[:, P - 1:], 0)[:, 0], cache

    def step(self, token, pos, cache):
        """Token [B, C] at sequence position ``pos`` ([1] int64, P..T-1) -> z of token
        ``pos - P + 1`` [B, E] and the updated cache."""
        P = self.cfg.class_tokens
        x = self.tok_embed(token).unsqueeze(1)
        x = x + torch.index_select(self.pos_embed, 1, pos)
        out = []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk.step(x, pos, cache[i, 0], cache[i, 1])
            out.append(torch.stack([k, v]))
        hp = torch.index_select(self.head_pos_embed, 1, pos - (P - 1))
        return (self.norm(x) + hp)[:, 0], torch.stack(out)
