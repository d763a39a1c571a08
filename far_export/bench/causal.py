"""``far-export bench-causal``: the FAR-Causal runtime with its KV cache against recomputing the
whole prefix every step, at several sequence lengths L.

For each L a random FAR-Causal model of the given size (token_dim 16, the demo's backbone
and head sizes by default) is written, exported to a bundle (``causal_*`` graphs and the
fused head for O; validated as ``build`` does; reused from ``OUT/models`` only when its name's
key, the configuration and the sha256 of the far_export and far_runtime sources, matches, or
exported again with ``--rebuild``), and ``Pipeline.generate_tokens`` is
timed in both modes, alternated run by run (cache, recompute, recompute, cache, ...) with
the same seed, so the ratio is measured under the same machine load. The report gives per
L and mode the median and p90 seconds per image batch, the ratio recompute / cache, and the
load average before and after.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time

import numpy as np

from far_runtime.errors import FarError
from far_runtime.files import write_json, write_text

log = logging.getLogger(__name__)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def source_hash(roots=None) -> str:
    """sha256 of every ``.py`` file of the packages that write and run the graphs (far_export,
    far_runtime), by relative path: a cached bench bundle is reused only by the same code."""
    import far_runtime
    roots = roots or (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(far_runtime.__file__))
    h = hashlib.sha256()
    for root in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                p = os.path.join(d, name)
                h.update(os.path.relpath(p, root).encode() + b"\0")
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def causal_bench_bundle(folder: str, seq_len: int, width: int, depth: int, heads: int,
                        class_tokens: int, head_steps: int, seed: int = 0, max_batch: int = 2,
                        rebuild: bool = False) -> str:
    """A random FAR-Causal checkpoint of the given size and its bundle, reused when one of the
    same configuration was exported by the same source code (its key is in the name)."""
    from ..demo.train_causal import causal_head_config
    from ..export.bundle import export_bundle
    from ..config import CausalConfig, CausalModelConfig
    from ..synthetic import write_random_causal_checkpoint
    name = f"causal_L{seq_len}_w{width}_d{depth}_h{heads}_p{class_tokens}_o{head_steps}_s{seed}_b{max_batch}"
    name += "_" + hashlib.sha256(f"{name}:{source_hash()}".encode()).hexdigest()[:12]
    ckpt, bundle = os.path.join(folder, name + ".pth"), os.path.join(folder, name)
    if not rebuild and os.path.isfile(os.path.join(bundle, "manifest.json")):
        return bundle
    os.makedirs(folder, exist_ok=True)
    bb = CausalConfig(token_dim=16, seq_len=seq_len, class_tokens=class_tokens, num_classes=10,
                      width=width, depth=depth, heads=heads)
    cfg = CausalModelConfig(bb, causal_head_config(bb, 3, width))
    write_random_causal_checkpoint(ckpt, cfg, seed, std=0.02)
    export_bundle(ckpt, None, bundle, components=("backbone", "head"), head_steps=(head_steps,),
                  validate_batches=(1,), max_batch=max_batch)
    return bundle


def run_causal_bench(out: str, lengths=(64, 256), width: int = 96, depth: int = 4, heads: int = 4,
                     class_tokens: int = 4, O: int = 8, batch: int = 1, cfg: float = 3.0,
                     runs: int = 3, warmup: int = 1, threads: int | None = None, seed: int = 0,
                     say=log.info, rebuild: bool = False) -> dict:
    from far_runtime.pipeline import Pipeline
    if runs < 1 or warmup < 0:
        raise FarError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}.")
    if not 1 <= batch <= 1024:
        raise FarError(f"--batch must be in 1..1024, got {batch}.")
    bad = [n for n in lengths if n < 4 or int(round(n ** 0.5)) ** 2 != n]
    if bad or not lengths:
        raise FarError(f"--lengths takes square token counts of at least 4 (16, 64, 256), got {list(lengths)}.")
    report = {"width": width, "depth": depth, "heads": heads, "class_tokens": class_tokens,
              "O": O, "batch": batch, "cfg": cfg, "runs": runs, "warmup": warmup,
              "threads": threads, "loadavg_before": _loadavg(), "lengths": {}}
    labels = [i % 10 for i in range(batch)]                 # the bench models have 10 classes
    for L in lengths:
        say(f"L={L}: exporting a random FAR-Causal (width {width}, depth {depth})")
        pipe = Pipeline.load(causal_bench_bundle(os.path.join(out, "models"), L, width, depth,
                                                 heads, class_tokens, O, seed, max(2, batch),
                                                 rebuild), threads=threads)
        times = {"cache": [], "recompute": []}
        order = ["cache", "recompute", "recompute", "cache"]
        for i in range(warmup + runs):
            for mode in order[i % 2 * 2: i % 2 * 2 + 2]:
                t0 = time.perf_counter()
                pipe.generate_tokens(labels, O=O, cfg=cfg, seed=seed + i, mode=mode)
                if i >= warmup:
                    times[mode].append(time.perf_counter() - t0)
        row = {m: {"median_s": float(np.median(v)), "p90_s": float(np.percentile(v, 90)),
                   "runs_s": v} for m, v in times.items()}
        row["ratio_recompute_over_cache"] = row["recompute"]["median_s"] / row["cache"]["median_s"]
        row["loadavg"] = _loadavg()
        report["lengths"][str(L)] = row
        say(f"L={L}: cache {row['cache']['median_s']:.3f} s, recompute "
            f"{row['recompute']['median_s']:.3f} s, ratio {row['ratio_recompute_over_cache']:.2f}x "
            f"(load {row['loadavg']})")
    report["loadavg_after"] = _loadavg()
    return report


def causal_markdown(report: dict) -> str:
    lines = [f"FAR-Causal runtime (ONNX Runtime CPU), width {report['width']}, depth "
             f"{report['depth']}, {report['class_tokens']} class tokens, O={report['O']}, batch "
             f"{report['batch']}, CFG {report['cfg']}; median of {report['runs']} alternated runs; "
             f"load average {report['loadavg_before']} before, {report['loadavg_after']} after.", "",
             "| L | KV cache (s) | recompute prefix (s) | recompute / cache | load |",
             "|---|---|---|---|---|"]
    for L, r in report["lengths"].items():
        lines.append(f"| {L} | {r['cache']['median_s']:.3f} | {r['recompute']['median_s']:.3f} | "
                     f"{r['ratio_recompute_over_cache']:.2f}x | {r['loadavg']} |")
    return "\n".join(lines) + "\n"


def _command():
    import click

    @click.command("bench-causal")
    @click.option("--lengths", default="64,256", show_default=True, help="Sequence lengths L (squares).")
    @click.option("--width", default=96, show_default=True)
    @click.option("--depth", default=4, show_default=True)
    @click.option("--heads", default=4, show_default=True)
    @click.option("--class-tokens", default=4, show_default=True)
    @click.option("--O", "head_steps", default=8, show_default=True, help="Head steps per token.")
    @click.option("--batch", default=1, show_default=True)
    @click.option("--cfg", default=3.0, show_default=True)
    @click.option("--runs", default=3, show_default=True)
    @click.option("--warmup", default=1, show_default=True)
    @click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores).")
    @click.option("--out", default="out/bench_causal", show_default=True)
    @click.option("--rebuild", is_flag=True, help="Export the models again even when OUT/models "
                  "has bundles of the same configuration and source code.")
    def bench_causal(lengths, width, depth, heads, class_tokens, head_steps, batch, cfg, runs,
                     warmup, threads, out, rebuild):
        """Time FAR-Causal with the KV cache against recomputing the prefix every step."""
        try:
            ls = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            raise FarError(f"--lengths takes comma-separated integers, got {lengths!r}.") from None
        report = run_causal_bench(out, ls, width, depth, heads, class_tokens, head_steps, batch,
                                  cfg, runs, warmup, threads, say=lambda m: click.echo(m, err=True),
                                  rebuild=rebuild)
        write_json(os.path.join(out, "bench_causal.json"), report)
        md = causal_markdown(report)
        write_text(os.path.join(out, "bench_causal.md"), md)
        click.echo(md)
    return bench_causal


bench_causal = _command()
