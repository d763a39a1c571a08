"""INT8 graphs with explicit Q/DQ, calibrated on real sampling runs, sensitive nodes chosen by
measured error.

Quantisation is ONNX Runtime's ``quantize_static`` in the form TensorRT consumes for explicit
INT8 (TensorRT 10+; implicit calibrators are gone in 11): QDQ format, symmetric int8
activations and weights, per-channel weights, biases left in float (``QuantizeBias=False``:
onnxruntime's defaults, asymmetric activations and int32 bias Q/DQ, are not parsable by
TensorRT, see ``tensorrt/readiness.py``). Only the inputs of MatMul, Gemm and Conv are
quantised, TensorRT's recommended placement.

Which nodes stay in float is measured, not guessed:
1. nodes that do not depend on any graph input (e.g. the fused head's time embeddings of
   constant t) are never quantised: they are constants, int8 would only add error; nor are
   MatMuls without a constant weight (attention's scores and weighted sum): on this CPU their
   Q/DQ pairs cost more than int8 saves (backbone 1.10x -> 1.25x over fp32, same error, on
   the small preset), and TensorRT runs fused attention in fp16 anyway;
2. the graph is quantised and its output compared with the fp32 graph on held-out real
   inputs (relative L2 error, ``error``). Over ``error_budget``, every quantised node gets a
   sensitivity, the noise-to-signal ratio that int8 rounding adds to its inputs (activation
   values recorded on real inputs, quantised with the calibrated scale; weights with their
   per-channel scales), and the most sensitive nodes are kept in float in doubling batches
   until the error fits;
3. if even ``max_excluded_fraction`` of the nodes in float does not fit the budget, the whole
   graph stays fp32, and the manifest says so and why;
4. the int8 and fp32 graphs are timed on the held-out inputs (one thread) and recorded; with
   ``min_speedup`` set, an int8 graph slower than that stays fp32 (a CPU/ONNX Runtime choice:
   small GEMMs lose to their Q/DQ overhead; leave it unset for TensorRT-bound graphs).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Int8Settings:
    calibrate_method: str = "MinMax"          # MinMax, Entropy or Percentile
    error_budget: float = 0.05                 # relative L2 error of a graph's output, held-out inputs
    max_excluded_fraction: float = 0.5
    exclude: tuple = ()                        # components (backbone, head, vae), graphs or nodes kept in float
    min_speedup: float | None = None           # keep a graph fp32 when int8 is not this much faster here

    def calibration_dict(self) -> dict:
        """The settings that change the calibrated ranges (part of the cache key)."""
        return {"calibrate_method": self.calibrate_method, "op_types": list(QUANTIZED_OPS),
                "symmetric": True, "per_channel": True}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return d


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod
    try:
        return getattr(CalibrationMethod, name)
    except AttributeError:
        from far_runtime.errors import FarError
        raise FarError(f"Unknown calibration method {name!r}; use MinMax, Entropy or Percentile.") from None


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize(fp32_path: str, out_path: str, feeds: list[dict] | None, ranges_path: str,
             exclude_nodes: list[str], settings: Int8Settings) -> None:
    """One ``quantize_static`` call; calibration ranges come from ``ranges_path`` when it exists
    (then ``feeds`` may be None) and are written there otherwise."""
    import warnings
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    qlog = logging.getLogger()
    level = qlog.level
    qlog.setLevel(logging.ERROR)              # onnxruntime logs a pre-processing hint on root
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(fp32_path, out_path, _Reader(feeds) if feeds is not None else None,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude_nodes), calibrate_method=_method(settings.calibrate_method),
                            extra_options={"QuantizeBias": False, "ActivationSymmetric": True,
                                           "WeightSymmetric": True},
                            calibration_cache_path=ranges_path)
    finally:
        qlog.setLevel(level)


def constant_nodes(model: onnx.ModelProto) -> list[str]:
    """Quantisable nodes whose inputs do not depend on any graph input."""
    g = model.graph
    live = {i.name for i in g.input}
    for node in g.node:                         # nodes are topologically sorted
        if any(i in live for i in node.input):
            live.update(node.output)
    return [n.name for n in g.node if n.op_type in QUANTIZED_OPS and not any(i in live for i in n.input)]


def output_error(ref_sess, sess, feeds: list[dict]) -> dict:
    """Relative L2 error (noise/signal) and max abs error relative to max |ref| over ``feeds``."""
    num = den = 0.0
    worst = 0.0
    nonfinite = 0
    for feed in feeds:
        for a, b in zip(ref_sess.run(None, feed), sess.run(None, feed)):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            nonfinite += int((~np.isfinite(b)).sum())
            d = np.where(np.isfinite(b64), b64 - a64, 0.0)
            num += float((d * d).sum())
            den += float((a64 * a64).sum())
            worst = max(worst, float(np.abs(d).max() / max(np.abs(a64).max(), 1e-12)) if d.size else 0.0)
    return {"error": float(np.sqrt(num / den)) if den > 0 else 0.0, "rel_to_max": worst, "nan_inf": nonfinite}


def _digest(obj) -> str:
    import hashlib
    import json
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:12]


def time_graphs(fp32_path: str, int8_path: str, feeds: list[dict], repeats: int = 3) -> dict:
    """Best-of-``repeats`` seconds of both graphs over ``feeds``, one thread, interleaved."""
    import time
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, sess in enumerate(sessions):
            t0 = time.perf_counter()
            for feed in feeds:
                sess.run(None, feed)
            best[i] = min(best[i], time.perf_counter() - t0)
    return {"fp32_seconds": best[0], "int8_seconds": best[1], "speedup": best[0] / best[1] if best[1] else 0.0}


def node_sensitivity(fp32_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    """Per quantised node: noise/signal that int8 rounding adds to its inputs, measured on
    ``feeds`` (activations) and on the weights themselves."""
    import onnxruntime as ort
    g = qdq_model.graph
    prod = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}

    def const(name):
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    act_inputs, weight_err, node_acts = {}, {}, {}
    for node in g.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        acts = []
        for inp in node.input:
            dq = prod.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":       # activation
                acts.append(q.input[0])
                act_inputs[q.input[0]] = float(const(q.input[1]).reshape(-1)[0])
            elif dq.input[0] in inits:                                 # int8 weight
                w8 = const(dq.input[0])
                scale = const(dq.input[1])
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                if scale.size > 1:
                    shape = [1] * w8.ndim
                    shape[axis % w8.ndim] = -1
                    scale = scale.reshape(shape)
                name = dq.input[0][:-len("_quantized")] if dq.input[0].endswith("_quantized") else None
                if name in fp32_inits:
                    w = numpy_helper.to_array(fp32_inits[name]).astype(np.float64)
                    weight_err[node.name] = float(np.linalg.norm(w - w8 * scale) / max(np.linalg.norm(w), 1e-30))
        node_acts[node.name] = acts
    aug = onnx.ModelProto()
    aug.CopyFrom(fp32_model)
    outs = {o.name for o in aug.graph.output}
    graph_inputs = {i.name for i in aug.graph.input}
    wanted = [t for t in act_inputs if t not in outs and t not in graph_inputs]
    for t in wanted:
        aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    num = {t: 0.0 for t in act_inputs}
    den = {t: 0.0 for t in act_inputs}
    for feed in feeds:
        vals = dict(zip(names, sess.run(names, feed)))
        vals.update(feed)
        for t, s in act_inputs.items():
            if t not in vals:
                continue
            x = np.asarray(vals[t], np.float64)
            xq = np.clip(np.round(x / s), -128, 127) * s
            num[t] += float(((x - xq) ** 2).sum())
            den[t] += float((x * x).sum())
    act_err = {t: float(np.sqrt(num[t] / den[t])) if den[t] > 0 else 0.0 for t in act_inputs}
    return {n: float(np.sqrt(sum(act_err.get(t, 0.0) ** 2 for t in acts) + weight_err.get(n, 0.0) ** 2))
            for n, acts in node_acts.items()}


def quantize_graph(fp32_path: str, out_path: str, feeds: dict | None, held_out: list[dict],
                   ranges_path: str, settings: Int8Settings, graph: str, progress=None,
                   timed: bool = True) -> dict:
    """Quantise one graph with measured exclusions; returns what was done (for the manifest).
    ``out_path`` is written only when the graph ends up int8. ``timed`` False: no one-thread
    ONNX Runtime timing (``--precision auto`` times every candidate on its own backend)."""
    import onnxruntime as ort
    say = progress or (lambda m: log.info(m))
    model = onnx.load(fp32_path)
    quantisable = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    info = {"settings": settings.to_dict(), "quantisable_nodes": len(quantisable),
            "error_budget": settings.error_budget}
    component = "head" if graph.startswith("head") else "vae" if graph == "vae_decoder" else graph
    if graph in settings.exclude or component in settings.exclude or not quantisable:
        info.update(precision="fp32", reason="kept in float by option" if quantisable
                    else "no MatMul/Gemm/Conv to quantise", excluded=[])
        return info
    user = [n for n in quantisable if n in settings.exclude]
    inits = {i.name for i in model.graph.initializer}
    weightless = [n.name for n in model.graph.node
                  if n.op_type in QUANTIZED_OPS and not any(i in inits for i in n.input)]
    const = constant_nodes(model)
    excluded = {n: "no constant weight: activation x activation" for n in weightless}
    excluded.update({n: "constant: does not depend on the graph inputs" for n in const})
    excluded.update({n: "option" for n in user})
    fixed = len(excluded)
    # ranges are calibrated for the tensors this first exclusion set quantises (a superset of
    # what later, larger exclusion sets need)
    ranges_path = f"{os.path.splitext(ranges_path)[0]}-{_digest(sorted(excluded))}.json"
    info["ranges"] = "cached" if os.path.isfile(ranges_path) else "calibrated"
    ref = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"])
    tmp = out_path + ".tmp.onnx"
    calib = feeds
    tried = []
    try:
        sens = None
        budget_nodes = int(settings.max_excluded_fraction * len(quantisable))
        extra = 0
        while True:
            quantize(fp32_path, tmp, calib, ranges_path, list(excluded), settings)
            calib = None                                 # ranges are cached now
            err = output_error(ref, ort.InferenceSession(tmp, providers=["CPUExecutionProvider"]), held_out)
            tried.append({"excluded": len(excluded), **err})
            say(f"{graph}: int8 with {len(excluded)} node(s) in float: error {err['error']:.4f} "
                f"(budget {settings.error_budget})")
            if err["error"] <= settings.error_budget and not err["nan_inf"]:
                break
            if sens is None:
                sens = node_sensitivity(model, onnx.load(tmp), held_out)
                info["sensitivity"] = dict(sorted(sens.items(), key=lambda kv: -kv[1])[:20])
            candidates = [n for n, _ in sorted(sens.items(), key=lambda kv: -kv[1]) if n not in excluded]
            extra = max(1, 2 * extra)
            if not candidates or len(excluded) - fixed >= budget_nodes:
                info.update(precision="fp32", excluded=[], attempts=tried,
                            reason=f"int8 error {err['error']:.4f} over budget {settings.error_budget} "
                                   f"even with {len(excluded)} node(s) in float")
                return info
            for n in candidates[:min(extra, max(1, budget_nodes - (len(excluded) - fixed)))]:
                excluded[n] = f"sensitivity: int8 adds {sens[n]:.4f} noise/signal to its inputs"
        speed = time_graphs(fp32_path, tmp, held_out) if timed else None
        if speed:
            info["timing"] = speed
        if speed and settings.min_speedup and speed["speedup"] < settings.min_speedup:
            info.update(precision="fp32", excluded=[], attempts=tried,
                        reason=f"int8 is {speed['speedup']:.2f}x fp32 on this machine (held-out inputs, one "
                               f"thread), under --int8-min-speedup {settings.min_speedup:g}")
            return info
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info.update(precision="int8", excluded=[{"node": n, "reason": r} for n, r in excluded.items()],
                attempts=tried, **{k: tried[-1][k] for k in ("error", "rel_to_max", "nan_inf")})
    return info
