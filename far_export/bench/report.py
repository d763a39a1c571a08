"""The report of ``far-export bench``: the markdown tables and the breakdown plot, both
made from the JSON report alone (so a saved ``bench.json`` can be re-rendered)."""
from __future__ import annotations

import os
import time

import numpy as np

REFERENCE, RUNTIME = "pytorch-eager", "onnxruntime-cpu"     # the backends measured on a CPU
COMPONENTS = ("backbone", "head", "vae", "overhead")


def _ms(s: float) -> str:
    return f"{1000 * s:.1f}"


def markdown(report: dict) -> str:
    main = report["main"]
    L = []
    L.append(f"# far-export bench ({time.strftime('%Y-%m-%d', time.gmtime())})\n")
    if report.get("command"):
        L.append(f"Command: `{report['command']}`\n")
    ld = report["load"]
    L.append(f"Threads {report['threads']}, {report['runs']} measured runs after "
             f"{report['warmup']} warm-up per backend and configuration, backends alternated run by run "
             f"with equal seeds. Load average before/after: {ld['before']['loadavg_1m']:.2f} / "
             f"{ld['after']['loadavg_1m']:.2f} (1 min, {ld['before']['cpus']} CPUs).\n")
    title = report.get("variant_title", "FAR")
    loop = f", {main['mode']} loop" if main.get("mode") else ""
    L.append(f"## Main: {title}, K={main['K']}, O={main['O']}{loop}, batch {main['batch']}, CFG {main['cfg']}\n")
    L.append("| backend | images/s | latency/image median (ms) | p90 (ms) | best (ms) | vs eager | backbone | head | "
             "VAE | overhead | overhead in generate | peak RSS (MB) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ref_lat = main["backends"].get(REFERENCE, {}).get("latency_median_s")
    for b, r in main["backends"].items():
        t, s = r["breakdown_s"], r["shares"]
        vs = f"{ref_lat / r['latency_median_s']:.2f}x" if ref_lat else "-"
        L.append(f"| {b} | {r['images_per_s']:.3f} | {_ms(r['latency_median_s'])} | {_ms(r['latency_p90_s'])} | "
                 f"{_ms(r['latency_min_s']) if 'latency_min_s' in r else '-'} | {vs} | "
                 + " | ".join(f"{_ms(t[c])} ({100 * s[c]:.0f}%)" for c in COMPONENTS)
                 + f" | {100 * r['generate_overhead_share']:.1f}% | {r['peak_rss_mb']:.0f} |")
    if "speedup" in main:
        L.append(f"\nRuntime speed-up over eager PyTorch, end to end: **{main['speedup']:.2f}x** (ratio of "
                 f"median latencies; median of the per-run ratios {main['speedup_paired_median']:.2f}x). Same work: final latents differ by at most "
                 f"{main['same_work']['latent_max_abs_diff']:.2e} (max |latent| "
                 f"{main['same_work']['latent_max_abs']:.2e}).\n")
    L.extend(_peers_and_accuracy(report))
    unavailable = [f"{b} ({v['reason']})" for b, v in report["backends"].items() if not v["available"]]
    if unavailable:
        L.append("Not measured: " + "; ".join(unavailable) + ".\n")
    mvf = report.get("mar_vs_far")
    if mvf:
        L.append(f"## MAR (diffusion head, {mvf['mar_steps']} steps) vs FAR (shortcut head, O={mvf['far_O']}), "
                 f"K={mvf['K']}, same backbone weights: {mvf['same_backbone_weights']}\n")
        L.append("| backend | MAR latency (ms) | FAR latency (ms) | FAR speed-up | MAR head share | FAR head share |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for b, r in mvf["backends"].items():
            L.append(f"| {b} | {_ms(r['mar_latency_s'])} | {_ms(r['far_latency_s'])} | "
                     f"{r['far_speedup_over_mar']:.2f}x | {100 * r['mar_head_share']:.0f}% | "
                     f"{100 * r['far_head_share']:.0f}% |")
        L.append("")
    if report["sweep"]:
        backends = list(report["sweep"][0]["backends"])
        loops = any(e.get("mode") for e in report["sweep"])
        L.append(f"## {'Loop' if loops else 'K'} x O sweep ({title}, batch {main['batch']}, CFG {main['cfg']}): "
                 "median latency per image (ms)\n")
        L.append("| K | O | " + ("loop | " if loops else "") + " | ".join(backends)
                 + " | speed-up | head share (" + backends[-1] + ") |")
        L.append("|---:|---:|" + ("---|" if loops else "") + "---:|" * (len(backends) + 2))
        for e in report["sweep"]:
            lat = [_ms(e["backends"][b]["latency_median_s"]) for b in backends]
            sp = f"{e['speedup']:.2f}x" if "speedup" in e else "-"
            L.append(f"| {e['K']} | {e['O']} | " + (f"{e.get('mode')} | " if loops else "") + " | ".join(lat)
                     + f" | {sp} | {100 * e['backends'][backends[-1]]['shares']['head']:.0f}% |")
        L.append("")
    L.extend(_loops(report))
    tp = report["throughput"]
    mm = report["matmul_peak"]
    nom = mm.get("nominal")
    L.append("## Throughput\n")
    L.append(f"Measured fp32 matmul peak ({mm['n']}^3, {mm['threads']} threads): torch "
             f"{mm['torch_gflops']:.1f} GFLOP/s, numpy {mm['numpy_gflops']:.1f} GFLOP/s"
             + (f"; nominal {nom['gflops']:.1f} GFLOP/s ({nom['cores']} cores x {nom['mhz']:.0f} MHz x "
                f"{nom['flops_per_cycle']} FLOP/cycle)" if nom else "") + ".\n")
    fl = {b: r["flops"] for b, r in main["backends"].items()}
    L.append(f"Main configuration, counted from the config and the plan: backbone "
             f"{fl[REFERENCE]['backbone'] / 1e9:.2f} GFLOP per run; head "
             + ", ".join(f"{b} {f['head'] / 1e9:.2f} GFLOP ({main['backends'][b]['head_mode']} mode)"
                         for b, f in fl.items()) + ".\n")
    L.extend(_peaks(report))
    L.append("| backend | backbone runs in | backbone GFLOP/s | of its dtype's peak | of fp32 matmul peak | "
             "of nominal fp32 | head GFLOP/s |")
    L.append("|---|---|---:|---:|---:|---:|---:|")

    def pct(x):
        return f"{100 * x:.0f}%" if x else "-"
    for b, r in tp["backends"].items():
        L.append(f"| {b} | {r.get('backbone_dtype', 'fp32')} | {r['backbone_gflops']:.1f} | "
                 f"{pct(r.get('backbone_fraction_of_dtype_peak'))} | {pct(r['backbone_fraction_of_matmul_peak'])} | "
                 f"{pct(r['backbone_fraction_of_nominal'])} | {(r['head_gflops'] or 0):.1f} |")
    L.append("")
    L.append("Peak RSS: " + report["memory_method"] + ". RSS after loading, before the first run (ONNX Runtime creates its sessions on first use): "
             + "; ".join(f"{n}: " + ", ".join(f"{b} {v:.0f} MB" for b, v in m["idle_rss_mb"].items())
                         + f" (runtime imported torch: {m['torch_imported'].get(RUNTIME)})"
                         for n, m in report["models"].items()) + ".\n")
    return "\n".join(L)


def _peers_and_accuracy(report: dict) -> list[str]:
    L = []
    main = report["main"]
    acc = main.get("accuracy") or {}
    if acc:
        L.append("\nAccuracy of each configuration's first run against "
                 f"{next(iter(acc.values()))['against']} (same seeds), and whether it passes "
                 f"({next(iter(acc.values()))['gate']}):\n")
        L.append("| backend | latent max abs | latent rel L2 | image PSNR (dB) | finite | passes |")
        L.append("|---|---:|---:|---:|---|---|")
        for b, a in acc.items():
            ps = f"{a['psnr_db']:.1f}" if "psnr_db" in a else "n/a"
            L.append(f"| {b} | {a['latent_max_abs']:.3g} | {a['latent_rel_l2']:.3g} | {ps} | "
                     f"{'yes' if a['finite'] else 'NO'} | {'yes' if a['passed'] else 'no'} |")
    sm = report.get("summary")
    if sm:
        def x(v):
            return f"{v:.2f}x" if v else "n/a"
        tp = (report.get("throughput") or {}).get("backends", {}).get(sm["best_runtime"] or "", {})
        frac = tp.get("backbone_fraction_of_dtype_peak")
        L.append(f"\n**Summary** (K={sm['K']}, O={sm['O']}, batch {sm['batch']}, CFG {sm['cfg']}): best PyTorch "
                 f"`{sm['best_pytorch']}`, best runtime `{sm['best_runtime']}`: "
                 f"{x(sm['speedup_vs_best_pytorch'])} the best PyTorch configuration, "
                 f"{x(sm['speedup_vs_eager_fp32'])} eager fp32 (median latencies)"
                 + (f"; its backbone runs in {tp['backbone_dtype']} at {100 * frac:.0f}% of that dtype's "
                    "measured matmul peak" if frac else "") + ".\n")
    L.extend(_bundles(report))
    if report.get("peers_not_run"):
        L.append("Configurations not run: " + "; ".join(f"`{b}`: {why}" for b, why in report["peers_not_run"].items())
                 + ".\n")
    return L


def _bundles(report: dict) -> list[str]:
    """What each runtime peer's graphs run in, and the measurements that chose it."""
    L = []
    for b, info in report.get("bundles", {}).items():
        graphs = info["graphs"]
        if all(d.get("dtype", d["precision"]) == "fp32" for d in graphs.values()):
            continue
        if info.get("chosen_on"):
            how = (f"--precision auto on {info['chosen_on']['backend']}, {info['chosen_on']['threads']} threads: "
                   "per graph the fastest candidate within its error budget; speed against fp32 on held-out inputs")
            parts = [f"{g} **{d['chosen']}** (" + ", ".join(
                f"{c} {r['speedup']:.2f}x" if "speedup" in r else f"{c} err {r['error']:.2g} > {r['budget']:g}"
                for c, r in d["candidates"].items()) + ")" for g, d in graphs.items()]
        else:
            how = "; ".join(x for x in (info.get("about"), info.get("run_precision") and
                                        f"computed in {info['run_precision']}") if x) or "as stored"
            if any("int8_speedup_one_thread" in d for d in graphs.values()):
                how += "; in brackets: int8 / fp32 speed on ONNX Runtime, one thread"
            parts = [f"{g} {d.get('dtype', d['precision'])}" + (f" ({d['int8_speedup_one_thread']:.2f}x)"
                                                                 if "int8_speedup_one_thread" in d else "")
                     for g, d in graphs.items()]
        L.append(f"`{b}` graphs ({how}): " + ", ".join(parts) + ".\n")
    return L


def _loops(report: dict) -> list[str]:
    """The variant's loop modes against each other (FAR-Causal: recompute over KV cache)."""
    rows = report.get("loops")
    if not rows:
        return []
    modes = list(rows[0]["backends"][next(iter(rows[0]["backends"]))]["latency_median_s"])
    base, others = rows[0]["baseline"], [m for m in modes if m != rows[0]["baseline"]]
    L = [f"## {' and '.join(others)} against {base} ({report.get('variant_title', '')}): median latency per "
         "image (ms)\n", "| O | backend | " + " | ".join(modes) + " | "
         + " | ".join(f"{m} / {base}" for m in others) + " |", "|---:|---|" + "---:|" * (len(modes) + len(others))]
    for r in rows:
        for b, v in r["backends"].items():
            L.append(f"| {r['O']} | {b} | " + " | ".join(_ms(v["latency_median_s"][m]) for m in modes) + " | "
                     + " | ".join(f"{v['ratio_to_baseline'][m]:.2f}x" for m in others) + " |")
    L.append("")
    return L


def _peaks(report: dict) -> list[str]:
    pk = report.get("peaks")
    if not pk:
        return []
    cpu = pk.get("cpu", {})
    flags = ", ".join(f for f, v in cpu.items() if f not in ("model", "all_flags") and v) or "none"
    when = pk.get("measurements") or []
    note = ("; measured " + " and ".join(f"at {m['when']} (load {m['load_1m']:.2f})" for m in when)
            + ", each library's best" if len(when) > 1 else "")
    L = [f"Matmul peak per dtype ({pk['threads']} threads; CPU {cpu.get('model', '?')}, flags: {flags}{note}); "
         "GFLOP/s, int8 GOP/s:\n", "| dtype | library | n | GFLOP/s | note |", "|---|---|---:|---:|---|"]
    for d, libs in pk["libraries"].items():
        for lib, r in libs.items():
            note = r.get("reason") or (("kernels: " + ", ".join(r["kernels"])) if r.get("kernels") else "")
            g = f"{r['gflops']:.1f}" if r.get("gflops") else "-"
            L.append(f"| {d} | {lib} | {r.get('n', '')} | {g} | {note} |")
    L.append("")
    return L


def plot(report: dict, path: str) -> None:
    """Left: each backend's time split into components (shares, total ms at the bar's end),
    per configuration. Right: the K x O sweep, latency per image on a log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(f"{report.get('variant_title', 'FAR')} K={report['main']['K']} O={report['main']['O']}", report["main"])]
    if report.get("mar_vs_far"):
        m = report["mar_vs_far"]
        if (m["far"]["K"], m["far"]["O"]) != (report["main"]["K"], report["main"]["O"]):
            rows.append((f"FAR K={m['K']} O={m['far_O']}", m["far"]))
        rows.append((f"MAR K={m['K']} steps={m['mar_steps']}", m["mar"]))
    bars = [(f"{label}\n{b}", e["backends"][b]) for label, e in rows for b in e["backends"]]
    colors = {"backbone": "#4c72b0", "head": "#dd8452", "vae": "#55a868", "overhead": "#8c8c8c"}
    sweep = report["sweep"]
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(13 if sweep else 7, 0.7 * len(bars) + 2),
                             squeeze=False)
    ax = axes[0][0]
    y = np.arange(len(bars))
    left = np.zeros(len(bars))
    for c in COMPONENTS:
        vals = np.array([100 * r["shares"][c] for _, r in bars])
        ax.barh(y, vals, left=left, color=colors[c], label=c)
        left += vals
    for i, (_, r) in enumerate(bars):
        ax.text(101, i, f"{1000 * r['latency_median_s']:.0f} ms", va="center", fontsize=8)
    ax.set_xlim(0, 118)
    ax.set_yticks(y, [label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of end-to-end time (mean); median latency per image at the right")
    ax.set_title(f"Where the time goes (batch {report['main']['batch']}, CFG {report['main']['cfg']}, "
                 f"{report['threads']} threads)", fontsize=10)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    if sweep:
        ax = axes[0][1]
        Os = sorted({e["O"] for e in sweep})
        lines = list(dict.fromkeys((e["K"], e.get("mode")) for e in sweep))
        for b in sweep[0]["backends"]:
            for k, mode in lines:
                pts = sorted((e["O"], 1000 * e["backends"][b]["latency_median_s"]) for e in sweep
                             if (e["K"], e.get("mode")) == (k, mode))
                ax.plot(*zip(*pts), marker="o", linestyle="-" if b == RUNTIME else "--",
                        label=f"{b} K={k}" + (f" {mode}" if mode else ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(Os, [str(o) for o in Os])
        ax.set_xlabel("O (head steps)")
        ax.set_ylabel("ms per image (median)")
        ax.set_title(f"{'Loop' if any(m for _, m in lines) else 'K'} x O sweep "
                     f"({report.get('variant_title', 'FAR')})", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: str, render=None, draw=None, figure: str = "bench.png") -> None:
    """``bench.json``, ``bench.md`` (``render``, default this module's ``markdown``) and the
    figure (``draw``, default ``plot``) in ``out``; ``--accel`` passes its own pair."""
    from far_runtime.files import write_json
    write_json(os.path.join(out, "bench.json"), report)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write((render or markdown)(report))
    (draw or plot)(report, os.path.join(out, figure))
