"""The head kinds, shared by every backbone family's loop: how a condition z becomes tokens.

- **shortcut** (FAR, FAR-Causal): O Euler steps of the shortcut head, either one fused graph
  call (``head_fused_o{O}``: steps and guidance inside) or O ``head_step`` calls with the
  guidance combine here: ``v = v_u + cfg (v_c - v_u)``, ``x += v / O``.
- **diffusion** (MAR): DDPM steps over MAR's respaced schedule, guidance on epsilon,
  temperature on each step's noise.

``head_calls`` is the part of a shape plan one prediction of ``n`` tokens per sample adds;
``predict`` runs those calls. A masked loop predicts ``n_pred`` tokens per iteration, the
causal loop one per step; both call these two functions and nothing else of the head.
"""
from __future__ import annotations

import functools

import numpy as np

from .ddpm import DDPMSchedule, ddpm_schedule
from .errors import FarError
from .exp32 import exp32
from .options import as_int
from .plan import Call, make_call
from .schedule import check_head_steps
from .specs import ROWS, ZROWS, fused_name

KINDS = ("shortcut", "diffusion")


def respacing(model: dict):
    """MAR's respacing of the DDPM steps (``"ddim25"``, ``"10,15,20"``) or the plain count."""
    return model.get("timestep_respacing") or model["diffusion_steps"]


def schedule(model: dict) -> DDPMSchedule | None:
    return ddpm_schedule(respacing(model)) if model["head_kind"] == "diffusion" else None


def randomness_steps(model: dict) -> int:
    """S of the run's randomness: the respaced DDPM steps (MAR), 0 for shortcut heads."""
    sched = schedule(model)
    return sched.steps if sched else 0


def plan_steps(model: dict, O: int) -> int:
    """The head steps a plan holds: O for a shortcut head, the respaced DDPM count for MAR."""
    return randomness_steps(model) if model["head_kind"] == "diffusion" else O


@functools.lru_cache(maxsize=64)
def _count_schedule(steps: int) -> DDPMSchedule:
    return ddpm_schedule(steps)


def schedule_for(model: dict, steps: int) -> DDPMSchedule | None:
    """MAR's DDPM schedule of an iteration with ``steps`` steps: the model's own respacing when
    ``steps`` is its count, else MAR's respacing of the training steps to ``steps`` (accel.py's
    head schedule); None for shortcut heads."""
    own = schedule(model)
    if own is None or steps == own.steps:
        return own
    return _count_schedule(int(steps))


def mode_for(head_mode, O: int) -> str:
    """``head_mode`` as one mode for every O (a string) or chosen per O (a callable)."""
    return head_mode(O) if callable(head_mode) else head_mode


def choose_mode(model: dict, graphs, head_steps_available, O, head: str = "auto") -> str:
    """``"fused"`` or ``"step"`` for O head steps, given the bundle's graph names."""
    if head not in ("auto", "fused", "step"):
        raise FarError(f"head must be 'auto', 'fused' or 'step', got {head!r}.")
    if model["head_kind"] == "diffusion":
        return "step"
    O = as_int(O, "O (head steps)")
    check_head_steps(O)
    fused = fused_name(O) in graphs
    if head == "step" or (head == "auto" and not fused):
        if "head_step" not in graphs:
            raise FarError(f"The bundle has no head graph for O={O}: it has fused graphs for "
                           f"O in {head_steps_available} and no step graph.")
        return "step"
    if not fused:
        raise FarError(f"The bundle has no fused head graph for O={O}; it has "
                       f"{head_steps_available} (re-export with --head-steps {O}).")
    return "fused"


def head_calls(mode: str, steps: int, batch: int, rows: int, n: int) -> tuple[Call, ...]:
    """The head calls predicting ``n`` tokens for each of ``batch`` samples (``rows``
    backbone rows: ``2 x batch`` with CFG)."""
    if mode == "fused":
        return (make_call(fused_name(steps), **{ROWS: batch * n, ZROWS: rows * n}),)
    return (make_call("head_step", **{ROWS: rows * n}),) * steps


def predict(backend, model: dict, mode: str, calls, noise: np.ndarray, z: np.ndarray,
            cfg_iter: float, use_cfg: bool, temperature: float, step_noise=None,
            sched: DDPMSchedule | None = None) -> np.ndarray:
    """Tokens ``[n, C]`` from ``noise`` ``[n, C]`` and conditions ``z`` (``n`` or ``2n`` rows:
    conditional rows over their unconditional twins)."""
    if model["head_kind"] == "diffusion":
        return _ddpm(backend, calls, noise, step_noise, z, sched, cfg_iter, use_cfg, temperature)
    x0 = noise * np.float32(temperature)
    if mode == "fused":
        return backend.run(calls[0], {"noise": np.ascontiguousarray(x0), "z": z,
                                      "cfg": np.array([cfg_iter], np.float32)})["tokens"]
    return _shortcut_steps(backend, calls, x0, z, len(calls), cfg_iter, use_cfg)


def _shortcut_steps(backend, calls, x, z, O, cfg_iter, use_cfg):
    n = x.shape[0]
    d = 1.0 / O
    rows = z.shape[0]
    dd = np.full(rows, d, np.float32)
    for i, call in enumerate(calls):
        xin = np.concatenate([x, x]) if use_cfg else np.ascontiguousarray(x)
        v = backend.run(call, {"x": xin, "t": np.full(rows, i * d, np.float32), "d": dd, "z": z})["v"]
        v = v[n:] + np.float32(cfg_iter) * (v[:n] - v[n:]) if use_cfg else v
        x = x + v * np.float32(d)
    return x


def _ddpm(backend, calls, x, step_noise, z, sched, cfg_iter, use_cfg, temperature):
    n, C = x.shape
    rows = z.shape[0]
    for j, (i, call) in enumerate(zip(reversed(range(sched.steps)), calls)):
        xin = np.concatenate([x, x]) if use_cfg else np.ascontiguousarray(x)
        out = backend.run(call, {"x": xin, "t": np.full(rows, float(sched.timestep_map[i]), np.float32),
                                 "z": z})["out"]
        eps, var = out[:, :C], out[:n, C:]
        if use_cfg:
            eps = eps[n:] + np.float32(cfg_iter) * (eps[:n] - eps[n:])
        x0 = float(sched.sqrt_recip_ac[i]) * x - float(sched.sqrt_recipm1_ac[i]) * eps
        mean = float(sched.coef1[i]) * x0 + float(sched.coef2[i]) * x
        frac = (var + 1) / 2
        log_var = frac * float(sched.log_var_max[i]) + (1 - frac) * float(sched.log_var_min[i])
        x = mean + exp32(0.5 * log_var) * step_noise[j] * np.float32(temperature) if i > 0 else mean
    return x
