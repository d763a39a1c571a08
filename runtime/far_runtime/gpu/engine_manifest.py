"""The engine manifest (``engines.json``) and the checks that guard an engine folder.

Plain data, no TensorRT or CUDA needed: which graph an engine is built from and its hash,
optimisation profiles and their lookup, the cache key, and the compatibility checks run
before any engine is deserialised, each ending in one "rebuild with ..." sentence.
``far-runtime engines`` (``engine_build.py``) writes the manifest; ``trt_backend.TrtBackend`` checks it.

``engines.json`` is untrusted input, checked as strictly as ``manifest.json``: its size before
it is read, its structure (``check_engine_structure``: every field the runtime reads, of the
right type and range), and every engine path through the bundle's containment rules
(``bundle.inside``: no ``..``, no absolute path, no symlink out of the engine folder) before
any engine file is read. The "rebuild with ..." advice is composed here from the project's
own words and validated values only (``rebuild_command``); the manifest's ``command`` text is
never echoed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass

from ..bundle import CONTROL_CHARS, MAX_MANIFEST_BYTES, PRECISIONS, SHA256_HEX, Bundle, inside
from ..errors import FarError
from ..limits import is_int
from ..plan import Call, Plan

ENGINE_MANIFEST = "engines.json"
ENGINE_FORMAT = "far-export-engines"
ENGINE_FORMAT_VERSION = 2            # 2: key has tensorrt_cuda and builder (not cuda-python's version)
HARDWARE_LEVELS = ("none", "same-cc", "ampere+")
# Version-compatible engines also run on these later major versions (TensorRT docs).
CROSS_MAJOR = {(8, 10), (10, 11)}
DEFAULT_OPTIMIZATION_LEVEL = 3       # far-runtime engines' default (engines_cli.py)
DEFAULT_MAX_PROFILES = 4
MAX_ENGINES, MAX_PROFILES, MAX_DIM = 256, 64, 1 << 31
_VERSION = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,6}){0,4}$")
_CC = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}$")
_GPU = re.compile(r"^[A-Za-z0-9 _.,()/+-]{1,100}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
    calibration = None
    if precision != "fp32":
        info = entry.get(precision)
        cal = info.get("calibration") if isinstance(info, dict) else None
        calibration = cal.get("cache_key") if isinstance(cal, dict) else None
        if calibration is not None and (not isinstance(calibration, str) or not _NAME.match(calibration)):
            raise FarError(f"The bundle's '{graph}' graph records a malformed calibration key; rebuild the bundle.")
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
    """``engines.json`` of ``engine_dir``, read (size first) and checked for structure and
    for every engine path staying inside the folder, before any engine file is touched."""
    path = os.path.join(engine_dir, ENGINE_MANIFEST)
    if not os.path.isfile(path):
        raise FarError(f"{engine_dir} holds no engines ({ENGINE_MANIFEST} is missing); build them "
                       f"with {rebuild}.")
    inside(engine_dir, ENGINE_MANIFEST, "engine")      # the manifest itself may not lead out
    too_large = FarError(f"{path} is too large to be an engine manifest.")
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise too_large
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise FarError(f"{path} cannot be read ({e.strerror or type(e).__name__}); rebuild with {rebuild}.") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise too_large
    manifest = parse_engine_manifest(data, path, rebuild)
    for entry in manifest["engines"].values():
        inside(engine_dir, entry["file"], "engine")
    return manifest


def parse_engine_manifest(data: bytes, path: str, rebuild: str) -> dict:
    """The structurally checked engine manifest of these bytes (the fuzz target)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):      # JSONDecodeError, UnicodeDecodeError, int-digit limit
        raise FarError(f"{path} is not valid JSON; rebuild with {rebuild}.") from None
    check_engine_structure(manifest, path, rebuild)
    return manifest


def _range(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(is_int(x) for x in v) and 1 <= v[0] <= v[1] <= MAX_DIM


def _profile(p) -> bool:
    return isinstance(p, dict) and 0 < len(p) <= 16 and all(
        isinstance(d, str) and _NAME.match(d) and isinstance(r, list) and len(r) == 3
        and all(is_int(x) for x in r) and 0 <= r[0] <= r[1] <= r[2] <= MAX_DIM for d, r in p.items())


def _check_options(o, bad) -> None:
    if not isinstance(o, dict):
        bad("has no 'options' object")
    if not isinstance(o.get("version_compatible", False), bool) or \
            not isinstance(o.get("strongly_typed", True), bool):
        bad("has options that are not true or false")
    if o.get("hardware_compatibility", "none") not in HARDWARE_LEVELS:
        bad(f"has a hardware_compatibility other than {', '.join(HARDWARE_LEVELS)}")
    level, ws = o.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL), o.get("workspace_bytes")
    if not is_int(level) or not 0 <= level <= 5:
        bad("has an optimization_level outside 0..5")
    if ws is not None and (not is_int(ws) or not 0 < ws <= 1 << 50):
        bad("has a workspace_bytes that is not a positive integer")


