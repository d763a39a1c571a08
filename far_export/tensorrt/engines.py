"""TensorRT engines from a bundle: profiles from the shape plan, a manifest that is the cache key.

    far-export engines graphs/demo --precision fp16 --k 16:64 --batch 1:4

1. Profiles. Every shape a generate() can ask of a graph comes from the plans of the
   bundle's variant (``far_runtime.variants``: ``variant.plan``) over the requested K range
   (the K the variant accepts in it: FAR-Causal's is L), batch range, CFG on and off, fused
   and per-step heads, and every loop mode of the variant (FAR-Causal: KV cache and
   recompute). Dims a graph's spec does not have are dropped (the ``slot`` of FAR-Causal's
   two step bindings: both share the step engine). Per graph, the shapes are split on their widest dim into at most
   ``max_profiles`` geometric buckets; each bucket becomes one optimisation profile with
   min/max of its shapes and, as opt, the call-weighted median (the shape TensorRT should
   be fastest at is the one called most). The dims and their limits are the component
   specs' (``far_runtime.specs``); nothing here knows a tensor name or a dim of its own.
2. Precision. Engines are built strongly typed from the bundle's graphs, so their precision
   is the bundle's: FP16 engines from an FP16 bundle, INT8 engines from an INT8 (Q/DQ)
   bundle (``far-export build --precision ...``), FP32 from an FP32 one.
3. Cache key. An engine's key is everything that changes the engine: graph sha256,
   profiles, precision, calibration hash, build options, TensorRT's version and the CUDA
   major it is built for, GPU name and compute capability, and the sha256 of the builder's
   code (``builder.py``). The command that reproduces the key (every option in it) is
   stored with each engine and quoted by every "rebuild with" sentence. The key material is stored in ``engines.json`` beside the
   engines; a build reuses an engine only when its key is identical and its file unchanged,
   and the runtime checks the same fields before it deserialises anything
   (``far_runtime.gpu.engine_manifest.check_engine``).
4. Build. ``builder.py``: TensorRT's builder API directly, one config per engine with a
   shared timing cache (saved per GPU and TensorRT version). ``--graphs`` builds a subset
   and keeps the folder's other engines.

TensorRT is imported only when an engine is actually built.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from collections import Counter, defaultdict

from far_runtime.bundle import Bundle, load_bundle, sha256_file
from far_runtime.errors import FarError
from far_runtime.schedule import MAX_K
from far_runtime.specs import ComponentSpec, fused_name
from far_runtime.variants import variant_for
from far_runtime.gpu.cuda_runtime import device_facts, import_cudart, import_tensorrt

from .builder import TimingCache, atomic_write, build_engine, builder_code_sha256
from far_runtime.gpu.engine_manifest import (ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_MANIFEST,
                                         HARDWARE_LEVELS, PRECISIONS, GraphSource, bundle_precision,
                                         cache_key, default_engine_dir, graph_source)

log = logging.getLogger(__name__)

SPLIT_RATIO = 4.0        # one profile spans at most this factor on its split dim (if it can)
DEFAULT_OPTIMIZATION_LEVEL = 3


# --- shapes and profiles --------------------------------------------------------------------

def parse_range(text: str, what: str, lo: int, hi: int) -> tuple[int, int]:
    """``"16:64"`` or ``"32"`` -> (16, 64) / (32, 32), within [lo, hi]."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not lo <= parts[0] <= parts[1] <= hi:
        raise FarError(f"--{what} takes MIN:MAX (or one value) with {lo} <= MIN <= MAX <= {hi}, got {text!r}.")
    return parts[0], parts[1]


