"""``far-runtime engines`` (also ``far-export engines``): TensorRT engines for a bundle, built on
the machine that runs them (see ``engine_build.py``); needs no torch and no far-export."""
from __future__ import annotations

import json

import click

from ..schedule import MAX_K
from .engine_manifest import HARDWARE_LEVELS, PRECISIONS, default_engine_dir


@click.command()
@click.argument("bundle")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Must be the bundle's (default): fp16 engines from an fp16 bundle's graphs, int8 from "
                   "an int8 bundle's Q/DQ graphs (far-export build --precision ...).")
@click.option("--out", help="Engine folder (default BUNDLE/engines/PRECISION).")
@click.option("--k", "k_range", default=f"1:{MAX_K}", show_default=True,
              help="Range of K (autoregressive iterations) the engines must serve, MIN:MAX.")
@click.option("--batch", "batch_range", help="Range of batch sizes, MIN:MAX (default 1:the bundle's max batch).")
@click.option("--max-profiles", default=4, show_default=True, help="Optimisation profiles per engine at most.")
@click.option("--version-compatible", is_flag=True, help="Engines that later TensorRT versions can run.")
@click.option("--hardware-compatible", type=click.Choice(HARDWARE_LEVELS), default="none", show_default=True,
              help="Engines for other GPUs: of the same compute capability, or any Ampere or newer.")
@click.option("--optimization-level", default=3, show_default=True, help="TensorRT builder optimisation level 0..5.")
@click.option("--workspace-gb", type=float, help="Limit TensorRT's builder workspace.")
@click.option("--graphs", help="Only these graphs, comma-separated (default: every graph of the bundle).")
@click.option("--force", is_flag=True, help="Rebuild even engines whose cache key is unchanged.")
@click.option("--profiles-only", is_flag=True,
              help="Print the derived optimisation profiles as JSON and build nothing (needs no TensorRT).")
def engines(bundle, precision, out, k_range, batch_range, max_profiles, version_compatible,
            hardware_compatible, optimization_level, workspace_gb, graphs, force, profiles_only):
    """Build TensorRT engines from the bundle's graphs on this GPU (reused when unchanged)."""
    from ..bundle import load_bundle
    from .engine_build import build_engines
    from .engine_profiles import engine_profiles, parse_range
    b = load_bundle(bundle, check_hashes=not profiles_only)
    k = parse_range(k_range, "k", 1, MAX_K)
    max_batch = b.manifest["max_batch"]
    bt = parse_range(batch_range, "batch", 1, max_batch) if batch_range else (1, max_batch)
    names = [g.strip() for g in graphs.split(",") if g.strip()] if graphs else None
    click.echo(f"deriving profiles from the shape plans of K {k[0]}..{k[1]}, batch {bt[0]}..{bt[1]}",
               err=True)
    if profiles_only:
        click.echo(json.dumps(engine_profiles(b, k, bt, max_profiles, names), indent=2))
        return
    m = build_engines(bundle, precision, out, k, bt, max_profiles, version_compatible,
                      hardware_compatible, optimization_level, workspace_gb, names, force,
                      progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"{len(m['engines'])} {m['precision']} engines ({m['built']} built, {m['reused']} reused) for "
               f"{m['built_on']['gpu']} (sm {m['built_on']['compute_capability']}), TensorRT "
               f"{m['built_on']['tensorrt']} ({m['built_on'].get('tensorrt_source', 'unknown')}, CUDA "
               f"{m['built_on']['tensorrt_cuda']}), in {out or default_engine_dir(bundle, m['precision'])}")
