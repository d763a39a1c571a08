"""FAR-Causal: checkpoint layout, reference (cache == recompute), export grid,
inspect, build and one-sentence errors, on tiny random causal checkpoints (runtime parity:
test_variant_parity.py; bench: test_bench.py; training and evaluation: test_demo.py)."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from far_export.checkpoint import build_model, load_model_checkpoint
from far_export.cli import main
from far_export.families.causal import sample_causal
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

L = 16


@pytest.fixture(scope="module")
def reference(causal_files):
    return build_model(load_model_checkpoint(causal_files["ckpt"]))


def test_checkpoint_layout_names(causal_files):
    ck = load_model_checkpoint(causal_files["ckpt"])
    assert ck.config.kind == "causal" and ck.weights == "model_ema"
    bb = ck.config.backbone
    assert (bb.seq_len, bb.class_tokens, bb.width, bb.depth, bb.heads) == (L, 2, 32, 2, 2)
    assert bb.heads_rule == "args.num_heads"
    top = {k.split(".")[0] for k in ck.state_dict}
    assert top == {"tok_embed", "class_emb", "fake_latent", "pos_embed", "blocks", "norm",
                   "head_pos_embed", "diffloss"}
    for name in ("blocks.1.attn.qkv.weight", "blocks.1.attn.proj.bias", "blocks.0.mlp.fc1.weight",
                 "blocks.0.mlp.fc2.weight", "blocks.0.norm1.weight", "norm.weight",
                 "diffloss.net.step_embed.mlp.0.weight"):
        assert name in ck.state_dict
    assert tuple(ck.state_dict["pos_embed"].shape) == (1, 2 + L - 1, 32)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_reference_cache_equals_recompute(reference, cfg):
    bb, head = reference
    rnd = draw_randomness(2, 3, L, 4)
    a = sample_causal(bb, head, [0, 4, 9], head_steps=2, cfg=cfg, randomness=rnd, temperature=0.9)
    b = sample_causal(bb, head, [0, 4, 9], head_steps=2, cfg=cfg, randomness=rnd, temperature=0.9,
                      use_cache=False)
    assert float((a - b).abs().max()) < 1e-5
    # The class matters (the prefix is not ignored) and the randomness is used per position.
    c = sample_causal(bb, head, [1, 4, 9], head_steps=2, cfg=cfg, randomness=rnd, temperature=0.9)
    assert float((a[0] - c[0]).abs().max()) > 1e-3 and float((a[1:] - c[1:]).abs().max()) == 0.0


def test_reference_ignores_orders_uses_noise(reference):
    bb, head = reference
    rnd = draw_randomness(5, 2, L, 4)
    a = sample_causal(bb, head, [1, 2], head_steps=1, randomness=rnd)
    rnd.orders = rnd.orders[:, ::-1].copy()
    assert torch.equal(a, sample_causal(bb, head, [1, 2], head_steps=1, randomness=rnd))
    rnd.noise[:, -1] += 1.0
    b = sample_causal(bb, head, [1, 2], head_steps=1, randomness=rnd)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_export_validation_grid(built):
    bundle, output = built
    rep = json.load(open(os.path.join(bundle, "validation.json")))
    for name in ("causal_prefill", "causal_step", "causal_recompute"):
        assert rep[name]["passed"], name
        assert rep[name]["worst_rel_to_max"] < 1e-4
    steps = {(p["dims"]["token"], p["dims"]["batch"], p["dims"]["cfg"])
             for p in rep["causal_step"]["points"]}
    assert steps == {(t, r * (2 if c else 1), c) for t in (1, L // 2, L - 1)
                     for r in (1, 3) for c in (False, True)}
    assert {p["dims"]["token"] for p in rep["causal_prefill"]["points"]} == {0}
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert manifest["model"]["kind"] == "causal" and manifest["model"]["context"] == L + 1
    cache = manifest["graphs"]["causal_step"]["spec"]["inputs"][2]
    assert cache["name"] == "cache" and cache["dims"] == [2, 2, "batch", 2, L + 1, 16]
    assert "backbone" not in manifest["graphs"]
    verify = json.load(open(os.path.join(bundle, "verify.json")))
    assert verify["passed"] and {r["mode"] for r in verify["results"]} == {"cache", "recompute"}
    assert all(len(r["per_iteration_latent_max_abs"]) == L for r in verify["results"])


def test_runtime_cache_buffers_do_not_move(built):
    """The step calls alternate two preallocated bindings; a run leaves the plan's shapes."""
    pipe = Pipeline.load(built[0])
    plan = pipe.plan(2, None, 2, 3.0)
    keys = {c.key for c in plan.distinct()}
    assert len([k for k in keys if k[0] == "causal_step"]) == 2
    assert all(dict(c.dims)["batch"] == 4 for c in plan.distinct() if c.graph.startswith("causal"))
    a = pipe.generate([1, 2], O=2, cfg=3.0, seed=1)
    b = pipe.generate([1, 2], O=2, cfg=3.0, seed=1)
    assert a.shape == (2, 8, 8, 3) and np.array_equal(a, b)
    # What the docs claim for ONNX Runtime on CPU: each slot writes its cache into one
    # preallocated array, the same on every step (no copy); the two slots are distinct.
    cache = pipe.backend.run(plan.prefill, {"labels": np.array([1, 2, 10, 10])})["cache"]
    feeds = {"token": np.zeros((4, 4), np.float32), "pos": np.array([2])}
    s0 = pipe.backend.run(plan.steps[0], {**feeds, "cache": cache})["cache_out"]
    s1 = pipe.backend.run(plan.steps[1], {**feeds, "cache": s0})["cache_out"]
    again = pipe.backend.run(plan.steps[0], {**feeds, "cache": s1})["cache_out"]
    assert again is s0 and not np.shares_memory(s0, s1)


