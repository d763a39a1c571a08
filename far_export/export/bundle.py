"""Export a checkpoint to a bundle: graphs, validation JSON, readiness report, manifest.

A bundle folder holds one ``.onnx`` per graph (plus ``.onnx.data`` for large ones),
``validation.json``, ``trt_readiness.json`` and ``manifest.json``. The manifest is written
last and atomically: a folder without one is not a bundle.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict

import numpy as np

from far_runtime import bundle as rt_bundle
from far_runtime.backends import import_onnxruntime
from far_runtime.errors import FarError
from far_runtime.files import write_json
from far_runtime.schedule import MAX_HEAD_STEPS, valid_head_steps
from far_runtime.specs import component_specs, fused_name

from .. import __version__
from ..checkpoint import (atomic_write, build_model, build_vae, load_model_checkpoint,
                          load_vae_checkpoint, sha256_file)
from .modules import graph_module
from .onnx_export import export_onnx
from .validate import validate_graph

log = logging.getLogger(__name__)

COMPONENTS = ("backbone", "head", "vae")


def model_entry(ck, vae_ck) -> dict:
    bb, hd = ck.config.backbone, ck.config.head
    side = int(round(bb.seq_len ** 0.5))
    if side * side != bb.seq_len:
        raise FarError(f"The token sequence has {bb.seq_len} tokens, which is not a square grid.")
    return {"seq_len": bb.seq_len, "token_dim": bb.token_dim, "cond_dim": bb.decoder_width,
            "num_classes": bb.num_classes, "head_kind": hd.kind,
            "diffusion_steps": hd.diffusion_steps if hd.kind == "diffusion" else 0,
            "image_size": side * vae_ck.config.downsample if vae_ck else 0,
            "image_channels": vae_ck.config.out_ch if vae_ck else 0,
            "vae_scale": vae_ck.config.scale_factor if vae_ck else 0.0}


def parse_components(text: str) -> list[str]:
    comps = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        raise FarError(f"--components takes a comma-separated subset of {','.join(COMPONENTS)}, "
                       f"got {text!r}.")
    return comps


def check_head_steps_list(steps) -> list[int]:
    out = []
    for o in steps:
        if not valid_head_steps(o):
            raise FarError(f"--head-steps takes powers of two in 1..{MAX_HEAD_STEPS}, got {o!r}.")
        out.append(o)
    return sorted(set(out))


def versions() -> dict:
    import onnx
    import torch
    v = {"far_export": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "onnx": onnx.__version__, "numpy": np.__version__}
    try:
        v["onnxruntime"] = import_onnxruntime().__version__
    except FarError:
        v["onnxruntime"] = None
    return v


def export_bundle(checkpoint: str, vae: str | None, out_dir: str, components=COMPONENTS,
                  head_steps=(1, 2, 4, 8), opset: int = 18, exporter: str = "legacy",
                  max_batch: int = 8, weights: str = "ema", heads: int | None = None,
                  external_data: bool = False, progress=None, validate_batches=(1, 3, 8),
                  precision: str = "fp32", precision_options=None) -> dict:
    """Export, check, validate and describe every requested graph; returns the manifest.

    ``precision`` fp16 or int8 then rewrites the validated fp32 graphs (``precision/convert.py``)."""
    say = progress or (lambda msg: log.info(msg))
    components = list(components)
    head_steps = check_head_steps_list(head_steps)
    if not 1 <= max_batch <= 1024:
        raise FarError(f"--max-batch must be in 1..1024, got {max_batch}.")
    if not validate_batches or any(not 1 <= b <= max_batch for b in validate_batches):
        raise FarError(f"--validate-batches must be batch sizes in 1..{max_batch}, got {list(validate_batches)}.")
    if "vae" in components and not vae:
        raise FarError("Exporting the VAE decoder needs --vae FILE (or leave 'vae' out of --components).")
    ort = import_onnxruntime()
    ck = load_model_checkpoint(checkpoint, weights, heads)
    vae_ck = load_vae_checkpoint(vae) if vae else None
    backbone, head = build_model(ck)
    vae_mod = build_vae(vae_ck) if vae_ck else None
    model = model_entry(ck, vae_ck)
    if vae_ck and vae_ck.config.embed_dim != model["token_dim"]:
        raise FarError(f"The VAE's latent has {vae_ck.config.embed_dim} channels but the model's "
                       f"tokens have {model['token_dim']}; they do not belong together.")
    specs = component_specs(model, max_batch, head_steps if model["head_kind"] == "shortcut" else ())
    wanted = []
    if "backbone" in components:
        wanted.append("backbone")
    if "head" in components:
        wanted.append("head_step")
        if model["head_kind"] == "shortcut":
            wanted += [fused_name(o) for o in head_steps]
    if "vae" in components:
        wanted.append("vae_decoder")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, rt_bundle.MANIFEST)):
        os.unlink(os.path.join(out_dir, rt_bundle.MANIFEST))   # a half-updated bundle is no bundle
    graphs, reports, readiness = {}, {}, {}
    for i, name in enumerate(wanted):
        spec = specs[name]
        say(f"[{i + 1}/{len(wanted)}] {name}: exporting")
        module = graph_module(name, backbone, head, vae_mod, spec.head_steps)
        path = os.path.join(out_dir, f"{name}.onnx")
        facts = export_onnx(module, spec, model, path, opset, exporter, external_data)
        say(f"[{i + 1}/{len(wanted)}] {name}: {facts['nodes']} nodes, {facts['bytes'] / 1e6:.1f} MB "
            f"in {facts['export_seconds']:.2f}s; validating")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rep = validate_graph(sess, spec, module, model, head=head, batches=validate_batches)
        reports[name] = rep
        readiness[name] = _readiness(path)
        say(f"[{i + 1}/{len(wanted)}] {name}: worst error {rep['worst_rel_to_max']:.2e} of max "
            f"|output| over {len(rep['points'])} shapes ({'ok' if rep['passed'] else 'OVER TOLERANCE'})")
        graphs[name] = {"file": facts["files"][0], "files": {f: sha256_file(os.path.join(out_dir, f))
                                                             for f in facts["files"]},
                        "precision": "fp32", "opset": facts["opset"], "nodes": facts["nodes"],
                        "bytes": facts["bytes"], "exporter": exporter,
                        "export_seconds": facts["export_seconds"], "spec": spec.to_dict(),
                        "tolerance_achieved": rep["worst_rel_to_max"], "validated": rep["passed"]}
    write_json(os.path.join(out_dir, "validation.json"), reports)
    write_json(os.path.join(out_dir, "trt_readiness.json"), readiness)
    manifest = {
        "format": rt_bundle.FORMAT, "format_version": rt_bundle.FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.sha256,
                   "weights": ck.weights, "vae": os.path.abspath(vae) if vae else None,
                   "vae_sha256": vae_ck.sha256 if vae_ck else None},
        "config": {**ck.config.to_dict(), "vae": asdict(vae_ck.config) if vae_ck else None},
        "precision": "fp32", "model": model, "max_batch": max_batch, "head_steps": head_steps if model["head_kind"] == "shortcut" else [],
        "graphs": graphs, "versions": versions(),
    }
    failed = [n for n, r in reports.items() if not r["passed"]]
    if failed:
        raise FarError(f"Validation failed for {', '.join(failed)}: see "
                       f"{os.path.join(out_dir, 'validation.json')}; no manifest was written.")
    if precision != "fp32":
        from ..precision.convert import PrecisionOptions, convert_bundle
        opts = precision_options or PrecisionOptions(precision)
        manifest, rewritten = convert_bundle(out_dir, manifest, opts, progress=say)
        readiness.update(rewritten)
        write_json(os.path.join(out_dir, "trt_readiness.json"), readiness)
    write_json(os.path.join(out_dir, rt_bundle.MANIFEST), manifest)
    return manifest


def _readiness(path: str) -> dict:
    try:
        from ..tensorrt.readiness import check_graph
    except ImportError:
        return {"checked": False, "reason": "TensorRT readiness checker not available"}
    report = check_graph(path)
    return report.to_dict()
