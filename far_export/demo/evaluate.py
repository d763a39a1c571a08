"""Generate labelled images with the reference sampler of any family and score them
(``quality.score.score_images``): accuracy and Fréchet distance.

    python -m far_export.demo.evaluate --checkpoint far_export/demo/assets/far_causal_demo.pth \
        --per-class 50 --O 1,2,4,8 --cfg 5 --schedule constant --temperature 0.8 --far

scores a checkpoint (the shipped FAR-Causal by default; FAR and MAR at K = 16) at each O,
CFG and temperature, with ``--far`` the shipped FAR beside it. Images are decoded by the
shipped VAE and scored by the shipped classifier; batch ``i`` uses sampler seed ``seed + i``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import torch

from far_runtime.images import to_uint8

from ..quality.score import score_images
from ..reference.causal import CausalBackbone
from ..families.causal import sample_causal
from ..reference.sampler import sample_tokens
from .dataset import NUM_CLASSES

log = logging.getLogger(__name__)

# Images per sampler call: seeds go per call, so these are part of every score's definition
# (the figures in RESULTS.md and the README were drawn with them).
BATCH = {"masked": 200, "causal": 250}
MASKED_K = 16                                  # K of FAR / MAR rows (the demo's setting)


def balanced_labels(per_class: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.tile(np.arange(num_classes), per_class)


def family(backbone) -> str:
    return "causal" if isinstance(backbone, CausalBackbone) else "masked"


def sample(backbone, head, labels, **kw) -> torch.Tensor:
    """Token latents from the reference sampler of ``backbone``'s family; K is ``MASKED_K``
    unless given. FAR-Causal predicts one token per step, so K may only be left out or be L."""
    if family(backbone) == "causal":
        K = kw.pop("num_iter", None)
        if K not in (None, backbone.cfg.seq_len):
            raise ValueError(f"FAR-Causal's K is L = {backbone.cfg.seq_len}, got {K}")
        return sample_causal(backbone, head, labels, **kw)
    return sample_tokens(backbone, head, labels, **{"num_iter": MASKED_K, **kw})


@torch.no_grad()
def generate(backbone, head, vae, labels, seed: int = 0, batch: int | None = None,
             **kw) -> np.ndarray:
    """uint8 images [N, 32, 32, 3]; batch ``i`` uses sampler seed ``seed + i``."""
    labels = np.asarray(labels)
    batch = batch or BATCH[family(backbone)]
    out = []
    for i, start in enumerate(range(0, len(labels), batch)):
        tokens = sample(backbone, head, labels[start:start + batch], seed=seed + i, **kw)
        out.append(to_uint8(vae(tokens).numpy()))
    return np.concatenate(out)


def evaluate(backbone, head, vae, per_class: int = 50, classifier_path: str | None = None,
             **sample_kw) -> dict:
    """Accuracy and Fréchet distance of ``10 * per_class`` generated images."""
    t0 = time.time()
    labels = balanced_labels(per_class)
    images = generate(backbone, head, vae, labels, **sample_kw)
    score = score_images(images, labels, classifier_path)
    score["seconds"] = time.time() - t0
    log.info("eval %s %s: accuracy %.3f  frechet %.2f  (n=%d, %.0fs)", family(backbone),
             " ".join(f"{k}={v}" for k, v in sample_kw.items()), score["accuracy"],
             score["frechet"], score["n"], score["seconds"])
    return score


# --- the command ----------------------------------------------------------------------------

def _numbers(text: str, kind, option: str, p: argparse.ArgumentParser) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        p.error(f"{option} takes comma-separated {kind.__name__}s, got {text!r}.")
    return values


def parse_options(argv=None):
    """The options, each checked: a bad one is one sentence from argparse (exit 2)."""
    from far_runtime.errors import FarError
    from far_runtime.options import as_finite, check_seed
    from far_runtime.schedule import check_head_steps
    from ..defaults import ASSETS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=os.path.join(ASSETS, "far_causal_demo.pth"))
    p.add_argument("--vae", default=os.path.join(ASSETS, "vae_demo.pth"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--O", default="1,2,4,8")
    p.add_argument("--cfg", default="5.0", help="comma-separated CFG scales")
    p.add_argument("--schedule", default="constant", choices=("constant", "linear"))
    p.add_argument("--temperature", default="0.8", help="comma-separated temperatures")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--far", action="store_true", help=f"Also score the shipped FAR (K = {MASKED_K}).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON report path.")
    a = p.parse_args(argv)
    a.Os = _numbers(a.O, int, "--O", p)
    a.cfgs = _numbers(a.cfg, float, "--cfg", p)
    a.temperatures = _numbers(a.temperature, float, "--temperature", p)
    try:
        for o in a.Os:
            check_head_steps(o, "--O")
        for c in a.cfgs:
            as_finite(c, "--cfg")
        for t in a.temperatures:
            if as_finite(t, "--temperature") < 0:
                raise FarError(f"--temperature must be >= 0, got {t}.")
        check_seed(a.seed)
        if a.per_class < 1 or a.threads < 1:
            raise FarError(f"--per-class and --threads must be at least 1, got {a.per_class} and {a.threads}.")
        for path, what in ((a.checkpoint, "--checkpoint"), (a.vae, "--vae")):
            if not os.path.isfile(path):
                raise FarError(f"{what} {path} is not a file.")
        if a.out:
            from far_runtime.files import check_writable_file
            check_writable_file(a.out, "--out")
    except FarError as e:
        p.error(str(e))
    return a, p


def main(argv=None) -> None:
    from far_runtime.errors import FarError
    from ..checkpoint import build_model, build_vae, load_model_checkpoint, load_vae_checkpoint
    from ..defaults import DEFAULT_CHECKPOINT
    a, p = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    try:
        vae = build_vae(load_vae_checkpoint(a.vae))
        model = build_model(load_model_checkpoint(a.checkpoint))
        far = build_model(load_model_checkpoint(DEFAULT_CHECKPOINT)) if a.far else None
    except FarError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    rows, n = [], len(a.Os) * len(a.cfgs) * len(a.temperatures)
    for o in a.Os:
        for cfg in a.cfgs:
            for temp in a.temperatures:
                log.info("row %d/%d: O=%d cfg=%g temperature=%g", len(rows) + 1, n, o, cfg, temp)
                kw = dict(cfg=cfg, cfg_schedule=a.schedule, temperature=temp, seed=a.seed)
                row = {"O": o, **kw, "checkpoint": evaluate(*model, vae, a.per_class, head_steps=o, **kw)}
                if far:
                    row["far"] = evaluate(*far, vae, a.per_class, head_steps=o, **kw)
                rows.append(row)
    report = {"checkpoint": a.checkpoint, "per_class": a.per_class, "rows": rows}
    if a.out:
        from far_runtime.files import write_json
        write_json(a.out, report)
        log.info("wrote %s", a.out)
    print(json.dumps(report, indent=1, default=float))           # the report itself, on stdout


if __name__ == "__main__":
    main()
