"""The one prepared GPU check of the TensorRT / CUDA-graph path (issue 15).

    bash tests/gpu/run.sh [OUT_DIR]          # what to run on a lent GPU machine
    python tests/gpu/check.py --out OUT_DIR  # the same, with PYTHONPATH already set

In at most ~8 minutes on one H100/H200, with random-weight models made here (no
checkpoint, no network, no ONNX needed):

1. ``far-export doctor`` (what really imports and runs);
2. PyTorch CUDA backend parity against the FP32 reference at fp32, fp16 and bf16 with CUDA
   graphs (tiny FAR + tiny VAE: latent error and image PSNR);
3. eager vs CUDA-graph replay for the O-step head loop at batch 1 and end to end, for a
   B-sized FAR model (random weights) at K = 64, O = 8, batch 1 (``bench.torch_cuda.bench``);
4. thread safety: one CUDA-graph backend shared by 4 threads, each result equal to the
   single-threaded one;
5. where TensorRT (and onnx + onnxruntime for the export) import: engines built for the tiny
   bundle, parity against ONNX Runtime, the same speed measurement, and the backend's stream
   (non-blocking, destroyed by ``close``).

Prints one table (each target, measured value, pass/fail) and writes ``gpu_check.json``.
Without a usable GPU it stops after the doctor with one line saying so (exit 0), which is
what the CPU test suite checks. Exit 1 when a measured target fails or a step errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

TARGETS = {"head_loop_speedup": 3.0, "end_to_end_speedup": 1.5, "fp16_psnr_db": 35.0}
BUDGET_S = 420                   # run.sh stops it at 480 s


def load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def torch_bundle(checkpoint: str, vae: str | None, root: str, head_steps=(1, 2, 8), max_batch: int = 8):
    """A bundle manifest for the PyTorch backend alone (no graph files: nothing exported),
    in the layout ``far-export build`` writes, so Pipeline and the backends read it as usual."""
    from dataclasses import asdict

    from far_export.checkpoint import load_model_checkpoint, load_vae_checkpoint
    from far_runtime.bundle import Bundle
    from far_runtime.specs import fused_name
    ck = load_model_checkpoint(checkpoint)
    vk = load_vae_checkpoint(vae) if vae else None
    bb, hd = ck.config.backbone, ck.config.head
    side = int(round(bb.seq_len ** 0.5))
    model = {"seq_len": bb.seq_len, "token_dim": bb.token_dim, "cond_dim": bb.decoder_width,
             "num_classes": bb.num_classes, "head_kind": hd.kind,
             "diffusion_steps": hd.diffusion_steps if hd.kind == "diffusion" else 0,
             "image_size": side * vk.config.downsample if vk else 0,
             "image_channels": vk.config.out_ch if vk else 0, "vae_scale": vk.config.scale_factor if vk else 0.0}
    steps = list(head_steps) if hd.kind == "shortcut" else []
    names = ["backbone", "head_step", *[fused_name(o) for o in steps]] + (["vae_decoder"] if vk else [])
    return Bundle(root, {
        "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.sha256, "weights": ck.weights,
                   "vae": os.path.abspath(vae) if vae else None, "vae_sha256": vk.sha256 if vk else None},
        "config": {**ck.config.to_dict(), "vae": asdict(vk.config) if vk else None},
        "precision": "fp32", "model": model, "max_batch": max_batch, "head_steps": steps,
        "graphs": {g: {"file": f"{g}.onnx", "files": {}, "precision": "fp32"} for g in names}})


def parity(bundle, dtype: str, K=8, O=8, device: str = "cuda") -> dict:
    from far_export.reference.pipeline import ReferencePipeline
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_export.verify import psnr
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    src, m = bundle.manifest["source"], bundle.model
    ref = ReferencePipeline.load(src["checkpoint"], src["vae"])
    graphs = device == "cuda"
    backend = TorchCudaBackend(bundle, dtype, cuda_graphs=graphs, device=device)
    pipe = Pipeline(bundle, backend)
    rnd = draw_randomness(3, 2, m["seq_len"], m["token_dim"])
    ref_tokens = ref.tokens([1, 2], num_iter=K, head_steps=O, cfg=3.0, randomness=rnd)
    a = ref_tokens.numpy()
    for _ in range(3):                               # eager, capture, replay: the replayed result counts
        b = pipe.generate_tokens([1, 2], K=K, O=O, cfg=3.0, randomness=rnd)
    return {"latent_max_abs": float(np.abs(a - b).max()), "latent_scale": float(np.abs(a).max()),
            "psnr_db": psnr(ref.decode(ref_tokens), pipe.decode(b)),
            "graph_stats": backend.graphs.stats.as_dict() if graphs else None}


def threads(pipe, n=4, K=8, O=2) -> dict:
    expected = {s: pipe.generate_tokens([1, 2], K=K, O=O, cfg=3.0, seed=s) for s in range(n)}
    got, errors = {}, []

    def work(seed):
        try:
            for _ in range(3):
                got[seed] = pipe.generate_tokens([1, 2], K=K, O=O, cfg=3.0, seed=seed)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    ts = [threading.Thread(target=work, args=(s,)) for s in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    worst = max((float(np.abs(got[s] - expected[s]).max()) for s in got), default=float("nan"))
    return {"threads": n, "errors": errors, "max_abs_diff": worst, "passed": not errors and len(got) == n and worst == 0.0}


def stream_check(backend) -> dict:
    """The TensorRT backend's stream does not sync implicitly with the legacy default stream
    (created non-blocking), and ``close`` destroys it."""
    rt = backend.cuda.rt
    flags = backend.cuda.check(rt.cudaStreamGetFlags(backend.stream), "cudaStreamGetFlags")
    non_blocking = int(flags) == int(rt.cudaStreamNonBlocking)
    backend.close()
    destroyed = backend.stream is None
    return {"non_blocking": non_blocking, "destroyed": destroyed, "passed": non_blocking and destroyed}


def runtime_only_engines(root: str) -> dict:
    """`far-runtime engines` as a board runs it: a process whose path has the runtime and not
    far_export (what JetPack 6 has: far-runtime and the system TensorRT); its engines load."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != repo]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(repo, "runtime"), *paths])}
    out_dir = os.path.join(root, "engines-runtime-only")
    probe = subprocess.run([sys.executable, "-c", "import far_export"], env=env, cwd=root, capture_output=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "far_runtime.cli", "engines", root, "--precision", "fp32", "--k", "1:16",
                        "--batch", "1:2", "--out", out_dir], env=env, cwd=root, capture_output=True, text=True)
    res = {"far_export_importable": probe.returncode == 0, "returncode": r.returncode,
           "build_s": time.perf_counter() - t0, "output": (r.stdout + r.stderr).strip().splitlines()[-3:]}
    if r.returncode == 0:
        from far_runtime.bundle import load_bundle
        from far_runtime.gpu.trt_backend import TrtBackend
        from far_runtime.pipeline import Pipeline
        bundle = load_bundle(root)
        pipe = Pipeline(bundle, TrtBackend(bundle, "fp32", engine_dir=out_dir))
        res["tokens_finite"] = bool(np.isfinite(pipe.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=2)).all())
    res["passed"] = not res["far_export_importable"] and r.returncode == 0 and res.get("tokens_finite", False)
    return res


