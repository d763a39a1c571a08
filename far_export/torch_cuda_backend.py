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
the proof of the CUDA-graph path and the eager baseline for benchmarks.

``python -m far_export.torch_cuda_backend BUNDLE [--backend tensorrt]`` measures the
CUDA-graph speed-ups and the FP16 parity on a GPU (see ``bench``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
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


# --- measurements (GPU) -------------------------------------------------------------------

def _time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn`` (which must synchronise) over ``repeats`` runs."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _backend(kind: str, bundle: Bundle, dtype: str, cuda_graphs: bool, engine_dir: str | None):
    if kind == "torch-cuda":
        return TorchCudaBackend(bundle, dtype, cuda_graphs=cuda_graphs)
    from far_runtime.gpu.trt_backend import TrtBackend
    return TrtBackend(bundle, dtype, engine_dir, cuda_graphs=cuda_graphs)


def bench(bundle_dir, K: int = 64, O: int = 8, batch: int = 1, cfg: float = 3.0,
          dtype: str = "fp16", repeats: int = 5, parity: bool = True, backend: str = "torch-cuda",
          engine_dir: str | None = None) -> dict:
    """CUDA-graph speed-ups and parity of ``backend`` (torch-cuda or tensorrt) on this GPU.

    ``bundle_dir``: a bundle folder or a loaded ``Bundle`` (tests/gpu/check.py passes one).

    - head loop: the O-step FAR head of one iteration at batch ``batch`` (the plan's
      iteration with the median n_pred). Eager = the reference sampler's O head calls in
      PyTorch on the GPU at ``dtype``; against it the backend's fused head call without and
      with CUDA graphs (host copies included);
    - end to end: ``generate_tokens`` through the runtime's loop: PyTorch eager (torch-cuda,
      no graphs) vs the backend without and with CUDA graphs (captured in untimed runs);
    - parity: the CUDA-graph run at ``dtype`` vs the FP32 reference (latent error, PSNR).
    """
    from far_runtime.bundle import load_bundle
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    from far_runtime.specs import fused_name

    from .reference.sampler import shortcut_sample
    require_cuda()
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    labels = [i % bundle.model["num_classes"] for i in range(batch)]
    eager = TorchCudaBackend(bundle, "bf16" if dtype == "bf16" else "fp32" if dtype == "fp32" else "fp16",
                             cuda_graphs=False)
    plain = _backend(backend, bundle, dtype, False, engine_dir)
    graphed = _backend(backend, bundle, dtype, True, engine_dir)
    p_eager, p_plain, p_graph = (Pipeline(bundle, b) for b in (eager, plain, graphed))
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "backend": backend,
           "dtype": dtype, "K": K, "O": O, "batch": batch, "cfg": cfg}
    if bundle.model["head_kind"] == "shortcut" and bundle.has(fused_name(O)):
        plan = p_graph.plan(batch, K, O, cfg, "fused")
        ips = sorted((ip for ip in plan.iterations if ip.calls), key=lambda ip: ip.it.n_pred)
        ip = ips[len(ips) // 2]
        n, C, D = ip.it.n_pred, bundle.model["token_dim"], bundle.model["cond_dim"]
        rng = np.random.default_rng(0)
        feeds = {"noise": rng.standard_normal((batch * n, C), dtype=np.float32),
                 "z": rng.standard_normal((plan.rows * n, D), dtype=np.float32),
                 "cfg": np.array([cfg], np.float32)}
        call = ip.calls[1]
        for b in (plain, graphed):
            b.prepare(plan)
        noise_d, z_d = torch.from_numpy(feeds["noise"]).cuda(), torch.from_numpy(feeds["z"]).cuda()
        cfg_iter = cfg if plan.rows != batch else None

        def run_eager():
            with torch.no_grad(), torch.autocast("cuda", eager.dtype, enabled=eager.dtype != torch.float32):
                shortcut_sample(eager.head, noise_d, z_d, O, cfg_iter)
            torch.cuda.synchronize()

        for _ in range(3):
            graphed.run(call, feeds)            # warm-up, capture, replay
        e = _time(run_eager, repeats * 10)
        p = _time(lambda: plain.run(call, feeds), repeats * 10)
        g = _time(lambda: graphed.run(call, feeds), repeats * 10)
        out["head_loop"] = {"n_pred": n, "pytorch_eager_ms": e * 1e3, "no_graphs_ms": p * 1e3,
                            "graphs_ms": g * 1e3, "speedup_vs_eager": e / g, "speedup_vs_no_graphs": p / g}
    kw = dict(K=K, O=O, cfg=cfg, seed=0)
    p_graph.generate_tokens(labels, **kw)             # eager first sighting of every shape
    p_graph.generate_tokens(labels, **kw)             # capture every shape
    e = _time(lambda: p_eager.generate_tokens(labels, **kw), repeats)
    p = _time(lambda: p_plain.generate_tokens(labels, **kw), repeats)
    g = _time(lambda: p_graph.generate_tokens(labels, **kw), repeats)
    out["end_to_end"] = {"pytorch_eager_s": e, "no_graphs_s": p, "graphs_s": g,
                         "speedup_vs_eager": e / g, "speedup_vs_no_graphs": p / g,
                         "graph_stats": graphed.graphs.stats.as_dict()}
    if parity:
        from .verify import psnr, reference_for_bundle
        ref = reference_for_bundle(Pipeline(bundle, None))
        m = bundle.model
        rnd = draw_randomness(0, batch, m["seq_len"], m["token_dim"], m["diffusion_steps"])
        a = ref.tokens(labels, num_iter=K, head_steps=O, cfg=cfg, randomness=rnd)
        b = p_graph.generate_tokens(labels, K=K, O=O, cfg=cfg, randomness=rnd)
        out["parity"] = {"latent_max_abs": float(np.abs(a.numpy() - b).max()),
                         "latent_scale": float(np.abs(a.numpy()).max())}
        if ref.vae is not None and bundle.has("vae_decoder"):
            out["parity"]["psnr_db"] = psnr(ref.decode(a), p_graph.decode(b))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m far_export.torch_cuda_backend",
                                 description="CUDA-graph speed-ups and parity on a GPU (torch-cuda or tensorrt).")
    ap.add_argument("bundle")
    ap.add_argument("--backend", choices=["torch-cuda", "tensorrt"], default="torch-cuda")
    ap.add_argument("--engines", help="Engine folder for --backend tensorrt (default BUNDLE/engines/DTYPE).")
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--O", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "int8"], default="fp16",
                    help="torch-cuda: fp32/fp16/bf16; tensorrt: the engines' precision fp32/fp16/int8.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--out", help="Also write the JSON report here.")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        if a.backend == "torch-cuda" and a.dtype not in DTYPES:
            raise FarError(f"--dtype {a.dtype} is for TensorRT engines; torch-cuda takes {', '.join(DTYPES)}.")
        r = bench(a.bundle, a.K, a.O, a.batch, a.cfg, a.dtype, a.repeats, not a.no_parity,
                  a.backend, a.engines)
    except FarError as e:
        raise SystemExit(f"error: {e}")
    text = json.dumps(r, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")

if __name__ == "__main__":
    main()
