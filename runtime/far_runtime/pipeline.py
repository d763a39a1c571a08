"""The runtime's sampling loop over compiled graphs, for every model variant.

    pipe = Pipeline.load("graphs/demo")                       # ONNX Runtime, fp32
    pipe = Pipeline.load("graphs/demo", backend="openvino", precision="bf16", threads=2)
    images = pipe.generate([3, 7], K=16, O=8, cfg=3.0, seed=0)   # uint8 [B, H, W, 3]

One class for FAR, MAR and FAR-Causal: the bundle's variant (``variants/``) owns what
differs (its K, its shape plan, its loop); this class checks the options, draws the
randomness, prepares the backend and decodes. ``K`` left out is the variant's default (16
for FAR/MAR; FAR-Causal's only K is its L).

Thread safety: one Pipeline may be used from several threads at once. Sessions are shared;
every buffer and IOBinding lives in per-thread workspaces of the backend, and ``generate``
keeps its own state in locals.
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from . import heads
from .accel import accel_options
from .backends import CPU_ONLY, Backend, make_backend
from .bundle import Bundle, load_bundle
from .defaults import HEAD_MODES
from .errors import FarError
from .images import check_finite, to_uint8
from .options import as_int, check_sampling, check_schedule
from .plan import Plan, make_call
from .randomness import Randomness, draw_randomness
from .specs import BATCH
from .variants import Variant

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, bundle: Bundle, backend: Backend):
        self.bundle = bundle
        self.backend = backend
        self.model = bundle.model
        self.variant: Variant = bundle.variant

    @classmethod
    def load(cls, root: str, providers=CPU_ONLY, threads: int | None = None, check_hashes: bool = True,
             digest: str | None = None, *, backend: str | None = None,
             precision: str | None = None) -> "Pipeline":
        """The bundle at ``root`` (every file's sha256 checked) on ``backend`` ("onnxruntime" or
        "openvino"; None: the backend the bundle's precisions were chosen on, else ONNX Runtime)
        computing in ``precision`` ("fp32", or "bf16" on OpenVINO and a CPU with bf16 units;
        None: each graph in the precision the bundle records for it, fp32 where it records
        none). ``threads``: the backend's operator threads. ``digest``: the bundle digest an app
        pinned (``far-runtime info`` prints it); any other bundle is refused in one sentence."""
        bundle = load_bundle(root, check_hashes, digest)
        return cls(bundle, make_backend(bundle, backend, precision, threads, providers))

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

    def default_k(self) -> int:
        return self.variant.default_k(self.model)

    def head_mode(self, O: int, head: str = "auto") -> str:
        return heads.choose_mode(self.model, self.bundle.graphs, self.bundle.manifest["head_steps"], O, head)

    def plan(self, batch: int, K=None, O: int = 8, cfg: float = 1.0, head: str = "auto",
             decode: bool = True, mode=None, head_schedule=None, cfg_interval=None,
             cfg_cache=None) -> Plan:
        """Every graph call of a run, checked against the bundle before any work (the
        acceleration options: ``accel.py``)."""
        self.variant.check_mode(mode)
        K = self.variant.check_k(K, self.model)
        O = as_int(O, "O (head steps)")
        accel = accel_options(head_schedule, cfg_interval, cfg_cache)
        if accel.head_schedule is None:
            head_mode = self.head_mode(O, head)
        else:                                    # a mode per scheduled O; O itself is unused
            if head not in HEAD_MODES:
                raise FarError(f"head must be 'auto', 'fused' or 'step', got {head!r}.")
            head_mode = functools.partial(self.head_mode, head=head)
        for g in self.variant.required_graphs(mode):
            if not self.bundle.has(g):
                needs = f", which mode '{mode or 'cache'}' needs" if len(self.variant.modes) > 1 else ""
                raise FarError(f"The bundle has no '{g}' graph{needs}.")
        return self.variant.plan(self.model, batch, K, O, cfg != 1.0, head_mode,
                                 decode and self.bundle.has("vae_decoder"),
                                 self.bundle.manifest["max_batch"], mode, accel)

    def respacing(self):
        """MAR's respacing of the DDPM steps (``"ddim25"``, ``"10,15,20"``) or the plain count."""
        return heads.respacing(self.model)

    def randomness_steps(self) -> int:
        """S of this model's randomness (MAR's respaced DDPM steps; 0 for shortcut heads)."""
        return heads.randomness_steps(self.model)

    # --- sampling -------------------------------------------------------------------------

    def generate_tokens(self, labels, K=None, O: int = 8, cfg: float = 1.0,
                        cfg_schedule: str = "linear", temperature: float = 1.0, seed: int = 0,
                        randomness: Randomness | None = None, head: str = "auto",
                        trace: list | None = None, progress=None, mode=None, head_schedule=None,
                        cfg_interval=None, cfg_cache=None) -> np.ndarray:
        """Token latents [B, L, C] after the variant's loop (K iterations; L for FAR-Causal).
        ``head_schedule``, ``cfg_interval``, ``cfg_cache``: the acceleration options (``accel.py``;
        None: off)."""
        v, m = self.variant, self.model
        K = v.check_k(K, m)
        K, O, cfg, temperature, seed = check_sampling(
            K, O, cfg, temperature, seed, check_o=m["head_kind"] == "shortcut")
        check_schedule(cfg_schedule)
        lab = self.check_labels(labels)
        B, L, C = len(lab), m["seq_len"], m["token_dim"]
        plan = self.plan(B, K, O, cfg, head, decode=False, mode=mode, head_schedule=head_schedule,
                         cfg_interval=cfg_interval, cfg_cache=cfg_cache)
        self.backend.prepare(plan)          # the graphs' shapes checked before anything is drawn
        S = self.randomness_steps()
        if randomness is None:
            randomness = draw_randomness(seed, B, L, C, S)
        randomness.check(B, L, C, S)
        return v.sample(self, lab, plan, K, O, cfg, cfg_schedule, temperature, randomness,
                        trace, progress, mode)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Images [B, 3, H, W] in [-1, 1] from token latents."""
        if not self.bundle.has("vae_decoder"):
            raise FarError("The bundle has no vae_decoder graph; export it with --components ...,vae.")
        B = tokens.shape[0]
        mb = self.bundle.manifest["max_batch"]
        if B > mb:
            return np.concatenate([self.decode(tokens[i:i + mb]) for i in range(0, B, mb)])
        out = self.backend.run(make_call("vae_decoder", **{BATCH: B}),
                               {"tokens": np.ascontiguousarray(tokens, np.float32)})["image"]
        return out.copy()

    def generate(self, labels, **kw) -> np.ndarray:
        """uint8 images [B, H, W, 3]; refused when the run produced NaN or Inf."""
        images = self.decode(self.generate_tokens(labels, **kw))
        check_finite(images)
        return to_uint8(images)