def tensorrt_part(tiny_ckpt: str, vae: str, work: str) -> dict:
    from far_export.doctor import tensorrt_gpu
    usable, why = tensorrt_gpu()
    if not usable:
        return {"skipped": why}
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return {"skipped": f"TensorRT imports, but the export needs onnx and onnxruntime ({e})"}
    from far_export.export.bundle import export_bundle
    from far_runtime.gpu.engine_build import build_engines
    from far_export.bench.torch_cuda import bench
    from far_runtime.bundle import load_bundle
    from far_runtime.pipeline import Pipeline
    from far_runtime.gpu.trt_backend import TrtBackend
    root = os.path.join(work, "trt-bundle")
    export_bundle(tiny_ckpt, vae, root, head_steps=(1, 2, 8))
    out = {"runtime_only": runtime_only_engines(root)}
    t0 = time.perf_counter()
    m = build_engines(root, "fp32", None, (1, 16), (1, 2))
    out.update({"engines_built": m["built"], "build_s": time.perf_counter() - t0, "facts": m["built_on"]})
    bundle = load_bundle(root)
    a = Pipeline.load(root).generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=2)
    trt = Pipeline(bundle, TrtBackend(bundle, "fp32", cuda_graphs=True))
    b = [trt.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=2) for _ in range(3)][-1]
    out["parity_vs_onnxruntime_max_abs"] = float(np.abs(a - b).max())
    out["threads"] = threads(trt)
    out["speed"] = bench(bundle, K=16, O=8, batch=1, dtype="fp32", repeats=3, parity=False, backend="tensorrt")
    out["stream"] = stream_check(trt.backend)
    return out


