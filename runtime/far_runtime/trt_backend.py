"""TensorRT engines behind the runtime's backend interface, and the checks that guard them.

    backend = TrtBackend(load_bundle("graphs/demo"))        # engines of the bundle's precision
    pipe = Pipeline(backend.bundle, backend)

The engine manifest and its checks are plain data (``engine_manifest.py``), the CUDA calls
are in ``cuda_runtime.py``; this module is the backend itself: engines deserialised once,
device buffers preallocated per distinct shape of the shape plan, ``execute_async_v3`` on one stream, and CUDA-graph replay through
``cuda_graphs.GraphCache``.

TensorRT (``tensorrt``) and the CUDA runtime bindings (``cuda-python``) are imported only
when a backend is created; without them the backend fails with one sentence. This module
never imports torch.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle
from .cuda_graphs import Binding, GraphCache
from .cuda_runtime import Cuda, CudaRuntimeCapturer, device_facts, import_cudart, import_tensorrt, pinned_array
from .engine_manifest import (bundle_precision, check_call_covered, check_engine, check_engine_file,
                              check_plan_covered, default_engine_dir, graph_source, load_engine_manifest,
                              rebuild_command)
from .errors import FarError
from .plan import Call, ShapePlan

log = logging.getLogger(__name__)


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
