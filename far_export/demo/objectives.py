"""The three head objectives, each mapping (head, ema head, z, clean tokens) to a loss.

- ``shortcut`` (FAR, SPEC "Training"): flow matching at the smallest step d = 1/128 on 7/8 of
  the rows; self-consistency on 1/8: for d = 2^-k (k = 0..6) and t on the d-grid, the target
  is the mean of two EMA-head steps of size d/2 (the second from t + d/2), clipped to +-4,
  without gradient.
- ``flow`` (the Table-4 baseline): flow matching only. The step-size input is drawn at random
  from all eight levels and the target ignores it, so the head learns one velocity field that
  any O then integrates with plain Euler steps (an untrained level embedding would otherwise
  be out of distribution at O < 128).
- ``diffusion`` (MAR): epsilon MSE plus improved-DDPM's variational bound for the learned
  variance range (mean detached), on the 1000-step cosine schedule of ``far_runtime.ddpm``.

Flow convention: ``x_t = (1 - t) * noise + t * data``, ``v = data - noise``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from far_runtime.ddpm import TRAIN_STEPS, ddpm_schedule

MAX_LEVEL = 7                 # d = 1/128
SC_FRACTION = 1 / 8
SC_CLIP = 4.0


def _rows(x, t, level):
    n = x.shape[0]
    return t.reshape(n), level.reshape(n).to(x.dtype)


def shortcut_loss(head, ema_head, z, x1, g: torch.Generator) -> torch.Tensor:
    n = x1.shape[0]
    n_sc = max(1, int(n * SC_FRACTION))
    x0 = torch.randn(x1.shape, generator=g)
    # Self-consistency rows: level k (d = 2^-k), t on the grid of d.
    k = torch.randint(0, MAX_LEVEL, (n_sc,), generator=g)
    d = 0.5 ** k.float()
    t_sc = torch.floor(torch.rand(n_sc, generator=g) * 2.0 ** k.float()) * d
    # Flow rows: the smallest step, t uniform.
    t_fm = torch.rand(n - n_sc, generator=g)
    t = torch.cat([t_sc, t_fm])
    level = torch.cat([k, torch.full((n - n_sc,), MAX_LEVEL)]).float()
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    with torch.no_grad():
        zs, xs, half = z[:n_sc].detach(), xt[:n_sc], (d / 2)[:, None]
        v1 = ema_head(xs, t_sc, zs, level[:n_sc] + 1)
        v2 = ema_head(xs + v1 * half, t_sc + half[:, 0], zs, level[:n_sc] + 1)
        target_sc = ((v1 + v2) / 2).clamp(-SC_CLIP, SC_CLIP)
    target = torch.cat([target_sc, (x1 - x0)[n_sc:]])
    return F.mse_loss(head(xt, t, z, level), target)


def flow_loss(head, ema_head, z, x1, g: torch.Generator) -> torch.Tensor:
    n = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(n, generator=g)
    level = torch.randint(0, MAX_LEVEL + 1, (n,), generator=g).float()
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return F.mse_loss(head(xt, t, z, level), x1 - x0)


class DiffusionObjective:
    """MAR's DDPM training loss (epsilon + learned-range variance), 1000 cosine steps."""

    def __init__(self):
        s = ddpm_schedule(TRAIN_STEPS)
        as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        ac = np.cumprod(1.0 - s.betas)
        self.sqrt_ac, self.sqrt_1m_ac = as_t(np.sqrt(ac)), as_t(np.sqrt(1.0 - ac))
        self.coef1, self.coef2 = as_t(s.coef1), as_t(s.coef2)
        self.log_var_min, self.log_var_max = as_t(s.log_var_min), as_t(s.log_var_max)
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = as_t(s.sqrt_recip_ac), as_t(s.sqrt_recipm1_ac)

    def __call__(self, head, ema_head, z, x1, g: torch.Generator) -> torch.Tensor:
        n, C = x1.shape
        t = torch.randint(0, TRAIN_STEPS, (n,), generator=g)
        eps = torch.randn(x1.shape, generator=g)
        xt = self.sqrt_ac[t, None] * x1 + self.sqrt_1m_ac[t, None] * eps
        out = head(xt, t.float(), z)
        eps_pred, var_v = out[:, :C], out[:, C:]
        mse = F.mse_loss(eps_pred, eps)
        # Variational bound on the variance only (improved DDPM, "hybrid" loss).
        true_mean = self.coef1[t, None] * x1 + self.coef2[t, None] * xt
        true_logvar = self.log_var_min[t, None]
        x0_pred = self.sqrt_recip_ac[t, None] * xt - self.sqrt_recipm1_ac[t, None] * eps_pred.detach()
        mean = self.coef1[t, None] * x0_pred + self.coef2[t, None] * xt
        frac = (var_v + 1) / 2
        logvar = frac * self.log_var_max[t, None] + (1 - frac) * self.log_var_min[t, None]
        kl = 0.5 * (-1.0 + logvar - true_logvar + (true_logvar - logvar).exp()
                    + (true_mean - mean) ** 2 * (-logvar).exp())
        nll = 0.5 * (math.log(2 * math.pi) + logvar + (x1 - mean) ** 2 * (-logvar).exp())
        vb = torch.where((t == 0)[:, None], nll, kl).mean() / math.log(2.0)
        return mse + vb


def make_objective(name: str):
    if name == "shortcut":
        return shortcut_loss
    if name == "flow":
        return flow_loss
    if name == "diffusion":
        return DiffusionObjective()
    raise ValueError(f"unknown objective {name!r}")
