"""Issue 26 in the Python runtime: the model entry, the manifest's size, run-time failures, the
saved-randomness file and the bundle digest, each refused in one sentence (exit 2 from the CLI).

Causes covered here: 3 (model entry bounded and cross-checked against the graphs' declared
shapes), 5 (a manifest over 64 MB, the C++ runtime's limit and sentence), 6 (ONNX Runtime
failures during a run), the npz loader of cause 9, and the bundle digest. Engines (causes 2,
4, 7): tests/test_trust_engines.py; the server (cause 1): tests/test_trust_serve.py.
"""
import hashlib
import io
import json
import os
import re
import subprocess
import zipfile

import numpy as np
import pytest

from bad_input_helpers import assert_one_sentence, copy_bundle, edit_manifest, run_cli, snapshot
from far_runtime.bundle import MAX_MANIFEST_BYTES, bundle_digest, check_structure, load_bundle
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.plan import make_call
from far_runtime.randomness import Randomness, draw_randomness

CPP_BUNDLE = os.path.join(os.path.dirname(__file__), "..", "runtime", "cpp", "src", "bundle.cpp")


@pytest.fixture(scope="module")
def causal_bundle(tmp_path_factory):
    """A tiny FAR-Causal bundle (class_tokens 2, L 16: cache [2, 2, batch, 2, 17, 16])."""
    from far_export.export.bundle import export_bundle
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint, write_random_vae
    d = tmp_path_factory.mktemp("trust_causal")
    write_random_causal_checkpoint(str(d / "c.pth"), tiny_causal_config(16, class_tokens=2), seed=4)
    write_random_vae(str(d / "vae.pth"), seed=3)
    export_bundle(str(d / "c.pth"), str(d / "vae.pth"), str(d / "bundle"), head_steps=(1, 2))
    return str(d / "bundle")


def sources(bundles, causal_bundle):
    return {**bundles, "causal": causal_bundle}


def generate_args(bundle, out, *extra):
    return ["generate", bundle, "--num", "1", "--O", "2", "--out", out, *extra]


def assert_refused(tmp_path, bundle, expect, *extra):
    """`far-runtime generate` exits 2 with one sentence (after its progress label, if the run
    started) and leaves the folder as it was."""
    before = snapshot(str(tmp_path))
    r = run_cli(generate_args(bundle, str(tmp_path / "grid.png"), *extra), runtime=True)
    lines = [x for x in r.stderr.splitlines() if x.strip() and x.strip() != "iterations"]
    sentence = assert_one_sentence(r.exit_code, "\n".join(lines), expect)
    assert snapshot(str(tmp_path)) == before
    return sentence


# --- cause 3: the model entry is bounded --------------------------------------------------------

