"""The OpenVINO backend against ONNX Runtime on the tiny FAR, MAR and FAR-Causal bundles: fp32
latents, bf16 latents (on a CPU with bf16 units), the bf16 decision on other CPUs, threads,
verified bytes, and the one sentence of a missing library.

Bounds, measured on the tiny bundles (AMD Zen 4, OpenVINO 2026.4.1, ONNX Runtime 1.32.0), as
max |OpenVINO - ONNX Runtime| / max |ONNX Runtime| over the latents of a whole run: fp32 at
most 3.0e-7 (bound 1e-5), bf16 at most 1.8e-3 (bound 2e-2)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from far_runtime.cpu import (BF16_FLAGS, bf16_problem, check_precision, machine_precisions, parse_cpu_flags,
                              read_cpu_flags)
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline

FP32_BOUND = 1e-5
BF16_BOUND = 2e-2

# /proc/cpuinfo flag lines of the three CPUs these machines have had (ENVIRONMENT.md), cut down.
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma bmi2\n"
ZEN4 = "flags\t\t: fpu avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512vl\n"
SAPPHIRE = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ARM = "Features\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid asimdrdm dcpop\n"

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install far-runtime[openvino])")


def _ov_bf16_problem():
    import openvino
    from far_runtime.backends.openvino import cpu_capabilities
    return bf16_problem(read_cpu_flags(), cpu_capabilities(openvino.Core()))


@pytest.fixture(scope="module")
def all_bundles(bundles, tiny_files, tmp_path_factory):
    """The tiny FAR and MAR bundles (conftest) and a tiny FAR-Causal one."""
    from far_export.export.bundle import export_bundle
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint
    d = tmp_path_factory.mktemp("ov")
    ckpt = str(d / "causal.pth")
    write_random_causal_checkpoint(ckpt, tiny_causal_config(16, class_tokens=2), seed=4)
    export_bundle(ckpt, tiny_files["vae"], str(d / "causal"), head_steps=(1, 2), validate_batches=(1, 3))
    return {**bundles, "causal": str(d / "causal")}


# (bundle, batch, cfg, K, head, mode): every loop of the three variants, fused and step heads
GRID = [("far", 1, 1.0, 4, "fused", None), ("far", 3, 3.0, 8, "fused", None), ("far", 2, 3.0, 4, "step", None),
        ("mar", 1, 1.0, 4, "step", None), ("mar", 3, 3.0, 8, "step", None),
        ("causal", 1, 1.0, None, "fused", None), ("causal", 3, 3.0, None, "fused", "recompute"),
        ("causal", 2, 3.0, None, "step", None)]


def _run(pipe, bundle, B, cfg, K, head, mode):
    O = 8 if bundle == "mar" else 2
    return pipe.generate_tokens(list(range(B)), K=K, O=O, cfg=cfg, seed=B * 7 + 1, head=head, mode=mode)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.fixture(scope="module")
def pipes(all_bundles):
    """ONNX Runtime and OpenVINO fp32 pipelines per bundle (bf16 made where the CPU has it)."""
    return {name: {"ort": Pipeline.load(root), "ov": Pipeline.load(root, backend="openvino")}
            for name, root in all_bundles.items()}


@needs_openvino
@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(map(str, c)))
def test_fp32_latents_match_onnxruntime(pipes, case):
    ort, ov = pipes[case[0]]["ort"], pipes[case[0]]["ov"]
    a, b = _run(ort, *case), _run(ov, *case)
    assert a.shape == b.shape and np.isfinite(b).all()
    assert _rel(a, b) <= FP32_BOUND, _rel(a, b)


@needs_openvino
def test_compiled_models_compute_in_the_precision_asked(pipes):
    """OpenVINO's own default on a CPU with bf16 units is bf16: fp32 must be asked and held."""
    backend = pipes["far"]["ov"].backend
    assert backend.precision == "fp32" and backend.config()["INFERENCE_PRECISION_HINT"] == "f32"
    compiled = backend.compiled("backbone")
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert compiled.get_property("ENABLE_CPU_PINNING") is False       # shared machines: never pinned


