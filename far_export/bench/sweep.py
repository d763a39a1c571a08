"""Measuring: every configuration with the backends alternated run by run, the summaries,
FLOP rates against the matmul peak, which backends can run here, and ``run_bench``.

A configuration is (K, O, loop mode) of the model's variant (``far_runtime.variants``): FAR
and MAR sweep K x O in their one loop; FAR-Causal's K is L, so its sweep is its loop modes
(KV cache, recompute) x O, which gives the cache-vs-recompute comparison (``loops``)."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from far_runtime.errors import FarError
from far_runtime.variants import variant_for

from ..flops import plan_flops
from .compare import MIN_PSNR_DB, accuracy, output_path, summary
from .engines import component_of
from .bundles import build_bundles, bundle_precisions
from .models import (MAR_VS_FAR_O, TENSORRT, TORCH_CUDA, backbone_digest, bundle_manifest, ensure_bundle,
                     reference_source, preset_models)
from .peers import BUNDLES, BY_NAME, choose, parse_peers
from .report import COMPONENTS, REFERENCE, RUNTIME, write_report

log = logging.getLogger(__name__)

SWEEP_K = (16, 64)               # FAR/MAR's K of the sweep when none is given


def labels_for(batch: int, num_classes: int) -> list[int]:
    return [(3 * i + 1) % num_classes for i in range(batch)]


def measure_config(workers: list, K: int, O: int, batch: int, cfg: float, runs: int, warmup: int,
                   seed: int, num_classes: int, say, save=None, mode=None) -> dict:
    """Warm-ups, then ``runs`` measured runs per backend, alternating backends A B B A ...;
    run r of every backend uses seed ``seed + r``. A worker whose warm-up fails is dropped
    from ``workers`` (in place) and listed under ``failed`` with its error. ``save(backend)``
    names the file its first measured run's outputs go to (for ``compare.accuracy``)."""
    labels = labels_for(batch, num_classes)
    base = {"cmd": "run", "labels": labels, "K": K, "O": O, "cfg": cfg, "mode": mode}
    failed = {}

    def drop(w, error):
        if w.backend in (REFERENCE, RUNTIME):
            raise FarError(error)
        say(f"  {w.backend} cannot run: {error}")
        failed[w.backend] = error
        workers.remove(w)
        w.close()

    for w in list(workers):
        # a compiled peer always warms up once: its first run is the compilation
        for i in range(max(warmup, 1) if BY_NAME.get(w.backend, BY_NAME[REFERENCE]).compile else warmup):
            try:
                r = w.ask({**base, "seed": seed + i})
            except FarError as e:
                r = {"error": str(e)}
            if "error" in r:
                drop(w, r["error"])
                break
    reset = all([w.ask({"cmd": "reset_peak"})["reset"] for w in workers])
    results = {w.backend: [] for w in workers}
    tokens = {}
    for r in range(runs):
        if r == 1:
            results = {b: v for b, v in results.items() if b not in failed}
        order = list(workers) if r % 2 == 0 else workers[::-1]
        for w in order:
            req = {**base, "seed": seed + r, "tokens": r == 0}
            if r == 0 and save:
                req["save"] = save(w.backend)
            try:
                res = w.ask(req)
            except FarError as e:
                res = {"error": str(e)}
            if "error" in res:
                if r > 0:
                    raise FarError(res["error"])
                drop(w, res["error"])
                continue
            if "tokens" in res:
                tokens[w.backend] = np.asarray(res.pop("tokens"), np.float32)
            results[w.backend].append(res)
        say(f"  K={K} O={O}{' ' + mode if mode else ''} batch={batch} cfg={cfg}: run {r + 1}/{runs}: "
            + ", ".join(f"{b} {results[b][-1]['total']:.3f}s" for b in results))
    out = {"K": K, "O": O, "mode": mode, "batch": batch, "cfg": cfg, "runs": runs, "warmup": warmup,
           "peak_rss_scope": "this configuration" if reset else "worker lifetime (reset refused)",
           "labels": labels, "seeds": [seed + r for r in range(runs)], "backends": {}, "failed": failed}
    if save:
        out["outputs"] = {w.backend: save(w.backend) for w in workers}
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
    from far_runtime.specs import fused_name
    model = manifest["model"]
    variant = variant_for(model)
    steps = entry["O"]
    fused = model["head_kind"] == "shortcut" and fused_name(steps) in manifest["graphs"]
    for b, r in entry["backends"].items():
        mode = "fused" if fused and (b not in BY_NAME or BY_NAME[b].engine != "pytorch") else "step"
        plan = variant.plan(model, batch, K, steps, cfg != 1.0, mode, False, None, entry.get("mode"))
        fl = plan_flops(manifest["config"], plan)
        t = r["breakdown_s"]
        r["flops"] = fl
        r["head_mode"] = mode
        r["achieved_gflops"] = {c: (fl[c] / t[c] / 1e9 if t[c] > 0 else None) for c in ("backbone", "head")}


