"""Measuring: every configuration with the backends alternated run by run, the summaries,
FLOP rates against the matmul peak, which backends can run here, and ``run_bench``."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from far_runtime.errors import FarError

from ..flops import plan_flops
from .models import (MAR_VS_FAR_O, TENSORRT, TORCH_CUDA, backbone_digest, bundle_manifest, ensure_bundle,
                     reference_source, write_preset_models)
from .report import COMPONENTS, REFERENCE, RUNTIME, write_report
from .worker import Worker

log = logging.getLogger(__name__)


def labels_for(batch: int, num_classes: int) -> list[int]:
    return [(3 * i + 1) % num_classes for i in range(batch)]


def measure_config(workers: list, K: int, O: int, batch: int, cfg: float, runs: int, warmup: int,
                   seed: int, num_classes: int, say) -> dict:
    """Warm-ups, then ``runs`` measured runs per backend, alternating backends A B B A ...;
    run r of every backend uses seed ``seed + r``."""
    labels = labels_for(batch, num_classes)
    base = {"cmd": "run", "labels": labels, "K": K, "O": O, "cfg": cfg}
    for w in workers:
        for i in range(warmup):
            r = w.ask({**base, "seed": seed + i})
            if "error" in r:
                raise FarError(r["error"])
    reset = all([w.ask({"cmd": "reset_peak"})["reset"] for w in workers])
    results = {w.backend: [] for w in workers}
    tokens = {}
    for r in range(runs):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            res = w.ask({**base, "seed": seed + r, "tokens": r == 0})
            if "error" in res:
                raise FarError(res["error"])
            if "tokens" in res:
                tokens[w.backend] = np.asarray(res.pop("tokens"), np.float32)
            results[w.backend].append(res)
        say(f"  K={K} O={O} batch={batch} cfg={cfg}: run {r + 1}/{runs}: "
            + ", ".join(f"{b} {results[b][-1]['total']:.3f}s" for b in results))
    out = {"K": K, "O": O, "batch": batch, "cfg": cfg, "runs": runs, "warmup": warmup,
           "peak_rss_scope": "this configuration" if reset else "worker lifetime (reset refused)",
           "labels": labels, "seeds": [seed + r for r in range(runs)], "backends": {}}
    for w in workers:
        out["backends"][w.backend] = summarize(results[w.backend], batch)
        out["backends"][w.backend]["peak_rss_mb"] = w.ask({"cmd": "peak"})["peak_rss_mb"]
    if REFERENCE in tokens and RUNTIME in tokens:
        a, b = tokens[REFERENCE], tokens[RUNTIME]
        out["same_work"] = {"latent_max_abs_diff": float(np.abs(a - b).max()),
                            "latent_max_abs": float(np.abs(a).max())}
        out["speedup"] = (out["backends"][REFERENCE]["latency_median_s"]
                          / out["backends"][RUNTIME]["latency_median_s"])
        out["speedup_paired_median"] = float(np.median(
            [a["total"] / b["total"] for a, b in zip(results[REFERENCE], results[RUNTIME])]))
    if REFERENCE in results:
        ref = out["backends"][REFERENCE]["latency_median_s"]
        out["speedup_over_eager"] = {b: ref / r["latency_median_s"] for b, r in out["backends"].items()
                                     if b != REFERENCE}
    return out


def summarize(runs: list[dict], batch: int) -> dict:
    """Latency (median, p90) and throughput from the per-run totals; the breakdown as means,
    so its parts add up to the mean end-to-end time exactly (shares sum to 1)."""
    totals = np.array([r["total"] for r in runs])
    per_image = totals / batch
    mean_total = float(totals.mean())
    comps = {c: float(np.mean([r["components"][c] for r in runs])) for c in COMPONENTS}
    gen = float(np.mean([r["generate"] for r in runs]))
    gen_over = float(np.mean([r["generate_overhead"] for r in runs]))
    return {"total_s": [float(t) for t in totals],
            "latency_median_s": float(np.median(per_image)),
            "latency_p90_s": float(np.percentile(per_image, 90)),
            "latency_min_s": float(per_image.min()),
            "images_per_s": batch / float(np.median(totals)),
            "mean_total_s": mean_total,
            "breakdown_s": comps,
            "shares": {c: comps[c] / mean_total for c in COMPONENTS},
            "generate_s": gen, "decode_s": float(np.mean([r["decode"] for r in runs])),
            "generate_overhead_share": gen_over / gen if gen > 0 else 0.0,
            "calls": runs[0]["calls"]}


def add_flops(entry: dict, manifest: dict, batch: int, K: int, cfg: float) -> None:
    """Counted backbone/head FLOPs of each backend's run and the FLOP/s it achieved.

    The backbone work is the same for both; the head's is not: the reference evaluates the
    whole head (time, step and condition embedders included) on every row at every step, a
    fused runtime graph embeds the condition once and the time/step once per step.
    """
    from far_runtime.plan import make_plan
    from far_runtime.specs import fused_name
    model = manifest["model"]
    steps = entry["O"]
    fused = model["head_kind"] == "shortcut" and fused_name(steps) in manifest["graphs"]
    for b, r in entry["backends"].items():
        mode = "fused" if fused and b != REFERENCE else "step"
        fl = plan_flops(manifest["config"], make_plan(model, batch, K, steps, cfg != 1.0, mode, False))
        t = r["breakdown_s"]
        r["flops"] = fl
        r["head_mode"] = mode
        r["achieved_gflops"] = {c: (fl[c] / t[c] / 1e9 if t[c] > 0 else None) for c in ("backbone", "head")}


def backend_availability(bundle: str | None = None) -> dict:
    """Which backends can run here; the others with the reason. The GPU backends run the
    runtime's own loop (fp32) where PyTorch sees a CUDA device (CUDA graphs) and, for
    TensorRT, where it is installed and fp32 engines were built for the bundle."""
    out = {REFERENCE: {"available": True}, RUNTIME: {"available": True}}
    try:
        import torch
        cuda = torch.cuda.is_available()
        why_not = (f"PyTorch {torch.__version__} sees no CUDA device"
                   + ("" if torch.version.cuda else " (a CPU-only build)"))
    except ImportError:
        cuda, why_not = False, "PyTorch is not installed"
    out[TORCH_CUDA] = {"available": cuda, "reason": None if cuda else why_not}
    from far_runtime.info import missing_engines, tensorrt_import_problem
    trt_why = tensorrt_import_problem()
    if trt_why is None and not cuda:
        trt_why = why_not
    if trt_why is None and bundle:
        trt_why = missing_engines(bundle, "fp32")
    out[TENSORRT] = {"available": trt_why is None, "reason": trt_why}
    return out


def machine_load() -> dict:
    with open("/proc/loadavg") as f:
        parts = f.read().split()
    return {"loadavg_1m": float(parts[0]), "loadavg_5m": float(parts[1]),
            "loadavg_15m": float(parts[2]), "cpus": os.cpu_count()}


def run_bench(source: str | None, out: str, preset: str | None = None, mar: str | None = None,
              vae: str | None = None, K: int = 16, O: int = 8, batch: int = 1, cfg: float = 3.0,
              threads: int | None = None, runs: int = 5, warmup: int = 1, sweep_K=(16, 64),
              sweep_O=(1, 2, 4, 8), seed: int = 0, matmul_seconds: float = 1.0, say=None) -> dict:
    """Measure everything, write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
    say = say or log.info
    from far_runtime.schedule import check_head_steps, check_k
    for k in [K, *sweep_K]:
        check_k(k)
    for o in [O, *sweep_O]:
        check_head_steps(o)
    if runs < 1 or warmup < 0 or batch < 1:
        raise FarError(f"--runs and --batch must be at least 1 and --warmup at least 0 "
                       f"(got {runs}, {batch}, {warmup}).")
    if (source is None) == (preset is None):
        raise FarError("Pass either a CHECKPOINT or BUNDLE, or --preset tiny|small|B (not both).")
    if preset and mar:
        raise FarError("--preset writes its own MAR model; leave out --mar (or pass a CHECKPOINT).")
    threads = threads or os.cpu_count() or 1
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    load_before = machine_load()
    head_steps_needed = sorted({O, MAR_VS_FAR_O, *sweep_O})

    models = {}
    same_backbone = None
    if preset:
        files = write_preset_models(preset, os.path.join(out, "models"), seed)
        models["far"] = {"source": files["far"], "vae": files["vae"]}
        models["mar"] = {"source": files["mar"], "vae": files["vae"]}
    else:
        models["far"] = {"source": source, "vae": vae}
        if mar:
            models["mar"] = {"source": mar, "vae": vae}
    for name, m in models.items():
        m["bundle"] = ensure_bundle(m["source"], m["vae"], os.path.join(out, "bundles", name),
                                    head_steps_needed, batch, say)
        m["reference"] = reference_source(m["bundle"])
        m["manifest"] = bundle_manifest(m["bundle"])
    if "mar" in models:
        same_backbone = (backbone_digest(models["far"]["reference"]["checkpoint"])
                         == backbone_digest(models["mar"]["reference"]["checkpoint"]))
        if models["mar"]["manifest"]["model"]["head_kind"] != "diffusion":
            raise FarError("--mar must be a MAR model (diffusion head); its head is a shortcut head.")
    if models["far"]["manifest"]["model"]["head_kind"] != "shortcut":
        raise FarError("The model to benchmark must be a FAR model (shortcut head); pass a MAR "
                       "model with --mar next to its FAR twin.")

    say(f"measuring the fp32 matmul peak ({threads} threads, ~{2 * matmul_seconds:.0f}s)")
    from ..flops import measure_matmul_peak
    matmul = measure_matmul_peak(threads, matmul_seconds)

    report = {"command": None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
              "threads": threads, "runs": runs, "warmup": warmup, "seed": seed, "preset": preset,
              "backends": backend_availability(models["far"]["bundle"]), "matmul_peak": matmul,
              "models": {}, "main": None, "mar_vs_far": None, "sweep": [],
              "memory_method": ("peak resident set (VmHWM) of each backend's own worker process, "
                                "reset before each configuration via /proc/self/clear_refs")}
    configs_done = {}

    def run_model(name: str, configs: list[tuple]):
        m = models[name]
        man = m["manifest"]
        avail = backend_availability(m["bundle"])
        specs = [{"backend": REFERENCE, "threads": threads, **m["reference"]},
                 {"backend": RUNTIME, "threads": threads, "bundle": m["bundle"]}]
        specs += [{"backend": b, "threads": threads, "bundle": m["bundle"]}
                  for b in (TORCH_CUDA, TENSORRT) if avail[b]["available"]]
        workers = []
        try:
            for s in specs:
                workers.append(Worker(s))
            info = {w.backend: w.info for w in workers}
            report["models"][name] = {
                "source": m["source"], "bundle": os.path.abspath(m["bundle"]),
                "head_kind": man["model"]["head_kind"], "config": man["config"],
                "model": man["model"], "idle_rss_mb": {b: i["rss_mb"] for b, i in info.items()},
                "torch_imported": {b: i["torch_imported"] for b, i in info.items()}}
            for (k, o) in configs:
                if (name, k, o) in configs_done:
                    continue
                say(f"{name}: K={k} O={o if man['model']['head_kind'] == 'shortcut' else man['model']['diffusion_steps']}")
                entry = measure_config(workers, k, o, batch, cfg, runs, warmup, seed,
                                       man["model"]["num_classes"], say)
                entry["model"] = name
                if man["model"]["head_kind"] == "diffusion":
                    entry["O"] = man["model"]["diffusion_steps"]
                    entry["head"] = "diffusion"
                else:
                    entry["head"] = "shortcut"
                entry["load"] = machine_load()
                add_flops(entry, man, batch, k, cfg)
                configs_done[(name, k, o)] = entry
                # what is measured so far survives an interrupted run
                from far_runtime.files import write_json
                write_json(os.path.join(out, "bench.partial.json"), list(configs_done.values()))
        finally:
            for w in workers:
                life = w.close()
                if name in report["models"] and life:
                    report["models"][name].setdefault("lifetime_peak_rss_mb", {})[w.backend] = \
                        life.get("lifetime_peak_rss_mb")

    far_configs = [(K, O)] + ([(K, MAR_VS_FAR_O)] if "mar" in models else []) + \
                  [(k, o) for k in sweep_K for o in sweep_O]
    run_model("far", far_configs)
    report["main"] = configs_done[("far", K, O)]
    report["sweep"] = [configs_done[("far", k, o)] for k in sweep_K for o in sweep_O]
    if "mar" in models:
        run_model("mar", [(K, 0)])
        report["mar_vs_far"] = mar_vs_far(configs_done[("far", K, MAR_VS_FAR_O)],
                                          configs_done[("mar", K, 0)], same_backbone)
    report["throughput"] = throughput(report)
    report["load"] = {"before": load_before, "after": machine_load()}
    report["seconds"] = time.time() - t_start
    write_report(report, out)
    return report


