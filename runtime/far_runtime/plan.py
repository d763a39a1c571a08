"""The shape plan: every graph call of a generate() and its dims, known before the loop.

Engines need this up front: buffers are allocated once per distinct shape, optimisation
profiles must cover every shape, and CUDA graphs are captured once per distinct shape
(iterations with equal shapes share one).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FarError
from .schedule import Iteration, mask_schedule
from .specs import BATCH, N_KNOWN, N_PRED, ROWS, ZROWS, fused_name


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


@dataclass(frozen=True)
class IterationPlan:
    it: Iteration
    calls: tuple           # graph calls of this iteration, in order (empty when n_pred == 0)


@dataclass(frozen=True)
class ShapePlan:
    batch: int
    rows: int              # batch rows of the backbone (2 x batch with CFG)
    num_iter: int
    head_steps: int        # O for shortcut heads, diffusion steps for MAR heads
    head_mode: str         # "fused" or "step"
    iterations: tuple
    decode: Call | None = None

    def calls(self) -> list[Call]:
        out = [c for ip in self.iterations for c in ip.calls]
        return out + ([self.decode] if self.decode else [])

    def distinct(self) -> list[Call]:
        return distinct_calls(self.calls())


def make_plan(model: dict, batch: int, num_iter: int, head_steps: int, use_cfg: bool,
              head_mode: str = "fused", decode: bool = True, max_batch: int | None = None) -> ShapePlan:
    if not isinstance(batch, int) or batch < 1 or (max_batch and batch > max_batch):
        limit = f" and at most {max_batch} (the bundle's max batch)" if max_batch else ""
        raise FarError(f"Batch size must be at least 1{limit}, got {batch!r}.")
    L = model["seq_len"]
    rows = 2 * batch if use_cfg else batch
    diffusion = model["head_kind"] == "diffusion"
    if diffusion:
        head_mode = "step"
    its = []
    for it in mask_schedule(num_iter, L):
        calls = []
        if it.n_pred:
            n = it.n_pred
            calls.append(make_call("backbone", **{BATCH: rows, N_KNOWN: it.n_known, N_PRED: n}))
            if head_mode == "fused":
                calls.append(make_call(fused_name(head_steps), **{ROWS: batch * n, ZROWS: rows * n}))
            else:
                step = make_call("head_step", **{ROWS: rows * n})
                calls.extend([step] * head_steps)
        its.append(IterationPlan(it, tuple(calls)))
    dec = make_call("vae_decoder", **{BATCH: batch}) if decode else None
    return ShapePlan(batch, rows, num_iter, head_steps, head_mode, tuple(its), dec)