def backend_availability(bundle: str | None = None) -> dict:
    """Which backends can run here; the others with the reason. The GPU backends run the
    runtime's own loop (fp32) where PyTorch sees a CUDA device (CUDA graphs) and, for
    TensorRT, where it is installed and fp32 engines were built for the bundle."""
    try:
        import torch
        cuda = torch.cuda.is_available()
        why_not = (f"PyTorch {torch.__version__} sees no CUDA device"
                   + ("" if torch.version.cuda else " (a CPU-only build)"))
    except ImportError:
        cuda, why_not = False, "PyTorch is not installed"
    from far_runtime.info import missing_engines, tensorrt_import_problem
    trt_problem = tensorrt_import_problem()
    missing = missing_engines(bundle, "fp32") if bundle and cuda and trt_problem is None else None
    return availability(cuda, why_not, trt_problem, missing)


def availability(cuda: bool, no_cuda: str, trt_problem: str | None, missing_engines: str | None) -> dict:
    """The decision from what this machine has: CUDA (else ``no_cuda`` says why), TensorRT
    (``trt_problem``: why it does not import, or None) and the bundle's fp32 engines
    (``missing_engines``: what is missing, or None). The CPU backends always run."""
    out = {REFERENCE: {"available": True}, RUNTIME: {"available": True}}
    out[TORCH_CUDA] = {"available": cuda, "reason": None if cuda else no_cuda}
    why = trt_problem or (None if cuda else no_cuda) or missing_engines
    out[TENSORRT] = {"available": why is None, "reason": why}
    return out


def machine_load() -> dict:
    with open("/proc/loadavg") as f:
        parts = f.read().split()
    return {"loadavg_1m": float(parts[0]), "loadavg_5m": float(parts[1]),
            "loadavg_15m": float(parts[2]), "cpus": os.cpu_count()}