def test_inspect_tells_kinds_apart(causal_files):
    r = CliRunner()
    causal = json.loads(r.invoke(main, ["inspect", causal_files["ckpt"], "--json"]).output)
    far = json.loads(r.invoke(main, ["inspect", causal_files["far"], "--json"]).output)
    assert causal["kind"] == "far-causal" and far["kind"] == "far"
    assert causal["config"]["backbone"]["class_tokens"] == 2
    text = r.invoke(main, ["inspect", causal_files["ckpt"], "--vae", causal_files["vae"]]).output
    assert "far-causal" in text and "causal transformer" in text and "vae decoder" in text


def _load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True, map_location="cpu")


def _one_sentence_exit_2(res):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_bad_inputs_are_one_sentence(built, causal_files, tmp_path):
    pipe = Pipeline.load(built[0])
    with pytest.raises(FarError, match="K is L = 16"):
        pipe.generate_tokens([1], K=8)
    with pytest.raises(FarError, match="unknown"):
        pipe.generate_tokens([10])
    with pytest.raises(FarError, match="max batch"):
        pipe.generate_tokens(list(range(9)))
    with pytest.raises(FarError, match="mode"):
        pipe.generate_tokens([1], mode="full")
    with pytest.raises(FarError, match="Randomness"):
        pipe.generate_tokens([1], randomness=draw_randomness(0, 1, L - 1, 4))
    with pytest.raises(FarError, match="CFG schedule"):
        pipe.generate_tokens([1], cfg=2.0, cfg_schedule="cosine")
    bb, head = build_model(load_model_checkpoint(causal_files["ckpt"]))
    with pytest.raises(FarError, match="power of two"):
        sample_causal(bb, head, [1], head_steps=3)
    # A corrupt checkpoint: positions that do not fit together; a diffusion head.
    sd = _load(causal_files["ckpt"])
    sd["model_ema"]["pos_embed"] = sd["model_ema"]["pos_embed"][:, :5]
    bad = str(tmp_path / "bad.pth")
    torch.save(sd, bad)
    r = CliRunner()
    _one_sentence_exit_2(r.invoke(main, ["inspect", bad]))
    sd = _load(causal_files["ckpt"])
    for k in [k for k in sd["model_ema"] if "step_embed" in k]:
        del sd["model_ema"][k]
    torch.save(sd, bad)
    res = r.invoke(main, ["inspect", bad])
    _one_sentence_exit_2(res)
    assert "shortcut head" in res.output
    res = r.invoke(main, ["build", causal_files["ckpt"], "--vae", causal_files["vae"],
                          "--out", str(tmp_path / "b"), "--precision", "fp16"])
    _one_sentence_exit_2(res)
    res = r.invoke(main, ["verify", built[0], "--K", "4"])
    _one_sentence_exit_2(res)


