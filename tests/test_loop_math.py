"""The loop's own arithmetic (everything the sampling loop computes outside the graphs) is the
same in the Python and the C++ runtime, bit for bit, and its one per-step transcendental (MAR's
noise scale exp) is platform-independent by construction (far_runtime/exp32.py). Across
machines: tests/aarch64/check.sh compares the same dumps on aarch64."""
import shutil

import numpy as np
import pytest

import loop_math as lm
from far_runtime.exp32 import exp32
from far_runtime.schedule import mask_schedule


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if shutil.which("c++") is None:
        pytest.skip("the C++ loop-math probe needs a C++ compiler, which this machine lacks")
    return lm.build_probe(str(tmp_path_factory.mktemp("probe") / "loop_math_probe"))


def test_exp32_is_the_correctly_rounded_exp():
    """On all 4.8 million inputs of exp_inputs (with NaN, infinities, overflow and underflow),
    exp32 equals exp computed in long double and rounded once to float32."""
    x = lm.exp_inputs()
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.longdouble)).astype(np.float32)
    assert lm.differing(exp32(x), want) == 0
    assert exp32(np.float32(0.0)) == 1.0 and exp32(np.array([], np.float32)).shape == (0,)
    assert exp32(np.zeros((2, 3), np.float32)).shape == (2, 3)


def test_cpp_loop_arithmetic_equals_python(probe):
    """exp32, the mask lengths of every K in 1..256 at four sequence lengths, and the float32
    DDPM coefficients of every respacing count 1..1000 (plus ddimN and sections): C++ = Python."""
    c = lm.cpp_dumps(probe)
    x = c["inputs"]
    assert lm.differing(c["exp32"], exp32(x)) == 0
    for L in lm.MASK_LENGTHS:
        assert lm.differing(c[f"mask{L}"], lm.python_mask(L)) == 0, L
    assert lm.differing(c["ddpm"], lm.python_ddpm().astype(np.float32)) == 0


def test_mask_lengths_only_hinge_on_cos_at_two_thirds():
    """A last-bit difference in cos can move floor(L * cos(pi/2 (s+1)/K)) only where the product
    lies within a rounding of an integer. For every K <= 256, s < K and L <= 4096 that happens
    only where cos is exactly 0 (the last iteration, whose mask length is clamped to 1 either
    way) or exactly 1/2 ((s+1)/K = 2/3): elsewhere the product is at least 1e-8 from an integer.
    So the mask schedule is platform-independent when those 85 cosines are (check.sh compares
    every cosine's bits across machines)."""
    ratios = lm.mask_ratios()
    ks = np.array([K for K in range(1, 257) for _ in range(K)])
    ss = np.array([s for K in range(1, 257) for s in range(K)])
    prod = np.arange(1, 4097, dtype=np.float64)[:, None] * ratios[None, :]
    near = np.abs(prod - np.rint(prod)) < 1e-8
    hinge = np.any(near, axis=0)
    last = ss == ks - 1
    two_thirds = 3 * (ss + 1) == 2 * ks
    assert np.all(hinge <= (last | two_thirds))
    assert np.all(np.abs(ratios[last]) < 1e-15) and np.all(np.abs(ratios[two_thirds] - 0.5) < 1e-15)
    assert two_thirds.sum() == 85
    for K in range(1, 257):                     # the clamp: the last iteration's mask length is 1
        for L in (2, 64, 4096):
            assert mask_schedule(K, L)[-1].mask_len == 1
