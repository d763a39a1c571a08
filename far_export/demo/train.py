"""One trainer for the demo's models on its VAE tokens; a recipe per backbone family.

The loop is MAR's recipe at small scale, the same for every family: per step a batch of
fresh posterior samples (mean + std * noise), 10% of labels replaced by the unconditional
label (for CFG), the family's batch function (backbone conditions z and the clean tokens
they predict), z repeated ``head_batch_mul`` times for the head loss (``objectives``), AdamW
(betas 0.9/0.95) with warmup and cosine decay to 10% (over the steps, or over wall time with
``minutes``), gradient clipping, and EMA weights (decay ``min(ema_decay, (1 + step) / (10 +
step))``). ``save`` (if given) writes the models every ``checkpoint_every`` steps and at the
end, so a stopped run leaves a usable model.

Families (each a recipe: its sizes, ``build`` and ``batch``):

- ``FarRecipe``: FAR (shortcut head) or MAR (diffusion head) on the masked backbone. Per step
  one mask count (``mask_count``) shared by the batch, a random order per sample, the first
  ``mask_len`` positions of the order masked (as the sampler does); z at the masked
  positions. Departures from MAR, each measured on this CPU budget: default (not
  adaLN-zero) head initialisation, and the sampler's cosine mask distribution instead of
  MAR's [0.7, 1].
- ``CausalRecipe``: FAR-Causal. Teacher forcing over the raster sequence, so every step
  trains the head on all L positions of every sample (``head_batch_mul`` 1: 64 x 64 head rows
  per step against FAR's ~64 x 41 x 2).

Checkpoints are MAR's trainer layout (``model``, ``model_ema``, ``epoch``, ``args``).

    python -m far_export.demo.train --out out/causal --steps 6000 --threads 2   # FAR-Causal
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..checkpoint import model_state_dict, write_safetensors, write_training_checkpoint
from ..config import BackboneConfig, ModelConfig, head_config_for
from ..reference import Backbone, SimpleMLPAdaLN
from ..config import CausalConfig, CausalModelConfig
from ..families.causal import causal_args, causal_head_config, causal_state_dict
from ..reference.causal import CausalBackbone
from .objectives import make_objective

log = logging.getLogger(__name__)


# --- the families ---------------------------------------------------------------------------

@dataclass
class Recipe:
    """What every family's training shares (defaults: the shipped FAR's)."""
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
    depth: int = 2
    heads: int = 4
    head_width: int = 96
    head_depth: int = 3
    seed: int = 0
    checkpoint_every: int | None = None
    minutes: float | None = None      # time budget: cosine over wall time, stop at the budget


@dataclass
class FarRecipe(Recipe):
    depth: int = 2                    # per half (encoder, decoder)
    buffer: int = 16

    name = "far"

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

    def build(self, seq_len: int, token_dim: int, num_classes: int):
        cfg = self.model_config(seq_len, token_dim, num_classes)
        return init_backbone(Backbone(cfg.backbone)), SimpleMLPAdaLN(cfg.head)

    def batch_fn(self, backbone, tokens, lab, rng):
        """z [B, n, D] at the masked positions of a random order, and their clean tokens."""
        B, L, C = tokens.shape
        known, masked = split_positions(rng, B, L, mask_count(rng, L))
        z = backbone(tokens, lab, known, masked)
        return z, torch.gather(tokens, 1, masked.unsqueeze(-1).expand(-1, -1, C))


@dataclass
class CausalRecipe(Recipe):
    steps: int = 6000
    head_batch_mul: int = 1
    depth: int = 4                    # FAR's 2 + 2 blocks as one causal stack
    checkpoint_every: int | None = 250
    class_tokens: int = 4

    name = "causal"

    def model_config(self, seq_len: int, token_dim: int, num_classes: int) -> CausalModelConfig:
        bb = CausalConfig(token_dim=token_dim, seq_len=seq_len, class_tokens=self.class_tokens,
                          num_classes=num_classes, width=self.width, depth=self.depth,
                          heads=self.heads)
        return CausalModelConfig(bb, causal_head_config(bb, self.head_depth, self.head_width))

    def build(self, seq_len: int, token_dim: int, num_classes: int):
        cfg = self.model_config(seq_len, token_dim, num_classes)
        return init_causal(CausalBackbone(cfg.backbone)), SimpleMLPAdaLN(cfg.head)

    def batch_fn(self, backbone, tokens, lab, rng):
        """z [B, L, E] of every token from its prefix (teacher forcing), and the tokens."""
        return backbone(tokens[:, :tokens.shape[1] - 1], lab), tokens


def init_backbone(bb: Backbone) -> Backbone:
    """PyTorch's default initialisation, with MAR's N(0, 0.02) for the position embeddings
    (zeros otherwise). A 2-D sine-cosine start (MAE) was slower on a copy task."""
    with torch.no_grad():
        for p in (bb.encoder_pos_embed_learned, bb.decoder_pos_embed_learned,
                  bb.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
    return bb


def init_causal(bb: CausalBackbone) -> CausalBackbone:
    """PyTorch's default initialisation, N(0, 0.02) position embeddings (as the masked one)."""
    with torch.no_grad():
        for p in (bb.pos_embed, bb.head_pos_embed):
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


