"""FP16 and INT8 bundles of the tiny model: measured keep-list, Q/DQ form, cache, runtime."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from far_export.precision.calibration import CalibrationSettings, collect_feeds
from far_export.precision.convert import PrecisionOptions
from far_export.precision.fp16 import KeepRules, keep_list, record_ranges
from far_export.export.bundle import export_bundle
from far_export.tensorrt.readiness import check_graph
from far_export.synthetic import write_random_checkpoint
from far_export.verify import verify_bundle
from far_runtime.bundle import load_bundle
from far_runtime.pipeline import Pipeline

SETTINGS = CalibrationSettings(seeds=(0,), batch=2, max_samples=12)


def _build(ckpt, vae, out, precision, cache):
    return export_bundle(ckpt, vae, out, head_steps=(1, 2), validate_batches=(1, 3),
                         precision=precision,
                         precision_options=PrecisionOptions(precision, calibration=SETTINGS, cache_dir=cache))


@pytest.fixture(scope="module")
def lowered(tiny_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("lowered")
    cache = str(d / "cache")
    out = {"cache": cache}
    for p in ("fp16", "int8"):
        out[p] = str(d / p)
        _build(tiny_files["far"], tiny_files["vae"], out[p], p, cache)
    return out


def _manifest(root):
    with open(os.path.join(root, "manifest.json")) as f:
        return json.load(f)


def _float_types(model):
    return {i.data_type for i in model.graph.initializer}


def test_fp16_bundle_has_fp16_weights_and_float32_io(lowered):
    m = _manifest(lowered["fp16"])
    assert m["precision"] == "fp16"
    for name, g in m["graphs"].items():
        assert g["precision"] == "fp16" and g["fp16"]["validated"], name
        assert g["fp16"]["rel_to_max"] <= 1e-2 and g["fp16"]["nan_inf"] == 0
        model = onnx.load(os.path.join(lowered["fp16"], g["file"]))
        assert onnx.TensorProto.FLOAT16 in _float_types(model), name
        for vi in list(model.graph.input) + list(model.graph.output):
            assert vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), vi.name
        assert g["fp16"]["calibration"]["samples"] > 0
    load_bundle(lowered["fp16"])                       # hashes re-recorded


def test_fp16_keep_list_comes_from_recorded_ranges(lowered):
    """The head's time embedding feeds Sin/Cos with t x 1000 x freq: those nodes and the ones
    computing their argument are kept, each with the number that broke a rule."""
    kept = _manifest(lowered["fp16"])["graphs"]["head_step"]["fp16"]["kept"]
    assert kept
    ops = {k["op"] for k in kept}
    assert {"Sin", "Cos"} <= ops and "Mul" in ops
    for k in kept:
        assert k["reasons"] and all(r.startswith(("range:", "precision:")) for r in k["reasons"])
    sin = next(k for k in kept if k["op"] == "Sin")
    assert "argument reaches" in sin["reasons"][0]
    model = onnx.load(os.path.join(lowered["fp16"], "head_step.onnx"))
    by_name = {n.name: n for n in model.graph.node}
    assert by_name[sin["node"]].op_type == "Sin"           # still there, fed by a float32 argument


def test_inflating_a_layers_activations_keeps_that_node(bundles):
    bundle = load_bundle(bundles["far"])
    feeds = collect_feeds(bundle, SETTINGS)["backbone"]["calibration"]
    model = onnx.load(bundle.path("backbone"))
    rules = KeepRules()
    base = keep_list(model, record_ranges(model, feeds), rules)
    nodes = {n.name: n for n in model.graph.node}
    fc1, fc2 = (next(n for n in model.graph.node if n.op_type == "MatMul" and f"encoder_blocks.0/mlp/{f}" in n.name)
                for f in ("fc1", "fc2"))
    assert fc2.name not in {k["node"] for k in base}
    before = record_ranges(model, feeds)[fc2.output[0]].max_abs
    # Scale fc1 and fc2 weights (and fc1's bias) by s: GELU is ~linear for large inputs, so
    # fc2's output grows by ~s^2 while no weight comes near the range limit.
    s = float(np.sqrt(8 * rules.range_limit / before))
    inits = {i.name: i for i in model.graph.initializer}
    scaled = [i for n in (fc1, fc2) for i in n.input if i in inits]
    add1 = next(n for n in model.graph.node if n.op_type == "Add" and fc1.output[0] in n.input)
    scaled += [i for i in add1.input if i in inits]
    for w in scaled:
        inits[w].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[w]) * np.float32(s), w))
    assert max(np.abs(numpy_helper.to_array(inits[w])).max() for w in scaled) < rules.range_limit
    stats = record_ranges(model, feeds)
    assert stats[fc2.output[0]].max_abs > rules.range_limit
    kept = {k["node"]: k for k in keep_list(model, stats, rules)}
    assert fc2.name in kept and nodes[fc2.name].op_type == "MatMul"
    assert any(r.startswith(f"range: output {fc2.output[0]} reaches") for r in kept[fc2.name]["reasons"])
    assert not any("reaches" in r and "onnx::" in r for r in kept[fc2.name]["reasons"])  # no weight did it


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_runtime_runs_reduced_precision_bundles(lowered, precision):
    pipe = Pipeline.load(lowered[precision])
    trace = []
    tokens = pipe.generate_tokens([1, 2, 3], K=8, O=2, cfg=3.0, seed=4, trace=trace)
    assert all(np.isfinite(t).all() for t in trace) and np.isfinite(tokens).all()
    images = pipe.generate([0, 5], K=8, O=1, cfg=1.0, seed=1, head="step")
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 3)


def test_int8_graphs_are_explicit_qdq_with_per_channel_weights(lowered):
    m = _manifest(lowered["int8"])
    assert m["precision"] == "int8"
    assert m["graphs"]["backbone"]["precision"] == "int8"
    for name, g in m["graphs"].items():
        info = g["int8"]
        assert info["calibration"]["samples"] > 0 and len(info["calibration"]["cache_key"]) == 64
        if g["precision"] != "int8":
            assert info["reason"]                       # a graph left in float says why
            continue
        path = os.path.join(lowered["int8"], g["file"])
        model = onnx.load(path)
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                       and n.input[1] in inits and inits[n.input[1]].size > 1]
        assert per_channel, name
        for n in model.graph.node:                      # symmetric: every zero point is 0
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                assert not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8
        assert not any(v.dtype == np.int32 for v in inits.values())       # biases stay float
        report = check_graph(path)
        assert report.ok, report.summary()
        assert info["error"] <= info["error_budget"]


def test_calibration_cache_is_reused_and_keyed_by_checkpoint(lowered, tiny_files, tmp_path):
    first = _manifest(lowered["int8"])["graphs"]
    assert _manifest(lowered["fp16"])["graphs"]["backbone"]["fp16"]["calibration"]["cache"] == "miss"
    assert first["backbone"]["int8"]["calibration"]["cache"] == "hit"        # recorded by the fp16 build
    again = _build(tiny_files["far"], tiny_files["vae"], str(tmp_path / "again"), "int8", lowered["cache"])
    for name, g in again["graphs"].items():
        assert g["int8"]["calibration"]["cache"] == "hit", name
        assert g["int8"]["calibration"]["ranges"] == "cached", name
        assert g["int8"]["calibration"]["cache_key"] == first[name]["int8"]["calibration"]["cache_key"]
    other = str(tmp_path / "other.pth")
    write_random_checkpoint(other, "tiny", "shortcut", seed=7)
    changed = _build(other, tiny_files["vae"], str(tmp_path / "changed"), "int8", lowered["cache"])
    for name, g in changed["graphs"].items():
        assert g["int8"]["calibration"]["cache"] == "miss", name
        assert g["int8"]["calibration"]["cache_key"] != first[name]["int8"]["calibration"]["cache_key"]


def test_verify_judges_fp16_by_its_own_tolerances(lowered, tmp_path):
    report = verify_bundle(lowered["fp16"], str(tmp_path / "v.json"), K=8, O=2, cfg=3.0, batch=2)
    assert report["precision"] == "fp16" and report["tolerances"]["psnr_db"] == 35.0
    r = report["results"][0]
    assert report["passed"] and r["finite"] and r["psnr_db"] >= 35.0


def test_values_kept_for_range_never_pass_through_fp16(tiny_files, tmp_path):
    """The random MAR head drives latents to ~5e4, so the VAE decoder's first layers exceed
    fp16's range: they are kept, and the tensors between them must stay fp32 end to end."""
    m = _build(tiny_files["mar"], tiny_files["vae"], str(tmp_path / "mar16"), "fp16", str(tmp_path / "cache"))
    vae = m["graphs"]["vae_decoder"]["fp16"]
    assert any(r.startswith("range:") for k in vae["kept"] for r in k["reasons"])
    assert vae["validated"] and vae["nan_inf"] == 0
    model = onnx.load(str(tmp_path / "mar16" / "vae_decoder.onnx"))
    prod = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:          # no Cast(fp16) -> Cast(fp32) round trip is left
        if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT and n.input[0] in prod:
            up = prod[n.input[0]]
            assert not (up.op_type == "Cast" and up.attribute[0].i == onnx.TensorProto.FLOAT16), n.name
    pipe = Pipeline.load(str(tmp_path / "mar16"))
    assert np.isfinite(pipe.decode(pipe.generate_tokens([1, 2], K=4, cfg=3.0, seed=2))).all()