SHIPPED = os.path.join(os.path.dirname(__file__), "..", "far_export", "demo", "assets",
                       "far_causal_demo.pth")


def test_shipped_causal_demo_loads_and_samples():
    ck = load_model_checkpoint(SHIPPED)
    assert ck.config.kind == "causal" and ck.weights == "model_ema"
    assert (ck.config.backbone.seq_len, ck.config.backbone.token_dim) == (64, 16)
    assert ck.args.trained_steps > 1000
    bb, head = build_model(ck)
    tokens = sample_causal(bb, head, [0, 3], head_steps=2, cfg=5.0, cfg_schedule="constant",
                           temperature=0.8, seed=1)
    assert tokens.shape == (2, 64, 16) and torch.isfinite(tokens).all()


def test_verify_status_accepts_a_fresh_causal_report(built, tmp_path):
    """verify writes ``judged`` like the FAR report, so ``verify --status`` reads it back."""
    r = CliRunner()
    out = str(tmp_path / "v.json")
    res = r.invoke(main, ["verify", built[0], "--O", "1", "--cfg", "1.0", "--out", out])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["verify", built[0], "--status", "--out", out])
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output
    assert r.invoke(main, ["verify", built[0], "--status"]).exit_code == 0   # build's own report
    rep = json.load(open(out))
    rep["judged"]["checkpoint_sha256"] = "0" * 64                            # another checkpoint
    json.dump(rep, open(out, "w"))
    _one_sentence_exit_2(r.invoke(main, ["verify", built[0], "--status", "--out", out]))


def test_generate_checks_options_like_pipeline(built):
    pipe = Pipeline.load(built[0])
    for kw, match in ((dict(cfg=float("nan")), "finite"), (dict(temperature=-0.5), "temperature"),
                      (dict(seed=-1), "seed"), (dict(O="2"), "integer")):
        with pytest.raises(FarError, match=match):
            pipe.generate([1], **kw)
    assert pipe.generate([1], K=np.int64(L), O=1, seed=np.int64(2)).shape == (1, 8, 8, 3)


def test_generate_cli_defaults_k_to_l(built, tmp_path):
    """--K left out means L for a causal bundle (16 for FAR/MAR); another K is one sentence."""
    from far_runtime.cli import main as runtime_main
    r = CliRunner()
    for cli in (runtime_main, main):
        png = str(tmp_path / f"{cli.name}.png")
        res = r.invoke(cli, ["generate", built[0], "--num", "2", "--O", "1", "--out", png])
        assert res.exit_code == 0, res.output
        assert os.path.getsize(png) > 0
    res = r.invoke(runtime_main, ["generate", built[0], "--num", "1", "--K", "8", "--out", png])
    _one_sentence_exit_2(res)
    assert "K is L = 16" in res.output


def test_sample_cli_runs_the_causal_reference(causal_files, tmp_path):
    r = CliRunner()
    png = str(tmp_path / "ref.png")
    res = r.invoke(main, ["sample", causal_files["ckpt"], "--vae", causal_files["vae"], "--num", "2",
                          "--O", "2", "--cfg", "2.0", "--out", png])
    assert res.exit_code == 0, res.output
    assert os.path.getsize(png) > 0
    _one_sentence_exit_2(r.invoke(main, ["sample", causal_files["ckpt"], "--vae", causal_files["vae"],
                                         "--K", "4", "--out", png]))


def _set(**kv):
    def fn(m):
        m["model"].update(kv)
        return m
    return fn


CAUSAL_MANIFESTS = {
    "unknown-kind": (_set(kind="gpt"), "model.kind is 'gpt'"),
    "class-tokens-str": (_set(class_tokens="2"), "model.class_tokens"),
    "context-zero": (_set(context=0), "model.context is 0"),
    "depth-negative": (_set(depth=-1), "model.depth"),
    "heads-float": (_set(heads=1.5), "model.heads is 1.5"),
    "head-dim-missing": (_set(head_dim=None), "model.head_dim"),
    "context-mismatch": (_set(context=L + 5), "class_tokens + seq_len - 1"),
    "heads-x-dim": (_set(heads=4), "model.cond_dim"),
    "head-kind": (_set(head_kind="diffusion", diffusion_steps=10), "not 'shortcut'"),
}