def _manifest(bundle):
    with open(os.path.join(bundle, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("kind, field, value", [
    ("far", "seq_len", 65537), ("far", "seq_len", 10 ** 12), ("far", "token_dim", 4097),
    ("far", "cond_dim", 10 ** 9), ("far", "image_size", 16385), ("far", "image_channels", 5),
    ("far", "num_classes", 10 ** 7), ("mar", "diffusion_steps", 1001), ("far", "seq_len", 0),
    ("far", "token_dim", True), ("far", "cond_dim", 32.0),
    ("causal", "class_tokens", 4097), ("causal", "depth", 1025), ("causal", "heads", 10 ** 6),
    ("causal", "head_dim", 4097), ("causal", "context", 10 ** 9),
])
def test_every_model_field_is_bounded(bundles, causal_bundle, kind, field, value):
    m = _manifest(sources(bundles, causal_bundle)[kind])
    m["model"][field] = value
    with pytest.raises(FarError, match=rf"model\.{field} is .*not an integer in \d+\.\.\d+"):
        check_structure(m, "x/manifest.json")


@pytest.mark.parametrize("change", [
    {"max_batch": 1024, "model": {"seq_len": 65536, "token_dim": 4096}},     # head rows x C
    {"max_batch": 1024, "model": {"seq_len": 4096, "cond_dim": 65536}},      # z of the largest head call
    {"max_batch": 512, "model": {"seq_len": 2048, "image_size": 16384}},     # the decoded images
])
def test_buffer_sizes_over_the_cap_are_one_sentence(bundles, change):
    """Every field within its bound, but a buffer of the largest run past 16 GiB: refused at
    load, in one sentence, before anything is allocated."""
    m = _manifest(bundles["far"])
    m["max_batch"] = change["max_batch"]
    m["model"].update(change["model"])
    with pytest.raises(FarError, match=r"would need over 16 GiB at shape .*past the runtime's limit") as e:
        check_structure(m, "x/manifest.json")
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_respacing_head_steps_precision_and_names_are_checked(bundles):
    m = _manifest(bundles["mar"])
    m["model"]["timestep_respacing"] = "ddim" + "9" * 5000
    with pytest.raises(FarError, match="respacing cannot be used|timestep_respacing"):
        check_structure(m, "x/manifest.json")
    m = _manifest(bundles["far"])
    m["head_steps"] = [3]
    with pytest.raises(FarError, match="head_steps"):
        check_structure(m, "x/manifest.json")
    m = _manifest(bundles["far"])
    m["precision"] = "../../elsewhere"             # names the engine folder: a path in disguise
    with pytest.raises(FarError, match="precision"):
        check_structure(m, "x/manifest.json")
    m = _manifest(bundles["far"])
    m["graphs"]["x\x1b[2J"] = m["graphs"]["backbone"]  # printed by info: no terminal escapes
    with pytest.raises(FarError, match="not a plain name"):
        check_structure(m, "x/manifest.json")
    m = _manifest(bundles["far"])
    m["graphs"]["backbone"]["files"] = 1.5             # found by the manifest fuzz target
    with pytest.raises(FarError, match="has no 'files' object"):
        check_structure(m, "x/manifest.json")


# --- cause 3: the manifest's dims against the graphs' declared shapes ----------------------------

@pytest.mark.parametrize("kind, edit, expect", [
    ("far", {"token_dim": 5}, "does not match the manifest"),
    ("far", {"seq_len": 17}, "does not match the manifest"),
    ("far", {"cond_dim": 64}, "does not match the manifest"),
    ("far", {"image_channels": 4}, "decodes RGB images"),
    ("causal", {"depth": 3}, "manifest's model entry (depth 3"),
    ("causal", {"heads": 4, "head_dim": 8}, "manifest's model entry (depth 2, heads 4"),
    ("causal", {"class_tokens": 3, "context": 18}, "context 18"),
])
def test_manifest_dims_are_checked_against_the_hashed_graphs(bundles, causal_bundle, tmp_path, kind, edit, expect):
    """A self-consistent manifest whose dims the (hashed) graphs do not declare: one sentence,
    exit 2, before any of that graph's buffers exist (today: an ONNX Runtime traceback)."""
    b = copy_bundle(sources(bundles, causal_bundle)[kind], str(tmp_path / "b"))
    edit_manifest(b, lambda m: (m["model"].update(edit), m)[1])
    assert_refused(tmp_path, b, expect)


def test_info_checks_every_graph_and_prints_the_digest(bundles, tmp_path):
    b = copy_bundle(bundles["far"], str(tmp_path / "b"))
    r = run_cli(["info", b], runtime=True)
    assert r.exit_code == 0 and "graph shapes checked" in r.output
    assert re.search(r"^digest\s+[0-9a-f]{64}$", r.output, re.M)
    edit_manifest(b, lambda m: (m["model"].update(cond_dim=64), m)[1])   # only the heads declare D
    r = run_cli(["info", b], runtime=True)
    assert_one_sentence(r.exit_code, r.stderr, "does not match the manifest")


# --- cause 5: the manifest's size --------------------------------------------------------------

def test_manifest_over_64_mb_is_refused_before_it_is_read(bundles, tmp_path):
    """A sparse file one byte over the limit: refused by its size (os.fstat), in the C++
    runtime's own sentence; a file of the same size that were read would be 'not valid JSON'."""
    b = copy_bundle(bundles["far"], str(tmp_path / "b"))
    with open(os.path.join(b, "manifest.json"), "r+b") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)                     # sparse: no block written
    sentence = assert_refused(tmp_path, b, "is too large to be a bundle manifest")
    assert sentence == f"{os.path.join(b, 'manifest.json')} is too large to be a bundle manifest."


# --- cause 6: ONNX Runtime failures during a run -------------------------------------------------

def test_a_graph_failing_during_a_run_is_one_sentence(bundles, tmp_path):
    """image_size is a symbolic dim of the exported decoder, so no declaration can check it:
    a manifest that says 16 where the graph makes 8 fails inside the run, at the decoder."""
    b = copy_bundle(bundles["far"], str(tmp_path / "b"))
    edit_manifest(b, lambda m: (m["model"].update(image_size=16), m)[1])
    sentence = assert_refused(tmp_path, b, "ONNX Runtime failed to run graph 'vae_decoder'")
    assert "{'batch': 1}" in sentence and "image [1, 3, 16, 16]" in sentence and "tokens [1, 16, 4]" in sentence


@pytest.mark.parametrize("backend,library", [("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")])
def test_a_backend_call_with_wrong_shapes_names_the_graph_and_shapes(causal_bundle, backend, library):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="far-runtime[openvino] is not installed")
    pipe = Pipeline.load(causal_bundle, threads=1, backend=backend)
    feeds = {"token": np.zeros((2, 4), np.float32), "pos": np.zeros(1, np.int64),
             "cache": np.zeros((2, 2, 2, 2, 5, 16), np.float32)}             # T 5, not 17
    with pytest.raises(FarError) as e:
        pipe.backend.run(make_call("causal_step", batch=2, slot=0), feeds)
    msg = str(e.value)
    assert msg.startswith(f"{library} failed to run graph 'causal_step' at {{'batch': 2, 'slot': 0}}")
    assert "cache [2, 2, 2, 2, 5, 16]" in msg and "cache_out [2, 2, 2, 2, 17, 16]" in msg
    assert "\n" not in msg and msg.endswith(".")


