"""TensorRT engines behind the runtime's backend interface, and the checks that guard them.

    backend = TrtBackend(load_bundle("graphs/demo"))        # engines of the bundle's precision
    pipe = Pipeline(backend.bundle, backend)

The first half of this module is plain data and needs neither TensorRT nor CUDA: the engine
manifest (``engines.json``) that ``far-export engines`` writes, the compatibility checks
run before any engine is deserialised, and the profile lookup. The second half is the
backend: engines deserialised once, device buffers preallocated per distinct shape of the
shape plan, ``execute_async_v3`` on one stream, and CUDA-graph replay through
``cuda_graphs.GraphCache``.

TensorRT (``tensorrt``) and the CUDA runtime bindings (``cuda-python``) are imported only
when a backend is created; without them the backend fails with one sentence. This module
never imports torch.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle
from .cuda_graphs import Binding, GraphCache
from .errors import FarError
from .plan import Call, ShapePlan

log = logging.getLogger(__name__)

ENGINE_MANIFEST = "engines.json"
ENGINE_FORMAT = "far-export-engines"
ENGINE_FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
HARDWARE_LEVELS = ("none", "same-cc", "ampere+")
# Version-compatible engines also run on these later major versions (TensorRT docs).
CROSS_MAJOR = {(8, 10), (10, 11)}


# --- optional dependencies -------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise FarError("TensorRT is not installed, so engines cannot be built or run here; "
                       "install far-export[tensorrt] on a machine with an NVIDIA GPU, or use "
                       "the ONNX Runtime backend.") from None
    except OSError as e:        # the wheel is there but libnvinfer or CUDA libraries are not
        raise FarError(f"TensorRT is installed but its libraries do not load ({e}); check the "
                       "CUDA driver and LD_LIBRARY_PATH, or use the ONNX Runtime backend.") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise FarError("The CUDA runtime bindings are not installed; install "
                           "far-export[tensorrt] (it brings cuda-python).") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        why = getattr(err, "name", str(err)) if int(err) != 0 else "no device found"
        raise FarError(f"No CUDA GPU is usable here ({why}); TensorRT engines need an NVIDIA GPU "
                       "and its driver.")
    return cudart


# --- facts about this machine ------------------------------------------------------------

def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_facts(trt, cudart, device: int = 0) -> dict:
    """TensorRT, CUDA runtime and driver versions, GPU name and compute capability."""
    _, rt = cudart.cudaRuntimeGetVersion()
    _, drv = cudart.cudaDriverGetVersion()
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise FarError(f"Could not read the properties of CUDA device {device} ({err}).")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt": trt.__version__, "cuda_runtime": _cuda_version(rt),
            "driver": _cuda_version(drv), "gpu": name.strip(),
            "compute_capability": f"{prop.major}.{prop.minor}"}


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
    from .bundle import sha256_file
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
        k, b = manifest.get("k_range", ["?", "?"]), manifest.get("batch_range", ["?", "?"])
        raise FarError(f"The '{call.graph}' engine has no optimisation profile for {dims} "
                       f"(built for K in {k[0]}..{k[1]} and batch {b[0]}..{b[1]}); rebuild with "
                       f"{rebuild} and a --k/--batch range that covers this run.")
    return profile


def check_plan_covered(plan: ShapePlan, engines: dict, manifest: dict, rebuild: str) -> None:
    """Every call of ``plan`` has an engine and a profile that covers its dims."""
    for call in plan.distinct():
        check_call_covered(call, engines.get(call.graph), manifest, rebuild)


def rebuild_command(bundle_root: str, precision: str, manifest: dict | None = None) -> str:
    if manifest and manifest.get("command"):
        return f"`{manifest['command']}`"
    return f"`far-export engines {bundle_root} --precision {precision}`"


# --- CUDA runtime helpers (cuda-python) ----------------------------------------------------

class Cuda:
    """The few CUDA runtime calls the backend needs, each checked."""

    def __init__(self, cudart):
        self.rt = cudart

    def check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise FarError(f"CUDA call {what} failed ({err}).")
        return rest[0] if len(rest) == 1 else rest

    def stream(self):
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def malloc_host(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def free_host(self, ptr: int) -> None:
        self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def h2d(self, dst: int, src: int, nbytes: int, stream) -> None:
        if nbytes:
            self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes,
                                               self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def d2h(self, dst: int, src: int, nbytes: int, stream) -> None:
        if nbytes:
            self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes,
                                               self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    def sync(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def pinned_array(cuda: Cuda, shape: tuple, dtype) -> tuple[int, np.ndarray]:
    """Page-locked host memory viewed as a numpy array (async copies need it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ptr = cuda.malloc_host(nbytes)
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
    return ptr, np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


class CudaRuntimeCapturer:
    """CUDA-graph capture of a raw stream (``cudaStreamBeginCapture``), for TensorRT."""

    def __init__(self, cuda: Cuda, stream):
        self.cuda, self.stream = cuda, stream

    def capture(self, body):
        rt = self.cuda.rt
        self.cuda.check(rt.cudaStreamBeginCapture(
            self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        try:
            body()
        finally:
            graph = self.cuda.check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        instance = self.cuda.check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return _CudaGraph(self.cuda, self.stream, graph, instance)


@dataclass
class _CudaGraph:
    cuda: Cuda
    stream: object
    graph: object
    instance: object

    def replay(self) -> None:
        self.cuda.check(self.cuda.rt.cudaGraphLaunch(self.instance, self.stream), "cudaGraphLaunch")

    def release(self) -> None:
        self.cuda.check(self.cuda.rt.cudaGraphExecDestroy(self.instance), "cudaGraphExecDestroy")
        self.cuda.check(self.cuda.rt.cudaGraphDestroy(self.graph), "cudaGraphDestroy")


# --- the backend ------------------------------------------------------------------------

@dataclass
class _Engine:
    engine: object
    entry: dict
    inputs: list                       # tensor names
    outputs: list
    dtypes: dict                       # name -> numpy dtype of the engine's tensor
    contexts: dict = field(default_factory=dict)   # profile index -> context (no CUDA graphs)


@dataclass
class _Slot:
    """Buffers of one shape key: device memory, pinned staging, and the results handed out."""
    context: object
    device: dict                       # name -> device pointer
    host: dict                         # name -> (pointer, pinned array in the engine's dtype)
    results: dict                      # output name -> array in the spec's dtype
    nbytes: dict
    bindings: tuple


class TrtBackend:
    """TensorRT engines: buffers per distinct shape, one stream, CUDA-graph replay.

    Contexts: without CUDA graphs, one execution context per optimisation profile, re-shaped
    when the call's shape changes. With CUDA graphs, a captured graph fixes the context's
    shapes and addresses, so every shape key gets its own context; all contexts share one
    scratch allocation (``USER_MANAGED``), which is safe because they run one at a time on one
    stream. Not thread-safe beyond a lock around ``run``: one stream serialises the work.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, precision: str | None = None, engine_dir: str | None = None,
                 cuda_graphs: bool = True, max_graphs: int = 256, device: int = 0):
        precision = precision or bundle_precision(bundle)
        self.trt = import_tensorrt()
        self.cuda = Cuda(import_cudart())
        self.cuda.check(self.cuda.rt.cudaSetDevice(device), "cudaSetDevice")
        self.bundle = bundle
        self.precision = precision
        self.engine_dir = engine_dir or default_engine_dir(bundle.root, precision)
        self.rebuild = rebuild_command(bundle.root, precision)
        self.manifest = load_engine_manifest(self.engine_dir, self.rebuild)
        self.rebuild = rebuild_command(bundle.root, precision, self.manifest)
        self.facts = device_facts(self.trt, self.cuda.rt, device)
        self.specs = bundle.specs()
        self.stream = self.cuda.stream()
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self._engines: dict[str, _Engine] = {}
        self._entries = {}
        for graph, entry in self.manifest["engines"].items():
            if not bundle.has(graph):
                continue
            check_engine(graph, entry, self.facts, graph_source(bundle, graph, precision), self.rebuild)
            self._entries[graph] = entry
        self._slots: dict = {}
        self._bound: dict = {}          # id(context) -> shape key its shapes/addresses are set for
        self._scratch = None
        self._lock = threading.Lock()
        self.graphs = GraphCache(CudaRuntimeCapturer(self.cuda, self.stream), max_graphs) if cuda_graphs else None

    # engines are deserialised on first use, after every check has passed
    def _engine(self, graph: str) -> _Engine:
        eng = self._engines.get(graph)
        if eng is not None:
            return eng
        entry = self._entries.get(graph)
        if entry is None:
            raise FarError(f"There is no '{graph}' engine in {self.engine_dir}; rebuild with {self.rebuild}.")
        path = check_engine_file(graph, entry, self.engine_dir, self.rebuild)
        if entry["key"]["options"].get("version_compatible"):
            self._runtime.engine_host_code_allowed = True
        with open(path, "rb") as f:
            engine = self._runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise FarError(f"TensorRT could not deserialise the '{graph}' engine {path} (see the log "
                           f"above); rebuild with {self.rebuild}.")
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        eng = self._engines[graph] = _Engine(engine, entry, inputs, outputs, dtypes)
        return eng

    def _scratch_for(self, eng: _Engine) -> tuple[int, int]:
        """The shared scratch allocation, sized for the largest engine (allocated once)."""
        if self._scratch is None:
            sizes = []
            for graph in self._entries:
                e = self._engine(graph).engine
                sizes.append(getattr(e, "device_memory_size_v2", None) or e.device_memory_size)
            size = max(sizes)
            self._scratch = (self.cuda.malloc(size), size)
        return self._scratch

    def _new_context(self, eng: _Engine, profile: int, shared: bool):
        trt = self.trt
        if shared:
            ctx = eng.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            ptr, size = self._scratch_for(eng)
            if hasattr(ctx, "set_device_memory"):
                ctx.set_device_memory(ptr, size)
            else:
                ctx.device_memory = ptr
        else:
            ctx = eng.engine.create_execution_context()
        if ctx is None:
            raise FarError("TensorRT could not create an execution context (out of GPU memory?).")
        ctx.set_optimization_profile_async(profile, int(self.stream))
        self.cuda.sync(self.stream)
        return ctx

    def _slot(self, call: Call) -> _Slot:
        slot = self._slots.get(call.key)
        if slot is not None:
            return slot
        eng = self._engine(call.graph)
        dims = dict(call.dims)
        profile = check_call_covered(call, eng.entry, self.manifest, self.rebuild)
        if self.graphs is not None:
            ctx = self._new_context(eng, profile, shared=True)
        else:
            if profile not in eng.contexts:
                eng.contexts[profile] = self._new_context(eng, profile, shared=False)
            ctx = eng.contexts[profile]
        spec = self.specs[call.graph]
        shapes = {t.name: t.shape(dims) for t in spec.inputs + spec.outputs}
        spec_dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs + spec.outputs}
        device, host, results, nbytes = {}, {}, {}, {}
        for name in eng.inputs + eng.outputs:
            dt = eng.dtypes[name]
            nbytes[name] = int(np.prod(shapes[name], dtype=np.int64)) * dt.itemsize
            device[name] = self.cuda.malloc(nbytes[name])
            host[name] = pinned_array(self.cuda, shapes[name], dt)
            if name in eng.outputs:
                results[name] = host[name][1] if dt == spec_dtypes[name] else np.empty(shapes[name], spec_dtypes[name])
        slot = _Slot(ctx, device, host, results, nbytes,
                     tuple(Binding(n, shapes[n], eng.dtypes[n].name, device[n]) for n in eng.inputs + eng.outputs))
        self._bind(call, slot, eng)
        self._slots[call.key] = slot
        return slot

    def _bind(self, call: Call, slot: _Slot, eng: _Engine) -> None:
        """Point the slot's context at this shape's buffers (a no-op when it already is)."""
        ctx = slot.context
        if self._bound.get(id(ctx)) == call.key:
            return
        for b in slot.bindings:
            if b.name in eng.inputs:
                ctx.set_input_shape(b.name, b.shape)
            ctx.set_tensor_address(b.name, b.address)
        missing = ctx.infer_shapes()
        if missing:
            raise FarError(f"TensorRT is missing shapes for {missing}.")
        for b in slot.bindings:
            if b.name in eng.outputs and tuple(ctx.get_tensor_shape(b.name)) != tuple(b.shape):
                raise FarError(f"The engine computes {b.name} as {tuple(ctx.get_tensor_shape(b.name))} but "
                               f"the spec says {b.shape}; rebuild with {self.rebuild}.")
        self._bound[id(ctx)] = call.key

    def prepare(self, plan: ShapePlan) -> None:
        check_plan_covered(plan, self._entries, self.manifest, self.rebuild)
        with self._lock:
            for call in plan.distinct():
                self._slot(call)

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            slot = self._slot(call)
            eng = self._engines[call.graph]
            self._bind(call, slot, eng)      # a profile's context may hold another shape
            for name in eng.inputs:
                arr = feeds[name]
                ptr, staged = slot.host[name]
                if arr.shape != staged.shape:
                    raise FarError(f"'{call.graph}' input {name} has shape {arr.shape}, but the plan says {staged.shape}.")
                np.copyto(staged, arr, casting="unsafe")
                self.cuda.h2d(slot.device[name], ptr, slot.nbytes[name], self.stream)

            def body():
                if not slot.context.execute_async_v3(int(self.stream)):
                    raise FarError(f"TensorRT failed to execute the '{call.graph}' engine (see the log above).")

            if self.graphs is None:
                body()
            else:
                self.graphs.run(call.key, slot.bindings, body)
            for name in eng.outputs:
                self.cuda.d2h(slot.host[name][0], slot.device[name], slot.nbytes[name], self.stream)
            self.cuda.sync(self.stream)
            for name in eng.outputs:
                if slot.results[name] is not slot.host[name][1]:
                    np.copyto(slot.results[name], slot.host[name][1], casting="unsafe")
            return slot.results

    def close(self) -> None:
        """Free graphs, contexts and buffers (the backend is unusable afterwards)."""
        with self._lock:
            if self.graphs is not None:
                self.graphs.clear()
            for slot in self._slots.values():
                for ptr in slot.device.values():
                    self.cuda.free(ptr)
                for ptr, _ in slot.host.values():
                    self.cuda.free_host(ptr)
            self._slots.clear()
            self._engines.clear()
            if self._scratch is not None:
                self.cuda.free(self._scratch[0])
                self._scratch = None

