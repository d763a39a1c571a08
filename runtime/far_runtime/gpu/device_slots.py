"""What every GPU backend shares, with no device in it: per-shape slots, bounds, threads.

A GPU backend keeps device state per shape key of the plan (``plan.Call.key``): buffers,
pinned staging, and for TensorRT with CUDA graphs an execution context. ``SlotBackend``
holds that policy once, so the TensorRT and the PyTorch CUDA backends only say how a slot
is made, released and executed:

- **bounded**: slots live in an LRU (``SlotCache``, on ``lru.LRU``). Its capacity is sized from the plans
  the backend is prepared for (``plan_capacity``: the distinct shapes of one plan, 258 for a
  K = 256 plan of a 256-token model) or given explicitly, so one generate() never evicts its
  own shapes and a server that sees thousands of shapes holds a bounded number of them;
- **the device of every call**: the current CUDA device is per thread, so ``prepare`` and
  ``run`` select the backend's device on the calling thread before touching anything;
- **results per thread**: staging buffers are shared by all threads (one stream, one lock),
  so ``run`` copies outputs into arrays owned by the calling thread
  (``ThreadResults``), valid until that thread's next ``run`` of the same shape, as the
  backend interface promises; another thread's call can never overwrite them.

Nothing here imports CUDA, TensorRT or torch.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Hashable

import numpy as np

from ..errors import FarError
from ..lru import LRU
from ..plan import Call, Plan
from ..variants import variant_for

log = logging.getLogger(__name__)


def plan_capacity(plan: Plan) -> int:
    """Slots (and graphs) one generate() of ``plan`` needs so that it evicts none of its own."""
    return len(plan.distinct())


def default_capacity(model: dict, max_batch: int, head_steps: int = 8) -> int:
    """Distinct shapes of the largest plan of a model's variant (FAR/MAR: K = its token
    count, at most MAX_K; FAR-Causal: its one plan) with CFG at the bundle's max batch. Used
    when no capacity is given."""
    return plan_capacity(variant_for(model).largest_plan(model, max_batch, head_steps))


class SlotCache:
    """Per-shape slots (an ``LRU``), made on first use; ``release(key, slot)`` frees one.

    Not locked: the backend calls it under its own lock.
    """

    def __init__(self, make: Callable[[Call], object], release: Callable[[Hashable, object], None],
                 capacity: int = 1):
        self.make, self.release = make, release
        self.made = 0
        self._slots = LRU(capacity, release)

    @property
    def capacity(self) -> int:
        return self._slots.capacity

    @property
    def released(self) -> int:
        return self._slots.evictions

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key) -> bool:
        return key in self._slots

    def reserve(self, n: int) -> None:
        """Grow the capacity to at least ``n`` (never shrinks it)."""
        self._slots.reserve(n)

    def get(self, call: Call):
        def make():
            self.made += 1
            return self.make(call)
        return self._slots.get_or_make(call.key, make)

    def clear(self) -> None:
        self._slots.clear()


class ThreadResults:
    """Output arrays owned by the calling thread, one set per shape key, bounded per thread."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._local = threading.local()

    def _store(self) -> LRU:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = LRU(self.capacity)
        store.reserve(self.capacity)
        return store

    def copy_out(self, key: Hashable, outputs: dict, dtypes: dict | None = None) -> dict:
        """Copy ``outputs`` (shared staging arrays) into this thread's arrays for ``key``.

        ``dtypes``: name -> dtype of the arrays handed out (default: the staging dtype).
        """
        store = self._store()
        own = store.get(key)
        if own is None or set(own) != set(outputs) or any(own[n].shape != a.shape for n, a in outputs.items()):
            own = {n: np.empty(a.shape, (dtypes or {}).get(n, a.dtype)) for n, a in outputs.items()}
            store.put(key, own)
        for name, src in outputs.items():
            np.copyto(own[name], src, casting="unsafe")
        return dict(own)


class SlotBackend:
    """The device-free part of a GPU backend: lock, device selection, slots, results.

    Subclasses implement ``_select_device()`` (make the backend's device current on the
    calling thread), ``_make_slot(call)``, ``_release_slot(key, slot)`` and
    ``_execute(call, slot, feeds)``, which runs one call and returns its outputs as arrays
    that stay valid only while the lock is held (shared staging). ``graphs`` (a
    ``cuda_graphs.GraphCache`` or None) is sized and pruned together with the slots.
    """

    name = "slots"

    def __init__(self, capacity: int | None, default: int, graphs=None):
        cap = capacity if capacity is not None else default
        if cap < 1:
            raise FarError(f"max_graphs must be at least 1, got {cap}.")
        self.graphs = graphs
        if graphs is not None:
            graphs.reserve(cap)
        self.slots = SlotCache(self._make_slot, self._released, cap)
        self.results = ThreadResults(cap)
        self._lock = threading.RLock()
        self._closed = False

    # --- hooks -----------------------------------------------------------------------
    def _select_device(self) -> None:
        raise NotImplementedError

    def _make_slot(self, call: Call):
        raise NotImplementedError

    def _release_slot(self, key, slot) -> None:
        raise NotImplementedError

    def _execute(self, call: Call, slot, feeds: dict) -> dict:
        raise NotImplementedError

    def _result_dtypes(self, call: Call) -> dict | None:
        return None

    def _close_device(self) -> None:
        """Free what is not per slot (streams, scratch, engines)."""

    # --- the backend interface -------------------------------------------------------
    def _released(self, key, slot) -> None:
        if self.graphs is not None:         # a graph holds the slot's addresses: drop it first
            self.graphs.discard(key)
        self._release_slot(key, slot)

    def _enter(self) -> None:
        if self._closed:
            raise FarError(f"The {self.name} backend was closed; create a new one.")
        self._select_device()

    def reserve(self, n: int) -> None:
        with self._lock:
            self.slots.reserve(n)
            self.results.capacity = max(self.results.capacity, n)
            if self.graphs is not None:
                self.graphs.reserve(n)

    def prepare(self, plan: Plan) -> None:
        with self._lock:
            self._enter()
            self.reserve(plan_capacity(plan))
            for call in plan.distinct():
                self.slots.get(call)

    def run(self, call: Call, feeds: dict) -> dict:
        with self._lock:
            self._enter()
            slot = self.slots.get(call)
            outputs = self._execute(call, slot, feeds)
            return self.results.copy_out(call.key, outputs, self._result_dtypes(call))

    def close(self) -> None:
        """Free graphs, slots and device state; the backend refuses calls afterwards."""
        with self._lock:
            if self._closed:
                return
            self._select_device()
            try:
                if self.graphs is not None:
                    self.graphs.clear()
                self.slots.clear()
                self._close_device()
            finally:
                self._closed = True
