"""The TensorRT / CUDA-graph path's logic without a GPU, each defect of issue 15 by its test.

No fake tensorrt and no mocked engine: the device-free policy lives in far_runtime's own
classes (``device_slots.SlotBackend``, ``cuda_graphs.GraphCache``, ``cuda_runtime``'s
import and capture helpers, the engine manifest and command functions), and is tested
through them; ``HostSlots`` below is a numpy implementation of SlotBackend's four hooks,
and the PyTorch backend runs the same SlotBackend for real on the CPU.
"""
import ast
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from far_runtime.gpu.engine_build import merge_entries, unreferenced_files
from far_runtime.gpu.engine_builder import builder_code_sha256, network_flags
from far_runtime.bundle import Bundle, load_bundle
from far_runtime.gpu.cuda_graphs import Binding, GraphCache
from far_runtime.gpu.cuda_runtime import capture_graph, cuda_major_of, import_optional, import_tensorrt, tensorrt_cuda
from far_runtime.gpu.device_slots import SlotBackend, SlotCache, ThreadResults, default_capacity, plan_capacity
from far_runtime.gpu.engine_manifest import check_engine
from far_runtime.errors import FarError
from far_runtime.plan import make_call
from far_runtime.variants.masked import make_plan

ROOT = Path(__file__).resolve().parents[1]
MODEL_256 = {"seq_len": 256, "token_dim": 16, "cond_dim": 768, "num_classes": 1000,
             "head_kind": "shortcut", "diffusion_steps": 0, "image_size": 256,
             "image_channels": 3, "vae_scale": 0.2325}


class Recorder:
    """A Capturer of our own interface: 'capturing' keeps the body, replay runs it."""

    def __init__(self, fail=False):
        self.fail, self.captured, self.released = fail, 0, 0

    def capture(self, body):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured += 1
        rec = self

        class Graph:
            def replay(self):
                body()

            def release(self):
                rec.released += 1
        return Graph()


class HostSlots(SlotBackend):
    """SlotBackend's hooks in numpy: y = 2 x. The 'device' is per thread, as CUDA's is."""

    name = "host"

    def __init__(self, capacity=None, default=4, graphs=None):
        self.tls = threading.local()
        self.wrong_device, self.freed, self.closed_device = [], [], False
        super().__init__(capacity, default, graphs)

    def _select_device(self):
        self.tls.device = 1

    def _check_device(self, what):
        if getattr(self.tls, "device", 0) != 1:        # a new thread starts on device 0
            self.wrong_device.append(what)

    def _make_slot(self, call):
        self._check_device("make")
        n = sum(v for _, v in call.dims)
        return {"x": np.zeros(n, np.float32), "y": np.zeros(n, np.float32), "addr": id(call)}

    def _release_slot(self, key, slot):
        self.freed.append(key)

    def _execute(self, call, slot, feeds):
        self._check_device("execute")
        slot["x"][:] = feeds["x"]

        def body():
            np.multiply(slot["x"], 2, out=slot["y"])
        if self.graphs is None:
            body()
        else:
            self.graphs.run(call.key, (Binding("x", slot["x"].shape, "float32", slot["addr"]),), body)
        return {"y": slot["y"]}

    def _close_device(self):
        self.closed_device = True


def _feeds(call, value):
    return {"x": np.full(sum(v for _, v in call.dims), value, np.float32)}


# --- defect 2: results mixed across threads -------------------------------------------------

def test_results_belong_to_the_calling_thread():
    backend = HostSlots()
    call = make_call("head_step", rows=3)
    mine = backend.run(call, _feeds(call, 1.0))
    other = {}
    t = threading.Thread(target=lambda: other.update(backend.run(call, _feeds(call, 5.0))))
    t.start()
    t.join()
    assert np.all(mine["y"] == 2.0) and np.all(other["y"] == 10.0)     # not overwritten by the other thread
    again = backend.run(call, _feeds(call, 3.0))
    assert again["y"] is mine["y"] and np.all(mine["y"] == 6.0)         # same thread, same shape: reused


def test_thread_results_are_bounded_per_thread():
    res = ThreadResults(capacity=2)
    for i in range(5):
        res.copy_out(("g", i), {"y": np.full(2, i, np.float32)})
    assert len(res._store()) == 2
    out = res.copy_out(("g", 9), {"y": np.arange(2)}, {"y": np.float32})
    assert out["y"].dtype == np.float32