# --- cause 9 (the .npz loader) -----------------------------------------------------------------

def _npz(tmp_path, name, **arrays):
    p = str(tmp_path / name)
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def _npy_header_bomb(tmp_path):
    """orders.npy declaring a shape of 2**40 x 2**20 int64 (8 EiB), with 16 bytes of data."""
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 16
    p = str(tmp_path / "bomb.npz")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("orders.npy", npy)
        z.writestr("noise.npy", npy)
    return p


@pytest.mark.parametrize("case, expect", [
    ("pickle", "not int64"), ("dtype", "not int64"), ("shape", "do not belong together"),
    ("permutation", "not permutations"), ("extra", "not orders, noise"), ("bomb", "past the runtime's limit"),
    ("header", "header numpy cannot parse"), ("truncated", "truncated"), ("text", "not a readable .npz"),
])
def test_saved_randomness_is_untrusted_input(tmp_path, case, expect):
    good = draw_randomness(1, 2, 16, 4)
    o, n = good.orders, good.noise
    p = {
        "pickle": lambda: _npz(tmp_path, "p.npz", orders=np.array([{"a": 1}], dtype=object), noise=n),
        "dtype": lambda: _npz(tmp_path, "d.npz", orders=o.astype(np.float64), noise=n),
        "shape": lambda: _npz(tmp_path, "s.npz", orders=o, noise=n[:, :8]),
        "permutation": lambda: _npz(tmp_path, "r.npz", orders=np.full_like(o, 99), noise=n),
        "extra": lambda: _npz(tmp_path, "e.npz", orders=o, noise=n, code=np.zeros(1)),
        "bomb": lambda: _npy_header_bomb(tmp_path),
        "header": lambda: _corrupt_header(tmp_path, o, n),
        "truncated": lambda: _truncated(tmp_path, o, n),
        "text": lambda: str(tmp_path / "t.npz") if (tmp_path / "t.npz").write_text("hello") else None,
    }[case]()
    with pytest.raises(FarError, match=re.escape(expect)) as e:
        Randomness.load(p)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def _corrupt_header(tmp_path, o, n):
    buf = io.BytesIO()
    np.save(buf, o)
    npy = buf.getvalue().replace(b"'descr'", b"'descX'")
    p = str(tmp_path / "h.npz")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("orders.npy", npy)
        z.writestr("noise.npy", npy)
    return p


