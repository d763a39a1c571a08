"""``far-export verify`` for FAR-Causal bundles: the runtime against the reference, token by token.

Same report as ``verify.py`` (``K`` is L): for each O of the bundle, CFG 1 and 3, the latent
error after every one of the L steps, the final latent max abs and the image PSNR, judged
by the fp32 tolerances (latent <= 1e-3 x max(1, |latent|), PSNR >= 50 dB). The KV-cache loop
is verified at every configuration; the recompute loop (``causal_recompute``) once more at
the largest O with CFG, so both ways of running the backbone answer to the reference.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from far_runtime.errors import FarError
from far_runtime.files import write_json
from far_runtime.randomness import draw_randomness

from .checkpoint import build_model, build_vae, load_model_checkpoint, load_vae_checkpoint
from .families.causal import sample_causal


def causal_reference(pipe, checkpoint: str | None = None, vae: str | None = None):
    """Backbone, head and VAE decoder of the files the bundle was exported from (hash-checked)."""
    src = pipe.bundle.manifest["source"]
    ck_path, vae_path = checkpoint or src["checkpoint"], vae or src["vae"]
    for path, what in ((ck_path, "checkpoint"), (vae_path, "VAE")):
        if path is not None and not os.path.isfile(path):
            raise FarError(f"The bundle's source {what} {path} is not there; pass it with --{what.lower()}.")
    bb = pipe.bundle.manifest["config"]["backbone"]
    ck = load_model_checkpoint(ck_path, "model" if src["weights"] == "model" else "ema",
                               heads=bb["heads"] if bb["heads_rule"] == "user option" else None)
    vk = load_vae_checkpoint(vae_path) if vae_path else None
    for path, got, digest, what in ((ck_path, ck.sha256, src["sha256"], "checkpoint"),
                                    (vae_path, vk.sha256 if vk else None, src["vae_sha256"], "VAE")):
        if path is not None and got != digest:
            raise FarError(f"The {what} {path} is not the one the bundle was exported from "
                           "(sha256 differs); pass the right file or rebuild the bundle.")
    backbone, head = build_model(ck)
    return backbone, head, build_vae(vk) if vk else None


def verify_causal_one(pipe, ref, labels, O: int, cfg: float, seed: int, mode: str = "cache",
                      temperature: float = 1.0, cfg_schedule: str = "linear") -> dict:
    from .verify import psnr
    backbone, head, vae = ref
    m = pipe.model
    B, L, C = len(labels), m["seq_len"], m["token_dim"]
    rnd = draw_randomness(seed, B, L, C)
    kw = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, randomness=rnd)
    t_ref, t_rt = [], []
    t0 = time.perf_counter()
    ref_tokens = sample_causal(backbone, head, labels, head_steps=O, trace=t_ref, **kw).numpy()
    t1 = time.perf_counter()
    rt_tokens = pipe.generate_tokens(labels, O=O, trace=t_rt, mode=mode, **kw)
    t2 = time.perf_counter()
    per_step = [float(np.abs(a.numpy() - b).max()) for a, b in zip(t_ref, t_rt)]
    r = {"K": L, "O": O, "cfg": cfg, "batch": B, "seed": seed, "mode": mode,
         "per_iteration_latent_max_abs": per_step,
         "latent_max_abs": float(np.abs(ref_tokens - rt_tokens).max()),
         "latent_scale": float(np.abs(ref_tokens).max()),
         "reference_seconds": t1 - t0, "runtime_seconds": t2 - t1}
    image = None
    if vae is not None and pipe.bundle.has("vae_decoder"):
        image = pipe.decode(rt_tokens)
        with torch.no_grad():
            r["psnr_db"] = psnr(vae(torch.from_numpy(ref_tokens)).numpy(), image)
    r["finite"] = bool(np.isfinite(rt_tokens).all() and (image is None or np.isfinite(image).all()))
    return r


def verify_causal_bundle(pipe, bundle_dir: str, out: str | None = None, K=None, O=None,
                         cfg=None, batch=None, seed: int = 0, checkpoint: str | None = None,
                         vae: str | None = None, progress=None) -> dict:
    from .verify import TOLERANCES, judge_runs, judged, summary, verify_labels
    pipe.variant.check_k(K, pipe.model)
    precision = pipe.bundle.manifest.get("precision", "fp32")
    tol = TOLERANCES[precision]
    ref = causal_reference(pipe, checkpoint, vae)
    Os = [O] if O else (pipe.bundle.manifest["head_steps"] or [1])
    cfgs = [cfg] if cfg is not None else [1.0, 3.0]
    b = batch or 2
    configs = [(o, c, "cache") for o in Os for c in cfgs]
    configs.append((max(Os), max(cfgs), "recompute"))
    results = judge_runs(configs, tol, progress,
                         lambda o, c, mode: verify_causal_one(pipe, ref, verify_labels(pipe, seed, b),
                                                              o, c, seed, mode))
    report = {"bundle": os.path.abspath(bundle_dir), "judged": judged(pipe.bundle),
              "precision": precision, "kind": "causal",
              "tolerances": tol, "results": results, "passed": all(r["passed"] for r in results)}
    report["summary"] = summary(report) + "\n  (K = L: one token per step; last row: recompute mode)"
    write_json(out or os.path.join(bundle_dir, "verify.json"), report)
    return report
