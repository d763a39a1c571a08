"""Accuracy of every peer against eager fp32 (same seeds: the same sampling run), the gate a
configuration must pass to count, and the ``summary`` of the main configuration.

Each peer's first measured run saves its final token latents and decoded images; they are
compared with eager fp32's: latent max abs error and relative L2, image PSNR (images in
[-1, 1], peak-to-peak 2), finiteness. A configuration passes when everything is finite and
the PSNR is at least ``min_psnr_db`` (without a VAE: the latent relative L2 at most
``max_latent_rel``). Quantisation moves a sample under the same randomness to a nearby
plausible one (README, precision section); on the demo the classifier accuracy and Fréchet
distance (``precision/table.py``) tell that apart from damage.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .peers import BY_NAME
from .report import REFERENCE, RUNTIME

MIN_PSNR_DB = 30.0
MAX_LATENT_REL = 0.1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def accuracy(outputs: dict, min_psnr_db: float = MIN_PSNR_DB, max_latent_rel: float = MAX_LATENT_REL) -> dict:
    """``outputs``: {peer: path of its saved npz}. Against eager fp32 (else the fp32 runtime)."""
    base_name = REFERENCE if REFERENCE in outputs else RUNTIME if RUNTIME in outputs else None
    if base_name is None:
        return {}
    with np.load(outputs[base_name]) as z:
        base = {k: z[k] for k in z.files}
    out = {}
    for name, path in outputs.items():
        with np.load(path) as z:
            mine = {k: z[k] for k in z.files}
        t, t0 = mine["tokens"].astype(np.float64), base["tokens"].astype(np.float64)
        finite = bool(np.isfinite(t).all() and ("images" not in mine or np.isfinite(mine["images"]).all()))
        d = np.where(np.isfinite(t), t - t0, np.inf)
        r = {"against": base_name, "finite": finite, "latent_max_abs": float(np.abs(d).max()),
             "latent_rel_l2": float(np.linalg.norm(d) / max(np.linalg.norm(t0), 1e-30)),
             "latent_max_abs_ref": float(np.abs(t0).max())}
        if "images" in mine and "images" in base:
            r["psnr_db"] = psnr(mine["images"], base["images"])
            r["passed"] = finite and r["psnr_db"] >= min_psnr_db
            r["gate"] = f"finite and PSNR >= {min_psnr_db:g} dB vs {base_name}"
        else:
            r["passed"] = finite and r["latent_rel_l2"] <= max_latent_rel
            r["gate"] = f"finite and latent relative L2 <= {max_latent_rel:g} vs {base_name}"
        out[name] = r
    return out


def summary(entry: dict) -> dict:
    """The fastest passing PyTorch and runtime configurations of one measured configuration."""
    acc = entry.get("accuracy", {})
    lat = {b: r["latency_median_s"] for b, r in entry["backends"].items()}

    def best(engine):
        ok = [b for b in lat if BY_NAME.get(b) and BY_NAME[b].engine == engine and acc.get(b, {}).get("passed")]
        return min(ok, key=lat.get) if ok else None
    bp, br = best("pytorch"), best("runtime")
    return {"best_pytorch": bp, "best_runtime": br,
            "speedup_vs_best_pytorch": lat[bp] / lat[br] if bp and br else None,
            "speedup_vs_eager_fp32": lat[REFERENCE] / lat[br] if br and REFERENCE in lat else None,
            "latency_s": {"best_pytorch": lat.get(bp), "best_runtime": lat.get(br), "eager_fp32": lat.get(REFERENCE)},
            "K": entry["K"], "O": entry["O"], "mode": entry.get("mode"), "batch": entry["batch"], "cfg": entry["cfg"],
            "passing": {b: bool(acc.get(b, {}).get("passed")) for b in lat}}


def output_path(folder: str, model: str, peer: str, K: int, O: int, mode: str | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{model}_K{K}_O{O}{'_' + mode if mode else ''}_{peer}.npz")