def mar_vs_far(far: dict, mar: dict, same_backbone: bool | None) -> dict:
    out = {"K": far["K"], "far_O": far["O"], "mar_steps": mar["O"], "same_backbone_weights": same_backbone,
           "far": far, "mar": mar, "backends": {}}
    for b in far["backends"]:
        f, m = far["backends"][b], mar["backends"][b]
        out["backends"][b] = {"far_latency_s": f["latency_median_s"], "mar_latency_s": m["latency_median_s"],
                              "far_speedup_over_mar": m["latency_median_s"] / f["latency_median_s"],
                              "far_head_share": f["shares"]["head"], "mar_head_share": m["shares"]["head"]}
    return out


def throughput(report: dict) -> dict:
    """The backbone's achieved FLOP/s in the main configuration against the matmul peak."""
    peak = report["matmul_peak"]["peak_gflops"]
    nominal = (report["matmul_peak"].get("nominal") or {}).get("gflops")
    out = {"matmul_peak_gflops": peak, "nominal_peak_gflops": nominal, "backends": {}}
    for b, r in report["main"]["backends"].items():
        g = r["achieved_gflops"]["backbone"]
        out["backends"][b] = {"backbone_gflops": g, "backbone_fraction_of_matmul_peak": g / peak if g else None,
                              "backbone_fraction_of_nominal": g / nominal if g and nominal else None,
                              "head_gflops": r["achieved_gflops"]["head"]}
    return out
