"""The engine manifest (``engines.json``) and the checks that guard an engine folder.

Plain data, no TensorRT or CUDA needed: which graph an engine is built from and its hash,
optimisation profiles and their lookup, the cache key, and the compatibility checks run
before any engine is deserialised, each ending in one "rebuild with ..." sentence.
``far-runtime engines`` (``engine_build.py``) writes the manifest; ``trt_backend.TrtBackend`` checks it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..bundle import Bundle
from ..errors import FarError
from ..plan import Call, Plan

ENGINE_MANIFEST = "engines.json"
ENGINE_FORMAT = "far-export-engines"
ENGINE_FORMAT_VERSION = 2            # 2: key has tensorrt_cuda and builder (not cuda-python's version)
PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_LEVELS = ("none", "same-cc", "ampere+")
# Version-compatible engines also run on these later major versions (TensorRT docs).
CROSS_MAJOR = {(8, 10), (10, 11)}


# --- which graph an engine is built from ---------------------------------------------------

@dataclass(frozen=True)
class GraphSource:
    """The ONNX graph of one component at one precision, as the bundle manifest records it."""
    graph: str
    precision: str
    path: str
    sha256: str                         # over every file of the graph (weights included)
    calibration_sha256: str | None      # INT8 Q/DQ graphs: hash of the calibration data


def graph_sha256(files: dict) -> str:
    """One digest over a graph's files (``{file name: sha256}`` as in the bundle manifest)."""
    text = "\n".join(f"{name} {digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def graph_source(bundle: Bundle, graph: str, precision: str) -> GraphSource:
    """The graph to build a ``precision`` engine from: the bundle's own graph, which must be
    of that precision.

    FP16 engines are built strongly typed from an FP16 bundle's graphs, INT8 engines from an
    INT8 bundle's Q/DQ graphs (``far-export build --precision ...``): TensorRT takes every
    type from the graph, so the engine's precision is the bundle's (``manifest["precision"]``;
    a graph kept in float by the INT8 builder stays so in its engine). For FP16/INT8 the
    hash of the recorded calibration inputs (``graphs[g][precision]["calibration"]
    ["cache_key"]``) is part of the engine's key.
    """
    if precision not in PRECISIONS:
        raise FarError(f"Precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    have = bundle_precision(bundle)
    if have != precision:
        what = {"fp16": "FP16", "int8": "Q/DQ (INT8)", "fp32": "FP32"}[precision]
        raise FarError(f"The bundle holds {have} graphs, not the {what} graphs {precision} engines are "
                       f"built from; build a bundle with `far-export build --precision {precision}`.")
    if not bundle.has(graph):
        raise FarError(f"The bundle has no '{graph}' graph.")
    entry = bundle.graphs[graph]
    calibration = (entry.get(precision) or {}).get("calibration", {}).get("cache_key") \
        if precision != "fp32" else None
    return GraphSource(graph, precision, bundle.path(graph), graph_sha256(entry["files"]), calibration)


def bundle_precision(bundle: Bundle) -> str:
    return bundle.manifest.get("precision", "fp32")


# --- optimisation profiles ----------------------------------------------------------------
# A profile is {dim: [min, opt, max]} over a graph's dynamic dims; an engine has a list.

def covers(profile: dict, dims: dict) -> bool:
    return all(lo <= dims[d] <= hi for d, (lo, _, hi) in profile.items())


def select_profile(profiles: list, dims: dict) -> int | None:
    """Index of the first profile that covers ``dims`` (profiles are built disjoint on the
    dim they split), or None."""
    for i, p in enumerate(profiles):
        if covers(p, dims):
            return i
    return None


# --- the engine manifest and its checks ---------------------------------------------------

def default_engine_dir(bundle_root: str, precision: str) -> str:
    return os.path.join(bundle_root, "engines", precision)


def cache_key(key: dict) -> str:
    """The cache key of an engine: sha256 of its canonical key material."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_engine_manifest(engine_dir: str, rebuild: str) -> dict:
    path = os.path.join(engine_dir, ENGINE_MANIFEST)
    if not os.path.isfile(path):
        raise FarError(f"{engine_dir} holds no engines ({ENGINE_MANIFEST} is missing); build them "
                       f"with {rebuild}.")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FarError(f"{path} is not valid JSON; rebuild with {rebuild}.") from None
    if manifest.get("format") != ENGINE_FORMAT or manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise FarError(f"{path} is not an engine manifest this runtime reads (format "
                       f"{manifest.get('format')} v{manifest.get('format_version')}); rebuild with {rebuild}.")
    return manifest


def _version(text: str) -> tuple:
    out = []
    for part in str(text).split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _cc(text: str) -> tuple:
    return _version(text)[:2]


def check_engine(graph: str, entry: dict, facts: dict, source: GraphSource, rebuild: str) -> None:
    """Refuse an engine that does not belong to this graph, precision, TensorRT or GPU.

    Runs before deserialisation, so a mismatch ends in one sentence that says how to rebuild
    instead of a TensorRT crash. ``entry``: the engine's manifest entry; ``facts``: this
    machine's ``device_facts``; ``source``: the bundle's graph for the requested precision.
    """
    key = entry["key"]
    opts = key["options"]
    if key["precision"] != source.precision:
        raise FarError(f"The '{graph}' engine is {key['precision']}, not the requested "
                       f"{source.precision}; rebuild with {rebuild}.")
    if key["graph_sha256"] != source.sha256:
        raise FarError(f"The '{graph}' engine was built from a different graph than the bundle now "
                       f"holds (graph sha256 changed); rebuild with {rebuild}.")
    if key.get("calibration_sha256") != source.calibration_sha256:
        raise FarError(f"The '{graph}' engine was built with other INT8 calibration data; "
                       f"rebuild with {rebuild}.")
    lean = facts.get("tensorrt_module") == "tensorrt_lean"
    if lean and not opts.get("version_compatible"):
        raise FarError(f"The '{graph}' engine was not built --version-compatible, and the lean TensorRT "
                       f"runtime (tensorrt_lean) here runs only such engines; rebuild with {rebuild} "
                       "adding --version-compatible, or install the full TensorRT.")
    cuda_built, cuda_here = key.get("tensorrt_cuda", "unknown"), facts.get("tensorrt_cuda", "unknown")
    if "unknown" not in (cuda_built, cuda_here) and cuda_built != cuda_here:
        raise FarError(f"The '{graph}' engine was built with TensorRT for CUDA {cuda_built}, but this "
                       f"machine's TensorRT is for CUDA {cuda_here}; rebuild with {rebuild}.")
    built, here = _version(key["tensorrt"]), _version(facts["tensorrt"])
    if opts.get("version_compatible"):
        same_line = built[0] == here[0] or (built[0], here[0]) in CROSS_MAJOR
        if here < built or not same_line:
            raise FarError(f"The '{graph}' engine was built (version-compatible) with TensorRT "
                           f"{key['tensorrt']}, which TensorRT {facts['tensorrt']} cannot run; "
                           f"rebuild with {rebuild}.")
    elif built != here:
        raise FarError(f"The '{graph}' engine was built with TensorRT {key['tensorrt']} but this "
                       f"machine has TensorRT {facts['tensorrt']}; rebuild with {rebuild} "
                       "(add --version-compatible to make engines that later versions can run).")
    level = opts.get("hardware_compatibility", "none")
    cc_built, cc_here = _cc(key["compute_capability"]), _cc(facts["compute_capability"])
    if level == "ampere+":
        if cc_here < (8, 0):
            raise FarError(f"The '{graph}' engine is hardware-compatible for Ampere and newer GPUs, "
                           f"but {facts['gpu']} has compute capability {facts['compute_capability']}; "
                           f"rebuild with {rebuild} on this GPU.")
    elif cc_built != cc_here or (level == "none" and key["gpu"] != facts["gpu"]):
        raise FarError(f"The '{graph}' engine was built for {key['gpu']} (compute capability "
                       f"{key['compute_capability']}) but this GPU is {facts['gpu']} (compute "
                       f"capability {facts['compute_capability']}); rebuild with {rebuild} on this GPU"
                       + ("." if level != "none" else " (or build with --hardware-compatible ampere+)."))


def check_engine_file(graph: str, entry: dict, engine_dir: str, rebuild: str) -> str:
    """Path of the engine file after checking it is there and unmodified."""
    from ..bundle import sha256_file
    path = os.path.join(engine_dir, entry["file"])
    if not os.path.isfile(path):
        raise FarError(f"The '{graph}' engine file {path} is missing; rebuild with {rebuild}.")
    if sha256_file(path) != entry["sha256"]:
        raise FarError(f"The '{graph}' engine file {path} does not match its manifest (modified "
                       f"or from another build); rebuild with {rebuild}.")
    return path


def check_call_covered(call: Call, entry: dict | None, manifest: dict, rebuild: str) -> int:
    """Index of the profile of ``call``'s engine that covers its dims, or a FarError."""
    if entry is None:
        raise FarError(f"There is no '{call.graph}' engine; rebuild with {rebuild}.")
    dims = dict(call.dims)
    profile = select_profile(entry["key"]["profiles"], dims)
    if profile is None:
        k = entry.get("k_range") or manifest.get("k_range", ["?", "?"])
        b = entry.get("batch_range") or manifest.get("batch_range", ["?", "?"])
        raise FarError(f"The '{call.graph}' engine has no optimisation profile for {dims} "
                       f"(built for K in {k[0]}..{k[1]} and batch {b[0]}..{b[1]}); rebuild with "
                       f"{rebuild} and a --k/--batch range that covers this run.")
    return profile


def check_plan_covered(plan: Plan, engines: dict, manifest: dict, rebuild: str) -> None:
    """Every call of ``plan`` has an engine and a profile that covers its dims."""
    for call in plan.distinct():
        check_call_covered(call, engines.get(call.graph), manifest, rebuild)


def rebuild_command(bundle_root: str, precision: str, manifest: dict | None = None,
                    entry: dict | None = None) -> str:
    """The quoted command that rebuilds an engine folder, or one engine of it (``entry``):
    the exact command of the build that made it, every option of its key included."""
    if entry and entry.get("command"):
        return f"`{entry['command']}`"
    if manifest and manifest.get("command"):
        return f"`{manifest['command']}`"
    return f"`far-runtime engines {bundle_root} --precision {precision}`"
