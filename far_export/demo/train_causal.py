"""Training a small FAR-Causal on the demo's VAE tokens, beside the shipped FAR.

Same data, VAE, token pipeline (fresh posterior samples each step), shortcut objective
(``objectives.shortcut_loss``), optimiser, warmup + cosine schedule, label dropout for CFG,
gradient clipping and EMA as ``train_far.py``. The difference is the backbone: teacher
forcing over the raster sequence, so every step trains the head on all L positions of
every sample (``head_batch_mul`` 1: 64 x 64 head rows per step against FAR's ~64 x 41 x 2).

Checkpoints (MAR's trainer layout: ``model``, ``model_ema``, ``epoch``, ``args``) are written
every ``checkpoint_every`` steps to ``<out>/far_causal_demo.pth`` (atomically), so a stopped
run leaves a usable model.

    python -m far_export.demo.train_causal --out out/causal --steps 6000 --threads 2
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..checkpoint import write_training_checkpoint
from ..config import CausalConfig, CausalModelConfig, HeadConfig
from ..reference.causal import CausalBackbone
from ..reference.heads import SimpleMLPAdaLN
from .objectives import make_objective
from .train_far import lr_at, optimisation, optimiser_step

log = logging.getLogger(__name__)

HEAD_PREFIX = "diffloss.net."


@dataclass
class CausalRecipe:
    objective: str = "shortcut"
    steps: int = 6000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.02
    ema_decay: float = 0.999
    label_drop: float = 0.1
    head_batch_mul: int = 1
    grad_clip: float = 3.0
    width: int = 96
    depth: int = 4                    # FAR's 2 + 2 blocks as one causal stack
    heads: int = 4
    class_tokens: int = 4
    head_width: int = 96
    head_depth: int = 3
    seed: int = 0
    checkpoint_every: int = 250
    minutes: float | None = None      # time budget: cosine over wall time, stop at the budget

    def model_config(self, seq_len: int, token_dim: int, num_classes: int) -> CausalModelConfig:
        bb = CausalConfig(token_dim=token_dim, seq_len=seq_len, class_tokens=self.class_tokens,
                          num_classes=num_classes, width=self.width, depth=self.depth,
                          heads=self.heads)
        return CausalModelConfig(bb, causal_head_config(bb, self.head_depth, self.head_width))


def causal_head_config(bb: CausalConfig, depth: int, width: int) -> HeadConfig:
    return HeadConfig(kind="shortcut", width=width, depth=depth, token_dim=bb.token_dim,
                      cond_dim=bb.width, out_dim=bb.token_dim, prefix=HEAD_PREFIX)


def causal_state_dict(backbone: CausalBackbone, head: SimpleMLPAdaLN) -> dict:
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    sd.update({HEAD_PREFIX + k: v.detach().clone() for k, v in head.state_dict().items()})
    return sd


def causal_args(cfg: CausalConfig, **extra) -> argparse.Namespace:
    return argparse.Namespace(model="far_causal", num_heads=cfg.heads,
                              class_tokens=cfg.class_tokens, class_num=cfg.num_classes,
                              token_embed_dim=cfg.token_dim, seq_len=cfg.seq_len, **extra)


def lr_budget(step: int, r: CausalRecipe, fraction: float) -> float:
    """``lr_at`` with the cosine driven by the elapsed fraction of the time budget (on a
    shared machine the step rate is unknown up front; the schedule still ends at 10%)."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = min(1.0, max(0.0, fraction))
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def budget_fraction(now: float, t0: float, t_warm: float | None, budget: float) -> float:
    """The elapsed fraction of a time budget that drives the cosine: 0 during warm-up, then
    the share of what the warm-up left; 1 (stop) once the whole budget is spent, including
    a warm-up that took longer than the budget (no remaining time, never a negative share)."""
    if now - t0 >= budget:
        return 1.0
    if t_warm is None:
        return 0.0
    remaining = budget - (t_warm - t0)
    return 1.0 if remaining <= 0 else min(1.0, max(0.0, (now - t_warm) / remaining))


def init_causal(bb: CausalBackbone) -> CausalBackbone:
    """PyTorch's default initialisation, N(0, 0.02) position embeddings (as train_far)."""
    with torch.no_grad():
        for p in (bb.pos_embed, bb.head_pos_embed):
            nn.init.normal_(p, std=0.02)
    return bb


def save_causal(path: str, backbone, head, ema_bb, ema_head, recipe: CausalRecipe,
                step: int, metrics: dict | None = None) -> None:
    args = causal_args(backbone.cfg, ema_rate=recipe.ema_decay, trained_steps=step,
                       **{f"recipe_{k}": v for k, v in asdict(recipe).items()},
                       **{f"metric_{k}": v for k, v in (metrics or {}).items()})
    write_training_checkpoint(path, causal_state_dict(backbone, head),
                              causal_state_dict(ema_bb, ema_head), args, epoch=step)


