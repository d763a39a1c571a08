"""The CPU's precisions: what its flags show, and which backend can compute in which.

A run's *precision* is the compute precision a backend is asked for: ``fp32`` (every backend)
or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``, only on a CPU with bf16 units). int8 is
not a run precision but a property of the bundle (its Q/DQ graphs, ``far-export build
--precision int8``): ONNX Runtime and OpenVINO both run those as int8, fastest on VNNI or AMX.

The flags are read from ``/proc/cpuinfo`` and decide; OpenVINO's own view of the CPU
(``OPTIMIZATION_CAPABILITIES``) must agree. Machines here change CPU from day to day, so the
decision is made at run time, never from a note.
"""
from __future__ import annotations

import platform

from .errors import FarError

CPUINFO = "/proc/cpuinfo"
RUN_PRECISIONS = ("fp32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")                   # bf16 dot-product units
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")       # int8 dot-product units (AMX, VNNI)
VECTOR_FLAGS = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")  # widest fp32 SIMD first
BACKEND_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}
BUNDLE_PRECISIONS = ("int8", "fp16")


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The feature flags of a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: str = CPUINFO) -> frozenset[str] | None:
    """This machine's CPU flags, or None where there is no ``/proc/cpuinfo`` (not Linux)."""
    try:
        with open(path) as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return None


def cpu_name(path: str = CPUINFO) -> str:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def units(flags, wanted) -> list[str]:
    return [f for f in wanted if f in (flags or ())]


def bf16_problem(flags: frozenset[str] | None, ov_capabilities=None) -> str | None:
    """Why bf16 cannot run on this CPU (one sentence), or None when it has bf16 units.

    ``flags``: the CPU's flags (None: unknown, then OpenVINO's capabilities decide alone);
    ``ov_capabilities``: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the CPU, or None."""
    if flags is None and ov_capabilities is None:
        return ("Neither /proc/cpuinfo nor OpenVINO tells whether this CPU has bf16 units; "
                "run with --precision fp32.")
    if flags is not None and not units(flags, BF16_FLAGS):
        return (f"This CPU has no bf16 units (its flags show neither {' nor '.join(BF16_FLAGS)}), "
                "so bf16 would be emulated, slower than fp32; run with --precision fp32.")
    if ov_capabilities is not None and "BF16" not in ov_capabilities:
        return (f"OpenVINO does not list BF16 among this CPU's capabilities "
                f"({', '.join(ov_capabilities)}); run with --precision fp32.")
    return None


def check_precision(backend: str, precision, flags: frozenset[str] | None = None,
                    ov_capabilities=None) -> str:
    """The run precision ``backend`` computes in (None: fp32), or one sentence."""
    if precision is None:
        return "fp32"
    if precision in BUNDLE_PRECISIONS:
        raise FarError(f"{precision} is a property of the bundle, not of a run: build an {precision} "
                       f"bundle (far-export build --precision {precision}) and run it with --precision "
                       "fp32; --precision takes fp32 or bf16.")
    if precision not in RUN_PRECISIONS:
        raise FarError(f"--precision must be fp32 or bf16, got {precision!r}.")
    allowed = BACKEND_PRECISIONS.get(backend, ("fp32",))
    if precision not in allowed:
        raise FarError(f"The {backend} backend computes in {' or '.join(allowed)} only (ONNX Runtime's CPU "
                       f"provider has no bf16 kernels); run --precision {precision} with --backend openvino.")
    if precision == "bf16":
        why = bf16_problem(flags, ov_capabilities)
        if why:
            raise FarError(why)
    return precision


def machine_precisions(flags: frozenset[str] | None, installed: dict[str, bool]) -> dict:
    """Which precisions this CPU computes in natively, and which installed backends use them.

    ``installed``: backend name -> whether its library imports here."""
    have = [b for b, ok in installed.items() if ok]
    vector = units(flags, VECTOR_FLAGS)[:1]
    bf16 = units(flags, BF16_FLAGS)
    int8 = units(flags, INT8_FLAGS)
    return {
        "fp32": {"native": True, "units": vector, "backends": have},
        "bf16": {"native": bool(bf16), "units": bf16,
                 "backends": [b for b in have if "bf16" in BACKEND_PRECISIONS[b]] if bf16 else [],
                 "how": "--backend openvino --precision bf16"},
        "int8": {"native": bool(int8), "units": int8 or units(flags, ("avx2",)),
                 "backends": have, "how": "an int8 bundle (far-export build --precision int8)"},
    }


def describe_cpu(machine: dict) -> str:
    """``machine_precisions``'s CPU in words (``far-runtime info`` and ``far-export doctor``)."""
    return (f"{machine['cpu']}, {machine['usable_cores']} usable core(s)"
            + ("" if machine["flags_read"] else " (no /proc/cpuinfo: flags unknown)"))


def describe_precision(name: str, p: dict) -> str:
    """One precision of ``machine_precisions`` in words: native or not, the CPU units, and the
    installed backends that compute in it (with how to ask for it)."""
    native = "native" if p["native"] else ("emulated" if name == "bf16" else "no VNNI/AMX")
    users = ", ".join(p["backends"]) or "none installed here"
    how = f"; {p['how']}" if p.get("how") and p["backends"] else ""
    return f"{name}: {native} ({', '.join(p['units']) or 'no flags'}); backends: {users}{how}"