@pytest.mark.parametrize("threshold", [1.0, 1e6])
def test_per_graph_int8_choice_follows_measured_speed(lowered, bundles, tmp_path, threshold):
    """With --int8-min-speedup, a graph is int8 exactly when int8 measured at least that much
    faster for it (held-out inputs); otherwise it stays fp32 and says so with the figure.
    (The bench's int8 bundle, copied from an fp32 bundle: bench/models.precision_bundle.)"""
    from far_export.bench.models import precision_bundle
    from far_export.precision.int8 import Int8Settings
    opts = PrecisionOptions("int8", calibration=SETTINGS, cache_dir=lowered["cache"],
                            int8=Int8Settings(min_speedup=threshold))
    out = precision_bundle(bundles["far"], str(tmp_path / "int8"), opts, lambda m: None)
    m = _manifest(out)
    assert m["derived_from"]["key"]["int8"]["min_speedup"] == threshold
    timed = 0
    for name, g in m["graphs"].items():
        t = g["int8"].get("timing")
        if t is None:                       # not quantisable, or over the error budget
            assert g["precision"] == "fp32" and g["int8"]["reason"]
            continue
        timed += 1
        assert (g["precision"] == "int8") == (t["speedup"] >= threshold), name
        if g["precision"] == "fp32":
            assert "under --int8-min-speedup" in g["int8"]["reason"] and f"{t['speedup']:.2f}x" in g["int8"]["reason"]
    assert timed >= 2
    if threshold == 1e6:
        assert all(g["precision"] == "fp32" for g in m["graphs"].values())
    Pipeline.load(out).generate_tokens([1], K=2, O=2, cfg=3.0, seed=0)     # the runtime loads it
    stamp = os.path.getmtime(os.path.join(out, "manifest.json"))
    said = []
    precision_bundle(bundles["far"], out, opts, said.append)               # same options: reused
    assert os.path.getmtime(os.path.join(out, "manifest.json")) == stamp and "reusing" in said[0]


