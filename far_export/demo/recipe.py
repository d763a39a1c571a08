"""The whole demo recipe, stage by stage: classifier, VAE, tokens, FAR (and optionally MAR and
the flow-matching-only baseline), then evaluation. Every stage writes its file into ``out``;
with ``resume`` a stage whose file exists is loaded instead of retrained, so a run that was
stopped goes on where it was.

Files in ``out``: ``classifier.safetensors``, ``vae_demo.pth``, ``far_demo.pth``,
``far_demo.safetensors``, ``mar_demo.pth`` (with ``mar``), ``far_flow_only.pth`` (with
``table``), ``tokens.pt`` (cache, not shipped), ``report.json``, ``samples.png``, ``table.md``
(with ``table``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from far_runtime.files import write_json, write_text

from ..checkpoint import build_model, load_model_checkpoint, write_vae_checkpoint
from ..quality.score import DEMO_SAMPLING, sampler_kwargs
from .classifier import save_classifier, train_classifier
from .dataset import NUM_CLASSES, make_dataset
from .evaluate import evaluate, generate
from .train import FarRecipe, save_far, train
from .train_vae import encode_tokens, load_full_vae, train_vae

log = logging.getLogger(__name__)

TABLE_STEPS = (1, 2, 4, 8)


@dataclass
class DemoRecipe:
    seed: int = 0
    train_images: int = 40000
    classifier_images: int = 30000
    classifier_epochs: int = 2
    vae_steps: int = 600
    far: FarRecipe = field(default_factory=FarRecipe)
    mar_steps: int = 4000             # the shipped mar_demo.pth (RESULTS.md)
    eval_per_class: int = 50          # 500 images per score
    sampling: dict = field(default_factory=lambda: dict(DEMO_SAMPLING))

    def scaled(self, factor: float) -> "DemoRecipe":
        """Every step and image count times ``factor`` (a smoke run at e.g. 0.02)."""
        s = lambda n, lo: max(lo, int(n * factor))  # noqa: E731
        return replace(self, train_images=s(self.train_images, 200),
                       classifier_images=s(self.classifier_images, 200),
                       vae_steps=s(self.vae_steps, 2), mar_steps=s(self.mar_steps, 2),
                       eval_per_class=s(self.eval_per_class, 2),
                       far=replace(self.far, steps=s(self.far.steps, 2),
                                   warmup=s(self.far.warmup, 1)))


def _stage(name: str):
    log.info("== %s", name)
    return time.time()


def run_demo(out: str, recipe: DemoRecipe, resume: bool = True, mar: bool = False,
             table: bool = False) -> dict:
    os.makedirs(out, exist_ok=True)
    path = lambda name: os.path.join(out, name)  # noqa: E731
    have = lambda name: resume and os.path.exists(path(name))  # noqa: E731
    report = {"recipe": asdict(recipe), "seconds": {}}
    t_all = time.time()

    t = _stage("classifier")
    if not have("classifier.safetensors"):
        clf, info = train_classifier(recipe.seed, recipe.classifier_images,
                                     recipe.classifier_epochs)
        save_classifier(path("classifier.safetensors"), clf)
        report["classifier"] = info
    report["seconds"]["classifier"] = time.time() - t
    clf_path = path("classifier.safetensors")

    t = _stage("dataset")
    images, labels = make_dataset(recipe.train_images, recipe.seed + 100)
    report["seconds"]["dataset"] = time.time() - t

    t = _stage("vae")
    if have("vae_demo.pth"):
        vae = load_full_vae(path("vae_demo.pth"))
    else:
        vae, report["vae"] = train_vae(images, recipe.vae_steps, recipe.seed)
        write_vae_checkpoint(path("vae_demo.pth"), vae.state_dict(), vae.cfg.scale_factor)
    report["seconds"]["vae"] = time.time() - t

    t = _stage("tokens")
    if have("tokens.pt"):
        mean, std = torch.load(path("tokens.pt"), weights_only=True)
    else:
        mean, std = encode_tokens(vae, images)
        torch.save((mean, std), path("tokens.pt"))
    report["seconds"]["tokens"] = time.time() - t

    trained = {}
    runs = [("far", recipe.far, "far_demo.pth", "far_demo.safetensors", "far_demo_small")]
    if mar:
        runs.append(("mar", replace(recipe.far, objective="diffusion", steps=recipe.mar_steps),
                     "mar_demo.pth", None, "mar_demo_small"))
    if table:
        runs.append(("flow_only", replace(recipe.far, objective="flow"), "far_flow_only.pth",
                     None, "far_demo_small_flow_only"))
    for name, far_recipe, file, st_file, model_name in runs:
        t = _stage(f"{name} ({far_recipe.objective}, {far_recipe.steps} steps)")
        if not have(file):
            def save(models, step, metrics):          # called by train() before it returns
                save_far(path(file), *models, far_recipe, model_name,
                         path(st_file) if st_file else None)
            *_, report[name] = train(mean, std, labels, far_recipe, NUM_CLASSES, save=save)
        trained[name] = build_model(load_model_checkpoint(path(file), "ema", with_hash=False))
        report["seconds"][name] = time.time() - t
    report["seconds"]["training_total"] = time.time() - t_all

    t = _stage("evaluation")
    vae.eval()
    ev = dict(per_class=recipe.eval_per_class, classifier_path=clf_path, seed=recipe.seed + 7,
              **sampler_kwargs(recipe.sampling))
    report["eval"] = {"far": evaluate(*trained["far"], vae, **ev)}
    write_sample_grid(path("samples.png"), trained["far"], vae, recipe)
    if mar:
        report["eval"]["mar"] = evaluate(*trained["mar"], vae, **ev)
    if table:
        rows = {}
        for name in ("far", "flow_only"):
            for o in TABLE_STEPS:
                rows[(name, o)] = evaluate(*trained[name], vae, **{**ev, "head_steps": o})
        report["table"] = {f"{n}@O={o}": v for (n, o), v in rows.items()}
        write_text(path("table.md"), format_table(rows, recipe))
    report["seconds"]["evaluation"] = time.time() - t
    report["seconds"]["total"] = time.time() - t_all
    write_json(path("report.json"), report)
    return report


def format_table(rows: dict, recipe: DemoRecipe) -> str:
    n = rows[("far", TABLE_STEPS[0])]["n"]
    s = recipe.sampling
    lines = [f"K = {s['K']}, CFG {s['cfg']} ({s['cfg_schedule']}), temperature "
             f"{s['temperature']}, {n} images "
             f"({n // NUM_CLASSES} per class), sampler seed {recipe.seed + 7}.", "",
             "| head | O | accuracy | Fréchet |", "|---|---|---|---|"]
    for (name, o), s in rows.items():
        label = "shortcut (FAR)" if name == "far" else "flow matching only"
        lines.append(f"| {label} | {o} | {s['accuracy']:.3f} | {s['frechet']:.2f} |")
    return "\n".join(lines) + "\n"


def write_sample_grid(path: str, model, vae, recipe: DemoRecipe, per_class: int = 10) -> None:
    """One row per class: FAR at the recipe's sampling settings."""
    from far_runtime.images import grid, write_png
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    images = generate(*model, vae, labels, seed=recipe.seed + 7, **sampler_kwargs(recipe.sampling))
    write_png(path, grid(images, cols=per_class))
