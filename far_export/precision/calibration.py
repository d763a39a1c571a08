"""Real graph inputs for FP16 range recording and INT8 calibration.

The fp32 bundle (already validated against the PyTorch reference) runs the real sampling loop
of its variant: every K iteration (FAR-Causal: every token, in each of its loop modes, KV
cache and recompute), every head step (fused O-step graphs and the per-step graph), CFG on
and off, several seeds and classes. A recording backend keeps a copy of every graph's feeds, so
each graph is calibrated on exactly the tensors it sees when sampling, never on random inputs.

Feeds are split per graph into a calibration set and a held-out set (alternating calls), so
the converted graphs are judged on inputs they were not calibrated on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from far_runtime.backends import OrtBackend
from far_runtime.bundle import Bundle
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.plan import Call, Plan
from far_runtime.variants import variant_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSettings:
    """Which sampling runs produce the calibration data (part of the cache key)."""
    seeds: tuple = (0, 1)
    batch: int = 4
    num_iter: int = 16                # K (capped at the sequence length; FAR-Causal: its L)
    cfgs: tuple = (1.0, 3.0)
    max_samples: int = 48             # feeds kept per graph (evenly over the recorded calls)

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class RecordingBackend:
    """An ONNX Runtime backend that also keeps a copy of every call's feeds, per graph."""

    name = "onnxruntime+recording"

    def __init__(self, inner: OrtBackend):
        self.inner = inner
        self.feeds: dict[str, list[dict]] = {}

    def prepare(self, plan: Plan) -> None:
        self.inner.prepare(plan)

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.setdefault(call.graph, []).append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(call, feeds)


def run_k(model: dict, num_iter: int) -> int:
    """K of the calibration runs: ``num_iter`` capped at the sequence length where the variant
    lets K vary (FAR/MAR), the variant's own K otherwise (FAR-Causal: L)."""
    variant = variant_for(model)
    try:
        return variant.check_k(min(num_iter, model["seq_len"]), model)
    except FarError:
        return variant.default_k(model)


def loop_modes(model: dict) -> list:
    """The variant's sampling loops (FAR-Causal: ``cache`` and ``recompute``; FAR/MAR: one)."""
    return [m for m in variant_for(model).modes if m is not None] or [None]


def check_loop_graphs(bundle: Bundle, what: str) -> None:
    """Recording runs every loop of the variant, which needs every backbone graph."""
    variant = variant_for(bundle.model)
    missing = [g for g in variant.backbone_graphs if not bundle.has(g)]
    if missing:
        raise FarError(f"{what} records real inputs by running the sampling loop, which needs the "
                       f"backbone graph{'s' if len(variant.backbone_graphs) > 1 else ''} "
                       f"({', '.join(variant.backbone_graphs)}): export all components.")


def sampling_runs(bundle: Bundle, settings: CalibrationSettings) -> list[dict]:
    """generate_tokens keyword sets that together call every graph of the bundle."""
    m = bundle.model
    K = run_k(m, settings.num_iter)
    batch = min(settings.batch, bundle.manifest["max_batch"])
    heads = []
    if m["head_kind"] == "shortcut":
        steps = bundle.manifest["head_steps"]
        heads = [{"O": o, "head": "fused"} for o in steps if bundle.has(f"head_fused_o{o}")]
        if bundle.has("head_step"):
            heads.append({"O": max(steps) if steps else 8, "head": "step"})
    else:
        heads = [{"O": 1, "head": "step"}]
    runs = []
    for seed in settings.seeds:
        for cfg in settings.cfgs:
            for h in heads:
                for mode in loop_modes(m):
                    labels = [(seed * batch + j) % m["num_classes"] for j in range(batch)]
                    runs.append({"labels": labels, "K": K, "cfg": cfg, "seed": seed, **h,
                                 **({"mode": mode} if mode else {})})
    return runs


def collect_feeds(bundle: Bundle, settings: CalibrationSettings = CalibrationSettings(),
                  progress=None) -> dict[str, dict[str, list[dict]]]:
    """``{graph: {"calibration": [feeds...], "held_out": [feeds...]}}`` from real sampling runs
    of the (fp32) ``bundle``."""
    check_loop_graphs(bundle, "Calibration")
    rec = RecordingBackend(OrtBackend(bundle))
    pipe = Pipeline(bundle, rec)
    runs = sampling_runs(bundle, settings)
    for i, r in enumerate(runs):
        r = dict(r)
        labels = r.pop("labels")
        tokens = pipe.generate_tokens(labels, **r)
        if bundle.has("vae_decoder"):
            pipe.decode(tokens)
        if progress:
            loop = f" {r['mode']}" if "mode" in r else ""
            progress(f"calibration run {i + 1}/{len(runs)}: K={r['K']} O={r['O']} {r['head']}{loop} cfg={r['cfg']}")
    out = {}
    for graph, calls in rec.feeds.items():
        pick = _evenly(len(calls), 2 * settings.max_samples)
        chosen = [calls[i] for i in pick]
        out[graph] = {"calibration": chosen[0::2], "held_out": chosen[1::2] or chosen[:1],
                      "recorded_calls": len(calls)}
    return out


def _evenly(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))
