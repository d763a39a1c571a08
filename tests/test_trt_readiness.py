"""TensorRT readiness without TensorRT: graphs are checked against onnx-tensorrt's operators.md table."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from far_export.tensorrt.readiness import SUPPORT_FILE, check_graph, load_support_table
from far_runtime.errors import FarError

F, I8, I16, I32, I64, U8, DBL = (TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32,
                                 TensorProto.INT64, TensorProto.UINT8, TensorProto.DOUBLE)


def _model(nodes, inputs, outputs, inits=(), opset=18):
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [vi(n, t, s) for n, t, s in inputs], [vi(n, t, s) for n, t, s in outputs],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _errors(report, kind=None):
    return [f for f in report.errors if kind is None or f.kind == kind]


# --------------------------------------------------------------------------- the data file

def test_support_file_parses_and_names_its_source():
    data = json.loads(SUPPORT_FILE.read_text())
    assert "onnx/onnx-tensorrt" in data["source"] and "docs/operators.md" in data["source"]
    tables = data["majors"]["10"]["tables"]
    for version, table in tables.items():
        src = table["source"]
        assert src["repository"] == "onnx/onnx-tensorrt" and src["path"] == "docs/operators.md"
        assert src["read_on"] and len(src["sha256_of_text"]) == 64
        assert src["commit"] or src["commit_note"]
        assert table["opset_min"] == 9 and table["opset_max"] >= 20
        assert len(table["operators"]) > 150
    new = tables[data["majors"]["10"]["default_table"]]["operators"]
    # rows as the document gives them
    assert new["Conv"] == {"supported": True, "types": ["FP32", "FP16", "BF16"]}
    assert new["Unique"] == {"supported": False}
    assert "must be an initializer" in new["ReduceMean"]["restrictions"]
    assert new["DequantizeLinear"]["types"] == ["INT8", "FP8", "FP4", "INT4"]
    supported_types = {t for op in new.values() for t in op.get("types", [])}
    assert supported_types <= set(data["type_names"]["map"])


def test_unknown_major_version_is_one_clear_error():
    with pytest.raises(FarError, match="no TensorRT 11 support table"):
        load_support_table(11)
    with pytest.raises(FarError, match="no TensorRT 9.9 table"):
        load_support_table(10, "9.9")


# --------------------------------------------------------------------------- graphs that pass

def test_supported_transformer_pieces_pass():
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("LayerNormalization", ["h", "scale"], ["n"], name="norm", axis=-1),
        helper.make_node("Softmax", ["n"], ["s"], name="softmax", axis=-1),
        helper.make_node("ReduceMean", ["s", "axes"], ["y"], name="mean", keepdims=1),
    ]
    r = check_graph(_model(nodes, [("x", F, ["B", 4, 8])], [("y", F, None)], [w, scale, axes]))
    assert r.ok, r.summary()
    assert r.nodes == 4
    assert r.op_counts == {"LayerNormalization": 1, "MatMul": 1, "ReduceMean": 1, "Softmax": 1}
    assert "ready" in r.summary() and r.table == "10.15"
    json.dumps(r.to_dict())


class _ConvBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.nn.functional.silu(self.norm(self.conv(x)))
        h = torch.nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        return torch.nn.functional.gelu(self.proj(h.mean(dim=(2, 3))))


class _WithUnique(torch.nn.Module):
    def forward(self, x):
        return torch.unique(x, sorted=True)


def _export(module, args, path):
    torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=18)
    return str(path)


def test_torch_export_passes_and_unique_is_reported_with_its_node_name(tmp_path):
    ok = check_graph(_export(_ConvBlock(), (torch.randn(2, 3, 8, 8),), tmp_path / "block.onnx"))
    assert ok.ok, ok.summary()
    assert ok.op_counts["Conv"] == 1 and ok.opset == 18

    bad = check_graph(_export(_WithUnique(), (torch.tensor([3.0, 1.0, 3.0]),), tmp_path / "unique.onnx"))
    assert not bad.ok
    (f,) = _errors(bad, "unsupported_op")
    node = onnx.load(str(tmp_path / "unique.onnx")).graph.node
    assert f.op_type == "Unique" and f.node == next(n.name for n in node if n.op_type == "Unique")
    assert f.node in bad.summary() and bad.to_dict()["errors_by_op"] == {"Unique": 1}


# --------------------------------------------------------------------------- offenders

@pytest.mark.parametrize("op", ["Unique", "Det", "Compress", "BitShift"])
def test_ops_the_document_marks_unsupported_are_errors(op):
    ins = {"Unique": [("x", F, [4])], "Det": [("x", F, [3, 3])],
           "Compress": [("x", F, [4]), ("c", TensorProto.BOOL, [4])],
           "BitShift": [("x", TensorProto.UINT32, [4]), ("s", TensorProto.UINT32, [4])]}[op]
    node = helper.make_node(op, [n for n, _, _ in ins], ["y"], name=f"the_{op.lower()}",
                            **({"direction": "LEFT"} if op == "BitShift" else {}))
    r = check_graph(_model([node], ins, [("y", ins[0][1], None)]))
    f = _errors(r, "unsupported_op")
    assert [(e.node, e.op_type) for e in f] == [(f"the_{op.lower()}", op)]
    assert "unsupported" in f[0].message


@pytest.mark.parametrize("op,dtype,why", [
    ("MatMul", I32, "MatMul supports"),      # doc: FP32, FP16, BF16
    ("Add", I8, "Add supports"),             # doc: FP32, FP16, BF16, INT32, INT64
    ("Add", I16, "does not support at all"),  # INT16 is not a TensorRT type
])
def test_dtype_the_document_excludes_is_reported_with_tensor_and_dtype(op, dtype, why):
    node = helper.make_node(op, ["a", "b"], ["y"], name="offender")
    r = check_graph(_model([node], [("a", dtype, [2, 2]), ("b", dtype, [2, 2])], [("y", dtype, None)]))
    errs = _errors(r, "unsupported_dtype")
    name = TensorProto.DataType.Name(dtype)
    assert {(e.node, e.tensor, e.dtype) for e in errs} == {("offender", "a", name), ("offender", "b", name)}
    assert why in errs[0].message
    # the same op in a supported dtype passes
    ok = _model([node], [("a", F, [2, 2]), ("b", F, [2, 2])], [("y", F, None)])
    assert check_graph(ok).ok


def test_index_and_shape_inputs_are_not_held_to_the_data_types():
    # Resize's `sizes` is INT64 and Resize supports FP32/FP16/BF16 only: sizes must not be flagged
    sizes = numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode="linear")
    r = check_graph(_model([node], [("x", F, [1, 3, 4, 4])], [("y", F, None)], [sizes]))
    assert r.ok, r.summary()


def test_double_is_a_warning_and_uint8_inside_the_network_is_an_error():
    nodes = [helper.make_node("Sqrt", ["d"], ["r"], name="sqrt_double"),
             helper.make_node("Cast", ["x"], ["u"], name="to_u8", to=U8),
             helper.make_node("Cast", ["u"], ["y"], name="back", to=F)]
    r = check_graph(_model(nodes, [("d", DBL, [2]), ("x", F, [2])], [("r", DBL, None), ("y", F, None)]))
    assert [(w.kind, w.node) for w in r.warnings] == [("double", "sqrt_double")]
    assert [(e.kind, e.node, e.tensor) for e in r.errors] == [("uint8_intermediate", "to_u8", "u")]


def test_restrictions_the_graph_breaks_are_errors():
    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape", start=-1),
        helper.make_node("ReduceMean", ["x", "shp"], ["m"], name="mean_dyn_axes"),  # axes computed
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], name="topk_unsorted", sorted=0),
        helper.make_node("Resize", ["x4", "", "sc4"], ["r"], name="resize_cubic", mode="cubic"),
        helper.make_node("MaxPool", ["x4"], ["p", "pi"], name="pool_indices", kernel_shape=[2, 2]),
        helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q_asym"),
    ]
    sc4 = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc4")
    r = check_graph(_model(nodes, [("x", F, [2, 8]), ("x4", F, [1, 1, 4, 4])],
                           [("m", F, None), ("tv", F, None), ("r", F, None), ("p", F, None),
                            ("pi", I64, None), ("q", I8, None)], [zp, sc, k, sc4]))
    got = {(e.node, e.kind) for e in r.errors}
    assert got == {(n, "restriction") for n in
                   ("mean_dyn_axes", "topk_unsorted", "resize_cubic", "pool_indices", "q_asym")}, r.summary(50)
    msgs = {e.node: e.message for e in r.errors}
    assert "`axes`" in msgs["mean_dyn_axes"] and "cubic" in msgs["resize_cubic"]
    assert "Indices" in msgs["pool_indices"] and "not zero" in msgs["q_asym"]


def test_subgraphs_custom_domains_and_opset_are_checked():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="unique_in_then")], "then", [],
                               [helper.make_tensor_value_info("u", F, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="id_in_else")], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("FancyOp", ["x"], ["z"], name="custom", domain="my.ops")]
    m = _model(nodes, [("c", TensorProto.BOOL, []), ("x", F, [4])], [("y", F, None), ("z", F, None)])
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    r = check_graph(m)
    errs = {(e.graph, e.node, e.op_type) for e in _errors(r, "unsupported_op")}
    assert errs == {("main/branch.then_branch", "unique_in_then", "Unique"), ("main", "custom", "FancyOp")}
    assert r.nodes == 4

    relu = helper.make_node("Relu", ["x"], ["y"], name="r")
    old = _model([relu], [("x", F, [2])], [("y", F, None)], opset=8)
    assert [e.kind for e in check_graph(old).errors] == ["opset"]


def test_an_older_table_of_the_same_major_can_be_chosen():
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="rms", axis=-1)
    s = numpy_helper.from_array(np.ones(8, np.float32), "s")
    m = _model([node], [("x", F, [2, 8])], [("y", F, None)], [s], opset=23)
    newest = check_graph(m)
    assert newest.ok and [w.kind for w in newest.warnings] == ["newer_than_oldest_table"]
    older = check_graph(m, table_version="10.1")
    assert not older.ok and older.table == "10.1"
    assert {e.kind for e in older.errors} == {"unsupported_op", "opset"}  # 10.1 stops at opset 20


# --------------------------------------------------------------------------- bad inputs

def test_missing_or_non_onnx_file_is_one_clear_error(tmp_path):
    with pytest.raises(FarError, match="ONNX file not found"):
        check_graph(tmp_path / "nope.onnx")
    for name, content in [("empty.onnx", b""), ("text.onnx", b"this is not a protobuf\n" * 4)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FarError, match="is not an ONNX model"):
            check_graph(tmp_path / name)


# --------------------------------------------------------------------------- a bundle's report

def test_causal_export_writes_the_readiness_report_of_every_graph(tmp_path):
    """``far-export export`` (and ``build``) of a FAR-Causal checkpoint writes and prints the
    readiness report FAR bundles get, one entry per graph of its variant (it used to write
    none: drift 4 of issue 23)."""
    from click.testing import CliRunner
    from far_export.cli import main
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint
    from far_export.tensorrt.bundle_readiness import READINESS_FILE, variant_graphs
    ckpt, out = str(tmp_path / "causal.pth"), str(tmp_path / "bundle")
    write_random_causal_checkpoint(ckpt, tiny_causal_config(16, class_tokens=2), seed=4)
    res = CliRunner().invoke(main, ["export", ckpt, "--out", out, "--components", "backbone,head",
                                    "--head-steps", "1", "--validate-batches", "1"])
    assert res.exit_code == 0, res.output
    manifest = json.load(open(f"{out}/manifest.json"))
    report = json.load(open(f"{out}/{READINESS_FILE}"))
    assert list(report) == variant_graphs(manifest)
    assert set(report) == set(manifest["graphs"]) >= {"causal_prefill", "causal_step", "causal_recompute"}
    for graph, r in report.items():
        assert r["ok"] and r["nodes"] > 0 and r["model"].endswith(f"{graph}.onnx"), graph
    assert f"all {len(report)} graphs ready" in res.output and READINESS_FILE in res.output


def test_ensure_readiness_checks_only_what_is_missing_and_says_what_is_not_ready(tmp_path):
    import shutil
    from far_export.tensorrt.bundle_readiness import READINESS_FILE, ensure_readiness, readiness_line
    ok = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    bad = _model([helper.make_node("Unique", ["x"], ["y"])], [("x", F, [2])], [("y", F, [None])])
    onnx.save(ok, str(tmp_path / "vae_decoder.onnx"))
    onnx.save(bad, str(tmp_path / "head_step.onnx"))
    model = {"seq_len": 4, "token_dim": 2, "cond_dim": 4, "num_classes": 3, "head_kind": "shortcut",
             "diffusion_steps": 0, "image_size": 4, "image_channels": 3, "vae_scale": 1.0}
    manifest = {"model": model, "max_batch": 2, "head_steps": [],
                "graphs": {g: {"file": f"{g}.onnx"} for g in ("vae_decoder", "head_step")}}
    line = ensure_readiness(str(tmp_path), manifest)
    report = json.load(open(tmp_path / READINESS_FILE))
    assert list(report) == ["head_step", "vae_decoder"]                 # the specs' order
    assert "1 of 2 graphs NOT ready" in line and "head_step" in line and "Unique" in line
    assert line == readiness_line(report)
    (tmp_path / "head_step.onnx").unlink()                             # present entries are kept
    shutil.copy(tmp_path / "vae_decoder.onnx", tmp_path / "head_step.onnx")
    assert ensure_readiness(str(tmp_path), manifest) == line
