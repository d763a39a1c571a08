"""Validate the FAR-Causal graphs against the reference at the positions that matter.

Grid: token positions 0 (``causal_prefill``), 1, L/2, L-1 (``causal_step`` and
``causal_recompute``), batch in ``batches`` (default 1 and 3), CFG off (B rows) and on (2B
rows: the conditional labels, then the unconditional label for the twins, which share the
tokens). Inputs are real: the cache fed to a step at token i is the reference's own cache
after tokens 0..i-2 (prefill then reference steps over random tokens), not random numbers.
Every output (z, and the cache where there is one) is compared with ``validate.compare``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from far_runtime.variants.causal import positions as causal_positions
from far_runtime.variants.causal import step_position

from .validate import compare


def _case(backbone, batch: int, use_cfg: bool, rng: np.random.Generator):
    c = backbone.cfg
    labels = rng.integers(0, c.num_classes, size=batch)
    if use_cfg:
        labels = np.concatenate([labels, np.full(batch, c.num_classes)])
    tokens = rng.standard_normal((batch, c.seq_len, c.token_dim)).astype(np.float32)
    tokens = np.concatenate([tokens, tokens]) if use_cfg else tokens
    return labels.astype(np.int64), tokens


@torch.no_grad()
def validate_causal(sessions: dict, backbone, tolerance: float, batches=(1, 3), seed: int = 1) -> dict:
    """``sessions``: graph name -> ONNX Runtime session (any of the three causal graphs).
    Returns one report per graph, shaped like ``validate.validate_graph``'s."""
    c = backbone.cfg
    P = c.class_tokens
    rng = np.random.default_rng(seed)
    positions = causal_positions(c.seq_len)
    points = {name: [] for name in sessions}
    t0 = time.perf_counter()
    for batch in batches:
        for use_cfg in (False, True):
            labels, tokens = _case(backbone, batch, use_cfg, rng)
            lab_t, tok_t = torch.from_numpy(labels), torch.from_numpy(tokens)
            z_ref, cache = backbone.prefill(lab_t)
            dims = {"batch": len(labels), "cfg": use_cfg}
            if "causal_prefill" in sessions:
                z, kv = sessions["causal_prefill"].run(["z", "cache"], {"labels": labels})
                points["causal_prefill"].append(_point({**dims, "token": 0}, {
                    "z": compare(z, z_ref.numpy(), tolerance),
                    "cache": compare(kv, cache.numpy(), tolerance)}))
            for i in range(1, c.seq_len):
                pos = torch.tensor([step_position(i, P)], dtype=torch.int64)
                z_ref, new_cache = backbone.step(tok_t[:, i - 1], pos, cache)
                if i in positions:
                    here = {**dims, "token": i}
                    if "causal_step" in sessions:
                        z, kv = sessions["causal_step"].run(["z", "cache_out"], {
                            "token": tokens[:, i - 1], "pos": pos.numpy(), "cache": cache.numpy()})
                        points["causal_step"].append(_point(here, {
                            "z": compare(z, z_ref.numpy(), tolerance),
                            "cache_out": compare(kv, new_cache.numpy(), tolerance)}))
                    if "causal_recompute" in sessions:
                        z_full = backbone(tok_t[:, :i], lab_t)[:, i]
                        (z,) = sessions["causal_recompute"].run(["z"], {
                            "tokens": np.ascontiguousarray(tokens[:, :i]), "labels": labels})
                        points["causal_recompute"].append(_point({**here, "n_known": i}, {
                            "z": compare(z, z_full.numpy(), tolerance),
                            "z_vs_cached_reference": compare(z, z_ref.numpy(), tolerance)}))
                cache = new_cache
    seconds = round(time.perf_counter() - t0, 3)
    out = {}
    for name, pts in points.items():
        worst = max((o["rel_to_max"] for p in pts for o in p["outputs"].values()), default=0.0)
        out[name] = {"graph": name, "tolerance": tolerance, "points": pts,
                     "worst_rel_to_max": worst, "passed": all(p["passed"] for p in pts),
                     "seconds": seconds}
    return out


def _point(dims: dict, outs: dict) -> dict:
    return {"dims": dims, "outputs": outs, "passed": all(o["passed"] for o in outs.values())}