def test_torch_backend_shared_by_threads_on_cpu(bundles):
    """The real PyTorch backend (SlotBackend on the CPU): one backend, several threads with
    different seeds at once, each result equal to the single-threaded one."""
    from far_export.torch_cuda_backend import TorchCudaBackend
    from far_runtime.pipeline import Pipeline
    bundle = load_bundle(bundles["far"])
    pipe = Pipeline(bundle, TorchCudaBackend(bundle, "fp32", cuda_graphs=False, device="cpu"))
    kw = dict(K=4, O=2, cfg=3.0)
    expected = {s: pipe.generate_tokens([1, 2], seed=s, **kw) for s in range(4)}
    got, errors = {}, []

    def work(seed):
        try:
            for _ in range(2):
                got[seed] = pipe.generate_tokens([1, 2], seed=seed, **kw)
        except Exception as e:              # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in range(4):
        assert np.array_equal(got[s], expected[s]), s


def test_torch_backend_result_survives_another_threads_call(bundles):
    from far_export.torch_cuda_backend import TorchCudaBackend
    bundle = load_bundle(bundles["far"])
    backend = TorchCudaBackend(bundle, "fp32", cuda_graphs=False, device="cpu")
    call = make_call("head_step", rows=4)
    spec = bundle.specs()["head_step"]
    rng = np.random.default_rng(0)

    def feeds():
        return {t.name: rng.uniform(0.1, 0.9, t.shape(dict(call.dims))).astype(t.dtype) for t in spec.inputs}
    mine = backend.run(call, feeds())
    kept = {n: a.copy() for n, a in mine.items()}
    other = {}
    t = threading.Thread(target=lambda: other.update(backend.run(call, feeds())))
    t.start()
    t.join()
    for n in kept:
        assert np.array_equal(mine[n], kept[n]) and not np.array_equal(other[n], kept[n])


# --- defect 3: the device of every call --------------------------------------------------------

def test_every_prepare_and_run_selects_the_device_on_its_thread():
    backend = HostSlots()
    plan = make_plan(MODEL_256, 1, 8, 2, True, "fused", True, 8)

    def other_thread():
        backend.prepare(plan)
        for call in plan.calls():
            backend.run(call, _feeds(call, 1.0))
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert backend.slots.made == plan_capacity(plan) and not backend.wrong_device


# --- defect 6 and "bounded": slots and graphs sized from the plan ------------------------------

def test_k256_plan_fits_without_recapture():
    plan = make_plan(MODEL_256, 1, 256, 8, True, "fused", True, 8)
    n = plan_capacity(plan)
    assert n >= 257 and default_capacity(MODEL_256, 8) >= n          # 256 backbone shapes + head + decode
    cache = GraphCache(Recorder(), max_graphs=256)                    # the old literal
    backend = HostSlots(capacity=None, default=default_capacity(MODEL_256, 8), graphs=cache)
    for _ in range(3):                                                # eager, capture, replay
        backend.prepare(plan)
        for call in plan.calls():
            backend.run(call, _feeds(call, 1.0))
    assert cache.stats.evictions == 0 and cache.stats.captures == n and backend.slots.released == 0
    small = HostSlots(capacity=4, graphs=GraphCache(Recorder(), 4))   # an explicit small bound grows to the plan
    small.prepare(plan)
    assert small.slots.capacity >= n and small.graphs.max_graphs >= n


def test_slots_are_a_bounded_lru_and_release_their_graphs():
    cache = GraphCache(Recorder(), 1, warmup=0)
    backend = HostSlots(capacity=3, graphs=cache)
    calls = [make_call("head_step", rows=r) for r in range(1, 40)]
    for c in calls:                              # thousands of shapes in a server: bounded
        backend.run(c, _feeds(c, 1.0))
    assert len(backend.slots) == 3 and len(cache) <= 3
    assert backend.slots.released == len(calls) - 3
    assert cache.stats.captures == len(calls) and all(k not in cache for k in backend.freed)
    lru = SlotCache(lambda c: c, lambda k, s: None, capacity=2)
    a, b, c = (make_call("g", rows=i) for i in range(3))
    lru.get(a), lru.get(b), lru.get(a), lru.get(c)
    assert a.key in lru and c.key in lru and b.key not in lru


