"""The masked family (FAR: shortcut head, MAR: diffusion head): K iterations over a random order.

Graph ``backbone``: tokens, labels (``num_classes`` = unconditional), known_idx, pred_idx ->
z at the positions to predict. Iteration ``s`` of ``schedule.mask_schedule`` feeds the known
tokens, gathers z for the tokens leaving the mask and hands them to the head
(``heads.predict``); CFG rows are the conditional rows over their unconditional twins.
The acceleration options (``accel.py``, ACCEL.md) give each iteration its head steps, whether
it is guided and whether its unconditional rows run, are refreshed (z at every masked
position, the difference z_u - z_c kept) or reused (z_c plus the kept difference); the plan
holds that per iteration (``IterationPlan``), so every shape is known before the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import heads
from ..accel import AccelOptions, resolve
from ..options import as_int
from ..plan import Call, check_batch, distinct_calls, make_call
from ..randomness import iteration_indices
from ..schedule import MAX_K, Iteration, cfg_at, check_k, mask_schedule
from ..specs import BATCH, N_KNOWN, N_PRED, ComponentSpec, TensorSpec
from ..defaults import DEFAULT_K
from .base import Variant


@dataclass(frozen=True)
class IterationPlan:
    it: Iteration
    calls: tuple           # graph calls of this iteration, in order (empty when n_pred == 0)
    head_steps: int = 0    # O (FAR) or DDPM steps (MAR) of this iteration
    head_mode: str = "fused"
    rows: int = 0          # backbone rows: 2 x batch when the unconditional rows run, else batch
    n_out: int = 0         # positions the backbone returns z for: n_pred, every masked one on a refresh
    guided: bool = False   # classifier-free guidance on this iteration
    uncond: str = ""       # accel.IterationOptions.uncond: "", "computed", "refresh", "reuse"


@dataclass(frozen=True)
class ShapePlan:
    batch: int
    rows: int              # the most backbone rows of any iteration (2 x batch with CFG)
    num_iter: int
    head_steps: int        # the most head steps of any iteration (O, or MAR's DDPM steps)
    head_mode: str         # "fused" or "step" (or "mixed" when a head schedule needs both)
    iterations: tuple
    decode: Call | None = None
    accel: AccelOptions = AccelOptions()

    def calls(self) -> list[Call]:
        out = [c for ip in self.iterations for c in ip.calls]
        return out + ([self.decode] if self.decode else [])

    def distinct(self) -> list[Call]:
        return distinct_calls(self.calls())


def make_plan(model: dict, batch: int, num_iter: int, head_steps: int, use_cfg: bool,
              head_mode="fused", decode: bool = True, max_batch: int | None = None,
              accel: AccelOptions | None = None) -> ShapePlan:
    """The plan of one run. ``head_mode``: one mode, or a callable O -> mode (a head schedule
    may need fused graphs for some O and the step graph for others)."""
    check_batch(batch, max_batch)
    accel = accel or AccelOptions()
    L = model["seq_len"]
    diffusion = model["head_kind"] == "diffusion"
    its = mask_schedule(num_iter, L)
    opts = resolve(accel, num_iter, head_steps, use_cfg, [it.n_known for it in its], L,
                   shortcut=not diffusion, max_steps=heads.randomness_steps(model),
                   runs=[it.n_pred > 0 for it in its])
    plans = []
    for it, o in zip(its, opts):
        mode = "step" if diffusion else heads.mode_for(head_mode, o.head_steps)
        rows = 2 * batch if o.uncond in ("computed", "refresh") else batch
        n_out = it.before if o.uncond == "refresh" else it.n_pred
        calls = []
        if it.n_pred:
            calls.append(make_call("backbone", **{BATCH: rows, N_KNOWN: it.n_known, N_PRED: n_out}))
            calls.extend(heads.head_calls(mode, o.head_steps, batch, 2 * batch if o.guided else batch,
                                          it.n_pred))
        plans.append(IterationPlan(it, tuple(calls), o.head_steps, mode, rows, n_out, o.guided, o.uncond))
    modes = {ip.head_mode for ip in plans}
    dec = make_call("vae_decoder", **{BATCH: batch}) if decode else None
    return ShapePlan(batch, max(ip.rows for ip in plans), num_iter,
                     max(ip.head_steps for ip in plans), modes.pop() if len(modes) == 1 else "mixed",
                     tuple(plans), dec, accel)


class Masked(Variant):
    family = "masked"
    backbone_graphs = ("backbone",)
    # The condition cache's refresh on every iteration: the backbone's 2B rows then predict
    # every still-masked position. Guidance intervals and head schedules make B-row and
    # per-O calls, which the plain plans (CFG off, every exported O) already show.
    shape_options = (AccelOptions(cfg_cache="0:1"),)

    def backbone_specs(self, model, max_batch, tolerance):
        L, C, D = model["seq_len"], model["token_dim"], model["cond_dim"]
        return {"backbone": ComponentSpec(
            "backbone",
            inputs=(TensorSpec("tokens", "float32", (BATCH, L, C)),
                    TensorSpec("labels", "int64", (BATCH,), "labels"),
                    TensorSpec("known_idx", "int64", (BATCH, N_KNOWN), "known"),
                    TensorSpec("pred_idx", "int64", (BATCH, N_PRED), "pred")),
            outputs=(TensorSpec("z", "float32", (BATCH, N_PRED, D)),),
            ranges={BATCH: (1, 2, 2 * max_batch), N_KNOWN: (0, L // 2, L - 1), N_PRED: (1, L // 8 or 1, L)},
            export_dims={BATCH: 2, N_KNOWN: max(2, L // 2), N_PRED: max(2, L // 4)},
            tolerance=tolerance)}

    def validation_grid(self, spec, model, batches=(1, 3, 8)):
        if spec.name != "backbone":
            return super().validation_grid(spec, model, batches)
        L = model["seq_len"]
        grid = []
        for b in batches:
            for nk in sorted({0, 1, L // 2, L - 1}):
                grid.append({BATCH: b, N_KNOWN: nk, N_PRED: max(1, min(L - nk, 5))})
        grid.append({BATCH: 2, N_KNOWN: 0, N_PRED: L})
        return grid

    def default_k(self, model):
        return DEFAULT_K

    def check_k(self, K, model):
        K = self.default_k(model) if K is None else as_int(K, "K (autoregressive iterations)")
        check_k(K)
        return K

    def plan(self, model, batch, K, O, use_cfg, head_mode, decode, max_batch, mode=None, accel=None):
        self.check_mode(mode)
        K = self.check_k(K, model)
        return make_plan(model, batch, K, heads.plan_steps(model, O), use_cfg, head_mode, decode,
                         max_batch, accel)

    def largest_plan(self, model, max_batch, head_steps=8):
        K = min(MAX_K, model["seq_len"])
        return make_plan(model, max_batch, K, heads.plan_steps(model, head_steps), True, "fused",
                         True, max_batch)

    def sample(self, pipe, lab, plan, K, O, cfg, cfg_schedule, temperature, randomness,
               trace=None, progress=None, mode=None):
        model, backend = pipe.model, pipe.backend
        B, L, C = len(lab), model["seq_len"], model["token_dim"]
        both = np.concatenate([lab, np.full(B, model["num_classes"], np.int64)])
        tokens = np.zeros((B, L, C), np.float32)
        diff = None            # cfg_cache: z_u - z_c [B, L, D] at the positions masked at the last refresh
        bidx = np.arange(B)[:, None]
        for ip in plan.iterations:
            it = ip.it
            if ip.calls:
                known, pred = iteration_indices(randomness.orders, it.before, it.after)
                n = it.n_pred
                reps = ip.rows // B
                out_idx = np.sort(randomness.orders[:, :it.before], axis=1) if ip.uncond == "refresh" else pred
                z = backend.run(ip.calls[0], {
                    "tokens": np.tile(tokens, (reps, 1, 1)) if reps > 1 else tokens,
                    "labels": both if reps > 1 else lab,
                    "known_idx": np.ascontiguousarray(np.tile(known, (reps, 1))),
                    "pred_idx": np.ascontiguousarray(np.tile(out_idx, (reps, 1)))})["z"]
                if ip.uncond == "refresh":
                    if diff is None:
                        diff = np.zeros((B, L, z.shape[-1]), np.float32)
                    diff[bidx, out_idx] = z[B:] - z[:B]
                    at = np.stack([np.searchsorted(out_idx[b], pred[b]) for b in range(B)])
                    z = np.concatenate([z[:B][bidx, at], z[B:][bidx, at]])
                elif ip.uncond == "reuse":
                    z = np.concatenate([z, z + diff[bidx, pred]])
                z = z.reshape(-1, z.shape[-1])
                cfg_iter = cfg_at(it, cfg, cfg_schedule) if ip.guided else 1.0
                noise = randomness.noise[bidx, pred].reshape(B * n, C)
                sched = heads.schedule_for(model, ip.head_steps)
                S = sched.steps if sched else 0
                step_noise = randomness.step_noise[:S, bidx, pred].reshape(S, B * n, C) if S else None
                x = heads.predict(backend, model, ip.head_mode, ip.calls[1:], noise, z, cfg_iter,
                                  ip.guided, temperature, step_noise, sched)
                tokens[bidx, pred] = x.reshape(B, n, C)
            if trace is not None:
                trace.append(tokens.copy())
            if progress is not None:
                progress(it)
        return tokens
