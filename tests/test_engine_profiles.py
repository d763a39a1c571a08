"""Engine optimisation profiles from the shape plan (no GPU, no graph files): every shape a
plan makes, of every variant, loop mode and sampling option, lies in one profile; ranges are
split where they are wide; a range the bundle was not exported for is refused."""
import pytest

from far_runtime.bundle import Bundle
from far_runtime.errors import FarError
from far_runtime.gpu.engine_manifest import select_profile
from far_runtime.gpu.engine_profiles import derive_profiles, engine_profiles, parse_range, plan_shapes
from far_runtime.specs import fused_name
from far_runtime.variants import component_specs
from far_runtime.variants.masked import make_plan

MODEL_256 = {"seq_len": 256, "token_dim": 16, "cond_dim": 768, "num_classes": 1000,
             "head_kind": "shortcut", "diffusion_steps": 0, "image_size": 256,
             "image_channels": 3, "vae_scale": 0.2325}


def paper_bundle(head_kind="shortcut", max_batch=8) -> Bundle:
    """A manifest-only bundle of SPEC's 256-token model (profiles need no graph files)."""
    model = dict(MODEL_256, head_kind=head_kind, diffusion_steps=100 if head_kind == "diffusion" else 0)
    steps = [1, 2, 4, 8] if head_kind == "shortcut" else []
    names = ["backbone", "head_step", *[fused_name(o) for o in steps], "vae_decoder"]
    graphs = {g: {"file": f"{g}.onnx", "files": {f"{g}.onnx": "0" * 64}} for g in names}
    return Bundle("/nonexistent", {"model": model, "max_batch": max_batch, "head_steps": steps,
                                   "graphs": graphs})


# --- profiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("head_kind", ["shortcut", "diffusion"])
@pytest.mark.parametrize("k_range,batch_range", [((1, 64), (1, 4)), ((64, 64), (1, 1)), ((16, 32), (2, 8))])
def test_profiles_cover_every_plan_shape(head_kind, k_range, batch_range):
    bundle = paper_bundle(head_kind)
    profiles = engine_profiles(bundle, k_range, batch_range, max_profiles=4)
    specs = bundle.specs()
    assert set(profiles) == set(bundle.graphs)
    for graph, profs in profiles.items():
        assert 1 <= len(profs) <= 4
        for p in profs:
            assert sorted(p) == sorted(specs[graph].dynamic_dims)
            for d, (lo, opt, hi) in p.items():
                s_lo, _, s_hi = specs[graph].ranges[d]
                assert s_lo <= lo <= opt <= hi <= s_hi, (graph, d, p)
    modes = ["step"] if head_kind == "diffusion" else ["fused", "step"]
    steps = [100] if head_kind == "diffusion" else [1, 2, 4, 8]
    checked = 0
    for K in range(k_range[0], k_range[1] + 1):
        for b in range(batch_range[0], batch_range[1] + 1):
            for cfg in (False, True):
                for mode in modes:
                    for o in steps:
                        plan = make_plan(bundle.model, b, K, o, cfg, mode, True, 8)
                        for call in plan.distinct():
                            assert select_profile(profiles[call.graph], dict(call.dims)) is not None, call
                            checked += 1
    assert checked > 0


CAUSAL_16 = {"kind": "causal", "seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10,
             "head_kind": "shortcut", "diffusion_steps": 0, "class_tokens": 2, "context": 17,
             "depth": 2, "heads": 2, "head_dim": 16, "image_size": 8, "image_channels": 3,
             "vae_scale": 1.0}


def causal_bundle(max_batch=4, head_steps=(1, 2)) -> Bundle:
    """A manifest-only FAR-Causal bundle (its graph names from the variant's specs)."""
    names = list(component_specs(CAUSAL_16, max_batch, head_steps))
    graphs = {g: {"file": f"{g}.onnx", "files": {f"{g}.onnx": "0" * 64}} for g in names}
    return Bundle("/nonexistent", {"model": CAUSAL_16, "max_batch": max_batch,
                                   "head_steps": list(head_steps), "graphs": graphs})


