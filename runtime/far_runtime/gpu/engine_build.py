"""TensorRT engines from a bundle, built where they run: profiles from the shape plan, a
manifest that is the cache key. Part of the runtime (no torch, no far-export), so a board
that only has far-runtime and its own TensorRT builds its engines itself:

    far-runtime engines graphs/demo --precision fp16 --k 16:64 --batch 1:4
    far-export engines ...            # the same command, also under far-export

1. Profiles: ``engine_profiles.py`` (every shape the variant's plans can ask of a graph).
2. Precision. Engines are built strongly typed from the bundle's graphs, so their precision
   is the bundle's: FP16 engines from an FP16 bundle, INT8 engines from an INT8 (Q/DQ)
   bundle (``far-export build --precision ...``), FP32 from an FP32 one.
3. Cache key. An engine's key is everything that changes the engine: graph sha256,
   profiles, precision, calibration hash, build options, TensorRT's version and the CUDA
   major it is built for (from its wheel's name, or for a system TensorRT such as JetPack's
   from its Debian package's version: ``cuda_runtime.tensorrt_cuda``), GPU name and compute
   capability, and the sha256 of the builder's code (``engine_builder.py``). The command that
   reproduces the key (every option in it) is stored with each engine and quoted by every
   "rebuild with" sentence. The key material is stored in ``engines.json`` beside the
   engines; a build reuses an engine only when its key is identical and its file unchanged,
   and the runtime checks the same fields before it deserialises anything
   (``engine_manifest.check_engine``).
4. Build. ``engine_builder.py``: TensorRT's builder API directly, one config per engine with
   a shared timing cache (saved per GPU and TensorRT version). ``--graphs`` builds a subset
   and keeps the folder's other engines.

Everything up to the TensorRT call is plain data (``plan_engines``, ``engine_key``,
``engine_manifest_data``), tested on the CPU; TensorRT is imported only when an engine is
actually built.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass

from ..bundle import Bundle, load_bundle, sha256_file
from ..errors import FarError
from ..schedule import MAX_K
from .cuda_runtime import device_facts, import_cudart, import_tensorrt
from .engine_builder import TimingCache, atomic_write, build_engine, builder_code_sha256
from .engine_manifest import (ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_MANIFEST, HARDWARE_LEVELS,
                              PRECISIONS, GraphSource, bundle_precision, cache_key, default_engine_dir,
                              graph_source)
from .engine_profiles import engine_profiles

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZATION_LEVEL = 3
COMMAND = "far-runtime engines"      # the command quoted by manifests and "rebuild with" sentences


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
    cmd = [*COMMAND.split(), bundle_dir, "--precision", precision,
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


@dataclass(frozen=True)
class EngineJob:
    """Everything a build decides before TensorRT is imported: what to build, from which
    graphs, with which profiles and options, where, and the commands that reproduce it."""
    bundle: Bundle
    precision: str
    engine_dir: str
    k_range: tuple
    batch_range: tuple
    options: dict
    profiles: dict                 # {graph: [profile]}
    sources: dict                  # {graph: GraphSource}
    command: str                   # this build (with --graphs when a subset)
    folder_command: str            # the whole folder
    subset: bool


def plan_engines(bundle_dir: str, precision: str | None = None, out: str | None = None,
                 k_range=(1, MAX_K), batch_range=None, max_profiles: int = 4,
                 version_compatible: bool = False, hardware_compatibility: str = "none",
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, workspace_gb: float | None = None,
                 graphs=None) -> EngineJob:
    """Check every option and derive the build, needing no TensorRT: every refusal a user can
    cause happens here, before anything is imported or written."""
    bundle = load_bundle(bundle_dir)
    precision = precision or bundle_precision(bundle)
    if precision not in PRECISIONS:
        raise FarError(f"--precision takes {', '.join(PRECISIONS)}, got {precision!r}.")
    batch_range = tuple(batch_range or (1, bundle.manifest["max_batch"]))
    options = build_options(version_compatible, hardware_compatibility, optimization_level, workspace_gb)
    profiles = engine_profiles(bundle, k_range, batch_range, max_profiles, graphs)
    sources = {g: graph_source(bundle, g, precision) for g in profiles}   # all missing graphs fail here
    return EngineJob(bundle, precision, out or default_engine_dir(bundle_dir, precision), tuple(k_range),
                     batch_range, options, profiles, sources,
                     engines_command(bundle_dir, precision, out, k_range, batch_range, max_profiles, options, graphs),
                     engines_command(bundle_dir, precision, out, k_range, batch_range, max_profiles, options),
                     bool(graphs))


def timing_cache_name(facts: dict) -> str:
    """The timing cache's file: one per GPU, compute capability, TensorRT and its CUDA major."""
    return (f"timing-{_slug(facts['gpu'])}-sm{facts['compute_capability']}"
            f"-trt{facts['tensorrt']}-cu{facts['tensorrt_cuda']}.cache")


