"""Reading an ONNX model for the readiness check: loading, and the names visible in one graph.

``Scope`` holds each name's dtype, rank, static-ness and constant value, chained to the outer
graph for If/Loop/Scan bodies; the helpers read attributes and constants the way the TensorRT
parser does (a ``Constant`` node's output counts as an initializer).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from far_runtime.errors import FarError


# ----------------------------------------------------------------------------- model loading

def load_model(model_or_path) -> tuple[onnx.ModelProto, str]:
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

class Scope:
    """Names visible in one graph: dtypes, constants, producers; chained to the outer graph."""

    def __init__(self, graph: onnx.GraphProto, parent: "Scope | None"):
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
                self.const[node.output[0]] = constant_value(node)

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


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
            v = onnx.helper.get_attribute_value(a)
            arr = np.array(v, dtype=np.int64 if "int" in a.name else np.float32)
            return numpy_helper.from_array(arr)
    return None


def const_array(scope: Scope, name: str) -> np.ndarray | None:
    t = scope.get("const", name)
    if t is None or (t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL):
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:
        return None


def dtype_name(code: int) -> str:
    return onnx.TensorProto.DataType.Name(code)


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"<unnamed {node.op_type} #{index}>"


def attribute(node: onnx.NodeProto, name: str, schema):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    if schema is not None and name in schema.attributes:
        d = schema.attributes[name].default_value
        if d.name:  # default present
            return onnx.helper.get_attribute_value(d)
    return None


def as_text(v):
    return v.decode() if isinstance(v, bytes) else v
