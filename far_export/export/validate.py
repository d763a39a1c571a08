"""Validate a graph against the PyTorch reference on a grid of shapes unlike the export shape.

Results are data (Polygraphy-style): per grid point and output, max abs and max relative
error, the output's magnitude, NaN/Inf counts, and pass/fail against the spec tolerance
(max abs error <= tolerance * max |reference|).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from far_runtime.specs import ComponentSpec, sample_inputs, validation_grid

from ..reference.sampler import shortcut_sample

log = logging.getLogger(__name__)


def compare(got: np.ndarray, ref: np.ndarray, tolerance: float) -> dict:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    mag = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(ref), 1e-6)
    bad_got = int((~np.isfinite(got)).sum())
    bad_ref = int((~np.isfinite(ref)).sum())
    return {"max_abs": max_abs, "max_rel_elem": float(rel.max()) if rel.size else 0.0,
            "mean_abs": float(diff.mean()) if diff.size else 0.0, "ref_max_abs": mag,
            "rel_to_max": max_abs / mag if mag > 0 else max_abs,
            "nan_inf": bad_got, "nan_inf_ref": bad_ref,
            "passed": bool(bad_got == 0 and bad_ref == 0 and max_abs <= tolerance * max(mag, 1e-12))}


def reference_fn(spec: ComponentSpec, module: torch.nn.Module, head=None):
    """The PyTorch function a graph must match. A fused head graph is checked against the
    reference sampler's own O-step loop, not against its export wrapper."""
    if spec.head_steps is not None:
        def fused(noise, z, cfg):
            use_cfg = z.shape[0] != noise.shape[0]
            return shortcut_sample(head, noise, z, spec.head_steps, float(cfg[0]) if use_cfg else None)
        return fused
    return module


def validate_graph(session, spec: ComponentSpec, module, model: dict, head=None,
                   tolerance: float | None = None, seed: int = 1, batches=(1, 3, 8)) -> dict:
    tol = spec.tolerance if tolerance is None else tolerance
    fn = reference_fn(spec, module, head)
    rng = np.random.default_rng(seed)
    points = []
    t0 = time.perf_counter()
    for dims in validation_grid(spec, model, batches):
        inputs = sample_inputs(spec, dims, model, rng)
        with torch.no_grad():
            ref = fn(*[torch.from_numpy(v) for v in inputs.values()])
        refs = ref if isinstance(ref, (tuple, list)) else [ref]
        gots = session.run(spec.output_names(), inputs)
        outs = {name: compare(g, r.numpy(), tol)
                for name, g, r in zip(spec.output_names(), gots, refs)}
        points.append({"dims": dims, "outputs": outs,
                       "passed": all(o["passed"] for o in outs.values())})
    worst = max((o["rel_to_max"] for p in points for o in p["outputs"].values()), default=0.0)
    return {"graph": spec.name, "tolerance": tol, "points": points,
            "worst_rel_to_max": worst, "passed": all(p["passed"] for p in points),
            "seconds": round(time.perf_counter() - t0, 3)}
