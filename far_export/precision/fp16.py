"""FP16 graphs whose FP32 keep-list is derived from activation ranges recorded on real inputs.

1. ``record_ranges``: every float tensor of the fp32 graph (weights included) is made a graph
   output and the graph is run by ONNX Runtime on feeds recorded from real sampling runs
   (``calibration.collect_feeds``: every iteration k, every head step). Per tensor it keeps
   the largest magnitude, the relative L2 error of rounding it to fp16 (underflow shows up
   here), and for the data input of a normalisation or softmax what makes it fragile in fp16.
2. ``keep_list``: a node stays in FP32 when its measured values break one of these rules
   (``KeepRules``), each reason recorded with the number that broke it:
   - range: a float input or output reaches ``range_limit`` (fp16's 65504 with headroom for
     inputs not seen during recording); normalisations also square their centred input;
   - precision: rounding an output to fp16 loses more than ``error_limit`` (relative L2);
     a normalisation's worst row has ``max|x| / std`` so large that fp16's rounding of x
     (2^-11 relative) becomes an error above ``error_limit`` after centring; a softmax's
     logits are so large that their rounding error (an absolute error of the probabilities'
     log) exceeds ``error_limit``; a Sin/Cos argument (time embeddings: t x 1000 x freq) is
     so large that its rounding shifts the phase by more than ``error_limit``, which keeps
     the nodes computing that argument as well.
3. ``convert_fp16``: onnxconverter-common converts everything else, graph IO stays float32
   (``keep_io_types``) so specs and the runtime do not change.

Nothing here is hand-written per model: feed it another checkpoint and the list changes.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_EPS = 2.0 ** -11          # unit roundoff of fp16 (11-bit significand)
NORM_OPS = {"LayerNormalization": "layer", "InstanceNormalization": "instance",
            "GroupNormalization": "group", "BatchNormalization": None}
PERIODIC = {"Sin", "Cos"}
FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class KeepRules:
    range_limit: float = FP16_MAX / 4     # 4x headroom over the largest value recorded
    error_limit: float = 5e-3             # estimated relative error a node may add in fp16

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TensorStats:
    max_abs: float = 0.0
    nonfinite: int = 0
    sum_sq: float = 0.0
    sum_sq_err16: float = 0.0             # sum of (x - fp16(x))^2 over values fp16 can hold
    norm_cancel: float = 0.0              # max over rows of max|x| / std (normalisation inputs)
    norm_sq: float = 0.0                  # max over rows of (x - mean)^2 (normalisation inputs)

    @property
    def rounding_error(self) -> float:
        return float(np.sqrt(self.sum_sq_err16 / self.sum_sq)) if self.sum_sq > 0 else 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        fin = np.isfinite(x)
        if not fin.all():
            self.nonfinite += int(x.size - fin.sum())
            x = np.where(fin, x, 0)
        if x.size:
            self.max_abs = max(self.max_abs, float(np.abs(x).max()))
        r = x[np.abs(x) <= FP16_MAX] if self.max_abs > FP16_MAX else x
        err = r - r.astype(np.float16).astype(np.float32)
        self.sum_sq += float(np.dot(r, r))
        self.sum_sq_err16 += float(np.dot(err, err))

    def add_norm_input(self, x: np.ndarray, axes: tuple, eps: float) -> None:
        x = np.asarray(x, np.float64)
        if x.size == 0:
            return
        mean = x.mean(axis=axes, keepdims=True)
        dev = x - mean
        std = np.sqrt((dev * dev).mean(axis=axes, keepdims=True) + eps)
        self.norm_cancel = max(self.norm_cancel, float((np.abs(x) / std).max()))
        self.norm_sq = max(self.norm_sq, float((dev * dev).max()))


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _norm_axes(node, rank: int) -> tuple:
    if node.op_type == "LayerNormalization":
        axis = _attr(node, "axis", -1) % rank
        return tuple(range(axis, rank))
    if node.op_type == "InstanceNormalization":
        return tuple(range(2, rank))
    return tuple(range(1, rank))                         # GroupNormalization: per group, approx.


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 values produced by nodes (from shape inference) or graph inputs."""
    g = model.graph
    floats = {vi.name for vi in list(g.value_info) + list(g.output) + list(g.input)
              if vi.type.tensor_type.elem_type == FLOAT}
    return floats


