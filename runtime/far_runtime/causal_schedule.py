"""The FAR-Causal loop's schedule: raster order, one token per step, so K = L by construction.

Token ``i`` (0-based) is predicted at step ``i``; its condition comes from ``causal_prefill``
(``i = 0``) or from ``causal_step`` fed token ``i - 1`` at sequence position
``P + i - 1`` (``P`` class slots). The linear CFG ramp is SPEC's with ``L - mask_len`` read
as the tokens known once step ``i`` is done (``i + 1``), the same ramp MAR's schedule gives
for K = L: ``1 + (cfg - 1) (i + 1) / L``.
"""
from __future__ import annotations

from .errors import FarError


def causal_cfg_at(i: int, seq_len: int, cfg: float, schedule: str) -> float:
    """Guidance scale at token ``i`` of ``seq_len``."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (i + 1) / seq_len
    if schedule == "constant":
        return float(cfg)
    raise FarError(f"CFG schedule must be 'linear' or 'constant', got {schedule!r}.")


def step_position(i: int, class_tokens: int) -> int:
    """Sequence position of token ``i - 1`` when it is fed to produce z_i (i >= 1)."""
    return class_tokens + i - 1
