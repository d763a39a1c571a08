"""TensorRT engines behind the runtime's backend interface.

    backend = TrtBackend(load_bundle("graphs/demo"))        # engines of the bundle's precision
    pipe = Pipeline(backend.bundle, backend)

The engine manifest and its checks are plain data (``engine_manifest.py``), the CUDA calls
are in ``cuda_runtime.py``, and what every GPU backend shares (bounded per-shape slots, the
device selected on every call, results owned by the calling thread) is
``device_slots.SlotBackend``; this module is the TensorRT part: engines deserialised once
after their checks, per-shape device buffers and pinned staging, ``execute_async_v3`` on one
non-blocking stream, and CUDA-graph replay through ``cuda_graphs.GraphCache``.

Runs on the full TensorRT (``tensorrt``) or the lean runtime (``tensorrt_lean``, which runs
``--version-compatible`` engines), 10.x and 11.x alike: only names both majors have
(``device_memory_size_v2``, ``set_device_memory``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), every status they return checked. Imported
lazily; never imports torch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..bundle import Bundle
from .cuda_graphs import Binding, GraphCache
from .cuda_runtime import Cuda, CudaRuntimeCapturer, device_facts, import_cudart, import_tensorrt, pinned_array
from .device_slots import SlotBackend, default_capacity
from .engine_manifest import (bundle_precision, check_call_covered, check_engine, check_engine_file,
                              check_plan_covered, default_engine_dir, graph_source, load_engine_manifest,
                              rebuild_command)
from ..errors import FarError
from ..limits import buffer_bytes
from ..plan import Call, Plan

log = logging.getLogger(__name__)


@dataclass
class _Engine:
    engine: object
    entry: dict
    rebuild: str
    inputs: list                       # tensor names
    outputs: list
    dtypes: dict                       # name -> numpy dtype of the engine's tensor


@dataclass
class _Slot:
    """Buffers of one shape key: device memory and pinned staging."""
    context: object
    own_context: bool                  # True: made for this slot (CUDA graphs), freed with it
    device: dict                       # name -> device pointer
    host: dict                         # name -> (pointer, pinned array in the engine's dtype)
    nbytes: dict
    bindings: tuple


def ok(status, what: str) -> None:
    """TensorRT's bool-returning setters fail by returning False; make that a sentence."""
    if status is False:
        raise FarError(f"TensorRT refused {what} (see the log above).")


