"""``far-export verify``: the runtime against the PyTorch reference with identical randomness.

One path for every model family: the family (``far_export/families``) gives the runs, as
``(K, O, cfg, batch, mode)`` (FAR/MAR: K x every fused O x CFG 1 and 3; FAR-Causal: K = L,
the cache loop at every O and CFG, the recompute loop once more). For each run it records
the latent error after every iteration k (so drift accumulation is visible), the final
latent error and the decoded-image PSNR, and judges them against the tolerances of the
bundle's precision: fp32: final latent max abs <= 1e-3 and PSNR >= 50 dB; fp16: PSNR >= 35
dB (latent error reported); bf16 (graphs computed in bf16, ``--precision auto``): PSNR >= 30
dB (the demo measured 49-56 dB); int8: latent error and PSNR reported. An auto bundle is
judged by its loosest graph's precision (``manifest["precision"]``) and run as it records
(its backend, each graph's precision). Every run, of every family and precision, must stay
finite at every iteration and in the image.

On the demo model (10 classes, 32x32 images, shipped classifier present) reduced-precision
bundles are also judged by what the images are for: classifier accuracy and Fréchet distance
of runtime images against images of the FP32 reference pipeline drawn with the same
randomness (bf16 and int8 gate: accuracy within 2 points, Fréchet distance within 10%).

A report records what it judged (``judged``: the source checkpoint's and VAE's sha256 and
every graph file's sha256); ``read_report`` (``verify --status``) refuses a report whose
bundle was re-exported since, so a stale PASSED never speaks for other graphs.
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch

from far_runtime.accel import as_accel
from far_runtime.errors import FarError
from far_runtime.files import check_writable_file, write_json
from far_runtime.options import as_finite, as_int, check_seed
from far_runtime.schedule import check_head_steps, check_k
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

from .families import family_for_model
from .reference.pipeline import ReferencePipeline

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": {"latent_max_abs": 1e-3, "psnr_db": 50.0},
              "fp16": {"latent_max_abs": None, "psnr_db": 35.0},
              "bf16": {"latent_max_abs": None, "psnr_db": 30.0},
              "int8": {"latent_max_abs": None, "psnr_db": None}}
QUALITY_GATES = {"bf16": {"accuracy_drop": 0.02, "frechet_ratio": 1.10},
                 "int8": {"accuracy_drop": 0.02, "frechet_ratio": 1.10}}


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
    for path, what in ((ck, "checkpoint"), (vk, "VAE")):
        if path is not None and not os.path.isfile(path):
            raise FarError(f"The bundle's source {what} {path} is not there; pass it with --{what.lower()}.")
    bb = pipe.bundle.manifest["config"]["backbone"]
    user = str(bb.get("heads_rule", "")).startswith("user option")
    heads_key = family_for_model(pipe.model).heads_key
    ref = ReferencePipeline.load(ck, vk, weights="model" if src["weights"] == "model" else "ema",
                                 heads=bb[heads_key] if user else None,
                                 force_heads=bb.get("heads_rule") == "user option (forced)")
    # The loaders hash each file once; compare those hashes rather than reading the files again.
    loaded = ((ck, ref.ckpt.sha256, src["sha256"], "checkpoint"),
              (vk, ref.vae_ckpt.sha256 if ref.vae_ckpt else None, src["vae_sha256"], "VAE"))
    for path, got, digest, what in loaded:
        if path is not None and got != digest:
            raise FarError(f"The {what} {path} is not the one the bundle was exported from "
                           "(sha256 differs); pass the right file or rebuild the bundle.")
    return ref


def verify_one(pipe: Pipeline, ref: ReferencePipeline, labels, K: int, O: int, cfg: float,
               seed: int, temperature: float = 1.0, cfg_schedule: str = "linear",
               mode: str | None = None, accel: dict | None = None) -> dict:
    """One run of the runtime (loop ``mode``) and the reference with the same randomness and the
    same acceleration options (``accel``: keyword -> value, ``far_runtime/accel.py``); it is
    finite when the runtime's latent is finite after every iteration and in the image."""
    model = pipe.model
    B, L, C = len(labels), model["seq_len"], model["token_dim"]
    S = model["diffusion_steps"] if model["head_kind"] == "diffusion" else 0
    rnd = draw_randomness(seed, B, L, C, S)
    kw = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, randomness=rnd,
              **(accel or {}))
    t_ref, t_rt = [], []
    t0 = time.perf_counter()
    ref_tokens = ref.tokens(labels, num_iter=K, head_steps=O, trace=t_ref, **kw).numpy()
    t1 = time.perf_counter()
    rt_tokens = pipe.generate_tokens(labels, K=K, O=O, trace=t_rt, mode=mode, **kw)
    t2 = time.perf_counter()
    scale = float(np.abs(ref_tokens).max())
    per_iter = [float(np.abs(a.numpy() - b).max()) for a, b in zip(t_ref, t_rt)]
    result = {"K": K, "O": O if model["head_kind"] == "shortcut" else S, "cfg": cfg, "batch": B,
              "seed": seed, **({"mode": mode} if mode is not None else {}), **(accel or {}),
              "per_iteration_latent_max_abs": per_iter,
              "latent_max_abs": float(np.abs(ref_tokens - rt_tokens).max()),
              "latent_scale": scale, "reference_seconds": t1 - t0, "runtime_seconds": t2 - t1}
    image = None
    if ref.vae is not None and pipe.bundle.has("vae_decoder"):
        image = pipe.decode(rt_tokens)
        result["psnr_db"] = psnr(ref.decode(torch.from_numpy(ref_tokens)), image)
    result["finite"] = bool(np.isfinite(rt_tokens).all() and all(np.isfinite(t).all() for t in t_rt)
                            and (image is None or np.isfinite(image).all()))
    return result


