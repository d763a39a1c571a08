"""Rewrite an exported fp32 bundle to one precision (fp16 or int8), or to the fastest that
passes per graph on a backend (auto, ``auto.py``), re-hash and re-validate it.

    manifest, readiness = convert_bundle(out_dir, manifest, PrecisionOptions("int8"))

Both need real inputs of every graph: the fp32 bundle runs the sampling loop
(``calibration.collect_feeds``). Those feeds are cached per graph under a key made of the
checkpoint's and VAE's sha256, the graph file's sha256 and the calibration settings, so a
second build of the same checkpoint skips the sampling runs (and, for int8, the calibration
inference and the quantisation: onnxruntime's range cache and the int8 graph, ``int8_cache``,
live in the same entry), and a changed checkpoint or
graph never reuses stale data.

Graph IO stays float32 in every precision, so specs, the manifest's shapes and the runtime
do not change. Each converted graph is compared with its fp32 graph on held-out real inputs;
fp16 must stay within ``FP16_TOLERANCE`` (max abs error / max |output|) with no NaN/Inf.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from far_runtime.bundle import Bundle, sha256_file
from far_runtime.errors import FarError

from ..tensorrt.bundle_readiness import graph_readiness
from .calibration import CalibrationSettings, check_loop_graphs, collect_feeds, sampling_runs
from .fp16 import KeepRules, fp32_nodes, to_fp16
from .auto import AutoSettings, auto_graph, candidates, loosest, machine
from .int8 import Int8Settings, output_error, time_graphs
from .int8_cache import int8_candidate

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "auto")
FP16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str = "fp32"
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    keep_rules: KeepRules = field(default_factory=KeepRules)
    int8: Int8Settings = field(default_factory=Int8Settings)
    cache_dir: str | None = None
    auto: AutoSettings = field(default_factory=AutoSettings)     # --precision auto: where and how it measures


def default_cache_dir() -> str:
    return os.environ.get("FAR_EXPORT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "far-export", "calibration")


class FeedCache:
    """Recorded feeds (and int8 range caches) per graph, keyed by what produced them."""

    def __init__(self, root: str, bundle: Bundle, settings: CalibrationSettings):
        self.root = root
        self.bundle = bundle
        self.settings = settings
        src = bundle.manifest["source"]
        self._base = {"checkpoint_sha256": src["sha256"], "vae_sha256": src["vae_sha256"],
                      "weights": src["weights"], "settings": settings.to_dict(),
                      "runs": sampling_runs(bundle, settings)}

    def key(self, graph: str) -> str:
        g = self.bundle.graphs[graph]
        parts = {**self._base, "graph": graph, "graph_sha256": g["files"][g["file"]]}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def entry(self, graph: str) -> str:
        return os.path.join(self.root, self.key(graph))

    def load(self, graph: str) -> dict | None:
        path = os.path.join(self.entry(graph), "feeds.npz")
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as z:
                out = {"calibration": [], "held_out": []}
                meta = json.loads(str(z["__meta__"]))
                for split, n in meta["counts"].items():
                    out[split] = [{k: z[f"{split}/{i}/{k}"] for k in meta["names"]} for i in range(n)]
                out["recorded_calls"] = meta["recorded_calls"]
            return out
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable calibration cache %s (%s)", path, e)
            return None

    def store(self, graph: str, feeds: dict) -> None:
        from ..checkpoint import atomic_write
        d = self.entry(graph)
        os.makedirs(d, exist_ok=True)
        arrays = {}
        names = list(feeds["calibration"][0]) if feeds["calibration"] else []
        for split in ("calibration", "held_out"):
            for i, f in enumerate(feeds[split]):
                for k, v in f.items():
                    arrays[f"{split}/{i}/{k}"] = v
        meta = {"counts": {s: len(feeds[s]) for s in ("calibration", "held_out")}, "names": names,
                "recorded_calls": feeds["recorded_calls"], "key_parts": {**self._base, "graph": graph}}
        arrays["__meta__"] = np.array(json.dumps(meta))

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        atomic_write(os.path.join(d, "feeds.npz"), write)


def convert_bundle(out_dir: str, manifest: dict, options: PrecisionOptions,
                   progress=None) -> tuple[dict, dict]:
    """Rewrite the bundle's fp32 graphs in place; returns the new manifest and the TensorRT
    readiness reports of the rewritten graphs."""
    say = progress or (lambda m: log.info(m))
    precision = options.precision
    if precision not in PRECISIONS:
        raise FarError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    manifest = json.loads(json.dumps(manifest))
    manifest["precision"] = precision
    if precision == "fp32":
        return manifest, {}
    bundle = Bundle(out_dir, manifest)
    check_loop_graphs(bundle, f"--precision {precision}")
    if precision == "auto":
        facts = machine(options.auto.backend)
        names, not_candidates = candidates(options.auto.backend, facts)
    cache_dir = options.cache_dir or default_cache_dir()
    cache = FeedCache(cache_dir, bundle, options.calibration)
    feeds, hits = {}, {}
    for name in bundle.graphs:
        feeds[name] = cache.load(name)
        hits[name] = feeds[name] is not None
    missing = [n for n, f in feeds.items() if f is None]
    if missing:
        say(f"recording real inputs for {', '.join(missing)} (sampling runs of the fp32 bundle)")
        fresh = collect_feeds(bundle, options.calibration, progress=say)
        for name in missing:
            if name not in fresh:
                raise FarError(f"The sampling runs never called '{name}', so it cannot be calibrated.")
            feeds[name] = fresh[name]
            cache.store(name, fresh[name])
    else:
        say(f"calibration cache hit for every graph ({cache_dir})")
    readiness = {}
    for i, name in enumerate(list(bundle.graphs)):
        g = manifest["graphs"][name]
        path = bundle.path(name)
        f = feeds[name]
        calib = {"samples": len(f["calibration"]), "held_out": len(f["held_out"]),
                 "recorded_calls": f["recorded_calls"], "cache_key": cache.key(name),
                 "cache": "hit" if hits[name] else "miss",
                 "key_parts": ["checkpoint sha256", "vae sha256", "weights", "graph sha256",
                               "calibration settings", "sampling runs"]}
        say(f"[{i + 1}/{len(bundle.graphs)}] {name}: {precision}")
        new = path + f".{precision}.onnx"
        if precision == "fp16":
            info = _fp16(path, new, f, options.keep_rules, say, name)
        elif precision == "int8":
            info = _int8(path, new, f, cache.entry(name), options.int8, say, name)
            calib["ranges"] = info.pop("ranges", None)
        else:
            info = auto_graph(name, path, new, f, cache.entry(name), options.auto, options.int8, names,
                              not_candidates, say)
            if "int8" in info:
                calib["ranges"] = info["int8"].pop("ranges", None)
            g["compute"] = info["compute"]
        info["calibration"] = calib
        if precision == "fp16" and not info["validated"]:
            os.unlink(new)
            raise FarError(f"The fp16 {name} graph is {info['rel_to_max']:.3g} (max abs / max |output|) away "
                           f"from fp32 with {info['nan_inf']} NaN/Inf on held-out inputs (allowed: "
                           f"{FP16_TOLERANCE}, none); no manifest was written.")
        if os.path.exists(new):
            os.replace(new, path)
            m = onnx.load(path, load_external_data=False)
            g["files"] = {g["file"]: sha256_file(path)}
            g["nodes"] = len(m.graph.node)
            g["bytes"] = os.path.getsize(path)
            readiness[name] = graph_readiness(path)
        if precision == "int8":
            for e in info.get("excluded", []):
                if e["reason"].startswith(("sensitivity", "option")):
                    say(f"  float {e['node']}: {e['reason']}")
            if info.get("reason"):
                say(f"  {name} stays fp32: {info['reason']}")
        g["precision"] = info.get("precision", precision)
        g["choice" if precision == "auto" else precision] = info
    manifest["calibration"] = {"settings": options.calibration.to_dict(), "cache_dir": os.path.abspath(cache_dir),
                               "hits": sum(hits.values()), "graphs": len(hits)}
    if precision == "fp16":
        manifest["fp16_rules"] = options.keep_rules.to_dict()
    else:
        manifest["int8_settings"] = options.int8.to_dict()
    if precision == "auto":
        manifest["precision"] = loosest(manifest["graphs"])
        manifest["precision_choice"] = {"mode": "auto", "backend": options.auto.backend,
                                        "threads": options.auto.resolved_threads(),
                                        "settings": options.auto.to_dict(), "machine": facts,
                                        "candidates": names, "not_candidates": not_candidates,
                                        "chosen": {n: g["choice"]["chosen"] for n, g in manifest["graphs"].items()}}
    return manifest, readiness


def _int8(path: str, new: str, feeds: dict, entry: str, settings: Int8Settings, say, name: str) -> dict:
    """The int8 graph (quantised once per settings, ``int8_cache``), timed against fp32 on one
    thread; with ``--int8-min-speedup``, a graph not that much faster stays fp32."""
    info = int8_candidate(path, new, feeds, entry, settings, name, say)
    if info["precision"] != "int8":
        return info
    speed = time_graphs(path, new, feeds["held_out"])
    info["timing"] = speed
    if settings.min_speedup and speed["speedup"] < settings.min_speedup:
        os.unlink(new)
        info.update(precision="fp32", excluded=[],
                    reason=f"int8 is {speed['speedup']:.2f}x fp32 on this machine (held-out inputs, one "
                           f"thread), under --int8-min-speedup {settings.min_speedup:g}")
    return info


def _fp16(path: str, new: str, feeds: dict, rules: KeepRules, say, name: str) -> dict:
    import onnxruntime as ort
    model = onnx.load(path)
    m16, info = to_fp16(model, feeds["calibration"], rules)
    onnx.save(m16, new)
    err = output_error(ort.InferenceSession(path, providers=["CPUExecutionProvider"]),
                       ort.InferenceSession(new, providers=["CPUExecutionProvider"]), feeds["held_out"])
    info.update(precision="fp16", fp32_compute_nodes=fp32_nodes(m16), tolerance=FP16_TOLERANCE, **err,
                validated=bool(err["nan_inf"] == 0 and err["rel_to_max"] <= FP16_TOLERANCE))
    say(f"{name}: fp16, {info['kept_count']} node(s) kept in fp32 by measured ranges; held-out error "
        f"{err['rel_to_max']:.2e} of max |output|")
    for k in info["kept"]:
        say(f"  kept {k['node']} ({k['op']}): {k['reasons'][0]}")
    return info
