"""The registry of model variants: one place every stage and every runtime reads.

A variant is a backbone family (``masked``: FAR and MAR; ``causal``: FAR-Causal) with a head
kind (``shortcut``, ``diffusion``; ``heads.py``). The manifest's model entry names the family
in ``kind`` (absent: masked) and the head in ``head_kind``.

To add a variant: write its family (a ``Variant`` subclass: specs, model checks, K, plan,
loop) in a module here, or reuse one with another head kind, and register an instance in
``VARIANTS`` below. The exporter registers the torch side of the family in
``far_export/families/``.
"""
from __future__ import annotations

from ..errors import FarError
from .base import Variant
from .causal import Causal
from .masked import Masked

VARIANTS = {v.name: v for v in (
    Masked("far", "shortcut", "FAR"),
    Masked("mar", "diffusion", "MAR"),
    Causal("far-causal", "shortcut", "FAR-Causal"),
)}
FAMILIES = {v.family: v for v in VARIANTS.values()}      # a variant per family: its model checks
_BY_KEY = {(v.family, v.head_kind): v for v in VARIANTS.values()}


def family_of(model: dict) -> str:
    """The manifest's ``model.kind`` as a family name (absent: ``masked``)."""
    kind = model.get("kind")
    return "masked" if kind is None else kind


def find_variant(model: dict) -> Variant | None:
    return _BY_KEY.get((family_of(model), model.get("head_kind")))


def variant_for(model: dict) -> Variant:
    """The variant of a checked model entry (``bundle.check_structure`` refuses the rest)."""
    v = find_variant(model)
    if v is None:
        raise FarError(f"No model variant has backbone family {family_of(model)!r} with head kind "
                       f"{model.get('head_kind')!r}; known: {', '.join(VARIANTS)}.")
    return v


def check_model(model: dict, bad) -> None:
    """The family's own checks of a model entry whose shared keys are checked."""
    kind = model.get("kind")
    if kind is not None and (not isinstance(kind, str) or kind not in FAMILIES) or kind == "masked":
        bad(f"model.kind is {kind!r}, not 'causal' (or absent for FAR/MAR)")
    FAMILIES[family_of(model)].check_model(model, bad)
    if find_variant(model) is None:
        bad(f"no model variant has family {family_of(model)!r} with head_kind {model['head_kind']!r}")


def component_specs(model: dict, max_batch: int = 8, head_steps=(1, 2, 4, 8), tolerance: float = 1e-4):
    """Every graph spec of a model entry (its variant's backbone graphs, heads and VAE)."""
    return variant_for(model).specs(model, max_batch, head_steps, tolerance)





def validation_grid(spec, model: dict, batches=(1, 3, 8)) -> list[dict]:
    """Validation shapes of one graph of a model entry, other than its export shape."""
    return variant_for(model).validation_grid(spec, model, batches)
