"""All randomness of one sampling run, drawn from one seeded generator, saveable.

The runtime and the PyTorch reference both consume a ``Randomness``: orders, the initial
noise of every token and (for MAR diffusion heads) the per-step noise. Noise is indexed by
token *position*, since each position is predicted exactly once; the unconditional CFG
twin of a row shares that row's noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import FarError
from .files import atomic_write


@dataclass
class Randomness:
    orders: np.ndarray                  # [B, L] int64, a permutation per sample
    noise: np.ndarray                   # [B, L, C] float32, initial noise per position
    step_noise: np.ndarray | None = None  # [S, B, L, C] float32, diffusion heads only

    @property
    def batch(self) -> int:
        return self.orders.shape[0]

    def save(self, path: str) -> None:
        arrays = {"orders": self.orders, "noise": self.noise}
        if self.step_noise is not None:
            arrays["step_noise"] = self.step_noise

        def write(tmp):
            with open(tmp, "wb") as f:      # a file object, so numpy adds no ".npz" suffix
                np.savez(f, **arrays)
        atomic_write(path, write)

    @classmethod
    def load(cls, path: str) -> "Randomness":
        if not os.path.isfile(path):
            raise FarError(f"Randomness file {path} does not exist.")
        with np.load(path, allow_pickle=False) as f:
            return cls(f["orders"], f["noise"], f["step_noise"] if "step_noise" in f else None)

    def check(self, batch: int, seq_len: int, token_dim: int, diffusion_steps: int = 0) -> None:
        want = (batch, seq_len, token_dim)
        if self.orders.shape != want[:2] or self.noise.shape != want:
            raise FarError(
                f"Randomness has orders {self.orders.shape} and noise {self.noise.shape}, "
                f"but this run needs orders {want[:2]} and noise {want}.")
        if diffusion_steps:
            if self.step_noise is None or self.step_noise.shape != (diffusion_steps, *want):
                got = None if self.step_noise is None else self.step_noise.shape
                raise FarError(f"Randomness has step noise {got}, but this run needs "
                               f"{(diffusion_steps, *want)}.")


def draw_randomness(seed: int, batch: int, seq_len: int, token_dim: int,
                    diffusion_steps: int = 0) -> Randomness:
    """Everything random in one run, from ``numpy``'s PCG64 seeded with ``seed``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    orders = np.stack([rng.permutation(seq_len) for _ in range(batch)]).astype(np.int64)
    noise = rng.standard_normal((batch, seq_len, token_dim), dtype=np.float32)
    step_noise = None
    if diffusion_steps:
        step_noise = rng.standard_normal((diffusion_steps, batch, seq_len, token_dim),
                                         dtype=np.float32)
    return Randomness(orders, noise, step_noise)


def iteration_indices(orders: np.ndarray, before: int, after: int):
    """Known positions (already predicted) and positions predicted in this iteration.

    Both come back sorted in position order per sample, as MAR's boolean masks give them.
    """
    known = np.sort(orders[:, before:], axis=1)
    pred = np.sort(orders[:, after:before], axis=1)
    return known, pred
