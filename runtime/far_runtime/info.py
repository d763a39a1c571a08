"""``far-runtime info``: what a bundle holds, its hashes checked, and which backends can run it.

The report is data (a dict); the command prints it. Backends are probed without running a
graph: ONNX Runtime's providers (a GPU provider counts only when the installed build lists
it), TensorRT when it imports and engines were built for the bundle's precision.
"""
from __future__ import annotations

import importlib.util
import os

from .bundle import load_bundle
from .gpu.engine_manifest import ENGINE_MANIFEST, default_engine_dir


def _onnxruntime_backends() -> dict:
    if importlib.util.find_spec("onnxruntime") is None:
        why = "onnxruntime is not installed (install far-runtime[cpu] or far-runtime[gpu])"
        return {"onnxruntime-cpu": {"available": False, "reason": why}}
    import onnxruntime
    have = set(onnxruntime.get_available_providers())
    out = {"onnxruntime-cpu": {"available": "CPUExecutionProvider" in have, "reason": None}}
    for label, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                            ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        ok = provider in have
        out[label] = {"available": ok, "reason": None if ok else
                      f"onnxruntime {onnxruntime.__version__} has no {provider} (install far-runtime[gpu] on a CUDA machine)"}
    return out


def tensorrt_import_problem() -> str | None:
    """Why TensorRT (the full one or the lean runtime) cannot be used here, or None."""
    from .gpu.cuda_runtime import import_tensorrt
    from .errors import FarError
    try:
        import_tensorrt()
    except FarError as e:
        return str(e)
    return None


def missing_engines(bundle_root: str, precision: str) -> str | None:
    """Why the bundle has no ``precision`` engines to run, or None."""
    edir = default_engine_dir(bundle_root, precision)
    if not os.path.isfile(os.path.join(edir, ENGINE_MANIFEST)):
        return f"no {precision} engines in {edir} (build them with far-runtime engines)"
    return None


def _tensorrt_backend(bundle_root: str, precision: str) -> dict:
    why = tensorrt_import_problem() or missing_engines(bundle_root, precision)
    return {"available": why is None, "reason": why}


def bundle_info(root: str) -> dict:
    """Load the bundle (every file's sha256 checked) and describe it."""
    b = load_bundle(root)
    man = b.manifest
    precision = man.get("precision", "fp32")
    graphs = {}
    for name, g in b.graphs.items():
        size = sum(os.path.getsize(os.path.join(b.root, f)) for f in g["files"])
        graphs[name] = {"file": g["file"], "sha256": g["files"][g["file"]], "megabytes": size / 1e6,
                        "precision": g.get("precision", precision)}
    src = man.get("source") or {}
    return {"bundle": os.path.abspath(b.root), "format_version": man["format_version"],
            "model": b.model, "precision": precision, "max_batch": man["max_batch"],
            "head_steps": man.get("head_steps", []), "graphs": graphs,
            "source": (f"{os.path.basename(src['checkpoint'])} sha256 {src['sha256'][:16]}"
                       if src.get("checkpoint") and src.get("sha256") else None),
            "backends": {**_onnxruntime_backends(), "tensorrt": _tensorrt_backend(b.root, precision)}}
