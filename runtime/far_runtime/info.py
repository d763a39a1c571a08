"""``far-runtime info``: this machine's CPU precisions, and what a bundle holds and which
backends can run it.

The report is data (a dict); the command prints it. Backends are probed without running a
graph: ONNX Runtime's providers (a GPU provider counts only when the installed build lists
it), OpenVINO when it imports (with its view of the CPU), TensorRT when it imports and
engines were built for the bundle's precision. The CPU's precisions come from its flags
(``cpu.py``): fp32 always, bf16 with bf16 units, int8 with VNNI or AMX (else plain AVX2).
"""
from __future__ import annotations

import importlib.util
import os

from .backends.base import usable_cores
from .bundle import CONTROL_CHARS, SHA256_HEX, load_bundle
from .cpu import cpu_name, machine_precisions, read_cpu_flags
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


def _openvino_backend() -> dict:
    if importlib.util.find_spec("openvino") is None:
        return {"available": False, "reason": "OpenVINO is not installed (install far-runtime[openvino])"}
    from .backends.openvino import cpu_capabilities, import_openvino
    from .errors import FarError
    try:
        ov = import_openvino()
        caps = cpu_capabilities(ov.Core())
    except (FarError, RuntimeError) as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "reason": None, "version": ov.__version__, "cpu_capabilities": caps}


def machine_info() -> dict:
    """This machine's CPU, its precisions and the CPU backends installed here."""
    flags = read_cpu_flags()
    ort = _onnxruntime_backends()["onnxruntime-cpu"]
    ov = _openvino_backend()
    return {"cpu": cpu_name(), "usable_cores": usable_cores(),
            "flags_read": flags is not None,
            "precisions": machine_precisions(flags, {"onnxruntime": ort["available"],
                                                     "openvino": ov["available"]}),
            "cpu_backends": {"onnxruntime": ort, "openvino": ov}}


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


def _check_graph_shapes(bundle) -> None:
    """Every graph's declared shapes against the manifest, where ONNX Runtime is installed."""
    if importlib.util.find_spec("onnxruntime") is not None:
        from .backends import OrtBackend
        OrtBackend(bundle, threads=1).check_graphs()


def _source(src) -> str | None:
    """The checkpoint the bundle was exported from, shown only when it is plain text."""
    if not isinstance(src, dict):
        return None
    name, digest = src.get("checkpoint"), src.get("sha256")
    if not (isinstance(name, str) and isinstance(digest, str) and SHA256_HEX.match(digest)):
        return None
    name = os.path.basename(name)
    return None if CONTROL_CHARS.search(name) else f"{name} sha256 {digest[:16]}"


def bundle_info(root: str) -> dict:
    """Load the bundle (every file's sha256 and every graph's declared shapes checked) and
    describe it, its digest included."""
    b = load_bundle(root)
    _check_graph_shapes(b)
    man = b.manifest
    precision = man.get("precision", "fp32")
    graphs = {}
    for name, g in b.graphs.items():
        size = sum(os.path.getsize(os.path.join(b.root, f)) for f in g["files"])
        graphs[name] = {"file": g["file"], "sha256": g["files"][g["file"]], "megabytes": size / 1e6,
                        "precision": g.get("precision", precision), "compute": g.get("compute", "fp32")}
    return {"bundle": os.path.abspath(b.root), "digest": b.digest, "format_version": man["format_version"],
            "model": b.model, "precision": precision, "max_batch": man["max_batch"],
            "chosen_on": (man.get("precision_choice") or {}).get("backend"),
            "head_steps": man.get("head_steps", []), "graphs": graphs,
            "source": _source(man.get("source")),
            "backends": {**_onnxruntime_backends(), "openvino": _openvino_backend(),
                         "tensorrt": _tensorrt_backend(b.root, precision)},
            "machine": machine_info()}
