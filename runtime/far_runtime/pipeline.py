"""The runtime's sampling loop: SPEC's K iterations and O head steps over compiled graphs.

    pipe = Pipeline.load("graphs/demo")
    images = pipe.generate([3, 7], K=16, O=8, cfg=3.0, seed=0)   # uint8 [B, H, W, 3]

Thread safety: one Pipeline may be used from several threads at once. Sessions are shared;
every buffer and IOBinding lives in per-thread workspaces of the backend, and ``generate``
keeps its own state in locals.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .backends import Backend, OrtBackend
from .bundle import Bundle, load_bundle
from .ddpm import ddpm_schedule
from .errors import FarError
from .images import check_finite, to_uint8
from .options import as_int, check_sampling
from .plan import ShapePlan, make_call, make_plan
from .randomness import Randomness, draw_randomness, iteration_indices
from .schedule import cfg_at, check_head_steps, check_k
from .specs import BATCH, fused_name

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.model = bundle.model

    @classmethod
    def load(cls, root: str, providers=("CPUExecutionProvider",), threads: int | None = None,
             check_hashes: bool = True) -> "Pipeline":
        bundle = load_bundle(root, check_hashes)
        if bundle.model.get("kind") == "causal" and cls is Pipeline:   # FAR-Causal bundle
            from .causal_pipeline import CausalPipeline
            cls = CausalPipeline
        return cls(bundle, OrtBackend(bundle, providers, threads))

    # --- checks -------------------------------------------------------------------------

    def check_labels(self, labels) -> np.ndarray:
        lab = np.asarray(labels).reshape(-1)
        if lab.size == 0:
            raise FarError("Batch size must be at least 1: no class labels were given.")
        if not np.issubdtype(lab.dtype, np.integer):
            raise FarError(f"Class labels must be integers, got {lab.dtype}.")
        n = self.model["num_classes"]
        bad = lab[(lab < 0) | (lab >= n)]
        if bad.size:
            raise FarError(f"Class {int(bad[0])} is unknown: this model has classes 0..{n - 1}.")
        return lab.astype(np.int64)

    def head_mode(self, O: int, head: str = "auto") -> str:
        if head not in ("auto", "fused", "step"):
            raise FarError(f"head must be 'auto', 'fused' or 'step', got {head!r}.")
        if self.model["head_kind"] == "diffusion":
            return "step"
        O = as_int(O, "O (head steps)")
        check_head_steps(O)
        fused = self.bundle.has(fused_name(O))
        if head == "step" or (head == "auto" and not fused):
            if not self.bundle.has("head_step"):
                raise FarError(f"The bundle has no head graph for O={O}: it has fused graphs for "
                               f"O in {self.bundle.manifest['head_steps']} and no step graph.")
            return "step"
        if not fused:
            raise FarError(f"The bundle has no fused head graph for O={O}; it has "
                           f"{self.bundle.manifest['head_steps']} (re-export with --head-steps {O}).")
        return "fused"

    def plan(self, batch: int, K: int, O: int, cfg: float, head: str = "auto",
             decode: bool = True) -> ShapePlan:
        K = as_int(K, "K (autoregressive iterations)")
        O = as_int(O, "O (head steps)")
        check_k(K)
        steps = self.model["diffusion_steps"] if self.model["head_kind"] == "diffusion" else O
        return make_plan(self.model, batch, K, steps, cfg != 1.0, self.head_mode(O, head),
                         decode and self.bundle.has("vae_decoder"), self.bundle.manifest["max_batch"])

    def respacing(self):
        """MAR's respacing of the DDPM steps (``"ddim25"``, ``"10,15,20"``) or the plain count."""
        return self.model.get("timestep_respacing") or self.model["diffusion_steps"]

    # --- sampling -------------------------------------------------------------------------

    def generate_tokens(self, labels, K: int = 16, O: int = 8, cfg: float = 1.0,
                        cfg_schedule: str = "linear", temperature: float = 1.0, seed: int = 0,
                        randomness: Randomness | None = None, head: str = "auto",
                        trace: list | None = None, progress=None) -> np.ndarray:
        """Token latents [B, L, C] after K iterations."""
        K, O, cfg, temperature, seed = check_sampling(
            K, O, cfg, temperature, seed, check_o=self.model["head_kind"] == "shortcut")
        lab = self.check_labels(labels)
        B, L, C = len(lab), self.model["seq_len"], self.model["token_dim"]
        plan = self.plan(B, K, O, cfg, head, decode=False)
        diffusion = self.model["head_kind"] == "diffusion"
        sched = ddpm_schedule(self.respacing()) if diffusion else None
        S = sched.steps if diffusion else 0
        if randomness is None:
            randomness = draw_randomness(seed, B, L, C, S)
        randomness.check(B, L, C, S)
        self.backend.prepare(plan)
        use_cfg = plan.rows != B
        reps = plan.rows // B
        rows_labels = np.concatenate([lab, np.full(B, self.model["num_classes"], np.int64)]) if use_cfg else lab
        tokens = np.zeros((plan.rows, L, C), np.float32)       # cond rows, then their twins
        bidx = np.arange(B)[:, None]
        for ip in plan.iterations:
            it = ip.it
            if ip.calls:
                known, pred = iteration_indices(randomness.orders, it.before, it.after)
                n = it.n_pred
                z = self.backend.run(ip.calls[0], {
                    "tokens": tokens, "labels": rows_labels,
                    "known_idx": np.ascontiguousarray(np.tile(known, (reps, 1))),
                    "pred_idx": np.ascontiguousarray(np.tile(pred, (reps, 1)))})["z"]
                z = z.reshape(plan.rows * n, -1)
                cfg_iter = cfg_at(it, cfg, cfg_schedule) if use_cfg else 1.0
                noise = randomness.noise[bidx, pred].reshape(B * n, C)
                if diffusion:
                    step_noise = randomness.step_noise[:, bidx, pred].reshape(S, B * n, C)
                    x = self._diffusion(ip.calls[1:], noise, step_noise, z, sched, cfg_iter,
                                        use_cfg, temperature)
                elif plan.head_mode == "fused":
                    x = self.backend.run(ip.calls[1], {
                        "noise": np.ascontiguousarray(noise * np.float32(temperature)), "z": z,
                        "cfg": np.array([cfg_iter], np.float32)})["tokens"]
                else:
                    x = self._shortcut_steps(ip.calls[1:], noise * np.float32(temperature), z,
                                             plan.head_steps, cfg_iter, use_cfg)
                x = x.reshape(B, n, C)
                for r in range(reps):
                    tokens[r * B + bidx, pred] = x
            if trace is not None:
                trace.append(tokens[:B].copy())
            if progress is not None:
                progress(it)
        return tokens[:B].copy()

    def _shortcut_steps(self, calls, x, z, O, cfg_iter, use_cfg):
        n = x.shape[0]
        d = 1.0 / O
        rows = z.shape[0]
        dd = np.full(rows, d, np.float32)
        for i, call in enumerate(calls):
            xin = np.concatenate([x, x]) if use_cfg else np.ascontiguousarray(x)
            v = self.backend.run(call, {"x": xin, "t": np.full(rows, i * d, np.float32),
                                        "d": dd, "z": z})["v"]
            v = v[n:] + np.float32(cfg_iter) * (v[:n] - v[n:]) if use_cfg else v
            x = x + v * np.float32(d)
        return x

    def _diffusion(self, calls, x, step_noise, z, sched, cfg_iter, use_cfg, temperature):
        n, C = x.shape
        rows = z.shape[0]
        for j, (i, call) in enumerate(zip(reversed(range(sched.steps)), calls)):
            xin = np.concatenate([x, x]) if use_cfg else np.ascontiguousarray(x)
            out = self.backend.run(call, {"x": xin, "t": np.full(rows, float(sched.timestep_map[i]), np.float32),
                                          "z": z})["out"]
            eps, var = out[:, :C], out[:n, C:]
            if use_cfg:
                eps = eps[n:] + np.float32(cfg_iter) * (eps[:n] - eps[n:])
            x0 = float(sched.sqrt_recip_ac[i]) * x - float(sched.sqrt_recipm1_ac[i]) * eps
            mean = float(sched.coef1[i]) * x0 + float(sched.coef2[i]) * x
            frac = (var + 1) / 2
            log_var = frac * float(sched.log_var_max[i]) + (1 - frac) * float(sched.log_var_min[i])
            x = mean + np.exp(0.5 * log_var) * step_noise[j] * np.float32(temperature) if i > 0 else mean
        return x

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Images [B, 3, H, W] in [-1, 1] from token latents."""
        if not self.bundle.has("vae_decoder"):
            raise FarError("The bundle has no vae_decoder graph; export it with --components ...,vae.")
        B = tokens.shape[0]
        if B > self.bundle.manifest["max_batch"]:
            return np.concatenate([self.decode(tokens[i:i + self.bundle.manifest["max_batch"]])
                                   for i in range(0, B, self.bundle.manifest["max_batch"])])
        out = self.backend.run(make_call("vae_decoder", **{BATCH: B}),
                               {"tokens": np.ascontiguousarray(tokens, np.float32)})["image"]
        return out.copy()

    def generate(self, labels, **kw) -> np.ndarray:
        """uint8 images [B, H, W, 3]; refused when the run produced NaN or Inf."""
        images = self.decode(self.generate_tokens(labels, **kw))
        check_finite(images)
        return to_uint8(images)
