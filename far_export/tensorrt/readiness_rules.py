"""The restriction rules of the readiness check, one function per kind of sentence.

Each rule reads one sentence of the parser document's Restrictions cell and decides it for one
node; ``RULES`` lists them in the order they are tried, ``sentences`` splits a cell.
"""
from __future__ import annotations

import re

import numpy as np

from .readiness_graph import as_text, attribute, const_array, dtype_name

# The document names Dropout's third input `is_training` (`is_traning` in the 10.1 table); the ONNX
# schema calls it `training_mode`.
DOC_NAME_ALIASES = {("Dropout", "is_training"): "training_mode", ("Dropout", "is_traning"): "training_mode"}

# ----------------------------------------------------------------------------- restriction rules
#
# Each rule reads one sentence of the document's Restrictions cell and decides it for one node.
# A rule returns None when the sentence is not its kind; otherwise a list of
# (severity, message, tensor) problems, empty when the node complies.

_NAME = r"`([A-Za-z_]+)`"


def _input_index(node, schema, doc_name: str) -> int | None:
    name = DOC_NAME_ALIASES.get((node.op_type, doc_name), doc_name)
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
    arr = const_array(scope, tensor)
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
    arr = const_array(scope, tensor) if scope.is_const(tensor) else None
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
    got = attribute(node, name, schema)
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
    if dtype_name(code) != m.group(2):
        return [("error", f"`{m.group(1)}` is {dtype_name(code)}; the document requires {m.group(2)}",
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
    d = attribute(node, "dilations", None)
    if d and any(x != 1 for x in d):
        return [("error", f"dilations={list(d)}; the document requires empty or all ones", None)]
    return []


def _rule_attr_none(sentence, node, schema, scope):
    m = re.fullmatch(rf"{_NAME} other than `(\w+)` is not supported\.?", sentence)
    if not m:
        return None
    got = as_text(attribute(node, m.group(1), schema))
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
    arr = const_array(scope, t) if scope.is_const(t) else None
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
    if attr == "nearest_mode" and as_text(attribute(node, "mode", schema)) != "nearest":
        return []
    if schema is None or attr not in schema.attributes:
        return []
    got = as_text(attribute(node, attr, schema))
    allowed = _names_list(m.group(2))
    if got is not None and got not in allowed:
        return [("error", f"attribute `{attr}`='{got}'; supported: {', '.join(allowed)}", None)]
    return []


def _rule_antialias(sentence, node, schema, scope):
    if sentence.rstrip(".") != "Antialiasing is not supported":
        return None
    if attribute(node, "antialias", schema):
        return [("error", "attribute `antialias` is set; antialiasing is not supported", None)]
    return []


RULES = (_rule_training_false, _rule_constant_input, _rule_zero_point, _rule_attr_equals, _rule_input_dtype,
          _rule_unsupported_parts, _rule_only_first_output, _rule_pool_rank, _rule_rank4, _rule_dilations,
          _rule_attr_none, _rule_k_less, _rule_seed_ignored, _rule_static_dims, _rule_supported_modes,
          _rule_antialias)


def sentences(text: str) -> list[str]:
    # split on ". " but not inside back-quoted names; the cells are short prose
    parts = re.split(r"(?<=\.)\s+(?=[A-Z`])", text.strip())
    return [p.strip() for p in parts if p.strip()]