def _truncated(tmp_path, o, n):
    buf = io.BytesIO()
    np.save(buf, n)
    p = str(tmp_path / "c.npz")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("orders.npy", _npy_bytes(o))
        z.writestr("noise.npy", buf.getvalue()[:-40])
    return p


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_saved_randomness_round_trips(tmp_path):
    for steps in (0, 3):
        r = draw_randomness(5, 2, 16, 4, steps)
        r.save(str(tmp_path / "r.npz"))
        back = Randomness.load(str(tmp_path / "r.npz"))
        assert np.array_equal(back.orders, r.orders) and np.array_equal(back.noise, r.noise)
        assert (back.step_noise is None) == (steps == 0)


# --- the bundle digest ---------------------------------------------------------------------------

def reference_digest(root: str) -> str:
    """The README's definition, independently: sha256 of `sha256sum`'s lines for manifest.json
    and every file the manifest names, sorted by name."""
    with open(os.path.join(root, "manifest.json")) as f:
        m = json.load(f)
    names = sorted({"manifest.json", *(n for g in m["graphs"].values() for n in g["files"])})
    lines = "".join(f"{hashlib.sha256(open(os.path.join(root, n), 'rb').read()).hexdigest()}  {n}\n"
                    for n in names)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_digest_is_the_readme_definition_and_info_prints_it(bundles, causal_bundle):
    for root in (bundles["far"], bundles["mar"], causal_bundle):
        d = reference_digest(root)
        assert bundle_digest(root) == d == load_bundle(root).digest
        r = run_cli(["info", root, "--json"], runtime=True)
        assert r.exit_code == 0 and json.loads(r.output)["digest"] == d


def test_digest_matches_sha256sum(bundles):
    root = bundles["far"]
    names = sorted({n for g in _manifest(root)["graphs"].values() for n in g["files"]} | {"manifest.json"})
    listing = subprocess.run(["sha256sum", *names], cwd=root, capture_output=True, text=True, check=True).stdout
    lines = "".join(sorted(listing.splitlines(keepends=True), key=lambda x: x[66:]))
    assert hashlib.sha256(lines.encode()).hexdigest() == bundle_digest(root)


def test_loaders_take_an_expected_digest(bundles, tmp_path):
    b = copy_bundle(bundles["far"], str(tmp_path / "b"))
    good = bundle_digest(b)
    Pipeline.load(b, digest=good.upper())                 # either case
    r = run_cli(generate_args(b, str(tmp_path / "ok.png"), "--K", "2", "--digest", good), runtime=True)
    assert r.exit_code == 0, r.output
    os.unlink(tmp_path / "ok.png")
    # whoever can write the folder changes the model entry and nothing else: hashes still match
    edit_manifest(b, lambda m: (m["model"].update(vae_scale=1.0), m)[1])
    with pytest.raises(FarError, match=f"has digest [0-9a-f]{{64}}, not the expected {good}"):
        Pipeline.load(b, digest=good)
    assert_refused(tmp_path, b, f"not the expected {good}", "--digest", good)
    assert_refused(tmp_path, b, "must be 64 hexadecimal digits", "--digest", "abc")
    with pytest.raises(FarError, match="64 hexadecimal digits"):
        Pipeline.load(b, digest="g" * 64)


def test_export_prints_the_digest_it_wrote(tiny_files, tmp_path):
    """``far-export export``/``build`` print the bundle digest an app pins (issue 26)."""
    from click.testing import CliRunner
    from far_export.cli import main
    from far_runtime.bundle import bundle_digest
    out = str(tmp_path / "b")
    res = CliRunner().invoke(main, ["export", tiny_files["far"], "--out", out, "--components", "head",
                                    "--head-steps", "1", "--validate-batches", "1"])
    assert res.exit_code == 0, res.output
    assert f"bundle digest {bundle_digest(out)} " in res.output