def dry_run(report: dict, path: str) -> int:
    """The GPU-independent part of the check on the CPU: the bundle, parity and threads."""
    from far_export.synthetic import write_random_checkpoint, write_random_vae
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_runtime.pipeline import Pipeline
    work = tempfile.mkdtemp(prefix="far-gpu-check-")
    tiny, vae = os.path.join(work, "far.pth"), os.path.join(work, "vae.pth")
    write_random_checkpoint(tiny, "tiny", "shortcut", seed=1)
    write_random_vae(vae, seed=3)
    bundle = torch_bundle(tiny, vae, os.path.join(work, "tiny"))
    report["parity_bf16_cpu"] = parity(bundle, "bf16", device="cpu")
    report["threads_cpu"] = threads(Pipeline(bundle, TorchCudaBackend(bundle, "fp32", cuda_graphs=False,
                                                                      device="cpu")))
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    passed = report["threads_cpu"]["passed"] and report["parity_bf16_cpu"]["psnr_db"] >= TARGETS["fp16_psnr_db"]
    print(f"gpu-check dry run on the CPU: bf16 PSNR {report['parity_bf16_cpu']['psnr_db']:.1f} dB, "
          f"threads {'equal' if report['threads_cpu']['passed'] else 'DIFFER'}; report in {path}.")
    return 0 if passed else 1