@needs_openvino
@pytest.mark.parametrize("name", ["far", "mar", "causal"])
def test_bf16_latents_within_the_bf16_bound(pipes, all_bundles, name):
    why = _ov_bf16_problem()
    if why:
        pytest.skip(f"no bf16 on this CPU: {why}")
    bf16 = Pipeline.load(all_bundles[name], backend="openvino", precision="bf16")
    backbone = bf16.variant.required_graphs()[0]
    assert bf16.backend.compiled(backbone).get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    for case in (c for c in GRID if c[0] == name):
        a, b = _run(pipes[name]["ort"], *case), _run(bf16, *case)
        assert np.isfinite(b).all() and 0 < _rel(a, b) <= BF16_BOUND, (case, _rel(a, b))


@pytest.mark.parametrize("cpuinfo, ov_caps, ok", [
    (ZEN3, None, False), (ZEN3, ["FP32", "INT8"], False), (ZEN4, None, True), (ZEN4, ["BF16", "FP32"], True),
    (ZEN4, ["FP32", "INT8"], False),       # the flags show units but OpenVINO does not use them
    (SAPPHIRE, ["BF16", "FP32", "INT8"], True), (ARM, None, False), ("", None, False),
])
def test_bf16_decision_reads_the_flags(cpuinfo, ov_caps, ok):
    """Our decision from flag strings (not this machine's): bf16 only with avx512_bf16/amx_bf16."""
    flags = parse_cpu_flags(cpuinfo)
    why = bf16_problem(flags, ov_caps)
    assert (why is None) == ok, why
    if ok:
        assert check_precision("openvino", "bf16", flags, ov_caps) == "bf16"
    else:
        assert why.endswith(".") and "--precision fp32" in why
        with pytest.raises(FarError, match="run with --precision fp32"):
            check_precision("openvino", "bf16", flags, ov_caps)
    assert bf16_problem(None, None) is not None          # nothing known: refused too


def test_precision_choices_are_one_sentence():
    assert check_precision("onnxruntime", None) == check_precision("openvino", "fp32") == "fp32"
    for backend, precision, msg in (("onnxruntime", "bf16", "no bf16 kernels"),
                                    ("openvino", "int8", "property of the bundle"),
                                    ("onnxruntime", "fp16", "property of the bundle"),
                                    ("openvino", "f32", "must be fp32 or bf16")):
        with pytest.raises(FarError, match=msg) as e:
            check_precision(backend, precision, parse_cpu_flags(ZEN4), ["BF16"])
        assert str(e.value).endswith(".") and "\n" not in str(e.value)


def test_machine_precisions_name_units_and_backends():
    zen3 = machine_precisions(parse_cpu_flags(ZEN3), {"onnxruntime": True, "openvino": True})
    assert zen3["fp32"]["units"] == ["avx2"] and not zen3["bf16"]["native"] and zen3["bf16"]["backends"] == []
    assert not zen3["int8"]["native"] and zen3["int8"]["units"] == ["avx2"]
    amx = machine_precisions(parse_cpu_flags(SAPPHIRE), {"onnxruntime": True, "openvino": False})
    assert amx["bf16"]["units"] == list(BF16_FLAGS) and amx["bf16"]["backends"] == []   # OpenVINO missing
    assert amx["int8"]["units"] == ["amx_int8", "avx512_vnni"] and amx["int8"]["backends"] == ["onnxruntime"]


@needs_openvino
def test_bf16_is_refused_by_the_backend_on_a_cpu_without_bf16_units(bundles):
    with pytest.raises(FarError, match="no bf16 units"):
        from far_runtime.backends import OpenVinoBackend
        from far_runtime.bundle import load_bundle
        OpenVinoBackend(load_bundle(bundles["far"]), "bf16", cpu_flags=parse_cpu_flags(ZEN3))
    with pytest.raises(FarError, match="no bf16 kernels.*--backend openvino"):
        Pipeline.load(bundles["far"], precision="bf16")
    with pytest.raises(FarError, match="do not apply to the OpenVINO backend"):
        Pipeline.load(bundles["far"], providers=("CUDAExecutionProvider",), backend="openvino")
    with pytest.raises(FarError, match="--backend must be onnxruntime or openvino"):
        Pipeline.load(bundles["far"], backend="tensorflow")


