"""The machine's matmul peak per dtype (fp32, bf16, fp16, int8), per library, measured.

A backbone that runs in int8 is judged against the int8 peak, one that runs in bf16 against
the bf16 peak: an fp32 denominator would make a low-precision engine look like it beats the
machine. Each kernel is an n x n x n product timed best-of over ~``seconds``; n starts small
and doubles (up to ``n_max``) while one product takes under a tenth of the time, so a dtype
this CPU has no fast kernel for (bf16 without AVX512-BF16/AMX runs at ~1 GFLOP/s) costs
seconds, not minutes. What is measured:

- fp32: ``torch.matmul``, numpy's BLAS, ONNX Runtime MatMul;
- bf16: ``torch.matmul`` on bf16 tensors (what autocast runs); ONNX Runtime MatMul in bf16
  (none on the CPU provider: the reason is recorded);
- fp16: ONNX Runtime MatMul in fp16 (what an fp16 bundle would run on this CPU);
- int8: ``torch._int_mm``; ONNX Runtime QDQ MatMul with s8 activations (the layout the int8
  bundles use, TensorRT's) and with u8 activations, both with per-channel s8 weights, which
  ONNX Runtime fuses into ``MatMulIntegerToFloat`` (the kernel name is recorded from its
  profiler);
- OpenVINO (when installed), compiled as the runtime compiles a graph: the fp32 MatMul with
  the f32 and (on a CPU with bf16 units) the bf16 precision hint, and the QDQ MatMul (int8).

The CPU flags that decide which kernels exist (AVX-512, VNNI, BF16, AMX) are recorded next
to the figures.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16", "fp16", "int8")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
             "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> dict:
    """The CPU's model, the flags that decide the kernels (``CPU_FLAGS``: true or false), and
    every flag ``/proc/cpuinfo`` lists (``all_flags``)."""
    from far_runtime.cpu import cpu_name, read_cpu_flags
    flags = read_cpu_flags()
    if flags is None:
        return {}
    return {"model": cpu_name(), **{f: f in flags for f in CPU_FLAGS}, "all_flags": sorted(flags)}


def _best(fn, seconds: float) -> tuple[float, int]:
    fn()                                               # warm-up
    best, reps, end = float("inf"), 0, time.perf_counter() + seconds
    while time.perf_counter() < end or reps < 2:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best, reps


def _sized(make, seconds: float, n_max: int, n0: int = 256) -> dict:
    """``make(n)`` returns a callable doing one n^3 product; grow n while it is fast."""
    n = n0
    while True:
        fn = make(n)
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        if n >= n_max or once * 8 > seconds:
            break
        n *= 2
    best, reps = _best(fn, seconds)
    return {"n": n, "gflops": 2 * n ** 3 / best / 1e9, "reps": reps}


def _torch_kernels(threads: int, seconds: float, n_max: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)

    def mm(dtype):
        def make(n):
            a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
            return lambda: torch.matmul(a, b)
        return make

    def int_mm(n):
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
        return lambda: torch._int_mm(a, b)
    out = {"fp32": _sized(mm(torch.float32), seconds, n_max), "bf16": _sized(mm(torch.bfloat16), seconds, n_max)}
    try:
        out["int8"] = _sized(int_mm, seconds, n_max)
    except RuntimeError as e:
        out["int8"] = {"gflops": None, "reason": f"torch._int_mm failed: {e}"}
    return out


def qdq_matmul_model(m: int, k: int, n: int, mode: str, activations: str = "s8"):
    """A one-MatMul ONNX model: ``fp32``, ``fp16``, ``bf16`` or ``int8`` (QDQ: activations
    quantised symmetric s8 or u8 with zero point 128, weights s8 per output channel)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
            "int8": TensorProto.FLOAT}[mode]
    nodes, inits = [], []
    if mode == "int8":
        adt, zp = (np.int8, 0) if activations == "s8" else (np.uint8, 128)
        ws = (np.abs(w).max(0) / 127).astype(np.float32)
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(np.array(zp, adt), "xz"),
                  numpy_helper.from_array(np.round(w / ws).astype(np.int8), "wq"),
                  numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    else:
        t = numpy_helper.from_array(w, "w")
        if mode != "fp32":
            t = helper.make_tensor("w", elem, (k, n), w.astype(np.float16).tobytes() if mode == "fp16"
                                   else (w.view(np.uint32) >> 16).astype(np.uint16).tobytes(), raw=True)
        inits.append(t)
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("x", elem, [m, k])],
                              [helper.make_tensor_value_info("y", elem, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def ort_session(model, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feed(mode: str, m: int, k: int) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    if mode == "fp16":
        return x.astype(np.float16)
    return x


def kernel_names(model, feed: dict) -> list[str]:
    """The ONNX Runtime kernels one run of ``model`` executes (from its profiler)."""
    with tempfile.TemporaryDirectory() as d:
        sess = ort_session(model, 1, os.path.join(d, "p"))
        sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    return sorted({e["args"]["op_name"] for e in events
                   if e.get("cat") == "Node" and "op_name" in e.get("args", {})})


def time_ort(m: int, k: int, n: int, mode: str, threads: int, seconds: float, activations: str = "s8") -> dict:
    """One ONNX Runtime MatMul of the given shape and dtype: ms, GFLOP/s, kernels (or why it
    cannot run on the CPU provider)."""
    try:
        model = qdq_matmul_model(m, k, n, mode, activations)
        sess = ort_session(model, threads)
    except Exception as e:                         # onnxruntime raises its own exception types
        return {"gflops": None, "reason": f"ONNX Runtime's CPU provider has no {mode} MatMul "
                                          f"({str(e).splitlines()[0][:160]})"}
    if mode == "bf16":
        return {"gflops": None, "reason": "ONNX Runtime has a bf16 MatMul here, but numpy cannot "
                                          "feed bf16 inputs, so the bench does not time it"}
    feed = {"x": _feed(mode, m, k)}
    best, reps = _best(lambda: sess.run(None, feed), seconds)
    return {"m": m, "k": k, "n": n, "ms": 1000 * best, "gflops": 2 * m * k * n / best / 1e9, "reps": reps,
            "kernels": kernel_names(model, feed)}


def _ort_square(mode: str, threads: int, seconds: float, n_max: int, activations: str = "s8") -> dict:
    n = 256
    while True:
        r = time_ort(n, n, n, mode, threads, 0.0, activations)
        if r["gflops"] is None or n >= n_max or 2 * n ** 3 / r["gflops"] / 1e9 * 8 > seconds:
            break
        n *= 2
    if r["gflops"] is None:
        return r
    r = time_ort(n, n, n, mode, threads, seconds, activations)
    r["n"] = n
    return r


def time_openvino(n: int, mode: str, precision: str, threads: int, seconds: float) -> dict:
    """One n^3 MatMul on OpenVINO's CPU plugin as the runtime compiles it (``compile_config``):
    ``mode`` fp32 or int8 (the QDQ model), computed in ``precision`` (f32 or bf16 hint)."""
    from far_runtime.backends.openvino import compile_config, import_openvino
    ov = import_openvino()
    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        import onnx
        path = os.path.join(d, "mm.onnx")
        onnx.save(qdq_matmul_model(n, n, n, mode), path)
        compiled = core.compile_model(core.read_model(path), "CPU", compile_config(precision, threads))
    request = compiled.create_infer_request()
    feed = {"x": _feed("fp32", n, n)}
    best, reps = _best(lambda: request.infer(feed), seconds)
    return {"n": n, "ms": 1000 * best, "gflops": 2 * n ** 3 / best / 1e9, "reps": reps,
            "hint": str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())}


def _openvino_kernels(threads: int, seconds: float, n_max: int) -> dict:
    """OpenVINO's fp32, bf16 (on a CPU with bf16 units) and int8 (QDQ) matmul peaks, or why not."""
    from far_runtime.errors import FarError
    try:
        from far_runtime.backends import check_choice
        check_choice("openvino", None)
    except FarError as e:
        return {d: {"gflops": None, "reason": str(e)} for d in ("fp32", "bf16", "int8")}
    out = {}
    for dtype, mode, precision in (("fp32", "fp32", "fp32"), ("bf16", "fp32", "bf16"), ("int8", "int8", "fp32")):
        try:
            check_choice("openvino", precision)
        except FarError as e:
            out[dtype] = {"gflops": None, "reason": str(e)}
            continue
        n = 256
        while True:
            r = time_openvino(n, mode, precision, threads, 0.0)
            if n >= n_max or 2 * n ** 3 / r["gflops"] / 1e9 * 8 > seconds:
                break
            n *= 2
        out[dtype] = time_openvino(n, mode, precision, threads, seconds)
    return out


def best_library_per_dtype(lib: dict, all_cores: bool) -> dict:
    """Each dtype's peak: its best library (numpy only when it may use every core)."""
    peaks = {}
    for d, libs in lib.items():
        usable = {k: v["gflops"] for k, v in libs.items()
                  if v.get("gflops") and (k != "numpy" or all_cores)}
        best = max(usable, key=usable.get) if usable else None
        peaks[d] = {"gflops": usable[best] if best else None, "library": best}
    return peaks


def merge_peaks(*measured: dict) -> dict:
    """Several ``measure_peaks`` of one run (before and after the measured runs) as one: each
    library's best figure. A shared machine's load only ever lowers a peak, so the best of
    measurements taken at different times is the closer to the machine's; ``measurements``
    keeps when each was taken and under which load."""
    first = measured[0]
    lib = {d: {} for d in DTYPES}
    for m in measured:
        for d, libs in m["libraries"].items():
            for k, r in libs.items():
                if (lib[d].get(k, {}).get("gflops") or 0) < (r.get("gflops") or 0) or k not in lib[d]:
                    lib[d][k] = r
    all_cores = first["threads"] >= (os.cpu_count() or 1)
    return {**first, "libraries": lib, "peak": best_library_per_dtype(lib, all_cores),
            "measurements": [{"when": m.get("when"), "load_1m": m.get("load_1m"),
                              "peak": {d: v["gflops"] for d, v in m["peak"].items()}} for m in measured]}


def measure_peaks(threads: int, seconds: float = 1.0, n_max: int = 2048) -> dict:
    """Best GFLOP/s (int8: GOP/s) per dtype and library, and each dtype's peak (the best
    library); ``libraries`` lists every figure, ``reason`` says why one is missing."""
    lib = {d: {} for d in DTYPES}
    for d, r in _torch_kernels(threads, seconds, n_max).items():
        lib[d]["torch"] = r
    a = np.random.default_rng(0).standard_normal((n_max, n_max), dtype=np.float32)
    lib["fp32"]["numpy"] = {"n": n_max, "gflops": 2 * n_max ** 3 / _best(lambda: a @ a, seconds)[0] / 1e9,
                            "threads": "all cores (its BLAS's own setting)"}
    lib["fp32"]["onnxruntime"] = _ort_square("fp32", threads, seconds, n_max)
    lib["fp16"]["onnxruntime"] = _ort_square("fp16", threads, seconds, n_max)
    lib["bf16"]["onnxruntime"] = time_ort(64, 64, 64, "bf16", threads, 0.0)
    lib["int8"]["onnxruntime"] = _ort_square("int8", threads, seconds, n_max, "s8")
    lib["int8"]["onnxruntime-u8"] = _ort_square("int8", threads, seconds, n_max, "u8")
    for d, r in _openvino_kernels(threads, seconds, n_max).items():
        lib[d]["openvino"] = r
    all_cores = threads >= (os.cpu_count() or 1)
    return {"threads": threads, "cpu": cpu_flags(), "libraries": lib, "peak": best_library_per_dtype(lib, all_cores),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_1m": os.getloadavg()[0]}
