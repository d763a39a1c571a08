"""All randomness of one sampling run, drawn from one seeded generator, saveable.

The runtime and the PyTorch reference both consume a ``Randomness``: orders, the initial
noise of every token and (for MAR diffusion heads) the per-step noise. Noise is indexed by
token *position*, since each position is predicted exactly once; the unconditional CFG
twin of a row shares that row's noise.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npformat

from .errors import FarError
from .files import atomic_write
from .limits import buffer_bytes, shown

MEMBERS = {"orders.npy": ("<i8", 2), "noise.npy": ("<f4", 3), "step_noise.npy": ("<f4", 4)}
MAX_HEADER_BYTES = 4096                 # numpy writes ~128; its own reader's default is 10000
MAX_RANDOMNESS_BYTES = 4 << 30          # one saved array (MAR-sized step noise fits many times over)


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
        """A file ``save`` wrote, read as untrusted input (``read_randomness``)."""
        if not os.path.isfile(path):
            raise FarError(f"Randomness file {path} does not exist.")
        try:
            with open(path, "rb") as f:
                return read_randomness(f, path)
        except OSError as e:
            raise FarError(f"Randomness file {path} cannot be read ({e.strerror or type(e).__name__}).") from None

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


def read_randomness(f, name: str) -> Randomness:
    """The arrays of a saved-randomness ``.npz`` (a zip of ``.npy`` files) from the open file
    ``f``, each refused in one sentence unless it is what ``save`` writes.

    No pickles (every dtype must be the exact one), no member but ``orders``, ``noise`` and
    ``step_noise``, ``.npy`` headers of at most ``MAX_HEADER_BYTES`` parsed by numpy's own
    header reader before any data, shapes consistent with each other and each array's bytes
    under ``MAX_RANDOMNESS_BYTES`` before it is read (so a member that decompresses to more,
    a zip bomb, is never inflated past that), and orders that are permutations."""
    def bad(what):
        raise FarError(f"Randomness file {name} is not one far-runtime saved: {what}.")
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names) or not set(names) <= set(MEMBERS) or \
                    not {"orders.npy", "noise.npy"} <= set(names):
                bad(f"it holds {shown(sorted(names)[:4], 120)}, not orders, noise and optionally step_noise")
            if any(i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for i in infos):
                bad("a member is compressed other than as numpy's savez writes it (stored or deflated)")
            arrays = {i.filename[:-4]: _read_member(z, i, bad) for i in infos}
    except FarError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError,
            RuntimeError, OSError, zlib.error) as e:     # RuntimeError: an encrypted member
        bad(f"not a readable .npz ({type(e).__name__})")
    orders, noise, step = arrays["orders"], arrays["noise"], arrays.get("step_noise")
    if noise.shape[:2] != orders.shape or (step is not None and step.shape[1:] != noise.shape):
        bad(f"orders {orders.shape}, noise {noise.shape} and step noise "
            f"{None if step is None else step.shape} do not belong together")
    if orders.size and not (np.sort(orders, axis=1) == np.arange(orders.shape[1])).all():
        bad("its orders are not permutations of the token positions")
    return Randomness(orders, noise, step)


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, bad) -> np.ndarray:
    dtype, ndim = MEMBERS[info.filename]
    with z.open(info) as m:
        version = npformat.read_magic(m)
        if version not in ((1, 0), (2, 0), (3, 0)):
            bad(f"{info.filename} has .npy version {version}")
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        try:
            shape, fortran, have = read(m, max_header_size=MAX_HEADER_BYTES)
        except Exception as e:    # noqa: BLE001 - numpy's header parser: ValueError, SyntaxError, TokenError...
            bad(f"{info.filename} has a .npy header numpy cannot parse ({type(e).__name__})")
        if have != np.dtype(dtype) or len(shape) != ndim or fortran:
            bad(f"{info.filename} is {have} of {len(shape)} dims, not {np.dtype(dtype)} of {ndim}")
        try:
            n = buffer_bytes(shape, have.itemsize, info.filename, MAX_RANDOMNESS_BYTES)
        except FarError as e:
            bad(str(e).rstrip("."))
        data = m.read(n)
        if len(data) != n:
            bad(f"{info.filename} is truncated")
    return np.frombuffer(data, dtype=have).reshape(shape).copy()


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
