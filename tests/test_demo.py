"""The demo: dataset, the one trainer (FAR / MAR and FAR-Causal recipes), evaluation, the
shipped classifier and the quality scorer (``far_export.quality``).

Everything here runs in seconds: training is a handful of steps on tiny models.
"""
import argparse
import os

import numpy as np
import pytest
import torch

from far_export.checkpoint import build_model, load_model_checkpoint, load_vae_checkpoint
from far_export.demo.dataset import NUM_CLASSES, make_dataset
from far_export.demo.objectives import make_objective
from far_export.demo.train import CausalRecipe, FarRecipe, budget_fraction, save_causal, save_far, train
from far_export.demo.train_vae import encode_tokens, train_vae
from far_export.quality.score import DEFAULT_CLASSIFIER, frechet_distance, score_images
from far_export.reference.sampler import sample_tokens
from far_runtime.errors import FarError

TINY_FAR = dict(steps=2, batch=4, warmup=1, width=32, depth=1, heads=2, buffer=4,
                head_width=32, head_depth=2)
shipped = pytest.mark.skipif(not os.path.exists(DEFAULT_CLASSIFIER),
                             reason="the demo classifier has not been trained yet")


def test_dataset_is_deterministic_and_balanced():
    a, la = make_dataset(300, seed=3)
    b, lb = make_dataset(300, seed=3)
    c, _ = make_dataset(300, seed=4)
    assert a.shape == (300, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert np.bincount(la, minlength=NUM_CLASSES).tolist() == [30] * NUM_CLASSES


def test_dataset_classes_stay_balanced_for_any_count():
    images, labels = make_dataset(23, seed=1)
    assert images.std() > 20                  # not blank: shapes on textured backgrounds
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert counts.min() == 2 and counts.max() == 3 and counts.sum() == 23


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal(8)
    a = rng.standard_normal((8, 8))
    sigma = a @ a.T + np.eye(8)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # Same covariance, shifted mean: the distance is the squared shift.
    assert frechet_distance(mu, sigma, mu + 2.0, sigma) == pytest.approx(4.0 * 8, rel=1e-6)
    # Diagonal covariances: sum of (sqrt(s1) - sqrt(s2))^2.
    d = frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.zeros(2), np.diag([1.0, 9.0]))
    assert d == pytest.approx(1.0 + 4.0)


