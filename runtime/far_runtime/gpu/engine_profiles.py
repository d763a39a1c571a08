"""Optimisation profiles of TensorRT engines, from the shape plans of a bundle's variant.

Every shape a generate() can ask of a graph comes from the plans of the bundle's variant
(``far_runtime.variants``: ``variant.plan``) over the requested K range (the K the variant
accepts in it: FAR-Causal's is L), batch range, CFG on and off, fused and per-step heads, and
every loop mode of the variant (FAR-Causal: KV cache and recompute). Dims a graph's spec does
not have are dropped (the ``slot`` of FAR-Causal's two step bindings: both share the step
engine). Per graph, the shapes are split on their widest dim into at most ``max_profiles``
geometric buckets; each bucket becomes one optimisation profile with min/max of its shapes
and, as opt, the call-weighted median (the shape TensorRT should be fastest at is the one
called most). The dims and their limits are the component specs' (``far_runtime.specs``);
nothing here knows a tensor name or a dim of its own. Plain data: no TensorRT needed.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from ..bundle import Bundle
from ..errors import FarError
from ..specs import ComponentSpec, fused_name
from ..variants import variant_for

SPLIT_RATIO = 4.0        # one profile spans at most this factor on its split dim (if it can)


def parse_range(text: str, what: str, lo: int, hi: int) -> tuple[int, int]:
    """``"16:64"`` or ``"32"`` -> (16, 64) / (32, 32), within [lo, hi]."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not lo <= parts[0] <= parts[1] <= hi:
        raise FarError(f"--{what} takes MIN:MAX (or one value) with {lo} <= MIN <= MAX <= {hi}, got {text!r}.")
    return parts[0], parts[1]


def plan_shapes(bundle: Bundle, k_range: tuple[int, int], batch_range: tuple[int, int]) -> dict:
    """``{graph: Counter({dims: calls})}`` over every plan in the K and batch ranges.

    Covers CFG on and off, the fused head of every exported O and the per-step head (each
    with its O calls per iteration), every loop mode of the variant, the shapes only the
    sampling options make (``variant.shape_options``), and the VAE decode; only
    graphs the bundle has. A call's dims are those of its graph's spec.
    """
    model, manifest = bundle.model, bundle.manifest
    variant = variant_for(model)
    specs = bundle.specs()
    diffusion = model["head_kind"] == "diffusion"
    head_steps = [model["diffusion_steps"]] if diffusion else list(manifest["head_steps"]) or [1]
    modes = ["step"] if diffusion else (["fused"] if bundle.has(fused_name(head_steps[0])) else []) + (
        ["step"] if bundle.has("head_step") else [])
    loops = [m for m in variant.modes if m is not None] or [None]
    ks = variant_ks(variant, model, k_range)
    calls = Counter()
    for K in ks:
        for batch in range(batch_range[0], batch_range[1] + 1):
            for use_cfg, accel in [(False, None), (True, None), *((True, a) for a in variant.shape_options)]:
                for mode in modes or ["fused"]:
                    steps = head_steps[0] if mode == "fused" else max(head_steps)
                    for loop in loops:
                        plan = variant.plan(model, batch, K, steps, use_cfg, mode, bundle.has("vae_decoder"),
                                            manifest["max_batch"], loop, accel)
                        calls.update(profile_key(c.key, specs) for c in plan.calls())
    out: dict = defaultdict(Counter)
    for (graph, dims), n in calls.items():
        out[graph][dims] = n
    if not diffusion:            # fused graphs of every O share the first one's shapes
        first = fused_name(head_steps[0])
        for o in head_steps[1:]:
            if first in out:
                out[fused_name(o)] = Counter(out[first])
    return {g: c for g, c in out.items() if bundle.has(g)}


def variant_ks(variant, model: dict, k_range: tuple[int, int]) -> list[int]:
    """The K values in ``k_range`` the variant runs (FAR/MAR: all; FAR-Causal: L alone)."""
    ks = []
    for K in range(k_range[0], k_range[1] + 1):
        try:
            ks.append(variant.check_k(K, model))
        except FarError:
            continue
    if not ks:
        raise FarError(f"{variant.title} runs K = {variant.default_k(model)} only, outside --k "
                       f"{k_range[0]}:{k_range[1]}; widen --k (or leave it out).")
    return sorted(set(ks))


