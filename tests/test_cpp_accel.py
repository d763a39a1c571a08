"""The sampling accelerations of issue #24 (far_runtime/ACCEL.md: head schedule, guidance
interval, condition cache) in the C++ runtime: for FAR, MAR and FAR-Causal, each option and
a combination give the same latents bit for bit and the same images as the Python runtime
(C API), far-generate writes the same PNG bytes as far-runtime generate, a value either
runtime refuses is refused in Python's sentence, and a far_sample_options of API version 2
is read without the new fields."""
import ctypes

import numpy as np
import pytest

from cpp_helpers import causal_bundle, cpp_build, far_generate, last_lines, python_generate  # noqa: F401 (fixtures)
from far_cpp import CError, CRuntime, SampleOptions
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline

# Per variant: options that each change the run (the tiny FAR bundle has fused O 1, 2, 8 and
# the step graph; MAR's own respacing is 100 DDPM steps; FAR-Causal has L = 16, O 1 and 2).
CASES = {
    "far": [dict(head_schedule="8:1"), dict(K=4, head_schedule="8,2,1,8"), dict(cfg_interval="0.25:0.75"),
            dict(cfg_cache="1:2"), dict(K=8, cfg_cache="2:3", schedule="constant"),
            dict(head_schedule="8:2", cfg_interval="0:0.75", cfg_cache="0:2", head="step")],
    "mar": [dict(K=4, head_schedule="100:10"), dict(K=4, head_schedule="20,100,3,1"), dict(K=4, cfg_interval="0.5:1"),
            dict(K=4, cfg_cache="1:2"), dict(K=4, head_schedule="10:2", cfg_interval="0:0.75", cfg_cache="0:2")],
    "far-causal": [dict(head_schedule="2:1"), dict(head_schedule="1,2,1,2,1,2,1,2,2,2,2,2,1,1,1,1", head="step"),
                   dict(cfg_interval="0.25:0.5"), dict(cfg_interval="0.5:1"),
                   dict(head_schedule="2:1", cfg_interval="0:0.5", head="step")],
}
GRID = [(name, i) for name, cases in CASES.items() for i in range(len(cases))]
ACCEL = ("head_schedule", "cfg_interval", "cfg_cache")


@pytest.fixture(scope="module")
def pair(cpp_build, bundles, causal_bundle):
    """Per variant: the bundle, the Python pipeline and the C runtime on it."""
    paths = {"far": bundles["far"], "mar": bundles["mar"], "far-causal": causal_bundle}
    out = {n: (p, Pipeline.load(p, threads=1), CRuntime(cpp_build["lib"], p)) for n, p in paths.items()}
    yield out
    for _, _, c in out.values():
        c.close()


def py_kw(case: dict) -> dict:
    """The C API's keywords as Pipeline.generate_tokens spells them."""
    kw = {k: v for k, v in case.items() if k != "schedule"}
    if "schedule" in case:
        kw["cfg_schedule"] = case["schedule"]
    return kw


@pytest.mark.parametrize("name,i", GRID)
def test_c_api_latents_and_images_identical(pair, name, i):
    _, py, c = pair[name]
    case = dict(CASES[name][i])
    if name != "far-causal":
        case.setdefault("K", 16)
    base = dict(O=2 if name == "far-causal" else 8, cfg=3.0, seed=7 + i, temperature=0.9)
    labels = [3, 8]
    a = py.generate_tokens(labels, **base, **py_kw(case))
    b = c.tokens(labels, **base, **case)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), float(np.abs(a - b).max())
    assert np.array_equal(py.generate(labels, **base, **py_kw(case)), c.images(labels, **base, **case))
    # The options act: the same run without them differs (a test that cannot pass vacuously).
    off = {k: v for k, v in case.items() if k not in ACCEL}
    assert c.tokens(labels, **base, **off).tobytes() != b.tobytes()


