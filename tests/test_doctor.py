"""``far-export doctor``: the CPU's precisions (from its flags) and which installed backends
compute in them, and ``--measure``'s matmul rates; the answers follow this machine's flags."""
import importlib.util
import json
import subprocess
import sys

from far_export.doctor import diagnose, format_report
from far_runtime.cpu import BF16_FLAGS, INT8_FLAGS, read_cpu_flags

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_doctor_reports_the_cpu_precisions_and_their_backends():
    r = diagnose()
    flags = read_cpu_flags() or frozenset()
    p = r["cpu"]["precisions"]
    assert p["fp32"]["native"] and "onnxruntime" in p["fp32"]["backends"]
    bf16 = any(f in flags for f in BF16_FLAGS)
    assert p["bf16"]["native"] == bf16
    assert p["bf16"]["backends"] == (["openvino"] if bf16 and HAS_OPENVINO else [])   # never ONNX Runtime
    assert p["int8"]["native"] == any(f in flags for f in INT8_FLAGS)
    assert r["cpu"]["cpu_backends"]["openvino"]["available"] == HAS_OPENVINO
    assert r["cpu"]["cpu_backends"]["onnxruntime"]["version"] == r["onnxruntime"]["version"]
    text = format_report(r)
    for name in ("fp32", "bf16", "int8"):
        assert f"precision    {name}: " in text
    assert "cpu backend  openvino: " in text and "--precision auto" in text
    assert ("bf16" in r["precision_choice"]) == bool(p["bf16"]["backends"])


def test_doctor_measure_times_each_precision():
    r = diagnose(measure_seconds=0.01)
    rates = r["cpu"]["measured"]["gflops"]
    assert rates["fp32"]["onnxruntime"] > 0 and rates["int8"]["onnxruntime"] > 0
    assert (rates["bf16"].get("openvino") is not None) == bool(r["cpu"]["precisions"]["bf16"]["backends"])
    assert "matmul, " in format_report(r)


def test_doctor_json_has_the_cpu():
    out = subprocess.run([sys.executable, "-m", "far_export.cli", "doctor", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cpu = json.loads(out.stdout)["cpu"]
    assert set(cpu["precisions"]) == {"fp32", "bf16", "int8"} and cpu["usable_cores"] >= 1