@pytest.mark.parametrize("case", sorted(CAUSAL_MANIFESTS))
def test_tampered_causal_manifest_is_one_sentence(built, tmp_path, case):
    from bad_input_helpers import assert_one_sentence, copy_bundle, edit_manifest, run_cli
    fn, expect = CAUSAL_MANIFESTS[case]
    b = copy_bundle(built[0], str(tmp_path / "b"))
    assert run_cli(["info", b], runtime=True).exit_code == 0
    edit_manifest(b, fn)
    for args, runtime in ((["info", b], True), (["generate", b, "--num", "1", "--O", "1",
                                                 "--out", str(tmp_path / "g.png")], False)):
        res = run_cli(args, runtime=runtime)
        assert_one_sentence(res.exit_code, res.stderr, expect)
    assert not os.path.exists(tmp_path / "g.png")


def test_causal_build_replaces_a_far_bundle_whole(causal_files, tmp_path):
    """A causal build over a FAR bundle (the default --out) leaves none of the FAR files, and
    says only what it wrote."""
    r = CliRunner()
    out = str(tmp_path / "default")
    res = r.invoke(main, ["export", causal_files["far"], "--vae", causal_files["vae"], "--out", out,
                          "--head-steps", "1", "--validate-batches", "1"])
    assert res.exit_code == 0, res.output
    assert {"backbone.onnx", "trt_readiness.json"} <= set(os.listdir(out))
    res = r.invoke(main, ["build", causal_files["ckpt"], "--vae", causal_files["vae"], "--out", out,
                          "--head-steps", "1", "--validate-batches", "1", "--skip-verify"])
    assert res.exit_code == 0, res.output
    assert "trt_readiness.json" in res.output and "validation.json" in res.output
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["model"]["kind"] == "causal"
    files = {f for g in manifest["graphs"].values() for f in g["files"]}
    assert set(os.listdir(out)) == files | {"manifest.json", "validation.json", "trt_readiness.json"}
    assert set(json.load(open(os.path.join(out, "trt_readiness.json")))) == set(manifest["graphs"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]     # no staging, no lock


# --- one path for every family: the drifts of the causal twins, each fixed by construction ---

def test_heads_contradicting_a_causal_checkpoint_need_force(causal_files, tmp_path):
    """The checkpoint's args say 2 heads: --heads 4 is refused unless forced (as for FAR/MAR),
    and a bundle exported with forced heads verifies against a reference with those heads."""
    with pytest.raises(FarError, match="contradicts the checkpoint"):
        load_model_checkpoint(causal_files["ckpt"], heads=4)
    forced = load_model_checkpoint(causal_files["ckpt"], heads=4, force_heads=True).config.backbone
    assert forced.heads == 4 and forced.heads_rule == "user option (forced)"
    same = load_model_checkpoint(causal_files["ckpt"], heads=2).config.backbone
    assert same.heads == 2 and same.heads_rule == "user option"
    r = CliRunner()
    _one_sentence_exit_2(r.invoke(main, ["inspect", causal_files["ckpt"], "--heads", "4"]))
    out = str(tmp_path / "forced")
    res = r.invoke(main, ["build", causal_files["ckpt"], "--out", out, "--components", "backbone,head",
                          "--head-steps", "1", "--validate-batches", "1", "--heads", "4",
                          "--force-heads"])
    assert res.exit_code == 0, res.output
    assert json.load(open(os.path.join(out, "manifest.json")))["model"]["heads"] == 4
    assert json.load(open(os.path.join(out, "verify.json")))["passed"]


@pytest.mark.parametrize("kind", ["far", "causal"])
def test_verify_requires_every_iteration_finite(bundles, built, kind, tmp_path, monkeypatch):
    """A runtime whose latent is NaN after one iteration (and finite at the end) fails verify,
    whatever the family: one finiteness rule, every iteration."""
    from far_export.verify import verify_bundle
    real = Pipeline.generate_tokens

    def nan_midway(self, *a, trace=None, **kw):
        out = real(self, *a, trace=trace, **kw)
        if trace:
            trace[len(trace) // 2] = trace[len(trace) // 2].copy()
            trace[len(trace) // 2][0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(Pipeline, "generate_tokens", nan_midway)
    bundle = bundles["far"] if kind == "far" else built[0]
    rep = verify_bundle(bundle, str(tmp_path / "v.json"), O=1, cfg=1.0, batch=1)
    assert not rep["passed"]
    assert rep["results"] and not any(r["finite"] for r in rep["results"])
