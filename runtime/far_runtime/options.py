"""Sampling options as untrusted input: one check for the runtime, the reference and the CLIs.

Integers may be Python or numpy integers (``np.int64(4)`` is a fine K); floats must be finite
(``cfg=nan`` used to give an all-black image); a seed is a non-negative integer (numpy's
PCG64 refuses negative ones with a ValueError). Every refusal is one ``FarError`` sentence.
"""
from __future__ import annotations

import math
import numbers
import operator

from .defaults import CFG_SCHEDULES
from .errors import FarError
from .schedule import check_head_steps, check_k

MAX_NUM = 1024     # the largest batch a bundle can be exported for (export's --max-batch)


def as_int(value, what: str) -> int:
    """``value`` as a Python int if it is an integer of any kind (not a bool), else refused."""
    if isinstance(value, bool):
        raise FarError(f"{what} must be an integer, got {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise FarError(f"{what} must be an integer, got {value!r}.") from None


def as_finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FarError(f"{what} must be a number, got {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise FarError(f"{what} must be a finite number, got {v}.")
    return v


def check_seed(seed) -> int:
    s = as_int(seed, "The seed")
    if s < 0:
        raise FarError(f"The seed must be a non-negative integer, got {s}.")
    return s


def check_sampling(K, O, cfg, temperature, seed=0, check_o: bool = True) -> tuple:
    """K, O, cfg, temperature and seed checked and normalised (ints, floats)."""
    K = as_int(K, "K (autoregressive iterations)")
    check_k(K)
    O = as_int(O, "O (head steps)")
    if check_o:
        check_head_steps(O)
    cfg = as_finite(cfg, "The CFG scale")
    temperature = as_finite(temperature, "The temperature")
    if temperature < 0:
        raise FarError(f"The temperature must be >= 0, got {temperature}.")
    return K, O, cfg, temperature, check_seed(seed)


def check_schedule(schedule) -> str:
    if schedule not in CFG_SCHEDULES:
        raise FarError(f"CFG schedule must be 'linear' or 'constant', got {schedule!r}.")
    return schedule


def check_num(num) -> int:
    n = as_int(num, "--num")
    if not 1 <= n <= MAX_NUM:
        raise FarError(f"--num must be in 1..{MAX_NUM}, got {n}.")
    return n
