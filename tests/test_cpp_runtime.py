"""The C++ runtime (runtime/cpp): built once per machine, then compared with the Python runtime
on the bundles the suite builds: randomness bit for bit, final latents, PNG bytes, the same
one-sentence errors, the C API through ctypes, one runtime shared by threads, and the C++ unit
tests through ctest."""
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

import tiny_bundles
from cpp_helpers import cpp_build, edited_copy, far_generate, python_generate  # noqa: F401 (cpp_build: a fixture)
from far_cpp import CError, CRuntime, draw_randomness as c_draw_randomness
from far_runtime.backends import OrtBackend
from far_runtime.bundle import load_bundle
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness


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
    assert_mar_close(a, b)


def assert_mar_close(a, b):
    """Bit for bit: the DDPM update is numpy's float32 order in both, and its noise scale is
    exp32 in both (far_runtime/exp32.py, ddpm.cpp), though the latents reach ~3e4."""
    assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes(), np.abs(a - b).max()


@pytest.fixture(scope="module")
def respaced_mar(request, tmp_path_factory):
    """MAR bundles trained with --num_sampling_steps ddim25 and 21 (tiny_bundles.export_respaced)."""
    if tiny_bundles.PREBUILT:
        return tiny_bundles.prebuilt("respaced")
    files = request.getfixturevalue("tiny_files")
    return tiny_bundles.export_respaced(files, str(tmp_path_factory.mktemp("respaced")))


@pytest.mark.parametrize("steps", ["ddim25", "21"])
def test_parity_mar_respaced(cpp_build, respaced_mar, steps):
    m = json.load(open(os.path.join(respaced_mar[steps], "manifest.json")))["model"]
    assert m["diffusion_steps"] == (25 if steps == "ddim25" else 21)
    py = Pipeline.load(respaced_mar[steps], threads=1)
    cc = CRuntime(cpp_build["lib"], respaced_mar[steps])
    try:
        assert cc.info.diffusion_steps == m["diffusion_steps"]
        for cfg, B in [(1.0, 1), (3.0, 2)]:
            kw = dict(K=4, cfg=cfg, seed=7, temperature=0.9)
            a = py.generate_tokens(list(range(B)), **kw)
            b = cc.tokens(list(range(B)), **kw)
            assert_mar_close(a, b)
    finally:
        cc.close()


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


def _rename_file(m, name):
    g = m["graphs"]["backbone"]
    g["files"] = {name: g["files"][g["file"]]}
    g["file"] = name


def _manifest_symlink(b, d):
    shutil.copytree(b, d / "b")
    shutil.move(d / "b" / "manifest.json", d / "elsewhere.json")
    os.symlink(d / "elsewhere.json", d / "b" / "manifest.json")
    return str(d / "b")


EDITS = {
    "traversal": lambda m: _rename_file(m, "missing/../../x.onnx"),
    "dotdot": lambda m: _rename_file(m, "../backbone.onnx"),
    "absolute": lambda m: _rename_file(m, "/etc/passwd"),
    "float_int": lambda m: m.update(max_batch=8.0),
    "respacing_type": lambda m: m["model"].update(timestep_respacing=25),
    # Text from the file is quoted as Python's repr quotes it: no newline breaks the sentence.
    "kind_newline": lambda m: m["model"].update(head_kind="x\ny'\"\t"),
    "head_steps_list": lambda m: m.update(head_steps=[1, "2"]),
}


@pytest.mark.parametrize("case", ["missing", "tampered", "not_json", "class", "K0", "K300", "O3", "num", "nofused",
                                  "not_object", "manifest_symlink", *EDITS])
def test_same_error_sentences(cpp_build, bundles, tmp_path, case):
    b = bundles["far"]
    args = {"missing": [tmp_path / "nope"], "tampered": [None], "not_json": [None],
            "class": [b, "--class", "1,99"], "K0": [b, "--K", 0], "K300": [b, "--K", 300],
            "O3": [b, "--O", 3], "num": [b, "--num", 9], "nofused": [b, "--O", 4, "--head", "fused"]}.get(case)
    if case == "tampered":
        args = [tampered_copy(b, tmp_path / "t")]
    if case == "not_json":
        shutil.copytree(b, tmp_path / "j")
        (tmp_path / "j" / "manifest.json").write_text('{"format": ')
        args = [tmp_path / "j"]
    if case == "not_object":
        shutil.copytree(b, tmp_path / "j")
        (tmp_path / "j" / "manifest.json").write_text('[1, 2]')
        args = [tmp_path / "j"]
    if case == "manifest_symlink":
        args = [_manifest_symlink(b, tmp_path)]
    if case in EDITS:
        args = [edited_copy(b, tmp_path / "e", EDITS[case])]
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


