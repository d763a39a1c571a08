"""The C++ runtime on FAR-Causal bundles: bit-identical latents and byte-identical PNG files
against the Python runtime over batch x CFG x O x head (C API and far-generate), K left out
meaning L, the plan's graph calls, and the same one-sentence refusals (K != L, a batch over
the bundle's, a missing graph, tampered causal model fields)."""
import threading

import numpy as np
import pytest

from cpp_helpers import (as_bounded, causal_bundle, cpp_build, edited_copy, far_generate, last_lines,  # noqa: F401 (fixtures)
                         python_generate)
from far_cpp import CError, CRuntime, RunStats
from far_runtime.bundle import load_bundle
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline

L = 16
GRID = [(B, cfg, O, head) for B in (1, 3) for cfg in (1.0, 3.0) for O in (1, 2) for head in ("fused", "step")]


@pytest.fixture(scope="module")
def py_causal(causal_bundle):
    return Pipeline.load(causal_bundle, threads=1)


@pytest.fixture(scope="module")
def c_causal(cpp_build, causal_bundle):
    rt = CRuntime(cpp_build["lib"], causal_bundle)
    yield rt
    rt.close()


# --- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,cfg,O,head", GRID)
def test_c_api_latents_and_images_identical(c_causal, py_causal, B, cfg, O, head):
    labels = [(3 * i + 2 * O) % 10 for i in range(B)]
    kw = dict(O=O, cfg=cfg, seed=B + 5 * O, temperature=0.9, head=head)
    a = py_causal.generate_tokens(labels, **kw)
    b = c_causal.tokens(labels, **kw)                 # K = 0: FAR_K_DEFAULT, L for FAR-Causal
    assert a.dtype == b.dtype and a.shape == b.shape == (B, L, 4)
    assert a.tobytes() == b.tobytes(), float(np.abs(a - b).max())
    assert np.array_equal(py_causal.generate(labels, **kw), c_causal.images(labels, **kw))


@pytest.mark.parametrize("B,cfg,O,head", GRID)
def test_cli_writes_the_same_png(cpp_build, causal_bundle, tmp_path, B, cfg, O, head):
    args = ["--num", B, "--class", "1,7", "--O", O, "--cfg", cfg, "--head", head, "--seed", 3, "--temperature", 0.8,
            "--threads", 1]
    if O == 2:
        args += ["--K", L]                            # given as L: the same as left out
    py = python_generate(causal_bundle, *args, "--out", tmp_path / "py.png", "--save-randomness", tmp_path / "py.npz")
    assert py.exit_code == 0, py.output
    cc = far_generate(cpp_build, causal_bundle, *args, "--out", tmp_path / "c.png", "--save-randomness", tmp_path / "c.npz")
    assert cc.returncode == 0, cc.stderr
    assert cc.stdout.strip().replace("c.png", "py.png") == py.output.strip().splitlines()[-1]
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "py.png").read_bytes()
    with np.load(tmp_path / "py.npz") as p, np.load(tmp_path / "c.npz") as c:
        assert sorted(p.files) == sorted(c.files)
        for k in p.files:
            assert p[k].tobytes() == c[k].tobytes()


def test_k_default_and_constant_schedule(c_causal, py_causal):
    """K = 0 (the C API's default) and K = L give the same run; the constant schedule too."""
    kw = dict(O=2, cfg=2.5, seed=11, schedule="constant")
    a = c_causal.tokens([4, 5], **kw)
    assert a.tobytes() == c_causal.tokens([4, 5], K=L, **kw).tobytes()
    want = py_causal.generate_tokens([4, 5], O=2, cfg=2.5, seed=11, cfg_schedule="constant")
    assert a.tobytes() == want.tobytes()


@pytest.mark.parametrize("O,head,per_token", [(2, "fused", 1), (2, "step", 2), (1, "step", 1)])
def test_graph_calls_follow_the_plan(c_causal, O, head, per_token):
    """One prefill, L - 1 cached steps, the head calls of every token, and the decoder."""
    st = RunStats()
    c_causal.tokens([1, 2], stats=st, O=O, head=head, cfg=3.0)
    assert st.graph_calls == 1 + (L - 1) + L * per_token
    st = RunStats()
    c_causal.images([1], stats=st, O=O, head=head)
    assert st.graph_calls == 1 + (L - 1) + L * per_token + 1