@pytest.mark.parametrize("name", ["far", "mar"])
def test_cache_every_iteration_and_full_interval_are_the_plain_run(pair, name):
    """'0:1' refreshes every iteration and '0:1' as an interval guides every one: the default run, bit for bit."""
    _, _, c = pair[name]
    kw = dict(K=4, cfg=2.0, seed=1)
    plain = c.tokens([2], **kw).tobytes()
    assert c.tokens([2], cfg_cache="0:1", **kw).tobytes() == plain
    assert c.tokens([2], cfg_interval="0:1", **kw).tobytes() == plain


def test_spellings_python_accepts(pair):
    """Surrounding whitespace (Unicode's too, as str.strip) and '1.'/'.25' fractions read as Python reads them."""
    _, py, c = pair["far"]
    kw = dict(K=8, cfg=3.0, seed=2)
    for spelled, plain in ((" 8 :\u00a01 ", "8:1"), ("\u30008,8,4,4,2,2,1,1\t", "8,8,4,4,2,2,1,1")):
        assert c.tokens([1], head_schedule=spelled, **kw).tobytes() == c.tokens([1], head_schedule=plain, **kw).tobytes()
    a = c.tokens([1], cfg_interval=".25: 1.", **kw)
    assert a.tobytes() == py.generate_tokens([1], cfg_interval=".25: 1.", **kw).tobytes()
    assert a.tobytes() == c.tokens([1], cfg_interval="0.25:1", **kw).tobytes()


@pytest.mark.parametrize("name,accel,other", [
    ("far", ["--head-schedule", "8:2", "--cfg-interval", "0.1:0.9", "--cfg-cache", "1:3"], ["--head", "step"]),
    ("mar", ["--head-schedule", "12:3", "--cfg-interval", "0:0.75", "--cfg-cache", "0:2"], ["--K", 4]),
    ("far-causal", ["--head-schedule", "2:1", "--cfg-interval", "0.25:0.75"], ["--O", 1]),
])
def test_cli_writes_the_same_png(cpp_build, pair, tmp_path, name, accel, other):
    common = [pair[name][0], *other, "--num", 2, "--class", "4,9", "--seed", 5, "--threads", 1]
    args = [*common, *accel]
    py = python_generate(*args, "--out", tmp_path / "py.png", "--save-randomness", tmp_path / "py.npz")
    assert py.exit_code == 0, py.output
    cc = far_generate(cpp_build, *args, "--out", tmp_path / "c.png", "--save-randomness", tmp_path / "c.npz")
    assert cc.returncode == 0, cc.stderr
    assert cc.stdout.strip().replace("c.png", "py.png") == py.output.strip().splitlines()[-1]
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "py.png").read_bytes()
    with np.load(tmp_path / "py.npz") as p, np.load(tmp_path / "c.npz") as c:
        assert sorted(p.files) == sorted(c.files) and all(p[k].tobytes() == c[k].tobytes() for k in p.files)
    plain = far_generate(cpp_build, *common, "--out", tmp_path / "plain.png")
    assert plain.returncode == 0 and (tmp_path / "plain.png").read_bytes() != (tmp_path / "c.png").read_bytes()


# --- refusals: Python's sentence, from far-generate and from the C API --------------------------

