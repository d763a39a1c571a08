"""MAR's DDPM schedule in numpy: 1000-step cosine betas, respaced, learned-range variance.

One source of coefficients for both the PyTorch reference and the runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import FarError

TRAIN_STEPS = 1000


def cosine_betas(num_steps: int = TRAIN_STEPS, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def respaced_timesteps(num_steps: int, sampling_steps: int) -> list[int]:
    """Evenly spaced original timesteps (improved-diffusion's ``space_timesteps`` for one section)."""
    if not 1 <= sampling_steps <= num_steps:
        raise FarError(f"Diffusion sampling steps must be in 1..{num_steps}, got {sampling_steps}.")
    if sampling_steps == 1:
        return [0]
    stride = (num_steps - 1) / (sampling_steps - 1)
    return sorted({round(i * stride) for i in range(sampling_steps)})


@dataclass(frozen=True)
class DDPMSchedule:
    timestep_map: np.ndarray       # [S] original timestep index fed to the head
    betas: np.ndarray              # [S] respaced betas
    sqrt_recip_ac: np.ndarray
    sqrt_recipm1_ac: np.ndarray
    coef1: np.ndarray              # posterior mean coefficient on x0
    coef2: np.ndarray              # posterior mean coefficient on x_t
    log_var_min: np.ndarray        # posterior log variance, clipped
    log_var_max: np.ndarray        # log(betas)

    @property
    def steps(self) -> int:
        return len(self.timestep_map)


def ddpm_schedule(sampling_steps: int = 100) -> DDPMSchedule:
    base_ac = np.cumprod(1.0 - cosine_betas())
    use = respaced_timesteps(TRAIN_STEPS, sampling_steps)
    betas, last = [], 1.0
    for i in use:
        betas.append(1.0 - base_ac[i] / last)
        last = base_ac[i]
    betas = np.array(betas, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_var_clipped = np.append(post_var[1], post_var[1:]) if len(post_var) > 1 else post_var
    return DDPMSchedule(
        timestep_map=np.array(use, dtype=np.int64),
        betas=betas,
        sqrt_recip_ac=np.sqrt(1.0 / ac),
        sqrt_recipm1_ac=np.sqrt(1.0 / ac - 1.0),
        coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        log_var_min=np.log(np.maximum(post_var_clipped, 1e-20)),
        log_var_max=np.log(betas),
    )
