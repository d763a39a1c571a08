"""The torch modules that are exported: each maps a component spec's inputs to its outputs.

They wrap the reference modules without changing their arithmetic, so a graph can be
validated against the reference at any shape. The head and VAE graphs are every family's and
are here; each family gives the wrappers of its own backbone graphs (``families/``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..families import family_for_graph
from ..reference.heads import TIME_SCALE, SimpleMLPAdaLN


class ShortcutStepGraph(nn.Module):
    """One FAR head evaluation: x, t, step size d, z -> velocity."""

    def __init__(self, head: SimpleMLPAdaLN):
        super().__init__()
        self.head = head

    def forward(self, x, t, d, z):
        return self.head(x, t, z, -torch.log2(d))


class DiffusionStepGraph(nn.Module):
    """One MAR head evaluation: x, DDPM timestep index, z -> epsilon and variance values."""

    def __init__(self, head: SimpleMLPAdaLN):
        super().__init__()
        self.head = head

    def forward(self, x, t, z):
        return self.head(x, t, z)


class FusedShortcutGraph(nn.Module):
    """All O shortcut steps and the CFG combine in one graph.

    ``z`` holds n rows (no CFG) or 2n rows (conditional over unconditional); x is repeated to
    match, and ``v = v_u + cfg * (v_c - v_u)`` with v_u the last n rows, which for n rows is
    v_c itself. The time and step embeddings are constants of the graph (t_i = i/O, d = 1/O)
    and the condition embedding is computed once for all O steps.
    """

    def __init__(self, head: SimpleMLPAdaLN, steps: int):
        super().__init__()
        self.head = head
        self.steps = steps

    def forward(self, noise, z, cfg):
        h = self.head
        n = noise.shape[0]
        reps = z.shape[0] // n
        d = 1.0 / self.steps
        level = torch.full((1,), math.log2(self.steps), dtype=noise.dtype, device=noise.device)
        c = h.cond_embed(z)
        s = h.step_embed(level)
        x = noise
        for i in range(self.steps):
            t = torch.full((1,), i * d * TIME_SCALE, dtype=noise.dtype, device=noise.device)
            y = h.time_embed(t) + s + c
            a = h.input_proj(x.repeat(reps, 1))
            for blk in h.res_blocks:
                a = blk(a, y)
            v = h.final_layer(a, y)
            v_c, v_u = v[:n], v[v.shape[0] - n:]
            x = x + (v_u + cfg * (v_c - v_u)) * d
        return x


class VAEGraph(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, tokens):
        return self.vae(tokens)


def graph_module(name: str, backbone, head, vae, head_steps: int | None = None) -> nn.Module:
    """The module of graph ``name``: a head or VAE graph, or a family's backbone graph."""
    if name == "head_step":
        cls = ShortcutStepGraph if head.cfg.kind == "shortcut" else DiffusionStepGraph
        return cls(head).eval()
    if name.startswith("head_fused_o"):
        return FusedShortcutGraph(head, head_steps).eval()
    if name == "vae_decoder":
        return VAEGraph(vae).eval()
    family = family_for_graph(name)
    if family is None:
        raise ValueError(name)
    return family.graph_module(name, backbone)
