"""The per-iteration shape schedule of MAR/FAR sampling: a pure function of K and L.

Iteration ``s`` (0-based) of ``K`` starts with ``before`` masked tokens and ends with
``after`` still masked. MAR clamps ``mask_len = floor(L * cos(pi/2 * (s+1)/K))`` to
``[1, before - 1]``; the last iteration predicts everything left (``after = 0``). The
tokens leaving the mask are ``order[after:before]`` of each sample's random order, so every
shape in the loop is known before the loop starts. Iterations that predict nothing (they
occur, e.g. K=64 on 256 tokens) are kept in the plan with ``n_pred == 0``; a sampler may
skip them since they change nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import FarError

MAX_K = 256
MAX_HEAD_STEPS = 128      # d = 1/128 is the smallest shortcut step size (SPEC)


@dataclass(frozen=True)
class Iteration:
    index: int
    before: int      # masked tokens when the iteration starts
    after: int       # masked tokens when it ends (0 on the last iteration)
    mask_len: int    # MAR's clamped mask_len; it drives the linear CFG schedule
    seq_len: int

    @property
    def n_known(self) -> int:
        return self.seq_len - self.before

    @property
    def n_pred(self) -> int:
        return self.before - self.after


def check_k(num_iter: int) -> None:
    if not isinstance(num_iter, int) or not 1 <= num_iter <= MAX_K:
        raise FarError(f"K (autoregressive iterations) must be an integer in 1..{MAX_K}, got {num_iter!r}.")


def valid_head_steps(steps) -> bool:
    """O is a power of two in 1..128: the shortcut step size d = 1/O is one of SPEC's levels."""
    return isinstance(steps, int) and 1 <= steps <= MAX_HEAD_STEPS and not steps & (steps - 1)


def check_head_steps(steps, what: str = "O (head steps)") -> None:
    if not valid_head_steps(steps):
        raise FarError(f"{what} must be a power of two in 1..{MAX_HEAD_STEPS}, got {steps!r}.")


def mask_schedule(num_iter: int, seq_len: int) -> list[Iteration]:
    """The K iterations of SPEC's cosine schedule for a sequence of ``seq_len`` tokens."""
    check_k(num_iter)
    plan = []
    before = seq_len
    for s in range(num_iter):
        ratio = math.cos(math.pi / 2.0 * (s + 1) / num_iter)
        mask_len = max(1, min(before - 1, math.floor(seq_len * ratio)))
        after = 0 if s == num_iter - 1 else mask_len
        plan.append(Iteration(s, before, after, mask_len, seq_len))
        before = after
    return plan


def cfg_at(it: Iteration, cfg: float, schedule: str) -> float:
    """Guidance scale of one iteration: SPEC's linear ramp or the constant value."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (it.seq_len - it.mask_len) / it.seq_len
    if schedule == "constant":
        return float(cfg)
    raise FarError(f"CFG schedule must be 'linear' or 'constant', got {schedule!r}.")
