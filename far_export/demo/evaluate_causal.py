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
from ..reference.causal_sampler import sample_causal
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


def main(argv=None) -> None:
    from ..defaults import ASSETS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=os.path.join(ASSETS, "far_causal_demo.pth"))
    p.add_argument("--vae", default=os.path.join(ASSETS, "vae_demo.pth"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--O", default="1,2,4,8")
    p.add_argument("--cfg", default="5.0", help="comma-separated CFG scales")
    p.add_argument("--schedule", default="constant")
    p.add_argument("--temperature", default="0.8", help="comma-separated temperatures")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--far", action="store_true", help="Also score the shipped FAR (K = 16).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON report path.")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    vae = build_vae(load_vae_checkpoint(a.vae))
    causal = build_model(load_model_checkpoint(a.checkpoint))
    far = build_model(load_model_checkpoint(os.path.join(ASSETS, "far_demo.pth"))) if a.far else None
    rows = []
    for o in [int(x) for x in a.O.split(",")]:
        for cfg in [float(x) for x in a.cfg.split(",")]:
            for temp in [float(x) for x in a.temperature.split(",")]:
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
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
