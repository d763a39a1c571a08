"""The CUDA side of the TensorRT backend: importing TensorRT and the CUDA runtime bindings
lazily, facts about this machine, and the few CUDA runtime calls the backend makes.

TensorRT (``tensorrt``) and ``cuda-python`` are imported only when asked for; without them
the import helpers fail with one sentence. Never imports torch.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .errors import FarError

# --- optional dependencies -------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise FarError("TensorRT is not installed, so engines cannot be built or run here; "
                       "install far-runtime[tensorrt] on a machine with an NVIDIA GPU, or use "
                       "the ONNX Runtime backend.") from None
    except OSError as e:        # the wheel is there but libnvinfer or CUDA libraries are not
        raise FarError(f"TensorRT is installed but its libraries do not load ({e}); check the "
                       "CUDA driver and LD_LIBRARY_PATH, or use the ONNX Runtime backend.") from None
    return tensorrt


def import_cudart():
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
                       "and its driver.")
    return cudart


# --- facts about this machine ------------------------------------------------------------

def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_facts(trt, cudart, device: int = 0) -> dict:
    """TensorRT, CUDA runtime and driver versions, GPU name and compute capability."""
    _, rt = cudart.cudaRuntimeGetVersion()
    _, drv = cudart.cudaDriverGetVersion()
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise FarError(f"Could not read the properties of CUDA device {device} ({err}).")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt": trt.__version__, "cuda_runtime": _cuda_version(rt),
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

    def stream(self):
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

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


class CudaRuntimeCapturer:
    """CUDA-graph capture of a raw stream (``cudaStreamBeginCapture``), for TensorRT."""

    def __init__(self, cuda: Cuda, stream):
        self.cuda, self.stream = cuda, stream

    def capture(self, body):
        rt = self.cuda.rt
        self.cuda.check(rt.cudaStreamBeginCapture(
            self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        try:
            body()
        finally:
            graph = self.cuda.check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        instance = self.cuda.check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return _CudaGraph(self.cuda, self.stream, graph, instance)


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
