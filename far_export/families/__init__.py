"""The registry of model families on the torch side: one place every exporter stage reads.

A family is a backbone (``masked``: FAR and MAR; ``causal``: FAR-Causal); the head kinds
(shortcut, diffusion) are shared. ``far_runtime.variants`` is the runtime's half (specs, plan,
loop); the family here reads checkpoints (detection, config inference), builds the reference
modules, gives the backbone graphs' torch wrappers and validation points, the reference sampler
and the verify configurations (``base.py``).

To add a family: subclass ``Family`` in a module here (and its runtime ``Variant`` in
``far_runtime/variants/``), and register an instance in ``FAMILIES`` below. Detection asks the
families in order; the masked family reads anything no family recognises (its config inference
says what the file lacks).
"""
from __future__ import annotations

from far_runtime.variants import family_of

from .base import Family
from .causal import Causal
from .masked import Masked

FAMILIES = {f.name: f for f in (Masked(), Causal())}
DEFAULT = FAMILIES["masked"]


def family_for_state_dict(sd: dict) -> Family:
    """The family whose backbone the state dict holds (masked when none says so)."""
    return next((f for f in FAMILIES.values() if f.detect(sd)), DEFAULT)


def family_of_config(cfg) -> Family:
    """The family of a model config (``ModelConfig``, ``CausalModelConfig``)."""
    return FAMILIES[cfg.family]


def family_for_model(model: dict) -> Family:
    """The family of a manifest's (checked) model entry."""
    return FAMILIES[family_of(model)]


def family_for_graph(name: str) -> Family | None:
    """The family whose backbone graph ``name`` is (None for head and VAE graphs)."""
    return next((f for f in FAMILIES.values() if name in f.graph_wrappers), None)


__all__ = ["FAMILIES", "Family", "family_for_state_dict", "family_of_config", "family_for_model",
           "family_for_graph"]
