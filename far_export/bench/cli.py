"""The ``far-export bench`` command: options in, one report out."""
from __future__ import annotations

import os
import shlex

from far_runtime.cli import parse_int_list
from far_runtime.errors import FarError

from .accel import DEFAULT_IMAGES as ACCEL_IMAGES
from .compare import MIN_PSNR_DB
from .report import markdown, write_report
from .sweep import run_bench



def calibration_settings(kind: str, K: int | None):
    """The calibration runs of the bench's int8 bundle: ``full`` is far-export build's."""
    from ..precision.calibration import CalibrationSettings
    if kind == "full":
        return CalibrationSettings()
    return CalibrationSettings(seeds=(0,), batch=2, num_iter=min(K or 16, 16), max_samples=16)


def command_line(source, **opts) -> str:
    """The command that reproduces a report, every option spelled out."""
    import shlex
    parts = ["far-export", "bench"] + ([shlex.quote(source)] if source else [])
    for k, v in opts.items():
        if v is not None:
            parts += [f"--{k.replace('_', '-')}", shlex.quote(str(v))]
    return " ".join(parts)


def _command():
    import click

    @click.command()
    @click.argument("source", required=False)           # FAR, or FAR-Causal (its loops swept)
    @click.option("--preset", type=click.Choice(["tiny", "small", "B"]),
                  help="Random FAR and MAR models with the same backbone (and a random VAE) instead of SOURCE.")
    @click.option("--mar", "mar_path", help="MAR checkpoint or bundle with the same backbone, for MAR vs FAR.")
    @click.option("--vae", "vae_path", help="VAE checkpoint (for a CHECKPOINT source).")
    @click.option("--K", "num_iter", type=int,
                  help="Autoregressive iterations (default 16; FAR-Causal: L, its only K).")
    @click.option("--O", "head_steps", default=8, show_default=True, help="FAR head steps.")
    @click.option("--batch", default=1, show_default=True)
    @click.option("--cfg", default=3.0, show_default=True, help="Classifier-free guidance (1.0: none).")
    @click.option("--threads", type=int, help="Threads for both backends (default: all cores).")
    @click.option("--runs", default=5, show_default=True, help="Measured runs per backend and configuration.")
    @click.option("--warmup", default=1, show_default=True, help="Warm-up runs per backend and configuration.")
    @click.option("--sweep-K", "sweep_k", help="K values of the sweep ('' for none; default 16,64; FAR-Causal: "
                                               "L, in each of its loops, KV cache and recompute).")
    @click.option("--sweep-O", "sweep_o", default="1,2,4,8", show_default=True, help="O values of the sweep.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--matmul-seconds", default=1.0, show_default=True,
                  help="How long to time the matmul peak, per library.")
    @click.option("--peers", default="all", show_default=True,
                  help="Configurations to compare, comma-separated (pytorch-eager, pytorch-eager-bf16, "
                       "pytorch-compile, pytorch-compile-bf16, onnxruntime-cpu, onnxruntime-cpu-int8, "
                       "onnxruntime-cpu-fp16, onnxruntime-cpu-bf16, openvino-cpu, openvino-cpu-bf16, "
                       "openvino-cpu-int8, openvino-cpu-auto) or 'all': all that can run and measured "
                       "not slower than fp32 here. Named peers run regardless.")
    @click.option("--backend", type=click.Choice(["all", "onnxruntime", "openvino"]), default="all",
                  show_default=True, help="The runtime peers of this backend only (eager fp32 and the ONNX "
                                          "Runtime fp32 runtime always run: the baselines).")
    @click.option("--int8-min-speedup", type=float, default=1.0, show_default=True,
                  help="The int8 bundle keeps a graph fp32 unless int8 measured this much faster for it.")
    @click.option("--min-psnr", type=float, default=MIN_PSNR_DB, show_default=True,
                  help="A configuration counts only if its images are this close (dB) to eager fp32's.")
    @click.option("--calibration", "calibration", type=click.Choice(["quick", "full"]), default="quick",
                  show_default=True, help="int8 calibration runs: quick (1 seed, batch 2, 16 samples per "
                                          "graph) or full (far-export build's defaults).")
    @click.option("--skip-mar", is_flag=True, help="With --preset: leave out the MAR model (MAR vs FAR).")
    @click.option("--accel", is_flag=True,
                  help="Measure the sampling accelerations instead (--head-schedule, --cfg-interval, --cfg-cache): "
                       "each option set against the same model's defaults (the README's settings) on FAR and "
                       "MAR: speed-up, accuracy, Fréchet distance, which pass (bench.json 'accel').")
    @click.option("--accel-images", default=ACCEL_IMAGES, show_default=True,
                  help="With --accel: images scored per option set (0: speed only).")
    @click.option("--accel-set", "accel_set", multiple=True,
                  help="With --accel: add (or replace) an option set, '[far:|mar:]name=flags', e.g. "
                       "'far:fast=--head-schedule 8:2 --cfg-cache 1:4'; repeatable.")
    @click.option("--accel-sets", "accel_sets", help="With --accel: a JSON file {\"far\": {name: flags}, "
                                                      "\"mar\": {...}} replacing the built-in option sets.")
    @click.option("--out", default="out/bench", show_default=True, help="Report folder.")
    @click.pass_context
    def bench(ctx, source, preset, mar_path, vae_path, num_iter, head_steps, batch, cfg, threads, runs,
              warmup, sweep_k, sweep_o, seed, matmul_seconds, peers, backend, int8_min_speedup, min_psnr,
              calibration, skip_mar, accel, accel_images, accel_set, accel_sets, out):
        """Time eager PyTorch against the runtime: latency, breakdown, memory, MAR vs FAR, K x O.
        With --accel: the sampling accelerations against each model's defaults."""
        if accel:
            return _accel(ctx, source, preset, mar_path, vae_path, num_iter, head_steps, batch, cfg, threads,
                          runs, warmup, seed, skip_mar, accel_images, accel_set, accel_sets, out)
        given = [f"--{p.replace('_', '-')}" for p in ("accel_set", "accel_sets", "accel_images")
                 if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise FarError(f"{given[0]} applies to bench --accel; add --accel.")
        if source is None and preset is None:
            from ..defaults import default_paths
            source, vae_path = default_paths(None, vae_path)
        sk = None if sweep_k is None else parse_int_list(sweep_k, "--sweep-K")
        so = parse_int_list(sweep_o, "--sweep-O")
        if sk == [] or not so:
            sk, so = [], []
        report = run_bench(source, out, preset, mar_path, vae_path, num_iter, head_steps, batch, cfg,
                           threads, runs, warmup, sk, so, seed, matmul_seconds,
                           say=lambda m: click.echo(m, err=True), peers=peers,
                           int8_min_speedup=int8_min_speedup, min_psnr=min_psnr,
                           calibration=calibration_settings(calibration, num_iter), skip_mar=skip_mar,
                           backend=backend)
        report["command"] = command_line(source if preset is None else None, preset=preset, mar=mar_path,
                                         vae=vae_path, K=num_iter, O=head_steps, batch=batch, cfg=cfg,
                                         threads=report["threads"], runs=runs, warmup=warmup,
                                         sweep_K=sweep_k, sweep_O=sweep_o, seed=seed,
                                         matmul_seconds=matmul_seconds, peers=peers, backend=backend,
                                         int8_min_speedup=int8_min_speedup, min_psnr=min_psnr,
                                         calibration=calibration, out=out)
        if skip_mar:
            report["command"] += " --skip-mar"
        write_report(report, out)
        click.echo(markdown(report))
        click.echo(f"wrote {os.path.join(out, 'bench.json')}, bench.md and bench.png")
    return bench



# the bench options --accel uses (the others belong to the timing of eager against the runtime)
ACCEL_OPTIONS = {"source", "preset", "mar_path", "vae_path", "num_iter", "head_steps", "batch", "cfg", "threads",
                 "runs", "warmup", "seed", "skip_mar", "accel", "accel_images", "accel_set", "accel_sets", "out"}
ACCEL_BATCH = 8


def _accel(ctx, source, preset, mar, vae, K, O, batch, cfg, threads, runs, warmup, seed, skip_mar, images,
           extra_sets, sets_file, out):
    """``bench --accel``: O, CFG and batch count only where given (else the README's settings and
    batch 8); options of the eager-vs-runtime timing are refused."""
    import click
    from .accel import run_accel
    from .accel_report import markdown as accel_markdown
    given = lambda p: ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE   # noqa: E731
    other = [p for p in ctx.params if p not in ACCEL_OPTIONS and given(p)]
    if other:
        opt = next(o for o in ctx.command.params if o.name == other[0])
        raise FarError(f"{opt.opts[0]} does not apply to bench --accel (it times eager PyTorch against the runtime).")
    O, cfg = (O if given("head_steps") else None), (cfg if given("cfg") else None)
    batch = batch if given("batch") else ACCEL_BATCH
    report = run_accel(source, out, preset, mar, vae, K, O, cfg, batch, threads, runs, warmup, seed, images,
                       sets_file, extra_sets, skip_mar, say=lambda m: click.echo(m, err=True))
    cmd = command_line(source if preset is None else None, preset=preset, mar=mar, vae=vae, K=K, O=O, cfg=cfg,
                       batch=batch, threads=report["threads"], runs=runs, warmup=warmup, seed=seed,
                       accel_images=images, accel_sets=sets_file, out=out)
    report["command"] = (cmd.replace("far-export bench", "far-export bench --accel", 1)
                         + "".join(f" --accel-set {shlex.quote(s)}" for s in extra_sets)
                         + (" --skip-mar" if skip_mar else ""))
    from .accel_report import write_accel_report
    write_accel_report(report, out)
    click.echo(accel_markdown(report))
    click.echo(f"wrote {os.path.join(out, 'bench.json')}, bench.md and accel.png")


bench = _command()
