"""Graph specs of FAR-Causal bundles (``model["kind"] == "causal"``), read like ``specs.py``.

Graphs (besides the shared ``head_step``, ``head_fused_o{O}`` and ``vae_decoder``):
- ``causal_prefill``: labels [batch] (``num_classes`` = unconditional) -> ``z`` [batch, D] of
  token 0 and ``cache`` [depth, 2, batch, heads, T, head_dim] with the P class slots filled.
- ``causal_step``: ``token`` [batch, C] (token i - 1), ``pos`` [1] int64 (its sequence
  position P + i - 1) and ``cache`` -> ``z`` [batch, D] of token i and ``cache_out``. The
  cache has its full static size T = P + L - 1 on every step (preallocated), so all L - 1
  steps share one shape (one engine profile; a GPU backend could capture one CUDA graph per
  slot, which the GPU backends do not do for causal bundles yet).
- ``causal_recompute``: ``tokens`` [batch, n_known, C] (the whole prefix), labels -> ``z`` of
  token n_known. No cache: what every step costs without one (bench, verify's cross-check).

The model entry adds ``class_tokens`` (P), ``context`` (T), ``depth``, ``heads`` and
``head_dim`` to the shared keys.
"""
from __future__ import annotations

from .specs import BATCH, N_KNOWN, ComponentSpec, TensorSpec, component_specs

CAUSAL_GRAPHS = ("causal_prefill", "causal_step", "causal_recompute")


def cache_dims(model: dict) -> tuple:
    return (model["depth"], 2, BATCH, model["heads"], model["context"], model["head_dim"])


def causal_specs(model: dict, max_batch: int = 8, head_steps=(1, 2, 4, 8),
                 tolerance: float = 1e-4) -> dict[str, ComponentSpec]:
    L, C, D = model["seq_len"], model["token_dim"], model["cond_dim"]
    rows = (1, 2, 2 * max_batch)                              # CFG doubles the batch
    specs = component_specs({**model, "kind": "shared"}, max_batch, head_steps, tolerance)
    del specs["backbone"]
    cache = cache_dims(model)
    z = TensorSpec("z", "float32", (BATCH, D))
    specs["causal_prefill"] = ComponentSpec(
        "causal_prefill", inputs=(TensorSpec("labels", "int64", (BATCH,), "labels"),),
        outputs=(z, TensorSpec("cache", "float32", cache)),
        ranges={BATCH: rows}, export_dims={BATCH: 2}, tolerance=tolerance)
    specs["causal_step"] = ComponentSpec(
        "causal_step",
        inputs=(TensorSpec("token", "float32", (BATCH, C)),
                TensorSpec("pos", "int64", (1,), "position"),
                TensorSpec("cache", "float32", cache)),
        outputs=(z, TensorSpec("cache_out", "float32", cache)),
        ranges={BATCH: rows}, export_dims={BATCH: 2}, tolerance=tolerance)
    specs["causal_recompute"] = ComponentSpec(
        "causal_recompute",
        inputs=(TensorSpec("tokens", "float32", (BATCH, N_KNOWN, C)),
                TensorSpec("labels", "int64", (BATCH,), "labels")),
        outputs=(z,),
        ranges={BATCH: rows, N_KNOWN: (0, L // 2, L - 1)},
        export_dims={BATCH: 2, N_KNOWN: max(2, L // 2)}, tolerance=tolerance)
    return specs


def causal_positions(seq_len: int) -> list[int]:
    """Token indices of the validation grid: 0 (prefill), 1, L/2, L-1 (steps)."""
    return sorted({0, 1, seq_len // 2, seq_len - 1})
