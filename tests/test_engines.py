"""Engines without a GPU (profiles: test_engine_profiles.py): the engine manifest as cache key, the
load-time compatibility checks, the CUDA-graph cache policy, and the clear errors when
TensorRT or CUDA is absent. Parts that need a GPU (TensorRT, CUDA-graph capture) run only
where one is, and skip with the reason elsewhere."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from far_runtime.gpu.engine_build import build_options, engine_key, maybe_build_engines, reusable
from far_runtime.bundle import Bundle, load_bundle
from far_runtime.gpu.cuda_graphs import Binding, GraphCache
from far_runtime.errors import FarError
from far_runtime.gpu.engine_manifest import GraphSource, cache_key, check_engine, graph_source

from far_export.doctor import cuda_gpu, tensorrt_gpu

# "Installed" (a package is there) and "usable" (it imports and finds a GPU) differ: a machine
# with TensorRT but no GPU, or a wheel without its libraries, must skip the GPU tests, not fail.
TRT_INSTALLED = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_lean"))
TRT_OK, TRT_WHY = tensorrt_gpu()
CUDA_OK, CUDA_WHY = cuda_gpu()

NEEDS_TRT = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT with a usable GPU is needed: {TRT_WHY}")
NEEDS_CUDA = pytest.mark.skipif(not CUDA_OK, reason=f"a usable CUDA GPU is needed: {CUDA_WHY}")

# --- graph sources, cache key, reuse ---------------------------------------------------------

def test_graph_source_is_the_bundle_graph_of_that_precision(tmp_path):
    entry = {"file": "backbone.onnx", "files": {"backbone.onnx": "a" * 64}, "precision": "int8",
             "int8": {"calibration": {"cache_key": "c" * 64}}}
    int8 = Bundle(str(tmp_path), {"precision": "int8", "graphs": {"backbone": entry}})
    src = graph_source(int8, "backbone", "int8")
    assert src.path == str(tmp_path / "backbone.onnx") and src.calibration_sha256 == "c" * 64
    fp32 = Bundle(str(tmp_path), {"graphs": {"backbone": {"file": "backbone.onnx",
                                                          "files": {"backbone.onnx": "a" * 64}}}})
    assert graph_source(fp32, "backbone", "fp32").calibration_sha256 is None    # old bundles: fp32
    assert graph_source(fp32, "backbone", "fp32").sha256 == src.sha256
    with pytest.raises(FarError, match="holds fp32 graphs, not the FP16 graphs .*build --precision fp16"):
        graph_source(fp32, "backbone", "fp16")
    with pytest.raises(FarError, match="holds int8 graphs, not the FP16 graphs"):
        graph_source(int8, "backbone", "fp16")
    with pytest.raises(FarError, match="holds fp32 graphs, not the Q/DQ .INT8. graphs"):
        graph_source(fp32, "backbone", "int8")
    with pytest.raises(FarError, match="Precision must be one of"):
        graph_source(fp32, "backbone", "fp8")


FACTS = {"tensorrt": "10.8.0.43", "tensorrt_module": "tensorrt", "tensorrt_cuda": "12",
         "cuda_python": "12.9", "driver": "12.8", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
SOURCE = GraphSource("backbone", "fp16", "/b/backbone.fp16.onnx", "1" * 64, None)
PROFILES = [{"batch": [1, 2, 4], "n_known": [0, 8, 255], "n_pred": [1, 4, 16]}]


def _key(**change):
    src = GraphSource(**{**SOURCE.__dict__, **{k: v for k, v in change.items() if k in SOURCE.__dict__}})
    opts = build_options(**{k: v for k, v in change.items() if k in ("version_compatible", "hardware_compatibility")})
    facts = {**FACTS, **{k: v for k, v in change.items() if k in FACTS}}
    return engine_key(src, change.get("profiles", PROFILES), opts, facts, change.get("builder", "b" * 64))


def test_cache_key_changes_with_every_input():
    base = cache_key(_key())
    assert cache_key(_key()) == base                       # deterministic
    for change in ({"sha256": "2" * 64}, {"precision": "int8"}, {"calibration_sha256": "c" * 64},
                   {"profiles": [{**PROFILES[0], "batch": [1, 2, 8]}]}, {"tensorrt": "10.9.0.1"},
                   {"gpu": "NVIDIA A100-SXM4-80GB"}, {"compute_capability": "8.0"},
                   {"tensorrt_cuda": "13"}, {"version_compatible": True},
                   {"hardware_compatibility": "ampere+"}, {"builder": "c" * 64}):
        assert cache_key(_key(**change)) != base, change
    # cuda-python's own runtime version is recorded, never keyed: upgrading it rebuilds nothing
    assert cache_key(_key(cuda_python="13.0")) == base


def test_stale_engines_are_never_reused(tmp_path):
    data = b"serialized engine bytes"      # only hashed here; nothing deserialises them
    (tmp_path / "backbone-x.engine").write_bytes(data)
    import hashlib
    key = _key()
    entry = {"file": "backbone-x.engine", "sha256": hashlib.sha256(data).hexdigest(),
             "cache_key": cache_key(key), "key": json.loads(json.dumps(key))}   # as read from JSON
    assert reusable(entry, key, str(tmp_path))
    for change in ({"sha256": "2" * 64}, {"precision": "int8"},
                   {"profiles": [{**PROFILES[0], "n_pred": [1, 4, 32]}]}, {"tensorrt": "10.9.0.1"}):
        assert not reusable(entry, _key(**change), str(tmp_path)), change
    (tmp_path / "backbone-x.engine").write_bytes(data + b"!")          # file replaced
    assert not reusable(entry, key, str(tmp_path))
    os.unlink(tmp_path / "backbone-x.engine")
    assert not reusable(entry, key, str(tmp_path)) and not reusable(None, key, str(tmp_path))


# --- load-time checks -----------------------------------------------------------------------

REBUILD = "`far-runtime engines b --precision fp16`"


def _check(entry_change=None, facts_change=None, source=SOURCE):
    entry = {"key": _key(**(entry_change or {}))}
    check_engine("backbone", entry, {**FACTS, **(facts_change or {})}, source, REBUILD)


def test_compatible_engine_passes():
    _check()
    _check({"version_compatible": True}, {"tensorrt": "10.9.0.1"})
    _check({"version_compatible": True, "tensorrt": "10.8.0.43"}, {"tensorrt": "11.0.0.1"})
    _check({"hardware_compatibility": "ampere+"}, {"gpu": "NVIDIA A10", "compute_capability": "8.6"})
    _check({"hardware_compatibility": "same-cc"}, {"gpu": "NVIDIA H200"})


@pytest.mark.parametrize("entry_change,facts_change,source,match", [
    ({}, {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, SOURCE,
     "built for NVIDIA H100 80GB HBM3 .*compute capability 9.0.* but this GPU is NVIDIA A100"),
    ({}, {"gpu": "NVIDIA H200"}, SOURCE, "built for NVIDIA H100"),
    ({"hardware_compatibility": "same-cc"}, {"compute_capability": "8.9"}, SOURCE, "compute capability 8.9"),
    ({"hardware_compatibility": "ampere+"}, {"gpu": "Tesla T4", "compute_capability": "7.5"}, SOURCE,
     "Ampere and newer"),
    ({}, {"tensorrt": "10.9.0.34"}, SOURCE, "TensorRT 10.8.0.43 but this machine has TensorRT 10.9.0.34"),
    ({"version_compatible": True}, {"tensorrt": "10.7.0.1"}, SOURCE, "version-compatible"),
    ({"version_compatible": True}, {"tensorrt": "12.0.0"}, SOURCE, "version-compatible"),
    ({}, {}, GraphSource("backbone", "fp16", "/b/x", "9" * 64, None), "different graph"),
    ({}, {}, GraphSource("backbone", "int8", "/b/x", "1" * 64, None), "is fp16, not the requested int8"),
    ({}, {}, GraphSource("backbone", "fp16", "/b/x", "1" * 64, "c" * 64), "calibration"),
])
def test_incompatible_engine_says_rebuild(entry_change, facts_change, source, match):
    with pytest.raises(FarError, match=match) as e:
        _check(entry_change, facts_change, source)
    assert "rebuild with `far-runtime engines b --precision fp16`" in str(e.value)


# --- CUDA-graph cache policy -----------------------------------------------------------------

class RecordingCapturer:
    """Captures by keeping the body; replay calls it. Tests the cache's policy, not CUDA."""

    def __init__(self):
        self.captured, self.released = [], []

    def capture(self, body):
        cap = self

        class Graph:
            def replay(self):
                body()

            def release(self):
                cap.released.append(body)
        self.captured.append(body)
        return Graph()


