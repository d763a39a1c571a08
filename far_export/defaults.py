"""The embedded default: the small trained FAR and VAE that ship inside the package."""
from __future__ import annotations

import os

ASSETS = os.path.join(os.path.dirname(__file__), "demo", "assets")
DEFAULT_CHECKPOINT = os.path.join(ASSETS, "far_demo.pth")
DEFAULT_VAE = os.path.join(ASSETS, "vae_demo.pth")


def default_paths(checkpoint: str | None, vae: str | None) -> tuple[str, str | None]:
    """The embedded default checkpoint (and its VAE) when no checkpoint is given."""
    if checkpoint is None:
        return DEFAULT_CHECKPOINT, vae or DEFAULT_VAE
    return checkpoint, vae
