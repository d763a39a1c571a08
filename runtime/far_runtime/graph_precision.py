"""Which precision each graph of a bundle computes in, on the backend at hand.

A bundle built with ``far-export build --precision auto`` records the precision its graphs
were chosen in, by measurement on one backend and CPU: ``manifest["precision_choice"]``
(the backend, the CPU and its flags, the threads, every candidate's time and error) and, per
graph, ``graphs[g]["compute"]`` ("fp32" or "bf16": the compute precision the backend is
asked for) beside ``graphs[g]["precision"]`` (what the file stores: fp32, or int8 Q/DQ). A
bundle without them (every fp32/fp16/int8 build, and every bundle made before) computes in
fp32 everywhere, as it always has.

A run's ``precision`` (``--precision``) decides over the record: None honours it, "fp32" or
"bf16" puts every graph in that precision. A record this backend or this CPU cannot honour
is one sentence, never a silent change of precision.
"""
from __future__ import annotations

from .cpu import BACKEND_PRECISIONS, RUN_PRECISIONS, bf16_problem, check_precision
from .errors import FarError

DEFAULT_BACKEND = "onnxruntime"


def recorded_backend(manifest: dict) -> str | None:
    """The backend a bundle's precisions were chosen on, or None (no choice recorded)."""
    choice = manifest.get("precision_choice")
    return choice.get("backend") if isinstance(choice, dict) else None


def bundle_backend(manifest: dict, backend: str | None) -> str:
    """``backend`` as given, else the one the bundle's precisions were chosen on, else ONNX Runtime."""
    return backend or recorded_backend(manifest) or DEFAULT_BACKEND


def recorded_compute(manifest: dict) -> dict[str, str]:
    """Each graph's recorded compute precision (fp32 where none is recorded)."""
    out = {}
    for g, e in manifest["graphs"].items():
        p = e.get("compute", "fp32")
        if p not in RUN_PRECISIONS:
            raise FarError(f"The bundle manifest records compute precision {p!r} for graph '{g}', which "
                           f"is not one of {', '.join(RUN_PRECISIONS)}; rebuild the bundle.")
        out[g] = p
    return out


def graph_precisions(manifest: dict, backend: str, precision: str | None = None,
                     flags: frozenset[str] | None = None, ov_capabilities=None) -> dict[str, str]:
    """``{graph: "fp32" | "bf16"}``: what ``backend`` computes each graph in for this run.

    ``precision`` given: every graph in it (checked for this backend and CPU); None: the
    bundle's record. ``flags`` and ``ov_capabilities`` describe this CPU (``cpu.py``)."""
    if precision is not None:
        p = check_precision(backend, precision, flags, ov_capabilities)
        return {g: p for g in manifest["graphs"]}
    rec = recorded_compute(manifest)
    low = sorted(g for g, p in rec.items() if p == "bf16")
    if not low:
        return rec
    where = recorded_backend(manifest) or "another backend"
    what = (f"The bundle's graph{'s' if len(low) > 1 else ''} {', '.join(low)} "
            f"{'were' if len(low) > 1 else 'was'} chosen to compute in bf16 (measured on {where})")
    if "bf16" not in BACKEND_PRECISIONS.get(backend, ("fp32",)):
        raise FarError(f"{what}, which the {backend} backend cannot compute in; run it with --backend "
                       "openvino, or with --precision fp32 to run every graph in fp32.")
    why = bf16_problem(flags, ov_capabilities)
    if why:
        raise FarError(f"{what}, but {why if why.startswith('OpenVINO') else why[0].lower() + why[1:]}")
    return rec


def summary(precisions: dict[str, str]) -> str:
    """One word for a run's precisions: the one precision, or "mixed"."""
    values = set(precisions.values())
    return values.pop() if len(values) == 1 else "mixed" if values else "fp32"
