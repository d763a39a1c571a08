"""The C++ runtime (runtime/cpp): built once per machine, then compared with the Python runtime
on the bundles the suite builds: randomness bit for bit, final latents, PNG bytes, the same
one-sentence errors, the C API through ctypes, one runtime shared by threads, and the C++ unit
tests through ctest."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from far_runtime.backends import OrtBackend
from far_runtime.bundle import load_bundle
from far_runtime.cli import main as runtime_cli
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP = os.path.join(ROOT, "runtime", "cpp")
sys.path.insert(0, CPP)
from far_cpp import CError, CRuntime, draw_randomness as c_draw_randomness, load_library  # noqa: E402


# --- the build and a ctypes view of far_runtime.h ------------------------------------------

@pytest.fixture(scope="session")
def cpp_build():
    """Build runtime/cpp once (bash runtime/cpp/build.sh; incremental, so a second run reuses it)."""
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the C++ runtime needs {' and '.join(missing)}, which this machine lacks")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", os.path.join(CPP, "build.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    exe = res.stdout.strip().splitlines()[-1]
    assert os.path.isfile(exe), exe
    build = os.path.dirname(exe)
    return {"exe": exe, "dir": build, "lib": load_library(os.path.join(build, "libfar_runtime.so"))}


@pytest.fixture(scope="module")
def c_far(cpp_build, bundles):
    rt = CRuntime(cpp_build["lib"], bundles["far"])
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def c_mar(cpp_build, bundles):
    rt = CRuntime(cpp_build["lib"], bundles["mar"])
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def py_far(bundles):
    return Pipeline.load(bundles["far"], threads=1)


@pytest.fixture(scope="module")
def py_mar(bundles):
    return Pipeline.load(bundles["mar"], threads=1)


def far_generate(cpp_build, *args):
    return subprocess.run([cpp_build["exe"], *map(str, args)], capture_output=True, text=True)


def python_generate(*args):
    return CliRunner().invoke(runtime_cli, ["generate", *map(str, args)])


# --- randomness ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 256, 16, 0), (4, 16, 4, 0), (3, 7, 2, 5), (2, 64, 16, 3), (8, 1, 1, 1)])
def test_randomness_bit_identical(cpp_build, shape):
    """numpy's PCG64 + permutation + float32 ziggurat, ported: every array byte for byte."""
    B, L, C, S = shape
    for seed in [*range(25), 2 ** 32 - 1, 2 ** 32, 2 ** 63 + 11, 2 ** 64 - 1]:
        want = draw_randomness(seed, B, L, C, S)
        orders, noise, step = c_draw_randomness(cpp_build["lib"], seed, B, L, C, S)
        assert orders.tobytes() == want.orders.tobytes(), seed
        assert noise.tobytes() == want.noise.tobytes(), seed
        if S:
            assert step.tobytes() == want.step_noise.tobytes(), seed


# --- parity of the loop ------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 16, 64])
@pytest.mark.parametrize("O,head", [(1, "auto"), (8, "auto"), (8, "step")])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("B", [1, 4])
def test_parity_far(c_far, py_far, K, O, head, cfg, B):
    labels = [(3 * i + K) % 10 for i in range(B)]
    kw = dict(K=K, O=O, cfg=cfg, seed=K + O, temperature=0.9, head=head)
    a = py_far.generate_tokens(labels, **kw)
    b = c_far.tokens(labels, **kw)
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("K", [1, 16, 64])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("B", [1, 4])
def test_parity_mar(c_mar, py_mar, K, cfg, B):
    labels = [(5 * i + 1) % 10 for i in range(B)]
    kw = dict(K=K, cfg=cfg, seed=2 * K + B, temperature=0.95)
    a = py_mar.generate_tokens(labels, **kw)
    b = c_mar.tokens(labels, **kw)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))


def test_constant_schedule_and_images(c_far, py_far):
    kw = dict(K=4, O=2, cfg=2.5, seed=9)
    a = py_far.generate([1, 2, 3], cfg_schedule="constant", **kw)
    b = c_far.images([1, 2, 3], schedule="constant", **kw)
    assert a.dtype == b.dtype and np.array_equal(a, b)


# --- the CLI: same PNG, same saved randomness ------------------------------------------------

@pytest.mark.parametrize("which,args", [
    ("far", ["--num", 4, "--class", "1,2", "--K", 8, "--O", 8, "--seed", 3]),
    ("far", ["--num", 3, "--class", "7", "--K", 4, "--O", 2, "--cfg", 1.0, "--head", "step", "--temperature", 0.7]),
    ("mar", ["--num", 2, "--class", "4,5", "--K", 4, "--cfg", 2.0, "--seed", 5]),
])
def test_cli_writes_the_same_png(cpp_build, bundles, tmp_path, which, args):
    b = bundles[which]
    py = python_generate(b, *args, "--threads", 1, "--out", tmp_path / "py.png", "--save-randomness", tmp_path / "py.npz")
    assert py.exit_code == 0, py.output
    cc = far_generate(cpp_build, b, *args, "--threads", 1, "--out", tmp_path / "c.png", "--save-randomness", tmp_path / "c.npz")
    assert cc.returncode == 0, cc.stderr
    assert cc.stdout.strip().replace("c.png", "py.png") == py.output.strip().splitlines()[-1]
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "py.png").read_bytes()
    with np.load(tmp_path / "py.npz") as p, np.load(tmp_path / "c.npz") as c:
        assert sorted(p.files) == sorted(c.files)
        for k in p.files:
            assert p[k].dtype == c[k].dtype and p[k].tobytes() == c[k].tobytes()


