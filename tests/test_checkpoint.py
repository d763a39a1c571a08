"""Checkpoint layouts round-trip, config inference is exact, and every bad input is one clear error."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from far_export.checkpoint import (load_model_checkpoint, load_vae_checkpoint, param_counts,
                                   write_safetensors, write_training_checkpoint)
from far_export.config import infer_model_config, preset
from far_export.reference import Backbone, SimpleMLPAdaLN
from far_export.synthetic import write_random_checkpoint, write_random_vae
from far_runtime.errors import FarError


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("layout", ["training", "safetensors", "state_dict"])
@pytest.mark.parametrize("kind", ["shortcut", "diffusion"])
def test_layouts_round_trip(tmp_path, layout, kind):
    path = str(tmp_path / ("m.safetensors" if layout == "safetensors" else "m.pth"))
    cfg = write_random_checkpoint(path, "tiny", kind, seed=5, layout=layout)
    ck = load_model_checkpoint(path)
    assert ck.config.backbone == cfg.backbone or ck.config.backbone.heads_rule != "preset"
    assert ck.config.head.kind == kind
    assert ck.weights == {"training": "model_ema", "safetensors": "safetensors",
                          "state_dict": "state_dict"}[layout]
    from far_export.checkpoint import model_state_dict
    from far_export.synthetic import random_model
    _same(ck.state_dict, model_state_dict(*random_model(cfg, seed=5)))
    assert len(ck.sha256) == 64


def test_training_checkpoint_prefers_ema_and_can_choose(tmp_path):
    cfg = preset("tiny")
    from far_export.checkpoint import model_state_dict
    from far_export.synthetic import random_model
    sd = model_state_dict(*random_model(cfg, 0))
    ema = model_state_dict(*random_model(cfg, 1))
    p = str(tmp_path / "ck.pth")
    write_training_checkpoint(p, sd, ema, argparse.Namespace(model="x"), epoch=7)
    _same(load_model_checkpoint(p).state_dict, ema)
    m = load_model_checkpoint(p, weights="model")
    _same(m.state_dict, sd)
    assert m.weights == "model" and m.extra["epoch"] == 7


def test_vae_round_trip_ignores_encoder(tmp_path):
    p = str(tmp_path / "vae.pth")
    cfg = write_random_vae(p, seed=4)
    vk = load_vae_checkpoint(p)
    assert vk.config == cfg
    assert all(k.startswith(("decoder.", "post_quant_conv.")) for k in vk.state_dict)
    raw = torch.load(p, weights_only=True)["model"]
    assert any(k.startswith("encoder.") for k in raw)


def _meta_state_dict(cfg):
    with torch.device("meta"):
        sd = dict(Backbone(cfg.backbone).state_dict())
        sd.update({cfg.head.prefix + k: v for k, v in SimpleMLPAdaLN(cfg.head).state_dict().items()})
    return sd


@pytest.mark.parametrize("size,model,heads,bb_m,head_m", [
    ("B", "mar_base", 12, 172.2, 35.7), ("L", "mar_large", 16, 406.1, 72.2),
    ("H", "mar_huge", 16, 791.2, 151.2)])
def test_config_inference_on_meta_mar_sizes(size, model, heads, bb_m, head_m):
    sd = _meta_state_dict(preset(size, "diffusion"))
    cfg = infer_model_config(sd, argparse.Namespace(model=model))
    assert cfg.backbone.encoder_heads == heads and cfg.backbone.heads_rule == f"args.model={model}"
    assert cfg.head.kind == "diffusion" and cfg.head.prefix == "diffloss.net."
    assert (cfg.backbone.seq_len, cfg.backbone.buffer_size, cfg.backbone.token_dim) == (256, 64, 16)
    counts = param_counts(cfg)
    assert round(counts["backbone"] / 1e6, 1) == bb_m
    assert round(counts["head"] / 1e6, 1) == head_m
    # Without args the width/64 rule is used and reported (wrong for H, as SPEC warns).
    plain = infer_model_config(sd)
    assert plain.backbone.heads_rule == "width/64"
    assert plain.backbone.encoder_heads == plain.backbone.encoder_width // 64


def test_shortcut_head_under_diffloss_prefix():
    cfg = preset("tiny", "shortcut")
    sd = _meta_state_dict(cfg)
    sd = {("diffloss.net." + k[5:] if k.startswith("head.") else k): v for k, v in sd.items()}
    got = infer_model_config(sd)
    assert got.head.kind == "shortcut" and got.head.prefix == "diffloss.net."


# --- bad inputs ------------------------------------------------------------------------

def _err(fn, *a, **kw):
    with pytest.raises(FarError) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert "does not exist" in _err(load_model_checkpoint, str(tmp_path / "nope.pth"))


def test_wrong_file_type(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("hello")
    assert "not a PyTorch checkpoint" in _err(load_model_checkpoint, str(p))


def test_truncated_files(tmp_path, tiny_files):
    data = open(tiny_files["far"], "rb").read()
    p = tmp_path / "trunc.pth"
    p.write_bytes(data[: len(data) // 2])
    _err(load_model_checkpoint, str(p))
    st = tmp_path / "m.safetensors"
    write_random_checkpoint(str(st), layout="safetensors")
    raw = st.read_bytes()
    st.write_bytes(raw[: len(raw) // 2])
    assert "safetensors" in _err(load_model_checkpoint, str(st))


def test_key_errors_name_the_keys(tmp_path):
    cfg = preset("tiny")
    from far_export.checkpoint import model_state_dict
    from far_export.synthetic import random_model
    sd = model_state_dict(*random_model(cfg))
    p = str(tmp_path / "k.safetensors")
    bad = dict(sd); del bad["encoder_blocks.0.attn.proj.bias"]
    write_safetensors(p, bad)
    assert "encoder_blocks.0.attn.proj.bias" in _err(load_model_checkpoint, p)
    bad = dict(sd); bad["extra.weight"] = torch.zeros(2)
    write_safetensors(p, bad)
    assert "extra.weight" in _err(load_model_checkpoint, p)
    bad = dict(sd); bad["decoder_blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    write_safetensors(p, bad)
    assert "decoder_blocks.0.mlp.fc1.weight" in _err(load_model_checkpoint, p)
    bad = {k: v for k, v in sd.items() if not k.startswith("head.")}
    write_safetensors(p, bad)
    assert "no head" in _err(load_model_checkpoint, p)


def test_vae_given_as_model_and_back(tiny_files):
    assert "VAE" in _err(load_model_checkpoint, tiny_files["vae"])
    assert "not a VAE" in _err(load_vae_checkpoint, tiny_files["far"])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/far_export_pwned",))


def test_pickled_code_is_never_run(tmp_path):
    p = str(tmp_path / "evil.pth")
    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, p)
    if os.path.exists("/tmp/far_export_pwned"):
        os.unlink("/tmp/far_export_pwned")
    assert "Refusing" in _err(load_model_checkpoint, p)
    assert not os.path.exists("/tmp/far_export_pwned")


def test_cli_inspect_and_errors(tiny_files, tmp_path):
    exe = [sys.executable, "-m", "far_export.cli"]
    r = subprocess.run(exe + ["inspect", tiny_files["mar"], "--vae", tiny_files["vae"], "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    rep = json.loads(r.stdout)
    assert rep["head_kind"] == "diffusion" and rep["weights"] == "model_ema"
    assert rep["parameters"]["backbone"] > 0 and "vae_decoder" in rep["parameters"]
    r = subprocess.run(exe + ["inspect", str(tmp_path / "missing.pth")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("value,steps,respacing", [
    ("100", 100, ""), (50, 50, ""), ("ddim25", 25, "ddim25"), ("10,15,20", 45, "10,15,20"),
    ("", 1000, ""), (None, 100, "")])
def test_mar_num_sampling_steps_forms(value, steps, respacing):
    """What MAR's trainer accepts as --num_sampling_steps, read as its space_timesteps does."""
    sd = _meta_state_dict(preset("tiny", "diffusion"))
    cfg = infer_model_config(sd, argparse.Namespace(num_sampling_steps=value))
    assert cfg.head.diffusion_steps == steps and cfg.head.timestep_respacing == respacing


