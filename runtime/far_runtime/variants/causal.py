"""The causal family (FAR-Causal): L steps of one token each over a KV cache, raster order.

Graphs:
- ``causal_prefill``: labels [batch] (``num_classes`` = unconditional) -> ``z`` [batch, D] of
  token 0 and ``cache`` [depth, 2, batch, heads, T, head_dim] with the P class slots filled.
- ``causal_step``: ``token`` [batch, C] (token i - 1), ``pos`` [1] int64 (its sequence
  position P + i - 1) and ``cache`` -> ``z`` [batch, D] of token i and ``cache_out``. The
  cache has its full static size T = P + L - 1 on every step (preallocated), so all L - 1
  steps share one shape (one engine profile, one CUDA graph per slot).
- ``causal_recompute``: ``tokens`` [batch, n_known, C] (the whole prefix), labels -> ``z`` of
  token n_known. No cache: what every step costs without one (bench, verify's cross-check).

The loop: K is L by construction (one token per step), so K may be left out or given as L.
Per token i the condition z_i comes from the prefill (i = 0) or a step; the head
(``heads.predict``) turns ``temperature * noise[:, i]`` into token i, CFG inside the head
call. The steps alternate between two bindings of ``causal_step`` (``slot`` 0 and 1, each
with its own preallocated output), each reading the other's output, so the cache never moves
and no cache is copied (ONNX Runtime IOBinding). ``mode="recompute"`` runs
``causal_recompute`` on the whole prefix instead. Randomness: ``noise`` per position; the
orders are drawn (one format for every variant) and ignored.

The linear CFG ramp is SPEC's with ``L - mask_len`` read as the tokens known once step i is
done (i + 1), the ramp MAR's schedule gives for K = L: ``1 + (cfg - 1) (i + 1) / L``.
The model entry adds ``class_tokens`` (P), ``context`` (T), ``depth``, ``heads`` and
``head_dim`` to the shared keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import heads
from ..errors import FarError
from ..limits import check_bounds, shown
from ..plan import Call, check_batch, distinct_calls, make_call
from ..specs import BATCH, N_KNOWN, ComponentSpec, TensorSpec
from .base import Variant

# The causal model entry's own fields and their bounds (the shared ones: bundle.MODEL_BOUNDS);
# context is not free: it must be class_tokens + seq_len - 1.
MODEL_BOUNDS = {"class_tokens": (1, 4096), "context": (1, 65536 + 4095), "depth": (1, 1024),
                "heads": (1, 1024), "head_dim": (1, 4096)}
MODES = ("cache", "recompute")


def cfg_at(i: int, seq_len: int, cfg: float, schedule: str) -> float:
    """Guidance scale at token ``i`` of ``seq_len``."""
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (i + 1) / seq_len
    if schedule == "constant":
        return float(cfg)
    raise FarError(f"CFG schedule must be 'linear' or 'constant', got {schedule!r}.")


def step_position(i: int, class_tokens: int) -> int:
    """Sequence position of token ``i - 1`` when it is fed to produce z_i (i >= 1)."""
    return class_tokens + i - 1


def cache_dims(model: dict) -> tuple:
    return (model["depth"], 2, BATCH, model["heads"], model["context"], model["head_dim"])


def positions(seq_len: int) -> list[int]:
    """Token indices of the validation grid: 0 (prefill), 1, L/2, L-1 (steps)."""
    return sorted({0, 1, seq_len // 2, seq_len - 1})


@dataclass(frozen=True)
class CausalPlan:
    batch: int
    rows: int
    seq_len: int
    head_steps: int
    head_mode: str
    mode: str
    prefill: Call
    steps: tuple           # the two slots of causal_step (mode "cache")
    recompute: tuple       # one causal_recompute call per token 1..L-1 (mode "recompute")
    head: tuple            # the head calls of one token
    decode: Call | None = None

    def calls(self) -> list[Call]:
        out = [self.prefill, *self.head]
        for i in range(1, self.seq_len):
            out.append(self.steps[i % 2] if self.mode == "cache" else self.recompute[i - 1])
            out.extend(self.head)
        return out + ([self.decode] if self.decode else [])

    def distinct(self) -> list[Call]:
        return distinct_calls(self.calls())


class Causal(Variant):
    family = "causal"
    backbone_graphs = ("causal_prefill", "causal_step", "causal_recompute")
    modes = (None, *MODES)

    def check_model(self, model, bad):
        check_bounds(model, MODEL_BOUNDS, bad)
        if model["context"] != model["class_tokens"] + model["seq_len"] - 1:
            bad(f"model.context is {model['context']}, not class_tokens + seq_len - 1 = "
                f"{model['class_tokens'] + model['seq_len'] - 1}")
        if model["heads"] * model["head_dim"] != model["cond_dim"]:
            bad(f"model.heads x model.head_dim is {model['heads'] * model['head_dim']}, not "
                f"model.cond_dim {model['cond_dim']}")
        if model["head_kind"] != "shortcut":
            bad(f"a causal model has head_kind {model['head_kind']!r}, not 'shortcut'")

    def check_graph_shapes(self, model, spec, inputs, outputs, bad):
        """The KV cache first, in the model entry's own words: its dims are depth, 2, batch,
        heads, context and head_dim, all from the manifest."""
        want = cache_dims(model)
        for n, _, dims in list(inputs) + list(outputs):
            if n in ("cache", "cache_out") and (len(dims) != len(want) or any(
                    isinstance(h, int) and h != w for w, h in zip(want, dims))):
                bad(f"it declares {n} as {shown(list(dims), 100)}, but the manifest's model entry (depth "
                    f"{model['depth']}, heads {model['heads']}, context {model['context']}, head_dim "
                    f"{model['head_dim']}) makes it {list(want)}")
        super().check_graph_shapes(model, spec, inputs, outputs, bad)

    def backbone_specs(self, model, max_batch, tolerance):
        L, C, D = model["seq_len"], model["token_dim"], model["cond_dim"]
        rows = (1, 2, 2 * max_batch)                              # CFG doubles the batch
        cache = cache_dims(model)
        z = TensorSpec("z", "float32", (BATCH, D))
        return {
            "causal_prefill": ComponentSpec(
                "causal_prefill", inputs=(TensorSpec("labels", "int64", (BATCH,), "labels"),),
                outputs=(z, TensorSpec("cache", "float32", cache)),
                ranges={BATCH: rows}, export_dims={BATCH: 2}, tolerance=tolerance),
            "causal_step": ComponentSpec(
                "causal_step",
                inputs=(TensorSpec("token", "float32", (BATCH, C)),
                        TensorSpec("pos", "int64", (1,), "position"),
                        TensorSpec("cache", "float32", cache)),
                outputs=(z, TensorSpec("cache_out", "float32", cache)),
                ranges={BATCH: rows}, export_dims={BATCH: 2}, tolerance=tolerance),
            "causal_recompute": ComponentSpec(
                "causal_recompute",
                inputs=(TensorSpec("tokens", "float32", (BATCH, N_KNOWN, C)),
                        TensorSpec("labels", "int64", (BATCH,), "labels")),
                outputs=(z,),
                ranges={BATCH: rows, N_KNOWN: (0, L // 2, L - 1)},
                export_dims={BATCH: 2, N_KNOWN: max(2, L // 2)}, tolerance=tolerance)}

    def specs(self, model, max_batch=8, head_steps=(1, 2, 4, 8), tolerance=1e-4):
        from ..specs import shared_specs       # head graphs first: the order bundles list them in
        return {**shared_specs(model, max_batch, head_steps, tolerance),
                **self.backbone_specs(model, max_batch, tolerance)}

    def required_graphs(self, mode=None):
        return ("causal_prefill", "causal_recompute" if mode == "recompute" else "causal_step")

    def default_k(self, model):
        return model["seq_len"]

    def check_k(self, K, model):
        L = model["seq_len"]
        if K is not None and K != L:
            raise FarError(f"FAR-Causal predicts one token per step, so K is L = {L} by "
                           f"construction; got K={K!r} (leave K out).")
        return L

    def check_mode(self, mode):
        if mode not in self.modes:
            raise FarError(f"mode must be 'cache' or 'recompute', got {mode!r}.")

    def plan(self, model, batch, K, O, use_cfg, head_mode, decode, max_batch, mode=None):
        self.check_mode(mode)
        mode = mode or "cache"
        self.check_k(K, model)
        check_batch(batch, max_batch)
        L = model["seq_len"]
        rows = 2 * batch if use_cfg else batch
        steps = tuple(make_call("causal_step", **{BATCH: rows, "slot": s}) for s in (0, 1))
        recompute = tuple(make_call("causal_recompute", **{BATCH: rows, N_KNOWN: i})
                          for i in range(1, L)) if mode == "recompute" else ()
        dec = make_call("vae_decoder", **{BATCH: batch}) if decode else None
        return CausalPlan(batch, rows, L, O, head_mode, mode,
                          make_call("causal_prefill", **{BATCH: rows}), steps, recompute,
                          heads.head_calls(head_mode, O, batch, rows, 1), dec)

    def largest_plan(self, model, max_batch, head_steps=8):
        return self.plan(model, max_batch, None, head_steps, True, "fused", True, max_batch)

    def sample(self, pipe, lab, plan, K, O, cfg, cfg_schedule, temperature, randomness,
               trace=None, progress=None, mode=None):
        model, backend = pipe.model, pipe.backend
        B, L, C = len(lab), model["seq_len"], model["token_dim"]
        P = model["class_tokens"]
        cfg_at(0, L, cfg, cfg_schedule)                      # validates the schedule name
        use_cfg = plan.rows != B
        reps = plan.rows // B
        rows_labels = np.concatenate([lab, np.full(B, model["num_classes"], np.int64)]) if use_cfg else lab
        tokens = np.zeros((B, L, C), np.float32)
        prefix = np.zeros((plan.rows, L, C), np.float32)       # recompute mode: rows' prefix
        token_in = np.zeros((plan.rows, C), np.float32)
        pos = np.zeros(1, np.int64)
        out = backend.run(plan.prefill, {"labels": rows_labels})
        z, cache = out["z"], out["cache"]
        for i in range(L):
            if i > 0:
                token_in[:] = np.tile(tokens[:, i - 1], (reps, 1))
                if plan.mode == "cache":
                    pos[0] = step_position(i, P)
                    out = backend.run(plan.steps[i % 2], {"token": token_in, "pos": pos, "cache": cache})
                    z, cache = out["z"], out["cache_out"]
                else:
                    prefix[:, i - 1] = token_in
                    z = backend.run(plan.recompute[i - 1], {
                        "tokens": np.ascontiguousarray(prefix[:, :i]), "labels": rows_labels})["z"]
            cfg_i = cfg_at(i, L, cfg, cfg_schedule) if use_cfg else 1.0
            tokens[:, i] = heads.predict(backend, model, plan.head_mode, plan.head,
                                         randomness.noise[:, i], z, cfg_i, use_cfg, temperature)
            if trace is not None:
                trace.append(tokens.copy())
            if progress is not None:
                progress(i)
        return tokens
