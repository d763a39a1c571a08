"""The CUDA side of the TensorRT backend: importing TensorRT and the CUDA runtime bindings
lazily, facts about this machine, and the few CUDA runtime calls the backend makes.

TensorRT (``tensorrt`` or the lean runtime ``tensorrt_lean``) and ``cuda-python`` are
imported only when asked for; without them the import helpers fail with one sentence.
Never imports torch. Written against cuda-bindings 12.9 and 13.x (``cuda.bindings.runtime``;
the old ``cuda.cudart`` path is a fallback for cuda-python < 12.6).
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from ..errors import FarError

log = logging.getLogger(__name__)

# --- optional dependencies -------------------------------------------------------------
# TensorRT comes as the full library (``tensorrt``: builder and runtime) or as the lean
# runtime (``tensorrt_lean``: no builder, runs version-compatible engines only; what an edge
# board needs). Both are imported lazily; "not installed" and "installed but its libraries
# do not load" are told apart by whether the package is there at all, since a missing
# libnvinfer surfaces as ImportError, not OSError.

TENSORRT_MODULES = ("tensorrt", "tensorrt_lean")


def import_optional(module: str, missing: str, broken: str):
    """Import ``module``; a FarError with ``missing`` when it is not installed, with
    ``broken`` (``{error}`` filled in) when it is installed but does not import."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise FarError(missing)
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as e:     # the wheel is there; libnvinfer/CUDA are not
        raise FarError(broken.format(error=str(e).splitlines()[0] if str(e) else type(e).__name__)) from None


def import_tensorrt(builder: bool = False):
    """The TensorRT module: the full ``tensorrt``, else (for running only) ``tensorrt_lean``."""
    modules = TENSORRT_MODULES[:1] if builder else TENSORRT_MODULES
    for name in modules:
        if importlib.util.find_spec(name) is not None:
            return import_optional(name, "", f"TensorRT ({name}) is installed but its libraries do not "
                                   "load ({error}); check the CUDA driver and LD_LIBRARY_PATH, or use the "
                                   "ONNX Runtime backend.")
    if builder:
        raise FarError("TensorRT is not installed, so engines cannot be built here; install "
                       "far-runtime[tensorrt] on an x86-64 machine with an NVIDIA GPU, or on a Jetson "
                       "use JetPack's TensorRT (python3-libnvinfer); the lean runtime "
                       "(far-runtime[tensorrt-lean]) only runs engines.")
    raise FarError("TensorRT is not installed, so engines cannot be built or run here; install "
                   "far-runtime[tensorrt] (or far-runtime[tensorrt-lean] to run --version-compatible "
                   "engines) on a machine with an NVIDIA GPU, or use the ONNX Runtime backend.")


