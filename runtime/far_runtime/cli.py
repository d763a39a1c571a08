"""The ``far-runtime`` command line: run a bundle with nothing but numpy and an execution library.

``generate`` is the very command ``far-export generate`` registers, so the two cannot drift:
same options, same defaults, same PNG. Every error a user can cause is a ``FarError``:
printed as one sentence, exit status 2.
"""
from __future__ import annotations

import json
import logging
import sys

import click

from .defaults import CFG_SCHEDULES, DEFAULT_K, HEAD_MODES, SAMPLING
from .errors import FarError


class FarGroup(click.Group):
    """A click group that turns a ``FarError`` into one sentence on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FarError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


def option_group(opts):
    """One decorator applying several click options, in the order listed."""
    def apply(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return apply


def sampling_options(defaults: dict = SAMPLING):
    """The sampling options shared by ``sample`` (reference) and ``generate`` (runtime);
    their defaults are data (``defaults.py``), which the server reads too."""
    opts = [
        click.option("--class", "classes", default="0", show_default=True,
                     help="Class label(s), comma-separated; repeated to fill --num."),
        click.option("--num", default=defaults["num"], show_default=True, help="Images to generate."),
        click.option("--K", "num_iter", type=int, default=None,
                     help=f"Autoregressive iterations (1..256); default {DEFAULT_K} for FAR/MAR, and L "
                          "(the only valid K: one token per step) for FAR-Causal."),
        click.option("--O", "head_steps", default=defaults["O"], show_default=True, help="Shortcut head steps."),
        click.option("--cfg", default=defaults["cfg"], show_default=True, help="Classifier-free guidance scale."),
        click.option("--cfg-schedule", type=click.Choice(list(CFG_SCHEDULES)), default=defaults["cfg_schedule"]),
        click.option("--temperature", default=defaults["temperature"], show_default=True),
        click.option("--seed", default=defaults["seed"], show_default=True),
        *accel_click_options(defaults),
    ]
    return option_group(opts)


def accel_click_options(defaults: dict = SAMPLING) -> list:
    """The acceleration options (``accel.py``; off by default), shared by generate, sample and
    verify."""
    return [
        click.option("--head-schedule", default=defaults["head_schedule"],
                     help="Head steps per iteration: 'A:B' anneals from A to B as the known fraction "
                          "grows (FAR: O, rounded down to a power of two; MAR: DDPM steps), or one "
                          "value per iteration 'v0,v1,...'. Replaces --O."),
        click.option("--cfg-interval", default=defaults["cfg_interval"],
                     help="'LO:HI': guidance only on iterations s with LO*K <= s < HI*K; the others "
                          "run no unconditional rows."),
        click.option("--cfg-cache", default=defaults["cfg_cache"],
                     help="'W:N' (FAR, MAR): LazyMAR's condition cache; the unconditional rows run on "
                          "the first W iterations and every N-th after, and their z difference is "
                          "reused in between."),
    ]


backend_options = option_group([
    click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]),
                 help="Execution library: ONNX Runtime (far-runtime[cpu]) or OpenVINO (far-runtime[openvino]); "
                 "default: the one the bundle's precisions were chosen on (far-export build --precision auto), "
                 "else onnxruntime."),
    click.option("--precision", help="Compute precision of every graph: fp32 or bf16 (OpenVINO on a CPU with "
                 "bf16 units); default: each graph's recorded choice, fp32 where none is recorded. An int8 "
                 "bundle runs its Q/DQ graphs as int8 either way."),
    click.option("--threads", type=int, help="The backend's operator threads (ONNX Runtime intra-op, "
                 "OpenVINO INFERENCE_NUM_THREADS)."),
])


def resolve_k(num_iter, model: dict) -> int:
    """``--K`` as given, or the variant's default when left out (16 for FAR/MAR, L for FAR-Causal)."""
    from .variants import variant_for
    return variant_for(model).check_k(num_iter, model)


def parse_int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FarError(f"{option} takes comma-separated integers, got {text!r}.") from None


def parse_labels(classes: str, num: int) -> list[int]:
    from .options import check_num
    num = check_num(num)
    try:
        base = [int(c) for c in str(classes).split(",") if c.strip()]
    except ValueError:
        raise FarError(f"--class takes integers separated by commas, got {classes!r}.") from None
    if not base:
        raise FarError("--class needs at least one class label.")
    return [base[i % len(base)] for i in range(num)]


