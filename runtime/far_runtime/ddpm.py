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


def _section_counts(respacing, num_steps: int) -> list[int]:
    """MAR's ``num_sampling_steps`` forms: an int, ``"N"``, ``"N1,N2,..."`` (one count per
    equal section of the original steps), ``"ddimN"`` (DDIM's integer stride) or ``""`` (all)."""
    if isinstance(respacing, bool):
        raise FarError(f"Diffusion sampling steps must be a count such as 100, got {respacing!r}.")
    if isinstance(respacing, int):
        return [respacing]
    text = str(respacing).strip()
    if not text:
        return [num_steps]
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise FarError(f"Diffusion sampling steps {respacing!r} is not a form MAR reads: use a count "
                       "such as '100', per-section counts such as '10,15,20', or 'ddimN'.") from None


def space_timesteps(num_steps: int, respacing) -> list[int]:
    """The original timesteps a respaced DDPM keeps, as MAR's ``space_timesteps`` picks them:
    per section, a running index advanced by a fractional stride and rounded each step."""
    text = respacing.strip() if isinstance(respacing, str) else None
    if text and text.startswith("ddim"):
        try:
            want = int(text[4:])
        except ValueError:
            raise FarError(f"Diffusion sampling steps {respacing!r} is not 'ddimN' with an integer N.") from None
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == want:
                return list(range(0, num_steps, stride))
        raise FarError(f"Diffusion sampling steps {respacing!r}: no integer stride takes exactly "
                       f"{want} of the {num_steps} original steps.")
    counts = _section_counts(respacing, num_steps)
    if any(c < 1 for c in counts):
        raise FarError(f"Diffusion sampling steps must be positive counts, got {respacing!r}.")
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise FarError(f"Diffusion sampling steps {respacing!r}: a section of {size} original "
                           f"steps cannot be divided into {count}.")
        stride = 1 if count == 1 else (size - 1) / (count - 1)
        idx = 0.0
        for _ in range(count):
            steps.append(start + round(idx))
            idx += stride
        start += size
    return sorted(set(steps))


def respaced_timesteps(num_steps: int, sampling_steps) -> list[int]:
    """Kept original timesteps for ``sampling_steps`` (any MAR form, see ``space_timesteps``)."""
    if isinstance(sampling_steps, int) and not isinstance(sampling_steps, bool) \
            and not 1 <= sampling_steps <= num_steps:
        raise FarError(f"Diffusion sampling steps must be in 1..{num_steps}, got {sampling_steps}.")
    return space_timesteps(num_steps, sampling_steps)


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


def ddpm_schedule(sampling_steps=100) -> DDPMSchedule:
    """The respaced schedule for ``sampling_steps``: a count or any of MAR's string forms."""
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