def run_bench(source: str | None, out: str, preset: str | None = None, mar: str | None = None,
              vae: str | None = None, K: int | None = None, O: int = 8, batch: int = 1, cfg: float = 3.0,
              threads: int | None = None, runs: int = 5, warmup: int = 1, sweep_K=None,
              sweep_O=(1, 2, 4, 8), seed: int = 0, matmul_seconds: float = 1.0, say=None,
              peers: str | None = None, int8_min_speedup: float | None = 1.0, min_psnr: float = MIN_PSNR_DB,
              calibration=None, skip_mar: bool = False, backend: str = "all") -> dict:
    """Measure everything, write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``.

    ``K`` None: the variant's default; ``sweep_K`` None: ``SWEEP_K`` (FAR-Causal: its L)."""
    say = say or log.info
    from far_runtime.schedule import check_head_steps, check_k
    for k in [K, *(sweep_K or ())]:
        if k is not None:
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
        models.update(preset_models(preset, os.path.join(out, "models"), seed, skip_mar))
    else:
        models["far"] = {"source": source, "vae": vae}
        if mar:
            models["mar"] = {"source": mar, "vae": vae}
    for name, m in models.items():
        m["bundle"] = ensure_bundle(m["source"], m["vae"], os.path.join(out, "bundles", name),
                                    head_steps_needed, batch, say)
        m["reference"] = reference_source(m["bundle"])
        m["manifest"] = bundle_manifest(m["bundle"])
    model = models["far"]["manifest"]["model"]
    variant = variant_for(model)
    if model["head_kind"] != "shortcut":
        raise FarError("The model to benchmark must be FAR or FAR-Causal (shortcut head); pass a "
                       "MAR model with --mar next to its FAR twin.")
    if "mar" in models:
        if variant.family != "masked":
            raise FarError(f"--mar compares MAR with FAR on one backbone; {variant.title} has its own "
                           "backbone, so leave out --mar.")
        if models["mar"]["manifest"]["model"]["head_kind"] != "diffusion":
            raise FarError("--mar must be a MAR model (diffusion head); its head is a shortcut head.")
        same_backbone = (backbone_digest(models["far"]["reference"]["checkpoint"])
                         == backbone_digest(models["mar"]["reference"]["checkpoint"]))
    K = variant.check_k(K, model)
    loops = [m for m in variant.modes if m is not None] or [None]
    sweep_K = [variant.check_k(k, model) for k in (
        sweep_K if sweep_K is not None else SWEEP_K if loops == [None] else (K,))]
    sweep = [(k, o, loop) for loop in loops for k in sweep_K for o in sweep_O]

    from far_runtime.info import machine_info
    say(f"measuring the matmul peak per dtype ({threads} threads, ~{11 * matmul_seconds:.0f}s)")
    from .peaks import measure_peaks, merge_peaks
    peaks = measure_peaks(threads, matmul_seconds)        # decides which peers run; measured again at the end
    matmul = matmul_summary(peaks, threads)
    wanted, explicit = parse_peers(peers, backend)
    chosen, skipped = choose(wanted, peaks, explicit)

    report = {"command": None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
              "variant": variant.name, "variant_title": variant.title,
              "threads": threads, "runs": runs, "warmup": warmup, "seed": seed, "preset": preset,
              "backends": backend_availability(models["far"]["bundle"]), "matmul_peak": matmul,
              "peaks": peaks, "machine": machine_info(),
              "peers": {p.name: p.to_dict() for p in chosen}, "peers_not_run": skipped,
              "models": {}, "main": None, "mar_vs_far": None, "sweep": [],
              "memory_method": ("peak resident set (VmHWM) of each backend's own worker process, "
                                "reset before each configuration via /proc/self/clear_refs")}
    bundles, failed = build_bundles(chosen, models["far"]["bundle"], out, int8_min_speedup, calibration,
                                    threads, say)
    skipped.update(failed)
    chosen = [p for p in chosen if p.name not in skipped]
    report["peers"] = {p.name: p.to_dict() for p in chosen}
    report["bundles"] = {b: {"path": os.path.abspath(f), "kind": BY_NAME[b].bundle,
                             "about": BUNDLES[BY_NAME[b].bundle], **bundle_precisions(f, BY_NAME[b].precision)}
                         for b, f in bundles.items()}
    configs_done = {}

    def run_model(name: str, configs: list[tuple]):
        m = models[name]
        man = m["manifest"]
        avail = backend_availability(m["bundle"])
        if name == "far":
            specs = [{"backend": p.name, "engine": p.engine, "threads": threads, "dtype": p.dtype,
                      "compile": p.compile, **(m["reference"] if p.engine == "pytorch" else
                                               {"bundle": bundles[p.name], "runtime_backend": p.backend,
                                                "precision": p.precision})}
                     for p in chosen]
        else:                                        # MAR vs FAR: the two fp32 baselines
            specs = [{"backend": REFERENCE, "engine": "pytorch", "threads": threads, **m["reference"]},
                     {"backend": RUNTIME, "engine": "runtime", "threads": threads, "bundle": m["bundle"]}]
        specs += [{"backend": b, "engine": "gpu", "threads": threads, "bundle": m["bundle"]}
                  for b in (TORCH_CUDA, TENSORRT) if avail[b]["available"]]
        # imported here, not at the top: ``python -m far_export.bench.worker`` imports this
        # package first, and a worker module already in sys.modules makes runpy warn
        from .worker import Worker
        workers = []
        try:
            for s in specs:
                try:
                    workers.append(Worker(s))
                except FarError as e:
                    if s["backend"] in (REFERENCE, RUNTIME):
                        raise
                    skipped[s["backend"]] = f"its worker could not start: {e}"
            info = {w.backend: w.info for w in workers}
            report["models"][name] = {
                "source": m["source"], "bundle": os.path.abspath(m["bundle"]),
                "head_kind": man["model"]["head_kind"], "config": man["config"],
                "model": man["model"], "idle_rss_mb": {b: i["rss_mb"] for b, i in info.items()},
                "torch_imported": {b: i["torch_imported"] for b, i in info.items()}}
            for (k, o, loop) in configs:
                if (name, k, o, loop) in configs_done:
                    continue
                say(f"{name}: K={k} O={o if man['model']['head_kind'] == 'shortcut' else man['model']['diffusion_steps']}"
                    + (f" {loop}" if loop else ""))
                entry = measure_config(workers, k, o, batch, cfg, runs, warmup, seed,
                                       man["model"]["num_classes"], say,
                                       save=lambda b: output_path(os.path.join(out, "outputs"), name, b, k, o, loop),
                                       mode=loop)
                for b, why in entry["failed"].items():
                    skipped[b] = f"failed on its first run: {why}"
                entry["accuracy"] = accuracy(entry.pop("outputs", {}), min_psnr)
                entry["model"] = name
                if man["model"]["head_kind"] == "diffusion":
                    entry["O"] = man["model"]["diffusion_steps"]
                    entry["head"] = "diffusion"
                else:
                    entry["head"] = "shortcut"
                entry["load"] = machine_load()
                add_flops(entry, man, batch, k, cfg)
                configs_done[(name, k, o, loop)] = entry
                # what is measured so far survives an interrupted run
                from far_runtime.files import write_json
                write_json(os.path.join(out, "bench.partial.json"), list(configs_done.values()))
        finally:
            for w in workers:
                life = w.close()
                if name in report["models"] and life:
                    report["models"][name].setdefault("lifetime_peak_rss_mb", {})[w.backend] = \
                        life.get("lifetime_peak_rss_mb")

    run_model("far", [(K, O, loops[0])] + ([(K, MAR_VS_FAR_O, None)] if "mar" in models else []) + sweep)
    report["main"] = configs_done[("far", K, O, loops[0])]
    report["summary"] = summary(report["main"])
    report["sweep"] = [configs_done[("far", *c)] for c in sweep]
    report["loops"] = loop_comparison(report["sweep"]) if len(loops) > 1 else None
    if "mar" in models:
        run_model("mar", [(K, 0, None)])
        report["mar_vs_far"] = mar_vs_far(configs_done[("far", K, MAR_VS_FAR_O, None)],
                                          configs_done[("mar", K, 0, None)], same_backbone)
    say(f"measuring the matmul peak per dtype again ({threads} threads), after the measured runs")
    report["peaks"] = merge_peaks(peaks, measure_peaks(threads, matmul_seconds))
    report["matmul_peak"] = matmul_summary(report["peaks"], threads)
    report["throughput"] = throughput(report)
    report["load"] = {"before": load_before, "after": machine_load()}
    report["seconds"] = time.time() - t_start
    write_report(report, out)
    return report