BAD = [
    ("far", ["--head-schedule", "8:1:2"]), ("far", ["--head-schedule", "8:x"]), ("far", ["--head-schedule", ""]),
    ("far", ["--head-schedule", "8,0"]), ("far", ["--head-schedule", "12345678"]), ("far", ["--head-schedule", "2000000:1"]),
    ("far", ["--head-schedule", "+8:1"]), ("far", ["--head-schedule", "8,8"]), ("far", ["--head-schedule", "3:1"]),
    ("far", ["--head-schedule", "8:4", "--head", "fused"]), ("far", ["--head-schedule", "8:1", "--head", "fused", "--K", 2]),
    ("far", ["--O", 3, "--head-schedule", "8:1"]),
    ("far", ["--cfg-interval", "0.5"]), ("far", ["--cfg-interval", "-0.1:1"]), ("far", ["--cfg-interval", "1e-1:1"]),
    ("far", ["--cfg-interval", "0.75:0.25"]), ("far", ["--cfg-interval", "0:1.5"]), ("far", ["--cfg-interval", "nan:1"]),
    ("far", ["--cfg-interval", ".:1"]), ("far", ["--cfg-interval", "'0':1"]),
    ("far", ["--cfg-cache", "2"]), ("far", ["--cfg-cache", "2:0"]), ("far", ["--cfg-cache", "a:1"]), ("far", ["--cfg-cache", "1:2:3"]),
    ("mar", ["--head-schedule", "101:1"]), ("mar", ["--K", 4, "--head-schedule", "5,5,5"]),
    ("far-causal", ["--cfg-cache", "1:2"]), ("far-causal", ["--head-schedule", "3:1"]),
    ("far-causal", ["--head-schedule", "2,1"]),
]


@pytest.mark.parametrize("name,args", BAD)
def test_cli_refusals_are_pythons(cpp_build, pair, tmp_path, name, args):
    bundle = pair[name][0]
    py = python_generate(bundle, *args, "--out", tmp_path / "x.png")
    cc = far_generate(cpp_build, bundle, *args, "--out", tmp_path / "x.png")
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    py_line, cc_line = last_lines(py, cc)
    assert cc_line == py_line and cc_line.startswith("error: ")
    assert len(cc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def c_api_kw(args: list) -> dict:
    """far-generate's flags as the C API's keywords."""
    names = {"--head-schedule": "head_schedule", "--cfg-interval": "cfg_interval", "--cfg-cache": "cfg_cache",
             "--head": "head", "--K": "K", "--O": "O"}
    return {names[k]: v for k, v in zip(args[::2], args[1::2])}


@pytest.mark.parametrize("name,args", BAD)
def test_c_api_refusals_are_pythons(pair, name, args):
    _, py, c = pair[name]
    kw = dict(c_api_kw(args), cfg=3.0)
    with pytest.raises(FarError) as want:
        py.generate_tokens([1], **kw)
    with pytest.raises(CError) as got:
        c.tokens([1], **kw)
    assert got.value.code == 1 and got.value.message == str(want.value)


def test_sentences_say_what_they_should(pair):
    """Spot checks that the compared sentences above name the rule (not only agree)."""
    _, _, c = pair["far-causal"]
    with pytest.raises(CError) as e:
        c.tokens([1], cfg=3.0, cfg_cache="1:2")
    assert e.value.message == ("--cfg-cache reuses the unconditional condition across iterations of FAR and MAR; FAR-Causal's "
                               "KV cache needs every unconditional step, so it does not apply.")
    _, _, c = pair["mar"]
    with pytest.raises(CError) as e:
        c.tokens([1], head_schedule="101:1")
    assert e.value.message == ("--head-schedule values are DDPM steps per iteration, at most the model's 100 (its randomness "
                               "holds that many step-noise rows); got 101.")


# --- the options struct: version 2's size is read without the new fields ------------------------

def test_version_2_options_struct_leaves_the_options_off(pair):
    _, _, c = pair["far"]
    lab = np.array([6], np.int64)
    out = np.zeros((1, c.info.seq_len, c.info.token_dim), np.float32)

    def run(o):
        rc = c.lib.far_generate_tokens(c.handle, lab.ctypes.data_as(ctypes.c_void_p), 1, ctypes.byref(o),
                                       out.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(out.size), None)
        return rc, c.lib.far_last_error().decode(), out.tobytes()

    o = c.options(K=4, cfg=3.0, head_schedule="bad", cfg_interval="bad", cfg_cache="bad")
    assert run(o)[:2] == (1, "--head-schedule takes non-negative whole numbers, got 'bad'.")
    o.size = SampleOptions.head_schedule.offset              # what a caller built against API version 2 passes
    rc, err, got = run(o)
    assert (rc, err) == (0, "") and got == c.tokens([6], K=4, cfg=3.0).tobytes()