@pytest.mark.parametrize("name", ["shortcut", "flow", "diffusion"])
def test_objectives_give_finite_losses_and_gradients(name):
    recipe = FarRecipe(objective=name, **TINY_FAR)
    cfg = recipe.model_config(16, 4, 10)
    from far_export.reference import SimpleMLPAdaLN
    head, ema = SimpleMLPAdaLN(cfg.head), SimpleMLPAdaLN(cfg.head)
    z, x1 = torch.randn(24, cfg.head.cond_dim), torch.randn(24, 4)
    loss = make_objective(name)(head, ema, z, x1, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("objective", ["shortcut", "diffusion"])
def test_tiny_training_step_writes_a_loadable_checkpoint(tmp_path, objective):
    mean, std = torch.randn(20, 16, 4), torch.full((20, 16, 4), 0.1)
    labels = np.arange(20) % 10
    recipe = FarRecipe(objective=objective, **TINY_FAR)
    path = str(tmp_path / "far.pth")
    *_, metrics = train(mean, std, labels, recipe, 10, save=lambda m, step, met: save_far(
        path, *m, recipe, "far_test", str(tmp_path / "far.safetensors")))
    assert metrics["steps_done"] == 2 and np.isfinite(metrics["final_loss"])
    ck = load_model_checkpoint(path)
    assert ck.weights == "model_ema" and ck.config.head.kind == recipe.head_kind
    assert ck.config.backbone.heads_rule == "args.encoder_num_heads"
    assert ck.config.backbone.seq_len == 16 and ck.config.backbone.token_dim == 4
    assert not torch.equal(ck.state_dict["z_proj.weight"],
                           load_model_checkpoint(path, "model").state_dict["z_proj.weight"])
    st = load_model_checkpoint(str(tmp_path / "far.safetensors"))
    assert st.config.backbone.heads_rule == "checkpoint metadata"
    backbone, head = build_model(ck)
    if objective == "diffusion":
        head.cfg.diffusion_steps = 4           # a short respaced schedule keeps the test fast
    tokens = sample_tokens(backbone, head, [1, 2], num_iter=4, head_steps=2, cfg=2.0)
    assert tokens.shape == (2, 16, 4) and torch.isfinite(tokens).all()


def test_tiny_vae_training_round_trip(tmp_path):
    from far_export.checkpoint import write_vae_checkpoint
    from far_export.config import VAEConfig
    images, _ = make_dataset(32, seed=0)
    cfg = VAEConfig(embed_dim=4, z_channels=4, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                    scale_factor=1.0)
    vae, info = train_vae(images, steps=2, batch=8, cfg=cfg, val_count=8)
    assert info["scale_factor"] > 0 and vae.cfg.scale_factor == info["scale_factor"]
    mean, std = encode_tokens(vae, images[:4])
    assert mean.shape == (4, 16 * 16, 4) and (std > 0).all()
    path = str(tmp_path / "vae.pth")
    write_vae_checkpoint(path, vae.state_dict(), vae.cfg.scale_factor)
    assert load_vae_checkpoint(path).config.scale_factor == pytest.approx(info["scale_factor"])


@shipped
def test_shipped_classifier_recognises_real_images():
    images, labels = make_dataset(500, seed=12345)
    s = score_images(images, labels)
    assert s["accuracy"] >= 0.97 and s["n"] == 500
    wrong = score_images(images, (labels + 1) % NUM_CLASSES)
    assert wrong["accuracy"] < 0.1


@shipped
def test_frechet_real_vs_real_is_small_and_real_vs_noise_is_large():
    images, labels = make_dataset(500, seed=4321)
    other, _ = make_dataset(500, seed=999)
    noise = np.random.default_rng(0).integers(0, 256, images.shape).astype(np.uint8)
    real = score_images(images, labels)["frechet"]
    real_pair = score_images(images, labels, reference=other)["frechet"]
    bad = score_images(noise, labels)["frechet"]
    # Small but not zero: the estimate from 500 images of 128 features is biased upward.
    assert real < 6.0 and real_pair < 6.0, (real, real_pair)
    assert bad > 100 * max(real, real_pair), (bad, real, real_pair)


def test_score_images_rejects_wrong_input():
    with pytest.raises(FarError, match="uint8"):
        score_images(np.zeros((2, 3, 32, 32), np.float32), [0, 1])


@shipped
def test_shipped_far_draws_the_requested_classes():
    """The embedded default generates recognisable shapes: 100 images (10 per class) with the
    demo's sampling settings are scored by the shipped classifier (0.955 on 200 images when
    shipped; chance is 0.10), and asking for the wrong classes scores near zero."""
    from far_export.defaults import DEFAULT_CHECKPOINT, DEFAULT_VAE
    from far_export.demo.evaluate import balanced_labels, generate
    from far_export.demo.train_vae import load_full_vae
    from far_export.quality.score import sampler_kwargs
    backbone, head = build_model(load_model_checkpoint(DEFAULT_CHECKPOINT, with_hash=False))
    vae = load_full_vae(DEFAULT_VAE)
    labels = balanced_labels(10)
    images = generate(backbone, head, vae, labels, seed=3, batch=100, **sampler_kwargs())
    right = score_images(images, labels)
    wrong = score_images(images, (labels + 1) % NUM_CLASSES)
    assert right["accuracy"] >= 0.8 and wrong["accuracy"] <= 0.1, (right, wrong)


# --- FAR-Causal: the same trainer with the causal recipe, the same evaluate ------------------

TINY_CAUSAL = dict(width=16, depth=1, heads=2, head_width=16, head_depth=1)


def _causal_train(tmp_path, mean, std, labels, **kw):
    recipe = CausalRecipe(**{**TINY_CAUSAL, **kw})
    path = str(tmp_path / "c.pth")
    *_, metrics = train(mean, std, labels, recipe, 10,
                        save=lambda m, step, met: save_causal(path, *m, recipe, step, met))
    return path, metrics


def test_causal_training_writes_a_loadable_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(20, 16, 4, generator=g), torch.full((20, 16, 4), 0.1)
    path, metrics = _causal_train(tmp_path, mean, std, np.arange(20) % 10, steps=3, warmup=1,
                                  batch=4, class_tokens=2, checkpoint_every=2)
    assert metrics["steps_done"] == 3 and np.isfinite(metrics["final_loss"])
    ck = load_model_checkpoint(path)
    assert ck.config.kind == "causal" and ck.extra["epoch"] == 3
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True, map_location="cpu")
    assert set(raw) >= {"model", "model_ema", "args", "epoch"}
    assert ck.args.trained_steps == 3 and ck.args.recipe_class_tokens == 2


def test_training_budget_schedule_edges():
    assert budget_fraction(5.0, 0.0, None, 60.0) == 0.0                   # in warm-up
    assert budget_fraction(30.0, 0.0, 10.0, 60.0) == pytest.approx(0.4)   # 20 of the 50 s left
    assert budget_fraction(61.0, 0.0, None, 60.0) == 1.0                  # spent during warm-up
    assert budget_fraction(70.0, 0.0, 65.0, 60.0) == 1.0                  # warm-up past the budget
    assert budget_fraction(59.0, 0.0, 60.0, 60.0) == 1.0                  # nothing left after it


