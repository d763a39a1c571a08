"""The ``far-export`` command line. Library code logs; this module decides what users see.

Every error a user can cause is a ``FarError``: printed as one sentence, exit status 2.
"""
from __future__ import annotations

import json
import logging
import sys

import click

from far_runtime.defaults import DEFAULT_K, REFERENCE
from far_runtime.cli import (FarGroup, accel_click_options, generate, option_group, parse_int_list,
                             parse_labels, sampling_options)
from far_runtime.errors import FarError

log = logging.getLogger("far_export")


@click.group(cls=FarGroup)
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
def main(verbose: bool):
    """Export FAR, MAR and FAR-Causal checkpoints to ONNX, build engines, run, verify, bench."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s")


def _fmt_m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--vae", "vae_path", help="VAE checkpoint ({'model': ...}, state dict or safetensors).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True,
              help="Which weights of a training checkpoint to use.")
@click.option("--heads", type=int, help="Attention heads, when shapes and metadata cannot tell.")
@click.option("--force-heads", is_flag=True, help="Let --heads override the checkpoint's own head count.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(checkpoint, vae_path, weights, heads, force_heads, as_json):
    """Print the inferred config, parameter counts, head kind, weights used and file hash."""
    from .checkpoint import load_model_checkpoint, load_vae_checkpoint, param_counts
    from .defaults import default_paths
    from .families import family_of_config
    checkpoint, vae_path = default_paths(checkpoint, vae_path)
    ck = load_model_checkpoint(checkpoint, weights, heads, force_heads=force_heads)
    vae = load_vae_checkpoint(vae_path) if vae_path else None
    family = family_of_config(ck.config)
    counts = param_counts(ck.config, vae.config if vae else None)
    report = {"checkpoint": ck.path, "sha256": ck.sha256, "weights": ck.weights,
              "head_kind": ck.config.head.kind, "heads_rule": ck.config.backbone.heads_rule,
              "config": ck.config.to_dict(), "parameters": counts, **ck.extra,
              "kind": family.variant(ck.config).name}
    if vae:
        from dataclasses import asdict
        report["vae"] = {"path": vae.path, "sha256": vae.sha256, "config": asdict(vae.config)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"checkpoint  {ck.path}")
    click.echo(f"kind        {report['kind']}")
    click.echo(f"sha256      {ck.sha256}")
    click.echo(f"weights     {ck.weights}" + (f" (epoch {ck.extra['epoch']})" if "epoch" in ck.extra else ""))
    for line in family.describe(ck.config, counts):
        click.echo(line)
    if vae:
        v = vae.config
        click.echo(f"vae decoder {_fmt_m(counts['vae_decoder'])} params: embed {v.embed_dim}, ch {v.ch}, "
                   f"ch_mult {v.ch_mult}, res blocks {v.num_res_blocks}, scale {v.scale_factor}, "
                   f"sha256 {vae.sha256[:16]}")


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--vae", "vae_path", help="VAE checkpoint.")
@sampling_options(REFERENCE)
@click.option("--out", default="out/reference.png", show_default=True, help="PNG grid to write.")
def sample(checkpoint, vae_path, classes, num, num_iter, head_steps, cfg, cfg_schedule,
           temperature, seed, head_schedule, cfg_interval, cfg_cache, out):
    """Run the PyTorch reference sampler and write a PNG grid (no export involved)."""
    from .defaults import default_paths
    from .reference.pipeline import ReferencePipeline
    from far_runtime.images import check_finite, grid, to_uint8, write_png
    checkpoint, vae_path = default_paths(checkpoint, vae_path)
    from far_runtime.files import check_writable_file
    from far_runtime.options import check_sampling
    from far_runtime.accel import accel_options
    if not vae_path:
        raise FarError("sample needs a VAE to decode images; pass --vae FILE.")
    labels = parse_labels(classes, num)
    check_sampling(DEFAULT_K if num_iter is None else num_iter, head_steps, cfg, temperature, seed,
                   check_o=False)
    accel = accel_options(head_schedule, cfg_interval, cfg_cache).as_dict()
    check_writable_file(out, "--out")
    pipe = ReferencePipeline.load(checkpoint, vae_path)
    num_iter = pipe.check_k(num_iter)
    with click.progressbar(length=num_iter, label="sampling", file=sys.stderr) as bar:
        images = pipe.generate(labels, num_iter=num_iter, head_steps=head_steps, cfg=cfg,
                               cfg_schedule=cfg_schedule, temperature=temperature, seed=seed,
                               progress=lambda it: bar.update(1), **accel)
    check_finite(images)
    write_png(out, grid(to_uint8(images)))
    click.echo(f"wrote {out}")



_export_options = [
    click.option("--vae", "vae_path", help="VAE checkpoint."),
    click.option("--components", default="backbone,head,vae", show_default=True,
                 help="Which components to export."),
    click.option("--head-steps", default="1,2,4,8", show_default=True,
                 help="O values that get a fused FAR head graph."),
    click.option("--opset", default=18, show_default=True, help="ONNX opset (>= 18)."),
    click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy", show_default=True),
    click.option("--max-batch", default=8, show_default=True, help="Largest batch the graphs are validated and profiled for."),
    click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True),
    click.option("--heads", type=int, help="Attention heads, when shapes and metadata cannot tell."),
    click.option("--force-heads", is_flag=True,
                 help="Let --heads override the head count the checkpoint records (an error otherwise)."),
    click.option("--external-data", is_flag=True, help="Store weights beside each graph even under 2 GB."),
    click.option("--validate-batches", default="1,3,8", show_default=True,
                 help="Batch sizes of the validation grid (each crossed with 0, 1, mid, L-1 known tokens)."),
]


export_options = option_group(_export_options)


def _run_export(checkpoint, vae_path, out, components, head_steps, opset, exporter, max_batch,
                weights, heads, force_heads, external_data, validate_batches, precision="fp32",
                precision_options=None):
    from .export.bundle import export_bundle, parse_components
    manifest = export_bundle(checkpoint, vae_path, out, parse_components(components),
                             parse_int_list(head_steps, '--head-steps'), opset, exporter, max_batch, weights,
                             heads, external_data, progress=lambda m: click.echo(m, err=True),
                             validate_batches=parse_int_list(validate_batches, '--validate-batches'),
                             precision=precision, precision_options=precision_options,
                             force_heads=force_heads)
    from .tensorrt.bundle_readiness import ensure_readiness
    ready = ensure_readiness(out, manifest)                 # every variant's graphs
    click.echo(f"wrote {len(manifest['graphs'])} graphs, validation.json, trt_readiness.json and "
               f"manifest.json to {out}")
    click.echo(ready, err=True)
    from far_runtime.bundle import bundle_digest
    click.echo(f"bundle digest {bundle_digest(out)} (pin it: --digest of far-runtime generate and serve, "
               "Pipeline.load(digest=...))")
    return manifest


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--out", default="graphs/default", show_default=True, help="Bundle folder.")
@export_options
def export(checkpoint, out, vae_path, **kw):
    """Export backbone, head and VAE decoder graphs, validate them, and write the manifest."""
    from .defaults import default_paths
    checkpoint, vae_path = default_paths(checkpoint, vae_path)
    _run_export(checkpoint, vae_path, out, **kw)


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--out", default="graphs/default", show_default=True, help="Bundle folder.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "auto"]), default="fp32", show_default=True,
              help="fp16: keep-list from ranges recorded on real sampling runs; int8: Q/DQ calibrated on them; "
                   "auto: per graph the fastest of fp32, bf16 and int8 that passes its accuracy gate, measured "
                   "here on --backend (recorded in the manifest; the runtime runs it so).")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
              show_default=True, help="With --precision auto: the backend the graphs are measured on and will run on.")
@click.option("--threads", type=int, help="With --precision auto: threads the graphs are timed with "
              "(default: every core this process may use).")
@click.option("--bf16-budget", default=0.02, show_default=True,
              help="With --precision auto: largest relative L2 error of a graph computed in bf16 (held-out inputs).")
@click.option("--calibration-cache", help="Folder of recorded inputs and int8 ranges "
              "(default $FAR_EXPORT_CACHE or ~/.cache/far-export/calibration).")
@click.option("--int8-exclude", default="", help="Graphs or node names kept in float, comma-separated.")
@click.option("--int8-budget", default=0.05, show_default=True,
              help="Largest relative L2 error of an int8 graph on held-out inputs; more sensitive nodes stay float.")
@click.option("--int8-min-speedup", type=float,
              help="Keep a graph fp32 when its int8 version is not this much faster here (ONNX Runtime CPU).")
@click.option("--skip-verify", is_flag=True, help="Do not run verify after exporting.")
@export_options
def build(checkpoint, out, precision, backend, threads, bf16_budget, calibration_cache, int8_exclude,
          int8_budget, int8_min_speedup, skip_verify, vae_path, **kw):
    """The main job: export + validate (+ fp16/int8/auto), engines where TensorRT exists, then verify."""
    from .precision.auto import AutoSettings
    from .precision.convert import PrecisionOptions
    from .precision.int8 import Int8Settings
    from .defaults import default_paths
    auto = _auto_settings(precision, backend, threads, bf16_budget)
    checkpoint, vae_path = default_paths(checkpoint, vae_path)
    exclude = tuple(x.strip() for x in int8_exclude.split(",") if x.strip())
    int8 = Int8Settings(error_budget=int8_budget, exclude=exclude, min_speedup=int8_min_speedup)
    opts = PrecisionOptions(precision, int8=int8, cache_dir=calibration_cache, auto=auto or AutoSettings())
    _run_export(checkpoint, vae_path, out, **kw, precision=precision, precision_options=opts)
    if precision == "auto":
        click.echo(f"engines: none built: an auto bundle's precisions were chosen for {backend} on this CPU. "
                   f"The {backend} bundle is ready.", err=True)
    else:
        from far_runtime.gpu.engine_build import maybe_build_engines
        click.echo(maybe_build_engines(out, precision) + " The ONNX Runtime bundle is ready.", err=True)
    if not skip_verify:
        _run_verify(out, None, None, None, 2, 0, None, None, None)


main.add_command(generate)


def _auto_settings(precision, backend, threads, bf16_budget):
    """``--precision auto``'s settings, checked before any export (the backend's library
    imported here); the options that only auto reads are refused without it."""
    from far_runtime.backends import check_choice, check_threads
    from .precision.auto import AutoSettings
    if precision != "auto":
        given = [o for o, v, d in (("--backend", backend, "onnxruntime"), ("--threads", threads, None),
                                   ("--bf16-budget", bf16_budget, 0.02)) if v != d]
        if given:
            raise FarError(f"{given[0]} applies to --precision auto (the backend and threads its graphs are "
                           f"measured with), not to --precision {precision}.")
        return None
    check_choice(backend, None)
    if not 0 < bf16_budget < 1:
        raise FarError(f"--bf16-budget must be in (0, 1), got {bf16_budget}.")
    return AutoSettings(backend=backend, threads=check_threads(threads, "timing"), bf16_budget=bf16_budget)


def _run_verify(bundle, out, num_iter, head_steps, batch, seed, cfg, checkpoint, vae,
                quality_per_class: int = 50, accel=None):
    from .verify import verify_bundle

    def progress(i, n, r):
        click.echo(f"[{i}/{n}] K={r['K']} O={r['O']} cfg={r['cfg']} batch={r['batch']}: "
                   f"latent max abs {r['latent_max_abs']:.2e}"
                   + (f", PSNR {r['psnr_db']:.1f} dB" if "psnr_db" in r else ""), err=True)
    report = verify_bundle(bundle, out, num_iter, head_steps, cfg, batch, seed, checkpoint, vae,
                           progress=progress, quality_per_class=quality_per_class, accel=accel)
    click.echo(report["summary"])
    if not report["passed"]:
        raise FarError("Verification failed: the runtime is outside tolerance of the reference "
                       f"(see {out or bundle + '/verify.json'}).")


@main.command()
@click.argument("bundle")
@click.option("--K", "num_iter", type=int, help="Only this K (1..256; default 16; L for FAR-Causal).")
@click.option("--O", "head_steps", type=int, help="Only this O (default: every fused O).")
@click.option("--cfg", type=float, help="Only this CFG (default 1.0 and 3.0).")
@click.option("--batch", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint", help="Reference checkpoint, if it moved since export.")
@click.option("--vae", help="Reference VAE, if it moved since export.")
@click.option("--out", help="Report path (default BUNDLE/verify.json).")
@click.option("--quality-per-class", default=50, show_default=True,
              help="Demo bundles below fp32: images per class for the accuracy / Fréchet gates "
                   "(200 images gave a binomial error of 1.7 points on a 2-point gate).")
@click.option("--status", is_flag=True, help="Print the stored report if it still applies to the "
              "bundle (same graphs and checkpoint); an error if it is stale or missing.")
@option_group(accel_click_options())
def verify(bundle, num_iter, head_steps, cfg, batch, seed, checkpoint, vae, out, quality_per_class, status,
           head_schedule, cfg_interval, cfg_cache):
    """Compare the runtime with the PyTorch reference under identical randomness."""
    if status:
        from .verify import read_report
        report = read_report(bundle, out)
        click.echo(report["summary"])
        if not report["passed"]:
            raise FarError(f"The stored verify report of {bundle} says FAILED.")
        return
    _run_verify(bundle, out, num_iter, head_steps, batch, seed, cfg, checkpoint, vae,
                quality_per_class=quality_per_class,
                accel={"head_schedule": head_schedule, "cfg_interval": cfg_interval, "cfg_cache": cfg_cache})


from .bench import bench  # noqa: E402
main.add_command(bench)


from far_runtime.gpu.engines_cli import engines  # noqa: E402
from .doctor import doctor  # noqa: E402
main.add_command(engines)
main.add_command(doctor)


from .demo.commands import train_demo  # noqa: E402
main.add_command(train_demo)


if __name__ == "__main__":
    main()