def _check_entry(graph, e, bad) -> None:
    if not isinstance(graph, str) or not _NAME.match(graph):
        bad("names an engine with a graph name that is not a plain name")
    def worse(what):
        bad(f"the '{graph}' engine {what}")
    if not isinstance(e, dict):
        worse("is not an object")
    f = e.get("file")
    if not isinstance(f, str) or not f or CONTROL_CHARS.search(f):
        worse("has no 'file' name")
    if not isinstance(e.get("sha256"), str) or not SHA256_HEX.match(e["sha256"]):
        worse("has no sha256")
    for r in ("k_range", "batch_range"):
        if r in e and not _range(e[r]):
            worse(f"has a {r} that is not [smallest, largest]")
    key = e.get("key")
    if not isinstance(key, dict):
        worse("has no 'key' object")
    if key.get("graph", graph) != graph or key.get("precision") not in PRECISIONS:
        worse("has a key of another graph or no precision")
    if not isinstance(key.get("graph_sha256"), str) or not SHA256_HEX.match(key["graph_sha256"]):
        worse("has no graph_sha256 in its key")
    cal = key.get("calibration_sha256")
    if cal is not None and (not isinstance(cal, str) or not _NAME.match(cal)):
        worse("has a malformed calibration_sha256")
    profiles = key.get("profiles")
    if not isinstance(profiles, list) or not 0 < len(profiles) <= MAX_PROFILES or not all(map(_profile, profiles)):
        worse(f"has no list of 1..{MAX_PROFILES} optimisation profiles of {{dim: [min, opt, max]}}")
    if not (isinstance(key.get("tensorrt"), str) and _VERSION.match(key["tensorrt"])
            and isinstance(key.get("tensorrt_cuda", "unknown"), str)
            and (key.get("tensorrt_cuda", "unknown") == "unknown" or _VERSION.match(key["tensorrt_cuda"]))):
        worse("has no TensorRT version in its key")
    if not (isinstance(key.get("gpu"), str) and _GPU.match(key["gpu"])
            and isinstance(key.get("compute_capability"), str) and _CC.match(key["compute_capability"])):
        worse("has no GPU name and compute capability in its key")
    _check_options(key.get("options"), worse)


def check_engine_structure(manifest, path: str, rebuild: str) -> None:
    """Refuse an ``engines.json`` of the wrong structure in one sentence: what TrtBackend
    reads of it, every field typed and ranged (``command`` is never read)."""
    def bad(what):
        raise FarError(f"{path} is not a usable engine manifest: it {what}; rebuild with {rebuild}.")
    if not isinstance(manifest, dict):
        raise FarError(f"{path} is not an engine manifest (a JSON {type(manifest).__name__}, not an "
                       f"object); rebuild with {rebuild}.")
    if manifest.get("format") != ENGINE_FORMAT or manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise FarError(f"{path} is not an engine manifest this runtime reads (format "
                       f"{ENGINE_FORMAT} v{ENGINE_FORMAT_VERSION} expected); rebuild with {rebuild}.")
    for r in ("k_range", "batch_range"):
        if r in manifest and not _range(manifest[r]):
            bad(f"has a {r} that is not [smallest, largest]")
    engines = manifest.get("engines")
    if not isinstance(engines, dict) or len(engines) > MAX_ENGINES:
        bad(f"has no 'engines' object of at most {MAX_ENGINES} engines")
    for graph, entry in engines.items():
        _check_entry(graph, entry, bad)


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
    """Path of the engine file after checking it stays inside the engine folder, is there
    and is unmodified."""
    from ..bundle import sha256_file
    path = inside(engine_dir, entry["file"], "engine")
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
                    entry: dict | None = None, engine_dir: str | None = None) -> str:
    """The quoted ``far-runtime engines`` command that rebuilds an engine folder, or one engine
    of it (``entry``), composed from checked values only (``check_engine_structure``): the
    K and batch ranges, the key's options and the graph. The manifest's own ``command`` text
    is never echoed, so a tampered manifest cannot make the tool advise running anything."""
    cmd = ["far-runtime", "engines", bundle_root, "--precision", precision if precision in PRECISIONS else "fp32"]
    ranges = {**{r: manifest[r] for r in ("k_range", "batch_range") if isinstance(manifest, dict)
                 and _range(manifest.get(r))},
              **{r: entry[r] for r in ("k_range", "batch_range") if isinstance(entry, dict) and _range(entry.get(r))}}
    for flag, r in (("--k", "k_range"), ("--batch", "batch_range")):
        if r in ranges:
            cmd += [flag, f"{ranges[r][0]}:{ranges[r][1]}"]
    if engine_dir and os.path.abspath(engine_dir) != os.path.abspath(default_engine_dir(bundle_root, precision)):
        cmd += ["--out", engine_dir]
    key = entry.get("key") if isinstance(entry, dict) else None
    if isinstance(key, dict):
        profiles, opts = key.get("profiles"), key.get("options")
        if isinstance(profiles, list) and DEFAULT_MAX_PROFILES < len(profiles) <= MAX_PROFILES:
            cmd += ["--max-profiles", str(len(profiles))]
        if isinstance(opts, dict):
            cmd += _option_flags(opts)
        if isinstance(key.get("graph"), str) and _NAME.match(key["graph"]):
            cmd += ["--graphs", key["graph"]]
    return f"`{shlex.join(cmd)}`"


def _option_flags(opts: dict) -> list:
    """The ``far-runtime engines`` flags of a key's options, each only when checked."""
    flags = []
    if opts.get("version_compatible") is True:
        flags.append("--version-compatible")
    if opts.get("hardware_compatibility") in HARDWARE_LEVELS[1:]:
        flags += ["--hardware-compatible", opts["hardware_compatibility"]]
    level = opts.get("optimization_level")
    if is_int(level) and 0 <= level <= 5 and level != DEFAULT_OPTIMIZATION_LEVEL:
        flags += ["--optimization-level", str(level)]
    ws = opts.get("workspace_bytes")
    if is_int(ws) and 0 < ws <= 1 << 50:
        flags += ["--workspace-gb", repr(ws / (1 << 30))]
    return flags
