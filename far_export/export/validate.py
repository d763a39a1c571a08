"""Validate a graph against the PyTorch reference on a grid of shapes unlike the export shape.

Every graph of every family the same way: the family gives the validation points (dims,
inputs and any extra comparison; by default the runtime's grid with inputs drawn like the
sampling loop's, for FAR-Causal's backbone graphs real caches at chosen token positions), the
graph's torch module gives the reference outputs. Results are data (Polygraphy-style): per
grid point and output, max abs and max relative error, the output's magnitude, NaN/Inf
counts, and pass/fail.

The verdict: a graph passes a point when its error against the fp32 reference is within the
spec tolerance (max abs error <= tolerance * max |reference|). When it is not, the point is
judged against the reference's *own* fp32 error instead: the reference is evaluated in float64
on the same inputs, and the graph passes when its distance to that float64 result is within
``FP32_ERROR_FACTOR`` times the fp32 reference's distance to it (or within the tolerance of
it). So a correct but ill-conditioned graph (sharp attention, large embeddings), which is as
far from float64 as PyTorch's fp32 is, is never refused, and a wrong graph, whose error is of
the order of the output itself, still is.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch

from far_runtime.specs import ComponentSpec

from ..families import family_for_model
from ..reference.sampler import shortcut_sample

log = logging.getLogger(__name__)

FP32_ERROR_FACTOR = 8.0


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


def _as_torch(inputs: dict, dtype=None) -> list:
    out = []
    for v in inputs.values():
        t = torch.from_numpy(v)
        out.append(t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    return out


def _outputs(ref) -> list:
    return list(ref) if isinstance(ref, (tuple, list)) else [ref]


def judge_against_float64(got: np.ndarray, ref32: np.ndarray, ref64: np.ndarray, tol: float) -> dict:
    """The graph's error against a float64 reference, next to the fp32 reference's own error."""
    mag = float(np.abs(ref64).max()) if ref64.size else 0.0
    graph_err = float(np.abs(got.astype(np.float64) - ref64).max()) if ref64.size else 0.0
    ref_err = float(np.abs(ref32.astype(np.float64) - ref64).max()) if ref64.size else 0.0
    budget = max(tol * max(mag, 1e-12), FP32_ERROR_FACTOR * ref_err)
    return {"fp64_max_abs": graph_err, "reference_fp32_error": ref_err, "fp64_budget": budget,
            "passed": bool(np.isfinite(got).all() and np.isfinite(ref64).all() and graph_err <= budget)}


def validate_graph(session, spec: ComponentSpec, module, model: dict, head=None,
                   tolerance: float | None = None, seed: int = 1, batches=(1, 3, 8)) -> dict:
    """The session against the reference at every validation point of the model's family.
    An extra comparison a point names (``{name: (output, reference)}``) is judged at the
    fp32 tolerance alone."""
    tol = spec.tolerance if tolerance is None else tolerance
    fn = reference_fn(spec, module, head)
    fn64 = None
    rng = np.random.default_rng(seed)
    names = spec.output_names()
    points = []
    t0 = time.perf_counter()
    for dims, inputs, extra in family_for_model(model).validation_points(spec, module, model,
                                                                          batches, rng):
        with torch.no_grad():
            refs = [r.numpy() for r in _outputs(fn(*_as_torch(inputs)))]
        gots = session.run(names, inputs)
        outs = {name: compare(g, r, tol) for name, g, r in zip(names, gots, refs)}
        if not all(o["passed"] for o in outs.values()):
            if fn64 is None:       # only now: a float64 copy of the reference costs memory
                fn64 = reference_fn(spec, copy.deepcopy(module).double(),
                                    copy.deepcopy(head).double() if head is not None else None)
            with torch.no_grad():
                refs64 = [r.numpy() for r in _outputs(fn64(*_as_torch(inputs, torch.float64)))]
            for (name, o), g, r32, r64 in zip(outs.items(), gots, refs, refs64):
                o["float64"] = judge_against_float64(g, r32, r64, tol)
                o["passed"] = bool(o["nan_inf"] == 0 and o["float64"]["passed"])
        for key, (output, ref) in extra.items():
            outs[key] = compare(gots[names.index(output)], ref, tol)
        points.append({"dims": dims, "outputs": outs,
                       "passed": all(o["passed"] for o in outs.values())})
    worst = max((o["rel_to_max"] for p in points for o in p["outputs"].values()), default=0.0)
    passed = all(p["passed"] for p in points)
    return {"graph": spec.name, "tolerance": tol, "points": points,
            "worst_rel_to_max": worst, "passed": passed, "verdict": _verdict(points, tol),
            "seconds": round(time.perf_counter() - t0, 3)}


def _verdict(points: list, tol: float) -> str:
    bad = [(p["dims"], n, o) for p in points for n, o in p["outputs"].items() if not o["passed"]]
    if not bad:
        return "within tolerance at every grid point"
    dims, name, o = bad[0]
    if o["nan_inf"] or o["nan_inf_ref"]:
        return f"output {name} has NaN or Inf at {dims}"
    f = o.get("float64", {})
    return (f"output {name} at {dims} is {f.get('fp64_max_abs', o['max_abs']):.3g} from a float64 "
            f"evaluation of the reference, over the budget {f.get('fp64_budget', tol):.3g} "
            f"({FP32_ERROR_FACTOR:g} x the fp32 reference's own error "
            f"{f.get('reference_fp32_error', 0.0):.3g}, or {tol:g} of max |output|)"
            + (f"; {len(bad) - 1} more outputs/points fail" if len(bad) > 1 else ""))