def test_c_example_embeds_the_runtime(cpp_build, bundles, tmp_path):
    exe = os.path.join(cpp_build["dir"], "far-c-example")
    res = subprocess.run([exe, bundles["far"], tmp_path / "c.png"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ref = far_generate(cpp_build, bundles["far"], "--num", 4, "--class", "1,2,3,4", "--K", 16, "--O", 8, "--cfg", 3.0,
                       "--seed", 42, "--out", tmp_path / "cli.png")
    assert ref.returncode == 0, ref.stderr
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "cli.png").read_bytes()


# --- errors: the same sentence from both runtimes ---------------------------------------------

def tampered_copy(src, dst):
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "backbone.onnx"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    return str(dst)


@pytest.mark.parametrize("case", ["missing", "tampered", "not_json", "class", "K0", "K300", "O3", "num", "nofused"])
def test_same_error_sentences(cpp_build, bundles, tmp_path, case):
    b = bundles["far"]
    args = {"missing": [tmp_path / "nope"], "tampered": [None], "not_json": [None],
            "class": [b, "--class", "1,99"], "K0": [b, "--K", 0], "K300": [b, "--K", 300],
            "O3": [b, "--O", 3], "num": [b, "--num", 9], "nofused": [b, "--O", 4, "--head", "fused"]}[case]
    if case == "tampered":
        args = [tampered_copy(b, tmp_path / "t")]
    if case == "not_json":
        shutil.copytree(b, tmp_path / "j")
        (tmp_path / "j" / "manifest.json").write_text('{"format": ')
        args = [tmp_path / "j"]
    out = ["--out", tmp_path / "x.png"]
    py = python_generate(*args, *out)
    cc = far_generate(cpp_build, *args, *out)
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    py_line = py.output.strip().splitlines()[-1]
    cc_line = cc.stderr.strip().splitlines()[-1]
    if case == "not_json":          # the parser's own detail in parentheses differs
        py_line, cc_line = py_line.split(" (")[0], cc_line.split(" (")[0]
    assert cc_line == py_line
    assert not (tmp_path / "x.png").exists()


def test_c_api_error_codes(cpp_build, bundles, c_far, tmp_path):
    lib = cpp_build["lib"]
    with pytest.raises(CError) as e:
        CRuntime(lib, str(tmp_path / "nope"))
    assert e.value.code == 2 and e.value.message.startswith("Bundle folder ")
    with pytest.raises(CError) as e:
        c_far.tokens([1, 10])
    assert e.value.code == 1 and e.value.message == "Class 10 is unknown: this model has classes 0..9."
    with pytest.raises(CError) as e:
        c_far.tokens([1] * 9)
    assert e.value.message == "Batch size must be at least 1 and at most 8 (the bundle's max batch), got 9."
    with pytest.raises(CError) as e:
        c_far.tokens([1], K=4, cfg=2.0, schedule="cosine")
    assert e.value.message == "CFG schedule must be 'linear' or 'constant', got 'cosine'."
    assert c_far.tokens([1], K=2).shape == (1, 16, 4)         # the runtime still works after errors
    assert lib.far_last_error() == b""


def test_gpu_provider_is_refused_without_fallback(cpp_build, bundles):
    """On a CPU-only onnxruntime the C++ runtime refuses CUDA with the Python runtime's sentence."""
    with pytest.raises(FarError) as py:
        OrtBackend(load_bundle(bundles["far"]), providers=("CUDAExecutionProvider",))
    with pytest.raises(CError) as cc:
        CRuntime(cpp_build["lib"], bundles["far"], provider="cuda")
    assert cc.value.code == 3 and cc.value.message == str(py.value)


def test_paths_outside_the_bundle_are_refused(cpp_build, bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles["far"], d)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(d / "head_step.onnx", outside)
    os.symlink(outside, d / "head_step.onnx")
    res = far_generate(cpp_build, d, "--out", tmp_path / "x.png")
    assert res.returncode == 2
    assert "lies outside the bundle folder" in res.stderr and "refusing to read it" in res.stderr
    m = json.loads((d / "manifest.json").read_text())
    m["graphs"]["backbone"]["file"] = "other.onnx"
    os.unlink(d / "head_step.onnx")
    shutil.copy(outside, d / "head_step.onnx")
    (d / "manifest.json").write_text(json.dumps(m))
    res = far_generate(cpp_build, d, "--out", tmp_path / "x.png")
    assert res.returncode == 2 and "is not among the graph's hashed files" in res.stderr


# --- threads and the C++ unit tests -----------------------------------------------------------

def test_one_runtime_shared_by_threads(c_far):
    """ctypes releases the GIL: eight threads run at once inside one far_runtime, three times each."""
    jobs = [([i % 10, (i + 3) % 10], dict(K=8, O=(1, 2, 8)[i % 3], cfg=(1.0, 3.0)[i % 2], seed=i)) for i in range(8)]
    want = [c_far.tokens(lab, **kw) for lab, kw in jobs]
    got, errors = [None] * len(jobs), []

    def work(i):
        try:
            for _ in range(3):
                got[i] = c_far.tokens(jobs[i][0], **jobs[i][1])
        except Exception as e:          # surfaced by the assert below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(want, got):
        assert np.array_equal(a, b)


def test_cpp_unit_tests(cpp_build):
    if not os.path.isfile(os.path.join(cpp_build["dir"], "far_unit_tests")):
        pytest.skip("GoogleTest is not installed (Debian: libgtest-dev), so the C++ unit tests were not built")
    res = subprocess.run(["ctest", "--output-on-failure", "-j", "2"], cwd=cpp_build["dir"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "tests passed" in res.stdout
