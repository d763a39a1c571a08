"""TensorRT readiness of an ONNX graph, checked without TensorRT.

Every node (subgraphs of If/Loop/Scan included, model-local functions inlined first, as the
parser does) is checked against the TensorRT ONNX parser's own support matrix,
``onnx/onnx-tensorrt`` ``docs/operators.md``, transcribed into ``far_export/data/trt_onnx_support.json``
(the file names the revision it was read from). Input dtypes come from ONNX shape inference.

What is reported, as data (``ReadinessReport``):

* errors: an op type the matrix marks unsupported or does not list (custom domains included);
  a dtype outside the op's "Supported Types"; a dtype TensorRT has no type for; an UINT8
  tensor produced inside the network (the document allows UINT8 only as network input or
  output); the model's opset outside the document's range; a documented restriction that the
  graph provably breaks (e.g. ``axes`` of ReduceMean not an initializer, ``sorted=0`` on TopK,
  Resize ``mode=cubic``, a MaxPool ``Indices`` output in use).
* warnings: DOUBLE tensors (the document: cast down to FLOAT, clamped); restrictions that could
  not be decided (a zero point that is not a constant, a K that is not a constant); ops whose
  support is newer than the oldest table kept for the same major version; tensors whose dtype
  shape inference could not tell.
* unchecked: every restriction sentence of an op present in the graph that no rule here
  decides, with the nodes it concerns, so a reader sees the remaining risk.

How the "Supported Types" column is read: it constrains the op's data tensor, i.e. input 0 and
every input that shares input 0's type constraint in the ONNX schema (so Gather's indices,
Reshape's shape or Resize's sizes are not held to it); for Where, the two value inputs; for
ops without inputs (Constant, RandomNormal, ...) and for ConstantOfShape and Random*Like,
output 0; for Cast and CastLike, input 0 and output 0. If, Loop and Scan are not dtype-checked
themselves; their bodies are.

A ``Constant`` node's output counts as an initializer (the parser imports both as weights).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from far_runtime.errors import FarError

log = logging.getLogger(__name__)

SUPPORT_FILE = Path(__file__).resolve().parent.parent / "data" / "trt_onnx_support.json"

_CONTROL_FLOW = {"If", "Loop", "Scan"}
# The document names Dropout's third input `is_training` (`is_traning` in the 10.1 table); the ONNX
# schema calls it `training_mode`.
_DOC_NAME_ALIASES = {("Dropout", "is_training"): "training_mode", ("Dropout", "is_traning"): "training_mode"}
# Ops whose "Supported Types" describe what they produce, not their (shape or template) input.
_TYPED_BY_OUTPUT = {"ConstantOfShape", "RandomNormalLike", "RandomUniformLike"}


@dataclass(frozen=True)
class Finding:
    """One offender or warning, located by graph path and node name."""
    severity: str           # "error" or "warning"
    kind: str               # unsupported_op, unsupported_dtype, restriction, opset, ...
    graph: str              # "main", or "main/<node>.<attribute>" for subgraphs
    node: str
    op_type: str
    message: str
    tensor: str | None = None
    dtype: str | None = None


@dataclass
class ReadinessReport:
    """Result of ``check_graph``: data first, ``summary()`` for people."""
    model: str
    trt_major: int
    table: str                      # TensorRT version of the support table used
    source: str                     # where that table was read
    opset: int | None
    nodes: int
    op_counts: dict[str, int]
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    unchecked: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_by_op(self) -> dict[str, int]:
        return dict(Counter(f.op_type for f in self.errors))

    def to_dict(self) -> dict:
        return {
            "model": self.model, "trt_major": self.trt_major, "table": self.table,
            "source": self.source, "opset": self.opset, "ok": self.ok, "nodes": self.nodes,
            "op_counts": dict(self.op_counts), "errors_by_op": self.errors_by_op(),
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
            "unchecked": list(self.unchecked),
        }

    def summary(self, max_lines: int = 12) -> str:
        verdict = "ready" if self.ok else "NOT ready"
        head = (f"TensorRT {self.trt_major} readiness of {self.model} (onnx-tensorrt operators.md, "
                f"TensorRT {self.table} table): {verdict}: {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s), {len(self.unchecked)} restriction(s) not checked, "
                f"in {self.nodes} nodes of {len(self.op_counts)} op types.")
        lines = [head]
        shown = self.errors + self.warnings
        for f in shown[:max_lines]:
            where = f" tensor '{f.tensor}'" if f.tensor else ""
            lines.append(f"  {f.severity}: [{f.kind}] node '{f.node}' ({f.op_type}){where}: {f.message}")
        if len(shown) > max_lines:
            lines.append(f"  ... {len(shown) - max_lines} more in to_dict()")
        return "\n".join(lines)

    __str__ = summary


# ----------------------------------------------------------------------------- support table

def load_support_table(trt_major: int = 10, version: str | None = None) -> dict:
    """The transcribed operators.md table for one TensorRT major (newest, or ``version``)."""
    data = json.loads(SUPPORT_FILE.read_text(encoding="utf-8"))
    major = data["majors"].get(str(trt_major))
    if major is None:
        known = ", ".join(sorted(data["majors"]))
        why = data.get("not_covered", {}).get(str(trt_major), "")
        raise FarError(f"There is no TensorRT {trt_major} support table in {SUPPORT_FILE.name} "
                       f"(tables exist for TensorRT {known}){': ' + why if why else '.'}")
    version = version or major["default_table"]
    if version not in major["tables"]:
        raise FarError(f"There is no TensorRT {version} table in {SUPPORT_FILE.name}; "
                       f"choose one of {', '.join(sorted(major['tables']))}.")
    table = dict(major["tables"][version])
    table["type_names"] = data["type_names"]["map"]
    oldest = min(major["tables"], key=lambda v: tuple(int(x) for x in v.split(".")))
    table["oldest"] = major["tables"][oldest] if oldest != version else None
    return table


def _onnx_types(doc_names, type_map) -> set[str]:
    out = set()
    for name in doc_names:
        out.update(type_map.get(name, [name]))
    return out


# ----------------------------------------------------------------------------- model loading

def _load(model_or_path) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, model_or_path.graph.name or "<in-memory model>"
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise FarError(f"ONNX file not found: {path}.")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types for garbage input
        raise FarError(f"{path} is not an ONNX model ({type(e).__name__}).") from None
    if model.ir_version == 0 or not model.opset_import or not model.graph.node:
        raise FarError(f"{path} is not an ONNX model (no IR version, opset or nodes).")
    return model, path


# ----------------------------------------------------------------------------- graph walking

class _Scope:
    """Names visible in one graph: dtypes, constants, producers; chained to the outer graph."""

    def __init__(self, graph: onnx.GraphProto, parent: "_Scope | None"):
        self.parent = parent
        self.dtype: dict[str, int] = {}
        self.rank: dict[str, int] = {}
        self.static: dict[str, bool] = {}
        self.const: dict[str, onnx.TensorProto | None] = {}
        self.inputs = {i.name for i in graph.input}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            self._take(vi)
        for init in graph.initializer:
            self.dtype[init.name] = init.data_type
            self.rank[init.name] = len(init.dims)
            self.static[init.name] = True
            self.const[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                self.const[node.output[0]] = _constant_value(node)

    def _take(self, vi: onnx.ValueInfoProto) -> None:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.elem_type:
            self.dtype[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.rank[vi.name] = len(t.shape.dim)
                self.static[vi.name] = all(d.HasField("dim_value") for d in t.shape.dim)

    def _find(self, table: str, name: str):
        scope = self
        while scope is not None:
            d = getattr(scope, table)
            if name in d:
                return True, d[name]
            scope = scope.parent
        return False, None

    def get(self, table: str, name: str):
        return self._find(table, name)[1]

    def is_const(self, name: str) -> bool:
        return self._find("const", name)[0]


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
            v = onnx.helper.get_attribute_value(a)
            arr = np.array(v, dtype=np.int64 if "int" in a.name else np.float32)
            return numpy_helper.from_array(arr)
    return None


def _const_array(scope: _Scope, name: str) -> np.ndarray | None:
    t = scope.get("const", name)
    if t is None or (t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL):
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:
        return None


def _dtype_name(code: int) -> str:
    return onnx.TensorProto.DataType.Name(code)


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"<unnamed {node.op_type} #{index}>"


def _attr(node: onnx.NodeProto, name: str, schema):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    if schema is not None and name in schema.attributes:
        d = schema.attributes[name].default_value
        if d.name:  # default present
            return onnx.helper.get_attribute_value(d)
    return None


def _as_text(v):
    return v.decode() if isinstance(v, bytes) else v


# ----------------------------------------------------------------------------- restriction rules
#
# Each rule reads one sentence of the document's Restrictions cell and decides it for one node.
# A rule returns None when the sentence is not its kind; otherwise a list of
# (severity, message, tensor) problems, empty when the node complies.

_NAME = r"`([A-Za-z_]+)`"


def _input_index(node, schema, doc_name: str) -> int | None:
    name = _DOC_NAME_ALIASES.get((node.op_type, doc_name), doc_name)
    if schema is None:
        return None
    names = [i.name for i in schema.inputs]
    for cand in (name, name.lower()):
        for i, n in enumerate(names):
            if n == cand or n.lower() == cand.lower():
                return i
    return None


def _output_index(schema, doc_name: str) -> int | None:
    if schema is None:
        return None
    for i, o in enumerate(schema.outputs):
        if o.name.lower() == doc_name.lower():
            return i
    return None


def _present(seq, i) -> str | None:
    return seq[i] if i is not None and i < len(seq) and seq[i] else None


def _rule_constant_input(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME}(?: and {_NAME})? must be (an initializer|a build-time constant|"
                     r"a constant tensor|resolvable to a constant)\.?", sentence)
    if not m:
        return None
    strict = m.group(3) == "an initializer"
    out = []
    for doc_name in filter(None, m.group(1, 2)):
        idx = _input_index(node, schema, doc_name)
        tensor = _present(node.input, idx)
        if tensor and not scope.is_const(tensor):
            sev = "error" if strict else "warning"
            how = ("is computed in the graph" if strict
                   else "is not an initializer or Constant, so it may not resolve")
            rule = sentence[sentence.index("must"):].rstrip(".")
            out.append((sev, f"`{doc_name}` {how}; the document says it {rule}", tensor))
    return out


def _rule_training_false(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} must be an initializer and evaluate to False\.?", sentence)
    if not m:
        return None
    tensor = _present(node.input, _input_index(node, schema, m.group(1)))
    if not tensor:
        return []
    if not scope.is_const(tensor):
        return [("error", f"`{m.group(1)}` must be an initializer that is False; it is computed in the graph",
                 tensor)]
    arr = _const_array(scope, tensor)
    if arr is not None and bool(np.any(arr)):
        return [("error", f"`{m.group(1)}` is True; the document requires False", tensor)]
    return []


def _rule_zero_point(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} must be (?:zero|0)\.?", sentence)
    if not m:
        return None
    tensor = _present(node.input, _input_index(node, schema, m.group(1)))
    if not tensor:
        return []
    arr = _const_array(scope, tensor) if scope.is_const(tensor) else None
    if arr is None:
        return [("warning", f"`{m.group(1)}` must be zero and is not a readable constant here", tensor)]
    if np.any(arr.astype(np.float64) != 0):
        return [("error", f"`{m.group(1)}` is not zero (symmetric quantization only)", tensor)]
    return []


def _rule_attr_equals(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME}(?: attribute)? must be (-?\d+)\.?", sentence)
    if not m:
        return None
    name, want = m.group(1), int(m.group(2))
    if schema is None or name not in schema.attributes:
        return None
    got = _attr(node, name, schema)
    if got is not None and got != want:
        return [("error", f"attribute `{name}`={got}; the document requires {want}", None)]
    return []


def _rule_input_dtype(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} must be ([A-Z0-9]+)\.?", sentence)
    if not m or not m.group(2).startswith(("INT", "FP", "BF", "BOOL", "UINT")):
        return None
    tensor = _present(node.input, _input_index(node, schema, m.group(1)))
    if not tensor:
        return []
    code = scope.get("dtype", tensor)
    if code is None:
        return [("warning", f"dtype of `{m.group(1)}` unknown; the document requires {m.group(2)}", tensor)]
    if _dtype_name(code) != m.group(2):
        return [("error", f"`{m.group(1)}` is {_dtype_name(code)}; the document requires {m.group(2)}",
                 tensor)]
    return []


def _names_list(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _rule_unsupported_parts(sentence, node, schema, scope):
    m = re.fullmatch(r"(.+?) (inputs|outputs|attributes) are unsupported\.?"
                     r"|(`\w+`) (output tensor) unsupported\.?", sentence)
    if not m:
        return None
    names = _names_list(m.group(1) or m.group(3))
    what = m.group(2) or "outputs"
    out = []
    for n in names:
        if what == "attributes":
            if any(a.name == n for a in node.attribute):
                out.append(("error", f"attribute `{n}` is set; the document says it is unsupported", None))
        elif what == "inputs":
            t = _present(node.input, _input_index(node, schema, n))
            if t:
                out.append(("error", f"input `{n}` is given; the document says it is unsupported", t))
        else:
            t = _present(node.output, _output_index(schema, n))
            if t:
                out.append(("error", f"output `{n}` is produced; the document says it is unsupported", t))
    return out


def _rule_only_first_output(sentence, node, schema, scope):
    if not re.fullmatch(r"Only the first output `\w+` is supported\.?", sentence):
        return None
    extra = [o for o in node.output[1:] if o]
    return [("error", "only the first output is supported; this node also produces "
             + ", ".join(f"'{o}'" for o in extra), extra[0])] if extra else []


def _rule_pool_rank(sentence, node, schema, scope):
    if not re.fullmatch(r"2D or 3D [Pp]ooling only\.?", sentence):
        return None
    rank = scope.get("rank", node.input[0]) if node.input else None
    if rank is None:
        return [("warning", "input rank unknown; the document allows 2D or 3D pooling only", node.input[0])]
    if rank not in (4, 5):
        return [("error", f"input has rank {rank}; the document allows 2D or 3D pooling only (rank 4 or 5)",
                 node.input[0])]
    return []


def _rule_rank4(sentence, node, schema, scope):
    m = re.fullmatch(r"(.+?) must be 4D(?: input)?\.?", sentence)
    if not m:
        return None
    names = _names_list(m.group(1)) or (["X"] if m.group(1).strip() == "Input" else [])
    out = []
    for n in names:
        idx = 0 if n == "X" else _input_index(node, schema, n)
        t = _present(node.input, idx)
        if not t:
            continue
        rank = scope.get("rank", t)
        if rank is None:
            out.append(("warning", f"rank of `{n}` unknown; the document requires 4D", t))
        elif rank != 4:
            out.append(("error", f"`{n}` has rank {rank}; the document requires 4D", t))
    return out


def _rule_dilations(sentence, node, schema, scope):
    if not re.fullmatch(r"`dilations` must be empty or all ones\.?", sentence):
        return None
    d = _attr(node, "dilations", None)
    if d and any(x != 1 for x in d):
        return [("error", f"dilations={list(d)}; the document requires empty or all ones", None)]
    return []


def _rule_attr_none(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} other than `(\w+)` is not supported\.?", sentence)
    if not m:
        return None
    got = _as_text(_attr(node, m.group(1), schema))
    if got is not None and got != m.group(2):
        return [("error", f"attribute `{m.group(1)}`='{got}'; only '{m.group(2)}' is supported", None)]
    return []


def _rule_k_less(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} input must be less than (\d+)\.?", sentence)
    if not m:
        return None
    t = _present(node.input, _input_index(node, schema, m.group(1)))
    if not t:
        return []
    arr = _const_array(scope, t) if scope.is_const(t) else None
    if arr is None:
        return [("warning", f"`{m.group(1)}` is not a constant; the document requires it below {m.group(2)}",
                 t)]
    if np.any(arr >= int(m.group(2))):
        return [("error", f"`{m.group(1)}`={arr.tolist()}; the document requires it below {m.group(2)}", t)]
    return []


def _rule_seed_ignored(sentence, node, schema, scope):
    if not re.fullmatch(r"`seed` value is ignored by TensorRT\.?", sentence):
        return None
    if any(a.name == "seed" for a in node.attribute):
        return [("warning", "attribute `seed` is set and TensorRT ignores it: results will differ", None)]
    return []


def _rule_static_dims(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} must have static dimensions\.?", sentence)
    if not m:
        return None
    t = _present(node.input, _input_index(node, schema, m.group(1)))
    if not t:
        return []
    static = scope.get("static", t)
    if static is None:
        return [("warning", f"shape of `{m.group(1)}` unknown; the document requires static dimensions", t)]
    if static:
        return []
    return [("error", f"`{m.group(1)}` has dynamic dimensions; the document requires static ones", t)]


_RESIZE_ATTRS = {
    "Supported resize transformation modes": "coordinate_transformation_mode",
    "Supported resize modes": "mode",
    "Supported nearest modes": "nearest_mode",
    "Supported aspect ratio policy": "keep_aspect_ratio_policy",
}


def _rule_supported_modes(sentence, node, schema, scope):
    m = re.fullmatch(r"(Supported [a-z ]+): (.+?)\.?", sentence)
    if not m or m.group(1) not in _RESIZE_ATTRS:
        return None
    attr = _RESIZE_ATTRS[m.group(1)]
    if attr == "nearest_mode" and _as_text(_attr(node, "mode", schema)) != "nearest":
        return []
    if schema is None or attr not in schema.attributes:
        return []
    got = _as_text(_attr(node, attr, schema))
    allowed = _names_list(m.group(2))
    if got is not None and got not in allowed:
        return [("error", f"attribute `{attr}`='{got}'; supported: {', '.join(allowed)}", None)]
    return []


def _rule_antialias(sentence, node, schema, scope):
    if sentence.rstrip(".") != "Antialiasing is not supported":
        return None
    if _attr(node, "antialias", schema):
        return [("error", "attribute `antialias` is set; antialiasing is not supported", None)]
    return []


_RULES = (_rule_training_false, _rule_constant_input, _rule_zero_point, _rule_attr_equals, _rule_input_dtype,
          _rule_unsupported_parts, _rule_only_first_output, _rule_pool_rank, _rule_rank4, _rule_dilations,
          _rule_attr_none, _rule_k_less, _rule_seed_ignored, _rule_static_dims, _rule_supported_modes,
          _rule_antialias)


def _sentences(text: str) -> list[str]:
    # split on ". " but not inside back-quoted names; the cells are short prose
    parts = re.split(r"(?<=\.)\s+(?=[A-Z`])", text.strip())
    return [p.strip() for p in parts if p.strip()]


# ----------------------------------------------------------------------------- the check

def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.functions:
        from onnx import inliner
        model = inliner.inline_local_functions(model)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # a graph the reference inference cannot read still gets its op types checked
        log.warning("ONNX shape inference failed (%s); dtypes will be partial", e)
        return model


def check_graph(model_or_path, trt_major: int = 10, table_version: str | None = None) -> ReadinessReport:
    """Check every node of an ONNX model against the TensorRT ONNX parser's support matrix.

    ``model_or_path``: an ``onnx.ModelProto`` or a path to a ``.onnx`` file (external weights are
    not loaded). ``trt_major`` picks the table; ``table_version`` a specific one (e.g. "10.1").
    Raises ``FarError`` for a missing or non-ONNX file or an unknown TensorRT version.
    """
    table = load_support_table(trt_major, table_version)
    model, label = _load(model_or_path)
    model = _prepare(model)
    ops = table["operators"]
    type_map = table["type_names"]
    known_types = _onnx_types(table["data_types"], type_map)
    oldest_ops = table["oldest"]["operators"] if table.get("oldest") else None
    src = table["source"]
    revision = f"commit {src['commit'][:12]}" if src.get("commit") else f"sha256 {src['sha256_of_text'][:12]}"
    source = (f"{src['repository']} {src['path']} ({src['edition'].split(' (')[0]}, {revision}, "
              f"read {src['read_on']})")

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    report = ReadinessReport(model=label, trt_major=trt_major, table=table["tensorrt_version"], source=source,
                             opset=opset, nodes=0, op_counts={})
    counts: Counter = Counter()
    unchecked: dict[tuple[str, str], list[str]] = {}
    main_outputs = {o.name for o in model.graph.output}

    def add(sev, kind, graph, node, op, msg, tensor=None, dtype=None):
        f = Finding(sev, kind, graph, node, op, msg, tensor, dtype)
        (report.errors if sev == "error" else report.warnings).append(f)

    if opset is None or not table["opset_min"] <= opset <= table["opset_max"]:
        add("error", "opset", "main", "(model)", "",
            f"default-domain opset {opset} is outside the range {table['opset_min']}..{table['opset_max']} "
            f"the TensorRT {table['tensorrt_version']} parser supports")

    def check_dtype(gpath, label_, node, tensor, allowed, scope, what):
        code = scope.get("dtype", tensor)
        if code is None:
            add("warning", "no_dtype", gpath, label_, node.op_type,
                f"dtype of {what} unknown after shape inference; its check was skipped", tensor)
            return
        name = _dtype_name(code)
        if code == onnx.TensorProto.DOUBLE:
            add("warning", "double", gpath, label_, node.op_type,
                "DOUBLE tensor: TensorRT casts it down to FLOAT, clamping to +-FLT_MAX", tensor, name)
            return
        if name not in known_types:
            add("error", "unsupported_dtype", gpath, label_, node.op_type,
                f"{what} is {name}, a type TensorRT does not support at all", tensor, name)
        elif name not in allowed:
            add("error", "unsupported_dtype", gpath, label_, node.op_type,
                f"{what} is {name}; {node.op_type} supports {', '.join(sorted(allowed))}", tensor, name)

    def walk(graph: onnx.GraphProto, gpath: str, parent: _Scope | None):
        scope = _Scope(graph, parent)
        for i, node in enumerate(graph.node):
            label_ = _node_label(node, i)
            report.nodes += 1
            counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, f"{gpath}/{label_}.{a.name}", scope)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for k, g in enumerate(a.graphs):
                        walk(g, f"{gpath}/{label_}.{a.name}[{k}]", scope)
            check_node(node, label_, gpath, scope)

    def check_node(node, label_, gpath, scope):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            add("error", "unsupported_op", gpath, label_, op,
                f"op {node.domain}::{op} is not an ONNX standard op; the parser needs a TensorRT plugin "
                "for it")
            return
        entry = ops.get(op)
        if entry is None:
            add("error", "unsupported_op", gpath, label_, op,
                f"{op} is not in the TensorRT {table['tensorrt_version']} support matrix")
            return
        if not entry["supported"]:
            note = f" ({entry['restrictions']})" if entry.get("restrictions") else ""
            add("error", "unsupported_op", gpath, label_, op,
                f"{op} is marked unsupported in the TensorRT {table['tensorrt_version']} support "
                f"matrix{note}")
            return
        if oldest_ops is not None and not oldest_ops.get(op, {}).get("supported", False):
            add("warning", "newer_than_oldest_table", gpath, label_, op,
                f"{op} is supported by the TensorRT {table['tensorrt_version']} table but not by the "
                f"TensorRT {table['oldest']['tensorrt_version']} one: it needs a recent "
                f"TensorRT {trt_major}.x")
        try:
            schema = onnx.defs.get_schema(op, opset or onnx.defs.onnx_opset_version(), "")
        except Exception:
            schema = None

        allowed = _onnx_types(entry.get("types", []), type_map)
        for tensor, what in _data_tensors(node, schema):
            check_dtype(gpath, label_, node, tensor, allowed, scope, what)
        for o in node.output:
            code = scope.get("dtype", o) if o else None
            if code == onnx.TensorProto.UINT8 and o not in main_outputs:
                add("error", "uint8_intermediate", gpath, label_, op,
                    "UINT8 tensor produced inside the network; TensorRT allows UINT8 only as a "
                    "network input or output", o, "UINT8")

        for sentence in _sentences(entry.get("restrictions") or ""):
            for rule in _RULES:
                problems = rule(sentence, node, schema, scope)
                if problems is not None:
                    for sev, msg, tensor in problems:
                        add(sev, "restriction", gpath, label_, op, msg, tensor)
                    break
            else:
                where = label_ if gpath == "main" else f"{gpath}:{label_}"
                unchecked.setdefault((op, sentence), []).append(where)

    walk(model.graph, "main", None)
    report.op_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    report.unchecked = [{"op_type": op, "restriction": s, "count": len(n), "nodes": n[:5]}
                        for (op, s), n in sorted(unchecked.items())]
    log.info("TensorRT %d readiness: %d errors, %d warnings", trt_major, len(report.errors),
             len(report.warnings))
    return report


def _data_tensors(node: onnx.NodeProto, schema) -> list[tuple[str, str]]:
    """The tensors the "Supported Types" column constrains (see the module docstring)."""
    op = node.op_type
    if op in _CONTROL_FLOW:
        return []
    if op == "Where":
        return [(t, f"input {i}") for i, t in enumerate(node.input) if i in (1, 2) and t]
    if not node.input or op in _TYPED_BY_OUTPUT:
        return [(node.output[0], "output 0")] if node.output and node.output[0] else []
    picked = [(node.input[0], "input 0")] if node.input[0] else []
    if schema is not None and schema.inputs:
        first = schema.inputs[0].type_str
        for i, t in enumerate(node.input[1:], start=1):
            formal = schema.inputs[min(i, len(schema.inputs) - 1)]
            if t and formal.type_str == first:
                picked.append((t, f"input {i}"))
    if op in ("Cast", "CastLike") and node.output and node.output[0]:
        picked.append((node.output[0], "output 0"))
    return picked
