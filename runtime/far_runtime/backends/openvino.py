"""OpenVINO on the CPU: fp32 or bf16 compute, int8 Q/DQ bundles as int8 (``far-runtime[openvino]``).

One compiled model per graph, made on first use from the very bytes that were hashed and
shared by every thread; an infer request per thread and shape (``lru.LRU``), its outputs
preallocated arrays that stay valid until that thread's next run of that shape.

Precision is asked for, never assumed: OpenVINO's own default on a CPU with bf16 units *is*
bf16, so every compiled model gets ``INFERENCE_PRECISION_HINT`` explicitly: the run's
precision, or the one the bundle records for that graph (``far-export build --precision
auto``; ``graph_precision.py``), f32 unless bf16 was asked and this CPU has bf16 units
(``cpu.check_precision``); a compiled model that reports another precision than the one
asked is refused, not run.

Loading: OpenVINO reads an ONNX graph given as bytes, but resolves its external data against
the process's working directory and cannot take external data from memory. So each graph's
verified files are written to a fresh private folder (``mkdtemp``: mode 0700) that holds
nothing else, read from there without memory mapping (OpenVINO refuses external-data paths
that lead out of the graph's folder), and the folder is removed before compiling. A graph
can thus reach no file but its own hashed ones. The cost is one write of the graph's bytes.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from ..bundle import Bundle
from ..cpu import read_cpu_flags
from ..errors import FarError
from ..limits import buffer_bytes
from ..graph_precision import graph_precisions, summary
from ..lru import LRU
from ..plan import Call, Plan
from .base import GraphTimer, check_threads, default_max_shapes, run_failure

log = logging.getLogger(__name__)

ELEMENT_TYPE = {"fp32": "f32", "bf16": "bf16"}


def import_openvino():
    try:
        import openvino
    except (ImportError, OSError):
        raise FarError("OpenVINO is not installed; install far-runtime[openvino] to use "
                       "--backend openvino.") from None
    return openvino


def openvino_message(e: Exception) -> str:
    """The informative line of an OpenVINO exception (its first lines name source files)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(e).__name__])[0])[:200].rstrip(".")


def cpu_capabilities(core) -> list[str]:
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_config(precision: str, threads: int | None = None) -> dict:
    """Compile properties: the precision asked, latency mode, one stream, the threads given,
    threads not pinned to cores. OpenVINO pins its threads by default; on a machine shared
    with other programs (or other replicas, each pinning to the same cores) a pinned thread
    waits for its core. Measured on the 2-core VM at load ~10, demo backbone, 16 rows,
    2 threads: 57 ms per call pinned, 42 ms not. (Also what ``far-export build --precision
    auto`` times each graph with.)"""
    cfg = {"INFERENCE_PRECISION_HINT": ELEMENT_TYPE[precision],
           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return cfg


class OpenVinoBackend:
    """OpenVINO's CPU plugin behind the backend protocol (``backends/base.py``)."""

    name = "openvino"

    def __init__(self, bundle: Bundle, precision: str | None = None, threads: int | None = None,
                 max_shapes: int | None = None, cpu_flags: frozenset[str] | None = None):
        self.ov = import_openvino()
        self.core = self.ov.Core()
        if "CPU" not in self.core.available_devices:
            raise FarError(f"OpenVINO sees no CPU device here (devices: {self.core.available_devices}).")
        self.bundle = bundle
        flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        # per graph: the run's precision, or the bundle's recorded choice (graph_precision.py)
        self.precisions = graph_precisions(bundle.manifest, self.name, precision, flags,
                                           cpu_capabilities(self.core))
        self.precision = summary(self.precisions)
        self.threads = check_threads(threads, "OpenVINO")
        self.max_shapes = max_shapes or default_max_shapes(bundle)
        self.specs = bundle.specs()
        self._compiled = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.timer = GraphTimer()

    def config(self, graph: str | None = None) -> dict:
        """Compile properties of ``graph`` (None: of a graph in the run's one precision): its
        precision (the run's, or the bundle's per-graph record), and ``compile_config``'s."""
        return compile_config(self.precisions[graph] if graph else self.precision, self.threads)

    def _read(self, graph: str):
        """The graph as OpenVINO reads it, from the bytes checked against the manifest."""
        g = self.bundle.graphs[graph]
        data = {f: self.bundle.read_verified(graph, f) for f in g["files"]}
        folder = tempfile.mkdtemp(prefix="far-openvino-")
        try:
            for fname, blob in data.items():
                rel = os.path.normpath(fname)
                if os.path.isabs(rel) or rel.split(os.sep)[0] == "..":
                    raise FarError(f"The bundle names {fname!r} as a file of graph '{graph}', which "
                                   "does not stay inside the bundle folder; refusing to read it.")
                path = os.path.join(folder, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "xb") as f:
                    f.write(blob)
            return self.core.read_model(os.path.join(folder, os.path.normpath(g["file"])),
                                        config={"ENABLE_MMAP": False})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _compile(self, graph: str):
        try:
            compiled = self.core.compile_model(self._read(graph), "CPU", self.config(graph))
        except FarError:
            raise
        except Exception as e:          # OpenVINO raises RuntimeError for every kind of failure
            raise FarError(f"OpenVINO cannot load graph '{graph}' of the bundle "
                           f"({type(e).__name__}: {openvino_message(e)}).") from None
        got = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        if got != ELEMENT_TYPE[self.precisions[graph]]:
            raise FarError(f"OpenVINO compiled graph '{graph}' in {got} although {self.precisions[graph]} was "
                           "asked; refusing a silent change of precision.")
        log.debug("openvino compiled %s (%s, %s threads)", graph, got, self.threads or "default")
        return compiled

    def compiled(self, graph: str):
        """The compiled model of ``graph``, made once and shared by every thread."""
        with self._lock:
            if graph not in self._compiled:
                if not self.bundle.has(graph):
                    raise FarError(f"The bundle has no '{graph}' graph.")
                self._compiled[graph] = self._compile(graph)
            return self._compiled[graph]

    def _workspace(self) -> LRU:
        ws = getattr(self._local, "ws", None)
        if ws is None:                          # evicted entries' arrays stay valid (no on_evict)
            ws = self._local.ws = LRU(self.max_shapes)
        return ws

    def _entry(self, call: Call):
        ws = self._workspace()
        entry = ws.get(call.key)
        if entry is None:
            request = self.compiled(call.graph).create_infer_request()
            dims = dict(call.dims)
            outputs = {}
            for t in self.specs[call.graph].outputs:
                shape = t.shape(dims)
                buffer_bytes(shape, np.dtype(t.dtype).itemsize, f"Graph {call.graph}'s output {t.name}")
                arr = np.empty(shape, dtype=t.dtype)
                request.set_tensor(t.name, self.ov.Tensor(arr, shared_memory=True))
                outputs[t.name] = arr
            entry = (request, outputs)
            ws.put(call.key, entry)
        return entry

    def prepare(self, plan: Plan) -> None:
        for call in plan.distinct():
            self._entry(call)

    def run(self, call: Call, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, outputs = self._entry(call)
        try:
            for name, arr in feeds.items():
                request.set_tensor(name, self.ov.Tensor(np.ascontiguousarray(arr), shared_memory=True))
            t0 = time.perf_counter()
            request.infer()
        except FarError:
            raise
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError for every failure
            raise run_failure("OpenVINO", call, feeds, outputs, e) from None
        self.timer.add(call.graph, time.perf_counter() - t0)
        return outputs