def plan_shapes(bundle: Bundle, k_range: tuple[int, int], batch_range: tuple[int, int]) -> dict:
    """``{graph: Counter({dims: calls})}`` over every plan in the K and batch ranges.

    Covers CFG on and off, the fused head of every exported O and the per-step head (each
    with its O calls per iteration), every loop mode of the variant, and the VAE decode; only
    graphs the bundle has. A call's dims are those of its graph's spec.
    """
    model, manifest = bundle.model, bundle.manifest
    variant = variant_for(model)
    specs = bundle.specs()
    diffusion = model["head_kind"] == "diffusion"
    head_steps = [model["diffusion_steps"]] if diffusion else list(manifest["head_steps"]) or [1]
    modes = ["step"] if diffusion else (["fused"] if bundle.has(fused_name(head_steps[0])) else []) + (
        ["step"] if bundle.has("head_step") else [])
    loops = [m for m in variant.modes if m is not None] or [None]
    ks = variant_ks(variant, model, k_range)
    calls = Counter()
    for K in ks:
        for batch in range(batch_range[0], batch_range[1] + 1):
            for use_cfg in (False, True):
                for mode in modes or ["fused"]:
                    steps = head_steps[0] if mode == "fused" else max(head_steps)
                    for loop in loops:
                        plan = variant.plan(model, batch, K, steps, use_cfg, mode, bundle.has("vae_decoder"),
                                            manifest["max_batch"], loop)
                        calls.update(profile_key(c.key, specs) for c in plan.calls())
    out: dict = defaultdict(Counter)
    for (graph, dims), n in calls.items():
        out[graph][dims] = n
    if not diffusion:            # fused graphs of every O share the first one's shapes
        first = fused_name(head_steps[0])
        for o in head_steps[1:]:
            if first in out:
                out[fused_name(o)] = Counter(out[first])
    return {g: c for g, c in out.items() if bundle.has(g)}


def variant_ks(variant, model: dict, k_range: tuple[int, int]) -> list[int]:
    """The K values in ``k_range`` the variant runs (FAR/MAR: all; FAR-Causal: L alone)."""
    ks = []
    for K in range(k_range[0], k_range[1] + 1):
        try:
            ks.append(variant.check_k(K, model))
        except FarError:
            continue
    if not ks:
        raise FarError(f"{variant.title} runs K = {variant.default_k(model)} only, outside --k "
                       f"{k_range[0]}:{k_range[1]}; widen --k (or leave it out).")
    return sorted(set(ks))


def profile_key(key: tuple, specs: dict) -> tuple:
    """A call's shape key with only its graph's spec dims (FAR-Causal's two step bindings,
    told apart by ``slot``, are one shape to TensorRT)."""
    graph, dims = key
    spec = specs.get(graph)
    if spec is None:
        return key
    names = set(spec.dynamic_dims)
    return graph, tuple((d, v) for d, v in dims if d in names)


def _weighted_median(values_counts: list[tuple[int, int]]) -> int:
    items = sorted(values_counts)
    total = sum(c for _, c in items)
    acc = 0
    for v, c in items:
        acc += c
        if 2 * acc >= total:
            return v
    return items[-1][0]


def _span(values) -> float:
    return max(values) / max(min(values), 1)


