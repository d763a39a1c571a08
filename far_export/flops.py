"""FLOPs of a sampling run, counted from the model config and the shape plan of its variant
(every call a plan lists: FAR/MAR's ``backbone``, FAR-Causal's prefill, step and recompute
graphs, the heads), and the machine's measured matmul peak: what ``far-export bench`` divides
to get achieved throughput.

Counted: every matrix product (Linear layers, attention's QK^T and AV), at 2 FLOPs per
multiply-add, the convention of ``torch.utils.flop_counter`` (the tests check the two agree).
Not counted: LayerNorm, softmax, GELU/SiLU, gathers, adds (a few percent at these widths).
Torch-free: the runtime worker and the report import this module.
"""
from __future__ import annotations

import os
import time

from far_runtime.plan import Call, Plan
from far_runtime.specs import BATCH, N_KNOWN, ROWS, ZROWS
from far_runtime.variants.causal import Causal

CAUSAL_GRAPHS = Causal.backbone_graphs


def block_flops(seq: int, width: int, mlp_ratio: float, keys: int | None = None) -> int:
    """One timm ViT block on one row of ``seq`` tokens attending to ``keys`` positions (default
    ``seq``): qkv, proj, fc1, fc2, QK^T, AV."""
    hidden = int(width * mlp_ratio)
    linear = 2 * seq * (3 * width * width + width * width + 2 * width * hidden)
    attention = 2 * 2 * seq * (seq if keys is None else keys) * width
    return linear + attention


def backbone_flops(bb: dict, rows: int, n_known: int) -> int:
    """One backbone call: ``rows`` rows (2 x batch with CFG), ``n_known`` known tokens.

    ``bb`` is a BackboneConfig as a dict (the bundle manifest's ``config.backbone``).
    The encoder sees buffer + known tokens; the decoder always the full buffer + sequence.
    """
    E, D, L, C, buf = bb["encoder_width"], bb["decoder_width"], bb["seq_len"], bb["token_dim"], bb["buffer_size"]
    s_enc, s_dec = buf + n_known, buf + L
    per_row = (2 * L * C * E                                           # z_proj on every token
               + bb["encoder_depth"] * block_flops(s_enc, E, bb["mlp_ratio"])
               + 2 * s_enc * E * D                                     # decoder_embed
               + bb["decoder_depth"] * block_flops(s_dec, D, bb["mlp_ratio"]))
    return rows * per_row


def causal_backbone_flops(bb: dict, call: Call) -> int:
    """One call of a FAR-Causal graph (``bb``: its CausalConfig as a dict). Prefill: the P
    class slots; step: one token attending to the whole static cache (T = P + L - 1
    positions, the unseen ones masked, as the graph computes it); recompute: the P slots and
    ``n_known`` tokens, attention over all of them (causal mask)."""
    E, C, P, mlp = bb["width"], bb["token_dim"], bb["class_tokens"], bb["mlp_ratio"]
    depth, T = bb["depth"], bb["class_tokens"] + bb["seq_len"] - 1
    if call.graph == "causal_prefill":
        per_row = depth * block_flops(P, E, mlp)
    elif call.graph == "causal_step":
        per_row = 2 * C * E + depth * block_flops(1, E, mlp, keys=T)
    else:
        n = call.dim(N_KNOWN)
        per_row = 2 * n * C * E + depth * block_flops(P + n, E, mlp)
    return call.dim(BATCH) * per_row


def head_eval_flops(hd: dict, embeds: bool = True) -> int:
    """One head evaluation of one row (``hd`` a HeadConfig dict). ``embeds``: include the
    time/step/condition embedders (a step graph computes them per row and call)."""
    W, C, D, F, out = hd["width"], hd["token_dim"], hd["cond_dim"], hd["freq_dim"], hd["out_dim"]
    core = (2 * C * W                                  # input_proj
            + hd["depth"] * (2 * W * 3 * W + 2 * 2 * W * W)   # adaLN (3W) + 2-layer MLP per block
            + 2 * W * 2 * W + 2 * W * out)             # final adaLN (2W) + linear
    if not embeds:
        return core
    n_embed = 2 if hd["kind"] == "shortcut" else 1     # time (+ step size)
    return core + n_embed * 2 * (F * W + W * W) + 2 * D * W


