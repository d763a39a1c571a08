"""Export a checkpoint to a bundle: graphs, validation JSON, readiness report, manifest.

A bundle folder holds one ``.onnx`` per graph (plus ``.onnx.data`` for large ones),
``validation.json``, ``trt_readiness.json`` and ``manifest.json``. The manifest is written
last and atomically: a folder without one is not a bundle. Everything is built in a staging
folder beside ``out_dir`` under a lock and swapped in whole at the end (``staging.py``), so a
failed, killed or concurrent export never damages the bundle already there. Every option is
checked before the checkpoint is read.

One path for every model family (``far_export/families``): the family gives the model entry,
its backbone graphs (the runtime variant's) and their wrappers and validation points; each
graph is exported, its bytes hashed once, and a session made from those very bytes is
validated, so what the manifest records is what was validated.
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
from far_runtime.specs import fused_name
from far_runtime.variants import component_specs, variant_for

from .. import __version__
from ..checkpoint import (build_model, build_vae, load_model_checkpoint, load_vae_checkpoint,
                          sha256_file)
from ..families import family_of_config
from .modules import graph_module
from .onnx_export import MIN_OPSET, export_onnx
from .staging import check_out_folder, staged_bundle
from .validate import validate_graph

log = logging.getLogger(__name__)

COMPONENTS = ("backbone", "head", "vae")


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


def _positive_int(value, option: str, lo: int = 1, hi: int | None = None) -> int:
    import operator
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise FarError(f"{option} must be an integer, got {value!r}.") from None
    if v < lo or (hi is not None and v > hi):
        raise FarError(f"{option} must be in {lo}..{hi}, got {v}." if hi is not None
                       else f"{option} must be at least {lo}, got {v}.")
    return v


def check_export_options(out_dir, components, head_steps, opset, exporter, max_batch, weights,
                         heads, validate_batches, precision) -> tuple:
    """Every option of an export, refused in one sentence before any file is read or written."""
    import onnx
    components = list(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        raise FarError(f"--components takes a comma-separated subset of {','.join(COMPONENTS)}, got {components}.")
    head_steps = check_head_steps_list(head_steps)
    max_batch = _positive_int(max_batch, "--max-batch", 1, rt_bundle.MAX_BATCH_LIMIT)
    top = onnx.defs.onnx_opset_version()
    opset = _positive_int(opset, "--opset", 0)
    if not MIN_OPSET <= opset <= top:
        raise FarError(f"--opset must be in {MIN_OPSET}..{top} (the graphs need >= {MIN_OPSET}; the "
                       f"installed onnx {onnx.__version__} knows up to {top}), got {opset}.")
    if exporter not in ("legacy", "dynamo"):
        raise FarError(f"--exporter must be 'legacy' or 'dynamo', got {exporter!r}.")
    if weights not in ("ema", "model"):
        raise FarError(f"--weights must be 'ema' or 'model', got {weights!r}.")
    if heads is not None:
        heads = _positive_int(heads, "--heads", 1, 1024)
    if not validate_batches or any(not isinstance(b, int) or not 1 <= b <= max_batch for b in validate_batches):
        raise FarError(f"--validate-batches must be batch sizes in 1..{max_batch}, got {list(validate_batches)}.")
    if precision not in ("fp32", "fp16", "int8", "auto"):
        raise FarError(f"--precision must be fp32, fp16, int8 or auto, got {precision!r}.")
    check_out_folder(out_dir)
    return components, head_steps, opset, max_batch, heads


def wanted_graphs(model: dict, components, head_steps) -> list[str]:
    """The graphs of the requested components, in manifest order: the variant's backbone
    graphs, the head step (and a fused graph per O for shortcut heads), the VAE decoder."""
    out = []
    if "backbone" in components:
        out += list(variant_for(model).backbone_graphs)
    if "head" in components:
        out.append("head_step")
        if model["head_kind"] == "shortcut":
            out += [fused_name(o) for o in head_steps]
    if "vae" in components:
        out.append("vae_decoder")
    return out


def check_vae_fits(vae_ck, model: dict) -> None:
    """Refuse a VAE whose latent channels are not the model's token channels."""
    if vae_ck and vae_ck.config.embed_dim != model["token_dim"]:
        raise FarError(f"The VAE's latent has {vae_ck.config.embed_dim} channels but the model's "
                       f"tokens have {model['token_dim']}; they do not belong together.")


