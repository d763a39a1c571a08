"""FAR-Causal checkpoints: telling them apart, inferring their config, building the modules.

A state dict is FAR-Causal when it has ``tok_embed.weight`` and ``blocks.0.attn.qkv.weight``
(MAR/FAR have ``z_proj.weight`` and ``encoder_blocks.*``). Everything but the number of
attention heads is read from shapes: ``tok_embed.weight`` [E, C], ``head_pos_embed`` [1, L, E],
``pos_embed`` [1, P + L - 1, E] (so P class slots), ``class_emb.weight`` [classes, E],
``blocks.{i}`` (depth), ``blocks.0.mlp.fc1.weight`` [hidden, E]. Heads: ``--heads``, the
checkpoint metadata ``heads``, ``args.num_heads``, else width/64. The head must be a FAR
shortcut head (``step_embed`` present) under ``diffloss.net.`` or ``head.``.
"""
from __future__ import annotations

import torch

from far_runtime.errors import FarError

from .config import HEAD_PREFIXES, HeadConfig, _count_blocks, _shape
from .reference.causal import CausalBackbone, CausalConfig, CausalModelConfig


def is_causal_state_dict(sd: dict) -> bool:
    return "tok_embed.weight" in sd and "blocks.0.attn.qkv.weight" in sd


def causal_heads(width: int, args=None, metadata: dict | None = None,
                 user: int | None = None) -> tuple[int, str]:
    if user:
        rule, n = "user option", int(user)
    elif metadata and metadata.get("heads"):
        rule, n = "checkpoint metadata", int(metadata["heads"])
    elif args is not None and getattr(args, "num_heads", None):
        rule, n = "args.num_heads", int(args.num_heads)
    else:
        rule, n = "width/64", max(1, width // 64)
    if n < 1 or width % n:
        raise FarError(f"The causal width {width} is not divisible by {n} attention heads "
                       f"(rule: {rule}); pass the right count with --heads.")
    return n, rule


def infer_causal_config(sd: dict, args=None, metadata: dict | None = None,
                        heads: int | None = None) -> CausalModelConfig:
    E, C = _shape(sd, "tok_embed.weight", 2, "a FAR-Causal model")
    _, L, E2 = _shape(sd, "head_pos_embed", 3, "a FAR-Causal model")
    _, T, _ = _shape(sd, "pos_embed", 3, "a FAR-Causal model")
    ncls, _ = _shape(sd, "class_emb.weight", 2, "a FAR-Causal model")
    hidden, _ = _shape(sd, "blocks.0.mlp.fc1.weight", 2, "a FAR-Causal model")
    P = T - L + 1
    if E2 != E or P < 1:
        raise FarError(f"The causal checkpoint's position tables do not fit together: pos_embed "
                       f"has {T} positions and head_pos_embed {L} (need at least L - 1 + 1 class slot).")
    n_heads, rule = causal_heads(E, args, metadata, heads)
    bb = CausalConfig(token_dim=C, seq_len=L, class_tokens=P, num_classes=ncls, width=E,
                      depth=_count_blocks(sd, "blocks."), heads=n_heads, mlp_ratio=hidden / E,
                      heads_rule=rule)
    prefix = next((p for p in HEAD_PREFIXES if f"{p}input_proj.weight" in sd), None)
    if prefix is None:
        raise FarError("The causal checkpoint has no head ('diffloss.net.input_proj.weight').")
    if f"{prefix}step_embed.mlp.0.weight" not in sd:
        raise FarError("The causal checkpoint's head has no step_embed, so it is a diffusion head; "
                       "FAR-Causal needs the FAR shortcut head.")
    W, _ = _shape(sd, f"{prefix}input_proj.weight", 2, "a FAR-Causal model")
    out, _ = _shape(sd, f"{prefix}final_layer.linear.weight", 2, "a FAR-Causal model")
    _, freq = _shape(sd, f"{prefix}time_embed.mlp.0.weight", 2, "a FAR-Causal model")
    _, zc = _shape(sd, f"{prefix}cond_embed.weight", 2, "a FAR-Causal model")
    if zc != E or out != C:
        raise FarError(f"The head takes conditions of width {zc} and outputs {out} channels; the "
                       f"causal backbone has width {E} and tokens of {C}.")
    head = HeadConfig(kind="shortcut", width=W, depth=_count_blocks(sd, f"{prefix}res_blocks."),
                      token_dim=C, cond_dim=E, out_dim=C, freq_dim=freq, prefix=prefix,
                      diffusion_steps=0)
    return CausalModelConfig(bb, head)


def expected_causal_keys(cfg: CausalModelConfig) -> dict:
    from .reference import SimpleMLPAdaLN
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CausalBackbone(cfg.backbone).state_dict().items()}
        for k, v in SimpleMLPAdaLN(cfg.head).state_dict().items():
            expected[cfg.head.prefix + k] = v.shape
    return expected


def causal_param_counts(cfg: CausalModelConfig) -> dict:
    from .reference import SimpleMLPAdaLN
    with torch.device("meta"):
        return {"backbone": sum(p.numel() for p in CausalBackbone(cfg.backbone).parameters()),
                "head": sum(p.numel() for p in SimpleMLPAdaLN(cfg.head).parameters())}


def describe_causal(cfg: CausalModelConfig, counts: dict) -> list[str]:
    """``far-export inspect`` lines of a FAR-Causal model."""
    bb, hd = cfg.backbone, cfg.head
    return [f"backbone    {counts['backbone'] / 1e6:.1f}M params: causal transformer (GPT-style, "
            f"KV cache), width {bb.width}, depth {bb.depth}, heads {bb.heads} ({bb.heads_rule}), "
            f"tokens {bb.seq_len}x{bb.token_dim} in raster order, {bb.class_tokens} class "
            f"token(s), context {bb.context}, classes {bb.num_classes}",
            f"head        {counts['head'] / 1e6:.1f}M params: shortcut (FAR shortcut), width "
            f"{hd.width}, depth {hd.depth}, out {hd.out_dim}, prefix {hd.prefix}",
            f"sampling    K = L = {bb.seq_len} steps of one token (not adjustable), O head steps per token"]


# --- writing: the trainer layout (the demo trainer, random test checkpoints) ----------------

HEAD_PREFIX = "diffloss.net."


def causal_head_config(bb: CausalConfig, depth: int, width: int) -> HeadConfig:
    """The shortcut head of a causal backbone ``bb`` (conditions of the backbone's width)."""
    return HeadConfig(kind="shortcut", width=width, depth=depth, token_dim=bb.token_dim,
                      cond_dim=bb.width, out_dim=bb.token_dim, prefix=HEAD_PREFIX)


def causal_state_dict(backbone, head) -> dict:
    """Backbone and head weights under the names ``infer_causal_config`` reads."""
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    sd.update({HEAD_PREFIX + k: v.detach().clone() for k, v in head.state_dict().items()})
    return sd


def causal_args(cfg: CausalConfig, **extra):
    """The trainer's ``args`` (an ``argparse.Namespace``): what the shapes cannot tell."""
    import argparse
    return argparse.Namespace(model="far_causal", num_heads=cfg.heads,
                              class_tokens=cfg.class_tokens, class_num=cfg.num_classes,
                              token_embed_dim=cfg.token_dim, seq_len=cfg.seq_len, **extra)
