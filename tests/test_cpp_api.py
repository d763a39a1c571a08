"""The C API's rules on misuse (far_runtime.h, "Misuse, the rules"), one test per rule, through
ctypes. Each case runs in its own Python process, so a crash (the SIGSEGV of a second far_free
before issue #26) fails its test instead of ending the suite."""
import json
import subprocess
import sys
import textwrap

import pytest

from cpp_helpers import CPP, cpp_build  # noqa: F401 (a fixture)

PRELUDE = """
import ctypes, json, sys, threading
import numpy as np
sys.path.insert(0, {cpp!r})
from far_cpp import CError, CRuntime, LoadOptions, SampleOptions, ModelInfo, load_library
lib = load_library({lib!r})
lib.far_model.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.far_free.argtypes = [ctypes.c_void_p]
lib.far_generate_tokens.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
lib.far_generate.argtypes = lib.far_generate_tokens.argtypes
BUNDLE = {bundle!r}
out = {{}}
def err():
    return lib.far_last_error().decode()
def load():
    h = ctypes.c_void_p()
    assert lib.far_load(BUNDLE.encode(), None, ctypes.byref(h)) == 0, err()
    return h
def model(h):
    info = ModelInfo()
    rc = lib.far_model(h, ctypes.byref(info))
    return rc, err()
def tokens(h, labels=(1,), floats=None, options=None, buf=None):
    lab = np.array(labels, np.int64)
    if buf is None:
        buf = np.zeros(floats if floats is not None else len(lab) * 16 * 4, np.float32)
    rc = lib.far_generate_tokens(h, lab.ctypes.data if len(lab) else None, len(lab), options,
                                 buf.ctypes.data, buf.size, None)
    return rc, err()
"""


def run_case(cpp_build, bundle, body):
    """Run PRELUDE + body in a fresh interpreter; the dict `out` comes back as JSON."""
    code = PRELUDE.format(cpp=CPP, lib=cpp_build["dir"] + "/libfar_runtime.so", bundle=bundle) + \
        textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


INPUT = 1
NOT_LOADED = "{fn} was given a far_runtime that is not loaded (freed already, or not returned by far_load)."


def test_api_version(cpp_build):
    assert cpp_build["lib"].far_api_version() == 3


def test_a_second_far_free_does_nothing(cpp_build, bundles):
    out = run_case(cpp_build, bundles["far"], """
        h = load()
        lib.far_free(h)
        lib.far_free(h)                       # a crash before issue #26
        lib.far_free(None)
        out["model"] = model(h)
        out["tokens"] = tokens(h)
        h2 = load()                           # handles are never reused
        out["distinct"] = h2.value != h.value
        out["after"] = model(h2)[0]
        lib.far_free(h2)
    """)
    assert out["model"] == [INPUT, NOT_LOADED.format(fn="far_model")]
    assert out["tokens"] == [INPUT, NOT_LOADED.format(fn="far_generate_tokens")]
    assert out["distinct"] and out["after"] == 0


def test_null_and_unknown_handles_are_refused(cpp_build, bundles):
    out = run_case(cpp_build, bundles["far"], """
        out["null_model"] = model(None)
        out["null_tokens"] = tokens(None)
        out["bogus_model"] = model(ctypes.c_void_p(0x7fff0000))   # never returned by far_load
        lib.far_free(ctypes.c_void_p(0x7fff0000))                 # ignored
        h = ctypes.c_void_p(1)
        out["load_null_dir"] = [lib.far_load(None, None, ctypes.byref(h)), err(), h.value]
        out["load_null_out"] = [lib.far_load(BUNDLE.encode(), None, None), err()]
    """)
    assert out["null_model"] == [INPUT, "far_model needs a loaded far_runtime, got NULL."]
    assert out["null_tokens"] == [INPUT, "far_generate_tokens needs a loaded far_runtime, got NULL."]
    assert out["bogus_model"] == [INPUT, NOT_LOADED.format(fn="far_model")]
    assert out["load_null_dir"] == [INPUT, "far_load needs a bundle folder and an output pointer.", None]
    assert out["load_null_out"] == [INPUT, "far_load needs a bundle folder and an output pointer."]


def test_null_buffers_and_short_buffers_write_nothing(cpp_build, bundles):
    out = run_case(cpp_build, bundles["far"], """
        h = load()
        info_rc = lib.far_model(h, None)
        out["null_info"] = [info_rc, err()]
        lab = np.array([1, 2], np.int64)
        buf = np.full(2 * 16 * 4, 7.0, np.float32)
        out["null_out"] = [lib.far_generate_tokens(h, lab.ctypes.data, 2, None, None, 128, None), err()]
        out["null_labels"] = [lib.far_generate_tokens(h, None, 2, None, buf.ctypes.data, buf.size, None), err()]
        out["short"] = [lib.far_generate_tokens(h, lab.ctypes.data, 2, None, buf.ctypes.data, buf.size - 1, None), err()]
        img = np.full(2 * 8 * 8 * 3, 7, np.uint8)
        out["short_images"] = [lib.far_generate(h, lab.ctypes.data, 2, None, img.ctypes.data, img.size - 1, None), err()]
        out["untouched"] = bool((buf == 7.0).all() and (img == 7).all())
        out["batch0"] = tokens(h, labels=())
        out["ok"] = tokens(h, labels=(1, 2))[0]
        lib.far_free(h)
    """)
    assert out["null_info"] == [INPUT, "far_model needs a far_model_info to fill, got NULL."]
    assert out["null_out"] == [INPUT, "far_generate_tokens needs an output buffer, got NULL."]
    assert out["null_labels"] == [INPUT, "far_generate_tokens needs batch class labels, got NULL."]
    assert out["short"] == [INPUT, "The output buffer is smaller than batch x seq_len x token_dim floats."]
    assert out["short_images"] == [INPUT, "The output buffer is smaller than batch x image_size x image_size x 3 bytes."]
    assert out["untouched"]
    assert out["batch0"] == [INPUT, "Batch size must be at least 1: no class labels were given."]
    assert out["ok"] == 0


