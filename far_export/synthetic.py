"""Random-weight models in the real checkpoint layouts, for tests and size benchmarks."""
from __future__ import annotations

import argparse

import torch

from .checkpoint import (model_state_dict, write_safetensors, write_training_checkpoint,
                         write_vae_checkpoint)
from .config import ModelConfig, VAEConfig, preset
from .reference import AutoencoderKL, Backbone, SimpleMLPAdaLN

TINY_VAE = VAEConfig(embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def random_model(cfg: ModelConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    backbone = Backbone(cfg.backbone).init_weights(g)
    head = SimpleMLPAdaLN(cfg.head).init_weights(g)
    return backbone.eval(), head.eval()


def random_vae(cfg: VAEConfig = TINY_VAE, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(cfg).eval()


def write_random_checkpoint(path: str, preset_name: str = "tiny", head_kind: str = "shortcut",
                            seed: int = 0, layout: str = "training") -> ModelConfig:
    """A random model in the training (``.pth`` with args), bare or safetensors layout."""
    cfg = preset(preset_name, head_kind)
    backbone, head = random_model(cfg, seed)
    sd = model_state_dict(backbone, head)
    if layout == "training":
        ema = {k: v + 0.0 for k, v in sd.items()}
        args = argparse.Namespace(model=f"far_{preset_name}", num_sampling_steps=str(cfg.head.diffusion_steps),
                                  encoder_num_heads=cfg.backbone.encoder_heads,
                                  decoder_num_heads=cfg.backbone.decoder_heads)
        write_training_checkpoint(path, sd, ema, args, epoch=1)
    elif layout == "safetensors":
        write_safetensors(path, sd, {"encoder_heads": cfg.backbone.encoder_heads,
                                     "decoder_heads": cfg.backbone.decoder_heads})
    elif layout == "state_dict":
        from .checkpoint import atomic_write
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    else:
        raise ValueError(layout)
    return cfg


def write_random_vae(path: str, cfg: VAEConfig = TINY_VAE, seed: int = 0) -> VAEConfig:
    vae = random_vae(cfg, seed)
    write_vae_checkpoint(path, vae.state_dict(), cfg.scale_factor)
    return cfg


# --- FAR-Causal ------------------------------------------------------------------------

def tiny_causal_config(seq_len: int = 16, class_tokens: int = 2):
    """The causal twin of the ``tiny`` preset (4-channel tokens, fits ``TINY_VAE``)."""
    from .config import CausalConfig, CausalModelConfig
    from .families.causal import causal_head_config
    bb = CausalConfig(token_dim=4, seq_len=seq_len, class_tokens=class_tokens, num_classes=10,
                      width=32, depth=2, heads=2)
    return CausalModelConfig(bb, causal_head_config(bb, 2, 32))


def random_causal_model(cfg, seed: int = 0, std: float = 0.02):
    """Random causal backbone and shortcut head; ``std`` larger than 0.02 makes attention
    patterns and conditions far from uniform (a sharper parity test)."""
    from .reference.causal import CausalBackbone
    g = torch.Generator().manual_seed(seed)
    backbone = CausalBackbone(cfg.backbone).init_weights(g, std)
    head = SimpleMLPAdaLN(cfg.head).init_weights(g)
    return backbone.eval(), head.eval()


def write_random_causal_checkpoint(path: str, cfg=None, seed: int = 0, std: float = 0.2):
    """A random FAR-Causal model in the trainer layout (model, model_ema, args)."""
    from .families.causal import causal_args, causal_state_dict
    cfg = cfg or tiny_causal_config()
    backbone, head = random_causal_model(cfg, seed, std)
    sd = causal_state_dict(backbone, head)
    write_training_checkpoint(path, sd, {k: v + 0.0 for k, v in sd.items()},
                              causal_args(cfg.backbone), epoch=1)
    return cfg
