"""Exporters: every graph validated over the shape grid, manifest and reports, bad options."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from far_export.checkpoint import build_model, load_model_checkpoint
from far_export.export.bundle import export_bundle
from far_export.export.modules import graph_module
from far_export.export.onnx_export import export_onnx
from far_export.export.validate import validate_graph
from far_export.reference.sampler import shortcut_sample
from far_runtime.errors import FarError
from far_runtime.variants import component_specs, validation_grid


def _manifest(root):
    with open(os.path.join(root, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("kind", ["far", "mar"])
def test_bundle_graphs_validated_over_grid(bundles, kind):
    root = bundles[kind]
    m = _manifest(root)
    expected = {"backbone", "head_step", "vae_decoder"}
    if kind == "far":
        expected |= {"head_fused_o1", "head_fused_o2", "head_fused_o8"}
    assert set(m["graphs"]) == expected
    with open(os.path.join(root, "validation.json")) as f:
        val = json.load(f)
    for name, g in m["graphs"].items():
        assert g["validated"] and g["opset"] >= 18 and len(g["files"]) >= 1
        assert g["tolerance_achieved"] <= 1e-4
        rep = val[name]
        assert rep["passed"] and all(p["passed"] for p in rep["points"])
        for p in rep["points"]:
            for o in p["outputs"].values():
                assert o["nan_inf"] == 0 and o["max_abs"] <= 1e-4 * o["ref_max_abs"] + 1e-12
    # the backbone grid covers batch 1, 3, 8 and 0, 1, mid, L-1 known tokens
    pts = [p["dims"] for p in val["backbone"]["points"]]
    assert {p["batch"] for p in pts} >= {1, 3, 8}
    assert {p["n_known"] for p in pts} >= {0, 1, 8, 15}
    assert m["source"]["weights"] == "model_ema" and len(m["source"]["sha256"]) == 64
    assert m["versions"]["onnxruntime"] and m["versions"]["torch"]
    with open(os.path.join(root, "trt_readiness.json")) as f:
        ready = json.load(f)
    assert set(ready) == expected


def test_graph_dims_are_dynamic(bundles):
    m = onnx.load(os.path.join(bundles["far"], "backbone.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims["tokens"] == ["batch", 16, 4]
    assert dims["known_idx"] == ["batch", "n_known"]
    assert dims["pred_idx"] == ["batch", "n_pred"]


@pytest.mark.parametrize("O", [1, 2, 8])
@pytest.mark.parametrize("rows", [1, 7, 33])
def test_fused_head_matches_reference_loop(tiny_files, bundles, O, rows):
    _, head = build_model(load_model_checkpoint(tiny_files["far"]))
    sess = ort.InferenceSession(os.path.join(bundles["far"], f"head_fused_o{O}.onnx"))
    rng = np.random.default_rng(O * 100 + rows)
    noise = rng.standard_normal((rows, 4)).astype(np.float32)
    zc = rng.standard_normal((2 * rows, 32)).astype(np.float32)
    for z, cfg in ((zc, 2.5), (zc[:rows], 1.0)):
        got = sess.run(None, {"noise": noise, "z": z, "cfg": np.array([cfg], np.float32)})[0]
        with torch.no_grad():
            ref = shortcut_sample(head, torch.from_numpy(noise), torch.from_numpy(z), O,
                                  cfg if z.shape[0] != rows else None).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5 * max(1, np.abs(ref).max()), rtol=0)


def test_validation_detects_a_wrong_graph(tiny_files, tmp_path):
    from far_export.synthetic import write_random_checkpoint
    other = str(tmp_path / "other.pth")
    write_random_checkpoint(other, "tiny", "shortcut", seed=99)
    ck = load_model_checkpoint(tiny_files["far"])
    bb, head = build_model(ck)
    bb2, head2 = build_model(load_model_checkpoint(other))
    model = {"seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10,
             "head_kind": "shortcut", "image_size": 8, "image_channels": 3}
    spec = component_specs(model)["head_step"]
    path = str(tmp_path / "h.onnx")
    export_onnx(graph_module("head_step", bb2, head2, None), spec, model, path)
    rep = validate_graph(ort.InferenceSession(path), spec, graph_module("head_step", bb, head, None), model)
    assert not rep["passed"] and rep["worst_rel_to_max"] > 1e-2


def test_dynamo_exporter_and_external_data(tiny_files, tmp_path):
    out = str(tmp_path / "b")
    m = export_bundle(tiny_files["far"], None, out, components=["head"], head_steps=[2],
                      exporter="dynamo", external_data=True)
    g = m["graphs"]["head_fused_o2"]
    assert g["exporter"] == "dynamo" and any(f.endswith(".data") for f in g["files"])
    assert all(os.path.exists(os.path.join(out, f)) for f in g["files"])
    sess = ort.InferenceSession(os.path.join(out, g["file"]))
    feeds = {"noise": np.zeros((3, 4), np.float32), "z": np.zeros((6, 32), np.float32),
             "cfg": np.ones(1, np.float32)}
    r = sess.run(None, feeds)[0]
    assert r.shape == (3, 4)
    # the runtime makes the session from the verified bytes, external data included
    from far_runtime.backends import OrtBackend
    from far_runtime.bundle import load_bundle
    backend = OrtBackend(load_bundle(out))
    assert np.array_equal(backend.session("head_fused_o2").run(None, feeds)[0], r)
    data = os.path.join(out, next(f for f in g["files"] if f.endswith(".data")))
    with open(data, "r+b") as f:                             # external weights changed after load
        f.write(b"\x00\x01")
    with pytest.raises(FarError, match="sha256"):
        OrtBackend(load_bundle(out, check_hashes=False)).session("head_fused_o2")


class _IllConditioned(torch.nn.Module):
    """v = (x A) B with B = A^-1 padded: exactly x in real numbers, but A spans singular values
    1..1e5, so fp32 loses ~1e-7 x 1e5 of max |v| in any correct evaluation (PyTorch's too)."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        u, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        s = torch.logspace(0, 5, 4, dtype=torch.float64)
        a = u @ torch.diag(s) @ v.T
        b = torch.linalg.inv(a) * (1.01 if wrong else 1.0)
        self.a = torch.nn.Parameter(a.float(), requires_grad=False)
        self.b = torch.nn.Parameter(b.float(), requires_grad=False)

    def forward(self, x, t, d, z):
        return (x @ self.a) @ self.b + 0.0 * (t[:, None] + d[:, None] + z[:, :1])


def test_validation_judges_against_the_references_own_fp32_error(tmp_path):
    """A correct ill-conditioned graph fails a fixed fp32-vs-fp32 tolerance but passes against
    a float64 evaluation of the reference; a wrong one (B off by 1%) fails both."""
    model = {"seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10,
             "head_kind": "shortcut", "image_size": 8, "image_channels": 3}
    spec = component_specs(model)["head_step"]
    reports = {}
    for wrong in (False, True):
        path = str(tmp_path / f"h{wrong}.onnx")
        export_onnx(_IllConditioned(wrong), spec, model, path)
        reports[wrong] = validate_graph(ort.InferenceSession(path), spec, _IllConditioned(), model)
    ok, bad = reports[False], reports[True]
    assert ok["worst_rel_to_max"] > spec.tolerance          # the old fixed check would refuse it
    assert ok["passed"], ok["verdict"]
    judged = [o["float64"] for p in ok["points"] for o in p["outputs"].values() if "float64" in o]
    assert judged and all(j["fp64_max_abs"] <= j["fp64_budget"] for j in judged)
    assert not bad["passed"] and "float64" in bad["verdict"]


def test_validation_grid_differs_from_export_shape():
    model = {"seq_len": 256, "token_dim": 16, "cond_dim": 768, "num_classes": 1000,
             "head_kind": "shortcut", "image_size": 256, "image_channels": 3}
    for spec in component_specs(model).values():
        grid = validation_grid(spec, model)
        assert any(all(p.get(k) != v for k, v in spec.export_dims.items()) for p in grid)
        for p in grid:   # and stays inside the profile ranges
            for d, v in p.items():
                lo, _, hi = spec.ranges[d]
                assert lo <= v <= hi, (spec.name, d, v)


@pytest.mark.parametrize("kw,msg", [
    (dict(opset=17), "opset"), (dict(head_steps=[3]), "powers of two"),
    (dict(components=["backbone", "tail"]), None), (dict(max_batch=0), "max-batch"),
])
def test_bad_options(tiny_files, tmp_path, kw, msg):
    from far_export.export.bundle import parse_components
    with pytest.raises(FarError) as e:
        if "components" in kw:
            parse_components(",".join(kw["components"]))
        else:
            export_bundle(tiny_files["far"], tiny_files["vae"], str(tmp_path / "x"), **kw)
    if msg:
        assert msg in str(e.value).lower() or msg in str(e.value)
    assert not os.path.exists(tmp_path / "x" / "manifest.json")


def test_vae_component_needs_vae(tiny_files, tmp_path):
    with pytest.raises(FarError, match="--vae"):
        export_bundle(tiny_files["far"], None, str(tmp_path / "x"))


def test_cli_export_errors_exit_nonzero(tmp_path, tiny_files):
    exe = [sys.executable, "-m", "far_export.cli", "export"]
    for args in ([str(tmp_path / "nope.pth"), "--vae", tiny_files["vae"]],
                 [tiny_files["far"], "--vae", tiny_files["vae"], "--components", "bogus"],
                 [tiny_files["far"], "--vae", tiny_files["vae"], "--head-steps", "3"],
                 [tiny_files["far"], "--vae", tiny_files["far"]]):
        r = subprocess.run(exe + args + ["--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr


def _perturb_weights(path: str) -> None:
    """Rewrite an ONNX file with its largest initializer doubled (same inputs and outputs)."""
    from onnx import numpy_helper
    m = onnx.load(path)
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2.0, init.name))
    onnx.save(m, path)


@pytest.mark.parametrize("kind", ["far", "causal"])
def test_export_records_only_the_bytes_it_validated(tiny_files, tmp_path, kind):
    """Another process rewrites a graph in the staging folder as soon as it is written. Whatever
    the family, the export either validates the rewritten bytes (and refuses them) or records
    the hash of the bytes it validated (so the bundle refuses to load): it never records a
    graph it did not validate."""
    import glob
    from far_runtime.bundle import load_bundle
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint
    ckpt, target = tiny_files["far"], "backbone.onnx"
    if kind == "causal":
        ckpt, target = str(tmp_path / "causal.pth"), "causal_step.onnx"
        write_random_causal_checkpoint(ckpt, tiny_causal_config(16), seed=4)
    out = str(tmp_path / "out")
    rewritten = []

    def progress(msg):
        staged = glob.glob(str(tmp_path / ".out.staging-*" / target))
        if staged and not rewritten:
            _perturb_weights(staged[0])
            rewritten.append(msg)

    try:
        export_bundle(ckpt, None, out, components=["backbone"], validate_batches=[1],
                      progress=progress)
    except FarError as e:
        assert rewritten and "Validation failed" in str(e)
        assert not os.path.exists(os.path.join(out, "manifest.json"))
        return
    assert rewritten
    with pytest.raises(FarError, match="sha256"):
        load_bundle(out)
