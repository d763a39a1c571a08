"""What a variant is: a backbone family (masked, causal) with a head kind (shortcut, diffusion).

The runtime asks a variant for everything that differs between FAR, MAR and FAR-Causal and
for nothing else: its graph specs, its checks of the manifest's model entry, its default and
allowed K, its shape plan and its sampling loop. The head kinds themselves are ``heads.py``,
shared by both families' loops. A family subclasses ``Variant``; ``variants/__init__.py``
registers one instance per model.
"""
from __future__ import annotations

from ..errors import FarError
from ..limits import shown
from ..specs import ComponentSpec, shared_grid, shared_specs

ONNX_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
              "int32": "tensor(int32)"}


class Variant:
    family = ""              # "masked" or "causal": the manifest's model.kind (absent: masked)
    backbone_graphs: tuple = ()
    modes: tuple = (None,)   # loop modes besides the default (FAR-Causal: "cache", "recompute")
    # Sampling options (accel.AccelOptions) whose guided plans show every shape the options can
    # make that the plain plans do not (engine profiles read them; see gpu/engine_profiles.py).
    shape_options: tuple = ()

    def __init__(self, name: str, head_kind: str, title: str):
        self.name, self.head_kind, self.title = name, head_kind, title

    def __repr__(self) -> str:
        return f"<variant {self.name}>"

    # --- the model entry and its graphs ------------------------------------------------
    def check_model(self, model: dict, bad) -> None:
        """Refuse (``bad(sentence)``) what this family needs beyond the shared model keys."""

    def backbone_specs(self, model: dict, max_batch: int, tolerance: float) -> dict[str, ComponentSpec]:
        raise NotImplementedError

    def check_graph_shapes(self, model: dict, spec: ComponentSpec, inputs: list, outputs: list, bad) -> None:
        """A graph's declared inputs and outputs against the spec the manifest's model entry
        makes for it; ``inputs``/``outputs``: (name, ONNX type, dims) as ONNX Runtime's
        ``get_inputs()``/``get_outputs()`` give them (a dim: an int, a symbol or None).

        Refused (``bad(sentence)``): a spec tensor the graph lacks, an input the graph needs
        that no run feeds, another type or rank, a static dim that differs, and a dim the
        graph fixes where the spec's is dynamic. A symbolic graph dim cannot be checked here:
        a run whose shape it refuses fails as one sentence (``OrtBackend.run``)."""
        declared = {"input": {n: (t, d) for n, t, d in inputs}, "output": {n: (t, d) for n, t, d in outputs}}
        for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
            for t in tensors:
                if t.name not in declared[kind]:
                    bad(f"it has no {kind} {t.name}")
                typ, dims = declared[kind][t.name]
                if typ != ONNX_TYPES.get(t.dtype):
                    bad(f"its {kind} {t.name} is {shown(typ, 40)}, not {t.dtype}")
                if len(dims) != len(t.dims) or any(
                        isinstance(h, int) and (isinstance(w, str) or w != h) for w, h in zip(t.dims, dims)):
                    bad(f"it declares {kind} {t.name} as {shown(list(dims), 100)}, but the manifest's model "
                        f"entry makes it {list(t.dims)}")
        extra = sorted(set(declared["input"]) - set(spec.input_names()))
        if extra:
            bad(f"it needs input {shown(extra[0], 40)}, which no run of this model feeds")

    def specs(self, model: dict, max_batch: int = 8, head_steps=(1, 2, 4, 8),
              tolerance: float = 1e-4) -> dict[str, ComponentSpec]:
        return {**self.backbone_specs(model, max_batch, tolerance),
                **shared_specs(model, max_batch, head_steps, tolerance)}

    def validation_grid(self, spec: ComponentSpec, model: dict, batches=(1, 3, 8)) -> list[dict]:
        """Validation shapes of ``spec``, other than its export shape."""
        return shared_grid(spec, batches)

    def required_graphs(self, mode=None) -> tuple:
        """The backbone graphs a run in ``mode`` needs."""
        return self.backbone_graphs

    # --- K ------------------------------------------------------------------------------
    def default_k(self, model: dict) -> int:
        raise NotImplementedError

    def check_k(self, K, model: dict) -> int:
        """K normalised (None: the default), or one sentence."""
        raise NotImplementedError

    def check_mode(self, mode) -> None:
        if mode not in self.modes:
            allowed = " or ".join(repr(m) for m in self.modes if m is not None)
            raise FarError(f"mode must be {allowed}, got {mode!r}." if allowed else
                           f"{self.title} has one sampling loop; got mode {mode!r}.")

    # --- plan and loop ------------------------------------------------------------------
    def plan(self, model: dict, batch: int, K: int, O: int, use_cfg: bool, head_mode,
             decode: bool, max_batch: int | None, mode=None, accel=None):
        """Every graph call of a run. ``head_mode``: "fused"/"step", or a callable O -> mode
        (a head schedule's O values may differ in which graphs serve them); ``accel``: the
        ``accel.AccelOptions`` (None: all off)."""
        raise NotImplementedError

    def largest_plan(self, model: dict, max_batch: int, head_steps: int = 8):
        """The plan with the most distinct shapes a bundle of ``model`` can run: what GPU
        slot caches are sized for when no capacity is given."""
        raise NotImplementedError

    def sample(self, pipe, lab, plan, K: int, O: int, cfg: float, cfg_schedule: str,
               temperature: float, randomness, trace=None, progress=None, mode=None):
        """Token latents [B, L, C]: the loop over ``plan`` with ``pipe.backend``."""
        raise NotImplementedError
