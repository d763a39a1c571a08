"""``far-export verify``: the runtime against the PyTorch reference with identical randomness.

For each configuration it records the latent error after every iteration k (so drift
accumulation is visible), the final latent error and the decoded-image PSNR, and judges them
against the tolerances (fp32: final latent max abs <= 1e-3 and PSNR >= 50 dB).
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time

import numpy as np
import torch

from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

from .checkpoint import sha256_file
from .export.bundle import _write_json
from .reference.pipeline import ReferencePipeline

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": {"latent_max_abs": 1e-3, "psnr_db": 50.0}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [-1, 1] images mapped to [0, 1] (capped at 200 dB for identical)."""
    a01 = np.clip((a + 1) / 2, 0, 1).astype(np.float64)
    b01 = np.clip((b + 1) / 2, 0, 1).astype(np.float64)
    mse = float(np.mean((a01 - b01) ** 2))
    return 200.0 if mse <= 1e-20 else min(200.0, 10 * math.log10(1.0 / mse))


def reference_for_bundle(pipe: Pipeline, checkpoint: str | None = None,
                         vae: str | None = None) -> ReferencePipeline:
    """The reference pipeline of the checkpoint the bundle was exported from (hash-checked)."""
    src = pipe.bundle.manifest["source"]
    ck = checkpoint or src["checkpoint"]
    vk = vae or src["vae"]
    for path, digest, what in ((ck, src["sha256"], "checkpoint"), (vk, src["vae_sha256"], "VAE")):
        if path is None:
            continue
        if not os.path.isfile(path):
            raise FarError(f"The bundle's source {what} {path} is not there; pass it with --{what.lower()}.")
        if sha256_file(path) != digest:
            raise FarError(f"The {what} {path} is not the one the bundle was exported from "
                           "(sha256 differs); pass the right file or rebuild the bundle.")
    bb = pipe.bundle.manifest["config"]["backbone"]
    return ReferencePipeline.load(ck, vk, weights="model" if src["weights"] == "model" else "ema",
                                  heads=bb["encoder_heads"] if bb["heads_rule"] == "user option" else None)


def verify_one(pipe: Pipeline, ref: ReferencePipeline, labels, K: int, O: int, cfg: float,
               seed: int, temperature: float = 1.0, cfg_schedule: str = "linear") -> dict:
    model = pipe.model
    B, L, C = len(labels), model["seq_len"], model["token_dim"]
    S = model["diffusion_steps"] if model["head_kind"] == "diffusion" else 0
    rnd = draw_randomness(seed, B, L, C, S)
    kw = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, randomness=rnd)
    t_ref, t_rt = [], []
    t0 = time.perf_counter()
    ref_tokens = ref.tokens(labels, num_iter=K, head_steps=O, trace=t_ref, **kw).numpy()
    t1 = time.perf_counter()
    rt_tokens = pipe.generate_tokens(labels, K=K, O=O, trace=t_rt, **kw)
    t2 = time.perf_counter()
    scale = float(np.abs(ref_tokens).max())
    per_iter = [float(np.abs(a.numpy() - b).max()) for a, b in zip(t_ref, t_rt)]
    result = {"K": K, "O": O if model["head_kind"] == "shortcut" else S, "cfg": cfg, "batch": B,
              "seed": seed, "per_iteration_latent_max_abs": per_iter,
              "latent_max_abs": float(np.abs(ref_tokens - rt_tokens).max()),
              "latent_scale": scale, "reference_seconds": t1 - t0, "runtime_seconds": t2 - t1}
    if ref.vae is not None and pipe.bundle.has("vae_decoder"):
        result["psnr_db"] = psnr(ref.decode(torch.from_numpy(ref_tokens)), pipe.decode(rt_tokens))
    result["finite"] = bool(np.isfinite(rt_tokens).all())
    return result


def default_configs(pipe: Pipeline, K=None, O=None, cfg=None, batch=None):
    head_steps = pipe.bundle.manifest["head_steps"] or [1]
    Ks = [K] if K else [min(16, pipe.model["seq_len"])]
    Os = [O] if O else head_steps
    cfgs = [cfg] if cfg is not None else [1.0, 3.0]
    batches = [batch] if batch else [2]
    return list(itertools.product(Ks, Os, cfgs, batches))


def verify_bundle(bundle_dir: str, out: str | None = None, K=None, O=None, cfg=None, batch=None,
                  seed: int = 0, checkpoint: str | None = None, vae: str | None = None,
                  precision: str = "fp32", progress=None) -> dict:
    pipe = Pipeline.load(bundle_dir)
    ref = reference_for_bundle(pipe, checkpoint, vae)
    tol = TOLERANCES[precision]
    results = []
    configs = default_configs(pipe, K, O, cfg, batch)
    for i, (k, o, c, b) in enumerate(configs):
        labels = [(seed + j * 3) % pipe.model["num_classes"] for j in range(b)]
        r = verify_one(pipe, ref, labels, k, o, c, seed)
        # Absolute for latents of normal scale (|x| <= 1), relative beyond: a random-weight
        # MAR head drives latents to 1e4 and float32 can only be relative there.
        limit = tol["latent_max_abs"] * max(1.0, r["latent_scale"])
        r["passed"] = bool(r["finite"] and r["latent_max_abs"] <= limit
                           and r.get("psnr_db", 1e9) >= tol["psnr_db"])
        results.append(r)
        if progress:
            progress(i + 1, len(configs), r)
    report = {"bundle": os.path.abspath(bundle_dir), "precision": precision, "tolerances": tol,
              "results": results, "passed": all(r["passed"] for r in results)}
    report["summary"] = summary(report)
    _write_json(out or os.path.join(bundle_dir, "verify.json"), report)
    return report


def summary(report: dict) -> str:
    lines = [f"verify {report['bundle']} ({report['precision']}): "
             f"{'PASSED' if report['passed'] else 'FAILED'}",
             f"  tolerances: final latent max abs <= {report['tolerances']['latent_max_abs']:g} x max(1, |latent|), "
             f"PSNR >= {report['tolerances']['psnr_db']:g} dB",
             "     K    O   cfg  B   latent max abs   worst iter   PSNR dB   ok"]
    for r in report["results"]:
        it = r["per_iteration_latent_max_abs"]
        worst = int(np.argmax(it)) if it else 0
        ps = f"{r['psnr_db']:8.1f}" if "psnr_db" in r else "     n/a"
        lines.append(f"  {r['K']:4d} {r['O']:4d} {r['cfg']:5.1f} {r['batch']:2d}   {r['latent_max_abs']:14.3e}"
                     f"   k={worst:<8d} {ps}   {'yes' if r['passed'] else 'NO'}")
    return "\n".join(lines)