def check_verify_options(K=None, O=None, cfg=None, batch=None, seed=0, quality_per_class=50,
                         accel=None) -> dict:
    """Options given explicitly are checked, never silently replaced by the defaults; the
    acceleration options that are on come back checked (keyword -> canonical value)."""
    if K is not None:
        check_k(as_int(K, "--K"))
    if O is not None:
        check_head_steps(as_int(O, "--O"), "--O")
    if cfg is not None:
        as_finite(cfg, "--cfg")
    if batch is not None and as_int(batch, "--batch") < 1:
        raise FarError(f"--batch must be at least 1, got {batch}.")
    check_seed(seed)
    if as_int(quality_per_class, "--quality-per-class") < 1:
        raise FarError(f"--quality-per-class must be at least 1, got {quality_per_class}.")
    return as_accel({k: v for k, v in (accel or {}).items() if v is not None}).as_dict()


def default_configs(pipe: Pipeline, K=None, O=None, cfg=None, batch=None) -> list[tuple]:
    """``(K, O, cfg, batch, mode)`` per run: the bundle's family says which."""
    check_verify_options(K, O, cfg, batch)
    return family_for_model(pipe.model).verify_configs(pipe, K, O, cfg, batch)


def judged(bundle) -> dict:
    """What a report judged: the source files' and every graph file's sha256."""
    src = bundle.manifest.get("source") or {}
    return {"checkpoint_sha256": src.get("sha256"), "vae_sha256": src.get("vae_sha256"),
            "graphs": {n: dict(g["files"]) for n, g in bundle.graphs.items()}}


def read_report(bundle_dir: str, path: str | None = None) -> dict:
    """A stored verify report, refused when the bundle or its source changed since."""
    import json
    from far_runtime.bundle import load_bundle
    path = path or os.path.join(bundle_dir, "verify.json")
    if not os.path.isfile(path):
        raise FarError(f"{path} does not exist; run far-export verify {bundle_dir}.")
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        raise FarError(f"{path} is not a readable verify report ({e}).") from None
    if not isinstance(report, dict) or report.get("judged") != judged(load_bundle(bundle_dir)):
        raise FarError(f"{path} judged other graphs or another checkpoint than {bundle_dir} holds now "
                       "(the bundle was re-exported); it no longer applies, run verify again.")
    return report


def verify_labels(pipe, seed: int, batch: int) -> list[int]:
    """The classes a verify run of ``batch`` images draws (the same for every model kind)."""
    return [(seed + j * 3) % pipe.model["num_classes"] for j in range(batch)]


