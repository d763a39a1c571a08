"""The C++ runtime under a hostile bundle (issue #26): a model entry bounded field by field,
buffer sizes that cannot wrap, the graphs' declared shapes as the judge of the model entry,
a manifest bounded before it is parsed, and engine files never read."""
import ctypes
import json
import os
import resource
import shutil
import subprocess

import pytest

from cpp_helpers import BOUNDS, causal_bundle, cpp_build, edited_copy, far_generate, python_generate  # noqa: F401 (fixtures)
from far_cpp import CError, CRuntime


def drop_specs(m):
    for g in m["graphs"].values():
        g.pop("spec", None)


def model_edit(**fields):
    """A consistent lie: the model entry changed and the (unhashed) spec entries dropped with it."""
    def edit(m):
        m["model"].update(fields)
        drop_specs(m)
    return edit


def load_error(cpp_build, bundle):
    with pytest.raises(CError) as e:
        CRuntime(cpp_build["lib"], bundle)
    return e.value


# --- cause 3: every field of the model entry bounded ------------------------------------------

FAR_FIELDS = ["seq_len", "token_dim", "cond_dim", "num_classes", "image_size", "image_channels"]
CAUSAL_FIELDS = ["class_tokens", "depth", "heads", "head_dim"]


@pytest.mark.parametrize("key", FAR_FIELDS + ["diffusion_steps"] + CAUSAL_FIELDS)
def test_model_fields_are_bounded(cpp_build, bundles, causal_bundle, tmp_path, key):
    lo, hi = BOUNDS[key]
    src = causal_bundle if key in CAUSAL_FIELDS else bundles["mar" if key == "diffusion_steps" else "far"]
    for value in (hi + 1, 2 ** 63):
        d = edited_copy(src, tmp_path / f"b{value}", model_edit(**{key: value}))
        e = load_error(cpp_build, d)
        assert e.code == 2 and e.message == (f"{d}/manifest.json is not a usable bundle manifest: model.{key} is {value}, "
                                             f"not an integer in {lo}..{hi}; rebuild the bundle.")


def test_a_bounded_field_is_one_line_from_far_generate(cpp_build, bundles, tmp_path):
    d = edited_copy(bundles["far"], tmp_path / "b", model_edit(seq_len=10 ** 12))
    r = far_generate(cpp_build, d, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {d}/manifest.json is not a usable bundle manifest: model.seq_len is 1000000000000, not an integer in "
        "1..65536; rebuild the bundle."]
    assert not (tmp_path / "x.png").exists()


# --- cause 3: sizes computed with overflow checks, before anything is allocated -----------------

@pytest.mark.parametrize("which,fields,want", [
    ("causal", dict(cond_dim=65536, heads=1024, head_dim=64, depth=1024),
     "1024 x 2 x 2 x 1024 x 17 x 64 elements for the KV cache"),
    ("far", dict(seq_len=65536, token_dim=4096, cond_dim=65536), "2 x 65536 x 65536 elements for the conditions"),
])
def test_a_model_past_one_buffer_is_refused_at_load(cpp_build, bundles, causal_bundle, tmp_path, which, fields, want):
    """Every field within its bound, their product not: one sentence at load, nothing allocated
    (before issue #26 the load succeeded and a run asked for tens of GB)."""
    d = edited_copy(causal_bundle if which == "causal" else bundles["far"], tmp_path / "b", model_edit(**fields))
    e = load_error(cpp_build, d)
    assert e.code == 2 and e.message == (f"One image of the bundle's model with CFG needs {want}, more than the 2147483648 "
                                         "one buffer may hold; rebuild the bundle.")


def _address_space(limit):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return set_limit


def test_a_batch_past_one_buffer_is_refused_before_allocating(cpp_build, bundles, tmp_path):
    """A model entry that fits one image but not the batch asked for: one input sentence, under
    a 3 GiB address-space limit (before issue #26: an 8 GB noise buffer and std::bad_alloc, exit 1)."""
    d = edited_copy(bundles["far"], tmp_path / "b", model_edit(seq_len=65536, token_dim=4096))
    r = subprocess.run([cpp_build["exe"], d, "--num", "8", "--cfg", "3.0", "--out", tmp_path / "x.png"], capture_output=True,
                       text=True, preexec_fn=_address_space(3 << 30))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: A batch of 8 with CFG needs 16 x 65536 x 8192 elements for the token state, more than the 2147483648 one "
        "buffer may hold; generate a smaller batch."]
    assert not (tmp_path / "x.png").exists()