def profile_key(key: tuple, specs: dict) -> tuple:
    """A call's shape key with only its graph's spec dims (FAR-Causal's two step bindings,
    told apart by ``slot``, are one shape to TensorRT)."""
    graph, dims = key
    spec = specs.get(graph)
    if spec is None:
        return key
    names = set(spec.dynamic_dims)
    return graph, tuple((d, v) for d, v in dims if d in names)


def _weighted_median(values_counts: list[tuple[int, int]]) -> int:
    items = sorted(values_counts)
    total = sum(c for _, c in items)
    acc = 0
    for v, c in items:
        acc += c
        if 2 * acc >= total:
            return v
    return items[-1][0]


def _span(values) -> float:
    return max(values) / max(min(values), 1)


def derive_profiles(spec: ComponentSpec, shapes: Counter, max_profiles: int = 4,
                    ratio: float = SPLIT_RATIO) -> list[dict]:
    """Optimisation profiles ``[{dim: [min, opt, max]}]`` that cover every shape in ``shapes``.

    ``shapes``: ``Counter({dims tuple: calls})`` as ``plan_shapes`` gives it. Shapes outside
    the spec's range (what the graph was exported and validated for) are refused.
    """
    if max_profiles < 1:
        raise FarError(f"--max-profiles must be at least 1, got {max_profiles}.")
    dims_list = [(dict(d), c) for d, c in shapes.items()]
    if not dims_list:
        raise FarError(f"No call of '{spec.name}' falls in the requested K and batch ranges.")
    names = spec.dynamic_dims
    for dims, _ in dims_list:
        if sorted(dims) != sorted(names):
            raise ValueError(f"plan dims {sorted(dims)} are not the spec dims {sorted(names)} of {spec.name}")
        for d, v in dims.items():
            lo, _, hi = spec.ranges[d]
            if not lo <= v <= hi:
                raise FarError(f"'{spec.name}' would need {d} = {v}, outside the range {lo}..{hi} the "
                               "bundle was exported for; narrow --batch/--k or re-export with a larger --max-batch.")
    split = max(names, key=lambda d: _span([dims[d] for dims, _ in dims_list]))
    values = sorted({dims[split] for dims, _ in dims_list})
    step = max(ratio, _span(values) ** (1.0 / max_profiles))
    buckets = [[values[0]]]
    for v in values[1:]:
        if v <= max(buckets[-1][0], 1) * step:
            buckets[-1].append(v)
        else:
            buckets.append([v])
    while len(buckets) > max_profiles:          # merge the adjacent pair that stays narrowest
        i = min(range(len(buckets) - 1), key=lambda j: _span(buckets[j] + buckets[j + 1]))
        buckets[i:i + 2] = [buckets[i] + buckets[i + 1]]
    profiles = []
    for bucket in buckets:
        members = [(dims, c) for dims, c in dims_list if bucket[0] <= dims[split] <= bucket[-1]]
        prof = {}
        for d in names:
            vals = [dims[d] for dims, _ in members]
            prof[d] = [min(vals), _weighted_median([(dims[d], c) for dims, c in members]), max(vals)]
        profiles.append(prof)
    return profiles


def engine_profiles(bundle: Bundle, k_range, batch_range, max_profiles: int = 4,
                    graphs=None) -> dict[str, list[dict]]:
    """Profiles of every graph (or of ``graphs``), derived from the plan over the ranges."""
    max_batch = bundle.manifest["max_batch"]
    if batch_range[1] > max_batch:
        raise FarError(f"--batch goes up to {batch_range[1]}, but the bundle was exported for at most "
                       f"{max_batch}; re-export with --max-batch {batch_range[1]} or narrow --batch.")
    specs = bundle.specs()
    shapes = plan_shapes(bundle, k_range, batch_range)
    wanted = list(graphs) if graphs else list(bundle.graphs)
    unknown = [g for g in wanted if not bundle.has(g)]
    if unknown:
        raise FarError(f"The bundle has no '{unknown[0]}' graph (it has {', '.join(bundle.graphs)}).")
    return {g: derive_profiles(specs[g], shapes[g], max_profiles) for g in wanted if g in shapes}
