"""The TensorRT readiness report of a bundle, ``trt_readiness.json``: every graph of the
bundle's variant (``far_runtime.variants.component_specs``: FAR/MAR's backbone, FAR-Causal's
prefill, step and recompute graphs, the heads and the VAE decoder), each checked by
``readiness.check_graph``, in the order of the variant's specs.

    reports = bundle_readiness(folder, manifest)       # {graph: ReadinessReport.to_dict()}
    line = ensure_readiness(folder, manifest)         # writes what is missing; one summary line
"""
from __future__ import annotations

import json
import os

from far_runtime.files import write_json
from far_runtime.variants import component_specs

from .readiness import check_graph

READINESS_FILE = "trt_readiness.json"


def graph_readiness(path: str) -> dict:
    """The readiness report of one ONNX file, as data."""
    return check_graph(path).to_dict()


def variant_graphs(manifest: dict) -> list[str]:
    """The bundle's graphs in the order of its variant's specs."""
    specs = component_specs(manifest["model"], manifest["max_batch"], manifest["head_steps"])
    return [g for g in specs if g in manifest["graphs"]]


def bundle_readiness(folder: str, manifest: dict, graphs=None) -> dict:
    """``{graph: report}`` for every graph of the bundle (or only ``graphs``)."""
    wanted = variant_graphs(manifest) if graphs is None else list(graphs)
    return {g: graph_readiness(os.path.join(folder, manifest["graphs"][g]["file"])) for g in wanted}


def read_readiness(folder: str) -> dict:
    try:
        with open(os.path.join(folder, READINESS_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ensure_readiness(folder: str, manifest: dict) -> str:
    """Check the graphs ``trt_readiness.json`` lacks, write it, and say in one line whether
    every graph is ready."""
    have = read_readiness(folder)
    missing = [g for g in variant_graphs(manifest) if g not in have]
    if missing:
        have.update(bundle_readiness(folder, manifest, missing))
        write_json(os.path.join(folder, READINESS_FILE), {g: have[g] for g in variant_graphs(manifest)})
    return readiness_line({g: have[g] for g in variant_graphs(manifest)})


def readiness_line(reports: dict) -> str:
    """``TensorRT 10 readiness: all 8 graphs ready ...`` or which graphs are not, and why."""
    checked = {g: r for g, r in reports.items() if r.get("ok") is not None}
    if not checked:
        return f"TensorRT readiness: not checked ({READINESS_FILE})."
    major = next(iter(checked.values()))["trt_major"]
    bad = {g: r for g, r in checked.items() if not r["ok"]}
    warnings = sum(len(r["warnings"]) for r in checked.values())
    if not bad:
        return (f"TensorRT {major} readiness: all {len(checked)} graphs ready ({warnings} warning(s); "
                f"{READINESS_FILE}).")
    return (f"TensorRT {major} readiness: {len(bad)} of {len(checked)} graphs NOT ready: "
            + "; ".join(f"{g}: {len(r['errors'])} error(s), {', '.join(sorted(r['errors_by_op']))}"
                        for g, r in bad.items()) + f" (details in {READINESS_FILE}).")