# --- writing --------------------------------------------------------------------------------

def save_far(path: str, backbone, head, ema_bb, ema_head, recipe: FarRecipe,
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


def save_causal(path: str, backbone, head, ema_bb, ema_head, recipe: CausalRecipe,
                step: int, metrics: dict | None = None) -> None:
    args = causal_args(backbone.cfg, ema_rate=recipe.ema_decay, trained_steps=step,
                       **{f"recipe_{k}": v for k, v in asdict(recipe).items()},
                       **{f"metric_{k}": v for k, v in (metrics or {}).items()})
    write_training_checkpoint(path, causal_state_dict(backbone, head),
                              causal_state_dict(ema_bb, ema_head), args, epoch=step)


# --- the loop -------------------------------------------------------------------------------

def lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def lr_budget(step: int, r: Recipe, fraction: float) -> float:
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


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)


def optimisation(backbone: nn.Module, head: nn.Module, recipe):
    """Frozen EMA copies, the trained parameters and AdamW (no weight decay on vectors), as
    MAR trains."""
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


def train(token_mean: torch.Tensor, token_std: torch.Tensor, labels: np.ndarray, recipe: Recipe,
          num_classes: int, save=None, progress_every: int = 100):
    """Train ``recipe``'s family on scaled token posteriors [N, L, C]; returns (backbone,
    head, ema backbone, ema head, metrics). ``save(models, step, metrics)`` with models the
    four modules is called every ``recipe.checkpoint_every`` steps and at the end."""
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.Generator(np.random.PCG64(recipe.seed))
    N, L, C = token_mean.shape
    backbone, head = recipe.build(L, C, num_classes)
    ema_bb, ema_head, params, opt = optimisation(backbone, head, recipe)
    models = (backbone, head, ema_bb, ema_head)
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
        z, x1 = recipe.batch_fn(backbone, tokens, lab, rng)
        z = z.reshape(-1, z.shape[-1]).repeat(recipe.head_batch_mul, 1)
        x1 = x1.reshape(-1, C).repeat(recipe.head_batch_mul, 1)
        loss = objective(head, ema_head, z, x1, g)
        optimiser_step(loss, opt, params, recipe, step, ((ema_bb, backbone), (ema_head, head)))
        last_loss = float(loss.item())
        running.append(last_loss)
        done = step + 1
        if done % progress_every == 0 or done == recipe.steps:
            el = time.time() - t0
            log.info("%s %s step %d/%d  loss %.4f  lr %.2e  (%.0fs, %.3f s/step)", recipe.name,
                     recipe.objective, done, recipe.steps, float(np.mean(running)), lr, el, el / done)
            running = []
        if save and recipe.checkpoint_every and done % recipe.checkpoint_every == 0:
            save(models, done, {"train_seconds": time.time() - t0, "loss": last_loss})
    metrics = {"train_seconds": time.time() - t0, "steps_done": done,
               "final_loss": float("nan") if last_loss is None else last_loss}
    if save:
        save(models, done, metrics)
    return backbone.eval(), head.eval(), ema_bb, ema_head, metrics


# --- FAR-Causal from the command line (FAR and MAR: far-export train-demo) ------------------

def demo_tokens(out: str, vae_path: str, train_images: int = 40000, seed: int = 0):
    """The FAR recipe's tokens: its 40k training images (seed + 100) through the shipped VAE,
    cached in ``<out>/tokens.pt``."""
    from .dataset import make_dataset
    from .train_vae import encode_tokens, load_full_vae
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
    p = argparse.ArgumentParser(description="Train the demo FAR-Causal on the demo's VAE tokens.")
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
    path = os.path.join(a.out, "far_causal_demo.pth")
    *_, metrics = train(mean, std, labels, recipe, NUM_CLASSES,
                        save=lambda m, step, met: save_causal(path, *m, recipe, step, met),
                        progress_every=50)
    log.info("done: %s", metrics)


if __name__ == "__main__":
    main()
