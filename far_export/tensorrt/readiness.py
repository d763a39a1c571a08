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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from far_runtime.errors import FarError

from .readiness_graph import Scope, dtype_name, load_model, node_label
from .readiness_rules import RULES, sentences

log = logging.getLogger(__name__)

SUPPORT_FILE = Path(__file__).resolve().parent.parent / "data" / "trt_onnx_support.json"

_CONTROL_FLOW = {"If", "Loop", "Scan"}
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
    model, label = load_model(model_or_path)
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
        name = dtype_name(code)
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

    def walk(graph: onnx.GraphProto, gpath: str, parent: Scope | None):
        scope = Scope(graph, parent)
        for i, node in enumerate(graph.node):
            label_ = node_label(node, i)
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

        for sentence in sentences(entry.get("restrictions") or ""):
            for rule in RULES:
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
