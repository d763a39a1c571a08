"""``--precision auto``: per graph the fastest precision that passes its gate, measured on the
backend it will run on, recorded in the manifest and honoured by the runtime; bundles
without the record run as before. (Which precision wins is the machine's business: the
tests check that the record is consistent with its own measurements, never a timing.)"""
import importlib.util
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from far_export.cli import main
from far_export.export.bundle import export_bundle
from far_export.precision.auto import CANDIDATES, AutoSettings
from far_export.precision.calibration import CalibrationSettings
from far_export.precision.convert import PrecisionOptions
from far_runtime.cpu import bf16_problem, parse_cpu_flags, read_cpu_flags
from far_runtime.errors import FarError
from far_runtime.graph_precision import graph_precisions
from far_runtime.pipeline import Pipeline

SETTINGS = CalibrationSettings(seeds=(0,), batch=2, max_samples=12)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (far-runtime[openvino])")
ZEN3 = parse_cpu_flags("flags\t\t: fpu sse4_2 avx avx2 fma\n")
ZEN4 = parse_cpu_flags("flags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n")


def _bf16_here() -> bool:
    if not HAS_OPENVINO:
        return False
    import openvino
    from far_runtime.backends.openvino import cpu_capabilities
    return bf16_problem(read_cpu_flags(), cpu_capabilities(openvino.Core())) is None


def _manifest(root):
    with open(os.path.join(root, "manifest.json")) as f:
        return json.load(f)


def _auto(tiny_files, out, cache, **auto):
    auto.setdefault("min_seconds", 0.0)               # a test needs no clean timing, only a decision
    return export_bundle(tiny_files["far"], tiny_files["vae"], out, head_steps=(1, 2), validate_batches=(1,),
                         precision="auto", precision_options=PrecisionOptions(
                             "auto", calibration=SETTINGS, cache_dir=cache, auto=AutoSettings(**auto)))


@pytest.fixture(scope="module")
def auto_bundles(tiny_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("auto")
    cache = str(d / "cache")
    out = {"cache": cache, "onnxruntime": str(d / "ort")}
    _auto(tiny_files, out["onnxruntime"], cache, backend="onnxruntime", threads=1)
    if HAS_OPENVINO:
        out["openvino"] = str(d / "ov")
        _auto(tiny_files, out["openvino"], cache, backend="openvino", threads=1)
    return out


def check_record(root: str, backend: str) -> dict:
    """Every graph's choice is the fastest passing candidate of its own measurements, and the
    manifest says so consistently."""
    m = _manifest(root)
    choice = m["precision_choice"]
    assert choice["backend"] == backend and choice["threads"] == 1 and choice["machine"]["cpu"]
    bf16_ok = backend == "openvino" and _bf16_here()
    assert ("bf16" in choice["candidates"]) == bf16_ok
    if not bf16_ok:
        assert choice["not_candidates"]["bf16"]                        # said why, in a sentence
    for name, g in m["graphs"].items():
        rec = g["choice"]
        rows = rec["candidates"]
        assert rows["fp32"]["passed"] and rows["fp32"]["error"] <= 1e-3
        timed = {c: r["seconds"] for c, r in rows.items() if "seconds" in r}
        assert set(timed) == {c for c, r in rows.items() if r["passed"]}      # only passing ones timed
        for c, r in rows.items():
            assert r["passed"] == (r["error"] <= r["budget"] and r["nan_inf"] == 0), (name, c)
        eligible = {c: t for c, t in timed.items() if c == "fp32" or rows[c]["speedup"] >= 1.0}
        assert rec["chosen"] == min(eligible, key=eligible.get), name
        assert (g["precision"], g["compute"]) == CANDIDATES[rec["chosen"]] == (rec["precision"], rec["compute"])
        ops = {n.op_type for n in onnx.load(os.path.join(root, g["file"])).graph.node}
        assert ("QuantizeLinear" in ops) == (g["precision"] == "int8"), name
    loosest = ("int8" if any(g["precision"] == "int8" for g in m["graphs"].values()) else
               "bf16" if any(g["compute"] == "bf16" for g in m["graphs"].values()) else "fp32")
    assert m["precision"] == loosest
    return m


def test_auto_on_onnxruntime_chooses_fp32_or_int8_by_measurement(auto_bundles):
    m = check_record(auto_bundles["onnxruntime"], "onnxruntime")
    assert all(g["compute"] == "fp32" for g in m["graphs"].values())
    assert "ONNX Runtime" in m["precision_choice"]["not_candidates"]["int8+bf16"]
    pipe = Pipeline.load(auto_bundles["onnxruntime"])
    assert pipe.backend.name == "onnxruntime"
    assert np.isfinite(pipe.generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=1)).all()


@needs_openvino
def test_auto_on_openvino_is_recorded_and_run_as_recorded(auto_bundles):
    root = auto_bundles["openvino"]
    m = check_record(root, "openvino")
    pipe = Pipeline.load(root)                          # the backend it was chosen on, by default
    assert pipe.backend.name == "openvino"
    assert pipe.backend.precisions == {g: e["compute"] for g, e in m["graphs"].items()}
    tokens = pipe.generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=1)
    assert np.isfinite(pipe.decode(tokens)).all()
    for g in pipe.backend._compiled:                    # what OpenVINO compiled each graph in
        got = str(pipe.backend.compiled(g).get_property("INFERENCE_PRECISION_HINT").get_type_name())
        assert got == {"fp32": "f32", "bf16": "bf16"}[m["graphs"][g]["compute"]], g
    assert Pipeline.load(root, precision="fp32").backend.precision == "fp32"     # the run decides over it


