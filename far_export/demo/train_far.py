"""Training a small FAR (shortcut head) or MAR (diffusion head) on the demo's VAE tokens.

MAR's recipe at small scale: per step, one mask count (``mask_count``) shared by the batch,
a random order per sample, the first ``mask_len`` positions of the order masked (as the
sampler does), 10% of labels replaced by the unconditional label (for CFG), the backbone's z
at the masked positions repeated ``head_batch_mul`` times for the head loss
(``objectives``), AdamW (betas 0.9/0.95) with warmup and cosine decay to 10%, gradient
clipping, and EMA weights (decay ``min(ema_decay, (1 + step) / (10 + step))``). Tokens are
fresh posterior samples each step (mean + std * noise).

Departures from MAR, each measured on this CPU budget: default (not adaLN-zero) head
initialisation, and the sampler's cosine mask distribution instead of MAR's [0.7, 1].
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..checkpoint import model_state_dict, write_safetensors, write_training_checkpoint
from ..config import BackboneConfig, ModelConfig, head_config_for
from ..reference import Backbone, SimpleMLPAdaLN
from .objectives import make_objective

log = logging.getLogger(__name__)


@dataclass
class FarRecipe:
    objective: str = "shortcut"       # shortcut | flow | diffusion
    steps: int = 9000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.02
    ema_decay: float = 0.999
    label_drop: float = 0.1
    head_batch_mul: int = 2
    grad_clip: float = 3.0
    width: int = 96
    depth: int = 2                    # per half (encoder, decoder)
    heads: int = 4
    buffer: int = 16
    head_width: int = 96
    head_depth: int = 3
    seed: int = 0

    @property
    def head_kind(self) -> str:
        return "diffusion" if self.objective == "diffusion" else "shortcut"

    def model_config(self, seq_len: int, token_dim: int, num_classes: int) -> ModelConfig:
        bb = BackboneConfig(token_dim=token_dim, seq_len=seq_len, buffer_size=self.buffer,
                            num_classes=num_classes, encoder_width=self.width,
                            encoder_depth=self.depth, encoder_heads=self.heads,
                            decoder_width=self.width, decoder_depth=self.depth,
                            decoder_heads=self.heads)
        return ModelConfig(bb, head_config_for(bb, self.head_kind, self.head_depth,
                                               self.head_width))


def init_backbone(bb: Backbone) -> Backbone:
    """PyTorch's default initialisation, with MAR's N(0, 0.02) for the position embeddings
    (zeros otherwise). A 2-D sine-cosine start (MAE) was slower on a copy task."""
    with torch.no_grad():
        for p in (bb.encoder_pos_embed_learned, bb.decoder_pos_embed_learned,
                  bb.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
    return bb


# The head keeps PyTorch's default initialisation. MAR zero-initialises the adaLN modulations
# and the output layer (adaLN-zero); on a copy task (every token equal, half of them known)
# that made the head ignore the backbone for the first hundreds of steps (flow loss 1.26 vs
# 0.23 with default init after 150 steps), which a 30-minute CPU run cannot afford.


def mask_count(rng: np.random.Generator, seq_len: int) -> int:
    """Masked tokens of one step: ``ceil(L * cos(pi/2 * u))``, u uniform, clamped to [1, L].

    This is the distribution of the sampler's own cosine schedule over its iterations
    (MaskGIT), so a short training run also sees the late iterations, where most tokens are
    known. (MAR's truncated normal in [0.7, 1] never shows fewer than 70% masked.)
    """
    r = math.cos(math.pi / 2 * rng.random())
    return max(1, min(seq_len, math.ceil(seq_len * r)))


def split_positions(rng: np.random.Generator, batch: int, seq_len: int, n_mask: int):
    """Known and masked positions [B, *] (sorted): the first ``n_mask`` of a random order."""
    orders = np.argsort(rng.random((batch, seq_len)), axis=1)
    masked = np.sort(orders[:, :n_mask], axis=1)
    known = np.sort(orders[:, n_mask:], axis=1)
    return torch.from_numpy(known), torch.from_numpy(masked)


def lr_at(step: int, r: FarRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)


def optimisation(backbone: nn.Module, head: nn.Module, recipe):
    """Frozen EMA copies, the trained parameters and AdamW (no weight decay on vectors), as
    MAR trains; for every demo trainer."""
    ema_bb, ema_head = copy.deepcopy(backbone).eval(), copy.deepcopy(head).eval()
    for p in list(ema_bb.parameters()) + list(ema_head.parameters()):
        p.requires_grad_(False)
    params = list(backbone.parameters()) + list(head.parameters())
    decay, no_decay = [p for p in params if p.dim() > 1], [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=(0.9, 0.95))
    return ema_bb, ema_head, params, opt


def optimiser_step(loss, opt, params, recipe, step: int, pairs) -> None:
    """Backward, clip, step, then every (ema, model) pair's EMA with MAR's warm-up decay."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, recipe.grad_clip)
    opt.step()
    d = min(recipe.ema_decay, (1 + step) / (10 + step))
    for ema, model in pairs:
        ema_update(ema, model, d)


def train_far(token_mean: torch.Tensor, token_std: torch.Tensor, labels: np.ndarray,
              recipe: FarRecipe, num_classes: int, progress_every: int = 100):
    """Train on scaled token posteriors [N, L, C]; returns (backbone, head, ema backbone,
    ema head, optimizer, metrics)."""
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.Generator(np.random.PCG64(recipe.seed))
    N, L, C = token_mean.shape
    cfg = recipe.model_config(L, C, num_classes)
    backbone = init_backbone(Backbone(cfg.backbone))
    head = SimpleMLPAdaLN(cfg.head)
    ema_bb, ema_head, params, opt = optimisation(backbone, head, recipe)
    objective = make_objective(recipe.objective)
    labels_t = torch.from_numpy(np.asarray(labels, np.int64))
    t0, running = time.time(), []
    backbone.train()
    head.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        idx = torch.randint(0, N, (recipe.batch,), generator=g)
        tokens = token_mean[idx] + token_std[idx] * torch.randn((recipe.batch, L, C), generator=g)
        lab = labels_t[idx].clone()
        lab[torch.rand(recipe.batch, generator=g) < recipe.label_drop] = num_classes
        known, masked = split_positions(rng, recipe.batch, L, mask_count(rng, L))
        z = backbone(tokens, lab, known, masked)                        # [B, n, D]
        x1 = torch.gather(tokens, 1, masked.unsqueeze(-1).expand(-1, -1, C))
        z = z.reshape(-1, z.shape[-1]).repeat(recipe.head_batch_mul, 1)
        x1 = x1.reshape(-1, C).repeat(recipe.head_batch_mul, 1)
        loss = objective(head, ema_head, z, x1, g)
        optimiser_step(loss, opt, params, recipe, step, ((ema_bb, backbone), (ema_head, head)))
        running.append(loss.item())
        if (step + 1) % progress_every == 0 or step + 1 == recipe.steps:
            el = time.time() - t0
            log.info("%s step %d/%d  loss %.4f  lr %.2e  (%.0fs, eta %.0fs)", recipe.objective,
                     step + 1, recipe.steps, float(np.mean(running)), lr_at(step, recipe), el,
                     el / (step + 1) * (recipe.steps - step - 1))
            running = []
    metrics = {"train_seconds": time.time() - t0, "final_loss": float(loss.item())}
    return backbone.eval(), head.eval(), ema_bb, ema_head, opt, metrics


def save_far(path: str, backbone, head, ema_bb, ema_head, opt, recipe: FarRecipe,
             model_name: str, safetensors_path: str | None = None) -> None:
    """MAR's training-checkpoint layout (+ optional safetensors of the EMA weights)."""
    cfg = backbone.cfg
    args = argparse.Namespace(model=model_name, encoder_num_heads=cfg.encoder_heads,
                              decoder_num_heads=cfg.decoder_heads, buffer_size=cfg.buffer_size,
                              class_num=cfg.num_classes, token_embed_dim=cfg.token_dim,
                              seq_len=cfg.seq_len, ema_rate=recipe.ema_decay,
                              num_sampling_steps=str(head.cfg.diffusion_steps),
                              **{f"recipe_{k}": v for k, v in asdict(recipe).items()})
    write_training_checkpoint(path, model_state_dict(backbone, head),
                              model_state_dict(ema_bb, ema_head), args, epoch=recipe.steps,
                              optimizer=None)
    if safetensors_path:
        write_safetensors(safetensors_path, model_state_dict(ema_bb, ema_head),
                          {"encoder_heads": cfg.encoder_heads, "decoder_heads": cfg.decoder_heads,
                           "model": model_name})
