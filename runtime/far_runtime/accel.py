"""Training-free sampling accelerations (issue #24): options of the variants' loops, off by default.

Three options, each one plain value (a string; ``None`` = off), the same in the Python API
(``Pipeline.generate_tokens(..., head_schedule=, cfg_interval=, cfg_cache=)``), the command
lines (``--head-schedule``, ``--cfg-interval``, ``--cfg-cache``), the server's request keys and
``far-export verify``:

- ``head_schedule``: the head steps of each iteration. ``"A:B"`` anneals linearly in the known
  fraction from A (nothing known) towards B, rounded down (FAR: to a power of two; MAR: to an
  integer count of DDPM steps); ``"v0,v1,..."`` lists one value per iteration. (DiSA.)
- ``cfg_interval``: ``"LO:HI"``, fractions of the iterations: guidance only on iterations s with
  ``LO * K <= s < HI * K``; the others run B rows, no unconditional rows at all.
- ``cfg_cache``: ``"W:N"``, LazyMAR's condition cache: the unconditional rows are computed on
  iterations s < W and where (s - W) % N == 0 (and on the first guided one); on the others the
  backbone runs the B conditional rows only and the unconditional condition is the conditional
  one plus the difference z_u - z_c kept from the last computed iteration. FAR and MAR only.

The exact rules, written for a port to give the same bytes, are ``ACCEL.md`` beside this file.
This module is their one Python implementation: the runtime's plans (``variants/``) and the
PyTorch reference both read ``resolve``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FarError
from .schedule import MAX_HEAD_STEPS, valid_head_steps

KEYS = ("head_schedule", "cfg_interval", "cfg_cache")
FLAGS = {"head_schedule": "--head-schedule", "cfg_interval": "--cfg-interval", "cfg_cache": "--cfg-cache"}
UNCOND = ("", "computed", "refresh", "reuse")   # the unconditional rows of an iteration (see IterationOptions)
MAX_INT = 10 ** 6

_INT = re.compile(r"[0-9]{1,7}", re.ASCII)
_DEC = re.compile(r"(?:[0-9]{1,9}(?:\.[0-9]{0,17})?|\.[0-9]{1,17})", re.ASCII)


def _int(text: str, what: str, spec) -> int:
    t = text.strip()
    if not _INT.fullmatch(t):
        raise FarError(f"{what} takes non-negative whole numbers, got {spec!r}.")
    return int(t)


def _pair(value, what: str, form: str) -> tuple[str, str]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return str(value[0]), str(value[1])
    if not isinstance(value, str) or value.count(":") != 1:
        raise FarError(f"{what} must be {form}, got {value!r}.")
    a, b = value.split(":")
    return a, b


def parse_head_schedule(value) -> str | None:
    """``"A:B"`` or ``"v0,v1,..."`` (or a list of ints) in canonical text; syntax only."""
    if value is None:
        return None
    what = "--head-schedule"
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise FarError(f"{what} as a list holds whole numbers, one per iteration, got {value!r}.")
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise FarError(f"{what} must be 'A:B' (e.g. '8:1') or one value per iteration ('8,8,4,...'), "
                       f"got {value!r}.")
    if ":" in value:
        a, b = _pair(value, what, "'A:B' (e.g. '8:1')")
        nums = [_int(a, what, value), _int(b, what, value)]
        sep = ":"
    else:
        nums = [_int(v, what, value) for v in value.split(",")]
        sep = ","
    if any(n < 1 or n > MAX_INT for n in nums):
        raise FarError(f"{what} values must be at least 1, got {value!r}.")
    return sep.join(str(n) for n in nums)


def parse_cfg_interval(value) -> str | None:
    """``"LO:HI"`` with 0 <= LO < HI <= 1, in canonical text (Python's repr of each float)."""
    if value is None:
        return None
    what = "--cfg-interval"
    a, b = _pair(value, what, "'LO:HI', fractions of the iterations such as '0.25:1'")
    if not (_DEC.fullmatch(a.strip()) and _DEC.fullmatch(b.strip())):
        raise FarError(f"{what} takes two plain decimal fractions 'LO:HI' such as '0.25:1', got {value!r}.")
    lo, hi = float(a), float(b)
    if not 0.0 <= lo < hi <= 1.0:
        raise FarError(f"{what} must satisfy 0 <= LO < HI <= 1, got {value!r}.")
    return f"{lo!r}:{hi!r}"


def parse_cfg_cache(value) -> str | None:
    """``"W:N"``: W >= 0 warm-up iterations, refresh every N >= 1, in canonical text."""
    if value is None:
        return None
    what = "--cfg-cache"
    a, b = _pair(value, what, "'W:N' (unconditional rows computed on the first W iterations and "
                              "every N-th after), e.g. '2:3'")
    w, n = _int(a, what, value), _int(b, what, value)
    if n < 1:
        raise FarError(f"{what} 'W:N' needs N >= 1, got {value!r}.")
    return f"{w}:{n}"


@dataclass(frozen=True)
class AccelOptions:
    """The three options in canonical text (``None``: off); make one with ``accel_options``."""
    head_schedule: str | None = None
    cfg_interval: str | None = None
    cfg_cache: str | None = None

    @property
    def off(self) -> bool:
        return self.head_schedule is None and self.cfg_interval is None and self.cfg_cache is None

    def as_dict(self) -> dict:
        """The options that are on, by key (the server's request keys, the API's keywords)."""
        return {k: getattr(self, k) for k in KEYS if getattr(self, k) is not None}

    def flags(self) -> list[str]:
        """The ``far-runtime generate`` flags that give these options."""
        return [x for k, v in self.as_dict().items() for x in (FLAGS[k], v)]

    def interval(self) -> tuple[float, float] | None:
        if self.cfg_interval is None:
            return None
        lo, hi = self.cfg_interval.split(":")
        return float(lo), float(hi)

    def cache(self) -> tuple[int, int] | None:
        if self.cfg_cache is None:
            return None
        w, n = self.cfg_cache.split(":")
        return int(w), int(n)


def accel_options(head_schedule=None, cfg_interval=None, cfg_cache=None) -> AccelOptions:
    """The options checked (syntax; what depends on the model and K is ``resolve``'s)."""
    return AccelOptions(parse_head_schedule(head_schedule), parse_cfg_interval(cfg_interval),
                        parse_cfg_cache(cfg_cache))


def as_accel(accel) -> AccelOptions:
    """``None``, a dict of the keys, or ``AccelOptions`` as checked ``AccelOptions``."""
    if accel is None:
        return AccelOptions()
    if isinstance(accel, AccelOptions):
        return accel_options(**accel.as_dict())
    if isinstance(accel, dict):
        unknown = sorted(set(accel) - set(KEYS))
        if unknown:
            raise FarError(f"Unknown sampling option '{unknown[0]}'; the options are {', '.join(KEYS)}.")
        return accel_options(**accel)
    raise FarError(f"Sampling options must be AccelOptions or a dict, got {type(accel).__name__}.")


@dataclass(frozen=True)
class IterationOptions:
    """What the options decide for one iteration (FAR/MAR) or one token (FAR-Causal).

    ``uncond``: ``""`` no guidance; ``"computed"`` the unconditional rows run in the backbone
    as usual; ``"refresh"`` they run and the z difference is kept (``cfg_cache``); ``"reuse"``
    the backbone runs the conditional rows only, the kept difference gives the rest."""
    head_steps: int
    guided: bool
    uncond: str = ""


def head_steps_at(spec: str | None, default: int, n_known: int, seq_len: int, index: int,
                  power_of_two: bool) -> int:
    """One iteration's head steps from the checked ``head_schedule`` text."""
    if spec is None:
        return default
    if ":" not in spec:
        return int(spec.split(",")[index])
    a, b = (int(x) for x in spec.split(":"))
    num = a * seq_len - (a - b) * n_known        # (A + (B - A) n_known / L) * L, exact
    if not power_of_two:
        return num // seq_len
    p = 1
    while 2 * p * seq_len <= num:
        p *= 2
    return p


def check_head_schedule(spec: str | None, count: int, shortcut: bool, max_steps: int) -> None:
    """The schedule's values fit the head (FAR: powers of two <= 128; MAR: 1..S) and a list has
    one value per iteration."""
    if spec is None:
        return
    values = [int(x) for x in re.split("[:,]", spec)]
    if "," in spec or ":" not in spec:
        if len(values) != count:
            raise FarError(f"--head-schedule lists {len(values)} values but the run has {count} "
                           "iterations; give one per iteration or 'A:B'.")
    if shortcut:
        bad = [v for v in values if not valid_head_steps(v)]
        if bad:
            raise FarError(f"--head-schedule values are shortcut head steps, powers of two in "
                           f"1..{MAX_HEAD_STEPS}; got {bad[0]}.")
    elif max(values) > max_steps:
        raise FarError(f"--head-schedule values are DDPM steps per iteration, at most the model's "
                       f"{max_steps} (its randomness holds that many step-noise rows); got {max(values)}.")


def guided_at(interval: tuple[float, float] | None, index: int, count: int) -> bool:
    """Whether iteration ``index`` of ``count`` lies in the guidance interval (IEEE doubles)."""
    if interval is None:
        return True
    lo, hi = interval
    return lo * count <= index < hi * count


def resolve(accel: AccelOptions, count: int, default_steps: int, use_cfg: bool, known: list,
            seq_len: int, shortcut: bool, max_steps: int = 0, runs: list | None = None,
            cache_allowed: bool = True) -> list[IterationOptions]:
    """Per iteration: head steps, guidance and the unconditional rows' treatment.

    ``known[s]``: tokens known when iteration s starts; ``runs[s]``: whether it predicts any
    token (an iteration predicting none runs nothing and so refreshes nothing)."""
    check_head_schedule(accel.head_schedule, count, shortcut, max_steps)
    cache = accel.cache()
    if cache is not None and not cache_allowed:
        raise FarError("--cfg-cache reuses the unconditional condition across iterations of FAR "
                       "and MAR; FAR-Causal's KV cache needs every unconditional step, so it does "
                       "not apply.")
    interval = accel.interval()
    runs = runs if runs is not None else [True] * count
    out, kept = [], False
    for s in range(count):
        steps = head_steps_at(accel.head_schedule, default_steps, known[s], seq_len, s, shortcut)
        guided = use_cfg and guided_at(interval, s, count)
        uncond = ""
        if guided and cache is None:
            uncond = "computed"
        elif guided and runs[s]:
            w, n = cache
            if not kept or s < w or (s - w) % n == 0:
                uncond, kept = "refresh", True
            else:
                uncond = "reuse"
        elif guided:
            uncond = "computed"                  # predicts nothing: no call, nothing refreshed
        out.append(IterationOptions(steps, guided, uncond))
    return out
