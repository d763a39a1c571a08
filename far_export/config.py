"""Model configuration: one dataclass per component, presets, and inference from tensor shapes.

Two backbone families (``far_export/families/``): masked (FAR, MAR: ``BackboneConfig`` in a
``ModelConfig``) and causal (FAR-Causal: ``CausalConfig`` in a ``CausalModelConfig``); both
carry a ``HeadConfig``. Users pass only files; widths, depths, token sizes and head kind are
read off the state dict (``infer_model_config``, ``infer_causal_config``).
The one thing shapes cannot tell is the number of attention heads (MAR-H has 16 heads of 80
dims), so ``attention_heads`` takes it from, in order: the user, the checkpoint's own metadata,
``args.*num_heads``, ``args.model`` (mar_base/mar_large/mar_huge), else ``width // 64``, and
says which rule it used. A ``--heads`` that contradicts the checkpoint's own record is an error
unless forced, in every family: a wrong head count exports, validates against an equally wrong
reference, and draws worse images.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from far_runtime.errors import FarError

HEAD_PREFIXES = ("head.", "diffloss.net.")
MAR_HEADS = {"mar_base": 12, "mar_large": 16, "mar_huge": 16}
DEFAULT_VAE_SCALE = 0.2325
VAE = "an LDM KL-VAE"


@dataclass
class BackboneConfig:
    token_dim: int = 16
    seq_len: int = 256
    buffer_size: int = 64
    num_classes: int = 1000
    encoder_width: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_width: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    heads_rule: str = "preset"


@dataclass
class HeadConfig:
    kind: str = "diffusion"        # "diffusion" (MAR) or "shortcut" (FAR)
    width: int = 1024
    depth: int = 6
    token_dim: int = 16
    cond_dim: int = 768
    out_dim: int = 32
    freq_dim: int = 256
    prefix: str = "diffloss.net."
    diffusion_steps: int = 100     # respaced DDPM steps (diffusion heads only)
    timestep_respacing: str = ""   # MAR's num_sampling_steps when not a plain count ("ddim25", "10,15,20")


@dataclass
class VAEConfig:
    embed_dim: int = 16
    z_channels: int = 16
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple = ()
    out_ch: int = 3
    in_ch: int = 3
    scale_factor: float = DEFAULT_VAE_SCALE

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class CausalConfig:
    """FAR-Causal's backbone (``reference/causal.py``): a GPT-style stack over raster tokens."""
    token_dim: int = 16
    seq_len: int = 256
    class_tokens: int = 1
    num_classes: int = 1000
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    heads_rule: str = "preset"

    @property
    def context(self) -> int:
        """T: sequence positions the transformer ever sees (class slots + L - 1 tokens)."""
        return self.class_tokens + self.seq_len - 1

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def cache_shape(self, rows: int) -> tuple:
        return (self.depth, 2, rows, self.heads, self.context, self.head_dim)