@click.group(cls=FarGroup)
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
def main(verbose: bool):
    """Run far-export bundles: generate images, inspect what a bundle holds."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s")


@main.command()
@click.argument("bundle")
@sampling_options(SAMPLING)
@click.option("--head", type=click.Choice(list(HEAD_MODES)), default=SAMPLING["head"], show_default=True,
              help="Fused O-step head graph or one call per step.")
@backend_options
@click.option("--save-randomness", help="Write the run's orders and noise to this .npz.")
@click.option("--out", default="out/grid.png", show_default=True, help="PNG grid to write.")
@click.option("--digest", help="Run the bundle only if its digest is this one (far-runtime info prints it).")
def generate(bundle, classes, num, num_iter, head_steps, cfg, cfg_schedule, temperature, seed,
             head_schedule, cfg_interval, cfg_cache, head, backend, precision, threads,
             save_randomness, out, digest):
    """Generate images with the torch-free runtime and write a PNG grid."""
    from .bundle import check_digest_text
    from .files import check_writable_file
    from .images import grid, write_png
    from .accel import accel_options
    from .options import check_sampling
    from .pipeline import Pipeline
    from .randomness import draw_randomness
    # Every check before any work, and before anything is written: a failed run leaves nothing.
    labels = parse_labels(classes, num)
    _, head_steps, cfg, temperature, seed = check_sampling(
        DEFAULT_K if num_iter is None else num_iter, head_steps, cfg, temperature, seed, check_o=False)
    accel = accel_options(head_schedule, cfg_interval, cfg_cache).as_dict()
    if threads is not None and threads < 1:
        raise FarError(f"--threads must be at least 1, got {threads}.")
    check_writable_file(out, "--out")
    if save_randomness:
        check_writable_file(save_randomness, "--save-randomness")
    if digest is not None:
        check_digest_text(digest, "--digest")
    pipe = Pipeline.load(bundle, threads=threads, digest=digest, backend=backend, precision=precision)
    num_iter = pipe.variant.check_k(num_iter, pipe.model)      # left out: the variant's default
    max_batch = pipe.bundle.manifest["max_batch"]
    if num > max_batch:
        raise FarError(f"--num {num} is larger than the bundle's max batch {max_batch}; "
                       f"re-export with --max-batch {num} or generate fewer.")
    pipe.check_labels(labels)
    # The whole run's graphs made and their shapes checked against the manifest (one sentence
    # on a mismatch) before the randomness is drawn or anything is written.
    pipe.backend.prepare(pipe.plan(num, num_iter, head_steps, cfg, head, **accel))
    m = pipe.model
    rnd = draw_randomness(seed, num, m["seq_len"], m["token_dim"], pipe.randomness_steps())
    with click.progressbar(length=num_iter, label="iterations", file=sys.stderr) as bar:
        images = pipe.generate(labels, K=num_iter, O=head_steps, cfg=cfg, cfg_schedule=cfg_schedule,
                               temperature=temperature, randomness=rnd, head=head,
                               progress=lambda it: bar.update(1), **accel)
    if save_randomness:
        rnd.save(save_randomness)
    write_png(out, grid(images))
    click.echo(f"wrote {out} ({num} images, classes {sorted(set(labels))})")


@main.command()
@click.argument("bundle", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(bundle, as_json):
    """This machine's CPU precisions and backends; with BUNDLE, what it holds (its sha256
    checked) and which backends can run it here."""
    from .info import bundle_info, machine_info
    report = bundle_info(bundle) if bundle else {"machine": machine_info()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if bundle:
        print_bundle(report)
    print_machine(report["machine"])


def print_bundle(report: dict) -> None:
    m = report["model"]
    click.echo(f"bundle      {report['bundle']} (format {report['format_version']}, hashes checked, graph shapes checked)")
    click.echo(f"digest      {report['digest']}")
    click.echo(f"model       {m['head_kind']} head, {m['seq_len']} tokens x {m['token_dim']}, "
               f"{m['num_classes']} classes, precision {report['precision']}, max batch {report['max_batch']}")
    click.echo(f"head steps  {', '.join(map(str, report['head_steps'])) or 'step graph only'}")
    for name, g in report["graphs"].items():
        compute = f" computed in {g['compute']}" if g.get("compute", "fp32") != "fp32" else ""
        click.echo(f"graph       {name}: {g['file']} ({g['megabytes']:.1f} MB, {g['precision']}{compute}, "
                   f"sha256 {g['sha256'][:16]})")
    if report.get("chosen_on"):
        click.echo(f"precisions  chosen per graph by measurement on {report['chosen_on']} "
                   "(far-export build --precision auto); runs there by default")
    if report.get("source"):
        click.echo(f"source      {report['source']}")
    for name, b in report["backends"].items():
        click.echo(f"backend     {name}: " + ("can run it" if b["available"] else f"no ({b['reason']})"))


def print_machine(machine: dict) -> None:
    from .cpu import describe_cpu, describe_precision
    click.echo(f"cpu         {describe_cpu(machine)}")
    for name, p in machine["precisions"].items():
        click.echo(f"precision   {describe_precision(name, p)}")
    for name, b in machine["cpu_backends"].items():
        detail = (f"{b.get('version', '')} " + (f"(CPU capabilities: {', '.join(b['cpu_capabilities'])})"
                                                 if b.get("cpu_capabilities") else "")).strip()
        click.echo(f"cpu backend {name}: " + (f"installed {detail}".rstrip() if b["available"]
                                               else f"no ({b['reason']})"))


# far-runtime[serve]: Ray Serve behind HTTP, and a load test for it (Ray is imported lazily).
from .serve.commands import loadtest, serve  # noqa: E402
main.add_command(serve)
main.add_command(loadtest)
# TensorRT engines built on the machine that runs them (TensorRT is imported lazily).
from .gpu.engines_cli import engines  # noqa: E402
main.add_command(engines)


if __name__ == "__main__":
    main()