def test_one_causal_runtime_shared_by_threads(c_causal):
    """Each call's cache buffers live in its own workspace: concurrent runs do not mix."""
    jobs = [([i % 10], dict(O=(1, 2)[i % 2], cfg=(1.0, 3.0)[i % 2], seed=i)) for i in range(4)]
    want = [c_causal.tokens(lab, **kw) for lab, kw in jobs]
    got, errors = [None] * len(jobs), []

    def work(i):
        try:
            for _ in range(2):
                got[i] = c_causal.tokens(jobs[i][0], **jobs[i][1])
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


# --- refusals: the same sentence from both runtimes --------------------------------------------

@pytest.mark.parametrize("args", [["--K", 8], ["--K", 300], ["--K", 0], ["--num", 9], ["--O", 3], ["--O", 4, "--head", "fused"],
                                  ["--class", "10"]])
def test_cli_refusals_are_pythons(cpp_build, causal_bundle, tmp_path, args):
    py = python_generate(causal_bundle, *args, "--out", tmp_path / "x.png")
    cc = far_generate(cpp_build, causal_bundle, *args, "--out", tmp_path / "x.png")
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    py_line, cc_line = last_lines(py, cc)
    assert cc_line == py_line
    assert not (tmp_path / "x.png").exists()


def test_k_other_than_l_is_one_sentence(cpp_build, causal_bundle):
    r = far_generate(cpp_build, causal_bundle, "--K", 8)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: FAR-Causal predicts one token per step, so K is L = 16 by construction; got K=8 (leave K out)."]


@pytest.mark.parametrize("labels,kw", [([1], dict(K=8)), ([1], dict(K=-1)), (list(range(9)), {}), ([1], dict(O=3)),
                                       ([1], dict(O=4, head="fused")), ([1], dict(cfg=2.0, schedule="cosine"))])
def test_c_api_refusals_are_pythons(c_causal, py_causal, labels, kw):
    py_kw = {("cfg_schedule" if k == "schedule" else k): v for k, v in kw.items()}
    with pytest.raises(FarError) as py:
        py_causal.generate_tokens(labels, **py_kw)
    with pytest.raises(CError) as cc:
        c_causal.tokens(labels, **kw)
    assert cc.value.code == 1 and cc.value.message == str(py.value)
    assert c_causal.tokens([1], O=1).shape == (1, L, 4)        # still works after errors


def _set(**kv):
    return lambda m: m["model"].update(kv)


def _drop_graph(name):
    return lambda m: m["graphs"].pop(name)


TAMPERED = {                                   # tests/test_causal.py's cases, and a few more
    "unknown-kind": _set(kind="gpt"),
    "kind-not-a-string": _set(kind=5),
    "class-tokens-str": _set(class_tokens="2"),
    "context-zero": _set(context=0),
    "depth-negative": _set(depth=-1),
    "depth-bool": _set(depth=True),
    "heads-float": _set(heads=1.5),
    "head-dim-missing": _set(head_dim=None),
    "context-mismatch": _set(context=L + 5),
    "heads-x-dim": _set(heads=4),
    "head-kind": _set(head_kind="diffusion", diffusion_steps=10),
    "no-step-graph": _drop_graph("causal_step"),
    "no-prefill-graph": _drop_graph("causal_prefill"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_causal_manifest_is_pythons_sentence(cpp_build, causal_bundle, tmp_path, case):
    b = edited_copy(causal_bundle, tmp_path / "b", TAMPERED[case])
    args = [b, "--num", 1, "--O", 1, "--out", tmp_path / "x.png"]
    py, cc = python_generate(*args), far_generate(cpp_build, *args)
    assert py.exit_code == 2 and cc.returncode == 2, (py.output, cc.stderr)
    py_line, cc_line = last_lines(py, cc)
    assert cc_line == as_bounded(py_line) and len(cc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    if not case.startswith("no-"):                 # a manifest refused at load: the C API says the same
        with pytest.raises(FarError) as pe:
            load_bundle(b)
        with pytest.raises(CError) as ce:
            CRuntime(cpp_build["lib"], b)
        assert ce.value.code == 2 and ce.value.message == as_bounded(str(pe.value))


def test_cache_spec_must_match_the_model(cpp_build, causal_bundle, tmp_path):
    """The cache is bound from the model entry (variants/causal.py); a manifest spec that says
    otherwise is refused before any buffer is bound."""
    def edit(m):
        m["graphs"]["causal_step"]["spec"]["inputs"][2]["dims"][4] = L + 40
    b = edited_copy(causal_bundle, tmp_path / "b", edit)
    r = far_generate(cpp_build, b, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {b}/manifest.json is not a usable bundle manifest: the spec of graph 'causal_step' differs from the one "
        "its model entry implies; rebuild the bundle."]