@pytest.fixture(scope="module")
def int8_bundle(tiny_files, tmp_path_factory):
    """The tiny FAR as an int8 (Q/DQ) bundle, calibrated into a cache of its own."""
    from far_export.export.bundle import export_bundle
    d = tmp_path_factory.mktemp("int8")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAR_EXPORT_CACHE", str(d / "cache"))
    try:
        export_bundle(tiny_files["far"], tiny_files["vae"], str(d / "far"), head_steps=(2,),
                      validate_batches=(1,), precision="int8")
    finally:
        mp.undo()
    return str(d / "far")


@needs_openvino
def test_int8_bundles_run_their_qdq_graphs_in_int8(int8_bundle, bundles):
    """int8 is the bundle's: OpenVINO runs the Q/DQ matmuls as int8 FullyConnected layers, and
    its latents are as near the fp32 bundle's as ONNX Runtime's int8 run (measured: relative
    L2 2.0e-3 each, 9e-4 apart)."""
    fp32 = Pipeline.load(bundles["far"]).generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=1)
    ort = Pipeline.load(int8_bundle).generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=1)
    pipe = Pipeline.load(int8_bundle, backend="openvino")
    ov = pipe.generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=1)

    def rel_l2(a):
        return float(np.linalg.norm(a - fp32) / np.linalg.norm(fp32))
    assert 0 < rel_l2(ov) <= 2 * rel_l2(ort) + 1e-3, (rel_l2(ov), rel_l2(ort))
    layers = {(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
              for op in pipe.backend.compiled("backbone").get_runtime_model().get_ordered_ops()}
    assert ("FullyConnected", "i8") in layers, sorted(layers)


@needs_openvino
def test_threads_share_a_pipeline_and_equal_serial_runs(pipes):
    pipe = pipes["far"]["ov"]
    jobs = [([i % 10, (i + 3) % 10], 100 + i) for i in range(4)]
    expected = [pipe.generate_tokens(l, K=8, O=2, cfg=2.0, seed=s) for l, s in jobs]
    got, errors = [None] * len(jobs), []

    def work(i):
        try:
            for _ in range(2):
                got[i] = pipe.generate_tokens(jobs[i][0], K=8, O=2, cfg=2.0, seed=jobs[i][1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)
    assert len(pipe.backend._compiled) == 3        # backbone, fused O=2 head, no more: shared


@needs_openvino
def test_a_graph_replaced_after_load_is_refused_not_run(bundles, tmp_path):
    root = shutil.copytree(bundles["far"], str(tmp_path / "b"))
    pipe = Pipeline.load(root, backend="openvino")
    shutil.copy(os.path.join(root, "head_fused_o8.onnx"), os.path.join(root, "head_fused_o2.onnx"))
    with pytest.raises(FarError, match="sha256"):
        pipe.generate_tokens([1], K=2, O=2, cfg=2.0, seed=0)


@needs_openvino
def test_external_data_comes_from_the_verified_bytes(tiny_files, tmp_path):
    """A graph with external weights runs from the hashed bytes (equal to ONNX Runtime's run);
    weights changed on disk after the bundle was checked are refused."""
    from far_export.export.bundle import export_bundle
    from far_runtime.backends import OpenVinoBackend, OrtBackend
    from far_runtime.bundle import load_bundle
    from far_runtime.plan import make_call
    out = str(tmp_path / "ext")
    m = export_bundle(tiny_files["far"], None, out, components=["head"], head_steps=[2], external_data=True)
    data = [f for f in m["graphs"]["head_fused_o2"]["files"] if f.endswith(".data")]
    assert data
    rng = np.random.default_rng(0)
    feeds = {"noise": rng.standard_normal((3, 4), np.float32), "z": rng.standard_normal((6, 32), np.float32),
             "cfg": np.full(1, 2.0, np.float32)}
    call = make_call("head_fused_o2", rows=3, zrows=6)
    ov = OpenVinoBackend(load_bundle(out)).run(call, feeds)["tokens"]
    ort = OrtBackend(load_bundle(out)).session("head_fused_o2").run(None, feeds)[0]
    assert _rel(ort, ov) <= FP32_BOUND
    with open(os.path.join(out, data[0]), "r+b") as f:
        f.write(b"\x00\x01")
    with pytest.raises(FarError, match="sha256"):
        OpenVinoBackend(load_bundle(out, check_hashes=False)).compiled("head_fused_o2")


@needs_openvino
def test_cli_generate_and_info_take_the_backend(bundles, tmp_path):
    exe = [sys.executable, "-m", "far_runtime.cli"]
    out = str(tmp_path / "grid.png")
    r = subprocess.run(exe + ["generate", bundles["far"], "--backend", "openvino", "--precision", "fp32",
                              "--threads", "1", "--num", "2", "--K", "4", "--O", "2", "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for args, msg in ((["--precision", "bf16"], "no bf16 kernels"), (["--precision", "int8"], "property of the bundle"),
                      (["--backend", "openvino", "--precision", "fp64"], "must be fp32 or bf16")):
        r = subprocess.run(exe + ["generate", bundles["far"], "--out", str(tmp_path / "no.png"), *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "no.png")
    r = subprocess.run(exe + ["info", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    machine = json.loads(r.stdout)["machine"]
    assert machine["cpu_backends"]["openvino"]["available"]
    assert "openvino" in machine["precisions"]["fp32"]["backends"]
    assert machine["precisions"]["bf16"]["native"] == bool(set(BF16_FLAGS) & read_cpu_flags())
    r = subprocess.run(exe + ["info", bundles["far"]], capture_output=True, text=True)
    assert r.returncode == 0 and "backend     openvino: can run it" in r.stdout and "precision   bf16" in r.stdout


def test_a_missing_openvino_is_one_sentence(bundles, tmp_path):
    """Runs whether or not openvino is installed: the import is blocked in a subprocess."""
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from far_runtime.errors import FarError\n"
            "from far_runtime.pipeline import Pipeline\n"
            f"try:\n    Pipeline.load({bundles['far']!r}, backend='openvino')\n"
            "except FarError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == (
        "OpenVINO is not installed; install far-runtime[openvino] to use --backend openvino."), r.stderr
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from far_runtime.cli import main; main()\n")
    r = subprocess.run([sys.executable, "-c", code, "generate", bundles["far"], "--backend", "openvino",
                        "--out", str(tmp_path / "g.png")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: OpenVINO is not installed; install far-runtime[openvino] to use --backend openvino.")


@needs_openvino
def test_serve_passes_the_backend_and_precision_through(bundles):
    """A real server on OpenVINO answers as the OpenVINO pipeline does; a precision the backend
    cannot compute in is refused before Ray starts."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install far-runtime[serve])")
    from serve_helpers import Server
    r = subprocess.run([sys.executable, "-m", "far_runtime.cli", "serve", bundles["far"], "--precision", "bf16"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no bf16 kernels" in r.stderr and "Traceback" not in r.stderr
    server = Server(bundles["far"], "--backend", "openvino", "--precision", "fp32", "--threads", "1")
    try:
        info = server.client.info()
        assert info["backend"] == "openvino" and info["backend_precision"] == "fp32"
        served = server.client.generate(3, output="latents", seed=5, K=4, O=2, cfg=2.0)
        direct = Pipeline.load(bundles["far"], backend="openvino", threads=1).generate_tokens(
            [3], K=4, O=2, cfg=2.0, seed=5)[0]
        assert _rel(direct, served) <= FP32_BOUND
    finally:
        code, out, left = server.stop()
    assert code == 0 and not left, out
