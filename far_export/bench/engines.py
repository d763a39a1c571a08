"""The engines under test, each behind the same three calls (``generate_tokens``, ``decode``,
``timer``): the PyTorch eager reference timed by module hooks, the runtime over ONNX
Runtime, and the runtime's loop over a GPU backend; ``measure_run`` times one run of any.
A run names the variant's loop ``mode`` (FAR-Causal: ``cache`` or ``recompute``; FAR/MAR:
None), which every engine runs."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from far_runtime.variants import VARIANTS

from .models import TENSORRT
from .report import COMPONENTS, RUNTIME

BACKBONE_GRAPHS = {g for v in VARIANTS.values() for g in v.backbone_graphs}
# FAR-Causal's reference backbone is called through these, not through forward: timed too
BACKBONE_METHODS = ("prefill", "step")


class ModuleTimer:
    """Seconds per named torch module, from forward pre-hooks and hooks (same shape as the
    runtime's ``GraphTimer``: ``seconds``, ``calls``, ``reset``)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._start = {}

    def attach(self, name: str, module) -> None:
        def pre(mod, args):
            self._start[name] = time.perf_counter()

        def post(mod, args, out):
            self.seconds[name] += time.perf_counter() - self._start.pop(name)
            self.calls[name] += 1
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap(self, name: str, module, method: str) -> None:
        """Time a method called directly (not through ``forward``) as ``name``."""
        inner = getattr(module, method)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
        setattr(module, method, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def component_of(graph: str) -> str:
    if graph in BACKBONE_GRAPHS or graph == "backbone":
        return "backbone"
    if graph.startswith("head"):
        return "head"
    if graph in ("vae", "vae_decoder"):
        return "vae"
    raise ValueError(graph)


class RuntimeEngine:
    """The torch-free runtime over a bundle, on the peer's backend (ONNX Runtime or OpenVINO)
    and run precision (None: the bundle's per-graph record)."""

    name = RUNTIME

    def __init__(self, spec: dict):
        from far_runtime.pipeline import Pipeline
        self.name = spec["backend"]
        self.pipe = Pipeline.load(spec["bundle"], threads=spec["threads"],
                                  backend=spec.get("runtime_backend") or "onnxruntime",
                                  precision=spec.get("precision"))
        self.timer = self.pipe.backend.timer
        m = self.pipe.model
        self.dims = (m["seq_len"], m["token_dim"], m["diffusion_steps"])
        self.decodes = self.pipe.bundle.has("vae_decoder")

    def generate_tokens(self, labels, K, O, cfg, rnd, mode=None):
        return self.pipe.generate_tokens(labels, K=K, O=O, cfg=cfg, randomness=rnd, mode=mode)

    def decode(self, tokens):
        return self.pipe.decode(tokens)


class TimedBackend:
    """Any runtime backend with a ``GraphTimer`` around ``run`` (for backends without one).
    GPU backends return host arrays, so ``run`` has synchronised when it returns: the time
    includes the host<->device copies of that call."""

    def __init__(self, backend):
        from far_runtime.backends import GraphTimer
        self.inner = backend
        self.name = backend.name
        self.timer = GraphTimer()

    def prepare(self, plan) -> None:
        self.inner.prepare(plan)

    def run(self, call, feeds):
        t0 = time.perf_counter()
        out = self.inner.run(call, feeds)
        self.timer.add(call.graph, time.perf_counter() - t0)
        return out


class GpuEngine(RuntimeEngine):
    """The runtime's loop over a GPU backend (fp32): TensorRT engines or PyTorch with CUDA
    graphs. Only built where ``backend_availability`` says the backend can run."""

    def __init__(self, spec: dict):
        from far_runtime.bundle import load_bundle
        from far_runtime.pipeline import Pipeline
        bundle = load_bundle(spec["bundle"])
        if spec["backend"] == TENSORRT:
            from far_runtime.gpu.trt_backend import TrtBackend
            backend = TrtBackend(bundle, precision="fp32")
        else:
            from ..torch_cuda_backend import TorchCudaBackend
            backend = TorchCudaBackend(bundle, dtype="fp32", cuda_graphs=True)
        self.name = spec["backend"]
        self.pipe = Pipeline(bundle, TimedBackend(backend))
        self.timer = self.pipe.backend.timer
        m = self.pipe.model
        self.dims = (m["seq_len"], m["token_dim"], m["diffusion_steps"])
        self.decodes = bundle.has("vae_decoder")


class ReferenceEngine:
    """The PyTorch reference, its modules timed by hooks: eager or ``torch.compile`` (inductor,
    each module's ``forward`` compiled with dynamic shapes, so the hooks stay outside the
    compiled code and the growing encoder length does not recompile every iteration), in fp32
    or under ``torch.autocast("cpu", torch.bfloat16)`` (AMX/AVX512-BF16 where the CPU has it)."""

    def __init__(self, spec: dict):
        import contextlib

        import torch
        from ..reference.pipeline import ReferencePipeline
        torch.set_num_threads(spec["threads"])
        self.torch = torch
        self.name = spec["backend"]
        self.pipe = ReferencePipeline.load(spec["checkpoint"], spec["vae"], spec["weights"], spec["heads"])
        # the modules hold copies of the weights; drop the loader's state dicts so the peak
        # RSS is the eager model's, not the model's plus the file's
        for ck in (self.pipe.ckpt, self.pipe.vae_ckpt):
            if ck is not None:
                ck.state_dict.clear()
        import gc
        gc.collect()
        modules = {"backbone": self.pipe.backbone, "head": self.pipe.head}
        if self.pipe.vae is not None:
            modules["vae"] = self.pipe.vae
        methods = [m for m in BACKBONE_METHODS if hasattr(self.pipe.backbone, m)]
        if spec.get("compile"):
            for m in modules.values():
                m.forward = torch.compile(m.forward, dynamic=True)
            for m in methods:
                setattr(self.pipe.backbone, m, torch.compile(getattr(self.pipe.backbone, m), dynamic=True))
        bf16 = spec.get("dtype", "fp32") == "bf16"
        self.context = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16
                        else contextlib.nullcontext)
        self.timer = ModuleTimer()
        for n, m in modules.items():
            self.timer.attach(n, m)
        for m in methods:
            self.timer.wrap("backbone", self.pipe.backbone, m)
        self.decodes = self.pipe.vae is not None
        bb, hd = self.pipe.ckpt.config.backbone, self.pipe.ckpt.config.head
        self.dims = (bb.seq_len, bb.token_dim, hd.diffusion_steps if hd.kind == "diffusion" else 0)

    def generate_tokens(self, labels, K, O, cfg, rnd, mode=None):
        loop = {} if mode is None else {"mode": mode}       # the family's loop mode (FAR-Causal)
        with self.context():
            return self.pipe.tokens(labels, num_iter=K, head_steps=O, cfg=cfg, randomness=rnd,
                                    **loop).float()

    def decode(self, tokens):
        with self.torch.no_grad(), self.context():
            return self.pipe.vae(tokens).float().numpy()


def measure_run(engine, labels, K: int | None, O: int, cfg: float, seed: int, mode=None) -> dict:
    """One timed end-to-end run: K iterations (the variant's loop ``mode``) to token latents,
    then the VAE decode."""
    from far_runtime.randomness import draw_randomness
    L, C, S = engine.dims
    rnd = draw_randomness(seed, len(labels), L, C, S)        # drawn outside the timed region
    engine.timer.reset()
    t0 = time.perf_counter()
    tokens = engine.generate_tokens(labels, K, O, cfg, rnd, mode)
    t1 = time.perf_counter()
    gen_graph = sum(engine.timer.seconds.values())
    images = engine.decode(tokens) if engine.decodes else None
    t2 = time.perf_counter()
    comps = {c: 0.0 for c in COMPONENTS}
    calls = {}
    for g, s in engine.timer.seconds.items():
        comps[component_of(g)] += s
        calls[g] = engine.timer.calls[g]
    comps["overhead"] = (t2 - t0) - sum(comps[c] for c in ("backbone", "head", "vae"))
    tok = tokens.numpy() if hasattr(tokens, "numpy") else np.asarray(tokens)
    return {"total": t2 - t0, "generate": t1 - t0, "decode": t2 - t1,
            "generate_overhead": (t1 - t0) - gen_graph, "components": comps, "calls": calls,
            "tokens": tok, "images": images}
