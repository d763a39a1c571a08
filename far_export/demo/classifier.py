"""Training the quality classifier (``far_export/quality/classifier.py``) on the ten demo
classes, and writing it with the reference feature statistics of held-out real images.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..quality.classifier import Classifier, classify, feature_stats, to_tensor_range
from .dataset import NUM_CLASSES, make_dataset

log = logging.getLogger(__name__)

REF_SEED = 1001          # held-out real images for the reference feature statistics
REF_COUNT = 10000


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (5x5, reflect padding) of images [B, 3, H, W]."""
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    k2 = (k[:, None] * k[None, :]).expand(3, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=3)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur half of the batch (sigma 0.4..1.2): generated images are decoded by a small VAE
    and come out slightly soft; a classifier that only saw sharp images calls soft ones
    wrong (82% on VAE reconstructions of real images without this, vs 99.7% on the images)."""
    n = x.shape[0] // 2
    sigma = 0.4 + 0.8 * torch.rand((), generator=g).item()
    return torch.cat([blur(x[:n], sigma), x[n:]])


def train_classifier(seed: int = 0, train_count: int = 30000, epochs: int = 2,
                     batch: int = 128, lr: float = 2e-3) -> tuple[Classifier, dict]:
    """Train on fresh dataset images (seed ``seed + 1``); returns the model and its metrics."""
    torch.manual_seed(seed)
    images, labels = make_dataset(train_count, seed + 1)
    x_all = torch.from_numpy(to_tensor_range(images))
    y_all = torch.from_numpy(labels)
    model = Classifier(NUM_CLASSES)
    steps = epochs * (train_count // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    step, t0 = 0, time.time()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(train_count, generator=g)
        for i in range(train_count // batch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(augment(x_all[idx], g)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0 or step == steps:
                log.info("classifier step %d/%d  loss %.4f  (%.0fs)", step, steps, loss.item(),
                         time.time() - t0)
    test_images, test_labels = make_dataset(5000, seed + 2)
    logits, _ = classify(model, test_images)
    acc = float((logits.argmax(1) == test_labels).mean())
    log.info("classifier held-out accuracy %.4f", acc)
    return model, {"test_accuracy": acc, "train_seconds": time.time() - t0}


def reference_stats(model: Classifier) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of ``REF_COUNT`` held-out real images (seed ``REF_SEED``)."""
    images, _ = make_dataset(REF_COUNT, REF_SEED)
    _, feats = classify(model, images)
    return feature_stats(feats)


def save_classifier(path: str, model: Classifier) -> None:
    from ..checkpoint import write_safetensors
    mu, sigma = reference_stats(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["ref_mu"] = torch.from_numpy(mu)
    sd["ref_sigma"] = torch.from_numpy(sigma)
    write_safetensors(path, sd, {"ref_seed": REF_SEED, "ref_count": REF_COUNT})
