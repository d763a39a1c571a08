"""The FAR-Causal runtime loop: L steps of one token each over a KV cache, O-step head per token.

    pipe = Pipeline.load("graphs/causal")          # a causal bundle gives a CausalPipeline
    images = pipe.generate([3, 7], O=8, cfg=3.0, seed=0)

Same API as ``Pipeline``; ``K`` is L by construction (one token per step, raster order), so
``K`` may be left out or given as L, nothing else. Per token i: the condition z_i comes from
``causal_prefill`` (i = 0) or ``causal_step`` (token i - 1 at position P + i - 1, the cache),
then one fused head call (``head_fused_o{O}``, or O ``head_step`` calls) turns
``temperature * noise[:, i]`` into token i, CFG inside the head call (cond rows over their
unconditional twins, which share the token and the noise).

The cache never moves: the prefill writes it into a buffer of its full size T, and the steps
alternate between two bindings of ``causal_step`` (``slot`` 0 and 1, each with its own
preallocated output), each reading the other's output. So every step has the same shapes
(one engine profile). With ONNX Runtime on CPU (IOBinding, outputs preallocated, inputs bound
in place) no cache is copied. The GPU backends (``device_slots.py``: TensorRT, torch CUDA)
have not been run on causal bundles, and their ``run`` copies every output to the host today,
so there the cache makes a host round trip per step; keeping it on the device (one CUDA graph
per slot) is what the static shapes allow, not what this loop does yet.
``mode="recompute"`` runs ``causal_recompute`` on the whole prefix instead (no cache): the
baseline of ``bench`` and verify's cross-check.

Randomness: ``noise`` per position is used; ``orders`` are ignored (raster order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .causal_schedule import causal_cfg_at, step_position
from .errors import FarError
from .options import check_sampling
from .pipeline import Pipeline
from .plan import Call, distinct_calls, make_call
from .randomness import Randomness, draw_randomness
from .specs import BATCH, N_KNOWN, ROWS, ZROWS, fused_name

MODES = ("cache", "recompute")


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


class CausalPipeline(Pipeline):
    """``Pipeline`` for bundles whose manifest model has ``kind`` ``causal``."""

    def check_k(self, K) -> None:
        L = self.model["seq_len"]
        if K is not None and K != L:
            raise FarError(f"FAR-Causal predicts one token per step, so K is L = {L} by "
                           f"construction; got K={K!r} (leave K out).")

    def plan(self, batch: int, K=None, O: int = 8, cfg: float = 1.0, head: str = "auto",
             decode: bool = True, mode: str = "cache") -> CausalPlan:
        self.check_k(K)
        if mode not in MODES:
            raise FarError(f"mode must be 'cache' or 'recompute', got {mode!r}.")
        max_batch = self.bundle.manifest["max_batch"]
        if not isinstance(batch, int) or not 1 <= batch <= max_batch:
            raise FarError(f"Batch size must be in 1..{max_batch} (the bundle's max batch), got {batch!r}.")
        need = "causal_step" if mode == "cache" else "causal_recompute"
        for g in ("causal_prefill", need):
            if not self.bundle.has(g):
                raise FarError(f"The bundle has no '{g}' graph, which mode '{mode}' needs.")
        L = self.model["seq_len"]
        rows = 2 * batch if cfg != 1.0 else batch
        head_mode = self.head_mode(O, head)
        if head_mode == "fused":
            head_calls = (make_call(fused_name(O), **{ROWS: batch, ZROWS: rows}),)
        else:
            head_calls = (make_call("head_step", **{ROWS: rows}),) * O
        steps = tuple(make_call("causal_step", **{BATCH: rows, "slot": s}) for s in (0, 1))
        recompute = tuple(make_call("causal_recompute", **{BATCH: rows, N_KNOWN: i})
                          for i in range(1, L)) if mode == "recompute" else ()
        dec = make_call("vae_decoder", **{BATCH: batch}) if decode and self.bundle.has("vae_decoder") else None
        return CausalPlan(batch, rows, L, O, head_mode, mode,
                          make_call("causal_prefill", **{BATCH: rows}), steps, recompute,
                          head_calls, dec)

    def generate_tokens(self, labels, K=None, O: int = 8, cfg: float = 1.0,
                        cfg_schedule: str = "linear", temperature: float = 1.0, seed: int = 0,
                        randomness: Randomness | None = None, head: str = "auto",
                        trace: list | None = None, progress=None, mode: str = "cache") -> np.ndarray:
        """Token latents [B, L, C] after L steps (``K`` is L; see the module docstring)."""
        L = self.model["seq_len"]
        self.check_k(K)
        _, O, cfg, temperature, seed = check_sampling(L if K is None else K, O, cfg, temperature, seed)
        lab = self.check_labels(labels)
        B, C = len(lab), self.model["token_dim"]
        P = self.model["class_tokens"]
        causal_cfg_at(0, L, cfg, cfg_schedule)              # validates the schedule name
        plan = self.plan(B, K, O, cfg, head, decode=False, mode=mode)
        if randomness is None:
            randomness = draw_randomness(seed, B, L, C)
        randomness.check(B, L, C)
        self.backend.prepare(plan)
        use_cfg = plan.rows != B
        reps = plan.rows // B
        rows_labels = np.concatenate([lab, np.full(B, self.model["num_classes"], np.int64)]) if use_cfg else lab
        noise = randomness.noise * np.float32(temperature)
        tokens = np.zeros((B, L, C), np.float32)
        prefix = np.zeros((plan.rows, L, C), np.float32)       # recompute mode: rows' prefix
        token_in = np.zeros((plan.rows, C), np.float32)
        pos = np.zeros(1, np.int64)
        cfg_in = np.zeros(1, np.float32)
        out = self.backend.run(plan.prefill, {"labels": rows_labels})
        z, cache = out["z"], out["cache"]
        for i in range(L):
            if i > 0:
                token_in[:] = np.tile(tokens[:, i - 1], (reps, 1))
                if mode == "cache":
                    pos[0] = step_position(i, P)
                    out = self.backend.run(plan.steps[i % 2], {"token": token_in, "pos": pos,
                                                               "cache": cache})
                    z, cache = out["z"], out["cache_out"]
                else:
                    prefix[:, i - 1] = token_in
                    z = self.backend.run(plan.recompute[i - 1], {
                        "tokens": np.ascontiguousarray(prefix[:, :i]), "labels": rows_labels})["z"]
            cfg_i = causal_cfg_at(i, L, cfg, cfg_schedule) if use_cfg else 1.0
            x0 = np.ascontiguousarray(noise[:, i])
            if plan.head_mode == "fused":
                cfg_in[0] = cfg_i
                x = self.backend.run(plan.head[0], {"noise": x0, "z": z, "cfg": cfg_in})["tokens"]
            else:
                x = self._shortcut_steps(plan.head, x0, z, O, cfg_i, use_cfg)
            tokens[:, i] = x
            if trace is not None:
                trace.append(tokens.copy())
            if progress is not None:
                progress(i)
        return tokens