def fused_steps(call: Call) -> int:
    """O of a ``head_fused_o{O}`` call (a head schedule gives iterations different O)."""
    return int(call.graph[len("head_fused_o"):])


def plan_flops(config: dict, plan: Plan) -> dict:
    """Backbone and head FLOPs of every graph call of a plan (``config``: manifest ``config``),
    each counted at its own dims (the acceleration options vary rows and O per iteration)."""
    bb, hd = config["backbone"], config["head"]
    out = {"backbone": 0, "head": 0}
    for call in plan.calls():
        if call.graph == "backbone":
            out["backbone"] += backbone_flops(bb, call.dim(BATCH), call.dim(N_KNOWN))
        elif call.graph in CAUSAL_GRAPHS:
            out["backbone"] += causal_backbone_flops(bb, call)
        elif call.graph == "head_step":
            out["head"] += call.dim(ROWS) * head_eval_flops(hd)
        elif call.graph.startswith("head_fused_o"):
            # the condition embedded once per z row, the step size once, the time once per
            # step (one row each); x is repeated to z's rows at every step
            z_rows, W = call.dim(ZROWS), hd["width"]
            one_embed = 2 * (hd["freq_dim"] * W + W * W)
            out["head"] += (z_rows * 2 * hd["cond_dim"] * W + one_embed
                            + fused_steps(call) * (z_rows * head_eval_flops(hd, embeds=False) + one_embed))
    return out


def measure_matmul_peak(threads: int, seconds: float = 1.0, n: int = 2048) -> dict:
    """Best fp32 GFLOP/s of an n x n x n matmul over ~``seconds``, with torch (``threads``
    threads) and with numpy; the peak is the better of the two when ``threads`` is every core."""
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    result = {"n": n, "threads": threads}
    a32 = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b32 = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    for name, fn in (("torch", lambda: torch.matmul(ta, tb)), ("numpy", lambda: a32 @ b32)):
        fn()                                           # warm-up
        best, t_end = float("inf"), time.perf_counter() + seconds
        reps = 0
        while time.perf_counter() < t_end or reps < 2:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
            reps += 1
        result[f"{name}_gflops"] = 2 * n ** 3 / best / 1e9
        result[f"{name}_reps"] = reps
    # numpy's BLAS picks its own thread count (all cores): it counts only when that is ours
    all_cores = threads >= (os.cpu_count() or 1)
    result["peak_gflops"] = max(result["torch_gflops"], result["numpy_gflops"]) if all_cores else result["torch_gflops"]
    result["numpy_threads"] = "all cores (its BLAS's own setting)"
    result["nominal"] = nominal_peak(threads)
    return result


def nominal_peak(threads: int) -> dict | None:
    """cores x clock x fp32 FLOPs per cycle from /proc/cpuinfo: 2 FMA pipes x 8 lanes x 2 = 32
    for AVX2 and for AMD Zen 2-4 (Zen 4 runs AVX-512 on 256-bit pipes), 64 for AVX-512 on
    Intel and on Zen 5. The clock is the one the kernel reports (the base clock in a VM, not
    the boost clock); a paper limit, not a measurement."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    mhz, flags, model, vendor, family = None, "", "", "", 0
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "cpu MHz" and mhz is None:
            mhz = float(val)
        elif key == "flags" and not flags:
            flags = val
        elif key == "model name" and not model:
            model = val.strip()
        elif key == "vendor_id" and not vendor:
            vendor = val.strip()
        elif key == "cpu family" and not family:
            family = int(val)
    if not mhz:
        return None
    fl = flags.split()
    wide = "avx512f" in fl and not (vendor == "AuthenticAMD" and family < 26)
    per_cycle = 64 if wide else 32 if ("avx2" in fl and "fma" in fl) else 16 if "avx" in fl else 8
    cores = min(threads, os.cpu_count() or 1)
    return {"cpu": f"{model} ({vendor} family {family})", "mhz": mhz, "cores": cores, "flops_per_cycle": per_cycle,
            "gflops": cores * mhz * 1e6 * per_cycle / 1e9}