def engine_entry(job: EngineJob, graph: str, key: dict, data: bytes, seconds: float, driver: str) -> dict:
    """The manifest entry of a freshly built engine (its file is named after its key)."""
    name = engine_file_name(graph, cache_key(key))
    return {"file": name, "sha256": sha256_file(os.path.join(job.engine_dir, name)), "cache_key": cache_key(key),
            "key": key, "bytes": len(data), "command": job.command, "k_range": list(job.k_range),
            "batch_range": list(job.batch_range), "build_seconds": round(seconds, 2), "driver": driver}


def engine_manifest_data(job: EngineJob, facts: dict, entries: dict, previous: dict) -> dict:
    """The new ``engines.json``: this build's entries (with a subset build, the previous
    build's engines of the other graphs too) and the facts they were built on."""
    return {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bundle": os.path.abspath(job.bundle.root), "precision": job.precision,
            "k_range": list(job.k_range), "batch_range": list(job.batch_range), "command": job.folder_command,
            "built_on": facts, "timing_cache": timing_cache_name(facts),
            "engines": merge_entries(previous, entries, job.subset, job.bundle)}


def write_engine_manifest(job: EngineJob, manifest: dict, previous: dict) -> None:
    """Write ``engines.json`` (atomically), then delete the engine files no entry points at."""
    atomic_write(os.path.join(job.engine_dir, ENGINE_MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
    for name in unreferenced_files(previous, manifest["engines"]):
        stale = os.path.join(job.engine_dir, name)
        if os.path.isfile(stale):
            os.unlink(stale)


def build_engines(bundle_dir: str, precision: str | None = None, out: str | None = None,
                  k_range=(1, MAX_K), batch_range=None, max_profiles: int = 4,
                  version_compatible: bool = False, hardware_compatibility: str = "none",
                  optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, workspace_gb: float | None = None,
                  graphs=None, force: bool = False, progress=None) -> dict:
    """Build (or reuse) one engine per graph; returns the engine manifest written to ``out``.

    With ``graphs``, only those are built and the folder's other engines are kept.
    """
    say = progress or log.info
    job = plan_engines(bundle_dir, precision, out, k_range, batch_range, max_profiles, version_compatible,
                       hardware_compatibility, optimization_level, workspace_gb, graphs)
    trt = import_tensorrt(builder=True)
    facts = device_facts(trt, import_cudart())
    previous = (read_manifest(job.engine_dir) or {}).get("engines", {})
    candidates = {} if force else previous
    specs = job.bundle.specs()
    logger = trt.Logger(trt.Logger.WARNING)
    timing = TimingCache(trt, os.path.join(job.engine_dir, timing_cache_name(facts)))
    builder = builder_code_sha256()
    entries, built, reused = {}, 0, 0
    for i, (graph, profs) in enumerate(job.profiles.items()):
        key = engine_key(job.sources[graph], profs, job.options, facts, builder)
        digest = cache_key(key)
        if reusable(candidates.get(graph), key, job.engine_dir):
            entries[graph] = {**candidates[graph], "command": job.command, "k_range": list(job.k_range),
                              "batch_range": list(job.batch_range)}
            reused += 1
            say(f"[{i + 1}/{len(job.profiles)}] {graph}: up to date ({digest[:16]})")
            continue
        say(f"[{i + 1}/{len(job.profiles)}] {graph}: building {job.precision} engine, {len(profs)} profile(s)")
        t0 = time.perf_counter()
        data = build_engine(trt, logger, job.sources[graph], specs[graph], profs, job.options, timing)
        atomic_write(os.path.join(job.engine_dir, engine_file_name(graph, digest)), data)
        entries[graph] = engine_entry(job, graph, key, data, time.perf_counter() - t0, facts["driver"])
        built += 1
        timing.save()
        say(f"[{i + 1}/{len(job.profiles)}] {graph}: {len(data) / 1e6:.1f} MB in {entries[graph]['build_seconds']:.1f}s")
    manifest = engine_manifest_data(job, facts, entries, previous)
    write_engine_manifest(job, manifest, previous)
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