def matmul_summary(peaks: dict, threads: int) -> dict:
    """The fp32 matmul peak's figures (torch, numpy, the best library, nominal)."""
    from ..flops import nominal_peak
    fp32 = peaks["libraries"]["fp32"]
    return {"n": fp32["torch"]["n"], "threads": threads, "torch_gflops": fp32["torch"]["gflops"],
            "numpy_gflops": fp32["numpy"]["gflops"], "peak_gflops": peaks["peak"]["fp32"]["gflops"],
            "numpy_threads": fp32["numpy"]["threads"], "nominal": nominal_peak(threads)}


def loop_comparison(sweep: list) -> list:
    """Per O, each backend's median latency per image in each loop mode of the variant and
    its ratio to the first mode's (FAR-Causal: recompute / KV cache)."""
    rows = []
    for o in sorted({e["O"] for e in sweep}):
        by_mode = {e["mode"]: e for e in sweep if e["O"] == o}
        base = next(iter(by_mode))
        backends = [b for b in by_mode[base]["backends"] if all(b in e["backends"] for e in by_mode.values())]
        lat = {b: {m: e["backends"][b]["latency_median_s"] for m, e in by_mode.items()} for b in backends}
        rows.append({"O": o, "baseline": base, "backends": {
            b: {"latency_median_s": lat[b], "ratio_to_baseline": {m: v / lat[b][base] for m, v in lat[b].items()}}
            for b in backends}})
    return rows