def import_cudart():
    """cuda-python's runtime module, after checking that a CUDA GPU is usable."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise FarError("The CUDA runtime bindings are not installed; install "
                           "far-runtime[tensorrt] (it brings cuda-python).") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        why = getattr(err, "name", str(err)) if int(err) != 0 else "no device found"
        raise FarError(f"No CUDA GPU is usable here ({why}); TensorRT engines need an NVIDIA GPU "
                       "and its driver (cuda-python 13 needs an R580+ driver: use the extra of your "
                       "CUDA major, far-runtime[tensorrt] for CUDA 12).")
    return cudart


# --- facts about this machine ------------------------------------------------------------

def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_major_of(distributions) -> str | None:
    """The CUDA major a TensorRT build is for, from its distribution names
    (``tensorrt-cu12``, ``tensorrt_cu13_libs``, ``tensorrt_lean_cu12_bindings`` ...)."""
    majors = set()
    for name in distributions:
        m = re.search(r"(?:^|[-_])cu(\d+)(?:[-_]|$)", name.lower())
        if m:
            majors.add(m.group(1))
    return majors.pop() if len(majors) == 1 else None


def deb_cuda_major(version: str) -> str | None:
    """The CUDA major in an NVIDIA TensorRT Debian package version, as JetPack and NVIDIA's apt
    repositories name them: ``"10.3.0.30-1+cuda12.5"`` -> ``"12"``."""
    m = re.search(r"\+cuda(\d+)(?:\.|$)", version or "")
    return m.group(1) if m else None


def deb_package_of(path: str | None) -> tuple[str, str] | None:
    """(package, version) of the Debian package that installed ``path`` (``dpkg-query``), or
    None: no dpkg on this machine, or a file no package owns."""
    if not path or shutil.which("dpkg-query") is None:
        return None
    try:
        r = subprocess.run(["dpkg-query", "-S", os.path.realpath(path)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or ": " not in r.stdout:
            return None
        package = r.stdout.splitlines()[0].split(": ")[0].split(",")[0].strip()      # "pkg" or "pkg:arm64"
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return (package, v.stdout.strip()) if v.returncode == 0 and v.stdout.strip() else None


def tensorrt_origin(trt) -> dict:
    """Where TensorRT comes from and the CUDA major it was built for (``"12"``, ``"13"`` or
    ``"unknown"``): a pip wheel names it (``tensorrt-cu12``, ``tensorrt_lean_cu13_libs``...);
    a system TensorRT from NVIDIA's Debian packages (JetPack's ``python3-libnvinfer``: no wheel,
    no suffix) has it in its package version. Never cuda-python's runtime version: that is
    whatever cuda-python release is installed."""
    from importlib.metadata import packages_distributions
    name = trt.__name__.split(".")[0]
    dists = packages_distributions()
    found = sorted({d for mod in (name, f"{name}_bindings", f"{name}_libs") for d in dists.get(mod, [])})
    major = cuda_major_of(found)
    if major:
        return {"source": "pip " + ", ".join(found), "cuda": major}
    deb = deb_package_of(getattr(trt, "__file__", None))
    if deb:
        return {"source": f"deb {deb[0]} {deb[1]}", "cuda": deb_cuda_major(deb[1]) or "unknown"}
    return {"source": ("pip " + ", ".join(found)) if found else "unknown", "cuda": "unknown"}


def tensorrt_cuda(trt) -> str:
    """The CUDA major TensorRT itself was built for ("12", "13"), or "unknown" (e.g. a
    TensorRT from NVIDIA's tar archive or a container, with no wheel and no package)."""
    return tensorrt_origin(trt)["cuda"]


def device_facts(trt, cudart, device: int = 0) -> dict:
    """TensorRT (version, flavour, its CUDA major), driver, GPU name and compute capability.

    ``cuda_python`` (the bindings' own runtime version) is recorded, never part of a key.
    """
    _, rt = cudart.cudaRuntimeGetVersion()
    _, drv = cudart.cudaDriverGetVersion()
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise FarError(f"Could not read the properties of CUDA device {device} ({err}).")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    origin = tensorrt_origin(trt)
    return {"tensorrt": trt.__version__, "tensorrt_module": trt.__name__.split(".")[0],
            "tensorrt_cuda": origin["cuda"], "tensorrt_source": origin["source"], "cuda_python": _cuda_version(rt),
            "driver": _cuda_version(drv), "gpu": name.strip(),
            "compute_capability": f"{prop.major}.{prop.minor}"}


# --- CUDA runtime helpers (cuda-python) ----------------------------------------------------

class Cuda:
    """The few CUDA runtime calls the backend needs, each checked."""

    def __init__(self, cudart):
        self.rt = cudart

    def check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise FarError(f"CUDA call {what} failed ({err}).")
        return rest[0] if len(rest) == 1 else rest

    def set_device(self, device: int) -> None:
        """Make ``device`` current on the calling thread (the current device is per thread)."""
        self.check(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def stream(self):
        """A non-blocking stream: no implicit sync with the legacy default stream."""
        return self.check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking),
                          "cudaStreamCreateWithFlags")

    def destroy_stream(self, stream) -> None:
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def malloc_host(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def free_host(self, ptr: int) -> None:
        self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def h2d(self, dst: int, src: int, nbytes: int, stream) -> None:
        if nbytes:
            self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes,
                                               self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def d2h(self, dst: int, src: int, nbytes: int, stream) -> None:
        if nbytes:
            self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes,
                                               self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    def sync(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def pinned_array(cuda: Cuda, shape: tuple, dtype) -> tuple[int, np.ndarray]:
    """Page-locked host memory viewed as a numpy array (async copies need it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ptr = cuda.malloc_host(nbytes)
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
    return ptr, np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


def capture_graph(body, end, instantiate, destroy_graph):
    """Run ``body`` inside a capture that has begun; returns ``(graph, instance)``.

    ``end()`` ends the capture and returns the graph (or raises), ``instantiate(graph)``
    returns its executable instance, ``destroy_graph(graph)`` frees it. Whatever fails, the
    capture is ended, nothing is leaked, and the first error is the one raised (a failing
    clean-up is logged, never put in its place).
    """
    try:
        body()
    except BaseException:
        try:
            graph = end()
        except Exception as cleanup:                 # the capture was already invalidated
            log.debug("ending a failed capture: %s", cleanup)
            graph = None
        if graph is not None:
            _quietly(destroy_graph, graph)
        raise
    graph = end()
    try:
        instance = instantiate(graph)
    except BaseException:
        _quietly(destroy_graph, graph)
        raise
    return graph, instance


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:
        log.warning("CUDA clean-up after a failed capture failed too: %s", e)


class CudaRuntimeCapturer:
    """CUDA-graph capture of a raw stream (``cudaStreamBeginCapture``), for TensorRT."""

    def __init__(self, cuda: Cuda, stream):
        self.cuda, self.stream = cuda, stream

    def capture(self, body):
        cuda, rt = self.cuda, self.cuda.rt
        cuda.check(rt.cudaStreamBeginCapture(
            self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        graph, instance = capture_graph(
            body, lambda: cuda.check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture"),
            lambda g: cuda.check(rt.cudaGraphInstantiate(g, 0), "cudaGraphInstantiate"),
            lambda g: cuda.check(rt.cudaGraphDestroy(g), "cudaGraphDestroy"))
        return _CudaGraph(cuda, self.stream, graph, instance)


@dataclass
class _CudaGraph:
    cuda: Cuda
    stream: object
    graph: object
    instance: object

    def replay(self) -> None:
        self.cuda.check(self.cuda.rt.cudaGraphLaunch(self.instance, self.stream), "cudaGraphLaunch")

    def release(self) -> None:
        self.cuda.check(self.cuda.rt.cudaGraphExecDestroy(self.instance), "cudaGraphExecDestroy")
        self.cuda.check(self.cuda.rt.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
