"""Sampling defaults as data: the one place the click options, the server and the C++ CLI's
documentation read them from (no library module imports a CLI to learn a default).

``K`` depends on the variant: FAR and MAR iterate ``DEFAULT_K`` times; FAR-Causal predicts
one token per step, so its only K is its sequence length L (``variant.default_k(model)``).
``far-export sample`` (the PyTorch reference) draws fewer images without guidance by default:
``REFERENCE``. The acceleration options (``accel.py``, issue #24) are off (``None``) unless given.
"""
from __future__ import annotations

DEFAULT_K = 16                     # FAR/MAR's autoregressive iterations

#: the acceleration options (``accel.py``): all off
ACCEL = {"head_schedule": None, "cfg_interval": None, "cfg_cache": None}

#: ``far-runtime generate`` / ``far-export generate`` / ``POST /generate``
SAMPLING = {
    "num": 8,
    "O": 8,                        # shortcut head steps (FAR, FAR-Causal); MAR ignores it
    "cfg": 3.0,
    "cfg_schedule": "linear",
    "temperature": 1.0,
    "seed": 0,
    "head": "auto",
    **ACCEL,
}

CFG_SCHEDULES = ("linear", "constant")
HEAD_MODES = ("auto", "fused", "step")

#: ``far-export sample``: the reference alone
REFERENCE = {**SAMPLING, "num": 4, "cfg": 1.0}

