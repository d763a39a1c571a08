"""CUDA-graph speed-ups and parity of a GPU backend on this GPU: the PyTorch CUDA backend
(``far_export/torch_cuda_backend.py``) or TensorRT engines.

    python -m far_export.bench.torch_cuda BUNDLE [--backend tensorrt] [--K 64 --O 8 --dtype fp16]

(``tests/gpu/check.py`` calls ``bench`` with a bundle it made.)
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from far_runtime.bundle import Bundle
from far_runtime.errors import FarError
from far_runtime.specs import ROWS, ZROWS

from ..torch_cuda_backend import DTYPES, TorchCudaBackend, require_cuda

log = logging.getLogger(__name__)


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


def median_head_call(plan):
    """The fused head call of a plan with the median row count over its calls (FAR: the
    iteration with the median number of predicted tokens; FAR-Causal: its one head shape)."""
    fused = sorted((c for c in plan.calls() if c.graph.startswith("head_fused_o")), key=lambda c: c.dim(ROWS))
    return fused[len(fused) // 2] if fused else None


def bench(bundle_dir, K: int | None = None, O: int = 8, batch: int = 1, cfg: float = 3.0,
          dtype: str = "fp16", repeats: int = 5, parity: bool = True, backend: str = "torch-cuda",
          engine_dir: str | None = None) -> dict:
    """CUDA-graph speed-ups and parity of ``backend`` (torch-cuda or tensorrt) on this GPU.

    ``bundle_dir``: a bundle folder or a loaded ``Bundle`` (tests/gpu/check.py passes one);
    ``K`` None: the variant's default (16 for FAR/MAR, L for FAR-Causal).

    - head loop: the fused O-step head call of the plan's median head shape at batch
      ``batch``. Eager = the reference sampler's O head calls in PyTorch on the GPU at
      ``dtype``; against it the backend's fused head call without and with CUDA graphs (host
      copies included);
    - end to end: ``generate_tokens`` through the runtime's loop: PyTorch eager (torch-cuda,
      no graphs) vs the backend without and with CUDA graphs (captured in untimed runs);
    - parity: the CUDA-graph run at ``dtype`` vs the FP32 reference (latent error, PSNR).
    """
    from far_runtime.bundle import load_bundle
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    from far_runtime.specs import fused_name

    from ..reference.sampler import shortcut_sample
    require_cuda()
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    labels = [i % bundle.model["num_classes"] for i in range(batch)]
    eager = TorchCudaBackend(bundle, "bf16" if dtype == "bf16" else "fp32" if dtype == "fp32" else "fp16",
                             cuda_graphs=False)
    plain = _backend(backend, bundle, dtype, False, engine_dir)
    graphed = _backend(backend, bundle, dtype, True, engine_dir)
    p_eager, p_plain, p_graph = (Pipeline(bundle, b) for b in (eager, plain, graphed))
    K = p_graph.variant.check_k(K, bundle.model)
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "backend": backend,
           "dtype": dtype, "K": K, "O": O, "batch": batch, "cfg": cfg}
    if bundle.model["head_kind"] == "shortcut" and bundle.has(fused_name(O)):
        plan = p_graph.plan(batch, K, O, cfg, "fused")
        call = median_head_call(plan)
        C, D = bundle.model["token_dim"], bundle.model["cond_dim"]
        rng = np.random.default_rng(0)
        feeds = {"noise": rng.standard_normal((call.dim(ROWS), C), dtype=np.float32),
                 "z": rng.standard_normal((call.dim(ZROWS), D), dtype=np.float32),
                 "cfg": np.array([cfg], np.float32)}
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
        out["head_loop"] = {"rows": call.dim(ROWS), "n_pred": call.dim(ROWS) // batch,
                            "pytorch_eager_ms": e * 1e3, "no_graphs_ms": p * 1e3,
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
        from ..verify import psnr, reference_for_bundle
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
    ap = argparse.ArgumentParser(prog="python -m far_export.bench.torch_cuda",
                                 description="CUDA-graph speed-ups and parity on a GPU (torch-cuda or tensorrt).")
    ap.add_argument("bundle")
    ap.add_argument("--backend", choices=["torch-cuda", "tensorrt"], default="torch-cuda")
    ap.add_argument("--engines", help="Engine folder for --backend tensorrt (default BUNDLE/engines/DTYPE).")
    ap.add_argument("--K", type=int, help="K (default 16; FAR-Causal: L, its only K).")
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
