"""``far-export doctor``: what this machine can really run, checked rather than assumed.

ONNX Runtime lists providers it was built with, not ones that work: onnxruntime-gpu on a
machine without CUDA lists CUDAExecutionProvider and then runs on the CPU. So every
provider is tried with a tiny session, and counted usable only when the session really
uses it (``get_providers()``) and runs. TensorRT and CUDA are imported, not looked up.

The CPU's precisions (``far_runtime.info.machine_info``): fp32 always, bf16 where the flags
show bf16 units (and OpenVINO lists BF16), int8 with VNNI or AMX, and which installed
backend computes in each. ``--measure`` confirms them by timing: a short matmul per
precision and library (``bench/peaks.py``), each against fp32.
"""
from __future__ import annotations

import json
import logging

import click
import numpy as np

log = logging.getLogger(__name__)


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def check_onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False, "usable": [], "listed": []}
    listed = ort.get_available_providers()
    usable, failed = [], {}
    model = _tiny_model()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for p in listed:
        try:
            sess = ort.InferenceSession(model, opts, providers=[p])
            active = sess.get_providers()
            y = sess.run(None, {"x": np.array([1.0, 2.0], np.float32)})[0]
            if active and active[0] == p and np.allclose(y, [2.0, 4.0]):
                usable.append(p)
            else:
                failed[p] = f"session fell back to {', '.join(active)}"
        except Exception as e:                     # any failure means: not usable here
            failed[p] = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return {"installed": True, "version": ort.__version__, "listed": listed, "usable": usable,
            "not_usable": failed}


def check_torch() -> dict:
    try:
        import torch
    except ImportError:
        return {"installed": False}
    out = {"installed": True, "version": torch.__version__, "built_with_cuda": torch.version.cuda,
           "cuda_available": bool(torch.cuda.is_available())}
    if out["cuda_available"]:
        out["gpus"] = [{"name": torch.cuda.get_device_name(i),
                        "compute_capability": "%d.%d" % torch.cuda.get_device_capability(i)}
                       for i in range(torch.cuda.device_count())]
        out["bf16"] = bool(torch.cuda.is_bf16_supported())
    return out


def check_tensorrt() -> dict:
    """TensorRT really imported (full or lean runtime; a pip wheel or a system TensorRT such as
    JetPack's) and a GPU it can use, with the facts engines are keyed on (TensorRT's own CUDA
    major, not cuda-python's)."""
    from far_runtime.errors import FarError
    from far_runtime.gpu.cuda_runtime import device_facts, import_cudart, import_tensorrt, tensorrt_origin
    try:
        trt = import_tensorrt()
    except FarError as e:
        return {"installed": False, "reason": str(e)}
    origin = tensorrt_origin(trt)
    out = {"installed": True, "version": trt.__version__, "module": trt.__name__,
           "builder": hasattr(trt, "Builder"), "source": origin["source"], "cuda": origin["cuda"]}
    try:
        out["device"] = device_facts(trt, import_cudart())
    except FarError as e:
        out["device_error"] = str(e)
    return out


def cuda_gpu() -> tuple[bool, str]:
    """(usable, why not): torch sees a CUDA GPU and a kernel really runs on it."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU"
    try:
        x = torch.ones(4, device="cuda")
        if float((x + x).sum().item()) != 8.0:
            return False, "a CUDA kernel gave a wrong result"
    except Exception as e:                      # a driver/runtime problem is "not usable"
        return False, f"CUDA is listed but does not run ({type(e).__name__}: {e})"
    return True, ""


def tensorrt_gpu() -> tuple[bool, str]:
    """(usable, why not): TensorRT imports and cuda-python finds a GPU (what the engine
    tests need; a machine with TensorRT but no GPU skips them instead of failing)."""
    trt = check_tensorrt()
    if not trt["installed"]:
        return False, trt["reason"]
    if "device" not in trt:
        return False, trt["device_error"]
    return True, ""


def cpu_precisions(measure_seconds: float | None = None) -> dict:
    """This CPU's precisions and the backends that use them; with ``measure_seconds``, each
    precision's matmul rate per library (GFLOP/s, int8 GOP/s; 2 threads at most)."""
    from far_runtime.backends.base import usable_cores
    from far_runtime.info import machine_info
    out = machine_info()
    if measure_seconds:
        from .bench.peaks import measure_peaks
        pk = measure_peaks(min(2, usable_cores()), measure_seconds, n_max=1024)
        out["measured"] = {"threads": pk["threads"], "gflops": {
            d: {lib: r.get("gflops") for lib, r in libs.items()} for d, libs in pk["libraries"].items()}}
    return out


