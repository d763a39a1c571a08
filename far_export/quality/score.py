"""Image quality of generated demo images: class accuracy and an FID-style Fréchet distance.

``score_images(images, labels)`` runs the shipped classifier (``classifier.py``; its file,
``classifier.safetensors``, ships with the embedded default in ``defaults.ASSETS``) on uint8
images [N, 32, 32, 3]:
``accuracy`` is how often the top class is the requested label, ``frechet`` the Fréchet
distance between the Gaussian of the images' penultimate features and that of 10k held-out
real images (stored with the classifier). Like FID it is biased upward for small N; compare
scores at the same N.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from ..defaults import ASSETS
from .classifier import classify, feature_stats, load_classifier

DEFAULT_CLASSIFIER = os.path.join(ASSETS, "classifier.safetensors")

# How the demo's images are drawn wherever they are scored (train-demo's evaluation, verify's
# accuracy / Fréchet gates, the precision table) and in the README: chosen by a sweep of CFG
# scale and schedule on the shipped FAR (RESULTS.md, "Sampling settings").
DEMO_SAMPLING = {"K": 16, "O": 8, "cfg": 5.0, "cfg_schedule": "constant", "temperature": 0.8}


def sampler_kwargs(settings: dict = DEMO_SAMPLING) -> dict:
    """Sampling settings as keyword arguments of the reference sampler (``sample_tokens``)."""
    return {"num_iter": settings["K"], "head_steps": settings["O"], "cfg": settings["cfg"],
            "cfg_schedule": settings["cfg_schedule"], "temperature": settings["temperature"]}


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), via symmetric eigendecompositions."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1                      # similar to S1 S2, symmetric PSD
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


@functools.lru_cache(maxsize=4)
def _cached_classifier(path: str):
    return load_classifier(path)


def image_features(images_uint8: np.ndarray, classifier_path: str | None = None):
    """Logits and penultimate features of uint8 images [N, H, W, 3]."""
    model, _, _ = _cached_classifier(classifier_path or DEFAULT_CLASSIFIER)
    return classify(model, _check_images(images_uint8))


def _check_images(images) -> np.ndarray:
    from far_runtime.errors import FarError
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise FarError(f"score_images takes uint8 images [N, H, W, 3], got {images.dtype} "
                       f"{tuple(images.shape)}.")
    return images


def score_images(images_uint8: np.ndarray, labels, classifier_path: str | None = None,
                 reference=None) -> dict:
    """``{"accuracy", "frechet", "n"}`` of images [N, 32, 32, 3] uint8 requested as ``labels``.

    ``reference``: uint8 images to compare against instead of the stored real statistics.
    """
    images_uint8 = _check_images(images_uint8)
    _, ref_mu, ref_sigma = _cached_classifier(classifier_path or DEFAULT_CLASSIFIER)
    logits, feats = image_features(images_uint8, classifier_path)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(logits):
        from far_runtime.errors import FarError
        raise FarError(f"score_images got {len(logits)} images but {len(labels)} labels.")
    if reference is not None:
        ref_mu, ref_sigma = feature_stats(image_features(reference, classifier_path)[1])
    mu, sigma = feature_stats(feats)
    return {"accuracy": float((logits.argmax(1) == labels).mean()),
            "frechet": frechet_distance(mu, sigma, ref_mu, ref_sigma),
            "n": int(len(labels))}