@pytest.mark.parametrize("steps,warmup,minutes", [(0, 1, None), (5, 100, 1e-6)])
def test_training_with_no_step_writes_the_initial_model(tmp_path, steps, warmup, minutes):
    """steps=0, or a budget spent before the warm-up ends: no step, still a loadable file."""
    mean, std = torch.zeros(4, 16, 4), torch.full((4, 16, 4), 0.1)
    path, metrics = _causal_train(tmp_path, mean, std, np.arange(4), steps=steps, warmup=warmup,
                                  batch=2, class_tokens=1, minutes=minutes)
    assert metrics["steps_done"] == 0 and np.isnan(metrics["final_loss"])
    assert load_model_checkpoint(path).extra["epoch"] == 0


@shipped
@pytest.mark.slow
def test_shipped_causal_demo_draws_its_classes():
    """At the demo's settings (CFG 5 constant, temperature 0.8, O = 8), 100 images."""
    from far_export.checkpoint import build_vae
    from far_export.defaults import ASSETS, DEFAULT_VAE
    from far_export.demo.evaluate import evaluate
    vae = build_vae(load_vae_checkpoint(DEFAULT_VAE))
    model = build_model(load_model_checkpoint(os.path.join(ASSETS, "far_causal_demo.pth")))
    score = evaluate(*model, vae, per_class=10, head_steps=8, cfg=5.0, cfg_schedule="constant",
                     temperature=0.8, seed=3)
    assert score["accuracy"] >= 0.7


def test_evaluate_samples_each_family_with_its_loop(tmp_path):
    """One ``generate`` for both families: FAR-Causal through its own loop (K only L), FAR at K 16."""
    from far_export.demo.evaluate import BATCH, family, sample
    from far_export.families.causal import sample_causal
    from far_export.synthetic import random_causal_model, random_model, tiny_causal_config
    from far_export.config import preset
    cb, ch = random_causal_model(tiny_causal_config(16), seed=1)
    fb, fh = random_model(preset("tiny"), seed=1)
    assert (family(cb), family(fb)) == ("causal", "masked") and BATCH["causal"] != BATCH["masked"]
    a = sample(cb, ch, [1, 2], head_steps=2, cfg=3.0, seed=5)
    assert torch.equal(a, sample_causal(cb, ch, [1, 2], head_steps=2, cfg=3.0, seed=5))
    assert torch.equal(a, sample(cb, ch, [1, 2], num_iter=16, head_steps=2, cfg=3.0, seed=5))
    with pytest.raises(ValueError, match="K is L"):
        sample(cb, ch, [1], num_iter=4)
    assert torch.equal(sample(fb, fh, [1], head_steps=2, seed=5),
                       sample_tokens(fb, fh, [1], num_iter=16, head_steps=2, seed=5))


@pytest.mark.parametrize("args,expect", [
    (["--O", "3"], "power of two"), (["--O", "a,b"], "--O takes"), (["--cfg", "nan"], "finite"),
    (["--temperature", "-1"], "--temperature must be >= 0"), (["--seed", "-1"], "seed"),
    (["--per-class", "0"], "--per-class"), (["--schedule", "cosine"], "invalid choice"),
    (["--checkpoint", "/nonexistent.pth"], "is not a file"),
])
def test_evaluate_options_are_one_sentence(args, expect, capsys, tmp_path):
    from far_export.demo.evaluate import main as evaluate_main
    with pytest.raises(SystemExit) as e:
        evaluate_main(args + ["--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and expect in err
    assert err.strip().splitlines()[-1].count("error:") == 1
    assert not os.path.exists(tmp_path / "r.json")


def test_evaluate_refuses_a_bad_checkpoint_in_one_sentence(capsys, tmp_path):
    from far_export.demo.evaluate import main as evaluate_main
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--checkpoint", str(bad), "--per-class", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_is_a_leaf():
    """Nothing outside ``demo/`` imports it but the CLI (its commands) and ``defaults`` (the
    shipped files' folder): verify, precision and bench score with ``far_export.quality``."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "far_export"
    importers = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "demo":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                names = [base + "." + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.lstrip(".").startswith(("demo", "far_export.demo")) or ".demo" in n for n in names):
                importers.add(str(rel))
    assert importers <= {"cli.py"}, importers


@shipped
def test_shipped_mar_demo_is_a_mar_checkpoint():
    """The MAR demo (issue 24) in MAR's trainer layout: a diffusion head at MAR's 100 sampling
    steps, loaded without pickled code, that samples finite tokens."""
    from far_export.defaults import ASSETS
    path = os.path.join(ASSETS, "mar_demo.pth")
    ck = load_model_checkpoint(path)
    assert ck.config.head.kind == "diffusion" and ck.config.head.diffusion_steps == 100
    backbone, head = build_model(ck)
    tokens = sample_tokens(backbone, head, [2, 7], num_iter=4, cfg=5.0, seed=1)
    assert torch.isfinite(tokens).all() and tokens.shape == (2, ck.config.backbone.seq_len,
                                                              ck.config.backbone.token_dim)
