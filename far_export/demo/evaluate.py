"""Generate labelled images with the reference sampler and score them (``score_images``)."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from far_runtime.images import to_uint8

from ..reference.sampler import sample_tokens
from .dataset import NUM_CLASSES
from .score import score_images

log = logging.getLogger(__name__)


def balanced_labels(per_class: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.tile(np.arange(num_classes), per_class)


@torch.no_grad()
def generate(backbone, head, vae, labels, num_iter: int = 16, head_steps: int = 8,
             cfg: float = 1.0, seed: int = 0, batch: int = 200, **kw) -> np.ndarray:
    """uint8 images [N, 32, 32, 3]; batch ``i`` uses sampler seed ``seed + i``."""
    labels = np.asarray(labels)
    out = []
    for i, start in enumerate(range(0, len(labels), batch)):
        tokens = sample_tokens(backbone, head, labels[start:start + batch], num_iter=num_iter,
                               head_steps=head_steps, cfg=cfg, seed=seed + i, **kw)
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
    log.info("eval %s: accuracy %.3f  frechet %.2f  (n=%d, %.0fs)",
             " ".join(f"{k}={v}" for k, v in sample_kw.items()), score["accuracy"],
             score["frechet"], score["n"], score["seconds"])
    return score
