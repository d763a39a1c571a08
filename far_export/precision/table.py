"""The precision table: fp32 / fp16 / int8 bundles of one checkpoint against the FP32 reference.

    far-export build CKPT --vae VAE --precision fp32 --out out/precision/fp32 --skip-verify
    far-export build CKPT --vae VAE --precision fp16 --out out/precision/fp16 --skip-verify
    far-export build CKPT --vae VAE --precision int8 --out out/precision/int8 --skip-verify
    python -m far_export.precision.table out/precision/{fp32,fp16,int8} --out out/precision
    python -m far_export.precision.table fp32=out/p/fp32 bf16=out/p/fp32@openvino:bf16 auto=out/p/auto

A bundle may be given as ``[NAME=]PATH[@BACKEND[:PRECISION]]``: run on that backend
(onnxruntime, openvino) and run precision (fp32, bf16), named NAME in the table; without
them, as the bundle records (``--precision auto`` bundles: their backend and per-graph
precisions).

Per bundle, with the randomness of the PyTorch FP32 reference pipeline: final latent max abs
error and decoded-image PSNR (``verify_one``, worst over the configurations), NaN/Inf at any
iteration; classifier accuracy and Fréchet distance of ``10 x per_class`` images (the FP32
reference's own images scored alongside); images/s of ``Pipeline.generate`` (runs interleaved
across bundles so machine load hits all alike). Writes ``precision.json`` and ``precision.md``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

from far_runtime.files import write_json, write_text
from far_runtime.images import to_uint8
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

from ..quality.score import DEMO_SAMPLING

log = logging.getLogger(__name__)


def latent_and_psnr(pipe, ref, configs, seed: int = 0) -> dict:
    from ..verify import verify_one
    rows = []
    for K, O, cfg, batch in configs:
        labels = [(seed + j * 3) % pipe.model["num_classes"] for j in range(batch)]
        rows.append(verify_one(pipe, ref, labels, K, O, cfg, seed))
    return {"latent_max_abs": max(r["latent_max_abs"] for r in rows),
            "psnr_db": min(r.get("psnr_db", float("nan")) for r in rows),
            "finite": all(r["finite"] for r in rows), "configs": rows}


def sample_images(generate, labels, batch, seed, model) -> np.ndarray:
    out = []
    S = model["diffusion_steps"] if model["head_kind"] == "diffusion" else 0
    for i, start in enumerate(range(0, len(labels), batch)):
        lab = labels[start:start + batch]
        rnd = draw_randomness(seed + 1000 + i, len(lab), model["seq_len"], model["token_dim"], S)
        out.append(generate(lab, rnd))
    return np.concatenate(out)


def images_per_second(pipes: dict, batch: int, K: int, O: int, cfg: float, runs: int) -> dict:
    labels = list(range(batch))
    for p in pipes.values():
        p.generate(labels, K=K, O=O, cfg=cfg, seed=0)                # warm-up: sessions, buffers
    times = {k: [] for k in pipes}
    for r in range(runs):
        for k, p in pipes.items():
            t0 = time.perf_counter()
            p.generate(labels, K=K, O=O, cfg=cfg, seed=r + 1)
            times[k].append(time.perf_counter() - t0)
    return {k: {"images_per_s": batch / float(np.median(v)), "median_s": float(np.median(v)), "runs": v}
            for k, v in times.items()}


def parse_config(text: str) -> tuple[str, str, str | None, str | None]:
    """``[NAME=]PATH[@BACKEND[:PRECISION]]`` -> (name or "", path, backend, precision)."""
    name, _, rest = text.rpartition("=") if "=" in text.split("@")[0] else ("", "", text)
    path, _, run = rest.partition("@")
    backend, _, precision = run.partition(":")
    return name, path, backend or None, precision or None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--out", default="out/precision")
    ap.add_argument("--per-class", type=int, default=20, help="Images per class for accuracy / Frechet.")
    ap.add_argument("--classifier", help="Demo classifier (default: the shipped one).")
    ap.add_argument("--K", type=int, default=DEMO_SAMPLING["K"])
    ap.add_argument("--O", type=int, default=DEMO_SAMPLING["O"])
    ap.add_argument("--cfg", type=float, default=DEMO_SAMPLING["cfg"])
    ap.add_argument("--cfg-schedule", choices=["linear", "constant"],
                    default=DEMO_SAMPLING["cfg_schedule"])
    ap.add_argument("--temperature", type=float, default=DEMO_SAMPLING["temperature"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..verify import reference_for_bundle
    pipes = {}
    for b in args.bundles:
        name, path, backend, precision = parse_config(b)
        p = Pipeline.load(path, threads=args.threads, backend=backend, precision=precision)
        name = name or p.bundle.manifest.get("precision", "fp32")
        pipes[name if name not in pipes else f"{name}@{b}"] = p
    first = next(iter(pipes.values()))
    ref = reference_for_bundle(first)
    m = first.model
    K = min(args.K, m["seq_len"])
    configs = [(K, args.O, 1.0, 2), (K, args.O, args.cfg, 2)]
    report = {"source": first.bundle.manifest["source"], "settings": vars(args), "rows": {}}
    for name, p in pipes.items():
        log.info("%s: latent error and PSNR against the reference", name)
        report["rows"][name] = latent_and_psnr(p, ref, configs)
        report["rows"][name].update(backend=p.backend.name,
                                    graphs=getattr(p.backend, "precisions", None) or {
                                        g: "fp32" for g in p.bundle.graphs},
                                    stored={g: e.get("precision", "fp32") for g, e in p.bundle.graphs.items()})
    classifier = args.classifier
    if classifier is None:
        from ..quality.score import DEFAULT_CLASSIFIER
        classifier = DEFAULT_CLASSIFIER if os.path.isfile(DEFAULT_CLASSIFIER) else None
    if classifier and m["image_size"] == 32 and m["num_classes"] == 10:
        from ..quality.score import score_images
        labels = np.tile(np.arange(m["num_classes"]), args.per_class)
        batch = first.bundle.manifest["max_batch"]
        log.info("reference: %d images for accuracy / Frechet", len(labels))
        ref_imgs = sample_images(lambda lab, rnd: to_uint8(ref.decode(ref.tokens(
            lab, num_iter=K, head_steps=args.O, cfg=args.cfg, cfg_schedule=args.cfg_schedule,
            temperature=args.temperature, randomness=rnd))), labels, batch, 0, m)
        report["reference"] = score_images(ref_imgs, labels, classifier)
        for name, p in pipes.items():
            log.info("%s: %d images for accuracy / Frechet", name, len(labels))
            imgs = sample_images(lambda lab, rnd: p.generate(lab, K=K, O=args.O, cfg=args.cfg,
                                                             cfg_schedule=args.cfg_schedule,
                                                             temperature=args.temperature, randomness=rnd),
                                 labels, batch, 0, m)
            report["rows"][name]["quality"] = score_images(imgs, labels, classifier)
    log.info("images/s: %d interleaved runs of batch %d", args.runs, args.batch)
    speed = images_per_second(pipes, min(args.batch, first.bundle.manifest["max_batch"]), K, args.O,
                              args.cfg, args.runs)
    for name in pipes:
        report["rows"][name]["speed"] = speed[name]
    write_json(os.path.join(args.out, "precision.json"), report)
    md = table(report, args)
    write_text(os.path.join(args.out, "precision.md"), md + "\n")
    print(md)


def table(report: dict, args) -> str:
    base = next(iter(report["rows"].values()), {}).get("speed", {}).get("images_per_s")   # the first row
    lines = [f"K={args.K} O={args.O}; latent/PSNR: worst of cfg 1 and {args.cfg:g}, batch 2, vs the PyTorch "
             f"FP32 reference; images/s: batch {args.batch}, cfg {args.cfg:g}, median of {args.runs}",
             "", "| precision | backend | latent max abs | PSNR dB | NaN/Inf | accuracy | Frechet | images/s | vs first row |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = report.get("reference")
    if ref:
        lines.append(f"| reference (PyTorch fp32) | | 0 | inf | no | {ref['accuracy']:.3f} | {ref['frechet']:.2f} | | |")
    for name, r in report["rows"].items():
        q = r.get("quality")
        ips = r["speed"]["images_per_s"]
        quality = f"{q['accuracy']:.3f} | {q['frechet']:.2f}" if q else "n/a | n/a"
        ratio = f"{ips / base:.2f}x" if base else ""
        lines.append(f"| {name} | {r.get('backend', '')} | {r['latent_max_abs']:.3g} | {r['psnr_db']:.1f} | {'no' if r['finite'] else 'YES'} | "
                     f"{quality} | {ips:.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
