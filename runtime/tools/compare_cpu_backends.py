"""ONNX Runtime fp32 vs OpenVINO fp32 vs OpenVINO bf16 on one bundle, alternated in one process.

    python runtime/tools/compare_cpu_backends.py graphs/demo --K 16 --O 8 --cfg 3 --batch 1 --threads 2

Every round runs each configuration once, in turn, with the same labels and seed, so a noisy
shared machine slows them alike. Reports the median ms per ``generate`` (latents and decode)
(no decode when the bundle has no VAE) and per graph (``backend.timer``), and each configuration's latents against ONNX Runtime fp32:
max |diff| and relative L2. bf16 is left out, with the reason, on a CPU without bf16 units.
A measurement tool, not a test: ``far-export bench`` is where the project's timings live.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline

CONFIGS = (("onnxruntime-fp32", "onnxruntime", None), ("openvino-fp32", "openvino", "fp32"),
           ("openvino-bf16", "openvino", "bf16"))


def load_configs(bundle: str, threads: int) -> tuple[dict, dict]:
    pipes, skipped = {}, {}
    for name, backend, precision in CONFIGS:
        try:
            pipes[name] = Pipeline.load(bundle, threads=threads, backend=backend, precision=precision)
        except FarError as e:
            skipped[name] = str(e)
    return pipes, skipped


def measure(pipes: dict, labels: list[int], kw: dict, rounds: int, warmup: int) -> dict:
    times = {n: [] for n in pipes}
    graphs = {n: {} for n in pipes}
    latents = {}
    for r in range(warmup + rounds):
        for name, pipe in pipes.items():
            pipe.backend.timer.reset()
            t0 = time.perf_counter()
            tokens = pipe.generate_tokens(labels, **kw)
            if pipe.bundle.has("vae_decoder"):
                pipe.decode(tokens)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
                for g, s in pipe.backend.timer.seconds.items():
                    graphs[name].setdefault(g, []).append(s)
            latents[name] = tokens
    ref = latents[CONFIGS[0][0]] if CONFIGS[0][0] in latents else None
    out = {}
    for name in pipes:
        row = {"ms_median": 1e3 * statistics.median(times[name]),
               "ms_runs": [round(1e3 * t, 1) for t in times[name]],
               "graph_ms_median": {g: round(1e3 * statistics.median(v), 1) for g, v in graphs[name].items()}}
        if ref is not None:
            d = latents[name] - ref
            row["latent_max_abs"] = float(np.abs(d).max())
            row["latent_rel_l2"] = float(np.linalg.norm(d) / np.linalg.norm(ref))
        out[name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--O", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="Also write the report here.")
    a = ap.parse_args(argv)
    try:
        pipes, skipped = load_configs(a.bundle, a.threads)
        m = next(iter(pipes.values())).model
        kw = dict(K=a.K if m.get("kind") != "causal" else None, O=a.O, cfg=a.cfg, seed=a.seed)
        labels = [i % m["num_classes"] for i in range(a.batch)]
        load_before = os.getloadavg()
        results = measure(pipes, labels, kw, a.rounds, a.warmup)
        load_after = os.getloadavg()
    except FarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"bundle": a.bundle, "settings": vars(a), "load_before": load_before, "load_after": load_after,
              "results": results, "skipped": skipped}
    print(f"{a.bundle}: K={a.K} O={a.O} cfg={a.cfg} batch={a.batch} threads={a.threads}, "
          f"{a.rounds} rounds alternated; load {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    base = results.get(CONFIGS[0][0], {}).get("ms_median")
    for name, r in results.items():
        speed = f"{base / r['ms_median']:.2f}x" if base else ""
        diff = (f"latents max|d| {r['latent_max_abs']:.2e} relL2 {r['latent_rel_l2']:.2e}"
                if "latent_rel_l2" in r else "")
        graphs = ", ".join(f"{g} {ms:.0f}" for g, ms in r["graph_ms_median"].items())
        print(f"  {name:18s} {r['ms_median']:9.1f} ms  {speed:6s} {diff}  [{graphs} ms]")
    for name, why in skipped.items():
        print(f"  {name:18s} skipped: {why}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