@pytest.mark.parametrize("value,msg", [("ddim3000", "no integer stride"), ("fast", "not a form"),
                                       ("10,15,2000", "cannot be divided"), ("-5", "positive"),
                                       (2.5, "MAR takes a count")])
def test_mar_num_sampling_steps_refused(value, msg):
    sd = _meta_state_dict(preset("tiny", "diffusion"))
    assert msg in _err(infer_model_config, sd, argparse.Namespace(num_sampling_steps=value))


def test_heads_contradicting_the_checkpoint_need_force():
    sd = _meta_state_dict(preset("tiny", "shortcut"))
    args = argparse.Namespace(encoder_num_heads=2, decoder_num_heads=2)
    assert "contradicts the checkpoint" in _err(infer_model_config, sd, args, heads=4)
    forced = infer_model_config(sd, args, heads=4, force_heads=True)
    assert forced.backbone.encoder_heads == 4 and forced.backbone.heads_rule == "user option (forced)"
    same = infer_model_config(sd, args, heads=2)
    assert same.backbone.heads_rule == "user option"
    meta = {"encoder_heads": "2", "decoder_heads": "2"}
    assert "checkpoint metadata says 2" in _err(infer_model_config, sd, None, meta, heads=8)
    for bad in (0, -1, 33):
        assert "--heads must be an integer in 1..32" in _err(infer_model_config, sd, None, None, bad)


def test_wrong_rank_tensor_is_one_sentence():
    sd = _meta_state_dict(preset("tiny", "shortcut"))
    sd["encoder_pos_embed_learned"] = torch.empty(20, 32, device="meta")
    assert "has shape (20, 32)" in _err(infer_model_config, sd)
    sd = _meta_state_dict(preset("tiny", "shortcut"))
    sd["z_proj.weight"] = torch.empty(0, 4, device="meta")
    assert "non-empty" in _err(infer_model_config, sd)