def test_option_structs_must_carry_their_size(cpp_build, bundles):
    out = run_case(cpp_build, bundles["far"], """
        h = load()
        o = SampleOptions()
        lib.far_sample_options_default(ctypes.byref(o))
        size = o.size
        out["size"] = [size, ctypes.sizeof(SampleOptions)]
        for name, bad in (("zero", 0), ("short", size - 8), ("garbage", 0xdeadbeef)):
            o.size = bad
            out[name] = tokens(h, options=ctypes.byref(o))
        lo = LoadOptions()                    # zeroed, never filled by far_load_options_default
        h2 = ctypes.c_void_p()
        out["load_zeroed"] = [lib.far_load(BUNDLE.encode(), ctypes.byref(lo), ctypes.byref(h2)), err(), h2.value]
        lib.far_load_options_default(ctypes.byref(lo))
        lo.provider = None                    # NULL strings inside a struct: their defaults
        out["load_ok"] = lib.far_load(BUNDLE.encode(), ctypes.byref(lo), ctypes.byref(h2))
        lib.far_load_options_default(None)    # does nothing
        lib.far_sample_options_default(None)
        lib.far_free(h2)
        lib.far_free(h)
    """)
    size = out["size"][1]
    assert out["size"][0] == size
    for name, bad in (("zero", 0), ("short", size - 8), ("garbage", 0xdeadbeef)):
        assert out[name] == [INPUT, f"far_sample_options.size is {bad}, not sizeof(far_sample_options) = {size}; "
                                    "fill the options with far_sample_options_default first."]
    lsize = out["load_zeroed"][1].split("= ")[1].split(";")[0]
    assert out["load_zeroed"] == [INPUT, f"far_load_options.size is 0, not sizeof(far_load_options) = {lsize}; "
                                         "fill the options with far_load_options_default first.", None]
    assert out["load_ok"] == 0


def test_sizes_past_a_buffer_are_one_sentence(cpp_build, tmp_path):
    """Sizes whose buffers would hold more than 2^31 elements are refused before anything is
    allocated (before issue #26: an allocation of their wrapped or huge product)."""
    out = run_case(cpp_build, "", f"""
        o = np.zeros(1, np.int64); n = np.zeros(1, np.float32)
        rc = lib.far_draw_randomness(ctypes.c_uint64(0), 65536, 65536, 65536, 0, o.ctypes.data, n.ctypes.data, None)
        out["draw"] = [rc, err()]
        rc = lib.far_draw_randomness(ctypes.c_uint64(0), 1, 1, 1, -1, o.ctypes.data, n.ctypes.data, None)
        out["negative"] = [rc, err()]
        img = np.zeros(3, np.uint8)
        rc = lib.far_write_png_grid({str(tmp_path / "g.png")!r}.encode(), img.ctypes.data, 1 << 20, 2 ** 31 - 1, 2 ** 31 - 1)
        out["grid"] = [rc, err()]
    """)
    assert out["draw"] == [INPUT, "far_draw_randomness needs 65536 x 65536 x 65536 elements for the noise, more than the "
                                  "2147483648 one buffer may hold; draw a smaller batch."]
    assert out["negative"] == [INPUT, "far_draw_randomness needs positive sizes."]
    assert out["grid"] == [INPUT, "The grid needs 1048576 x 2147483647 x 2147483647 x 3 elements for its images, more than "
                                  "the 2147483648 one buffer may hold; write fewer or smaller images."]
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("rep", range(2))
def test_far_free_during_a_call_on_another_thread(cpp_build, bundles, rep):
    """A call in flight finishes on the runtime it started with; every call after far_free is
    refused. Whenever far_free lands, the outcome is the same rule (no timing is asserted)."""
    out = run_case(cpp_build, bundles["far"], """
        h = load()
        started, codes = threading.Event(), []
        def work():
            while True:
                rc, msg = tokens(h, labels=(1, 2, 3, 4))
                codes.append([rc, msg])
                started.set()
                if rc:
                    return
        t = threading.Thread(target=work)
        t.start()
        started.wait()
        lib.far_free(h)
        t.join()
        out["codes"] = codes
    """)
    codes = out["codes"]
    assert all(rc == 0 for rc, _ in codes[:-1]) and len(codes) >= 2
    assert codes[-1] == [INPUT, NOT_LOADED.format(fn="far_generate_tokens")]