def test_sentences_name_what_python_names(cpp_build, bundles, tmp_path):
    """Spot checks that the compared lines above say what they should (not only the same thing)."""
    r = far_generate(cpp_build, edited_copy(bundles["far"], tmp_path / "e", EDITS["traversal"]), "--out", tmp_path / "x.png")
    assert "The bundle manifest names 'missing/../../x.onnx', which lies outside the bundle folder" in r.stderr
    r = far_generate(cpp_build, _manifest_symlink(bundles["far"], tmp_path), "--out", tmp_path / "x.png")
    assert "The bundle manifest names 'manifest.json', which lies outside" in r.stderr


# --- a manifest is untrusted: its specs, its model entry ------------------------------------

def _spec_edit(fn):
    def edit(m):
        fn(m["graphs"]["head_step"]["spec"])
    return edit


@pytest.mark.parametrize("case,edit", [
    ("huge_dim", _spec_edit(lambda s: s["inputs"][0].update(dims=["rows", 4000]))),     # overflow a bound buffer
    ("small_dim", _spec_edit(lambda s: s["outputs"][0].update(dims=["rows", 1]))),
    ("no_tensor", _spec_edit(lambda s: s["inputs"].pop())),
    ("renamed", _spec_edit(lambda s: s["outputs"][0].update(name="w"))),
])
def test_manifest_spec_must_match_the_model(cpp_build, bundles, tmp_path, case, edit):
    """The runtime binds buffers from the model entry (as Python's component_specs); a manifest
    spec that says otherwise is refused in one sentence, never run past a buffer."""
    d = edited_copy(bundles["far"], tmp_path / "e", edit)
    r = far_generate(cpp_build, d, "--out", tmp_path / "x.png", "--head", "step", "--O", 2)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {d}/manifest.json is not a usable bundle manifest: the spec of graph 'head_step' differs from the one "
        "its model entry implies; rebuild the bundle."]
    assert not (tmp_path / "x.png").exists()


def test_a_bundle_without_spec_entries_still_runs(cpp_build, bundles, tmp_path, py_far):
    def drop(m):
        for g in m["graphs"].values():
            g.pop("spec", None)
    d = edited_copy(bundles["far"], tmp_path / "e", drop)
    cc = CRuntime(cpp_build["lib"], d)
    try:
        assert np.abs(cc.tokens([1, 2], K=4, O=2) - py_far.generate_tokens([1, 2], K=4, O=2)).max() <= 1e-5
    finally:
        cc.close()


def test_non_rgb_decoder_and_half_causal_models_are_refused(cpp_build, bundles, tmp_path):
    d = edited_copy(bundles["far"], tmp_path / "c1", lambda m: m["model"].update(image_channels=1))
    with pytest.raises(CError) as e:
        CRuntime(cpp_build["lib"], d)
    assert e.value.code == 2 and e.value.message == (
        f"{d}/manifest.json is not a usable bundle manifest: model.image_channels is 1, but the vae_decoder's images "
        "are written as RGB, which needs 3; rebuild the bundle.")
    # A FAR model entry that claims kind "causal" lacks the causal fields: Python's sentence.
    d = edited_copy(bundles["far"], tmp_path / "c2", lambda m: m["model"].update(kind="causal"))
    with pytest.raises(CError) as e:
        CRuntime(cpp_build["lib"], d)
    with pytest.raises(FarError) as py:
        load_bundle(d)
    # The same field and value as Python; the bound's words are issue #26's ("in 1..4096").
    assert e.value.code == 2 and e.value.message.split(", not ")[0] == str(py.value).split(", not ")[0]
    assert "model.class_tokens is None, not an integer in 1..4096; rebuild the bundle." in e.value.message