def _bind(addr=1000, shape=(2, 4)):
    return [Binding("x", shape, "float32", addr), Binding("y", shape, "float32", addr + 64)]


def test_graph_cache_captures_once_per_shape_and_replays():
    cap, runs = RecordingCapturer(), []
    cache = GraphCache(cap, max_graphs=8, warmup=1)
    key_a, key_b = ("head_step", (("rows", 2),)), ("head_step", (("rows", 4),))
    seq = [cache.run(key_a, _bind(), lambda: runs.append("a")) for _ in range(4)]
    assert seq == ["eager", "captured", "replayed", "replayed"]
    assert cache.run(key_b, _bind(2000), lambda: runs.append("b")) == "eager"
    assert runs == ["a"] * 4 + ["b"]              # every call executed exactly once
    assert len(cap.captured) == 1 and cache.stats.as_dict() == {
        "eager": 2, "captures": 1, "replays": 2, "evictions": 0, "stale": 0, "failed": 0}


def test_graph_cache_recaptures_when_buffers_move():
    cap = RecordingCapturer()
    cache = GraphCache(cap, warmup=0)
    key = ("backbone", (("batch", 2),))
    assert cache.run(key, _bind(1000), lambda: None) == "captured"
    assert cache.run(key, _bind(1000), lambda: None) == "replayed"
    assert cache.run(key, _bind(5000), lambda: None) == "captured"        # address changed
    assert cache.run(key, _bind(5000, (3, 4)), lambda: None) == "captured"   # shape changed
    assert cache.stats.stale == 2 and len(cap.released) == 2 and len(cache) == 1