def export_bundle(checkpoint: str, vae: str | None, out_dir: str, components=COMPONENTS,
                  head_steps=(1, 2, 4, 8), opset: int = 18, exporter: str = "legacy",
                  max_batch: int = 8, weights: str = "ema", heads: int | None = None,
                  external_data: bool = False, progress=None, validate_batches=(1, 3, 8),
                  precision: str = "fp32", precision_options=None, force_heads: bool = False) -> dict:
    """Export, check, validate and describe every requested graph; returns the manifest.

    ``precision`` fp16 or int8 then rewrites the validated fp32 graphs (``precision/convert.py``)."""
    say = progress or (lambda msg: log.info(msg))
    components, head_steps, opset, max_batch, heads = check_export_options(
        out_dir, components, head_steps, opset, exporter, max_batch, weights, heads,
        validate_batches, precision)
    if "vae" in components and not vae:
        raise FarError("Exporting the VAE decoder needs --vae FILE (or leave 'vae' out of --components).")
    ort = import_onnxruntime()
    ck = load_model_checkpoint(checkpoint, weights, heads, force_heads=force_heads)
    vae_ck = load_vae_checkpoint(vae) if vae else None
    family = family_of_config(ck.config)
    family.check_precision(ck.config, precision)
    backbone, head = build_model(ck)
    vae_mod = build_vae(vae_ck) if vae_ck else None
    model = family.model_entry(ck.config, vae_ck.config if vae_ck else None)
    check_vae_fits(vae_ck, model)
    specs = component_specs(model, max_batch, head_steps if model["head_kind"] == "shortcut" else ())
    wanted = wanted_graphs(model, components, head_steps)
    with staged_bundle(out_dir) as stage:
        graphs, reports, readiness = {}, {}, {}
        for i, name in enumerate(wanted):
            spec = specs[name]
            say(f"[{i + 1}/{len(wanted)}] {name}: exporting")
            module = graph_module(name, backbone, head, vae_mod, spec.head_steps)
            path = os.path.join(stage, f"{name}.onnx")
            facts = export_onnx(module, spec, model, path, opset, exporter, external_data)
            say(f"[{i + 1}/{len(wanted)}] {name}: {facts['nodes']} nodes, {facts['bytes'] / 1e6:.1f} MB "
                f"in {facts['export_seconds']:.2f}s; validating")
            # Hash first, then validate a session made from those very bytes: what is hashed is
            # what was validated, even if something else writes the folder meanwhile.
            hashes = {f: sha256_file(os.path.join(stage, f)) for f in facts["files"]}
            sess = _session_from_files(ort, stage, facts["files"], hashes)
            rep = validate_graph(sess, spec, module, model, head=head, batches=validate_batches)
            reports[name] = rep
            readiness[name] = _readiness(path)
            say(f"[{i + 1}/{len(wanted)}] {name}: worst error {rep['worst_rel_to_max']:.2e} of max "
                f"|output| over {len(rep['points'])} shapes ({'ok' if rep['passed'] else 'OVER TOLERANCE'})")
            if not rep["passed"]:
                raise FarError(f"Validation failed for {name}: {rep['verdict']}; nothing was written "
                               f"and {out_dir} is unchanged.")
            graphs[name] = {"file": facts["files"][0], "files": hashes,
                            "precision": "fp32", "opset": facts["opset"], "nodes": facts["nodes"],
                            "bytes": facts["bytes"], "exporter": exporter,
                            "export_seconds": facts["export_seconds"], "spec": spec.to_dict(),
                            "tolerance_achieved": rep["worst_rel_to_max"], "validated": rep["passed"]}
        write_json(os.path.join(stage, "validation.json"), reports)
        # in the order of the variant's specs, as tensorrt.bundle_readiness writes it
        write_json(os.path.join(stage, "trt_readiness.json"), {g: readiness[g] for g in specs if g in readiness})
        manifest = {
            "format": rt_bundle.FORMAT, "format_version": rt_bundle.FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {"checkpoint": os.path.abspath(checkpoint), "sha256": ck.sha256,
                       "weights": ck.weights, "vae": os.path.abspath(vae) if vae else None,
                       "vae_sha256": vae_ck.sha256 if vae_ck else None},
            "config": {**ck.config.to_dict(), "vae": asdict(vae_ck.config) if vae_ck else None},
            "precision": "fp32", "model": model, "max_batch": max_batch,
            "head_steps": head_steps if model["head_kind"] == "shortcut" else [],
            "graphs": graphs, "versions": versions(),
        }
        if precision != "fp32":
            from ..precision.convert import PrecisionOptions, convert_bundle
            opts = precision_options or PrecisionOptions(precision)
            manifest, rewritten = convert_bundle(stage, manifest, opts, progress=say)
            readiness.update(rewritten)
            write_json(os.path.join(stage, "trt_readiness.json"), readiness)
        write_json(os.path.join(stage, rt_bundle.MANIFEST), manifest)
    return manifest


def _session_from_files(ort, folder: str, files: list[str], hashes: dict):
    """An onnxruntime session from bytes read once and checked against ``hashes``."""
    blobs = {}
    for f in files:
        with open(os.path.join(folder, f), "rb") as fh:
            blobs[f] = fh.read()
        if rt_bundle.sha256_bytes(blobs[f]) != hashes[f]:
            raise FarError(f"{f} changed while it was being exported (another process writes "
                           f"{folder}?); nothing was written.")
    from far_runtime.backends import EXTERNAL_FOLDER_KEY
    options = ort.SessionOptions()
    options.add_session_config_entry(EXTERNAL_FOLDER_KEY, os.path.realpath(folder))
    extra = files[1:]
    if extra:
        bufs = [np.frombuffer(blobs[f], dtype=np.uint8) for f in extra]
        options.add_external_initializers_from_files_in_memory(extra, bufs, [b.size for b in bufs])
    return ort.InferenceSession(blobs[files[0]], options, providers=["CPUExecutionProvider"])


def _readiness(path: str) -> dict:
    try:
        from ..tensorrt.readiness import check_graph
    except ImportError:
        return {"checked": False, "reason": "TensorRT readiness checker not available"}
    report = check_graph(path)
    return report.to_dict()
