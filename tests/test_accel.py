"""The acceleration options (``far_runtime/accel.py``, issue #24) apart from the parity grid
(``test_variant_parity.py``'s ``OPTION_CASES``): their rules as ACCEL.md states them, the
plans they give, options that amount to the defaults giving the defaults' very bytes, every
entry point (CLI flags, ``far-export sample`` and ``verify``, the server's request keys) and
bad values refused in one sentence."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from bad_input_helpers import assert_one_sentence, run_cli, snapshot
from far_runtime.accel import AccelOptions, accel_options, resolve
from far_runtime.errors import FarError
from far_runtime.images import encode_png, grid
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness
from far_runtime.schedule import mask_schedule
from far_runtime.specs import BATCH, N_PRED, ROWS, ZROWS


@pytest.fixture(scope="module")
def far(bundles):
    return Pipeline.load(bundles["far"])


@pytest.fixture(scope="module")
def mar(bundles):
    return Pipeline.load(bundles["mar"])


def masked_opts(accel: AccelOptions, K: int, L: int, O: int, shortcut=True, S=100, use_cfg=True):
    its = mask_schedule(K, L)
    return resolve(accel, K, O, use_cfg, [it.n_known for it in its], L, shortcut, S,
                   [it.n_pred > 0 for it in its])


# --- the rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, shortcut", [("8:1", True), ("1:8", True), ("128:2", True),
                                            ("100:10", False), ("50:5", False), ("7:30", False)])
def test_head_schedule_is_linear_in_the_known_fraction(spec, shortcut):
    """'A:B': A + (B - A) x known / L, rounded down (FAR: to a power of two), exactly."""
    a, b = (int(x) for x in spec.split(":"))
    K, L = 16, 256
    opts = masked_opts(accel_options(head_schedule=spec), K, L, 8, shortcut, S=100)
    for it, o in zip(mask_schedule(K, L), opts):
        want = Fraction(a) + Fraction(b - a) * Fraction(it.n_known, L)
        if shortcut:
            p = 1
            while 2 * p <= want:
                p *= 2
            assert o.head_steps == p
        else:
            assert o.head_steps == int(want)          # floor of a positive fraction
    assert opts[0].head_steps == a


def test_guidance_interval_and_condition_cache_rules():
    """Guided iff LO*K <= s < HI*K; the cache refreshes on its first guided iteration, on s < W
    and on (s - W) % N == 0, and reuses otherwise."""
    acc = accel_options(cfg_interval="0.25:1", cfg_cache="1:3")
    opts = masked_opts(acc, 8, 256, 8)
    assert [o.guided for o in opts] == [False, False, True, True, True, True, True, True]
    assert [o.uncond for o in opts] == ["", "", "refresh", "reuse", "refresh", "reuse", "reuse", "refresh"]
    assert [o.uncond for o in masked_opts(acc, 8, 256, 8, use_cfg=False)] == [""] * 8
    opts = masked_opts(accel_options(cfg_interval="0.2:0.7"), 16, 256, 8)
    assert [s for s, o in enumerate(opts) if o.guided] == list(range(4, 12))   # 3.2 <= s < 11.2


def test_canonical_text_and_flags():
    acc = accel_options(head_schedule=[8, 4, 2], cfg_interval=(0.25, 1), cfg_cache=" 2 : 3 ")
    assert acc == AccelOptions("8,4,2", "0.25:1.0", "2:3")
    assert accel_options(cfg_interval="0.250:1.0") == accel_options(cfg_interval=".25:1")
    assert acc.flags() == ["--head-schedule", "8,4,2", "--cfg-interval", "0.25:1.0", "--cfg-cache", "2:3"]
    assert AccelOptions().off and AccelOptions().flags() == []


# --- plans ----------------------------------------------------------------------------------

def test_masked_plan_follows_the_options(far):
    """Backbone rows: 2B where the unconditional rows run, B on a reuse or unguided iteration;
    a refresh asks z at every masked position; head rows: 2B per token where guided."""
    B, K = 3, 8
    plan = far.plan(B, K, 2, 3.0, decode=False, head_schedule="8:1", cfg_interval="0.25:1", cfg_cache="1:2")
    seen = set()
    for ip in plan.iterations:
        it, (bb, *head) = ip.it, ip.calls
        seen.add(ip.uncond)
        assert bb.dim(BATCH) == (2 * B if ip.uncond in ("computed", "refresh") else B)
        assert bb.dim(N_PRED) == (it.before if ip.uncond == "refresh" else it.n_pred)
        z_rows = (2 if ip.guided else 1) * B * it.n_pred
        if ip.head_steps in (1, 2, 8):
            assert [c.graph for c in head] == [f"head_fused_o{ip.head_steps}"]
            assert head[0].dim(ZROWS) == z_rows and head[0].dim(ROWS) == B * it.n_pred
        else:                                     # O = 4: no fused graph, the step graph
            assert [c.graph for c in head] == ["head_step"] * ip.head_steps
            assert head[0].dim(ROWS) == z_rows
    assert seen == {"", "refresh", "reuse"} and plan.head_mode == "mixed"
    # known 0, 1, 2, 3, 5, 8, 10, 13 of 16: 8 - 7 x known / 16 = 8, 7.56, 7.13, 6.69, 5.81, 4.5, 3.63, 2.31
    assert [ip.head_steps for ip in plan.iterations] == [8, 4, 4, 4, 4, 4, 2, 2]


@pytest.mark.parametrize("mode, rows", [
    ("cache", [6] * 8 + [3] * 8),                      # unconditional rows until the last guided token
    ("recompute", [3] * 4 + [6] * 4 + [3] * 8)])       # only on guided tokens
def test_causal_plan_drops_the_unconditional_rows(built, mode, rows):
    pipe = Pipeline.load(built[0])
    plan = pipe.plan(3, None, 2, 3.0, decode=False, mode=mode, cfg_interval="0.25:0.5")
    assert [tp.rows for tp in plan.tokens] == rows
    assert [tp.backbone.dim(BATCH) for tp in plan.tokens] == rows
    assert [tp.guided for tp in plan.tokens] == [4 <= i < 8 for i in range(16)]
    assert [tp.head[0].dim(ZROWS) for tp in plan.tokens] == [6 if 4 <= i < 8 else 3 for i in range(16)]


def test_options_that_are_the_defaults_give_the_default_bytes(far, mar):
    """An always-refreshing cache ('0:1': z gathered from every masked position), the whole
    interval and a constant schedule change nothing, to the bit."""
    for pipe, const in ((far, ["8:8", "8,8,8,8"]), (mar, ["100:100", "100,100,100,100"])):
        kw = dict(K=4, O=8, cfg=3.0, temperature=0.9, seed=3)
        want = pipe.generate_tokens([1, 2, 3], **kw).tobytes()
        for acc in ({"cfg_cache": "0:1"}, {"cfg_interval": "0:1"}, *({"head_schedule": c} for c in const)):
            assert pipe.generate_tokens([1, 2, 3], **kw, **acc).tobytes() == want, acc


def test_options_change_the_work_and_the_flops(far):
    from far_export.flops import plan_flops
    config = far.bundle.manifest["config"]
    base = plan_flops(config, far.plan(4, 8, 8, 3.0))
    fewer = plan_flops(config, far.plan(4, 8, 8, 3.0, head_schedule="8:1"))
    assert fewer["head"] < base["head"] and fewer["backbone"] == base["backbone"]
    lazy = plan_flops(config, far.plan(4, 8, 8, 3.0, cfg_interval="0.5:1", cfg_cache="1:4"))
    assert lazy["backbone"] < base["backbone"] and lazy["head"] < base["head"]


# --- bad values ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, expect", [
    ({"head_schedule": "8:3"}, "powers of two"),
    ({"head_schedule": "8,4"}, "lists 2 values but the run has 4 iterations"),
    ({"head_schedule": "8:-1"}, "non-negative whole numbers"),
    ({"head_schedule": "8:0"}, "at least 1"),
    ({"head_schedule": 8}, "must be 'A:B'"),
    ({"cfg_interval": "0.5:0.5"}, "0 <= LO < HI <= 1"),
    ({"cfg_interval": "0:1.5"}, "0 <= LO < HI <= 1"),
    ({"cfg_interval": "nan:1"}, "plain decimal fractions"),
    ({"cfg_interval": "1e-1:1"}, "plain decimal fractions"),
    ({"cfg_interval": "0.5"}, "must be 'LO:HI'"),
    ({"cfg_cache": "1:0"}, "N >= 1"),
    ({"cfg_cache": "two:3"}, "non-negative whole numbers"),
])
def test_bad_values_are_one_sentence(far, kw, expect):
    with pytest.raises(FarError) as e:
        far.generate_tokens([1], K=4, O=2, cfg=3.0, **kw)
    msg = str(e.value)
    assert expect in msg and msg.endswith(".") and "\n" not in msg


def test_bad_values_that_depend_on_the_model(far, mar, built):
    with pytest.raises(FarError, match="at most the model's 100"):
        mar.plan(1, 4, 8, 3.0, head_schedule="200:10")
    with pytest.raises(FarError, match="no fused head graph for O=4"):
        far.plan(1, 4, 8, 3.0, head="fused", head_schedule="8:1")
    with pytest.raises(FarError, match="FAR-Causal's KV cache"):
        Pipeline.load(built[0]).plan(1, None, 2, 3.0, cfg_cache="1:2")


def test_cli_refuses_a_bad_option_before_writing_anything(bundles, tmp_path):
    before = snapshot(str(tmp_path))
    r = run_cli(["generate", bundles["far"], "--num", "2", "--K", "2", "--cfg-interval", "0.9:0.1",
                 "--out", tmp_path / "grid.png"], runtime=True)
    assert_one_sentence(r.exit_code, r.stderr, "--cfg-interval must satisfy")
    assert snapshot(str(tmp_path)) == before


# --- entry points ------------------------------------------------------------------------------

ALL = ["--head-schedule", "8:1", "--cfg-interval", "0.25:1", "--cfg-cache", "1:2"]
ALL_KW = {"head_schedule": "8:1", "cfg_interval": "0.25:1", "cfg_cache": "1:2"}


def test_generate_flags_give_the_pipeline_png(far, bundles, tmp_path):
    """``far-runtime generate`` (and so ``far-export generate``) with every option writes the
    PNG of ``Pipeline.generate`` with the same options."""
    png = str(tmp_path / "grid.png")
    r = run_cli(["generate", bundles["far"], "--class", "1,2", "--num", "3", "--K", "6", "--cfg", "3.0",
                 "--seed", "5", *ALL, "--out", png], runtime=True)
    assert r.exit_code == 0, r.output
    images = far.generate([1, 2, 1], K=6, cfg=3.0, seed=5, **ALL_KW)
    assert open(png, "rb").read() == encode_png(grid(images))
    assert open(png, "rb").read() != encode_png(grid(far.generate([1, 2, 1], K=6, cfg=3.0, seed=5)))


def test_sample_takes_the_options(tiny_files, tmp_path):
    """``far-export sample`` (the reference) draws what the reference pipeline draws with them."""
    from far_export.reference.pipeline import ReferencePipeline
    from far_runtime.images import to_uint8
    png = str(tmp_path / "ref.png")
    r = run_cli(["sample", tiny_files["far"], "--vae", tiny_files["vae"], "--num", "2", "--K", "4",
                 "--O", "2", "--cfg", "3.0", "--seed", "1", *ALL, "--out", png])
    assert r.exit_code == 0, r.output
    ref = ReferencePipeline.load(tiny_files["far"], tiny_files["vae"])
    with torch.no_grad():
        images = ref.generate([0, 0], num_iter=4, head_steps=2, cfg=3.0, seed=1, **ALL_KW)
    assert open(png, "rb").read() == encode_png(grid(to_uint8(images)))


@pytest.mark.parametrize("name, args", [
    ("far", ["--K", "6", "--O", "2", "--cfg", "3.0", *ALL]),
    ("mar", ["--K", "3", "--cfg", "3.0", "--head-schedule", "100:10", "--cfg-cache", "0:2"]),
])
def test_verify_passes_with_the_options_on(bundles, tmp_path, name, args):
    report = str(tmp_path / "verify.json")
    r = run_cli(["verify", bundles[name], "--out", report, *args])
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output and "options: --head-schedule" in r.output
    data = json.load(open(report))
    assert data["passed"] and data["accel"]["head_schedule"] in ("8:1", "100:10")
    assert all(res["head_schedule"] == data["accel"]["head_schedule"] for res in data["results"])


def test_verify_refuses_an_option_the_variant_lacks(built, tmp_path):
    r = run_cli(["verify", built[0], "--out", tmp_path / "v.json", "--cfg-cache", "1:2"])
    assert_one_sentence(r.exit_code, r.stderr, "FAR-Causal's KV cache")


def test_server_keys_group_and_run_like_generate_tokens(far):
    """The options are request settings: canonical (equal options batch together), checked
    before batching (HTTP 400 sentences), and a request's latents in a batch are its own."""
    from far_runtime.serve.batching import group_by_settings, request_randomness, run_batch
    from far_runtime.serve.requests import RequestChecker, RequestError
    chk = RequestChecker(far)
    a = chk.check({"class": 1, "seed": 4, "K": 6, "cfg": 3.0, **ALL_KW}, "latents")
    b = chk.check({"class": 2, "seed": 9, "K": 6, "cfg": 3.0, "head_schedule": "8:1",
                   "cfg_interval": "0.250:1.0", "cfg_cache": "1:2"}, "latents")
    c = chk.check({"class": 2, "seed": 9, "K": 6, "cfg": 3.0}, "latents")
    assert group_by_settings([a, b, c]) == [[0, 1], [2]]
    out = run_batch(far, [a, b, c])
    for req, got in zip((a, b), out):
        rnd = request_randomness(req.seed, far.model)
        alone = far.generate_tokens([req.label], K=6, cfg=3.0, randomness=rnd, **ALL_KW)[0]
        assert np.array_equal(np.load(__import__("io").BytesIO(got.body)), alone)
    for body, msg in (({"head_schedule": 8}, "'head_schedule' must be a string"),
                      ({"cfg_cache": "1:2:3"}, "--cfg-cache must be 'W:N'"),
                      ({"head_schedule": "8:3"}, "powers of two")):
        with pytest.raises(RequestError, match=msg):
            chk.check({"class": 1, "K": 6, "cfg": 3.0, **body})


def test_reuse_rows_stay_independent_of_batch_mates(far):
    """The kept difference is per row: a sample's latents do not depend on its batch-mates."""
    m = far.model
    kw = dict(K=8, O=2, cfg=3.0, **ALL_KW)
    rnd = draw_randomness(2, 3, m["seq_len"], m["token_dim"])
    both = far.generate_tokens([1, 5, 7], randomness=rnd, **kw)
    one = far.generate_tokens([5], randomness=type(rnd)(rnd.orders[1:2], rnd.noise[1:2]), **kw)
    np.testing.assert_allclose(both[1], one[0], rtol=0, atol=1e-6)
