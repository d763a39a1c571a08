"""CUDA-graph capture and replay of the sampling loop, written once for every GPU backend.

Every graph call of a generate() has a shape key ``(graph, dims)`` known before the loop
(``plan.Call.key``). A backend keeps one set of device buffers per key; this cache keeps one
captured CUDA graph per key, so iterations with equal shapes share a graph (the O head
steps of one iteration, the equal-size iterations of a long schedule, every later
generate() with the same plan).

What differs between backends is only how work is captured and replayed: PyTorch has
``torch.cuda.CUDAGraph``, TensorRT runs on a raw CUDA stream captured with the CUDA runtime.
That difference is a ``Capturer``; the policy is here:

- the first ``warmup`` calls of a key run eagerly (cuBLAS/TensorRT set-up, lazy allocations,
  TensorRT's required enqueue after a shape change); the next call captures and replays;
  later calls replay;
- a captured graph remembers the shape, dtype and device address of every buffer it was
  captured with. A replay whose buffers differ (the backend re-allocated them) would read
  and write freed memory, so the stale graph is released and the call is captured again;
- at most ``max_graphs`` graphs are kept, least recently used first out, so a long-running
  server that sees many plans holds bounded device memory. The backends size it from the
  plan (``reserve``: the distinct shapes of a plan, 258 for K = 256), so one generate()
  never evicts its own graphs;
- a capture that fails (an operation that cannot be captured, a driver error) is logged
  with its cause, whatever was captured is released, and the key runs eagerly from then on:
  a graph is an optimisation, never a reason for a call to fail.

No CUDA, torch or TensorRT import happens here: the runtime stays importable everywhere.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol

from ..lru import LRU

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """One buffer a captured graph reads or writes: what must not change between replays."""
    name: str
    shape: tuple
    dtype: str
    address: int


class CapturedGraph(Protocol):
    def replay(self) -> None:
        """Launch the captured work on the stream it was captured on."""

    def release(self) -> None:
        """Free the graph (and its executable instance)."""


class Capturer(Protocol):
    def capture(self, body: Callable[[], None]) -> CapturedGraph:
        """Record the device work ``body`` enqueues; the work itself does not run."""


@dataclass
class _Entry:
    graph: CapturedGraph
    bindings: tuple


@dataclass
class GraphStats:
    eager: int = 0          # warm-up calls run without a graph
    captures: int = 0
    replays: int = 0
    evictions: int = 0
    stale: int = 0          # graphs dropped because their buffers moved or changed shape
    failed: int = 0         # captures that failed; those keys run eagerly

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class GraphCache:
    """Captured graphs by shape key: bounded LRU with a shape and address check at replay."""

    def __init__(self, capturer: Capturer, max_graphs: int = 256, warmup: int = 1):
        self.capturer = capturer
        self.warmup = warmup
        self.stats = GraphStats()
        self._graphs = LRU(max_graphs, self._evicted)      # key -> _Entry
        self._seen: dict[Hashable, int] = {}
        self._eager_only: set = set()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key) -> bool:
        return key in self._graphs

    def run(self, key: Hashable, bindings, body: Callable[[], None]) -> str:
        """Execute ``body``'s work for ``key``: eagerly, by capture + replay, or by replay.

        ``bindings``: the ``Binding`` of every buffer ``body`` touches, as they are now.
        Returns what happened: ``"eager"``, ``"captured"`` or ``"replayed"``.
        """
        bindings = tuple(bindings)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is not None and entry.bindings != bindings:
                log.warning("CUDA graph for %s was captured with other buffers; capturing again", key)
                self._drop(key)
                self._seen.pop(key, None)       # new buffers: warm up again before capturing
                self.stats.stale += 1
                entry = None
            if entry is None:
                seen = self._seen.get(key, 0)
                if seen < self.warmup or key in self._eager_only:
                    self._seen[key] = seen + 1
                    self.stats.eager += 1
                    body()
                    return "eager"
                try:
                    graph = self.capturer.capture(body)
                except Exception as e:          # capture is optional: fall back, keep the cause
                    log.warning("CUDA-graph capture of %s failed (%s: %s); running it eagerly",
                                key, type(e).__name__, e)
                    self._eager_only.add(key)
                    self.stats.failed += 1
                    self.stats.eager += 1
                    body()
                    return "eager"
                entry = _Entry(graph, bindings)
                self._graphs.put(key, entry)
                self.stats.captures += 1
                entry.graph.replay()
                return "captured"
            self.stats.replays += 1
            entry.graph.replay()
            return "replayed"

    def reserve(self, n: int) -> None:
        """Keep at least ``n`` graphs (a plan's distinct shapes); never shrinks."""
        with self._lock:
            self._graphs.reserve(n)

    @property
    def max_graphs(self) -> int:
        return self._graphs.capacity

    def discard(self, key) -> None:
        """Release the graph of ``key`` if there is one (its buffers are about to be freed);
        the key's next call warms up eagerly again (TensorRT needs one enqueue of a new
        context before it can be captured)."""
        with self._lock:
            if key in self._graphs:
                self._drop(key)
            self._seen.pop(key, None)           # a re-made slot (new context) runs eagerly first

    def _drop(self, key) -> None:
        self._graphs.pop(key).graph.release()

    def _evicted(self, key, entry: _Entry) -> None:
        entry.graph.release()
        self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            for key in self._graphs.keys():
                self._drop(key)
            self._seen.clear()
            self._eager_only.clear()
