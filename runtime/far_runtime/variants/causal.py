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
``head_dim`` to the shared keys. The acceleration options (``accel.py``, ACCEL.md): a head
schedule gives each token its O; a guidance interval its guidance, the unconditional rows
running where ``token_rows`` says (``TokenPlan`` per token); the condition cache is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import heads
from ..accel import AccelOptions, resolve
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
class TokenPlan:
    """The calls that make token i: its condition (the prefill for i = 0, else a step slot or a
    recompute) and its head calls."""
    backbone: Call
    head: tuple
    rows: int              # backbone rows (2 x batch while the unconditional rows run)
    guided: bool           # classifier-free guidance on this token
    head_steps: int
    head_mode: str


@dataclass(frozen=True)
class CausalPlan:
    batch: int
    rows: int              # backbone rows of the prefill (2 x batch with CFG)
    seq_len: int
    head_steps: int        # the most head steps of any token
    head_mode: str         # "fused", "step", or "mixed" under a head schedule
    mode: str
    prefill: Call
    steps: tuple           # the two slots of causal_step at the prefill's rows (mode "cache")
    recompute: tuple       # one causal_recompute call per token 1..L-1 at full rows (mode "recompute")
    head: tuple            # the head calls of token 0
    decode: Call | None = None
    tokens: tuple = ()     # a TokenPlan per token: what the loop runs
    accel: AccelOptions = AccelOptions()

    def calls(self) -> list[Call]:
        out = [c for tp in self.tokens for c in (tp.backbone, *tp.head)]
        return out + ([self.decode] if self.decode else [])

    def distinct(self) -> list[Call]:
        return distinct_calls(self.calls())


def token_rows(guided: list, batch: int, mode: str) -> list[int]:
    """Backbone rows per token. Recompute (and the prefill's z): 2B where guided. With the KV
    cache the unconditional rows also run before a guided token to build their cache, until the
    last guided token; after it they are dropped (the cache is cut to its conditional rows)."""
    last = max((i for i, g in enumerate(guided) if g), default=-1)
    if mode == "recompute":
        return [2 * batch if g else batch for g in guided]
    return [2 * batch if i <= last else batch for i in range(len(guided))]


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

    def plan(self, model, batch, K, O, use_cfg, head_mode, decode, max_batch, mode=None, accel=None):
        self.check_mode(mode)
        mode = mode or "cache"
        self.check_k(K, model)
        check_batch(batch, max_batch)
        accel = accel or AccelOptions()
        L = model["seq_len"]
        opts = resolve(accel, L, O, use_cfg, list(range(L)), L, shortcut=True, cache_allowed=False)
        rows = token_rows([o.guided for o in opts], batch, mode)
        toks = []
        for i, o in enumerate(opts):
            if i == 0:
                bb = make_call("causal_prefill", **{BATCH: rows[0]})
            elif mode == "cache":
                bb = make_call("causal_step", **{BATCH: rows[i], "slot": i % 2})
            else:
                bb = make_call("causal_recompute", **{BATCH: rows[i], N_KNOWN: i})
            hm = heads.mode_for(head_mode, o.head_steps)
            toks.append(TokenPlan(bb, heads.head_calls(hm, o.head_steps, batch,
                                                       2 * batch if o.guided else batch, 1),
                                  rows[i], o.guided, o.head_steps, hm))
        full = rows[0]
        steps = tuple(make_call("causal_step", **{BATCH: full, "slot": s}) for s in (0, 1))
        recompute = tuple(make_call("causal_recompute", **{BATCH: full, N_KNOWN: i})
                          for i in range(1, L)) if mode == "recompute" else ()
        dec = make_call("vae_decoder", **{BATCH: batch}) if decode else None
        modes = {t.head_mode for t in toks}
        return CausalPlan(batch, full, L, max(t.head_steps for t in toks),
                          modes.pop() if len(modes) == 1 else "mixed", mode, toks[0].backbone, steps,
                          recompute, toks[0].head, dec, tuple(toks), accel)

    def largest_plan(self, model, max_batch, head_steps=8):
        return self.plan(model, max_batch, None, head_steps, True, "fused", True, max_batch)

    def sample(self, pipe, lab, plan, K, O, cfg, cfg_schedule, temperature, randomness,
               trace=None, progress=None, mode=None):
        model, backend = pipe.model, pipe.backend
        B, L, C = len(lab), model["seq_len"], model["token_dim"]
        P = model["class_tokens"]
        cfg_at(0, L, cfg, cfg_schedule)                      # validates the schedule name
        both = np.concatenate([lab, np.full(B, model["num_classes"], np.int64)])
        tokens = np.zeros((B, L, C), np.float32)
        pos = np.zeros(1, np.int64)
        first = plan.tokens[0]
        out = backend.run(first.backbone, {"labels": both if first.rows > B else lab})
        z, cache = out["z"], out["cache"]
        for i, tp in enumerate(plan.tokens):
            if i > 0:
                reps = tp.rows // B
                if plan.mode == "cache":
                    if cache.shape[2] != tp.rows:            # the unconditional rows end here
                        cache = np.ascontiguousarray(cache[:, :, :tp.rows])
                    pos[0] = step_position(i, P)
                    out = backend.run(tp.backbone, {"token": np.tile(tokens[:, i - 1], (reps, 1)),
                                                    "pos": pos, "cache": cache})
                    z, cache = out["z"], out["cache_out"]
                else:
                    z = backend.run(tp.backbone, {"tokens": np.tile(tokens[:, :i], (reps, 1, 1)),
                                                  "labels": both if reps > 1 else lab})["z"]
            cfg_i = cfg_at(i, L, cfg, cfg_schedule) if tp.guided else 1.0
            tokens[:, i] = heads.predict(backend, model, tp.head_mode, tp.head, randomness.noise[:, i],
                                         z if tp.guided or tp.rows == B else z[:B], cfg_i, tp.guided,
                                         temperature)
            if trace is not None:
                trace.append(tokens.copy())
            if progress is not None:
                progress(i)
        return tokens
