"""Score FAR-Causal (and FAR beside it) on the demo: accuracy and Fréchet at O = 1, 2, 4, 8.

    python -m far_export.demo.evaluate_causal --checkpoint far_export/demo/assets/far_causal_demo.pth \
        --per-class 50 --O 1,2,4,8 --cfg 5 --schedule constant --temperature 0.8 --far

Images are drawn with the reference samplers (``sample_causal``, and ``sample_tokens`` at
K = 16 for FAR), decoded by the shipped VAE and scored by the shipped classifier
(``score.score_images``); batch ``i`` uses sampler seed ``seed + i`` as ``evaluate.py`` does.
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

from ..checkpoint import build_model, load_model_checkpoint, load_vae_checkpoint, build_vae
from ..families.causal import sample_causal
from .evaluate import balanced_labels, evaluate
from .score import score_images

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_causal(backbone, head, vae, labels, head_steps: int = 8, cfg: float = 1.0,
                    seed: int = 0, batch: int = 250, **kw) -> np.ndarray:
    """uint8 images [N, 32, 32, 3]; batch ``i`` uses sampler seed ``seed + i``."""
    labels = np.asarray(labels)
    out = []
    for i, start in enumerate(range(0, len(labels), batch)):
        tokens = sample_causal(backbone, head, labels[start:start + batch], head_steps=head_steps,
                               cfg=cfg, seed=seed + i, **kw)
        out.append(to_uint8(vae(tokens).numpy()))
    return np.concatenate(out)


def evaluate_causal(backbone, head, vae, per_class: int = 50, **kw) -> dict:
    t0 = time.time()
    labels = balanced_labels(per_class)
    score = score_images(generate_causal(backbone, head, vae, labels, **kw), labels)
    score["seconds"] = time.time() - t0
    log.info("causal %s: accuracy %.3f  frechet %.2f  (n=%d, %.0fs)",
             " ".join(f"{k}={v}" for k, v in kw.items()), score["accuracy"], score["frechet"],
             score["n"], score["seconds"])
    return score


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
    from far_runtime.options import as_finite, check_seed
    from far_runtime.schedule import check_head_steps
    from far_runtime.errors import FarError
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
    p.add_argument("--far", action="store_true", help="Also score the shipped FAR (K = 16).")
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
    from ..defaults import ASSETS
    a, p = parse_options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    try:
        vae = build_vae(load_vae_checkpoint(a.vae))
        causal = build_model(load_model_checkpoint(a.checkpoint))
        far = build_model(load_model_checkpoint(os.path.join(ASSETS, "far_demo.pth"))) if a.far else None
    except FarError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    rows, n = [], len(a.Os) * len(a.cfgs) * len(a.temperatures)
    for o in a.Os:
        for cfg in a.cfgs:
            for temp in a.temperatures:
                log.info("row %d/%d: O=%d cfg=%g temperature=%g", len(rows) + 1, n, o, cfg, temp)
                kw = dict(cfg=cfg, cfg_schedule=a.schedule, temperature=temp, seed=a.seed)
                row = {"O": o, **kw, "causal": evaluate_causal(*causal, vae, a.per_class,
                                                               head_steps=o, **kw)}
                if far:
                    row["far"] = evaluate(*far, vae, a.per_class, num_iter=16, head_steps=o, **kw)
                rows.append(row)
    report = {"checkpoint": a.checkpoint, "per_class": a.per_class, "rows": rows}
    if a.out:
        from far_runtime.files import write_json
        write_json(a.out, report)
        log.info("wrote %s", a.out)
    print(json.dumps(report, indent=1, default=float))           # the report itself, on stdout


if __name__ == "__main__":
    main()