def derive_profiles(spec: ComponentSpec, shapes: Counter, max_profiles: int = 4,
                    ratio: float = SPLIT_RATIO) -> list[dict]:
    """Optimisation profiles ``[{dim: [min, opt, max]}]`` that cover every shape in ``shapes``.

    ``shapes``: ``Counter({dims tuple: calls})`` as ``plan_shapes`` gives it. Shapes outside
    the spec's range (what the graph was exported and validated for) are refused.
    """
    if max_profiles < 1:
        raise FarError(f"--max-profiles must be at least 1, got {max_profiles}.")
    dims_list = [(dict(d), c) for d, c in shapes.items()]
    if not dims_list:
        raise FarError(f"No call of '{spec.name}' falls in the requested K and batch ranges.")
    names = spec.dynamic_dims
    for dims, _ in dims_list:
        if sorted(dims) != sorted(names):
            raise ValueError(f"plan dims {sorted(dims)} are not the spec dims {sorted(names)} of {spec.name}")
        for d, v in dims.items():
            lo, _, hi = spec.ranges[d]
            if not lo <= v <= hi:
                raise FarError(f"'{spec.name}' would need {d} = {v}, outside the range {lo}..{hi} the "
                               "bundle was exported for; narrow --batch/--k or re-export with a larger --max-batch.")
    split = max(names, key=lambda d: _span([dims[d] for dims, _ in dims_list]))
    values = sorted({dims[split] for dims, _ in dims_list})
    step = max(ratio, _span(values) ** (1.0 / max_profiles))
    buckets = [[values[0]]]
    for v in values[1:]:
        if v <= max(buckets[-1][0], 1) * step:
            buckets[-1].append(v)
        else:
            buckets.append([v])
    while len(buckets) > max_profiles:          # merge the adjacent pair that stays narrowest
        i = min(range(len(buckets) - 1), key=lambda j: _span(buckets[j] + buckets[j + 1]))
        buckets[i:i + 2] = [buckets[i] + buckets[i + 1]]
    profiles = []
    for bucket in buckets:
        members = [(dims, c) for dims, c in dims_list if bucket[0] <= dims[split] <= bucket[-1]]
        prof = {}
        for d in names:
            vals = [dims[d] for dims, _ in members]
            prof[d] = [min(vals), _weighted_median([(dims[d], c) for dims, c in members]), max(vals)]
        profiles.append(prof)
    return profiles


def engine_profiles(bundle: Bundle, k_range, batch_range, max_profiles: int = 4,
                    graphs=None) -> dict[str, list[dict]]:
    """Profiles of every graph (or of ``graphs``), derived from the plan over the ranges."""
    max_batch = bundle.manifest["max_batch"]
    if batch_range[1] > max_batch:
        raise FarError(f"--batch goes up to {batch_range[1]}, but the bundle was exported for at most "
                       f"{max_batch}; re-export with --max-batch {batch_range[1]} or narrow --batch.")
    specs = bundle.specs()
    shapes = plan_shapes(bundle, k_range, batch_range)
    wanted = list(graphs) if graphs else list(bundle.graphs)
    unknown = [g for g in wanted if not bundle.has(g)]
    if unknown:
        raise FarError(f"The bundle has no '{unknown[0]}' graph (it has {', '.join(bundle.graphs)}).")
    return {g: derive_profiles(specs[g], shapes[g], max_profiles) for g in wanted if g in shapes}


# --- the engine manifest --------------------------------------------------------------------

def build_options(version_compatible: bool = False, hardware_compatibility: str = "none",
                  optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, workspace_gb: float | None = None) -> dict:
    if hardware_compatibility not in HARDWARE_LEVELS:
        raise FarError(f"--hardware-compatible takes {', '.join(HARDWARE_LEVELS)}, got {hardware_compatibility!r}.")
    if not 0 <= optimization_level <= 5:
        raise FarError(f"--optimization-level must be in 0..5, got {optimization_level}.")
    if workspace_gb is not None and not workspace_gb > 0:
        raise FarError(f"--workspace-gb must be a positive number of GiB, got {workspace_gb}.")
    return {"strongly_typed": True, "version_compatible": bool(version_compatible),
            "hardware_compatibility": hardware_compatibility, "optimization_level": optimization_level,
            "workspace_bytes": int(workspace_gb * (1 << 30)) if workspace_gb else None}


def engine_key(source: GraphSource, profiles: list, options: dict, facts: dict,
               builder: str | None = None) -> dict:
    """The key material of one engine (stored in the manifest; its sha256 is the cache key).

    TensorRT's version and the CUDA major TensorRT is built for (not cuda-python's, which
    changes with any cuda-python upgrade), the GPU, and the builder's own code.
    """
    return {"graph": source.graph, "graph_sha256": source.sha256, "precision": source.precision,
            "calibration_sha256": source.calibration_sha256, "profiles": profiles,
            "options": options, "tensorrt": facts["tensorrt"], "tensorrt_cuda": facts["tensorrt_cuda"],
            "gpu": facts["gpu"], "compute_capability": facts["compute_capability"],
            "builder": builder or builder_code_sha256()}


