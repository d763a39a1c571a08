"""The sampling loop's one transcendental outside the graphs: a float32 ``exp`` whose bits are
the same on every platform, in Python and in the C++ runtime (``ddpm.cpp``'s ``exp32``).

MAR's DDPM step scales its noise by ``exp(0.5 * log_var)``. numpy's float32 ``np.exp`` is its
own SIMD kernel on x86-64 and glibc's ``expf`` on aarch64; they differ in the last bit on a
large fraction of inputs, so the same run drew different latents on the two. Here ``exp`` is
evaluated from IEEE basic operations only (``+ - *``, ``rint``, ``ldexp`` and one rounding to
float32), each of which is correctly rounded, hence identical wherever it runs:

- ``x`` (float32) is widened to float64 (exact) and clamped to ``[-104, 89]``, outside which
  the float32 result is 0 or inf anyway;
- ``k = rint(x / ln 2)`` (``x * INV_LN2``), ``r = (x - k ln2_hi) - k ln2_lo`` (Cody-Waite:
  ``ln2_hi`` has 21 trailing zero bits, so ``k ln2_hi`` is exact), ``|r| <= 0.35``;
- ``exp(r)``: Taylor to degree 13 by Horner (truncation error < 5e-18 relative);
- ``ldexp(p, k)`` is exact in float64 over this range, then one rounding to float32.

The float64 value is within ~2e-16 relative of ``exp(x)``, so the float32 result is the
correctly rounded one except where ``exp(x)`` lies that close to a rounding midpoint. The C++
twin performs the same operations in the same order, compiled without fused multiply-add
(``-ffp-contract=off``).
"""
from __future__ import annotations

import numpy as np

LO, HI = -104.0, 89.0                                # exp(-104) rounds to 0, exp(89) to inf in float32
INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
# 1/n! for n = 13 .. 0, highest degree first (Horner).
TAYLOR = tuple(float.fromhex(h) for h in (
    "0x1.6124613a86d09p-33", "0x1.1eed8eff8d898p-29", "0x1.ae64567f544e4p-26", "0x1.27e4fb7789f5cp-22",
    "0x1.71de3a556c734p-19", "0x1.a01a01a01a01ap-16", "0x1.a01a01a01a01ap-13", "0x1.6c16c16c16c17p-10",
    "0x1.1111111111111p-7", "0x1.5555555555555p-5", "0x1.5555555555555p-3", "0x1.0000000000000p-1",
    "0x1.0000000000000p+0", "0x1.0000000000000p+0"))


def exp32(x: np.ndarray) -> np.ndarray:
    """``exp`` of a float32 array, as float32: the same bits on every platform (module doc)."""
    x = np.asarray(x, dtype=np.float32)
    nan = np.isnan(x)
    xd = np.clip(np.where(nan, 0.0, x.astype(np.float64)), LO, HI)
    k = np.rint(xd * INV_LN2)
    r = (xd - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, TAYLOR[0])
    for c in TAYLOR[1:]:
        p = p * r + c
    y = np.ldexp(p, k.astype(np.int32))
    with np.errstate(over="ignore"):                 # beyond float32's range: inf, as IEEE rounds
        out = y.astype(np.float32)
    return np.where(nan, x, out)
