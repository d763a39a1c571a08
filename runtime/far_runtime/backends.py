"""Execution backends: the small interface the sampling loop drives, and ONNX Runtime.

The loop only ever calls ``prepare(plan)`` once per plan and ``run(call, feeds)`` per graph
call. ``call`` carries the graph name and its dims (the shape key of the plan), so a backend
can keep one set of buffers (and, on a GPU, one captured CUDA graph) per distinct shape.
``run`` returns arrays owned by the backend: valid until the next ``run`` of the same shape
on the same thread. That is the whole contract; a TensorRT or CUDA-graph backend implements
the same two methods and the loop does not change.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Protocol

import numpy as np

from .bundle import Bundle
from .errors import FarError
from .plan import Call, ShapePlan

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "DmlExecutionProvider", "NvTensorRTRTXExecutionProvider")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FarError("onnxruntime is not installed; install far-runtime[cpu] "
                       "(or far-runtime[gpu] on a CUDA machine, never both).") from None
    return onnxruntime


class Backend(Protocol):
    name: str

    def prepare(self, plan: ShapePlan) -> None:
        """Allocate what every distinct shape of ``plan`` needs, before the loop starts."""

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute one graph call; returns its outputs by name."""


class GraphTimer:
    """Wall time spent inside graph execution, per graph (for overhead and breakdowns)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, graph: str, seconds: float) -> None:
        with self._lock:
            self.seconds[graph] += seconds
            self.calls[graph] += 1

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()


class OrtBackend:
    """ONNX Runtime with IOBinding: inputs bound in place, outputs into preallocated arrays.

    Sessions are shared by all threads (ONNX Runtime's ``run`` is thread-safe); buffers and
    bindings are per thread, so one backend may serve several threads at once.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers=("CPUExecutionProvider",), threads: int | None = None):
        self.ort = import_onnxruntime()
        self.bundle = bundle
        self.providers = list(providers)
        available = self.ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise FarError(f"Execution provider {missing[0]} is not available in this onnxruntime "
                           f"(available: {', '.join(available)}).")
        self.options = self.ort.SessionOptions()
        self.options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            self.options.intra_op_num_threads = threads
            self.options.inter_op_num_threads = 1
        self.specs = bundle.specs()
        self._sessions = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.timer = GraphTimer()

    def session(self, graph: str):
        with self._lock:
            if graph not in self._sessions:
                if not self.bundle.has(graph):
                    raise FarError(f"The bundle has no '{graph}' graph.")
                sess = self.ort.InferenceSession(self.bundle.path(graph), self.options,
                                                 providers=self.providers)
                active = sess.get_providers()
                fell_back = [p for p in self.providers if p in GPU_PROVIDERS and p not in active]
                if fell_back:
                    raise FarError(f"{fell_back[0]} was requested but ONNX Runtime fell back to "
                                   f"{', '.join(active)} for '{graph}' (no usable GPU or CUDA libraries); "
                                   "refusing to run silently on the CPU.")
                self._sessions[graph] = sess
            return self._sessions[graph]

    def _workspace(self) -> dict:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = {}
        return ws

    def _entry(self, call: Call):
        ws = self._workspace()
        entry = ws.get(call.key)
        if entry is None:
            sess = self.session(call.graph)
            spec = self.specs[call.graph]
            dims = dict(call.dims)
            io = sess.io_binding()
            outputs = {}
            for t in spec.outputs:
                arr = np.empty(t.shape(dims), dtype=t.dtype)
                io.bind_ortvalue_output(t.name, self.ort.OrtValue.ortvalue_from_numpy(arr))
                outputs[t.name] = arr
            entry = ws[call.key] = (sess, io, outputs)
        return entry

    def prepare(self, plan: ShapePlan) -> None:
        for call in plan.distinct():
            self._entry(call)

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess, io, outputs = self._entry(call)
        for name, arr in feeds.items():
            io.bind_cpu_input(name, arr)
        t0 = time.perf_counter()
        sess.run_with_iobinding(io)
        self.timer.add(call.graph, time.perf_counter() - t0)
        return outputs
