"""Training the demo's small KL-VAE (LDM layout) and encoding the dataset into tokens.

32x32 RGB -> an 8x8 grid of 16-channel latents: 64 tokens of 16 values, SPEC's token sequence
at a quarter of the length. ch 64, ch_mult (1, 1, 1), no extra res blocks (the decoder keeps
one per level): the reference's ``Normalize`` uses ``min(32, channels)`` groups, so any level
narrower than 64 channels normalises every channel on its own (instance norm), and a decoder
whose last level does that cannot reproduce colours (tried: ch 16, ch_mult (1, 2, 4) decodes
grey). 64 channels at every level is the cheapest layout that keeps two channels per group. Loss: L1 + MSE reconstruction of a
posterior sample plus a small KL term, no perceptual or adversarial loss. After training,
``scale_factor`` = 1 / std of the posterior-mean latents over the training set, as LDM does.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..config import VAEConfig, infer_vae_config
from ..quality.classifier import to_tensor_range
from ..reference.vae import AutoencoderKL, latent_to_tokens
from .dataset import make_dataset

log = logging.getLogger(__name__)

DEMO_VAE = VAEConfig(embed_dim=16, z_channels=16, ch=64, ch_mult=(1, 1, 1), num_res_blocks=0,
                     attn_levels=(), scale_factor=1.0)


def kl_per_element(mean, logvar):
    return 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar)


def train_vae(images: np.ndarray, steps: int, seed: int = 0, batch: int = 64, lr: float = 2e-3,
              kl_weight: float = 5e-3, cfg: VAEConfig = DEMO_VAE,
              val_count: int = 1000) -> tuple[AutoencoderKL, dict]:
    """Train on uint8 images [N, 32, 32, 3]; returns the VAE (scale factor set) and metrics."""
    torch.manual_seed(seed)
    x_all = torch.from_numpy(to_tensor_range(images))
    vae = AutoencoderKL(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    vae.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = x_all[idx]
        mean, logvar = vae.encode_moments(x)
        z = mean + torch.randn(mean.shape, generator=g) * (0.5 * logvar).exp()
        rec = vae.decode_latent(z)
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        kl = kl_per_element(mean, logvar).mean()
        loss = l1 + mse + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log.info("vae step %d/%d  l1 %.4f  mse %.4f  kl %.3f  (%.0fs)", step, steps,
                     l1.item(), mse.item(), kl.item(), time.time() - t0)
    vae.eval()
    mean = encode_moments(vae, images[:8192])[0]
    std = float(mean.std())
    vae.cfg.scale_factor = 1.0 / std
    val, _ = make_dataset(val_count, seed + 11)
    rec = reconstruct(vae, val)
    psnr = float(10 * np.log10(255.0 ** 2 / ((rec.astype(np.float64) - val) ** 2).mean()))
    log.info("vae latent std %.4f -> scale_factor %.4f; validation PSNR %.2f dB", std,
             vae.cfg.scale_factor, psnr)
    return vae, {"scale_factor": vae.cfg.scale_factor, "psnr_db": psnr,
                 "train_seconds": time.time() - t0}


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, images: np.ndarray, batch: int = 500):
    """Posterior means and standard deviations [N, C, 8, 8] of uint8 images."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        m, lv = vae.encode_moments(torch.from_numpy(to_tensor_range(images[i:i + batch])))
        means.append(m)
        stds.append((0.5 * lv).exp())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    from far_runtime.images import to_uint8
    mean, _ = encode_moments(vae, images)
    return to_uint8(vae(latent_to_tokens(mean, vae.cfg.scale_factor)).numpy())


def encode_tokens(vae: AutoencoderKL, images: np.ndarray):
    """Scaled token means and stds [N, 64, 16] (channels-last raster, as the sampler makes)."""
    mean, std = encode_moments(vae, images)
    s = vae.cfg.scale_factor
    return latent_to_tokens(mean, s), latent_to_tokens(std, s)


def load_full_vae(path: str) -> AutoencoderKL:
    """The demo VAE with its encoder (``load_vae_checkpoint`` keeps only the decoder)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    cfg = infer_vae_config(obj["model"], obj["scale_factor"])
    vae = AutoencoderKL(cfg)
    vae.load_state_dict(obj["model"], strict=True)
    return vae.eval()
