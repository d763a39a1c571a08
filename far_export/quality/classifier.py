"""The small CNN whose logits and penultimate features score generated images (``score.py``).

Stored as safetensors: the weights, plus ``ref_mu`` / ``ref_sigma`` (mean and covariance of
the penultimate features of held-out real images), so scoring never regenerates them. This
module reads and runs it; the demo trains and writes it (``demo/classifier.py``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 128


class Classifier(nn.Module):
    def __init__(self, num_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()

        def block(cin, cout, pool=True):
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool2d(2)] if pool else [])
        self.conv = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128),
                                  *block(128, 128, pool=False))
        self.fc = nn.Linear(128, feature_dim)
        self.out = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 128] of images [B, 3, 32, 32] in [-1, 1]."""
        h = self.conv(x).mean(dim=(2, 3))
        return F.relu(self.fc(h))

    def forward(self, x):
        return self.out(self.features(x))


def to_tensor_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] to float32 [N, 3, H, W] in [-1, 1] (the VAE's and classifier's input)."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


@torch.no_grad()
def classify(model: Classifier, images_uint8: np.ndarray, batch: int = 500):
    """Logits [N, classes] and features [N, 128] of uint8 images [N, H, W, 3]."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images_uint8), batch):
        x = torch.from_numpy(to_tensor_range(images_uint8[i:i + batch]))
        f = model.features(x)
        feats.append(f)
        logits.append(model.out(f))
    return torch.cat(logits).numpy(), torch.cat(feats).double().numpy()


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def load_classifier(path: str) -> tuple[Classifier, np.ndarray, np.ndarray]:
    """The classifier and the reference feature mean and covariance stored with it."""
    from safetensors.torch import load_file
    from far_runtime.errors import FarError
    if not os.path.isfile(path):
        raise FarError(f"The classifier file {path} does not exist; run far-export train-demo.")
    sd = load_file(path)
    mu, sigma = sd.pop("ref_mu").numpy(), sd.pop("ref_sigma").numpy()
    model = Classifier(num_classes=sd["out.weight"].shape[0])
    model.load_state_dict(sd, strict=True)
    return model.eval(), mu, sigma
