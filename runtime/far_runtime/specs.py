"""One spec per exported component: tensor names, dtypes, dims, shape ranges, tolerance.

Export, validation, the bundle manifest, engine profiles and the runtime all read these
specs; no tensor name or dim is written anywhere else. A spec is built from a plain
``model`` dict (the manifest's ``model`` entry), so the torch-free runtime builds the very same
specs the exporter used.

Graphs (``name``) of every variant (a variant adds its backbone graphs, ``variants/``):
- ``head_step``: one head evaluation. FAR: x, t, d -> velocity; MAR: x, t (DDPM index) -> eps
  and variance values.
- ``head_fused_o{O}`` (FAR only): O shortcut steps plus the guidance combine in one call.
  ``z`` stacks conditional rows over unconditional rows (2n rows) or holds n rows (no CFG);
  the graph repeats x to match, so one graph serves both.
- ``vae_decoder``: scaled token latents -> image in [-1, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Symbolic dims
BATCH, N_KNOWN, N_PRED, ROWS, ZROWS = "batch", "n_known", "n_pred", "rows", "zrows"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                       # numpy dtype name
    dims: tuple                      # ints (static) or symbolic names (dynamic)
    kind: str = "normal"             # how sample inputs are drawn: normal, labels, known, pred, time, step, scalar

    def shape(self, dims: dict) -> tuple:
        return tuple(d if isinstance(d, int) else dims[d] for d in self.dims)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple
    outputs: tuple
    ranges: dict                     # dynamic dim -> (min, opt, max), the engine profile range
    export_dims: dict                # dims of the sample inputs used for export
    tolerance: float                 # max abs error / max |output| allowed in fp32 validation
    head_steps: int | None = None    # O of a fused head graph

    @property
    def dynamic_dims(self) -> list[str]:
        seen = []
        for t in self.inputs + self.outputs:
            for d in t.dims:
                if isinstance(d, str) and d not in seen:
                    seen.append(d)
        return seen

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return d


def fused_name(steps: int) -> str:
    return f"head_fused_o{steps}"


def shared_specs(model: dict, max_batch: int = 8, head_steps=(1, 2, 4, 8),
                 tolerance: float = 1e-4) -> dict[str, ComponentSpec]:
    """The head graphs and the VAE decoder, alike in every backbone family. ``model`` holds
    seq_len, token_dim, cond_dim, head_kind, image_size, image_channels (the manifest's
    ``model`` entry); ``variants`` add their backbone graphs (``variants.component_specs``)."""
    L, C, D = model["seq_len"], model["token_dim"], model["cond_dim"]
    rows_max = 2 * max_batch                     # CFG doubles the batch
    specs = {}
    head_rows_max = rows_max * L
    if model["head_kind"] == "shortcut":
        step_inputs = (TensorSpec("x", "float32", (ROWS, C)),
                       TensorSpec("t", "float32", (ROWS,), "time"),
                       TensorSpec("d", "float32", (ROWS,), "step"),
                       TensorSpec("z", "float32", (ROWS, D)))
        step_out = (TensorSpec("v", "float32", (ROWS, C)),)
    else:
        step_inputs = (TensorSpec("x", "float32", (ROWS, C)),
                       TensorSpec("t", "float32", (ROWS,), "timestep"),
                       TensorSpec("z", "float32", (ROWS, D)))
        step_out = (TensorSpec("out", "float32", (ROWS, 2 * C)),)
    specs["head_step"] = ComponentSpec(
        "head_step", step_inputs, step_out,
        ranges={ROWS: (1, 2 * L // 8 or 1, head_rows_max)},
        export_dims={ROWS: 6}, tolerance=tolerance)
    if model["head_kind"] == "shortcut":
        for o in head_steps:
            specs[fused_name(o)] = ComponentSpec(
                fused_name(o),
                inputs=(TensorSpec("noise", "float32", (ROWS, C)),
                        TensorSpec("z", "float32", (ZROWS, D)),
                        TensorSpec("cfg", "float32", (1,), "scalar")),
                outputs=(TensorSpec("tokens", "float32", (ROWS, C)),),
                ranges={ROWS: (1, L // 8 or 1, max_batch * L), ZROWS: (1, 2 * L // 8 or 1, head_rows_max)},
                export_dims={ROWS: 3, ZROWS: 6}, tolerance=tolerance, head_steps=o)
    H = model["image_size"]
    specs["vae_decoder"] = ComponentSpec(
        "vae_decoder",
        inputs=(TensorSpec("tokens", "float32", (BATCH, L, C)),),
        outputs=(TensorSpec("image", "float32", (BATCH, model["image_channels"], H, H)),),
        ranges={BATCH: (1, 1, max_batch)}, export_dims={BATCH: 2}, tolerance=tolerance)
    return specs


def sample_inputs(spec: ComponentSpec, dims: dict, model: dict, rng: np.random.Generator,
                  cfg: float = 3.0) -> dict[str, np.ndarray]:
    """Inputs of the given dims drawn the way the sampling loop would feed them."""
    L = model["seq_len"]
    out = {}
    orders = None
    for t in spec.inputs:
        shape = t.shape(dims)
        if t.kind == "labels":
            out[t.name] = rng.integers(0, model["num_classes"] + 1, size=shape).astype(np.int64)
        elif t.kind in ("known", "pred"):
            if orders is None:
                orders = np.stack([rng.permutation(L) for _ in range(shape[0])])
            n = shape[1]
            sel = orders[:, L - n:] if t.kind == "known" else orders[:, :n]
            out[t.name] = np.sort(sel, axis=1).astype(np.int64)
        elif t.kind == "time":
            out[t.name] = rng.uniform(0, 1, size=shape).astype(np.float32)
        elif t.kind == "step":
            out[t.name] = (0.5 ** rng.integers(0, 8, size=shape)).astype(np.float32)
        elif t.kind == "timestep":
            out[t.name] = rng.integers(0, 1000, size=shape).astype(np.float32)
        elif t.kind == "position":        # FAR-Causal: a step's sequence position (P..T-1)
            out[t.name] = np.array([model["class_tokens"] + L // 2 - 1], dtype=np.int64)
        elif t.kind == "scalar":
            out[t.name] = np.full(shape, cfg, dtype=np.float32)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def shared_grid(spec: ComponentSpec, batches=(1, 3, 8)) -> list[dict]:
    """Validation shapes of the head graphs and the VAE decoder, other than the export shape."""
    if spec.name == "vae_decoder":
        return [{BATCH: b} for b in batches]
    if spec.head_steps is not None:
        return [{ROWS: n, ZROWS: z} for n in (1, 5, 40) for z in (n, 2 * n)]
    return [{ROWS: n} for n in (1, 5, 64)]
