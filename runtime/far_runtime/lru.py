"""One bounded per-shape cache: least recently used out first.

Every cache keyed by a plan's shape (``plan.Call.key``) is one of these: the ONNX Runtime
workspace (bindings and buffers per thread), the GPU slots, the per-thread result arrays and
the CUDA-graph cache. A server's clients choose batch sizes, K and CFG, so the distinct
shapes are unbounded over time; each cache keeps ``capacity`` of them and calls ``on_evict``
for what it drops (a GPU slot frees its device memory there). Not locked: the owner locks,
or the cache is per thread.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable


class LRU:
    def __init__(self, capacity: int = 1, on_evict: Callable[[Hashable, object], None] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.on_evict = on_evict
        self.evictions = 0
        self._items: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def keys(self) -> list:
        return list(self._items)

    def reserve(self, n: int) -> None:
        """Grow the capacity to at least ``n`` (never shrinks it)."""
        self.capacity = max(self.capacity, n)

    def get(self, key):
        """The value of ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._evict()

    def get_or_make(self, key, make: Callable[[], object]):
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def pop(self, key):
        """Remove ``key`` without calling ``on_evict``; its value, or None."""
        return self._items.pop(key, None)

    def clear(self) -> None:
        while self._items:
            self._evict()

    def _evict(self) -> None:
        key, value = self._items.popitem(last=False)
        self.evictions += 1
        if self.on_evict is not None:
            self.on_evict(key, value)
