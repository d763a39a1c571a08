"""Untrusted numbers and text: bounds, buffer sizes checked before allocation, safe quoting.

A manifest's numbers decide buffer sizes and its strings can end up in error sentences, so
every integer field is bounded (``check_bounds``), every buffer size is a product checked
dim by dim against one cap (``buffer_bytes``: over the cap is one sentence, never a
MemoryError or a size that wrapped), and untrusted text is quoted escaped and cut short
(``shown``), never pasted into advice a user might run.
"""
from __future__ import annotations

from .errors import FarError

MAX_BUFFER_BYTES = 16 << 30            # one tensor or randomness array at the bundle's largest shape


def shown(text, limit: int = 80) -> str:
    """Untrusted text for an error sentence: its repr (control characters escaped), cut short."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit] + "..."


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_bounds(entry: dict, bounds: dict, bad, prefix: str = "model.") -> None:
    """Every key of ``bounds`` is an integer within its (smallest, largest), else ``bad(sentence)``."""
    for key, (lo, hi) in bounds.items():
        v = entry.get(key)
        if not is_int(v) or not lo <= v <= hi:
            bad(f"{prefix}{key} is {shown(v, 40)}, not an integer in {lo}..{hi}")


def buffer_bytes(shape, itemsize: int, what: str, cap: int = MAX_BUFFER_BYTES) -> int:
    """Bytes of a buffer of ``shape``, refused in one sentence over ``cap``: the product is
    checked dim by dim, so no size wraps or grows without bound first."""
    n = int(itemsize)
    for d in shape:
        d = int(d)
        if d < 0:
            raise FarError(f"{what} would have a negative dimension {d}; the bundle is inconsistent.")
        n *= d
        if n > cap:
            raise FarError(f"{what} would need over {cap >> 30} GiB at shape "
                           f"{tuple(int(x) for x in shape)}, past the runtime's limit for one buffer.")
    return n