def _cpu_lines(cpu: dict) -> list[str]:
    from far_runtime.cpu import describe_cpu, describe_precision
    lines = [f"cpu          {describe_cpu(cpu)}"]
    measured = (cpu.get("measured") or {}).get("gflops", {})
    fp32 = max((v for v in measured.get("fp32", {}).values() if v), default=None)
    for name, p in cpu["precisions"].items():
        lines.append(f"precision    {describe_precision(name, p)}")
        rates = {lib: g for lib, g in measured.get(name, {}).items() if g}
        if rates:
            lines.append(f"             matmul, {cpu['measured']['threads']} threads: " + ", ".join(
                f"{lib} {g:.3g}" + (f" ({g / fp32:.1f}x fp32)" if fp32 and name != "fp32" else "")
                for lib, g in rates.items()) + (" GOP/s" if name == "int8" else " GFLOP/s"))
    for name, b in cpu["cpu_backends"].items():
        lines.append(f"cpu backend  {name}: " + (f"{b.get('version', '')} installed".lstrip() if b["available"]
                                                  else f"not usable ({b['reason']})"))
    return lines


def diagnose(measure_seconds: float | None = None) -> dict:
    from far_runtime.backends import GPU_PROVIDERS
    ort, torch_, trt = check_onnxruntime(), check_torch(), check_tensorrt()
    gpu_ort = [p for p in ort.get("usable", []) if p in GPU_PROVIDERS]
    report = {"onnxruntime": ort, "torch": torch_, "tensorrt": trt, "cpu": cpu_precisions(measure_seconds)}
    if ort.get("installed"):
        report["cpu"]["cpu_backends"]["onnxruntime"].setdefault("version", ort["version"])
    engines_ok = trt.get("installed") and "device" in trt
    why = (" (TensorRT is not installed)" if not trt.get("installed") else " (no usable GPU)"
           if "device" not in trt else " (the lean runtime has no builder)")
    report["build"] = ("export + ONNX Runtime validation, then TensorRT engines"
                       if engines_ok and trt.get("builder") else
                       "export + ONNX Runtime validation; no TensorRT engines" + why)
    report["generate"] = ("onnxruntime with CPUExecutionProvider" if ort.get("installed")
                          else "nothing: onnxruntime is not installed (pip install far-export[cpu])")
    cpu_backends = [b for b, v in report["cpu"]["cpu_backends"].items() if v["available"]]
    report["precision_choice"] = (
        "far-export build --precision auto --backend " + ("openvino" if "openvino" in cpu_backends else "onnxruntime")
        + " measures fp32" + (", bf16" if report["cpu"]["precisions"]["bf16"]["backends"] else "")
        + " and int8 per graph here and keeps the fastest that passes its accuracy gate")
    other = []
    if engines_ok:
        other.append("tensorrt (far_runtime.gpu.trt_backend.TrtBackend, after far-runtime engines)"
                     if trt.get("builder") else
                     "tensorrt lean runtime (far_runtime.gpu.trt_backend.TrtBackend, --version-compatible engines only)")
    if torch_.get("cuda_available"):
        other.append("torch-cuda with CUDA graphs (far_export.torch_cuda_backend.TorchCudaBackend)")
    other += [f"onnxruntime with {p}" for p in gpu_ort]
    report["gpu_backends_usable"] = other
    return report


def format_report(r: dict) -> str:
    lines = []
    t = r["torch"]
    if t["installed"]:
        cuda = (f"CUDA {t['built_with_cuda']}, " if t["built_with_cuda"] else "CPU build, ")
        cuda += "GPU available" if t["cuda_available"] else "no GPU available"
        lines.append(f"torch        {t['version']} ({cuda})")
        for g in t.get("gpus", []):
            lines.append(f"gpu          {g['name']}, compute capability {g['compute_capability']}")
    else:
        lines.append("torch        not installed")
    o = r["onnxruntime"]
    if o["installed"]:
        lines.append(f"onnxruntime  {o['version']}: usable {', '.join(o['usable']) or 'none'}")
        for p, why in o["not_usable"].items():
            lines.append(f"             {p} listed but not usable: {why}")
    else:
        lines.append("onnxruntime  not installed")
    trt = r["tensorrt"]
    if trt["installed"]:
        flavour = "" if trt.get("builder") else " (lean runtime: runs --version-compatible engines, builds none)"
        lines.append(f"tensorrt     {trt['version']}{flavour}, from {trt['source']}, for CUDA {trt['cuda']}")
        d = trt.get("device")
        if d:
            lines.append(f"             driver {d['driver']} (cuda-python runtime {d['cuda_python']}), "
                         f"{d['gpu']} (compute capability {d['compute_capability']})")
        else:
            lines.append(f"             {trt.get('device_error')}")
    else:
        lines.append(f"tensorrt     not usable: {trt['reason']}")
    lines.extend(_cpu_lines(r["cpu"]))
    lines.append(f"build        {r['build']}")
    lines.append(f"precisions   {r['precision_choice']}")
    lines.append(f"generate     {r['generate']}")
    lines.append("gpu backends " + ("; ".join(r["gpu_backends_usable"]) or "none usable here"))
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--measure", is_flag=True, help="Also time a short matmul per CPU precision and library (~20 s).")
def doctor(as_json, measure):
    """Report torch/CUDA, usable ONNX Runtime providers, TensorRT, the GPU, the CPU's precisions
    and which backends compute in them, and the backends used."""
    r = diagnose(0.3 if measure else None)
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))
