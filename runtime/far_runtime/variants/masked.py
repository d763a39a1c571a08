"""The masked family (FAR: shortcut head, MAR: diffusion head): K iterations over a random order.

Graph ``backbone``: tokens, labels (``num_classes`` = unconditional), known_idx, pred_idx ->
z at the positions to predict. Iteration ``s`` of ``schedule.mask_schedule`` feeds the known
tokens, gathers z for the tokens leaving the mask and hands them to the head
(``heads.predict``); CFG rows are the conditional rows over their unconditional twins.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import heads
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


@dataclass(frozen=True)
class ShapePlan:
    batch: int
    rows: int              # batch rows of the backbone (2 x batch with CFG)
    num_iter: int
    head_steps: int        # O for shortcut heads, diffusion steps for MAR heads
    head_mode: str         # "fused" or "step"
    iterations: tuple
    decode: Call | None = None

    def calls(self) -> list[Call]:
        out = [c for ip in self.iterations for c in ip.calls]
        return out + ([self.decode] if self.decode else [])

    def distinct(self) -> list[Call]:
        return distinct_calls(self.calls())


def make_plan(model: dict, batch: int, num_iter: int, head_steps: int, use_cfg: bool,
              head_mode: str = "fused", decode: bool = True, max_batch: int | None = None) -> ShapePlan:
    check_batch(batch, max_batch)
    L = model["seq_len"]
    rows = 2 * batch if use_cfg else batch
    if model["head_kind"] == "diffusion":
        head_mode = "step"
    its = []
    for it in mask_schedule(num_iter, L):
        calls = []
        if it.n_pred:
            n = it.n_pred
            calls.append(make_call("backbone", **{BATCH: rows, N_KNOWN: it.n_known, N_PRED: n}))
            calls.extend(heads.head_calls(head_mode, head_steps, batch, rows, n))
        its.append(IterationPlan(it, tuple(calls)))
    dec = make_call("vae_decoder", **{BATCH: batch}) if decode else None
    return ShapePlan(batch, rows, num_iter, head_steps, head_mode, tuple(its), dec)


class Masked(Variant):
    family = "masked"
    backbone_graphs = ("backbone",)

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

    def plan(self, model, batch, K, O, use_cfg, head_mode, decode, max_batch, mode=None):
        self.check_mode(mode)
        K = self.check_k(K, model)
        return make_plan(model, batch, K, heads.plan_steps(model, O), use_cfg, head_mode, decode, max_batch)

    def largest_plan(self, model, max_batch, head_steps=8):
        K = min(MAX_K, model["seq_len"])
        return make_plan(model, max_batch, K, heads.plan_steps(model, head_steps), True, "fused",
                         True, max_batch)

    def sample(self, pipe, lab, plan, K, O, cfg, cfg_schedule, temperature, randomness,
               trace=None, progress=None, mode=None):
        model, backend = pipe.model, pipe.backend
        B, L, C = len(lab), model["seq_len"], model["token_dim"]
        sched = heads.schedule(model)
        S = sched.steps if sched else 0
        use_cfg = plan.rows != B
        reps = plan.rows // B
        rows_labels = np.concatenate([lab, np.full(B, model["num_classes"], np.int64)]) if use_cfg else lab
        tokens = np.zeros((plan.rows, L, C), np.float32)       # cond rows, then their twins
        bidx = np.arange(B)[:, None]
        for ip in plan.iterations:
            it = ip.it
            if ip.calls:
                known, pred = iteration_indices(randomness.orders, it.before, it.after)
                n = it.n_pred
                z = backend.run(ip.calls[0], {
                    "tokens": tokens, "labels": rows_labels,
                    "known_idx": np.ascontiguousarray(np.tile(known, (reps, 1))),
                    "pred_idx": np.ascontiguousarray(np.tile(pred, (reps, 1)))})["z"]
                z = z.reshape(plan.rows * n, -1)
                cfg_iter = cfg_at(it, cfg, cfg_schedule) if use_cfg else 1.0
                noise = randomness.noise[bidx, pred].reshape(B * n, C)
                step_noise = randomness.step_noise[:, bidx, pred].reshape(S, B * n, C) if S else None
                x = heads.predict(backend, model, plan.head_mode, ip.calls[1:], noise, z, cfg_iter,
                                  use_cfg, temperature, step_noise, sched)
                x = x.reshape(B, n, C)
                for r in range(reps):
                    tokens[r * B + bidx, pred] = x
            if trace is not None:
                trace.append(tokens[:B].copy())
            if progress is not None:
                progress(it)
        return tokens[:B].copy()
