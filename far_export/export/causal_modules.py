"""The exported FAR-Causal modules: thin wrappers over ``reference/causal.py``, same arithmetic."""
from __future__ import annotations

from torch import nn


class CausalPrefillGraph(nn.Module):
    """labels -> z of token 0, the KV cache with the class slots filled (rest zeros)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, labels):
        return self.backbone.prefill(labels)


class CausalStepGraph(nn.Module):
    """token i - 1, its sequence position, cache -> z of token i, cache with slot pos written."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, token, pos, cache):
        return self.backbone.step(token, pos, cache)


class CausalRecomputeGraph(nn.Module):
    """The whole prefix tokens [B, n, C] -> z of token n (no cache: every step from scratch)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, tokens, labels):
        return self.backbone(tokens, labels)[:, -1]


CAUSAL_MODULES = {"causal_prefill": CausalPrefillGraph, "causal_step": CausalStepGraph,
                  "causal_recompute": CausalRecomputeGraph}


def causal_graph_module(name: str, backbone, head, vae, head_steps=None) -> nn.Module:
    if name in CAUSAL_MODULES:
        return CAUSAL_MODULES[name](backbone).eval()
    from .modules import graph_module
    return graph_module(name, backbone, head, vae, head_steps)