def test_sessions_run_the_bytes_that_were_hashed(cpp_build, bundles, tmp_path):
    """A graph replaced after load is refused when its session is made, as in Python, and
    check_hashes=0 skips only the load-time pass, not that check."""
    d = shutil.copytree(bundles["far"], tmp_path / "b")
    py = Pipeline.load(str(d), threads=1)
    cc = CRuntime(cpp_build["lib"], str(d))
    lib = cpp_build["lib"]
    try:
        tampered_copy(bundles["far"], tmp_path / "t")
        shutil.copy(tmp_path / "t" / "backbone.onnx", d / "backbone.onnx")
        with pytest.raises(FarError) as pe:
            py.generate_tokens([1], K=2)
        with pytest.raises(CError) as ce:
            cc.tokens([1], K=2)
        assert ce.value.code == 2 and ce.value.message == str(pe.value)
    finally:
        cc.close()
    from far_cpp import LoadOptions
    import ctypes
    opts = LoadOptions()
    lib.far_load_options_default(ctypes.byref(opts))
    opts.check_hashes = 0
    h = ctypes.c_void_p()
    assert lib.far_load(str(tmp_path / "t").encode(), ctypes.byref(opts), ctypes.byref(h)) == 0
    try:
        rt = CRuntime.__new__(CRuntime)
        rt.lib, rt.handle = lib, h
        from far_cpp import ModelInfo
        rt.info = ModelInfo()
        assert lib.far_model(h, ctypes.byref(rt.info)) == 0
        with pytest.raises(CError) as ce:
            rt.tokens([1], K=2)
        assert "does not match the sha256 in the manifest" in ce.value.message
    finally:
        lib.far_free(h)


# --- far-generate: options first, nothing left behind ----------------------------------------

@pytest.mark.parametrize("args", [
    ["--num", 0], ["--num", 10 ** 30], ["--threads", 0], ["--temperature", -1], ["--cfg", "nan"], ["--seed", -3],
    ["--K", 0], ["--out", "/"], ["--out", "/etc/passwd/x.png"], ["--save-randomness", "/etc/passwd/r.npz"],
])
def test_options_are_checked_before_the_bundle_is_read(cpp_build, tmp_path, args):
    """cli.py's order: a bad option is the error even when the bundle does not exist."""
    full = [tmp_path / "nope", *args] + ([] if "--out" in args else ["--out", tmp_path / "x.png"])
    py = python_generate(*full)
    cc = far_generate(cpp_build, *full)
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    assert cc.stderr.strip().splitlines()[-1] == py.output.strip().splitlines()[-1]
    assert "Bundle folder" not in cc.stderr
    assert os.listdir(tmp_path) == []


def test_a_refused_run_writes_neither_file(cpp_build, bundles, tmp_path):
    out, rnd = tmp_path / "sub" / "x.png", tmp_path / "sub" / "r.npz"
    for bad in (["--class", "99"], ["--O", 3], ["--num", 9]):
        r = far_generate(cpp_build, bundles["far"], *bad, "--out", out, "--save-randomness", rnd)
        assert r.returncode == 2, r.stderr
        assert not out.exists() and not rnd.exists() and not (tmp_path / "sub").exists()


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


def test_c_api_stats_add_up_over_calls(c_far):
    """far_run_stats is added to, like the C++ RunStats: graph calls add up exactly, and each
    call adds a finite, non-negative time whose whole (decode, finite check, uint8 included)
    is never below its part inside ONNX Runtime (nested intervals of one monotonic clock).
    Nothing here compares durations of different runs, which the machine's load decides."""
    import math
    from far_cpp import RunStats
    one = RunStats()
    c_far.images([1, 2], stats=one, K=4, O=2)
    # K=4, O=2 fused, no CFG: 4 backbone calls (16 tokens, every iteration predicts some),
    # 4 fused head calls, 1 decode.
    assert one.graph_calls == 4 + 4 + 1
    assert math.isfinite(one.total_seconds) and one.total_seconds >= one.ort_seconds >= 0
    two = RunStats(total_seconds=5.0, ort_seconds=3.0, graph_calls=7)     # not zeroed: added to
    c_far.images([1, 2], stats=two, K=4, O=2)
    c_far.images([1, 2], stats=two, K=4, O=2)
    assert two.graph_calls == 7 + 2 * one.graph_calls
    assert math.isfinite(two.total_seconds) and two.total_seconds >= 5.0 and two.ort_seconds >= 3.0


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