def test_a_remade_slot_warms_up_before_it_is_captured_again():
    cache = GraphCache(Recorder(), 1, warmup=1)
    backend = HostSlots(capacity=1, graphs=cache)
    a, b = make_call("head_step", rows=1), make_call("head_step", rows=2)
    backend.run(a, _feeds(a, 1.0))                   # eager
    backend.run(a, _feeds(a, 1.0))                   # captured
    assert cache.stats.captures == 1
    backend.run(b, _feeds(b, 1.0))                   # evicts a's slot and graph
    backend.run(a, _feeds(a, 1.0))                   # a new slot: eager first, not captured at once
    assert cache.stats.captures == 1 and cache.stats.eager == 3


def test_close_frees_everything_and_refuses_later_calls():
    cache = GraphCache(Recorder(), 8, warmup=0)
    backend = HostSlots(graphs=cache)
    call = make_call("head_step", rows=2)
    backend.run(call, _feeds(call, 1.0))
    backend.close()
    assert backend.freed == [call.key] and len(cache) == 0 and backend.closed_device
    with pytest.raises(FarError, match="was closed"):
        backend.run(call, _feeds(call, 1.0))
    backend.close()                              # twice is harmless


# --- a failed capture: original error, nothing leaked, eager fallback ------------------------------

def test_failed_capture_runs_eagerly_and_says_why(caplog):
    cache = GraphCache(Recorder(fail=True), 8, warmup=0)
    runs = []
    key = ("backbone", (("batch", 1),))
    assert cache.run(key, (), lambda: runs.append(1)) == "eager"
    assert cache.run(key, (), lambda: runs.append(1)) == "eager"        # not retried every call
    assert runs == [1, 1] and cache.stats.failed == 1 and len(cache) == 0
    assert "operation not permitted when stream is capturing" in caplog.text


def test_capture_graph_ends_capture_and_frees_on_every_failure():
    log = []

    def end():
        log.append("end")
        return "graph"

    def destroy(g):
        log.append(f"destroy {g}")
        raise RuntimeError("destroy failed too")     # a failing clean-up never hides the cause

    def body():
        raise ValueError("the real cause")
    with pytest.raises(ValueError, match="the real cause"):
        capture_graph(body, end, lambda g: "instance", destroy)
    assert log == ["end", "destroy graph"]
    log.clear()

    def bad_instantiate(g):
        raise FarError("cudaGraphInstantiate failed")
    with pytest.raises(FarError, match="Instantiate"):
        capture_graph(lambda: None, end, bad_instantiate, destroy)
    assert log == ["end", "destroy graph"]
    assert capture_graph(lambda: None, lambda: "g", lambda g: "i", destroy) == ("g", "i")


# --- defect 4: --graphs keeps the other engines ------------------------------------------------

def test_subset_build_keeps_other_engines():
    bundle = Bundle("/b", {"graphs": {g: {"file": f"{g}.onnx", "files": {}} for g in ("backbone", "head_step", "vae_decoder")}})
    old = {"backbone": {"file": "backbone-1.engine"}, "head_step": {"file": "head_step-1.engine"},
           "vae_decoder": {"file": "vae_decoder-1.engine"}, "gone": {"file": "gone-1.engine"}}
    built = {"backbone": {"file": "backbone-2.engine"}}
    merged = merge_entries(old, built, subset=True, bundle=bundle)
    assert merged == {"backbone": built["backbone"], "head_step": old["head_step"], "vae_decoder": old["vae_decoder"]}
    assert unreferenced_files(old, merged) == ["backbone-1.engine", "gone-1.engine"]
    full = merge_entries(old, built, subset=False, bundle=bundle)
    assert full == built and "head_step-1.engine" in unreferenced_files(old, full)


# --- defect 7: TensorRT's own CUDA major, lean runtime ----------------------------------------

def test_cuda_major_comes_from_tensorrt_distributions():
    assert cuda_major_of(["tensorrt_cu12", "tensorrt_cu12_bindings", "tensorrt_cu12_libs"]) == "12"
    assert cuda_major_of(["tensorrt-cu13"]) == "13"
    assert cuda_major_of(["tensorrt_lean_cu12_bindings"]) == "12"
    assert cuda_major_of(["tensorrt"]) is None and cuda_major_of(["tensorrt_cu12", "tensorrt_cu13_libs"]) is None
    assert cuda_major_of(["cuda-python"]) is None                    # cuda-python says nothing about TensorRT
    assert tensorrt_cuda(np) == "unknown"                            # a module from a dist without a CUDA suffix


