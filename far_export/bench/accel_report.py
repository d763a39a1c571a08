"""The report of ``far-export bench --accel`` (``accel.py``): the markdown table and the plot of
speed-up against Fréchet distance with the passing front marked, both made from the JSON report
alone (a saved ``bench.json`` can be re-rendered)."""
from __future__ import annotations

import time

#: issue #24's targets for the fastest passing set, end to end: (target, moonshot) x the defaults
TARGETS = {"far": (1.5, 2.0), "mar": (3.0, 5.0)}


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _passes(v) -> str:
    return "-" if v is None else "**yes**" if v else "no"


def markdown(report: dict) -> str:
    L = [f"# far-export bench --accel ({time.strftime('%Y-%m-%d', time.gmtime())})\n"]
    if report.get("command"):
        L.append(f"Command: `{report['command']}`\n")
    ld = report["load"]
    L.append(f"Batch {report['batch']}, {report['threads']} threads; speed: {report['runs']} measured runs of "
             f"each set alternated run by run with the same model's defaults (same seeds) after "
             f"{report['warmup']} warm-up; speed-up = the defaults' median time / the set's. Work = the "
             f"defaults' backbone + head FLOPs / the set's (load-free). Load average before/after: "
             f"{ld['before']['loadavg_1m']:.2f} / {ld['after']['loadavg_1m']:.2f} (1 min, "
             f"{ld['before']['cpus']} CPUs).\n")
    if report["images"]:
        L.append(f"Quality: {report['images']} images per set (seed set A from {report['seed']}; the defaults "
                 f"also from seed set B, {report['seed_set_b']}), {report['quality']}. "
                 f"A set passes when {report['rule']['text']}.\n")
    else:
        L.append(f"Quality: {report['quality'] if report['preset'] else 'not measured (--accel-images 0)'}.\n")
    for model, info in report["models"].items():
        entries = [e for e in report["accel"] if e["model"] == model]
        L.append(f"## {model.upper()} ({info['source']}): defaults `{info['settings_flags']}`"
                 + ("" if model == "far" else f", {info['head_steps']} DDPM steps") + "\n")
        d = info.get("defaults")
        if d:
            a, b, s = d["seed_set_a"], d["seed_set_b"], d["spread"]
            L.append(f"Defaults: accuracy {a['accuracy']:.3f} / {b['accuracy']:.3f}, Fréchet {a['frechet']:.2f} / "
                     f"{b['frechet']:.2f} (seed sets A / B; spread {s['frechet']:.2f}). Passing: accuracy >= "
                     f"{d['accuracy_floor']:.3f}, Fréchet <= {d['frechet_ceiling']:.2f}.\n")
        L.append("| set | options | speed-up | images/s | work | accuracy | Fréchet | passes |")
        L.append("|---|---|---:|---:|---:|---:|---:|---|")
        for e in entries:
            L.append(f"| {e['name']} | `{e['options'] or '(none)'}` | {e['speedup']:.2f}x | {e['images_per_s']:.2f} | "
                     f"{e['work_ratio']:.2f}x | {_f(e['accuracy'], '.3f')} | {_f(e['frechet'], '.2f')} | "
                     f"{_passes(e['passes'])} |")
        L.append("")
        for name, why in info.get("not_run", {}).items():
            L.append(f"Not run: `{name}`: {why}\n")
        best = report["accel_best"].get(model)
        if best:
            t = report["accel_targets"].get(model, {})
            L.append(f"**Fastest passing {model.upper()} set**: {best['name']} (`{best['options'] or '(defaults)'}`): "
                     f"{best['speedup']:.2f}x the defaults (target {t.get('target')}x: "
                     f"{'met' if t.get('met') else 'not met'}; moonshot {t.get('moonshot')}x: "
                     f"{'met' if t.get('moonshot_met') else 'not met'}).\n")
    for model, why in report.get("accel_skipped", {}).items():
        L.append(f"{why}\n")
    return "\n".join(L)


def passing_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The passing sets no other passing set beats on both Fréchet (lower) and speed-up
    (higher), by increasing Fréchet."""
    front, top = [], float("-inf")
    for fr, sp in sorted(points, key=lambda p: (p[0], -p[1])):
        if sp > top:
            front.append((fr, sp))
            top = sp
    return front


def plot(report: dict, path: str) -> None:
    """Per model: speed-up against Fréchet distance (passing sets filled, the passing front
    joined, the Fréchet ceiling dashed); without quality, the speed-ups and work ratios."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(report["models"])
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(7 * max(len(models), 1), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        entries = [e for e in report["accel"] if e["model"] == model]
        d = report["models"][model].get("defaults")
        if d:
            for ok, label, face, edge in ((True, "passes", "#4c72b0", "#4c72b0"),
                                          (False, "fails the rule", "white", "#c44e52")):
                pts = [(e["frechet"], e["speedup"]) for e in entries if bool(e["passes"]) == ok]
                if pts:
                    ax.scatter(*zip(*pts), s=40, color=face, edgecolors=edge, zorder=3, label=label)
            for e in entries:
                ax.annotate(e["name"], (e["frechet"], e["speedup"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            front = passing_front([(e["frechet"], e["speedup"]) for e in entries if e["passes"]])
            if front:
                ax.plot(*zip(*front), color="#4c72b0", drawstyle="steps-post", label="passing front", zorder=2)
            ax.axvline(d["frechet_ceiling"], color="#c44e52", linestyle="--", linewidth=1,
                       label="Fréchet ceiling (defaults + 2 x spread)")
            ax.set_xlabel(f"Fréchet distance ({report['images']} images; lower is better)")
            ax.set_ylabel("speed-up over the defaults (images/s ratio)")
            ax.legend(fontsize=8, loc="best")
        else:
            y = range(len(entries))
            ax.barh([i - 0.2 for i in y], [e["speedup"] for e in entries], height=0.4, label="measured speed-up")
            ax.barh([i + 0.2 for i in y], [e["work_ratio"] for e in entries], height=0.4, label="work ratio (FLOPs)")
            ax.set_yticks(list(y), [e["name"] for e in entries], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("x the defaults")
            ax.legend(fontsize=8)
        (ax.axhline if d else ax.axvline)(1.0, color="#8c8c8c", linewidth=0.8)
        ax.set_title(f"{model.upper()}: {report['models'][model]['settings_flags']}, batch {report['batch']}, "
                     f"{report['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_accel_report(report: dict, out: str) -> None:
    from .report import write_report
    write_report(report, out, markdown, plot, "accel.png")
