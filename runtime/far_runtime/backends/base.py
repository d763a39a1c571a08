"""The small interface the sampling loop drives, and what every backend shares.

The loop only ever calls ``prepare(plan)`` once per plan and ``run(call, feeds)`` per graph
call. ``call`` carries the graph name and its dims (the shape key of the plan), so a backend
can keep one set of buffers (and, on a GPU, one captured CUDA graph) per distinct shape.
``run`` returns arrays owned by the backend: valid until the next ``run`` of the same shape
on the same thread. That is the whole contract; ONNX Runtime (``onnxruntime.py``), OpenVINO
(``openvino.py``) and TensorRT (``gpu/trt_backend.py``) implement the same two methods and
the loop does not change.
"""
from __future__ import annotations

import numbers
import os
import threading
from collections import defaultdict
from typing import Protocol

import numpy as np

from ..errors import FarError
from ..limits import shown
from ..plan import Call, Plan


class Backend(Protocol):
    name: str

    def prepare(self, plan: Plan) -> None:
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                  # not Linux
        return os.cpu_count() or 1


def check_threads(threads, library: str) -> int | None:
    """A thread count as given (None: the library's default), or one sentence."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                or threads < 1):
        raise FarError(f"The {library} thread count must be at least 1, got {threads!r}.")
    return None if threads is None else int(threads)


def default_max_shapes(bundle) -> int:
    """Per-thread shapes a backend keeps: a server's clients choose K, batch sizes and CFG, so
    the distinct shapes are unbounded over time. One plan needs about seq_len + 2; four fit."""
    return 4 * (int(bundle.model.get("seq_len", 256)) + 8)


def run_failure(library: str, call, feeds: dict, outputs: dict, e: Exception) -> FarError:
    """One sentence for a graph call the execution library refused: the graph, the call's dims
    and the shapes it was given, and the first line of the library's own message (escaped, cut
    short)."""
    def shapes(arrays):
        return ", ".join(f"{n} {list(np.shape(a))}" for n, a in arrays.items())
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[-1] if library == "OpenVINO" and lines else (lines or [""])[0]
    return FarError(f"{library} failed to run graph '{call.graph}' at {dict(call.dims)} with inputs "
                    f"{shapes(feeds)} and outputs {shapes(outputs)} ({type(e).__name__}: "
                    f"{shown(first, 200)}); the bundle's graphs and manifest do not agree, rebuild the bundle.")
