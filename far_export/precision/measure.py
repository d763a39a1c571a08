"""One graph file on a CPU backend, outside the sampling loop: compiled as the runtime compiles
it, fed recorded real inputs, compared with the fp32 graph and timed.

What ``--precision auto`` measures each candidate with (``auto.py``). A runner is built with
the runtime's own settings (``backends.onnxruntime.session_options``,
``backends.openvino.compile_config``), so a time here is a time the runtime will see; the
fp32 reference outputs are ONNX Runtime's on the exported graph, the one the export
validated against PyTorch.
"""
from __future__ import annotations

import time

import numpy as np

from far_runtime.errors import FarError


def ort_runner(path: str, threads: int | None):
    """``run(feed) -> {output: array}`` of ONNX Runtime's CPU provider (the runtime's options)."""
    from far_runtime.backends.onnxruntime import import_onnxruntime, session_options
    ort = import_onnxruntime()
    sess = ort.InferenceSession(path, session_options(ort, threads), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(names, feed)))


def openvino_runner(path: str, precision: str, threads: int | None):
    """``run(feed) -> {output: array}`` of OpenVINO's CPU plugin computing in ``precision``; a
    compiled model that reports another precision is refused (as the runtime refuses it)."""
    from far_runtime.backends.openvino import ELEMENT_TYPE, compile_config, import_openvino
    ov = import_openvino()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", compile_config(precision, threads))
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    if got != ELEMENT_TYPE[precision]:
        raise FarError(f"OpenVINO compiled {path} in {got} although {precision} was asked.")
    request = compiled.create_infer_request()
    outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(feed):
        res = request.infer(feed)
        return {name: np.array(res[o]) for o, name in outputs}
    return run


def runner(backend: str, path: str, precision: str, threads: int | None):
    if backend == "onnxruntime":
        if precision != "fp32":
            raise FarError(f"ONNX Runtime's CPU provider computes in fp32 only, not {precision}.")
        return ort_runner(path, threads)
    return openvino_runner(path, precision, threads)


def output_error(ref: list[dict], got: list[dict]) -> dict:
    """Relative L2 error (noise/signal over every output of every feed), max abs error relative
    to max |ref|, and NaN/Inf count (``int8.output_error``'s figures, from stored outputs)."""
    num = den = worst = 0.0
    nonfinite = 0
    for r, g in zip(ref, got):
        for name, a in r.items():
            a64, b = a.astype(np.float64), g[name]
            nonfinite += int((~np.isfinite(b)).sum())
            d = np.where(np.isfinite(b), b.astype(np.float64) - a64, 0.0)
            num += float((d * d).sum())
            den += float((a64 * a64).sum())
            if d.size:
                worst = max(worst, float(np.abs(d).max() / max(np.abs(a64).max(), 1e-12)))
    return {"error": float(np.sqrt(num / den)) if den > 0 else 0.0, "rel_to_max": worst,
            "nan_inf": nonfinite}


def best_times(runners: dict, feeds: list[dict], repeats: int, min_seconds: float = 0.0,
               max_rounds: int = 200) -> dict[str, float]:
    """Best-of-rounds seconds of each runner over ``feeds``; runners interleaved round by round
    (A B C, C B A, ...), so a shared machine's load falls on every candidate alike. At least
    ``repeats`` rounds, and more (up to ``max_rounds``) until every runner has run for
    ``min_seconds`` in all: a graph of a few milliseconds needs many rounds before its best
    round is free of another process's time slice."""
    best = {k: float("inf") for k in runners}
    spent = {k: 0.0 for k in runners}
    order = list(runners)
    r = 0
    while r < repeats or (min(spent.values()) < min_seconds and r < max_rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            for feed in feeds:
                runners[k](feed)
            dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
            spent[k] += dt
        r += 1
    return best
