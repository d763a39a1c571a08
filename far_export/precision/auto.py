"""``far-export build --precision auto``: each graph keeps the fastest precision that passes its
accuracy gate, measured on this machine with the backend it will run on.

Candidates per graph, as (what the file stores, what the backend computes in):

    fp32        the exported graph in fp32: the reference, always a candidate
    bf16        the same file, computed in bf16 (OpenVINO on a CPU with bf16 units only)
    int8        the Q/DQ graph (``int8_cache``: quantised within the int8 error budget on
                held-out inputs), its float remainder in fp32
    int8+bf16   the Q/DQ graph, its float remainder in bf16 (OpenVINO, bf16 units)

Each candidate runs the graph's held-out real inputs (recorded from the sampling loop,
``calibration.py``) on the backend, compiled as the runtime compiles it (``measure.py``): its
outputs against ONNX Runtime's fp32 outputs of the exported graph give its error (relative
L2 over every output; the gate: within its precision's budget, no NaN/Inf), and the passing
ones are timed, interleaved round by round, best of at least ``repeats`` rounds and of as
many as it takes each to run ``min_seconds`` in all. A graph keeps the fastest
passing candidate; a reduced one only where it beats fp32 by ``min_speedup``. So bf16 is
chosen only where the CPU's flags allow it *and* a timing confirms it.

The bundle records the choice: per graph ``precision`` (stored: fp32 or int8), ``compute``
(fp32 or bf16) and ``choice`` (every candidate's error, budget, seconds and speed-up, or why
it was not a candidate); ``precision_choice`` names the backend, threads and CPU, and the
runtime honours it (``far_runtime.graph_precision``). The bundle's ``precision`` is its
loosest graph's (int8, else bf16, else fp32): what ``verify`` judges it by.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass

from far_runtime.backends import check_backend
from far_runtime.backends.base import usable_cores
from far_runtime.cpu import BF16_FLAGS, INT8_FLAGS, VECTOR_FLAGS, bf16_problem, cpu_name, read_cpu_flags, units
from far_runtime.errors import FarError

from .int8 import Int8Settings
from .int8_cache import int8_candidate
from .measure import best_times, ort_runner, output_error, runner

log = logging.getLogger(__name__)

# name: (stored precision, compute precision)
CANDIDATES = {"fp32": ("fp32", "fp32"), "bf16": ("fp32", "bf16"),
              "int8": ("int8", "fp32"), "int8+bf16": ("int8", "bf16")}
FP32_BUDGET = 1e-3          # another backend's fp32 must agree with ONNX Runtime's this well


@dataclass(frozen=True)
class AutoSettings:
    backend: str = "onnxruntime"      # where the graphs will run, and are measured
    threads: int | None = None        # None: every core this process may use
    bf16_budget: float = 0.02         # relative L2 error of a bf16 graph's outputs (held-out inputs)
    min_speedup: float = 1.0          # a reduced precision must be at least this much faster than fp32
    repeats: int = 3                  # timed rounds at least (best of)
    min_seconds: float = 2.0          # and more rounds until each candidate ran this long in all
    timing_feeds: int = 4             # held-out inputs per timed round

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_threads(self) -> int:
        return self.threads or usable_cores()


def machine(backend: str) -> dict:
    """The CPU the choice is measured on, and what the backend can do there."""
    flags = read_cpu_flags()
    caps = None
    out = {"cpu": cpu_name(), "machine": platform.machine(), "flags_read": flags is not None,
           "vector_units": units(flags, VECTOR_FLAGS), "bf16_units": units(flags, BF16_FLAGS),
           "int8_units": units(flags, INT8_FLAGS)}
    if backend == "openvino":
        from far_runtime.backends.openvino import cpu_capabilities, import_openvino
        ov = import_openvino()
        caps = cpu_capabilities(ov.Core())
        out.update(openvino=ov.__version__, openvino_capabilities=caps)
    import onnxruntime
    out["onnxruntime"] = onnxruntime.__version__
    out["bf16_problem"] = (bf16_problem(flags, caps) if backend == "openvino"
                           else "ONNX Runtime's CPU provider has no bf16 kernels")
    return out


def candidates(backend: str, facts: dict) -> tuple[list[str], dict[str, str]]:
    """The candidates this backend and CPU can compute, and why each other one is not."""
    check_backend(backend)
    names, why = [], {}
    for name, (_, compute) in CANDIDATES.items():
        if compute == "bf16" and facts["bf16_problem"]:
            why[name] = facts["bf16_problem"]
        else:
            names.append(name)
    return names, why


def budget(name: str, settings: AutoSettings, int8: Int8Settings) -> float:
    stored, compute = CANDIDATES[name]
    if stored == "int8":
        return int8.error_budget
    return settings.bf16_budget if compute == "bf16" else FP32_BUDGET


def choose_graph(name: str, fp32_path: str, int8_path: str | None, held_out: list[dict],
                 settings: AutoSettings, int8: Int8Settings, names: list[str], say) -> dict:
    """Measure every candidate of one graph; returns the record with the choice."""
    threads = settings.resolved_threads()
    ref_run = ort_runner(fp32_path, threads)
    ref = [ref_run(f) for f in held_out]
    del ref_run
    rows, runners = {}, {}
    for cand in names:
        stored, compute = CANDIDATES[cand]
        path = int8_path if stored == "int8" else fp32_path
        run = runner(settings.backend, path, compute, threads)
        err = output_error(ref, [run(f) for f in held_out])             # also the warm-up
        ok = err["nan_inf"] == 0 and err["error"] <= budget(cand, settings, int8)
        rows[cand] = {"stored": stored, "compute": compute, **err, "budget": budget(cand, settings, int8),
                      "passed": bool(ok)}
        if ok:
            runners[cand] = run
        say(f"  {name} {cand}: error {err['error']:.2e} (budget {rows[cand]['budget']:g})"
            f"{'' if ok else ', over budget'}")
    if "fp32" not in runners:
        r = rows["fp32"]
        raise FarError(f"{settings.backend}'s fp32 outputs of graph '{name}' are {r['error']:.2e} (relative L2) "
                       f"from ONNX Runtime's with {r['nan_inf']} NaN/Inf on held-out inputs (allowed "
                       f"{FP32_BUDGET:g}); refusing to choose precisions on a backend that disagrees in fp32.")
    timing = held_out[:max(1, settings.timing_feeds)]
    times = best_times(runners, timing, settings.repeats, settings.min_seconds)
    base = times["fp32"]
    for cand, t in times.items():
        rows[cand].update(seconds=t, speedup=base / t if t > 0 else 0.0)
    eligible = {c: t for c, t in times.items() if c == "fp32" or rows[c]["speedup"] >= settings.min_speedup}
    chosen = min(eligible, key=eligible.get)
    stored, compute = CANDIDATES[chosen]
    say(f"  {name}: {chosen} (" + ", ".join(f"{c} {1e3 * t:.1f} ms" for c, t in times.items()) + ")")
    return {"chosen": chosen, "precision": stored, "compute": compute, "candidates": rows,
            "timing": {"feeds": len(timing), "repeats": settings.repeats, "threads": threads,
                       "backend": settings.backend},
            "error_feeds": len(held_out)}


def auto_graph(name: str, path: str, new: str, feeds: dict, entry: str, settings: AutoSettings,
               int8: Int8Settings, names: list[str], not_candidates: dict, say) -> dict:
    """The int8 candidate of one graph (cached), then the choice; ``new`` is left holding the
    int8 graph only when int8 is chosen."""
    not_here = dict(not_candidates)
    int8_info = None
    if any(CANDIDATES[c][0] == "int8" for c in names):
        int8_info = int8_candidate(path, new, feeds, entry, int8, name, say)
        if int8_info["precision"] != "int8":
            why = int8_info.get("reason", "not quantised")
            not_here.update({c: why for c in names if CANDIDATES[c][0] == "int8"})
    usable = [c for c in names if c not in not_here]
    record = choose_graph(name, path, new if os.path.exists(new) else None, feeds["held_out"],
                          settings, int8, usable, say)
    record["not_candidates"] = not_here
    if int8_info is not None:
        record["int8"] = int8_info
    if record["precision"] != "int8" and os.path.exists(new):
        os.unlink(new)
    return record


def loosest(graphs: dict) -> str:
    """The bundle's precision: int8 if a graph stores int8, else bf16 if one computes in it."""
    if any(g.get("precision") == "int8" for g in graphs.values()):
        return "int8"
    return "bf16" if any(g.get("compute") == "bf16" for g in graphs.values()) else "fp32"
