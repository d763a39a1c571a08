"""Batching that does not change any request's image: grouping, per-request randomness, one run.

Ray Serve's ``@serve.batch`` hands the handler whatever arrived within the wait window, in
arrival order, whatever the requests hold. ``group_by_settings`` splits such a batch into
groups that share (K, O, cfg, schedule, temperature, acceleration options), since one
``generate_tokens`` call runs one setting. Inside a group each request keeps its own seed: its ``Randomness`` is
``draw_randomness(seed, 1, ...)``, exactly what ``far-runtime generate --num 1 --seed s``
draws, and the group's batch randomness is those rows stacked. Sampling treats rows
independently (FAR/MAR: ``mask_len`` depends only on K; FAR-Causal: every row predicts
position i at step i, over its own KV cache rows; the acceleration options decide per
iteration, never per row: the condition cache keeps each row's own difference), so a
request's latents do not depend on its batch-mates. FAR-Causal uses only the noise (raster order, no step noise); drawing the
orders anyway keeps its noise the one ``far-runtime generate`` draws for the same seed.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from ..errors import FarError
from ..images import check_finite, encode_png, to_uint8
from ..randomness import Randomness, draw_randomness
from .requests import GenerateRequest

log = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "npy": "application/x-npy", "latents": "application/x-npy"}


@dataclass(frozen=True)
class Outcome:
    """One request's answer from a batch: its body, or the sentence of an error and its HTTP status."""
    body: bytes | None = None
    media_type: str | None = None
    error: str | None = None
    status: int = 500


def group_by_settings(requests: list[GenerateRequest]) -> list[list[int]]:
    """Indices of ``requests`` grouped by their settings, groups and members in arrival order."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.settings, []).append(i)
    return list(groups.values())


def request_randomness(seed: int, model: dict) -> Randomness:
    """One request's randomness: what ``far-runtime generate --num 1 --seed seed`` draws."""
    steps = model["diffusion_steps"] if model["head_kind"] == "diffusion" else 0
    return draw_randomness(seed, 1, model["seq_len"], model["token_dim"], steps)


def stack_randomness(rows: list[Randomness]) -> Randomness:
    """Single-request randomness stacked into one batch, row i being ``rows[i]``."""
    step = None
    if rows[0].step_noise is not None:
        step = np.concatenate([r.step_noise for r in rows], axis=1)      # [S, B, L, C]
    return Randomness(np.concatenate([r.orders for r in rows]),
                      np.concatenate([r.noise for r in rows]), step)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode(output: str, image: np.ndarray | None, tokens: np.ndarray) -> bytes:
    """The response body of one request: PNG, uint8 image .npy or token latents .npy."""
    if output == "latents":
        return npy_bytes(tokens)
    return encode_png(image) if output == "png" else npy_bytes(image)


def finite_rows(array: np.ndarray) -> np.ndarray:
    """Which rows of a batch hold only finite values."""
    return np.isfinite(array.reshape(len(array), -1)).all(axis=1)


def run_group(pipe, requests: list[GenerateRequest]) -> list[Outcome]:
    """One ``generate_tokens`` call for requests sharing settings; the outcomes in their order.

    Every request's latents and image are checked on their own (``check_finite``): a row
    that overflowed to NaN or infinity (e.g. cfg=1e300) is that request's HTTP 400, never
    a black PNG, and its batch-mates are answered as if it had not been there."""
    s = requests[0]
    rnd = stack_randomness([request_randomness(r.seed, pipe.model) for r in requests])
    tokens = pipe.generate_tokens([r.label for r in requests], K=s.K, O=s.O, cfg=s.cfg,
                                  cfg_schedule=s.cfg_schedule, temperature=s.temperature,
                                  randomness=rnd, **s.accel.as_dict())
    ok = finite_rows(tokens)
    want = [i for i, r in enumerate(requests) if r.output != "latents" and ok[i]]
    decoded = dict(zip(want, pipe.decode(tokens[want]))) if want else {}
    out = []
    for i, r in enumerate(requests):
        try:
            check_finite(tokens[i])
            if i in decoded:
                check_finite(decoded[i])
        except FarError as e:
            out.append(Outcome(error=str(e), status=400))
            continue
        image = to_uint8(decoded[i][None])[0] if i in decoded else None
        out.append(Outcome(encode(r.output, image, tokens[i]), MEDIA_TYPES[r.output]))
    return out


def run_batch(pipe, requests: list[GenerateRequest]) -> list[Outcome]:
    """Every group of a mixed batch, one after the other; a failing group fails only itself."""
    out: list[Outcome | None] = [None] * len(requests)
    for idx in group_by_settings(requests):
        group = [requests[i] for i in idx]
        try:
            outcomes = run_group(pipe, group)
        except Exception as e:     # noqa: BLE001 - reported to this group's requests only
            log.exception("a batch of %d requests failed", len(group))
            msg = str(e) if str(e).endswith(".") else f"Generation failed ({type(e).__name__}: {e})."
            for i in idx:
                out[i] = Outcome(error=msg)
            continue
        for i, outcome in zip(idx, outcomes):
            out[i] = outcome
    return out