FACTS = {"tensorrt": "10.8.0.43", "tensorrt_module": "tensorrt", "tensorrt_cuda": "12",
         "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _entry(**over):
    key = {"precision": "fp16", "graph_sha256": "1" * 64, "calibration_sha256": None,
           "tensorrt": "10.8.0.43", "tensorrt_cuda": "12", "gpu": FACTS["gpu"], "compute_capability": "9.0",
           "options": {"version_compatible": False, "hardware_compatibility": "none"}}
    key.update({k: v for k, v in over.items() if k != "options"})
    key["options"].update(over.get("options", {}))
    return {"key": key}


def test_engine_checks_tensorrt_cuda_major_and_lean_runtime():
    from far_runtime.gpu.engine_manifest import GraphSource
    src = GraphSource("backbone", "fp16", "/b/x", "1" * 64, None)
    check_engine("backbone", _entry(), FACTS, src, "`R`")
    with pytest.raises(FarError, match="TensorRT for CUDA 12, but this machine's TensorRT is for CUDA 13"):
        check_engine("backbone", _entry(), {**FACTS, "tensorrt_cuda": "13"}, src, "`R`")
    check_engine("backbone", _entry(), {**FACTS, "tensorrt_cuda": "unknown"}, src, "`R`")
    lean = {**FACTS, "tensorrt_module": "tensorrt_lean", "tensorrt": "10.9.0.34"}
    with pytest.raises(FarError, match="not built --version-compatible.*lean"):
        check_engine("backbone", _entry(), lean, src, "`R`")
    check_engine("backbone", _entry(options={"version_compatible": True}), lean, src, "`R`")


# --- defect 8: installed but not loadable is not "not installed" --------------------------------

def test_import_tells_missing_from_unloadable(tmp_path, monkeypatch):
    pkg = tmp_path / "far_native_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ImportError('libnvinfer.so.11: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FarError, match=r"installed but .*\(libnvinfer.so.11: cannot open"):
        import_optional("far_native_probe", "missing", "installed but its libraries do not load ({error})")
    with pytest.raises(FarError, match="^missing$"):
        import_optional("far_no_such_module_here", "missing", "broken {error}")
    sys.modules.pop("far_native_probe", None)


@pytest.mark.skipif(any(__import__("importlib.util").util.find_spec(m) for m in ("tensorrt", "tensorrt_lean")),
                    reason="TensorRT is installed here")
def test_builder_needs_the_full_tensorrt():
    with pytest.raises(FarError, match=r"lean runtime \(far-runtime\[tensorrt-lean\]\) only runs engines"):
        import_tensorrt(builder=True)


# --- defect 1 and the "likely" list: TensorRT API use that both 10.x and 11.x accept ---------------
# Names removed in TensorRT 11 (NVIDIA's 10.x -> 11.x Python migration table) or in 10; checked
# against the strings of tensorrt.so in tensorrt-cu12-bindings 10.8.0.43 and 11.4.0.106.
REMOVED = {"device_memory_size", "device_memory_size_for_profile", "device_memory", "execute_async_v2",
           "execute_v2", "set_binding_shape", "get_binding_shape", "num_bindings", "binding_is_input",
           "get_binding_index", "max_workspace_size", "build_engine", "max_batch_size", "int8_calibrator",
           "platform_has_fast_fp16", "create_execution_context_without_device_memory", "EXPLICIT_BATCH",
           "OBEY_PRECISION_CONSTRAINTS", "FP16", "INT8"}
CHECKED = {"set_optimization_profile_async", "set_input_shape", "set_tensor_address", "execute_async_v3",
           "add_optimization_profile", "parse_from_file", "set_timing_cache", "infer_shapes"}
TRT_FILES = ["runtime/far_runtime/gpu/trt_backend.py", "runtime/far_runtime/gpu/engine_builder.py"]


@pytest.mark.parametrize("path", TRT_FILES)
def test_tensorrt_code_uses_no_removed_api_and_checks_every_status(path):
    tree = ast.parse((ROOT / path).read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not used & REMOVED, sorted(used & REMOVED)
    bare = [n.value.func.attr for n in ast.walk(tree) if isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute)
            and n.value.func.attr in CHECKED]
    assert not bare, f"return value ignored: {bare}"


def test_strongly_typed_only_where_tensorrt_takes_the_flag():
    assert network_flags("10.8.0.43", 2) == 1 << 2
    assert network_flags("11.4.0.106", 2) == 0


def test_builder_code_is_part_of_the_key(tmp_path):
    import far_runtime.gpu.engine_builder as builder
    copy = tmp_path / "builder.py"
    copy.write_text(Path(builder.__file__).read_text() + "\n# a changed build flag\n")
    assert builder_code_sha256(str(copy)) != builder_code_sha256()


# --- extras: cuda-python pinned to the CUDA major of its TensorRT --------------------------------

def test_tensorrt_extras_pin_cuda_python_per_cuda_major():
    extras = tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-lean", "tensorrt-lean-cu13"):
        reqs = extras[name]
        assert all("==" in r for r in reqs), reqs
        trt = [r for r in reqs if r.startswith("tensorrt")]
        cuda = [r for r in reqs if r.startswith("cuda-python")]
        assert len(trt) == 1 and len(cuda) == 1, reqs
        major = cuda_major_of([trt[0].split("==")[0]])
        assert cuda[0].split("==")[1].split(".")[0] == major, (name, reqs)
    assert any("lean" in r for r in extras["tensorrt-lean"])


def test_gpu_extras_say_where_their_wheels_exist():
    """TensorRT 11 and onnxruntime-gpu wheels exist for x86-64 Linux and Windows only: on a
    Jetson (aarch64) the extras bring cuda-python (which has aarch64 wheels) and nothing that
    cannot install; TensorRT and ONNX Runtime GPU come from JetPack there."""
    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("gpu", "tensorrt", "tensorrt-cu13", "tensorrt-lean", "tensorrt-lean-cu13"):
        for python in ("3.10", "3.11"):
            def wanted(machine, system="Linux"):
                env = {"platform_machine": machine, "python_version": python, "sys_platform": system.lower()}
                return sorted(Requirement(r).name for r in extras[name]
                              if Requirement(r).marker is None or Requirement(r).marker.evaluate(env))
            jetson = wanted("aarch64")
            assert jetson == ([] if name == "gpu" else ["cuda-python"]), (name, jetson)
            assert len(wanted("x86_64")) == (1 if name == "gpu" else 2) == len(wanted("AMD64", "Windows")), name


# --- the prepared GPU check ------------------------------------------------------------------

def _gpu_check(tmp_path, *args):
    import os
    import subprocess
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEPS": str(tmp_path / "deps")}
    cmd = ["bash", str(ROOT / "tests/gpu/run.sh"), str(tmp_path / "out")] if not args else \
        [sys.executable, str(ROOT / "tests/gpu/check.py"), "--out", str(tmp_path / "out"), *args]
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'runtime'}"
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_gpu_check_says_in_one_line_that_no_gpu_is_present(tmp_path):
    from far_export.doctor import cuda_gpu
    if cuda_gpu()[0]:
        pytest.skip("a CUDA GPU is present: the check measures instead")
    r = _gpu_check(tmp_path)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu-check: no GPU is present here (") and "nothing measured" in last
    assert "torch" in r.stdout and "tensorrt" in r.stdout          # the doctor ran first
    import json
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["gpu"] is False and report["doctor"]["torch"]["installed"]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The check's own bundle, parity and thread steps, on the CPU (about a minute)."""
    r = _gpu_check(tmp_path, "--cpu-dry-run")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "threads equal" in r.stdout.strip().splitlines()[-1]


# --- the GPU measurement's choice of head call, for every variant ------------------------------

def test_gpu_bench_times_the_median_head_shape_of_any_variant():
    """``bench.torch_cuda`` times one fused head call: FAR's iteration with the median number
    of predicted tokens, FAR-Causal's one head shape (it used to read FAR's iterations only)."""
    from far_export.bench.torch_cuda import median_head_call
    from far_runtime.variants import variant_for
    far = make_plan(MODEL_256, 2, 64, 8, True, "fused", True, 8)
    n_pred = sorted(ip.it.n_pred for ip in far.iterations if ip.calls)
    call = median_head_call(far)
    assert call.graph == "head_fused_o8" and call.dim("rows") == 2 * n_pred[len(n_pred) // 2]
    assert call.dim("zrows") == 2 * call.dim("rows")
    causal = {"kind": "causal", "seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10,
              "head_kind": "shortcut", "diffusion_steps": 0, "class_tokens": 2, "context": 17,
              "depth": 2, "heads": 2, "head_dim": 16, "image_size": 8, "image_channels": 3, "vae_scale": 1.0}
    plan = variant_for(causal).plan(causal, 3, None, 4, True, "fused", True, 8)
    call = median_head_call(plan)
    assert (call.graph, call.dim("rows"), call.dim("zrows")) == ("head_fused_o4", 3, 6)
    assert median_head_call(make_plan(MODEL_256, 1, 4, 8, False, "step", False, 8)) is None