def reusable(entry: dict | None, key: dict, engine_dir: str) -> bool:
    """An existing engine may be reused only for an identical key and an unchanged file."""
    if not entry or entry.get("cache_key") != cache_key(key) or entry.get("key") != key:
        return False
    path = os.path.join(engine_dir, entry["file"])
    return os.path.isfile(path) and sha256_file(path) == entry["sha256"]


def engine_file_name(graph: str, key_digest: str) -> str:
    return f"{graph}-{key_digest[:16]}.engine"


def read_manifest(engine_dir: str) -> dict | None:
    """The previous build's manifest, or None when there is none usable (then all is rebuilt)."""
    path = os.path.join(engine_dir, ENGINE_MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(m, dict) and m.get("format") == ENGINE_FORMAT and m.get("format_version") == ENGINE_FORMAT_VERSION
    return m if ok and isinstance(m.get("engines"), dict) else None


def engines_command(bundle_dir: str, precision: str, out: str | None, k_range, batch_range,
                    max_profiles: int, options: dict, graphs=None) -> str:
    """The command that rebuilds these engines (quoted by every "rebuild with" error).

    Every option that is part of the key is in it, so following it reproduces the key;
    tests/test_engines.py parses it back through the CLI to check that.
    """
    cmd = ["far-export", "engines", bundle_dir, "--precision", precision,
           "--k", f"{k_range[0]}:{k_range[1]}", "--batch", f"{batch_range[0]}:{batch_range[1]}"]
    if out:
        cmd += ["--out", out]
    if max_profiles != 4:
        cmd += ["--max-profiles", str(max_profiles)]
    if options["version_compatible"]:
        cmd.append("--version-compatible")
    if options["hardware_compatibility"] != "none":
        cmd += ["--hardware-compatible", options["hardware_compatibility"]]
    if options["optimization_level"] != DEFAULT_OPTIMIZATION_LEVEL:
        cmd += ["--optimization-level", str(options["optimization_level"])]
    if options["workspace_bytes"]:
        cmd += ["--workspace-gb", repr(options["workspace_bytes"] / (1 << 30))]   # exact: a power of 2
    if graphs:
        cmd += ["--graphs", ",".join(graphs)]
    return shlex.join(cmd)


def merge_entries(old: dict, built: dict, subset: bool, bundle: Bundle) -> dict:
    """The engines of the new manifest: this build's, plus (for a ``--graphs`` subset build)
    the previous build's engines of every other graph the bundle still has."""
    if not subset:
        return dict(built)
    kept = {g: e for g, e in old.items() if g not in built and bundle.has(g)}
    return {**kept, **built}


def unreferenced_files(old: dict, new: dict) -> list[str]:
    """Engine files of the previous manifest that no entry of the new one points at."""
    keep = {e.get("file") for e in new.values()}
    return sorted({e["file"] for e in old.values() if e.get("file") and e["file"] not in keep})


# --- building -----------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def build_engines(bundle_dir: str, precision: str | None = None, out: str | None = None,
                  k_range=(1, MAX_K), batch_range=None, max_profiles: int = 4,
                  version_compatible: bool = False, hardware_compatibility: str = "none",
                  optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, workspace_gb: float | None = None,
                  graphs=None, force: bool = False, progress=None) -> dict:
    """Build (or reuse) one engine per graph; returns the engine manifest written to ``out``.

    With ``graphs``, only those are built and the folder's other engines are kept.
    """
    say = progress or log.info
    bundle = load_bundle(bundle_dir)
    precision = precision or bundle_precision(bundle)
    if precision not in PRECISIONS:
        raise FarError(f"--precision takes {', '.join(PRECISIONS)}, got {precision!r}.")
    batch_range = tuple(batch_range or (1, bundle.manifest["max_batch"]))
    options = build_options(version_compatible, hardware_compatibility, optimization_level, workspace_gb)
    profiles = engine_profiles(bundle, k_range, batch_range, max_profiles, graphs)
    sources = {g: graph_source(bundle, g, precision) for g in profiles}   # all missing graphs fail here
    engine_dir = out or default_engine_dir(bundle_dir, precision)
    command = engines_command(bundle_dir, precision, out, k_range, batch_range, max_profiles, options, graphs)
    folder_command = engines_command(bundle_dir, precision, out, k_range, batch_range, max_profiles, options)

    trt = import_tensorrt(builder=True)
    facts = device_facts(trt, import_cudart())
    old = read_manifest(engine_dir) or {}
    previous = old.get("engines", {})
    candidates = {} if force else previous
    specs = bundle.specs()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = os.path.join(engine_dir, f"timing-{_slug(facts['gpu'])}-sm{facts['compute_capability']}"
                                          f"-trt{facts['tensorrt']}-cu{facts['tensorrt_cuda']}.cache")
    timing = TimingCache(trt, cache_path)
    builder = builder_code_sha256()
    entries, built, reused = {}, 0, 0
    for i, (graph, profs) in enumerate(profiles.items()):
        key = engine_key(sources[graph], profs, options, facts, builder)
        digest = cache_key(key)
        if reusable(candidates.get(graph), key, engine_dir):
            entries[graph] = {**candidates[graph], "command": command, "k_range": list(k_range),
                              "batch_range": list(batch_range)}
            reused += 1
            say(f"[{i + 1}/{len(profiles)}] {graph}: up to date ({digest[:16]})")
            continue
        say(f"[{i + 1}/{len(profiles)}] {graph}: building {precision} engine, {len(profs)} profile(s)")
        t0 = time.perf_counter()
        data = build_engine(trt, logger, sources[graph], specs[graph], profs, options, timing)
        name = engine_file_name(graph, digest)
        atomic_write(os.path.join(engine_dir, name), data)
        entries[graph] = {"file": name, "sha256": sha256_file(os.path.join(engine_dir, name)),
                          "cache_key": digest, "key": key, "bytes": len(data), "command": command,
                          "k_range": list(k_range), "batch_range": list(batch_range),
                          "build_seconds": round(time.perf_counter() - t0, 2), "driver": facts["driver"]}
        built += 1
        timing.save()
        say(f"[{i + 1}/{len(profiles)}] {graph}: {len(data) / 1e6:.1f} MB in {entries[graph]['build_seconds']:.1f}s")
    entries = merge_entries(previous, entries, bool(graphs), bundle)
    manifest = {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "bundle": os.path.abspath(bundle_dir), "precision": precision,
                "k_range": list(k_range), "batch_range": list(batch_range), "command": folder_command,
                "built_on": facts, "timing_cache": os.path.basename(cache_path), "engines": entries}
    atomic_write(os.path.join(engine_dir, ENGINE_MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
    for name in unreferenced_files(previous, entries):
        stale = os.path.join(engine_dir, name)
        if os.path.isfile(stale):
            os.unlink(stale)
    manifest["built"], manifest["reused"] = built, reused
    return manifest


def maybe_build_engines(bundle_dir: str, precision: str | None = None) -> str:
    """The engine step of ``far-export build``: engines where TensorRT exists; one status line."""
    try:
        import_tensorrt(builder=True)
    except FarError as e:
        return f"engines: none built: {e}"
    try:
        m = build_engines(bundle_dir, precision)
    except FarError as e:
        return f"engines: none built: {e}"
    precision = m["precision"]
    where = default_engine_dir(bundle_dir, precision)
    return (f"engines: {len(m['engines'])} {precision} engines in {where} ({m['built']} built, "
            f"{m['reused']} reused) for {m['built_on']['gpu']}, TensorRT {m['built_on']['tensorrt']}.")
