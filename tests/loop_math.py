"""The sampling loop's own arithmetic (what it computes outside the graphs), dumped from the
Python runtime and from the C++ runtime's sources (loop_math_probe.cpp), so that the two can be
compared bit for bit here (test_loop_math.py) and across machines (aarch64/check.sh).

Standard library and numpy only: it also runs inside the aarch64 guest, which has no pytest.
"""
from __future__ import annotations

import math
import os
import subprocess

import numpy as np

from far_runtime.ddpm import ddpm_schedule
from far_runtime.exp32 import exp32
from far_runtime.schedule import MAX_K, mask_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "runtime", "cpp", "src")
PROBE_SOURCES = [os.path.join(ROOT, "tests", "loop_math_probe.cpp")] + \
    [os.path.join(SRC, f) for f in ("ddpm.cpp", "plan.cpp", "accel.cpp", "errors.cpp")]
# The flags runtime/cpp/CMakeLists.txt compiles the library with (Release, no fused multiply-add).
PROBE_FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "-ffp-contract=off"]
MASK_LENGTHS = (16, 64, 256, 1024)
RESPACINGS = tuple(str(n) for n in range(1, 1001)) + ("ddim10", "ddim25", "ddim50", "ddim100", "10,15,20", "1,2,3,4")
SCHEDULE_FIELDS = ("sqrt_recip_ac", "sqrt_recipm1_ac", "coef1", "coef2", "log_var_min", "log_var_max")


def build_probe(out: str, cxx: str = "c++", extra=()) -> str:
    """Compile loop_math_probe into ``out`` (a file path) and return it."""
    subprocess.run([cxx, *PROBE_FLAGS, *extra, "-I", SRC, *PROBE_SOURCES, "-o", out], check=True,
                   capture_output=True, text=True)
    return out


def run_probe(probe, *args, data: bytes = b"", runner=()) -> bytes:
    return subprocess.run([*runner, probe, *map(str, args)], input=data, capture_output=True, check=True).stdout


def _bit_range(lo_bits: int, hi_bits: int, stride: int) -> np.ndarray:
    return np.arange(lo_bits, hi_bits, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)


def exp_inputs() -> np.ndarray:
    """4.85 million float32 inputs: every 257th bit pattern of [-24, 0] (0.5 log_var of MAR's
    schedule lies in [-23, 0]), every 4099th of [-104, 89] (where exp is neither 0 nor inf in
    float32), and the edge values."""
    bits = lambda v: int(np.float32(v).view(np.uint32))       # noqa: E731
    edges = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38,
                      88.72283, 88.72284, 88.7228394, -103.972, -103.973, -87.3, -126.0, 1.0, -1.0, 0.5],
                     np.float32)
    return np.concatenate([_bit_range(bits(-0.0), bits(-24.0), 257), _bit_range(0, bits(89.0), 4099),
                           _bit_range(bits(-0.0), bits(-104.0), 4099), edges])


def python_exp32(x: np.ndarray) -> np.ndarray:
    return exp32(x)


def python_mask(seq_len: int) -> np.ndarray:
    return np.array([it.mask_len for K in range(1, MAX_K + 1) for it in mask_schedule(K, seq_len)], np.int32)


def mask_ratios() -> np.ndarray:
    """The doubles the mask schedule floors (schedule.py's expression), every K and iteration."""
    return np.array([math.cos(math.pi / 2.0 * (s + 1) / K) for K in range(1, MAX_K + 1) for s in range(K)])


def _respacing(r: str):
    return int(r) if r.isdigit() else r


def python_ddpm(respacings=RESPACINGS) -> np.ndarray:
    """The six per-step coefficient arrays of every schedule, in float64 (the loop uses them
    rounded to float32)."""
    parts = []
    for r in respacings:
        s = ddpm_schedule(_respacing(r))
        parts += [getattr(s, f) for f in SCHEDULE_FIELDS]
    return np.concatenate(parts)


def cpp_dumps(probe, runner=()) -> dict:
    """The same dumps from the C++ probe (``runner``: e.g. an emulator command)."""
    x = exp_inputs()
    out = {"inputs": x}
    for mode in ("exp32", "expf", "exp64"):
        out[mode] = np.frombuffer(run_probe(probe, mode, data=x.tobytes(), runner=runner), np.float32)
    for L in MASK_LENGTHS:
        out[f"mask{L}"] = np.frombuffer(run_probe(probe, "mask", L, runner=runner), np.int32)
    out["ddpm"] = np.frombuffer(run_probe(probe, "ddpm", *RESPACINGS, runner=runner), np.float32)
    return out


def python_dumps() -> dict:
    x = exp_inputs()
    with np.errstate(over="ignore"):
        out = {"inputs": x, "exp32": python_exp32(x), "np_exp_f32": np.exp(x),
               "np_exp_f64": np.exp(x.astype(np.float64)).astype(np.float32)}
    for L in MASK_LENGTHS:
        out[f"mask{L}"] = python_mask(L)
    out["mask_ratios"] = mask_ratios()
    out["ddpm_f64"] = python_ddpm()
    out["ddpm"] = out["ddpm_f64"].astype(np.float32)
    return out


def differing(a: np.ndarray, b: np.ndarray) -> int:
    """How many elements differ in their bits (a NaN equals a NaN of the same bits)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    rows = lambda v: v.view(np.uint8).reshape(len(v), -1)      # noqa: E731
    return int(np.count_nonzero(np.any(rows(a) != rows(b), axis=1)))