# --- FAR-Causal: the same calibration, reading the variant's loops ------------------------------

@pytest.fixture(scope="module")
def causal_fp32(tmp_path_factory):
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint, write_random_vae
    d = tmp_path_factory.mktemp("causal_precision")
    ckpt, vae = str(d / "causal.pth"), str(d / "vae.pth")
    write_random_causal_checkpoint(ckpt, tiny_causal_config(16, class_tokens=2), seed=4)
    write_random_vae(vae, seed=3)
    export_bundle(ckpt, vae, str(d / "fp32"), head_steps=(1, 2), validate_batches=(1,), max_batch=4)
    return str(d / "fp32")


def test_int8_build_of_a_causal_bundle_calibrates_every_graph(causal_fp32, tmp_path):
    """int8 of a FAR-Causal bundle: the calibration runs its own loops (KV cache and
    recompute, K = L), so every graph gets real inputs, and the runtime runs the result.
    (Calibration used to run FAR's loop, which needs a 'backbone' graph: refused.)"""
    from far_export.bench.models import precision_bundle
    from far_export.precision.calibration import sampling_runs
    fp32 = load_bundle(causal_fp32)
    runs = sampling_runs(fp32, SETTINGS)
    assert {r.get("mode") for r in runs} == {"cache", "recompute"} and {r["K"] for r in runs} == {16}
    opts = PrecisionOptions("int8", calibration=SETTINGS, cache_dir=str(tmp_path / "cache"))
    out = precision_bundle(causal_fp32, str(tmp_path / "int8"), opts, lambda m: None)
    m = _manifest(out)
    assert m["precision"] == "int8" and set(m["graphs"]) == set(fp32.graphs)
    assert {"causal_prefill", "causal_step", "causal_recompute"} <= set(m["graphs"])
    for name, g in m["graphs"].items():
        calib = g["int8"]["calibration"]
        assert calib["samples"] > 0 and calib["recorded_calls"] > 0, name
        assert g["precision"] == "int8" or g["int8"]["reason"], name
        if g["precision"] == "int8":
            assert check_graph(os.path.join(out, g["file"])).ok, name
    assert m["graphs"]["causal_step"]["int8"]["calibration"]["recorded_calls"] >= 15     # L - 1 steps
    pipe, ref = Pipeline.load(out), Pipeline.load(causal_fp32)
    for mode in ("cache", "recompute"):
        a = ref.generate_tokens([1, 2], O=2, cfg=3.0, seed=4, mode=mode)
        b = pipe.generate_tokens([1, 2], O=2, cfg=3.0, seed=4, mode=mode)
        assert np.isfinite(b).all() and b.shape == a.shape == (2, 16, 4)


def test_precision_table_takes_a_backend_and_run_precision_per_bundle():
    from far_export.precision.table import parse_config
    assert parse_config("out/p/fp32") == ("", "out/p/fp32", None, None)
    assert parse_config("bf16=out/p/fp32@openvino:bf16") == ("bf16", "out/p/fp32", "openvino", "bf16")
    assert parse_config("out/p/int8@openvino") == ("", "out/p/int8", "openvino", None)
    assert parse_config("out/a=b/c") == ("out/a", "b/c", None, None)