def mar_vs_far(far: dict, mar: dict, same_backbone: bool | None) -> dict:
    out = {"K": far["K"], "far_O": far["O"], "mar_steps": mar["O"], "same_backbone_weights": same_backbone,
           "far": far, "mar": mar, "backends": {}}
    for b in [b for b in far["backends"] if b in mar["backends"]]:
        f, m = far["backends"][b], mar["backends"][b]
        out["backends"][b] = {"far_latency_s": f["latency_median_s"], "mar_latency_s": m["latency_median_s"],
                              "far_speedup_over_mar": m["latency_median_s"] / f["latency_median_s"],
                              "far_head_share": f["shares"]["head"], "mar_head_share": m["shares"]["head"]}
    return out


def backbone_dtype(report: dict, backend: str) -> str:
    """What the backend's backbone matrix products run in: a PyTorch peer's dtype, or, for a
    runtime peer, the dtype of the backbone graph its main run called most (FAR-Causal: its
    step graph): int8 for a Q/DQ graph, else what the run computes it in (fp32, or bf16 on
    OpenVINO: the run's precision or the bundle's per-graph record)."""
    if backend in report.get("bundles", {}):
        calls = report["main"]["backends"][backend]["calls"]
        graphs = report["bundles"][backend]["graphs"]
        called = [g for g in calls if g in graphs and component_of(g) == "backbone"]
        graph = max(called, key=calls.get) if called else "backbone"
        g = graphs.get(graph, {})
        return g.get("dtype", g.get("precision", "fp32"))
    return BY_NAME[backend].dtype if backend in BY_NAME else "fp32"


def throughput(report: dict) -> dict:
    """The backbone's achieved FLOP/s in the main configuration against the fp32 matmul peak
    and against the measured peak of the dtype it runs in (int8: GOP/s)."""
    peak = report["matmul_peak"]["peak_gflops"]
    nominal = (report["matmul_peak"].get("nominal") or {}).get("gflops")
    peaks = report.get("peaks", {}).get("peak", {})
    out = {"matmul_peak_gflops": peak, "nominal_peak_gflops": nominal,
           "peak_per_dtype": {d: v["gflops"] for d, v in peaks.items()}, "backends": {}}
    for b, r in report["main"]["backends"].items():
        g = r["achieved_gflops"]["backbone"]
        d = backbone_dtype(report, b)
        dp = (peaks.get(d) or {}).get("gflops")
        out["backends"][b] = {"backbone_gflops": g, "backbone_fraction_of_matmul_peak": g / peak if g else None,
                              "backbone_fraction_of_nominal": g / nominal if g and nominal else None,
                              "backbone_dtype": d, "dtype_peak_gflops": dp,
                              "backbone_fraction_of_dtype_peak": g / dp if g and dp else None,
                              "head_gflops": r["achieved_gflops"]["head"]}
    return out