def test_causal_profiles_cover_every_shape_of_its_plans():
    """FAR-Causal's engines get profiles from its own plans: prefill, both step bindings (one
    profile set: ``slot`` is no tensor dim), recompute at every prefix length, heads, VAE.
    (Profiles used to come from FAR's plan, which has no causal graph: none had a profile.)"""
    from far_runtime.variants import variant_for
    bundle = causal_bundle()
    profiles = engine_profiles(bundle, (1, 256), (1, 4))
    specs = bundle.specs()
    assert set(profiles) == set(bundle.graphs)
    for graph, profs in profiles.items():
        for p in profs:
            assert sorted(p) == sorted(specs[graph].dynamic_dims), (graph, p)
    variant = variant_for(CAUSAL_16)
    checked = set()
    for b in range(1, 5):
        for cfg in (False, True):
            for head, o in (("fused", 1), ("fused", 2), ("step", 2)):
                for mode in ("cache", "recompute"):
                    plan = variant.plan(CAUSAL_16, b, None, o, cfg, head, True, 4, mode)
                    for call in plan.distinct():
                        assert select_profile(profiles[call.graph], dict(call.dims)) is not None, call
                        checked.add(call.graph)
    assert checked == set(bundle.graphs)
    known = [p["n_known"] for p in profiles["causal_recompute"]]
    assert (min(k[0] for k in known), max(k[2] for k in known)) == (1, 15)     # prefixes 1..L-1
    assert min(p["batch"][0] for p in profiles["causal_step"]) == 1
    assert max(p["batch"][2] for p in profiles["causal_step"]) == 8        # CFG rows at batch 4
    with pytest.raises(FarError, match="runs K = 16 only"):
        engine_profiles(bundle, (1, 8), (1, 4))


def test_wide_range_is_split_and_narrow_is_not():
    bundle = paper_bundle()
    wide = engine_profiles(bundle, (1, 64), (1, 8))
    assert len(wide["backbone"]) > 1 and len(wide[fused_name(8)]) > 1
    # profiles split on one dim are disjoint there, so a shape has exactly one profile
    for profs in wide.values():
        split = [d for d in profs[0] if len({tuple(p[d]) for p in profs}) == len(profs)]
        assert split
    narrow = engine_profiles(bundle, (64, 64), (1, 1), max_profiles=1)
    assert all(len(p) == 1 for p in narrow.values())
    assert narrow["vae_decoder"] == [{"batch": [1, 1, 1]}]


def test_opt_is_the_most_called_shape():
    spec = component_specs(MODEL_256)["head_step"]
    from collections import Counter
    shapes = Counter({(("rows", 2),): 1, (("rows", 3),): 100, (("rows", 4),): 1})
    assert derive_profiles(spec, shapes, max_profiles=1) == [{"rows": [2, 3, 4]}]


def test_profiles_refuse_ranges_the_bundle_was_not_exported_for():
    bundle = paper_bundle(max_batch=4)
    with pytest.raises(FarError, match="max-batch 8"):
        engine_profiles(bundle, (1, 8), (1, 8))
    for text, what in (("0:8", "k"), ("9:3", "k"), ("a", "k"), ("1:300", "k")):
        with pytest.raises(FarError, match=f"--{what} takes MIN:MAX"):
            parse_range(text, what, 1, 256)
    assert parse_range("16:64", "k", 1, 256) == (16, 64) and parse_range("32", "k", 1, 256) == (32, 32)


def test_plan_shapes_only_for_graphs_the_bundle_has():
    bundle = paper_bundle()
    del bundle.manifest["graphs"]["head_step"]
    shapes = plan_shapes(bundle, (8, 8), (1, 1))
    assert "head_step" not in shapes and fused_name(2) in shapes
    assert shapes[fused_name(2)] == shapes[fused_name(8)]


@pytest.mark.parametrize("head_kind", ["shortcut", "diffusion"])
def test_profiles_cover_the_shapes_of_the_sampling_options(head_kind):
    """Issue 24: the plan knows the options, so the engines' profiles cover the shapes they
    make (the condition cache's refresh asks the backbone for every still-masked position)."""
    from far_runtime.accel import accel_options
    bundle = paper_bundle(head_kind)
    profiles = engine_profiles(bundle, (1, 64), (1, 4), max_profiles=4)
    schedule = "8:1" if head_kind == "shortcut" else "100:10"
    sets = [accel_options(cfg_cache="2:3"), accel_options(cfg_cache="0:1"),
            accel_options(cfg_cache="1:4", cfg_interval="0.25:1"), accel_options(head_schedule=schedule),
            accel_options(cfg_interval="0:0.5", head_schedule=schedule)]
    mode = "step" if head_kind == "diffusion" else "fused"
    o = 100 if head_kind == "diffusion" else 8
    checked = 0
    for K in (1, 2, 5, 16, 33, 64):
        for b in (1, 3, 4):
            for accel in sets:
                for call in make_plan(bundle.model, b, K, o, True, mode, True, 8, accel).distinct():
                    assert select_profile(profiles[call.graph], dict(call.dims)) is not None, (accel, call)
                    checked += 1
    assert checked > 0
