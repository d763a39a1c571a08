"""The shape plan: every graph call of a generate() and its dims, known before the loop.

Engines need this up front: buffers are allocated once per distinct shape, optimisation
profiles must cover every shape, and CUDA graphs are captured once per distinct shape
(iterations with equal shapes share one). Each variant makes its own plan
(``variants/masked.py``: ``ShapePlan``, ``variants/causal.py``: ``CausalPlan``); every plan
answers ``calls()`` (in order) and ``distinct()``, which is all a backend reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import FarError


@dataclass(frozen=True)
class Call:
    graph: str
    dims: tuple            # sorted (dim, value) pairs: hashable shape key

    @property
    def key(self) -> tuple:
        return (self.graph, self.dims)

    def dim(self, name: str) -> int:
        return dict(self.dims)[name]


def make_call(graph: str, **dims) -> Call:
    return Call(graph, tuple(sorted(dims.items())))


def distinct_calls(calls) -> list[Call]:
    """The calls with distinct shapes, in first-use order (what a backend prepares once)."""
    seen, out = set(), []
    for c in calls:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


class Plan(Protocol):
    batch: int
    rows: int              # batch rows of the backbone (2 x batch with CFG)
    head_steps: int        # O for shortcut heads, diffusion steps for MAR heads
    head_mode: str         # "fused" or "step"

    def calls(self) -> list[Call]:
        """Every graph call of one generate(), in order."""

    def distinct(self) -> list[Call]:
        """The calls with distinct shapes, in first-use order."""


def check_batch(batch, max_batch: int | None) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or (max_batch and batch > max_batch):
        limit = f" and at most {max_batch} (the bundle's max batch)" if max_batch else ""
        raise FarError(f"Batch size must be at least 1{limit}, got {batch!r}.")
    return batch
