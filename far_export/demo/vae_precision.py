"""The demo VAE decoder in fp16 and int8 on real latents (encoded demo images), scored.

    python -m far_export.demo.vae_precision --vae far_export/demo/assets/vae_demo.pth

Needs the whole demo VAE (encoder included, as the demo recipe writes it) and the demo
classifier. Latents of freshly drawn labelled demo images are the decoder's real inputs:
192 images calibrate (fp16 ranges, int8 ranges), 500 others are decoded by the fp32, fp16 and
int8 graphs and scored: PSNR against the fp32 decode, classifier accuracy and Fréchet distance
(the original images scored alongside). A check of the decoder alone, independent of how well
the FAR model is trained.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile

import numpy as np
import onnx
import torch

from far_runtime.files import write_json

log = logging.getLogger(__name__)


def _latents(vae, n: int, seed: int):
    from .dataset import make_dataset
    from .train_vae import encode_moments
    from ..reference.vae import latent_to_tokens
    images, labels = make_dataset(n, seed)
    with torch.no_grad():
        mean, _ = encode_moments(vae, images)
    return images, labels, latent_to_tokens(mean, vae.cfg.scale_factor).numpy().astype(np.float32)


def main(argv=None):
    import onnxruntime as ort
    from far_runtime.images import to_uint8
    from ..checkpoint import load_vae_checkpoint
    from ..config import infer_vae_config
    from ..quality.score import score_images
    from ..export.modules import graph_module
    from ..export.onnx_export import export_onnx
    from ..reference.vae import AutoencoderKL
    from ..verify import psnr
    from ..precision.fp16 import to_fp16
    from ..precision.int8 import Int8Settings, quantize_graph
    from far_runtime.variants import component_specs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", required=True)
    ap.add_argument("--classifier", help="Demo classifier (default: the shipped one).")
    ap.add_argument("--out", default="out/vae_check")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    obj = torch.load(args.vae, weights_only=True)
    sd = obj["model"]
    if not any(k.startswith("encoder.") for k in sd):
        raise SystemExit(f"{args.vae} has no encoder weights; the check needs the whole demo VAE.")
    vae = AutoencoderKL(infer_vae_config(sd, obj.get("scale_factor"))).eval()
    vae.load_state_dict(sd)
    vck = load_vae_checkpoint(args.vae)
    side = 8
    model = {"seq_len": side * side, "token_dim": vck.config.embed_dim, "cond_dim": 1, "num_classes": 10,
             "head_kind": "shortcut", "diffusion_steps": 0, "image_size": side * vck.config.downsample,
             "image_channels": vck.config.out_ch}
    spec = component_specs(model)["vae_decoder"]
    os.makedirs(args.out, exist_ok=True)
    p32 = os.path.join(args.out, "vae_decoder.onnx")
    from ..checkpoint import build_vae
    export_onnx(graph_module("vae_decoder", None, None, build_vae(vck)), spec, model, p32)
    _, _, calib_tokens = _latents(vae, 192, 11)
    images, labels, tokens = _latents(vae, 500, 22)
    calib = [{"tokens": calib_tokens[i:i + 8]} for i in range(0, len(calib_tokens), 8)]
    held = [{"tokens": tokens[i:i + 8]} for i in range(0, 96, 8)]
    m16, fp16_info = to_fp16(onnx.load(p32), calib)
    p16 = os.path.join(args.out, "vae_decoder.fp16.onnx")
    onnx.save(m16, p16)
    p8 = os.path.join(args.out, "vae_decoder.int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        int8_info = quantize_graph(p32, p8, calib, held, os.path.join(tmp, "ranges.json"), Int8Settings(),
                                   "vae_decoder")
    paths = {"fp32": p32, "fp16": p16}
    if int8_info["precision"] == "int8":
        paths["int8"] = p8
    decoded = {}
    for k, p in paths.items():
        sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        decoded[k] = np.concatenate([sess.run(None, {"tokens": tokens[i:i + 8]})[0] for i in range(0, len(tokens), 8)])
    report = {"real_images": score_images(images, labels, args.classifier),
              "fp16_kept": fp16_info["kept"], "int8": {k: v for k, v in int8_info.items() if k != "sensitivity"},
              "rows": {}}
    for k, d in decoded.items():
        s = score_images(to_uint8(d), labels, args.classifier)
        report["rows"][k] = {"psnr_db_vs_fp32": psnr(d, decoded["fp32"]), "accuracy": s["accuracy"],
                             "frechet": s["frechet"], "finite": bool(np.isfinite(d).all())}
    write_json(os.path.join(args.out, "vae_check.json"), report)
    print(f"real images: accuracy {report['real_images']['accuracy']:.3f}, Frechet {report['real_images']['frechet']:.2f}")
    print("| decoder | PSNR vs fp32 dB | accuracy | Frechet | finite |\n|---|---|---|---|---|")
    for k, r in report["rows"].items():
        print(f"| {k} | {r['psnr_db_vs_fp32']:.1f} | {r['accuracy']:.3f} | {r['frechet']:.2f} | {r['finite']} |")
    print("fp16 kept: " + "; ".join(f"{k['node']} ({k['reasons'][0]})" for k in fp16_info["kept"]))
    print(f"int8: {int8_info['precision']}, error {int8_info.get('error')}, float nodes "
          f"{[e['node'] for e in int8_info.get('excluded', [])]}, timing {int8_info.get('timing')}")


if __name__ == "__main__":
    main()