def judge_runs(configs: list, tol: dict, progress, run) -> list[dict]:
    """``run(*config)`` for every config, each result judged by ``passes``; ``progress(i, n, r)``
    after each."""
    results = []
    for i, config in enumerate(configs):
        r = run(*config)
        r["passed"] = passes(r, tol)
        results.append(r)
        if progress:
            progress(i + 1, len(configs), r)
    return results


def passes(r: dict, tol: dict) -> bool:
    """One verified run against the tolerances. The latent limit is absolute for latents of
    normal scale (|x| <= 1) and relative beyond: a random-weight MAR head drives latents to
    1e4, and float32 can only be relative there."""
    limit = (tol["latent_max_abs"] or math.inf) * max(1.0, r["latent_scale"])
    return bool(r["finite"] and r["latent_max_abs"] <= limit
                and r.get("psnr_db", 1e9) >= (tol["psnr_db"] or -math.inf))


def verify_bundle(bundle_dir: str, out: str | None = None, K=None, O=None, cfg=None, batch=None,
                  seed: int = 0, checkpoint: str | None = None, vae: str | None = None,
                  precision: str | None = None, progress=None, quality: bool | None = None,
                  quality_per_class: int = 50, accel: dict | None = None) -> dict:
    """Verify every run of the bundle's family; ``accel`` (keyword -> value) turns acceleration
    options on in every run, the runtime's and the reference's alike."""
    accel = check_verify_options(K, O, cfg, batch, seed, quality_per_class, accel)
    report_path = check_writable_file(out or os.path.join(bundle_dir, "verify.json"), "--out")
    pipe = Pipeline.load(bundle_dir)
    if accel.get("head_schedule") and O is None:      # the schedule replaces O: one O suffices
        O = max(pipe.bundle.manifest["head_steps"] or [1])
    configs = default_configs(pipe, K, O, cfg, batch)
    for k, o, c, b, mode in configs:                   # every option refused before any work
        pipe.plan(b, k, o, c, decode=False, mode=mode, **accel)
    ref = reference_for_bundle(pipe, checkpoint, vae)
    precision = precision or pipe.bundle.manifest.get("precision", "fp32")
    tol = TOLERANCES[precision]
    results = judge_runs(configs, tol, progress,
                         lambda k, o, c, b, mode: verify_one(pipe, ref, verify_labels(pipe, seed, b),
                                                             k, o, c, seed, mode=mode, accel=accel))
    report = {"bundle": os.path.abspath(bundle_dir), "judged": judged(pipe.bundle),
              "precision": precision, "backend": pipe.backend.name,
              **({"kind": pipe.model["kind"]} if "kind" in pipe.model else {}),
              "tolerances": tol, **({"accel": accel} if accel else {}), "results": results,
              "passed": all(r["passed"] for r in results)}
    if quality is None:
        quality = precision != "fp32" and demo_scorer_available(pipe)
    if quality:
        report["quality"] = image_quality(pipe, ref, per_class=quality_per_class, seed=seed)
        gate = QUALITY_GATES.get(precision)
        if gate:
            q = report["quality"]
            q["gate"] = gate
            q["passed"] = bool(q["accuracy_drop"] <= gate["accuracy_drop"]
                               and q["frechet_ratio"] <= gate["frechet_ratio"])
            report["passed"] = report["passed"] and q["passed"]
    note = family_for_model(pipe.model).verify_note
    report["summary"] = summary(report) + (f"\n  {note}" if note else "")
    write_json(report_path, report)
    return report


def demo_scorer_available(pipe: Pipeline) -> bool:
    """The shipped demo classifier exists and the bundle makes images it can score."""
    from .quality.score import DEFAULT_CLASSIFIER
    m = pipe.model
    return (os.path.isfile(DEFAULT_CLASSIFIER) and pipe.bundle.has("vae_decoder") and m["num_classes"] == 10
            and m["image_size"] == 32 and m["image_channels"] == 3)


