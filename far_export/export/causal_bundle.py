"""Export a FAR-Causal checkpoint to a bundle (same folder layout and manifest as ``bundle.py``).

Graphs: ``causal_prefill``, ``causal_step``, ``causal_recompute`` (the no-cache baseline),
the shared shortcut head graphs (``head_step``, ``head_fused_o{O}``) and ``vae_decoder``.
The causal graphs are validated by ``causal_validate`` (positions 0, 1, L/2, L-1; batch 1
and 3; CFG off and on), the head and VAE graphs by ``validate.validate_graph`` as for FAR.
fp32 only: fp16/int8 calibration drives the MAR/FAR loop.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

from far_runtime import bundle as rt_bundle
from far_runtime.backends import import_onnxruntime
from far_runtime.variants.causal import Causal
CAUSAL_GRAPHS = Causal.backbone_graphs
from far_runtime.errors import FarError
from far_runtime.files import write_json
from far_runtime.specs import fused_name
from far_runtime.variants import component_specs

from ..checkpoint import build_model, build_vae, sha256_file
from .bundle import check_vae_fits
from .causal_modules import causal_graph_module
from .causal_validate import validate_causal
from .staging import staged_bundle
from .onnx_export import export_onnx
from .validate import validate_graph

log = logging.getLogger(__name__)


def causal_model_entry(ck, vae_ck) -> dict:
    bb = ck.config.backbone
    side = int(round(bb.seq_len ** 0.5))
    if side * side != bb.seq_len:
        raise FarError(f"The token sequence has {bb.seq_len} tokens, which is not a square grid.")
    return {"kind": "causal", "seq_len": bb.seq_len, "token_dim": bb.token_dim,
            "cond_dim": bb.width, "num_classes": bb.num_classes, "head_kind": "shortcut",
            "diffusion_steps": 0, "class_tokens": bb.class_tokens, "context": bb.context,
            "depth": bb.depth, "heads": bb.heads, "head_dim": bb.head_dim,
            "image_size": side * vae_ck.config.downsample if vae_ck else 0,
            "image_channels": vae_ck.config.out_ch if vae_ck else 0,
            "vae_scale": vae_ck.config.scale_factor if vae_ck else 0.0}


def wanted_graphs(components, head_steps) -> list[str]:
    out = []
    if "backbone" in components:
        out += list(CAUSAL_GRAPHS)
    if "head" in components:
        out += ["head_step"] + [fused_name(o) for o in head_steps]
    if "vae" in components:
        out.append("vae_decoder")
    return out


def export_causal_bundle(ck, vae_ck, out_dir: str, components, head_steps, opset: int,
                         exporter: str, max_batch: int, external_data: bool, say,
                         validate_batches, precision: str, versions: dict,
                         tolerance: float = 1e-4) -> dict:
    """Called by ``bundle.export_bundle`` once it has read a causal checkpoint."""
    if precision != "fp32":
        raise FarError(f"FAR-Causal bundles are fp32 only for now (got --precision {precision}).")
    ort = import_onnxruntime()
    backbone, head = build_model(ck)
    vae_mod = build_vae(vae_ck) if vae_ck else None
    model = causal_model_entry(ck, vae_ck)
    check_vae_fits(vae_ck, model)
    specs = component_specs(model, max_batch, head_steps, tolerance)
    wanted = wanted_graphs(components, head_steps)
    # Staged like every bundle (staging.py): written beside out_dir and swapped in whole, so a
    # failed export leaves the old bundle as it was, and a FAR bundle replaced by a causal one
    # leaves none of its files (backbone.onnx, trt_readiness.json) behind.
    with staged_bundle(out_dir) as stage:
        manifest = _export_into(stage, out_dir, ck, vae_ck, backbone, head, vae_mod, model, specs,
                                wanted, opset, exporter, max_batch, external_data, say,
                                validate_batches, head_steps, versions, tolerance, ort)
    return manifest


def _export_into(stage, out_dir, ck, vae_ck, backbone, head, vae_mod, model, specs, wanted, opset,
                 exporter, max_batch, external_data, say, validate_batches, head_steps, versions,
                 tolerance, ort) -> dict:
    """Every graph exported into ``stage``, validated, hashed; the manifest last."""
    graphs, reports, sessions, facts_by = {}, {}, {}, {}
    for i, name in enumerate(wanted):
        spec = specs[name]
        say(f"[{i + 1}/{len(wanted)}] {name}: exporting")
        module = causal_graph_module(name, backbone, head, vae_mod, spec.head_steps)
        path = os.path.join(stage, f"{name}.onnx")
        facts_by[name] = facts = export_onnx(module, spec, model, path, opset, exporter, external_data)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        if name in CAUSAL_GRAPHS:
            sessions[name] = sess
        else:
            reports[name] = validate_graph(sess, spec, module, model, head=head,
                                           batches=validate_batches)
        say(f"[{i + 1}/{len(wanted)}] {name}: {facts['nodes']} nodes, {facts['bytes'] / 1e6:.1f} MB "
            f"in {facts['export_seconds']:.2f}s")
    if sessions:
        say("validating the causal graphs at positions 0, 1, L/2, L-1 (batch "
            f"{', '.join(map(str, validate_batches))}; CFG off and on)")
        reports.update(validate_causal(sessions, backbone, tolerance, validate_batches))
    for name in wanted:
        facts, rep = facts_by[name], reports[name]
        say(f"{name}: worst error {rep['worst_rel_to_max']:.2e} of max |output| over "
            f"{len(rep['points'])} points ({'ok' if rep['passed'] else 'OVER TOLERANCE'})")
        graphs[name] = {"file": facts["files"][0], "files": {f: sha256_file(os.path.join(stage, f))
                                                             for f in facts["files"]},
                        "precision": "fp32", "opset": facts["opset"], "nodes": facts["nodes"],
                        "bytes": facts["bytes"], "exporter": exporter,
                        "export_seconds": facts["export_seconds"], "spec": specs[name].to_dict(),
                        "tolerance_achieved": rep["worst_rel_to_max"], "validated": rep["passed"]}
    write_json(os.path.join(stage, "validation.json"), reports)
    manifest = {
        "format": rt_bundle.FORMAT, "format_version": rt_bundle.FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"checkpoint": os.path.abspath(ck.path), "sha256": ck.sha256,
                   "weights": ck.weights, "vae": os.path.abspath(vae_ck.path) if vae_ck else None,
                   "vae_sha256": vae_ck.sha256 if vae_ck else None},
        "config": {**ck.config.to_dict(), "vae": asdict(vae_ck.config) if vae_ck else None},
        "precision": "fp32", "model": model, "max_batch": max_batch, "head_steps": list(head_steps),
        "graphs": graphs, "versions": versions,
    }
    failed = [n for n, r in reports.items() if not r["passed"]]
    if failed:
        worst = ", ".join(f"{n} {reports[n]['worst_rel_to_max']:.2e}" for n in failed)
        raise FarError(f"Validation failed for {', '.join(failed)} (worst error of max |output|: "
                       f"{worst}); nothing was written and {out_dir} is unchanged.")
    write_json(os.path.join(stage, rt_bundle.MANIFEST), manifest)
    return manifest
