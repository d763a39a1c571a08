"""The FAR-Causal reference sampler: L steps of one token each, the shortcut head O steps per token.

Randomness: a ``far_runtime.Randomness``; its ``noise`` [B, L, C] is used per position (token
i starts from ``temperature * noise[:, i]``, its CFG twin shares it). Its ``orders`` are
**unused**: the order is raster by construction (identity), so any permutation is accepted
and ignored; ``draw_randomness`` still draws them so one seed gives the same noise here and
in the runtime. ``use_cache=False`` recomputes the whole prefix every step (``forward``), the
no-cache path the cache is checked and benchmarked against. ``trace`` receives the token
latent after every step, ``progress`` the step index.
"""
from __future__ import annotations

import numpy as np
import torch

from far_runtime.variants.causal import cfg_at as causal_cfg_at, step_position
from far_runtime.errors import FarError
from far_runtime.randomness import Randomness, draw_randomness
from far_runtime.schedule import check_head_steps

from .causal import CausalBackbone
from .heads import SimpleMLPAdaLN
from .sampler import shortcut_sample


def check_labels(labels, num_classes: int) -> np.ndarray:
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise FarError(f"Class labels must be integers, got {labels!r}.") from None
    if len(labels) < 1:
        raise FarError("Batch size must be at least 1.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FarError(f"Class labels must be in 0..{num_classes - 1}, got {labels.tolist()}.")
    return labels


@torch.no_grad()
def sample_causal(backbone: CausalBackbone, head: SimpleMLPAdaLN, labels, head_steps: int = 8,
                  cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                  seed: int = 0, randomness: Randomness | None = None, use_cache: bool = True,
                  trace: list | None = None, progress=None) -> torch.Tensor:
    """Token latents [B, L, C] of FAR-Causal sampling."""
    c = backbone.cfg
    L, C, P = c.seq_len, c.token_dim, c.class_tokens
    labels = check_labels(labels, c.num_classes)
    B = len(labels)
    check_head_steps(head_steps, "O (shortcut head steps)")
    causal_cfg_at(0, L, cfg, cfg_schedule)                 # validates the schedule name
    if randomness is None:
        randomness = draw_randomness(seed, B, L, C)
    randomness.check(B, L, C)
    use_cfg = cfg != 1.0
    rows = 2 * B if use_cfg else B
    lab = np.concatenate([labels, np.full(B, c.num_classes)]) if use_cfg else labels
    lab_t = torch.from_numpy(lab)
    noise = torch.from_numpy(randomness.noise)
    tokens = torch.zeros(B, L, C)
    z, cache = backbone.prefill(lab_t)
    for i in range(L):
        if i > 0:
            if use_cache:
                pos = torch.tensor([step_position(i, P)], dtype=torch.int64)
                z, cache = backbone.step(tokens[:, i - 1].repeat(rows // B, 1), pos, cache)
            else:
                z = backbone(tokens[:, :i].repeat(rows // B, 1, 1), lab_t)[:, i]
        cfg_i = causal_cfg_at(i, L, cfg, cfg_schedule) if use_cfg else None
        tokens[:, i] = shortcut_sample(head, noise[:, i] * temperature, z, head_steps, cfg_i)
        if trace is not None:
            trace.append(tokens.clone())
        if progress is not None:
            progress(i)
    return tokens