def table(rows) -> str:
    lines = [f"{'check':44} {'target':>10} {'measured':>12}  result"]
    for name, target, value, passed in rows:
        v = f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
        t = f">= {target:g}" if isinstance(target, (int, float)) else str(target)
        lines.append(f"{name:44} {t:>10} {v:>12}  {passed}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tests/gpu/check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-check-out", help="Folder for gpu_check.json.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="Without a GPU: run the parity and thread steps on the CPU (no graphs, no "
                         "speed), to check this script itself (tests/test_gpu_logic.py does).")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "gpu_check.json")
    t_start = time.perf_counter()
    from far_export.doctor import cuda_gpu, diagnose, format_report
    report = {"load_start": load(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print("== far-export doctor", flush=True)
    report["doctor"] = diagnose()
    print(format_report(report["doctor"]), flush=True)
    ok, why = cuda_gpu()
    if a.cpu_dry_run:
        return dry_run(report, path)
    if not ok:
        report.update(gpu=False, reason=why)
        with open(path, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"gpu-check: no GPU is present here ({why}); nothing measured, report in {path}.")
        return 0
    import torch
    from far_export.synthetic import write_random_checkpoint, write_random_vae
    from far_export.bench.torch_cuda import bench
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_runtime.pipeline import Pipeline
    report.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    rows, failures = [], []
    work = tempfile.mkdtemp(prefix="far-gpu-check-")

    def step(name, fn):
        left = BUDGET_S - (time.perf_counter() - t_start)
        if left < 30:
            report[name] = {"skipped": f"time budget spent ({BUDGET_S}s)"}
            return None
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failures.append(name)
            print(f"   {name} failed: {type(e).__name__}: {e}", flush=True)
            return None
        report[name + "_seconds"] = time.perf_counter() - t0
        return report[name]

    tiny, vae = os.path.join(work, "far.pth"), os.path.join(work, "vae.pth")
    write_random_checkpoint(tiny, "tiny", "shortcut", seed=1)
    write_random_vae(vae, seed=3)
    tiny_bundle = torch_bundle(tiny, vae, os.path.join(work, "tiny"))
    for dtype in ("fp32", "fp16", "bf16"):
        r = step(f"parity_{dtype}", lambda d=dtype: parity(tiny_bundle, d))
        if r:
            target = TARGETS["fp16_psnr_db"] if dtype != "fp32" else 60.0
            rows.append((f"torch-cuda {dtype} vs fp32 reference, PSNR dB", target, r["psnr_db"],
                         "pass" if r["psnr_db"] >= target else "FAIL"))

    def b_model():
        ck = os.path.join(work, "far_b.pth")
        write_random_checkpoint(ck, "B", "shortcut", seed=0, layout="state_dict")
        return bench(torch_bundle(ck, None, os.path.join(work, "b"), head_steps=(8,), max_batch=1),
                     K=64, O=8, batch=1, dtype="fp16", repeats=a.repeats, parity=False)
    r = step("speed_b_k64_o8_batch1", b_model)
    if r:
        hl, e2e = r["head_loop"]["speedup_vs_eager"], r["end_to_end"]["speedup_vs_eager"]
        rows.append(("head loop O=8 batch 1: graphs vs eager (x)", TARGETS["head_loop_speedup"], hl,
                     "pass" if hl >= TARGETS["head_loop_speedup"] else "FAIL"))
        rows.append(("end to end FAR-B K=64 O=8 batch 1 (x)", TARGETS["end_to_end_speedup"], e2e,
                     "pass" if e2e >= TARGETS["end_to_end_speedup"] else "FAIL"))
    r = step("threads_torch_cuda", lambda: threads(Pipeline(tiny_bundle, TorchCudaBackend(tiny_bundle, "fp32"))))
    if r:
        rows.append(("4 threads share one CUDA-graph backend", "equal", r["max_abs_diff"],
                     "pass" if r["passed"] else "FAIL"))
    r = step("tensorrt", lambda: tensorrt_part(tiny, vae, work))
    if r and "skipped" in r:
        rows.append(("tensorrt build + parity + speed", "-", "skipped", r["skipped"][:60]))
    elif r:
        rows.append(("tensorrt fp32 vs onnxruntime, max abs", "<= 1e-2", r["parity_vs_onnxruntime_max_abs"],
                     "pass" if r["parity_vs_onnxruntime_max_abs"] <= 1e-2 else "FAIL"))
        rows.append(("tensorrt: 4 threads share one backend", "equal", r["threads"]["max_abs_diff"],
                     "pass" if r["threads"]["passed"] else "FAIL"))
        rows.append(("tensorrt end to end: graphs vs no graphs (x)", "-",
                     r["speed"]["end_to_end"]["speedup_vs_no_graphs"], "measured"))
        rows.append(("tensorrt stream non-blocking, destroyed by close", "yes",
                     "yes" if r["stream"]["passed"] else "no", "pass" if r["stream"]["passed"] else "FAIL"))
    for name in failures:
        rows.append((name, "-", "error", "FAIL"))
    report.update(rows=[dict(zip(("check", "target", "measured", "result"), row)) for row in rows],
                  load_end=load(), seconds=time.perf_counter() - t_start)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(table(rows))
    print(f"load {report['load_start']} -> {report['load_end']}; {report['seconds']:.0f}s; report in {path}")
    return 1 if any(row[3] == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