# --- cause 3: the graphs' declared shapes judge the model entry ---------------------------------

POST = "; the manifest does not describe this graph, rebuild the bundle."
LIES = {
    "token_dim": ("far", dict(token_dim=8), "input 'tokens'", "float32 [batch, 16, 8]"),
    "seq_len": ("far", dict(seq_len=32), "input 'tokens'", "float32 [batch, 32, 4]"),
    "cond_dim": ("far", dict(cond_dim=64), "input 'z'", "float32 [zrows, 64]"),     # the backbone's z: D dynamic
    "mar_token_dim": ("mar", dict(token_dim=2), "input 'tokens'", "float32 [batch, 16, 2]"),
    "heads": ("causal", dict(heads=4, head_dim=8), "output 'cache'", "float32 [2, 2, batch, 4, 17, 8]"),
    "class_tokens": ("causal", dict(class_tokens=3, context=18), "output 'cache'", "float32 [2, 2, batch, 2, 18, 16]"),
}


@pytest.mark.parametrize("case", sorted(LIES))
def test_model_entry_must_match_the_graphs(cpp_build, bundles, causal_bundle, tmp_path, case):
    """A model entry that lies consistently (spec entries dropped) is refused by the graphs'
    own declared shapes, before a buffer of that graph is bound (before issue #26 the buffers
    were sized from the lie and only ONNX Runtime's run-time check stood in the way)."""
    which, fields, tensor, implied = LIES[case]
    src = causal_bundle if which == "causal" else bundles[which]
    d = edited_copy(src, tmp_path / "b", model_edit(**fields))
    r = far_generate(cpp_build, d, "--num", 2, "--out", tmp_path / "x.png", "--save-randomness", tmp_path / "r.npz")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Graph '") and f"of the bundle declares {tensor} as float32 [" in lines[0]
    assert lines[0].endswith(f", but its model entry implies {implied}{POST}")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize("size", [4, 16])
def test_image_size_is_judged_by_one_decode(cpp_build, bundles, tmp_path, size):
    """The exported decoder declares its height and width dynamic, so one image of zeros is
    decoded when its session opens, before the run allocates images of the claimed size."""
    d = edited_copy(bundles["far"], tmp_path / "b", model_edit(image_size=size))
    r = far_generate(cpp_build, d, "--num", 2, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: Graph 'vae_decoder' of the bundle makes output 'image' of shape [1, 3, 8, 8] for one image, but its "
        f"model entry implies [1, 3, {size}, {size}]{POST}"]
    assert not (tmp_path / "x.png").exists()