def image_quality(pipe: Pipeline, ref: ReferencePipeline, per_class: int = 20, K: int | None = None,
                  O: int | None = None, cfg: float | None = None, cfg_schedule: str | None = None,
                  temperature: float | None = None, seed: int = 0, batch: int | None = None, classifier: str | None = None) -> dict:
    """Classifier accuracy and Fréchet distance of runtime images and of FP32 reference images
    drawn with the same randomness (``10 * per_class`` images each), sampled with the demo's
    settings (``DEMO_SAMPLING``) unless given."""
    from far_runtime.images import to_uint8
    from .quality.score import DEMO_SAMPLING, score_images
    m = pipe.model
    K = K or DEMO_SAMPLING["K"]
    cfg = DEMO_SAMPLING["cfg"] if cfg is None else cfg
    cfg_schedule = cfg_schedule or DEMO_SAMPLING["cfg_schedule"]
    temperature = DEMO_SAMPLING["temperature"] if temperature is None else temperature
    O = O or max(pipe.bundle.manifest["head_steps"] or [1])
    batch = batch or pipe.bundle.manifest["max_batch"]
    K = min(K, m["seq_len"])
    labels = np.tile(np.arange(m["num_classes"]), per_class)
    S = m["diffusion_steps"] if m["head_kind"] == "diffusion" else 0
    ours, theirs = [], []
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, len(labels), batch)):
        lab = labels[start:start + batch]
        rnd = draw_randomness(seed + 1000 + i, len(lab), m["seq_len"], m["token_dim"], S)
        kw = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, randomness=rnd)
        ours.append(to_uint8(pipe.decode(pipe.generate_tokens(lab, K=K, O=O, **kw))))
        theirs.append(to_uint8(ref.decode(ref.tokens(lab, num_iter=K, head_steps=O, **kw))))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    a, b = score_images(ours, labels, classifier), score_images(theirs, labels, classifier)
    return {"images": int(len(labels)), "K": K, "O": O, "cfg": cfg, "cfg_schedule": cfg_schedule,
            "temperature": temperature,
            "accuracy": a["accuracy"], "frechet": a["frechet"],
            "fp32_accuracy": b["accuracy"], "fp32_frechet": b["frechet"],
            "accuracy_drop": b["accuracy"] - a["accuracy"],
            "frechet_ratio": a["frechet"] / b["frechet"] if b["frechet"] > 0 else math.inf,
            "finite": bool(np.isfinite(ours).all()), "seconds": time.perf_counter() - t0}


def summary(report: dict) -> str:
    lines = [f"verify {report['bundle']} ({report['precision']}): "
             f"{'PASSED' if report['passed'] else 'FAILED'}",
             "  tolerances: " + _tolerance_text(report["tolerances"]),
             *(["  options: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in report["accel"].items())]
               if report.get("accel") else []),
             "     K    O   cfg  B   latent max abs   worst iter   PSNR dB   ok"]
    for r in report["results"]:
        it = r["per_iteration_latent_max_abs"]
        worst = int(np.argmax(it)) if it else 0
        ps = f"{r['psnr_db']:8.1f}" if "psnr_db" in r else "     n/a"
        lines.append(f"  {r['K']:4d} {r['O']:4d} {r['cfg']:5.1f} {r['batch']:2d}   {r['latent_max_abs']:14.3e}"
                     f"   k={worst:<8d} {ps}   {'yes' if r['passed'] else 'NO'}")
    q = report.get("quality")
    if q:
        lines.append(f"  images ({q['images']}, K={q['K']} O={q['O']} cfg={q['cfg']:g} {q['cfg_schedule']} T={q['temperature']:g}): accuracy {q['accuracy']:.3f} "
                     f"(fp32 {q['fp32_accuracy']:.3f}), Frechet {q['frechet']:.2f} (fp32 {q['fp32_frechet']:.2f}, "
                     f"x{q['frechet_ratio']:.3f})" + (f"  {'ok' if q['passed'] else 'NO'}" if "passed" in q else ""))
    return "\n".join(lines)


def _tolerance_text(tol: dict) -> str:
    parts = ["finite at every iteration"]
    if tol["latent_max_abs"] is not None:
        parts.append(f"final latent max abs <= {tol['latent_max_abs']:g} x max(1, |latent|)")
    if tol["psnr_db"] is not None:
        parts.append(f"PSNR >= {tol['psnr_db']:g} dB")
    return ", ".join(parts)