def test_graph_cache_is_a_bounded_lru():
    cap = RecordingCapturer()
    cache = GraphCache(cap, max_graphs=2, warmup=0)
    keys = [("g", ((("rows", i),))) for i in range(3)]
    cache.run(keys[0], _bind(), lambda: None)
    cache.run(keys[1], _bind(), lambda: None)
    cache.run(keys[0], _bind(), lambda: None)            # keys[0] is now most recent
    cache.run(keys[2], _bind(), lambda: None)            # evicts keys[1]
    assert keys[0] in cache and keys[2] in cache and keys[1] not in cache
    assert cache.stats.evictions == 1 and len(cap.released) == 1
    assert cache.run(keys[1], _bind(), lambda: None) == "captured"
    with pytest.raises(ValueError):
        GraphCache(cap, max_graphs=0)


# --- clear errors without TensorRT or CUDA ----------------------------------------------------

@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here")
def test_without_tensorrt_everything_says_so(bundles, tmp_path):
    from far_runtime.gpu.engine_build import build_engines
    from far_runtime.gpu.trt_backend import TrtBackend
    with pytest.raises(FarError, match="TensorRT is not installed"):
        build_engines(bundles["far"], "fp32", str(tmp_path / "e"), (1, 8), (1, 2))
    assert not (tmp_path / "e").exists()
    with pytest.raises(FarError, match="TensorRT is not installed"):
        TrtBackend(load_bundle(bundles["far"]), "fp32")
    msg = maybe_build_engines(bundles["far"], "fp32")
    assert "\n" not in msg and msg.startswith("engines: none built: TensorRT is not installed")
    r = subprocess.run([sys.executable, "-m", "far_export.cli", "engines", bundles["far"], "--precision",
                        "fp32", "--k", "1:8"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: TensorRT is not installed")


def test_engines_cli_profiles_only_and_option_errors(bundles):
    r = subprocess.run([sys.executable, "-m", "far_export.cli", "engines", bundles["far"],
                        "--k", "4:8", "--batch", "1:2", "--profiles-only"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    profiles = json.loads(r.stdout)
    assert set(profiles) == set(load_bundle(bundles["far"]).graphs)
    r = subprocess.run([sys.executable, "-m", "far_export.cli", "engines", bundles["far"], "--precision", "fp16"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "holds fp32 graphs, not the FP16" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(CUDA_OK, reason="a CUDA GPU is present")
def test_torch_cuda_backend_without_cuda_says_so(bundles):
    from far_export.torch_cuda_backend import TorchCudaBackend
    with pytest.raises(FarError, match="sees no CUDA GPU"):
        TorchCudaBackend(load_bundle(bundles["far"]))
    with pytest.raises(FarError, match="CUDA graphs need device='cuda'"):
        TorchCudaBackend(load_bundle(bundles["far"]), "fp32", device="cpu")


def test_doctor_reports_what_is_usable():
    from far_export.doctor import diagnose, format_report
    r = diagnose()
    assert "CPUExecutionProvider" in r["onnxruntime"]["usable"]
    assert r["tensorrt"]["installed"] == TRT_INSTALLED
    assert r["generate"].startswith("onnxruntime")
    text = format_report(r)
    assert "tensorrt" in text and "generate" in text
    out = subprocess.run([sys.executable, "-m", "far_export.cli", "doctor", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["onnxruntime"]["installed"]


# --- the torch backend's buffers and plan handling (CPU, no graphs) ---------------------------

@pytest.mark.parametrize("head", ["fused", "step"])
def test_torch_backend_matches_onnxruntime_on_cpu(bundles, head):
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_runtime.pipeline import Pipeline
    bundle = load_bundle(bundles["far"])
    ort = Pipeline.load(bundles["far"])
    pipe = Pipeline(bundle, TorchCudaBackend(bundle, "fp32", cuda_graphs=False, device="cpu"))
    a = ort.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=1, head=head)
    b = pipe.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=1, head=head)
    assert np.abs(a - b).max() <= 1e-4


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_torch_backend_half_precision_path_on_cpu(bundles, tiny_files, dtype):
    """Weights cast + autocast, as on the GPU (CPU autocast here): close to the FP32 reference."""
    from far_export.reference.pipeline import ReferencePipeline
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_export.verify import psnr
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    bundle = load_bundle(bundles["far"])
    pipe = Pipeline(bundle, TorchCudaBackend(bundle, dtype, cuda_graphs=False, device="cpu"))
    ref = ReferencePipeline.load(tiny_files["far"], tiny_files["vae"])
    r = draw_randomness(3, 2, 16, 4)
    a = ref.tokens([1, 2], num_iter=8, head_steps=8, cfg=3.0, randomness=r)
    b = pipe.generate_tokens([1, 2], K=8, O=8, cfg=3.0, randomness=r)
    assert 0 < np.abs(a.numpy() - b).max() <= 0.05 * np.abs(a.numpy()).max()   # really half precision
    assert psnr(ref.decode(a), pipe.decode(b)) >= 35


# --- GPU only ------------------------------------------------------------------------------

@NEEDS_CUDA
@pytest.mark.parametrize("bundle_kind,head", [("far", "fused"), ("far", "step"), ("mar", "auto")])
def test_cuda_graph_replay_equals_eager(bundles, bundle_kind, head):
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_runtime.pipeline import Pipeline
    bundle = load_bundle(bundles[bundle_kind])
    eager = Pipeline(bundle, TorchCudaBackend(bundle, "fp32", cuda_graphs=False))
    backend = TorchCudaBackend(bundle, "fp32", cuda_graphs=True)
    graphed = Pipeline(bundle, backend)
    kw = dict(K=8, O=2, cfg=3.0, seed=4, head=head)
    a = eager.generate_tokens([1, 2], **kw)
    for _ in range(3):                               # eager warm-up, capture, replay
        b = graphed.generate_tokens([1, 2], **kw)
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    plan = graphed.plan(2, 8, 2, 3.0, head, decode=False)
    assert backend.graphs.stats.captures == len(plan.distinct())
    assert backend.graphs.stats.replays > 0 and backend.graphs.stats.stale == 0


@NEEDS_CUDA
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_parity(bundles, tiny_files, dtype):
    import torch
    from far_export.reference.pipeline import ReferencePipeline
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_export.verify import psnr
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no BF16")
    bundle = load_bundle(bundles["far"])
    pipe = Pipeline(bundle, TorchCudaBackend(bundle, dtype))
    ref = ReferencePipeline.load(tiny_files["far"], tiny_files["vae"])
    r = draw_randomness(3, 2, 16, 4)
    a = ref.tokens([1, 2], num_iter=8, head_steps=8, cfg=3.0, randomness=r)
    b = pipe.generate_tokens([1, 2], K=8, O=8, cfg=3.0, randomness=r)
    assert psnr(ref.decode(a), pipe.decode(b)) >= 35


@NEEDS_TRT
def test_tensorrt_engines_build_reuse_and_run(bundles, tmp_path):
    from far_runtime.gpu.engine_build import build_engines
    from far_runtime.pipeline import Pipeline
    from far_runtime.gpu.trt_backend import TrtBackend
    out = str(tmp_path / "engines")
    m = build_engines(bundles["far"], "fp32", out, (1, 8), (1, 2))
    assert m["built"] == len(m["engines"]) and m["reused"] == 0
    again = build_engines(bundles["far"], "fp32", out, (1, 8), (1, 2))
    assert again["built"] == 0 and again["reused"] == len(m["engines"])
    wider = build_engines(bundles["far"], "fp32", out, (1, 16), (1, 2))
    assert wider["built"] > 0                        # changed shapes: never the stale engine
    bundle = load_bundle(bundles["far"])
    ort = Pipeline.load(bundles["far"])
    a = ort.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=2)
    results = []
    for graphs in (False, True):
        pipe = Pipeline(bundle, TrtBackend(bundle, "fp32", out, cuda_graphs=graphs))
        for _ in range(3):                  # eager, capture, replay
            results.append(pipe.generate_tokens([1, 2], K=8, O=2, cfg=3.0, seed=2))
    for b in results:                       # TensorRT's default TF32 matmuls: not bit-exact fp32
        assert np.abs(a - b).max() <= 1e-2 * max(1.0, np.abs(a).max())
    for b in results[1:]:                   # graph replay == eager enqueue
        assert np.abs(results[0] - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    with pytest.raises(FarError, match="no optimisation profile"):
        Pipeline(bundle, TrtBackend(bundle, "fp32", out)).generate_tokens([1, 2], K=32, O=2, cfg=3.0)
    manifest_path = os.path.join(out, "engines.json")
    manifest = json.load(open(manifest_path))
    for e in manifest["engines"].values():
        e["key"]["gpu"] = "Some Other GPU"
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(FarError, match="rebuild with"):
        TrtBackend(bundle, "fp32", out)
