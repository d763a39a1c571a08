"""The bundles the runtime peers run, and what each of their graphs computes in.

Every runtime peer runs the fp32 export or a bundle the precision rewriter builds from it
(``models.precision_bundle``: the fp32 graphs copied, rewritten, reused when built from the
same graphs with the same options), one bundle per kind (``peers.BUNDLES``) however many
peers share it. The int8 graph of each graph is quantised once for every kind
(``precision/int8_cache``).
"""
from __future__ import annotations

import os

from far_runtime.errors import FarError

from .models import bundle_manifest, precision_bundle


def precision_options(kind: str, int8_min_speedup: float | None, calibration, threads: int | None = None):
    """How the bench builds a bundle of ``kind`` (``peers.BUNDLES``): ``int8`` per graph only
    where int8 measured at least ``int8_min_speedup`` x faster than fp32 here; ``int8-all``
    wherever its error budget allows; ``auto-openvino`` each graph's fastest passing precision
    measured on OpenVINO with the bench's threads."""
    from ..precision.auto import AutoSettings
    from ..precision.convert import PrecisionOptions
    from ..precision.int8 import Int8Settings
    if kind == "int8":
        return PrecisionOptions("int8", calibration=calibration, int8=Int8Settings(min_speedup=int8_min_speedup))
    if kind == "int8-all":
        return PrecisionOptions("int8", calibration=calibration)
    if kind.startswith("auto-"):
        return PrecisionOptions("auto", calibration=calibration,
                                auto=AutoSettings(backend=kind[len("auto-"):], threads=threads))
    return PrecisionOptions(kind, calibration=calibration)


def build_bundles(peers: list, fp32_bundle: str, out: str, int8_min_speedup, calibration, threads,
                  say) -> tuple[dict, dict]:
    """``({peer: bundle path}, {peer: why it has none})`` for the runtime peers."""
    paths, failed, built = {}, {}, {"fp32": fp32_bundle}
    for p in peers:
        if p.engine != "runtime":
            continue
        if p.bundle not in built:
            try:
                built[p.bundle] = precision_bundle(
                    fp32_bundle, os.path.join(out, "bundles", f"far-{p.bundle}"),
                    precision_options(p.bundle, int8_min_speedup, calibration, threads), say)
            except FarError as e:
                built[p.bundle] = FarError(str(e))
        if isinstance(built[p.bundle], FarError):
            failed[p.name] = f"its {p.bundle} bundle could not be built: {built[p.bundle]}"
        else:
            paths[p.name] = built[p.bundle]
    return paths, failed


def bundle_precisions(path: str, run_precision: str | None = None) -> dict:
    """Each graph of a bundle: what it stores (fp32, fp16, int8), what it computes in for a
    run of ``run_precision`` (None: as the bundle records), the dtype its matrix products run
    in (``dtype``: int8 for a Q/DQ graph, else the compute precision), and the measurements
    that chose it (int8 one-thread timing; ``--precision auto``'s candidates)."""
    man = bundle_manifest(path)
    graphs = {}
    for g, e in man["graphs"].items():
        stored = e.get("precision", "fp32")
        compute = run_precision or e.get("compute", "fp32")
        d = {"precision": stored, "compute": compute,
             "dtype": stored if stored in ("int8", "fp16") else compute}
        i8 = e.get("int8") or (e.get("choice") or {}).get("int8") or {}
        if i8.get("timing"):
            d["int8_speedup_one_thread"] = i8["timing"]["speedup"]
        if i8.get("reason") and stored != "int8":
            d["why_not_int8"] = i8["reason"]
        if "error" in i8:
            d["int8_error"] = i8["error"]
        choice = e.get("choice")
        if choice:
            d["chosen"] = choice["chosen"]
            d["candidates"] = {c: {k: r[k] for k in ("error", "budget", "passed", "seconds", "speedup") if k in r}
                               for c, r in choice["candidates"].items()}
        graphs[g] = d
    out = {"precision": man.get("precision", "fp32"), "run_precision": run_precision, "graphs": graphs}
    if man.get("precision_choice"):
        out["chosen_on"] = {k: man["precision_choice"][k] for k in ("backend", "threads")}
    return out