class TrtBackend(SlotBackend):
    """TensorRT engines: bounded per-shape buffers, one stream, CUDA-graph replay.

    Contexts: without CUDA graphs, one execution context per optimisation profile, re-shaped
    when the call's shape changes. With CUDA graphs a captured graph fixes the context's
    shapes and addresses, so every shape key gets its own context; all contexts share one
    scratch allocation (``USER_MANAGED``), safe because they run one at a time on one stream.
    Threads share it safely (one lock around a call; results are the calling thread's own).
    ``max_graphs``: per-shape slots and graphs kept (default: the distinct shapes of the
    bundle's largest plan; ``prepare`` grows it to fit every plan it is given).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, precision: str | None = None, engine_dir: str | None = None,
                 cuda_graphs: bool = True, max_graphs: int | None = None, device: int = 0):
        precision = precision or bundle_precision(bundle)
        self.trt = import_tensorrt()
        self.cuda = Cuda(import_cudart())
        self.device = device
        self.cuda.set_device(device)
        self.bundle = bundle
        self.precision = precision
        self.engine_dir = engine_dir or default_engine_dir(bundle.root, precision)
        self.rebuild = rebuild_command(bundle.root, precision, engine_dir=self.engine_dir)
        self.manifest = load_engine_manifest(self.engine_dir, self.rebuild)
        self.rebuild = rebuild_command(bundle.root, precision, self.manifest, engine_dir=self.engine_dir)
        self.facts = device_facts(self.trt, self.cuda.rt, device)
        self.specs = bundle.specs()
        self._entries = {}
        for graph, entry in self.manifest["engines"].items():
            if not bundle.has(graph):
                continue
            rebuild = rebuild_command(bundle.root, precision, self.manifest, entry, self.engine_dir)
            check_engine(graph, entry, self.facts, graph_source(bundle, graph, precision), rebuild)
            self._entries[graph] = entry
        self.stream = self.cuda.stream()
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self._engines: dict[str, _Engine] = {}
        self._contexts: dict = {}       # (graph, profile) -> shared context (no CUDA graphs)
        self._bound: dict = {}          # id(context) -> shape key its shapes/addresses are set for
        self._scratch = None
        graphs = GraphCache(CudaRuntimeCapturer(self.cuda, self.stream), 1) if cuda_graphs else None
        super().__init__(max_graphs, default_capacity(bundle.model, bundle.manifest["max_batch"]), graphs)

    # --- SlotBackend hooks -------------------------------------------------------------
    def _select_device(self) -> None:
        self.cuda.set_device(self.device)

    def prepare(self, plan: Plan) -> None:
        check_plan_covered(plan, self._entries, self.manifest, self.rebuild)
        super().prepare(plan)

    def _make_slot(self, call: Call) -> _Slot:
        eng = self._engine(call.graph)
        dims = dict(call.dims)
        profile = check_call_covered(call, eng.entry, self.manifest, eng.rebuild)
        own = self.graphs is not None
        if own:
            ctx = self._new_context(eng, profile, shared_scratch=True)
        else:
            ctx = self._contexts.get((call.graph, profile))
            if ctx is None:
                ctx = self._contexts[(call.graph, profile)] = self._new_context(eng, profile, False)
        spec = self.specs[call.graph]
        shapes = {t.name: t.shape(dims) for t in spec.inputs + spec.outputs}
        slot = _Slot(ctx, own, {}, {}, {}, ())
        try:
            for name in eng.inputs + eng.outputs:
                if name not in shapes:
                    raise FarError(f"The '{call.graph}' engine has a tensor {name} its spec does not know; "
                                   f"rebuild with {eng.rebuild}.")
                dt = eng.dtypes[name]
                slot.nbytes[name] = buffer_bytes(shapes[name], dt.itemsize, f"The '{call.graph}' engine's {name}")
                slot.device[name] = self.cuda.malloc(slot.nbytes[name])
                slot.host[name] = pinned_array(self.cuda, shapes[name], dt)
        except BaseException:
            self._free(slot)
            raise
        slot.bindings = tuple(Binding(n, shapes[n], eng.dtypes[n].name, slot.device[n])
                              for n in eng.inputs + eng.outputs)
        return slot

    def _release_slot(self, key, slot: _Slot) -> None:
        if self._bound.get(id(slot.context)) == key or slot.own_context:
            self._bound.pop(id(slot.context), None)     # never trust an address set for freed memory
        self._free(slot)

    def _free(self, slot: _Slot) -> None:
        for ptr in slot.device.values():
            self.cuda.free(ptr)
        for ptr, _ in slot.host.values():
            self.cuda.free_host(ptr)
        slot.device.clear()
        slot.host.clear()

    def _result_dtypes(self, call: Call) -> dict:
        return {t.name: np.dtype(t.dtype) for t in self.specs[call.graph].outputs}

    def _execute(self, call: Call, slot: _Slot, feeds: dict) -> dict:
        eng = self._engines[call.graph]
        self._bind(call, slot, eng)          # a profile's shared context may hold another shape
        for name in eng.inputs:
            if name not in feeds:
                raise FarError(f"'{call.graph}' needs input {name}, which the call does not give.")
            arr = np.asarray(feeds[name])
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
        return {name: slot.host[name][1] for name in eng.outputs}

    def _close_device(self) -> None:
        self.cuda.sync(self.stream)
        self._bound.clear()
        self._contexts.clear()               # contexts before engines, engines before the runtime
        self._engines.clear()
        if self._scratch is not None:
            self.cuda.free(self._scratch[0])
            self._scratch = None
        self.cuda.destroy_stream(self.stream)
        self.stream = None

    # --- TensorRT ------------------------------------------------------------------------
    def _engine(self, graph: str) -> _Engine:
        """Deserialised on first use, after every check has passed."""
        eng = self._engines.get(graph)
        if eng is not None:
            return eng
        entry = self._entries.get(graph)
        if entry is None:
            raise FarError(f"There is no '{graph}' engine in {self.engine_dir}; rebuild with {self.rebuild}.")
        rebuild = rebuild_command(self.bundle.root, self.precision, self.manifest, entry, self.engine_dir)
        path = check_engine_file(graph, entry, self.engine_dir, rebuild)
        if entry["key"]["options"].get("version_compatible"):
            self._runtime.engine_host_code_allowed = True    # such engines carry their lean runtime
        with open(path, "rb") as f:
            engine = self._runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise FarError(f"TensorRT could not deserialise the '{graph}' engine {path} (see the log "
                           f"above); rebuild with {rebuild}.")
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        try:
            dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        except TypeError as e:
            raise FarError(f"The '{graph}' engine has a tensor type numpy cannot hold ({e}).") from None
        eng = self._engines[graph] = _Engine(engine, entry, rebuild, inputs, outputs, dtypes)
        return eng

    def _scratch_memory(self) -> tuple[int, int]:
        """The scratch allocation all graph contexts share, sized for the largest engine.

        ``device_memory_size_v2`` (TensorRT >= 10.1; 11 has no other) may be 0: then a
        one-byte allocation stands in for it, never a fall-back to a removed attribute.
        """
        if self._scratch is None:
            size = max(int(self._engine(g).engine.device_memory_size_v2) for g in self._entries)
            self._scratch = (self.cuda.malloc(size), size)
        return self._scratch

    def _new_context(self, eng: _Engine, profile: int, shared_scratch: bool):
        trt = self.trt
        if shared_scratch:
            ptr, size = self._scratch_memory()
            ctx = eng.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is None:
                raise FarError("TensorRT could not create an execution context (out of GPU memory?).")
            ctx.set_device_memory(ptr, size)
        else:
            ctx = eng.engine.create_execution_context()
            if ctx is None:
                raise FarError("TensorRT could not create an execution context (out of GPU memory?).")
        ok(ctx.set_optimization_profile_async(profile, int(self.stream)),
           f"optimisation profile {profile} of the '{eng.entry['key']['graph']}' engine")
        self.cuda.sync(self.stream)
        return ctx

    def _bind(self, call: Call, slot: _Slot, eng: _Engine) -> None:
        """Point the slot's context at this shape's buffers (a no-op when it already is)."""
        ctx = slot.context
        if self._bound.get(id(ctx)) == call.key:
            return
        self._bound.pop(id(ctx), None)
        for b in slot.bindings:
            if b.name in eng.inputs:
                ok(ctx.set_input_shape(b.name, b.shape), f"shape {b.shape} for '{call.graph}' input {b.name}")
            ok(ctx.set_tensor_address(b.name, b.address), f"the address of '{call.graph}' tensor {b.name}")
        missing = ctx.infer_shapes()
        if missing:
            raise FarError(f"TensorRT is missing shapes for {missing}.")
        for b in slot.bindings:
            if b.name in eng.outputs and tuple(ctx.get_tensor_shape(b.name)) != tuple(b.shape):
                raise FarError(f"The engine computes {b.name} as {tuple(ctx.get_tensor_shape(b.name))} but "
                               f"the spec says {b.shape}; rebuild with {eng.rebuild}.")
        self._bound[id(ctx)] = call.key
