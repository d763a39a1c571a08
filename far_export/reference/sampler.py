"""The reference sampler: SPEC's loop in PyTorch eager, the ground truth for parity.

All randomness comes from a ``far_runtime.Randomness`` (drawn from one seeded generator, or
passed in), so the runtime and this sampler can be compared step for step. ``trace`` (when
given a list) receives the token latent after every iteration, for drift reports.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from far_runtime.ddpm import ddpm_schedule
from far_runtime.errors import FarError
from far_runtime.accel import accel_options, resolve
from far_runtime.options import check_sampling, check_schedule
from far_runtime.randomness import Randomness, draw_randomness, iteration_indices
from far_runtime.schedule import cfg_at, check_head_steps, mask_schedule

from .backbone import Backbone
from .heads import SimpleMLPAdaLN

log = logging.getLogger(__name__)


def shortcut_sample(head: SimpleMLPAdaLN, noise, z, steps: int, cfg_iter: float | None):
    """O Euler steps of size d = 1/O from noise to tokens; ``z`` stacks cond over uncond rows
    when ``cfg_iter`` is given."""
    x = noise
    d = 1.0 / steps
    for i in range(steps):
        xin = torch.cat([x, x]) if cfg_iter is not None else x
        v = head.velocity(xin, i * d, d, z)
        if cfg_iter is not None:
            v_c, v_u = v.chunk(2)
            v = v_u + cfg_iter * (v_c - v_u)
        x = x + v * d
    return x


def diffusion_sample(head: SimpleMLPAdaLN, noise, step_noise, z, sched, cfg_iter, temperature):
    """MAR's respaced DDPM loop (epsilon prediction, learned-range variance, CFG on eps)."""
    C = noise.shape[-1]
    x = noise
    for j, i in enumerate(reversed(range(sched.steps))):
        t = torch.full((x.shape[0] * (2 if cfg_iter is not None else 1),),
                       float(sched.timestep_map[i]), dtype=x.dtype)
        xin = torch.cat([x, x]) if cfg_iter is not None else x
        out = head(xin, t, z)
        eps, var = out[:, :C], out[:, C:]
        if cfg_iter is not None:
            e_c, e_u = eps.chunk(2)
            eps = e_u + cfg_iter * (e_c - e_u)
            var = var[: x.shape[0]]
        x0 = sched.sqrt_recip_ac[i] * x - sched.sqrt_recipm1_ac[i] * eps
        mean = sched.coef1[i] * x0 + sched.coef2[i] * x
        frac = (var + 1) / 2
        log_var = frac * sched.log_var_max[i] + (1 - frac) * sched.log_var_min[i]
        if i > 0:
            x = mean + torch.exp(0.5 * log_var) * step_noise[j] * temperature
        else:
            x = mean
    return x


@torch.no_grad()
def sample_tokens(backbone: Backbone, head: SimpleMLPAdaLN, labels, num_iter: int = 64,
                  head_steps: int = 8, cfg: float = 1.0, cfg_schedule: str = "linear",
                  temperature: float = 1.0, seed: int = 0, randomness: Randomness | None = None,
                  trace: list | None = None, progress=None, head_schedule=None, cfg_interval=None,
                  cfg_cache=None) -> torch.Tensor:
    """K iterations of MAR/FAR sampling; returns the token latents [B, L, C].

    The acceleration options (``far_runtime/accel.py``; None: off) decide per iteration the
    head steps, whether it is guided and whether the unconditional rows run, are refreshed
    (all masked positions, the difference z_u - z_c kept) or reused (z_c + the kept
    difference at the positions predicted)."""
    cfg_b = backbone.cfg
    L, C = cfg_b.seq_len, cfg_b.token_dim
    num_iter, head_steps, cfg, temperature, seed = check_sampling(
        num_iter, head_steps, cfg, temperature, seed, check_o=head.cfg.kind == "shortcut")
    check_schedule(cfg_schedule)
    accel = accel_options(head_schedule, cfg_interval, cfg_cache)
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise FarError(f"Class labels must be integers, got {labels.dtype}.")
    labels = labels.astype(np.int64)
    B = len(labels)
    if B < 1:
        raise FarError("Batch size must be at least 1.")
    if labels.min() < 0 or labels.max() >= cfg_b.num_classes:
        raise FarError(f"Class labels must be in 0..{cfg_b.num_classes - 1}, got {labels.tolist()}.")
    plan = mask_schedule(num_iter, L)
    diffusion = head.cfg.kind == "diffusion"
    sched = ddpm_schedule(head.cfg.timestep_respacing or head.cfg.diffusion_steps) if diffusion else None
    if not diffusion:
        check_head_steps(head_steps, "O (shortcut head steps)")
    S = sched.steps if diffusion else 0
    opts = resolve(accel, num_iter, S if diffusion else head_steps, cfg != 1.0,
                   [it.n_known for it in plan], L, shortcut=not diffusion, max_steps=S,
                   runs=[it.n_pred > 0 for it in plan])
    if randomness is None:
        randomness = draw_randomness(seed, B, L, C, S)
    randomness.check(B, L, C, S)
    lab_c = torch.from_numpy(labels)
    lab_2 = torch.from_numpy(np.concatenate([labels, np.full(B, cfg_b.num_classes)]))
    tokens = torch.zeros(B, L, C)
    noise_all = torch.from_numpy(randomness.noise)
    step_all = torch.from_numpy(randomness.step_noise) if diffusion else None
    bidx = torch.arange(B)[:, None]
    diff = None                                   # z_u - z_c [B, L, D] kept at the last refresh
    for it, o in zip(plan, opts):
        if it.n_pred > 0:
            known, pred = iteration_indices(randomness.orders, it.before, it.after)
            pred_t = torch.from_numpy(pred)
            n = it.n_pred
            two = o.uncond in ("computed", "refresh")
            reps = 2 if two else 1
            ask = torch.from_numpy(np.sort(randomness.orders[:, :it.before], axis=1)) \
                if o.uncond == "refresh" else pred_t
            z = backbone(tokens.repeat(reps, 1, 1), lab_2 if two else lab_c,
                         torch.from_numpy(known).repeat(reps, 1), ask.repeat(reps, 1))
            if o.uncond == "refresh":                 # keep the difference, take the predicted positions
                z_c, z_u = z.chunk(2)
                if diff is None:
                    diff = torch.zeros(B, L, z.shape[-1])
                diff[bidx, ask] = z_u - z_c
                at = torch.stack([torch.searchsorted(ask[b], pred_t[b]) for b in range(B)])
                z = torch.cat([z_c[bidx, at], z_u[bidx, at]])
            elif o.uncond == "reuse":
                z = torch.cat([z, z + diff[bidx, pred_t]])
            z = z.reshape(-1, z.shape[-1])                 # cond rows first, then their twins
            cfg_iter = cfg_at(it, cfg, cfg_schedule) if o.guided else None
            noise = noise_all[bidx, pred_t].reshape(B * n, C)
            if diffusion:
                sch = sched if o.head_steps == S else ddpm_schedule(o.head_steps)
                step = step_all[:sch.steps, bidx, pred_t].reshape(sch.steps, B * n, C)
                x = diffusion_sample(head, noise, step, z, sch, cfg_iter, temperature)
            else:
                x = shortcut_sample(head, noise * temperature, z, o.head_steps, cfg_iter)
            tokens[bidx, pred_t] = x.reshape(B, n, C)
        if trace is not None:
            trace.append(tokens.clone())
        if progress is not None:
            progress(it)
    return tokens
