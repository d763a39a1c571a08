"""Batching that does not change any request's image: grouping, per-request randomness, one run.

Ray Serve's ``@serve.batch`` hands the handler whatever arrived within the wait window, in
arrival order, whatever the requests hold. ``group_by_settings`` splits such a batch into
groups that share (K, O, cfg, schedule, temperature), since one ``generate_tokens`` call
runs one setting. Inside a group each request keeps its own seed: its ``Randomness`` is
``draw_randomness(seed, 1, ...)``, exactly what ``far-runtime generate --num 1 --seed s``
draws, and the group's batch randomness is those rows stacked. Sampling treats rows
independently (``mask_len`` depends only on K), so a request's latents do not depend on
its batch-mates.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from ..images import encode_png, to_uint8
from ..randomness import Randomness, draw_randomness
from .requests import GenerateRequest

log = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "npy": "application/x-npy", "latents": "application/x-npy"}


@dataclass(frozen=True)
class Outcome:
    """One request's answer from a batch: its body, or the sentence of an error."""
    body: bytes | None = None
    media_type: str | None = None
    error: str | None = None


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


def run_group(pipe, requests: list[GenerateRequest]) -> list[bytes]:
    """One ``generate_tokens`` call for requests sharing settings; the bodies in their order."""
    s = requests[0]
    rnd = stack_randomness([request_randomness(r.seed, pipe.model) for r in requests])
    tokens = pipe.generate_tokens([r.label for r in requests], K=s.K, O=s.O, cfg=s.cfg,
                                  cfg_schedule=s.cfg_schedule, temperature=s.temperature,
                                  randomness=rnd)
    want = [i for i, r in enumerate(requests) if r.output != "latents"]
    images = {}
    if want:
        decoded = to_uint8(pipe.decode(tokens[want]))
        images = dict(zip(want, decoded))
    return [encode(r.output, images.get(i), tokens[i]) for i, r in enumerate(requests)]


def run_batch(pipe, requests: list[GenerateRequest]) -> list[Outcome]:
    """Every group of a mixed batch, one after the other; a failing group fails only itself."""
    out: list[Outcome | None] = [None] * len(requests)
    for idx in group_by_settings(requests):
        group = [requests[i] for i in idx]
        try:
            bodies = run_group(pipe, group)
        except Exception as e:     # noqa: BLE001 - reported to this group's requests only
            log.exception("a batch of %d requests failed", len(group))
            msg = str(e) if str(e).endswith(".") else f"Generation failed ({type(e).__name__}: {e})."
            for i in idx:
                out[i] = Outcome(error=msg)
            continue
        for i, body in zip(idx, bodies):
            out[i] = Outcome(body, MEDIA_TYPES[requests[i].output])
    return out