@dataclass
class ModelConfig:
    family: ClassVar[str] = "masked"      # far_export.families: FAR and MAR
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def to_dict(self) -> dict:
        return {"backbone": asdict(self.backbone), "head": asdict(self.head)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(BackboneConfig(**d["backbone"]), HeadConfig(**d["head"]))


@dataclass
class CausalModelConfig:
    family: ClassVar[str] = "causal"      # far_export.families: FAR-Causal
    backbone: CausalConfig = field(default_factory=CausalConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    kind: str = "causal"

    def to_dict(self) -> dict:
        return {"kind": "causal", "backbone": asdict(self.backbone), "head": asdict(self.head)}

    @classmethod
    def from_dict(cls, d: dict) -> "CausalModelConfig":
        return cls(CausalConfig(**d["backbone"]), HeadConfig(**d["head"]))


def vae_config_from_dict(d: dict) -> VAEConfig:
    d = dict(d)
    d["ch_mult"] = tuple(d["ch_mult"])
    d["attn_levels"] = tuple(d["attn_levels"])
    return VAEConfig(**d)


# --- presets -------------------------------------------------------------------------------

_SIZES = {  # width, depth per half, heads, head depth, head width
    "B": (768, 12, 12, 6, 1024),
    "L": (1024, 16, 16, 8, 1280),
    "H": (1280, 20, 16, 12, 1536),
}


def preset(name: str, head_kind: str = "shortcut") -> ModelConfig:
    """MAR/FAR sizes B, L, H, and ``tiny``/``small`` for tests and demos."""
    if name in _SIZES:
        w, d, h, hd, hw = _SIZES[name]
        bb = BackboneConfig(encoder_width=w, encoder_depth=d, encoder_heads=h,
                            decoder_width=w, decoder_depth=d, decoder_heads=h)
    elif name == "tiny":
        bb = BackboneConfig(token_dim=4, seq_len=16, buffer_size=4, num_classes=10,
                            encoder_width=32, encoder_depth=1, encoder_heads=2,
                            decoder_width=32, decoder_depth=1, decoder_heads=2)
        hd, hw = 2, 32
    elif name == "small":
        bb = BackboneConfig(token_dim=16, seq_len=64, buffer_size=16, num_classes=10,
                            encoder_width=128, encoder_depth=3, encoder_heads=4,
                            decoder_width=128, decoder_depth=3, decoder_heads=4)
        hd, hw = 3, 128
    else:
        raise FarError(f"Unknown preset {name!r}; choose one of tiny, small, B, L, H.")
    return ModelConfig(bb, head_config_for(bb, head_kind, hd, hw))


def head_config_for(bb: BackboneConfig, kind: str, depth: int, width: int) -> HeadConfig:
    if kind not in ("shortcut", "diffusion"):
        raise FarError(f"Head kind must be 'shortcut' or 'diffusion', got {kind!r}.")
    return HeadConfig(kind=kind, width=width, depth=depth, token_dim=bb.token_dim,
                      cond_dim=bb.decoder_width,
                      out_dim=bb.token_dim * (2 if kind == "diffusion" else 1),
                      prefix="head." if kind == "shortcut" else "diffloss.net.")


# --- inference from shapes -----------------------------------------------------------------

def _shape(sd, key, rank: int, what: str = "a MAR/FAR model"):
    """The shape of ``sd[key]``, refused unless it has ``rank`` non-zero dims."""
    if key not in sd:
        raise FarError(f"The file has no tensor {key!r}, so it is not {what}.")
    shape = tuple(sd[key].shape)
    if len(shape) != rank or not all(shape):
        raise FarError(f"The tensor {key!r} has shape {shape}, but {what} has a {rank}-dimensional, "
                       "non-empty one there; the file is damaged or of another model.")
    return shape


def _count_blocks(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(ids) + 1 if ids else 0


def _recorded_heads(args, metadata, which: str):
    """The checkpoint's own record of its head count, and where it is written. ``which`` is
    the stack (``encoder``, ``decoder``; empty for a single stack): the metadata key is
    ``{which}_heads`` and the args field ``{which}_num_heads`` (``heads``, ``num_heads``)."""
    pre = f"{which}_" if which else ""
    if metadata and metadata.get(f"{pre}heads"):
        try:
            return int(metadata[f"{pre}heads"]), "checkpoint metadata"
        except (TypeError, ValueError):
            raise FarError(f"The checkpoint metadata {pre}heads={metadata[f'{pre}heads']!r} "
                           "is not an integer.") from None
    if args is not None and getattr(args, f"{pre}num_heads", None):
        try:
            return int(getattr(args, f"{pre}num_heads")), f"args.{pre}num_heads"
        except (TypeError, ValueError):
            raise FarError(f"args.{pre}num_heads={getattr(args, f'{pre}num_heads')!r} in the "
                           "checkpoint is not an integer.") from None
    if args is not None and getattr(args, "model", None) in MAR_HEADS:
        return MAR_HEADS[args.model], f"args.model={args.model}"
    return None, None


def attention_heads(width: int, args=None, metadata: dict | None = None,
                    user: int | None = None, which: str = "encoder",
                    force: bool = False) -> tuple[int, str]:
    """Number of heads and the rule that gave it (see module docstring)."""
    recorded, where = _recorded_heads(args, metadata, which)
    stack = f"{which} " if which else ""
    if user is not None:
        if isinstance(user, bool) or not isinstance(user, int) or not 1 <= user <= width:
            raise FarError(f"--heads must be an integer in 1..{width} (the {stack}width), got {user!r}.")
        if recorded is not None and recorded != user and not force:
            raise FarError(f"--heads {user} contradicts the checkpoint, whose {where} says {recorded} "
                           f"{stack}heads; drop --heads, or pass --force-heads if the checkpoint is wrong.")
        rule, n = ("user option (forced)" if recorded not in (None, user) else "user option"), user
    elif recorded is not None:
        rule, n = where, recorded
    else:
        rule, n = "width/64", max(1, width // 64)
    if n < 1 or width % n:
        raise FarError(f"The {stack}width {width} is not divisible by {n} attention heads "
                       f"(rule: {rule}); pass the right count with --heads.")
    return n, rule


def diffusion_sampling_steps(args) -> tuple[int, str]:
    """Respaced DDPM steps from MAR's ``args.num_sampling_steps`` (a string in MAR's trainer):
    a count, per-section counts ``"10,15,20"`` or ``"ddimN"``, read as MAR's
    ``space_timesteps`` reads them. Returns the step count and the respacing to keep
    (empty for a plain count)."""
    from far_runtime.ddpm import TRAIN_STEPS, space_timesteps
    value = getattr(args, "num_sampling_steps", None) if args is not None else None
    if value is None:
        return 100, ""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FarError(f"args.num_sampling_steps in the checkpoint is {value!r}; MAR takes a count such "
                       "as '100', per-section counts such as '10,15,20', or 'ddimN'.")
    try:
        steps = space_timesteps(TRAIN_STEPS, value)
    except FarError as e:
        msg = str(e).rstrip(".")
        raise FarError(f"The checkpoint's args.num_sampling_steps is not usable: "
                       f"{msg[0].lower() + msg[1:]}.") from None
    plain = isinstance(value, int) or value.strip().isdigit()
    return len(steps), "" if plain else value.strip()


def infer_model_config(sd: dict, args=None, metadata: dict | None = None,
                       heads: int | None = None, force_heads: bool = False) -> ModelConfig:
    """Backbone and head configuration from a MAR/FAR state dict (tensors or meta tensors)."""
    if any(k.startswith(("decoder.up.", "encoder.down.")) for k in sd) and "z_proj.weight" not in sd:
        raise FarError("This file holds a VAE, not a MAR/FAR model; pass it with --vae instead.")
    E, C = _shape(sd, "z_proj.weight", 2)
    D, _ = _shape(sd, "decoder_embed.weight", 2)
    _, L, _ = _shape(sd, "diffusion_pos_embed_learned", 3)
    _, LB, _ = _shape(sd, "encoder_pos_embed_learned", 3)
    ncls, _ = _shape(sd, "class_emb.weight", 2)
    hidden, _ = _shape(sd, "encoder_blocks.0.mlp.fc1.weight", 2)
    eh, rule = attention_heads(E, args, metadata, heads, "encoder", force_heads)
    dh, _ = attention_heads(D, args, metadata, heads, "decoder", force_heads)
    bb = BackboneConfig(token_dim=C, seq_len=L, buffer_size=LB - L, num_classes=ncls,
                        encoder_width=E, encoder_depth=_count_blocks(sd, "encoder_blocks."),
                        encoder_heads=eh, decoder_width=D,
                        decoder_depth=_count_blocks(sd, "decoder_blocks."), decoder_heads=dh,
                        mlp_ratio=hidden / E, heads_rule=rule)
    prefix = next((p for p in HEAD_PREFIXES if f"{p}input_proj.weight" in sd), None)
    if prefix is None:
        raise FarError("The checkpoint has a backbone but no head (no 'head.input_proj.weight' "
                       "or 'diffloss.net.input_proj.weight').")
    W, _ = _shape(sd, f"{prefix}input_proj.weight", 2)
    out, _ = _shape(sd, f"{prefix}final_layer.linear.weight", 2)
    _, freq = _shape(sd, f"{prefix}time_embed.mlp.0.weight", 2)
    _, zc = _shape(sd, f"{prefix}cond_embed.weight", 2)
    kind = "shortcut" if f"{prefix}step_embed.mlp.0.weight" in sd else "diffusion"
    steps, respacing = diffusion_sampling_steps(args) if kind == "diffusion" else (100, "")
    head = HeadConfig(kind=kind, width=W, depth=_count_blocks(sd, f"{prefix}res_blocks."),
                      token_dim=C, cond_dim=zc, out_dim=out, freq_dim=freq, prefix=prefix,
                      diffusion_steps=steps, timestep_respacing=respacing)
    if zc != D:
        raise FarError(f"The head's condition width {zc} does not match the backbone's decoder "
                       f"width {D}.")
    if out not in (C, 2 * C):
        raise FarError(f"The head outputs {out} channels; a token has {C}, so expected {C} "
                       f"(shortcut) or {2 * C} (diffusion with learned variance).")
    return ModelConfig(bb, head)


def infer_causal_config(sd: dict, args=None, metadata: dict | None = None,
                        heads: int | None = None, force_heads: bool = False) -> CausalModelConfig:
    """Backbone and head configuration from a FAR-Causal state dict: ``tok_embed.weight``
    [E, C], ``head_pos_embed`` [1, L, E], ``pos_embed`` [1, P + L - 1, E] (so P class slots),
    ``class_emb.weight`` [classes, E], ``blocks.{i}`` (depth), ``blocks.0.mlp.fc1.weight``
    [hidden, E]; heads from metadata ``heads`` / ``args.num_heads`` (``attention_heads``).
    The head must be a FAR shortcut head (``step_embed`` present) under ``diffloss.net.`` or
    ``head.``."""
    what = "a FAR-Causal model"
    E, C = _shape(sd, "tok_embed.weight", 2, what)
    _, L, E2 = _shape(sd, "head_pos_embed", 3, what)
    _, T, _ = _shape(sd, "pos_embed", 3, what)
    ncls, _ = _shape(sd, "class_emb.weight", 2, what)
    hidden, _ = _shape(sd, "blocks.0.mlp.fc1.weight", 2, what)
    P = T - L + 1
    if E2 != E or P < 1:
        raise FarError(f"The causal checkpoint's position tables do not fit together: pos_embed "
                       f"has {T} positions and head_pos_embed {L} (need at least L - 1 + 1 class slot).")
    n_heads, rule = attention_heads(E, args, metadata, heads, "", force_heads)
    bb = CausalConfig(token_dim=C, seq_len=L, class_tokens=P, num_classes=ncls, width=E,
                      depth=_count_blocks(sd, "blocks."), heads=n_heads, mlp_ratio=hidden / E,
                      heads_rule=rule)
    prefix = next((p for p in HEAD_PREFIXES if f"{p}input_proj.weight" in sd), None)
    if prefix is None:
        raise FarError("The causal checkpoint has no head ('diffloss.net.input_proj.weight').")
    if f"{prefix}step_embed.mlp.0.weight" not in sd:
        raise FarError("The causal checkpoint's head has no step_embed, so it is a diffusion head; "
                       "FAR-Causal needs the FAR shortcut head.")
    W, _ = _shape(sd, f"{prefix}input_proj.weight", 2, what)
    out, _ = _shape(sd, f"{prefix}final_layer.linear.weight", 2, what)
    _, freq = _shape(sd, f"{prefix}time_embed.mlp.0.weight", 2, what)
    _, zc = _shape(sd, f"{prefix}cond_embed.weight", 2, what)
    if zc != E or out != C:
        raise FarError(f"The head takes conditions of width {zc} and outputs {out} channels; the "
                       f"causal backbone has width {E} and tokens of {C}.")
    head = HeadConfig(kind="shortcut", width=W, depth=_count_blocks(sd, f"{prefix}res_blocks."),
                      token_dim=C, cond_dim=E, out_dim=C, freq_dim=freq, prefix=prefix,
                      diffusion_steps=0)
    return CausalModelConfig(bb, head)


def infer_vae_config(sd: dict, scale_factor: float = DEFAULT_VAE_SCALE) -> VAEConfig:
    """LDM KL-VAE decoder configuration from ``decoder.*`` and ``post_quant_conv`` shapes."""
    if "z_proj.weight" in sd:
        raise FarError("This file holds a MAR/FAR model, not a VAE; pass the VAE with --vae.")
    z_ch, embed, _, _ = _shape(sd, "post_quant_conv.weight", 4, VAE)
    n_levels = _count_blocks(sd, "decoder.up.")
    if n_levels == 0:
        raise FarError("The VAE file has no 'decoder.up.*' tensors, so it is not an LDM KL-VAE.")
    widths = [_shape(sd, f"decoder.up.{i}.block.0.conv1.weight", 4, VAE)[0] for i in range(n_levels)]
    from math import gcd
    ch = 0
    for w in widths:
        ch = gcd(ch, w)
    out_ch, _, _, _ = _shape(sd, "decoder.conv_out.weight", 4, VAE)
    in_ch = _shape(sd, "encoder.conv_in.weight", 4, VAE)[1] if "encoder.conv_in.weight" in sd else 3
    attn = tuple(i for i in range(n_levels) if f"decoder.up.{i}.attn.0.q.weight" in sd)
    return VAEConfig(embed_dim=embed, z_channels=z_ch, ch=ch,
                     ch_mult=tuple(w // ch for w in widths),
                     num_res_blocks=_count_blocks(sd, "decoder.up.0.block.") - 1,
                     attn_levels=attn, out_ch=out_ch, in_ch=in_ch, scale_factor=scale_factor)