def test_a_graph_input_the_model_entry_lacks_is_refused(cpp_build, bundles, tmp_path):
    """A graph whose inputs are not the spec's (a MAR head graph where FAR's is expected)."""
    def edit(m):
        m["model"].update(head_kind="diffusion", diffusion_steps=5)
        drop_specs(m)
        for g in list(m["graphs"]):
            if g.startswith("head_fused"):
                del m["graphs"][g]
    d = edited_copy(bundles["far"], tmp_path / "b", edit)
    r = far_generate(cpp_build, d, "--num", 1, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: Graph 'head_step' of the bundle declares input 'd', which its model entry does not have{POST}"]


# --- cause 9: the manifest bounded before it is parsed ------------------------------------------

def test_a_manifest_of_too_many_values_is_refused_before_parsing(cpp_build, bundles, tmp_path):
    """2^20 values fit in a few MB; the hand parser took any number (and the bundle loaded)."""
    def edit(m):
        m["padding"] = [0] * (1 << 20)
    d = edited_copy(bundles["far"], tmp_path / "b", edit)
    e = load_error(cpp_build, d)
    assert e.code == 2 and e.message == f"{d}/manifest.json is too large to be a bundle manifest."


def test_deep_nesting_is_one_sentence(cpp_build, bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles["far"], d)
    (d / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    e = load_error(cpp_build, str(d))
    assert e.code == 2 and e.message == f"{d}/manifest.json is not valid JSON (nesting too deep at character 64)."


def test_a_number_past_a_double_is_one_sentence(cpp_build, bundles, tmp_path):
    """Found by fuzz_manifest (tests/fuzz/cpp/manifest/finding-number-overflow): nlohmann/json
    throws out_of_range for 1e309, which escaped as an internal error (exit 1)."""
    d = tmp_path / "b"
    shutil.copytree(bundles["far"], d)
    text = (d / "manifest.json").read_text()
    (d / "manifest.json").write_text(text.replace('"seq_len": 16', '"seq_len": 1e309'))
    r = far_generate(cpp_build, d, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {d}/manifest.json is not valid JSON (number overflow parsing '1e309')."]


def test_the_manifest_is_parsed_by_nlohmann_json():
    """No hand-written parser is left (issue #26 cause 9): json.cpp wraps nlohmann/json."""
    src = os.path.join(os.path.dirname(__file__), "..", "runtime", "cpp", "src")
    assert "#include <nlohmann/json.hpp>" in open(os.path.join(src, "json.h")).read()
    assert "class JsonParser" not in open(os.path.join(src, "json.cpp")).read()


# --- cause 2: the C++ runtime reads no engine files ----------------------------------------------

IN_ACCESS, IN_OPEN = 0x1, 0x20


class OpenWatch:
    """inotify on files: were any of them opened or read?"""

    def __init__(self, paths):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, "inotify is not available"
        for p in paths:
            assert self.libc.inotify_add_watch(self.fd, os.fsencode(p), IN_OPEN | IN_ACCESS) >= 0, p

    def events(self) -> int:
        try:
            return len(os.read(self.fd, 65536))
        except BlockingIOError:
            return 0

    def close(self):
        os.close(self.fd)


def test_engine_files_are_never_read(cpp_build, bundles, tmp_path):
    """The C++ runtime has no TensorRT backend of its own: --provider tensorrt is ONNX Runtime's
    TensorRT execution provider, which builds from the bundle's hashed graphs (and reads only
    the caller's own trt_cache_dir). engines.json and every engine path it names, inside the
    engine folder, escaping it or absolute, are never opened, on any provider."""
    d = tmp_path / "b"
    shutil.copytree(bundles["far"], d)
    engines = d / "engines" / "fp32"
    engines.mkdir(parents=True)
    outside = tmp_path / "outside.engine"
    for p in (engines / "backbone.engine", outside):
        p.write_bytes(b"not an engine")
    (engines / "engines.json").write_text(json.dumps({
        "format": "far-export-engines", "format_version": 2,
        "engines": {"backbone": {"file": "backbone.engine"}, "head_step": {"file": "../../../outside.engine"},
                    "vae_decoder": {"file": str(outside)}}}))
    watched = [engines / "engines.json", engines / "backbone.engine", outside]
    watch = OpenWatch(watched)
    try:
        ok = far_generate(cpp_build, d, "--num", 2, "--out", tmp_path / "x.png")
        assert ok.returncode == 0, ok.stderr
        trt = far_generate(cpp_build, d, "--num", 2, "--provider", "tensorrt", "--out", tmp_path / "y.png")
        assert trt.returncode == 2 and "TensorrtExecutionProvider" in trt.stderr     # not in a CPU onnxruntime
        rt = CRuntime(cpp_build["lib"], str(d))
        rt.tokens([1], K=2)
        rt.close()
        assert watch.events() == 0
        for p in watched:                                 # the watch itself sees an open
            p.read_bytes()
            assert watch.events() > 0, p
    finally:
        watch.close()


# --- the bundle digest (issue 26): far_load and far-generate take the digest an app pinned ------

@pytest.mark.parametrize("case", ["right", "upper", "wrong", "malformed"])
def test_the_digest_pins_a_bundle_as_in_python(cpp_build, bundles, tmp_path, case):
    from far_runtime.bundle import bundle_digest
    b = bundles["far"]
    d = bundle_digest(b)
    given = {"right": d, "upper": f" {d.upper()} ", "wrong": "0" * 64, "malformed": "abc"}[case]
    args = [b, "--num", "1", "--K", "2", "--O", "1", "--digest", given]
    py = python_generate(*args, "--out", tmp_path / "py.png")
    cc = far_generate(cpp_build, *args, "--out", tmp_path / "c.png")
    if case in ("right", "upper"):
        assert py.exit_code == 0 and cc.returncode == 0, (py.output, cc.stderr)
        assert (tmp_path / "py.png").read_bytes() == (tmp_path / "c.png").read_bytes()
        CRuntime(cpp_build["lib"], b, digest=given).close()
        return
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    assert cc.stderr.strip().splitlines()[-1] == py.output.strip().splitlines()[-1]
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(CError, match="digest"):
        CRuntime(cpp_build["lib"], b, digest=given)