def test_the_int8_graph_is_quantised_once_per_settings(auto_bundles, tiny_files, tmp_path):
    """The ORT and OpenVINO auto builds and an int8 build share one quantisation per graph."""
    m = _manifest(auto_bundles["onnxruntime"])
    quantised = {g: e["choice"]["int8"]["quantized"] for g, e in m["graphs"].items() if "int8" in e["choice"]}
    assert quantised and set(quantised.values()) == {"now"}
    again = export_bundle(tiny_files["far"], tiny_files["vae"], str(tmp_path / "int8"), head_steps=(1, 2),
                          validate_batches=(1,), precision="int8", precision_options=PrecisionOptions(
                              "int8", calibration=SETTINGS, cache_dir=auto_bundles["cache"]))
    for g in quantised:
        assert again["graphs"][g]["int8"]["quantized"] == "cached", g
        assert again["graphs"][g]["int8"]["calibration"]["ranges"] == "cached", g


def test_gates_and_min_speedup_decide(auto_bundles, tiny_files, tmp_path):
    """An impossible bf16 budget fails every bf16 candidate (recorded, not timed); a huge
    --min-speedup keeps every graph fp32 whatever the timings said."""
    backend = "openvino" if HAS_OPENVINO else "onnxruntime"
    m = _auto(tiny_files, str(tmp_path / "strict"), auto_bundles["cache"], backend=backend, threads=1,
              bf16_budget=1e-12, min_speedup=1e9)
    for name, g in m["graphs"].items():
        assert g["choice"]["chosen"] == "fp32" and (g["precision"], g["compute"]) == ("fp32", "fp32")
        rows = g["choice"]["candidates"]
        if "bf16" in rows:
            assert not rows["bf16"]["passed"] and "seconds" not in rows["bf16"]
    assert m["precision"] == "fp32"


def _record(bundle_dir, dst, compute: dict, backend="openvino"):
    """A copy of an fp32 bundle whose manifest records a per-graph compute choice."""
    shutil.copytree(bundle_dir, dst)
    m = _manifest(dst)
    for g, p in compute.items():
        m["graphs"][g]["compute"] = p
    m["precision_choice"] = {"mode": "auto", "backend": backend}
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(m, f)
    return str(dst)


def test_graph_precisions_follow_the_record_and_the_run():
    plain = {"graphs": {"backbone": {}, "head_step": {}}}
    assert graph_precisions(plain, "onnxruntime") == {"backbone": "fp32", "head_step": "fp32"}
    assert graph_precisions(plain, "openvino", None, ZEN3) == {"backbone": "fp32", "head_step": "fp32"}
    rec = {"graphs": {"backbone": {"compute": "bf16"}, "head_step": {"compute": "fp32"}},
           "precision_choice": {"backend": "openvino"}}
    assert graph_precisions(rec, "openvino", None, ZEN4, ["BF16"]) == {"backbone": "bf16", "head_step": "fp32"}
    assert graph_precisions(rec, "openvino", "fp32", ZEN3) == {"backbone": "fp32", "head_step": "fp32"}
    assert graph_precisions(rec, "onnxruntime", "fp32") == {"backbone": "fp32", "head_step": "fp32"}
    with pytest.raises(FarError, match="backbone was chosen to compute in bf16.*--precision fp32"):
        graph_precisions(rec, "onnxruntime")
    with pytest.raises(FarError, match="but this CPU has no bf16 units"):
        graph_precisions(rec, "openvino", None, ZEN3)
    with pytest.raises(FarError, match="compute precision 'int4'"):
        graph_precisions({"graphs": {"backbone": {"compute": "int4"}}}, "openvino", None, ZEN4)


@needs_openvino
def test_runtime_honours_a_recorded_per_graph_precision(bundles, tmp_path):
    """OpenVINO compiles each graph in the precision the manifest records for it; ONNX Runtime
    refuses a bf16 record unless --precision fp32 is asked."""
    if not _bf16_here():
        pytest.skip("this CPU has no bf16 units")
    root = _record(bundles["far"], tmp_path / "rec", {"backbone": "bf16"})
    pipe = Pipeline.load(root)
    assert pipe.backend.name == "openvino" and pipe.backend.precision == "mixed"
    pipe.generate_tokens([1], K=2, O=2, cfg=3.0, seed=0)
    hint = {g: str(pipe.backend.compiled(g).get_property("INFERENCE_PRECISION_HINT").get_type_name())
            for g in ("backbone", "head_fused_o2")}
    assert hint == {"backbone": "bf16", "head_fused_o2": "f32"}
    with pytest.raises(FarError, match="cannot compute in"):
        Pipeline.load(root, backend="onnxruntime")
    assert Pipeline.load(root, backend="onnxruntime", precision="fp32").backend.name == "onnxruntime"


def test_a_bundle_without_a_record_runs_as_before(bundles):
    pipe = Pipeline.load(bundles["far"])
    assert pipe.backend.name == "onnxruntime"
    if HAS_OPENVINO:
        ov = Pipeline.load(bundles["far"], backend="openvino")
        assert set(ov.backend.precisions.values()) == {"fp32"}


@pytest.mark.parametrize("args,message", [
    (["--backend", "openvino"], "--backend applies to --precision auto"),
    (["--precision", "int8", "--threads", "2"], "--threads applies to --precision auto"),
    (["--precision", "auto", "--bf16-budget", "2"], "--bf16-budget must be in (0, 1)"),
])
def test_build_option_errors(args, message, tiny_files, tmp_path):
    res = CliRunner().invoke(main, ["build", tiny_files["far"], "--vae", tiny_files["vae"],
                                    "--out", str(tmp_path / "b"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not os.path.exists(tmp_path / "b")
