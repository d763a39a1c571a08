"""The reference modules on a CUDA GPU behind the runtime's backend interface, with CUDA graphs.

    from far_runtime.bundle import load_bundle
    from far_runtime.pipeline import Pipeline
    bundle = load_bundle("graphs/demo")
    pipe = Pipeline(bundle, TorchCudaBackend(bundle, dtype="fp16"))
    images = pipe.generate([3, 7], K=64, O=8, cfg=3.0)

It runs the same modules the graphs were exported from (``export.modules.graph_module``),
in FP32, FP16 or BF16 (weights cast, autocast for the mixed parts), and shares with the
TensorRT backend the shape plan, the per-shape buffers and the capture/replay policy of
``far_runtime.gpu.cuda_graphs.GraphCache``; only the capture itself is PyTorch's here
(``torch.cuda.CUDAGraph``). It needs no TensorRT and runs on any CUDA GPU, which makes it
the proof of the CUDA-graph path and the eager baseline for benchmarks
(``far_export/bench/torch_cuda.py`` measures it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from far_runtime.bundle import Bundle
from far_runtime.gpu.cuda_graphs import Binding, GraphCache
from far_runtime.gpu.device_slots import SlotBackend, default_capacity
from far_runtime.errors import FarError
from far_runtime.plan import Call

from .export.modules import graph_module

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def require_cuda() -> None:
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise FarError(f"PyTorch {torch.__version__} ({build}) sees no CUDA GPU, so the torch-cuda "
                       "backend cannot run here; use the ONNX Runtime backend.")


class TorchCapturer:
    """``torch.cuda.CUDAGraph`` capture on the backend's stream; all graphs share one memory
    pool (they are replayed one at a time on one stream, never concurrently)."""

    def __init__(self, stream):
        self.stream = stream
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, body):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            body()
        return _TorchGraph(graph)


@dataclass
class _TorchGraph:
    graph: object

    def replay(self) -> None:
        self.graph.replay()

    def release(self) -> None:
        self.graph.reset()


class _DeviceConstants(nn.Module):
    """Wraps a time/step embedder so host-made scalars (the fused head graph builds its t and
    d constants with ``torch.full`` on the default device) are used from the GPU. Each value
    is copied once, in an eager warm-up call, so the captured graph holds no host copy."""

    def __init__(self, inner: nn.Module, device):
        super().__init__()
        self.inner, self.device = inner, device
        self._cache = {}

    def forward(self, t):
        if t.device.type == "cpu":
            key = (t.dtype, t.numpy().tobytes())
            if key not in self._cache:
                if torch.cuda.is_current_stream_capturing():
                    raise RuntimeError("a new host constant appeared during CUDA-graph capture")
                self._cache[key] = t.to(self.device)
            t = self._cache[key]
        return self.inner(t)


@dataclass
class _Slot:
    module: nn.Module
    inputs: dict               # name -> device tensor (spec dtype)
    outputs: dict              # name -> device tensor (spec dtype)
    staged: dict               # name -> pinned host tensor for inputs and outputs
    arrays: dict               # name -> numpy view of staged
    bindings: tuple


class TorchCudaBackend(SlotBackend):
    """PyTorch modules per graph, static device buffers per shape key, optional CUDA graphs.

    Shares ``far_runtime.gpu.device_slots.SlotBackend`` with the TensorRT backend: slots bounded
    by the plan, the backend's GPU made current on the calling thread for every call, and
    results copied into arrays the calling thread owns. Every device buffer is allocated and
    written on the backend's own stream (``torch.empty``: nothing runs on the default stream).
    """

    name = "torch-cuda"

    def __init__(self, bundle: Bundle, dtype: str = "fp16", cuda_graphs: bool = True,
                 max_graphs: int | None = None, device: str = "cuda", checkpoint: str | None = None,
                 vae: str | None = None):
        if dtype not in DTYPES:
            raise FarError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda:
            require_cuda()
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        elif cuda_graphs:
            raise FarError("CUDA graphs need device='cuda'.")
        self.bundle = bundle
        self.dtype = DTYPES[dtype]
        self.specs = bundle.specs()
        from far_runtime.pipeline import Pipeline
        from .verify import reference_for_bundle
        ref = reference_for_bundle(Pipeline(bundle, None), checkpoint, vae)
        self.backbone = ref.backbone.to(self.device, self.dtype).eval()
        self.head = ref.head.to(self.device, self.dtype).eval()
        self.vae = ref.vae.to(self.device, self.dtype).eval() if ref.vae is not None else None
        if self.head.cfg.kind == "shortcut" and cuda:
            self.head.time_embed = _DeviceConstants(self.head.time_embed, self.device)
            self.head.step_embed = _DeviceConstants(self.head.step_embed, self.device)
        self._modules = {}
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        if cuda:        # the weights were copied on the default stream: order the side stream after it
            self.stream.wait_stream(torch.cuda.default_stream(self.device))
        self._pin = cuda
        graphs = GraphCache(TorchCapturer(self.stream), 1) if cuda_graphs else None
        super().__init__(max_graphs, default_capacity(bundle.model, bundle.manifest["max_batch"]), graphs)

    def module(self, graph: str) -> nn.Module:
        if graph not in self._modules:
            if not self.bundle.has(graph):
                raise FarError(f"The bundle has no '{graph}' graph.")
            self._modules[graph] = graph_module(graph, self.backbone, self.head, self.vae,
                                                self.specs[graph].head_steps)
        return self._modules[graph]

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else _nullcontext()

    # --- SlotBackend hooks -------------------------------------------------------------
    def _select_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _make_slot(self, call: Call) -> _Slot:
        spec = self.specs[call.graph]
        dims = dict(call.dims)
        inputs, outputs, staged = {}, {}, {}
        with self._on_stream():
            for t in spec.inputs + spec.outputs:
                shape, dt = t.shape(dims), getattr(torch, t.dtype)
                (inputs if t in spec.inputs else outputs)[t.name] = torch.empty(shape, dtype=dt, device=self.device)
                staged[t.name] = torch.zeros(shape, dtype=dt, pin_memory=self._pin)    # host memory
        arrays = {n: s.numpy() for n, s in staged.items()}
        bindings = tuple(Binding(n, tuple(x.shape), str(x.dtype), x.data_ptr())
                         for n, x in {**inputs, **outputs}.items())
        return _Slot(self.module(call.graph), inputs, outputs, staged, arrays, bindings)

    def _release_slot(self, key, slot: _Slot) -> None:
        if self.stream is not None:
            self.stream.synchronize()        # nothing of this slot may still be in flight
        slot.inputs.clear()
        slot.outputs.clear()
        slot.staged.clear()
        slot.arrays.clear()

    def _body(self, slot: _Slot):
        autocast = self.dtype != torch.float32

        def body():
            with torch.no_grad(), torch.autocast(self.device.type, self.dtype, enabled=autocast,
                                                 cache_enabled=False):
                out = slot.module(*slot.inputs.values())
            for name, dst in slot.outputs.items():      # one output per graph
                dst.copy_(out)
        return body

    def _execute(self, call: Call, slot: _Slot, feeds: dict) -> dict:
        with self._on_stream():
            for name, dev in slot.inputs.items():
                if name not in feeds:
                    raise FarError(f"'{call.graph}' needs input {name}, which the call does not give.")
                arr = feeds[name]
                if arr.shape != slot.arrays[name].shape:
                    raise FarError(f"'{call.graph}' input {name} has shape {arr.shape}, but the "
                                   f"plan says {slot.arrays[name].shape}.")
                np.copyto(slot.arrays[name], arr, casting="unsafe")
                dev.copy_(slot.staged[name], non_blocking=True)
            body = self._body(slot)
            if self.graphs is None:
                body()
            else:
                self.graphs.run(call.key, slot.bindings, body)
            for name, dev in slot.outputs.items():
                slot.staged[name].copy_(dev, non_blocking=True)
        if self.stream is not None:
            self.stream.synchronize()
        return {name: slot.arrays[name] for name in slot.outputs}

    def _close_device(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        self._modules.clear()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
