"""Execution backends: the protocol the sampling loop drives (``base.py``) and the CPU ones.

    onnxruntime.py   ONNX Runtime (far-runtime[cpu], or [gpu]): fp32, and int8/fp16 bundles as stored
    openvino.py      OpenVINO (far-runtime[openvino]): fp32 or bf16 compute, int8 bundles as int8

The GPU wing (``far_runtime/gpu/``) adds TensorRT behind the same protocol. ``make_backend``
is the one place a backend is chosen by name; every library is imported only when chosen, and
a missing one, an unknown name or a precision this backend or CPU cannot compute in is one
sentence, never a silent fallback.
"""
from __future__ import annotations

from ..errors import FarError
from .base import Backend, GraphTimer, check_threads, usable_cores
from .onnxruntime import EXTERNAL_FOLDER_KEY, GPU_PROVIDERS, SPIN_KEYS, OrtBackend, import_onnxruntime
from .openvino import OpenVinoBackend, import_openvino

BACKENDS = ("onnxruntime", "openvino")
CPU_ONLY = ("CPUExecutionProvider",)

__all__ = ["BACKENDS", "Backend", "EXTERNAL_FOLDER_KEY", "GPU_PROVIDERS", "GraphTimer", "OpenVinoBackend",
           "OrtBackend", "SPIN_KEYS", "check_backend", "check_threads", "import_onnxruntime",
           "import_openvino", "make_backend", "usable_cores"]


def check_backend(name) -> str:
    if name not in BACKENDS:
        raise FarError(f"--backend must be {' or '.join(BACKENDS)}, got {name!r}.")
    return name


def check_choice(name, precision, manifest: dict | None = None) -> str | None:
    """Backend and precision checked on this machine without compiling a graph (the library
    imported, the precision allowed by the backend and this CPU, and with ``manifest`` the
    bundle's recorded per-graph precisions); returns the precision (None: the bundle's record)."""
    from ..cpu import check_precision, read_cpu_flags
    from ..graph_precision import graph_precisions
    check_backend(name)
    if name == "onnxruntime":
        import_onnxruntime()
        flags = caps = None
    else:
        from .openvino import cpu_capabilities
        flags, caps = read_cpu_flags(), cpu_capabilities(import_openvino().Core())
    if manifest is not None:
        graph_precisions(manifest, name, precision, flags, caps)
        return precision
    return check_precision(name, precision, flags, caps)


def make_backend(bundle, name: str | None = None, precision: str | None = None,
                 threads: int | None = None, providers=CPU_ONLY) -> Backend:
    """The backend ``name`` for ``bundle`` (None: the backend the bundle's precisions were
    chosen on, else ONNX Runtime); ``precision`` None: the bundle's per-graph record (fp32
    where there is none), "fp32" or "bf16": every graph in it (``graph_precision.py``)."""
    from ..graph_precision import bundle_backend, graph_precisions
    name = check_backend(bundle_backend(bundle.manifest, name))
    if name == "onnxruntime":
        graph_precisions(bundle.manifest, name, precision)       # fp32 only: refuses a bf16 record
        return OrtBackend(bundle, providers, threads)
    if tuple(providers) != CPU_ONLY:
        raise FarError(f"ONNX Runtime providers ({', '.join(providers)}) do not apply to the OpenVINO "
                       "backend, which runs on the CPU; leave them out or use --backend onnxruntime.")
    return OpenVinoBackend(bundle, precision, threads)