def train_causal(token_mean: torch.Tensor, token_std: torch.Tensor, labels: np.ndarray,
                 recipe: CausalRecipe, num_classes: int, out_path: str | None = None,
                 progress_every: int = 50):
    """Train on scaled token posteriors [N, L, C]; returns (model, head, ema model, ema head,
    metrics) and writes ``out_path`` every ``checkpoint_every`` steps and at the end."""
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    N, L, C = token_mean.shape
    cfg = recipe.model_config(L, C, num_classes)
    backbone = init_causal(CausalBackbone(cfg.backbone))
    head = SimpleMLPAdaLN(cfg.head)
    ema_bb, ema_head, params, opt = optimisation(backbone, head, recipe)
    objective = make_objective(recipe.objective)
    labels_t = torch.from_numpy(np.asarray(labels, np.int64))
    t0, running = time.time(), []
    backbone.train()
    head.train()
    budget = recipe.minutes * 60 if recipe.minutes else None
    t_warm = None
    done, last_loss = 0, None                 # steps=0 (or a budget spent at once): no step ran
    for step in range(recipe.steps):
        if budget is not None:
            if step == recipe.warmup:
                t_warm = time.time()
            frac = budget_fraction(time.time(), t0, t_warm, budget)
            if frac >= 1.0:
                break
            lr = lr_budget(step, recipe, frac)
        else:
            lr = lr_at(step, recipe)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, N, (recipe.batch,), generator=g)
        tokens = token_mean[idx] + token_std[idx] * torch.randn((recipe.batch, L, C), generator=g)
        lab = labels_t[idx].clone()
        lab[torch.rand(recipe.batch, generator=g) < recipe.label_drop] = num_classes
        z = backbone(tokens[:, :L - 1], lab)                              # [B, L, E]
        z = z.reshape(-1, z.shape[-1]).repeat(recipe.head_batch_mul, 1)
        x1 = tokens.reshape(-1, C).repeat(recipe.head_batch_mul, 1)
        loss = objective(head, ema_head, z, x1, g)
        optimiser_step(loss, opt, params, recipe, step, ((ema_bb, backbone), (ema_head, head)))
        last_loss = float(loss.item())
        running.append(last_loss)
        done = step + 1
        if done % progress_every == 0 or done == recipe.steps:
            el = time.time() - t0
            log.info("causal step %d/%d  loss %.4f  lr %.2e  (%.0fs, %.3f s/step)", done,
                     recipe.steps, float(np.mean(running)), lr, el, el / done)
            running = []
        if out_path and done % recipe.checkpoint_every == 0:
            save_causal(out_path, backbone, head, ema_bb, ema_head, recipe, done,
                        {"train_seconds": time.time() - t0, "loss": last_loss})
    metrics = {"train_seconds": time.time() - t0, "steps_done": done,
               "final_loss": float("nan") if last_loss is None else last_loss}
    if out_path:
        save_causal(out_path, backbone, head, ema_bb, ema_head, recipe, done, metrics)
    return backbone.eval(), head.eval(), ema_bb, ema_head, metrics


def demo_tokens(out: str, vae_path: str, train_images: int = 40000, seed: int = 0):
    """The FAR recipe's tokens: its 40k training images (seed + 100) through the shipped VAE,
    cached in ``<out>/tokens.pt``."""
    from .dataset import make_dataset
    from .recipe import load_full_vae
    from .train_vae import encode_tokens
    images, labels = make_dataset(train_images, seed + 100)
    cache = os.path.join(out, "tokens.pt")
    if os.path.exists(cache):
        mean, std = torch.load(cache, weights_only=True)
    else:
        mean, std = encode_tokens(load_full_vae(vae_path), images)
        torch.save((mean, std), cache)
    return mean, std, labels


def main(argv=None) -> None:
    from ..defaults import ASSETS
    from .dataset import NUM_CLASSES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/causal")
    p.add_argument("--steps", type=int, default=CausalRecipe.steps)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", default=os.path.join(ASSETS, "vae_demo.pth"))
    p.add_argument("--checkpoint-every", type=int, default=CausalRecipe.checkpoint_every)
    p.add_argument("--minutes", type=float,
                   help="Time budget: train until it is spent (at most --steps), cosine over time.")
    a = p.parse_args(argv)
    if a.steps < 0 or a.threads < 1 or a.checkpoint_every < 1 or (a.minutes is not None and a.minutes <= 0):
        p.error("--steps must be >= 0, --threads and --checkpoint-every >= 1, --minutes > 0.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    recipe = CausalRecipe(steps=a.steps, seed=a.seed, checkpoint_every=a.checkpoint_every,
                          minutes=a.minutes)
    t = time.time()
    mean, std, labels = demo_tokens(a.out, a.vae, seed=a.seed)
    log.info("tokens %s in %.0fs", tuple(mean.shape), time.time() - t)
    *_, metrics = train_causal(mean, std, labels, recipe, NUM_CLASSES,
                               os.path.join(a.out, "far_causal_demo.pth"))
    log.info("done: %s", metrics)


if __name__ == "__main__":
    main()
