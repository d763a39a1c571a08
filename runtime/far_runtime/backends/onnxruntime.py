"""ONNX Runtime: sessions made from the verified bytes, IOBinding, per-thread workspaces.

The reference backend of the CPU runtime (and, with onnxruntime-gpu, of CUDA machines). It runs
each graph in the precision the bundle stores (fp32, fp16 or int8 Q/DQ): its CPU provider has
no bf16 kernels, so a bf16 run is OpenVINO's (``openvino.py``).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from ..bundle import Bundle
from ..errors import FarError
from ..lru import LRU
from ..plan import Call, Plan
from .base import GraphTimer, check_threads, default_max_shapes, run_failure, usable_cores
from ..limits import buffer_bytes

EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "DmlExecutionProvider", "NvTensorRTRTXExecutionProvider")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FarError("onnxruntime is not installed; install far-runtime[cpu] "
                       "(or far-runtime[gpu] on a CUDA machine, never both).") from None
    return onnxruntime


SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def session_options(ort, threads: int | None = None, session_config: dict[str, str] | None = None):
    """The runtime's session options (also what ``far-export build --precision auto`` times each
    graph with): every graph optimisation, ``threads`` intra-op threads, no spinning workers
    where every core is one."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    config = dict(session_config or {})
    if (threads or usable_cores()) >= usable_cores() > 1:
        # Every core is an intra-op worker: a spinning worker then takes the core the
        # calling thread needs. Measured on the 2-core CI VM (demo, K=16, O=8, 2 threads):
        # 191 ms per image spinning, 118 ms not (batch 8: 804 ms vs 414 ms).
        for key in SPIN_KEYS:
            config.setdefault(key, "0")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return options


class OrtBackend:
    """ONNX Runtime with IOBinding: inputs bound in place, outputs into preallocated arrays.

    Sessions are shared by all threads (ONNX Runtime's ``run`` is thread-safe); buffers and
    bindings are per thread, so one backend may serve several threads at once.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers=("CPUExecutionProvider",), threads: int | None = None,
                 session_config: dict[str, str] | None = None, max_shapes: int | None = None):
        self.ort = import_onnxruntime()
        self.bundle = bundle
        self.providers = list(providers)
        available = self.ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise FarError(f"Execution provider {missing[0]} is not available in this onnxruntime "
                           f"(available: {', '.join(available)}).")
        self.threads = check_threads(threads, "ONNX Runtime")
        # ONNX Runtime session config entries for every session made from now on
        # (e.g. {"session.intra_op.allow_spinning": "0"}); sessions are created on first use.
        self.session_config = dict(session_config or {})
        # Per-thread bindings and buffers for the ``max_shapes`` most recently used shapes.
        self.max_shapes = max_shapes or default_max_shapes(bundle)
        self.specs = bundle.specs()
        self._sessions = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.timer = GraphTimer()
        # A failed call is reported as one sentence (``run_failure``), so ONNX Runtime does not
        # also log it to stderr; its warnings at session creation still show.
        self._run_options = self.ort.RunOptions()
        self._run_options.log_severity_level = 4

    def _session_options(self):
        return session_options(self.ort, self.threads, self.session_config)

    def _create(self, graph: str):
        """A session from the very bytes that were hashed: the graph file (and its external
        data) is read once, checked against the manifest and handed to ONNX Runtime from memory,
        so a file replaced on disk after ``Pipeline.load`` is refused, never run."""
        g = self.bundle.graphs[graph]
        model = self.bundle.read_verified(graph)
        options = self._session_options()
        # A graph loaded from bytes resolves external data against the working directory; pin
        # it to the bundle folder, where ONNX Runtime refuses any path that leads out.
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, os.path.realpath(self.bundle.root))
        extra = [f for f in g["files"] if f != g["file"]]
        if extra:
            buffers = [np.frombuffer(self.bundle.read_verified(graph, f), dtype=np.uint8) for f in extra]
            options.add_external_initializers_from_files_in_memory(
                extra, buffers, [b.size for b in buffers])
        try:
            return self.ort.InferenceSession(model, options, providers=self.providers)
        except FarError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise FarError(f"ONNX Runtime cannot load graph '{graph}' of the bundle "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None

    def session(self, graph: str):
        with self._lock:
            if graph not in self._sessions:
                if not self.bundle.has(graph):
                    raise FarError(f"The bundle has no '{graph}' graph.")
                sess = self._create(graph)
                active = sess.get_providers()
                fell_back = [p for p in self.providers if p in GPU_PROVIDERS and p not in active]
                if fell_back:
                    raise FarError(f"{fell_back[0]} was requested but ONNX Runtime fell back to "
                                   f"{', '.join(active)} for '{graph}' (no usable GPU or CUDA libraries); "
                                   "refusing to run silently on the CPU.")
                self.check_graph(graph, sess)
                self._sessions[graph] = sess
            return self._sessions[graph]

    def check_graph(self, graph: str, sess) -> None:
        """The graph's declared shapes (read by ONNX Runtime from the verified bytes) against
        the manifest's model entry, before any buffer of the graph is allocated."""
        spec = self.specs.get(graph)
        if spec is None:                    # a graph no run of this model calls
            return

        def bad(what):
            raise FarError(f"Graph '{graph}' of bundle {self.bundle.root} does not match the manifest: "
                           f"{what}; rebuild the bundle.")
        declared = [[(t.name, t.type, list(t.shape)) for t in ts] for ts in (sess.get_inputs(), sess.get_outputs())]
        self.bundle.variant.check_graph_shapes(self.bundle.model, spec, *declared, bad)

    def check_graphs(self) -> None:
        """Make every graph's session now (each one's shapes checked): ``far-runtime info``."""
        for graph in self.bundle.graphs:
            self.session(graph)

    def _workspace(self) -> LRU:
        ws = getattr(self._local, "ws", None)
        if ws is None:                          # evicted entries' arrays stay valid (no on_evict)
            ws = self._local.ws = LRU(self.max_shapes)
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
                shape = t.shape(dims)
                buffer_bytes(shape, np.dtype(t.dtype).itemsize, f"Graph {call.graph}'s output {t.name}")
                arr = np.empty(shape, dtype=t.dtype)
                io.bind_ortvalue_output(t.name, self.ort.OrtValue.ortvalue_from_numpy(arr))
                outputs[t.name] = arr
            entry = (sess, io, outputs)
            ws.put(call.key, entry)
        return entry

    def prepare(self, plan: Plan) -> None:
        """Every graph of ``plan`` made and its declared shapes checked, then its buffers."""
        calls = plan.distinct()
        for graph in dict.fromkeys(c.graph for c in calls):
            self.session(graph)
        for call in calls:
            self._entry(call)

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess, io, outputs = self._entry(call)
        try:
            for name, arr in feeds.items():
                io.bind_cpu_input(name, arr)
            t0 = time.perf_counter()
            sess.run_with_iobinding(io, self._run_options)
        except FarError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail/InvalidArgument/RuntimeException/...
            raise run_failure("ONNX Runtime", call, feeds, outputs, e) from None
        self.timer.add(call.graph, time.perf_counter() - t0)
        return outputs