def record_ranges(model: onnx.ModelProto, feeds: list[dict], progress=None) -> dict[str, TensorStats]:
    """Run ``model`` (fp32) on ``feeds`` with every float tensor exposed; stats per tensor."""
    import onnxruntime as ort
    model = onnx.shape_inference.infer_shapes(model)
    floats = float_tensors(model)
    g = model.graph
    produced = [o for n in g.node for o in n.output if o and o in floats]
    outs = {o.name for o in g.output}
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    for name in produced:
        if name not in outs:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(name, FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    stats = {n: TensorStats() for n in set(names) | {i.name for i in g.input if i.name in floats}}
    norm_inputs = {n.input[0]: n for n in g.node if n.op_type in NORM_OPS}
    for i, feed in enumerate(feeds):
        values = dict(zip(names, sess.run(names, feed)))
        values.update({k: v for k, v in feed.items() if k in stats})
        for name, v in values.items():
            stats[name].add(v)
            node = norm_inputs.get(name)
            if node is not None and v.ndim >= 2:
                stats[name].add_norm_input(v, _norm_axes(node, v.ndim), float(_attr(node, "epsilon", 1e-5)))
        if progress and (i + 1) % 16 == 0:
            progress(f"recorded {i + 1}/{len(feeds)} feeds")
    for init in g.initializer:
        if init.data_type == FLOAT:
            s = stats.setdefault(init.name, TensorStats())
            s.add(numpy_helper.to_array(init))
    return stats


def keep_list(model: onnx.ModelProto, stats: dict[str, TensorStats], rules: KeepRules = KeepRules()) -> list[dict]:
    """Nodes to keep in FP32, each with the measured reasons: ``[{"node", "op", "reasons"}]``."""
    kept, argument_chain = [], []
    for node in model.graph.node:
        reasons = []
        for kind, names in (("input", node.input), ("output", node.output)):
            for name in names:
                s = stats.get(name)
                if s is None:
                    continue
                if s.nonfinite:
                    reasons.append(f"range: {kind} {name} has {s.nonfinite} non-finite values")
                if s.max_abs > rules.range_limit:
                    reasons.append(f"range: {kind} {name} reaches {s.max_abs:.4g} > {rules.range_limit:.4g}")
                if kind == "output" and s.rounding_error > rules.error_limit:
                    reasons.append(f"precision: rounding output {name} to fp16 loses "
                                   f"{s.rounding_error:.3g} (relative L2) > {rules.error_limit:g}")
        data = stats.get(node.input[0]) if node.input else None
        if data is not None and node.op_type in NORM_OPS:
            if data.norm_sq > rules.range_limit:
                reasons.append(f"range: squared deviations of {node.input[0]} reach {data.norm_sq:.4g} "
                               f"> {rules.range_limit:.4g}")
            est = FP16_EPS * data.norm_cancel
            if est > rules.error_limit:
                reasons.append(f"precision: max|x|/std of {node.input[0]} is {data.norm_cancel:.4g}, so "
                               f"fp16 rounding of x becomes {est:.3g} after centring > {rules.error_limit:g}")
        if data is not None and node.op_type in ("Softmax", "LogSoftmax"):
            est = FP16_EPS * data.max_abs
            if est > rules.error_limit:
                reasons.append(f"precision: logits reach {data.max_abs:.4g}, fp16 rounding makes a "
                               f"{est:.3g} relative error of the probabilities > {rules.error_limit:g}")
        if data is not None and node.op_type in PERIODIC:
            est = FP16_EPS * data.max_abs
            if est > rules.error_limit:
                reasons.append(f"precision: argument reaches {data.max_abs:.4g}, fp16 rounding shifts "
                               f"the phase by up to {est:.3g} > {rules.error_limit:g}")
                argument_chain.append((node.input[0], node.name))
        if reasons:
            kept.append({"node": node.name, "op": node.op_type, "reasons": reasons})
    return kept + _argument_producers(model, stats, rules, argument_chain, {k["node"] for k in kept})


def _argument_producers(model, stats, rules, chain, already) -> list[dict]:
    """The nodes computing a large periodic argument must be FP32 too: fp16 would round the
    argument before the Sin/Cos sees it. Walk upstream while the value is that large."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out, seen = [], set(already)
    while chain:
        tensor, user = chain.pop()
        node = producer.get(tensor)
        s = stats.get(tensor)
        if node is None or tensor in inits or s is None or node.name in seen:
            continue
        if FP16_EPS * s.max_abs <= rules.error_limit:
            continue
        seen.add(node.name)
        out.append({"node": node.name, "op": node.op_type,
                    "reasons": [f"precision: computes {tensor} (reaches {s.max_abs:.4g}), the argument "
                                f"of {user}, whose fp16 rounding error {FP16_EPS * s.max_abs:.3g} > "
                                f"{rules.error_limit:g}"]})
        chain.extend((i, user) for i in node.input if i)
    return out


def convert_fp16(model: onnx.ModelProto, kept_nodes: list[str]) -> onnx.ModelProto:
    """FP16 graph with float32 IO; ``kept_nodes`` (and ops without fp16 support) stay FP32."""
    from onnxconverter_common import float16
    import warnings
    model = _inline_identity_weights(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=list(kept_nodes),
                                               max_finite_val=FP16_MAX, min_positive_val=2.0 ** -24)
    return _skip_round_trips(_fix_casts(m16))


def _inline_identity_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The legacy exporter shares a tied weight through ``Identity(weight)``; the converter
    would then type the copy fp16 while a kept node holds the original fp32. Give each use its
    own initializer instead (same values, no node)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            g.initializer.append(copy)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return out


def _skip_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Between two kept nodes the converter leaves ``Cast(fp16) -> Cast(fp32)`` whenever the
    tensor has several consumers (its clean-up only removes single-consumer pairs), so a value
    kept in FP32 for its range would still pass through fp16 and overflow. Feed every such
    fp32 consumer the original fp32 tensor and drop casts nobody reads any more."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename = {}
    for node in g.node:
        if cast_to(node) == FLOAT:
            up = prod.get(node.input[0])
            if up is not None and cast_to(up) == onnx.TensorProto.FLOAT16:
                rename[node.output[0]] = up.input[0]
    if not rename:
        return model
    outputs = {o.name for o in g.output}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    return model


def _fix_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxconverter-common retypes a ``Cast(to=FLOAT)``'s output to fp16 (e.g. a shape cast to
    float in attention scaling) without changing ``to``; make the node agree with its type."""
    f16 = {vi.name for vi in model.graph.value_info
           if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in f16:
            for a in node.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    return model


def fp32_nodes(model16: onnx.ModelProto) -> int:
    """How many compute nodes of a converted graph still run on float32 tensors."""
    g = onnx.shape_inference.infer_shapes(model16).graph
    f32 = float_tensors(onnx.shape_inference.infer_shapes(model16))
    return sum(1 for n in g.node if n.op_type not in ("Cast", "Constant")
               and any(o in f32 for o in n.output))


def to_fp16(model: onnx.ModelProto, feeds: list[dict], rules: KeepRules = KeepRules(),
            progress=None) -> tuple[onnx.ModelProto, dict]:
    """Record, derive the keep-list, convert. Returns the fp16 model and what was done."""
    stats = record_ranges(model, feeds, progress)
    kept = keep_list(model, stats, rules)
    m16 = convert_fp16(model, [k["node"] for k in kept])
    top = sorted(((s.max_abs, n) for n, s in stats.items()), reverse=True)[:5]
    info = {"rules": rules.to_dict(), "recorded_feeds": len(feeds), "kept": kept,
            "kept_count": len(kept), "largest_values": [{"tensor": n, "max_abs": v} for v, n in top]}
    return m16, info
