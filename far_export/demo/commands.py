"""``far-export train-demo``: reproduce the embedded default (and the Table-4 comparison)."""
from __future__ import annotations

import logging
import os
import shutil

import click

log = logging.getLogger(__name__)

SHIPPED = ("far_demo.pth", "far_demo.safetensors", "vae_demo.pth", "classifier.safetensors",
           "mar_demo.pth")


@click.command("train-demo")
@click.option("--out", default="out/demo", show_default=True,
              help="Folder for the checkpoints, the token cache and report.json.")
@click.option("--seed", default=0, show_default=True, help="Seed of every stage.")
@click.option("--threads", default=2, show_default=True,
              help="torch threads (use 1 on a machine other jobs share: oversubscribed "
                   "OpenMP threads run many times slower).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Load the stages whose files already exist in --out instead of retraining.")
@click.option("--mar", is_flag=True, help="Also train the MAR diffusion-head model (mar_demo.pth).")
@click.option("--table", is_flag=True,
              help="Also train a flow-matching-only head and score both at O = 1, 2, 4, 8.")
@click.option("--scale", default=1.0, show_default=True,
              help="Multiply every step and image count (0.02 for a smoke run).")
@click.option("--install", is_flag=True,
              help="Copy the shipped files into far_export/demo/assets afterwards.")
def train_demo(out, seed, threads, resume, mar, table, scale, install):
    """Train the demo classifier, VAE and FAR from scratch (about 40 minutes on 2 idle cores)."""
    import json

    import torch

    from .recipe import DemoRecipe, run_demo
    torch.set_num_threads(threads)
    recipe = DemoRecipe(seed=seed)
    recipe.far.seed = seed
    if scale != 1.0:
        recipe = recipe.scaled(scale)
    report = run_demo(out, recipe, resume=resume, mar=mar, table=table)
    click.echo(json.dumps({"seconds": report["seconds"], "eval": report["eval"]}, indent=2,
                          default=float))
    if install:
        from ..defaults import ASSETS
        os.makedirs(ASSETS, exist_ok=True)
        for name in SHIPPED:
            if os.path.exists(os.path.join(out, name)):
                shutil.copyfile(os.path.join(out, name), os.path.join(ASSETS, name))
                click.echo(f"installed {name}")
