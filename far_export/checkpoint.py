"""Reading and writing checkpoints in the layouts users have, without running pickled code.

One reader for every model family: the state dict says which family it is
(``families.family_for_state_dict``), the family infers the config and names the tensors
it expects. Reads: MAR-trainer ``.pth`` (``model``, ``model_ema``, ``optimizer``, ``epoch``,
``scaler``, ``args`` as an ``argparse.Namespace``), bare state dicts, ``.safetensors``, and the VAE's
``{"model": state_dict}``. ``torch.load(weights_only=True)`` with ``argparse.Namespace`` as
the only extra allowed type, so a checkpoint can never execute code.
Writes: the same layouts, atomically (temporary name, then rename), for tests and the demo.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field

import torch

from far_runtime.bundle import sha256_file  # noqa: F401  (one hash for bundles and checkpoints)
from far_runtime.errors import FarError
from far_runtime.files import atomic_write  # noqa: F401  (re-exported for the builders)

from .config import DEFAULT_VAE_SCALE, ModelConfig, VAEConfig, infer_vae_config
from .families import family_for_state_dict, family_of_config

log = logging.getLogger(__name__)

SAFE_TYPES = [argparse.Namespace]


# --- reading -----------------------------------------------------------------------------

def _read_raw(path: str, what: str):
    """The file's top-level object and safetensors metadata (or None)."""
    if not os.path.exists(path):
        raise FarError(f"The {what} file {path} does not exist.")
    if os.path.isdir(path):
        raise FarError(f"{path} is a folder; pass the {what} file itself.")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FarError(f"The {what} file {path} cannot be read ({e.strerror}).") from None
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # safetensors raises its own SafetensorError and others
            raise FarError(f"The {what} file {path} is not a readable safetensors file "
                           f"(truncated or corrupt): {_first_line(e)}.") from None
    if not zipfile.is_zipfile(path):
        if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
            raise FarError(f"The {what} file {path} is a legacy pickle, not a torch zip "
                           "checkpoint; re-save it with torch.save or convert it to safetensors.")
        raise FarError(f"The {what} file {path} is not a PyTorch checkpoint or safetensors file "
                       "(truncated, corrupt or another format).")
    try:
        with torch.serialization.safe_globals(SAFE_TYPES):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        raise FarError(f"Refusing to load {path}: it contains pickled objects other than "
                       f"tensors and plain data ({_unpickling_reason(e)}).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError, MemoryError) as e:
        raise FarError(f"The {what} file {path} could not be read (truncated or corrupt: "
                       f"{_first_line(e)[:160]}).") from None
    return obj, None


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__).rstrip(".")


def _unpickling_reason(e: BaseException) -> str:
    """The part of torch's long weights-only message that names what was refused."""
    text = " ".join(str(e).split())
    m = re.search(r"GLOBAL (\S+?)\.? (was not an allowed global by default|whose module \S+ is blocked)?", text)
    if m:     # torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose ..."
        why = f" ({m.group(2)})" if m.group(2) else ""
        return f"Unsupported global: {m.group(1)}{why}"[:200]
    m = re.search(r"Unsupported operand[^.;]*", text)
    return (m.group(0) if m else _first_line(e))[:200]


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class ModelCheckpoint:
    path: str
    state_dict: dict
    config: ModelConfig                # or CausalModelConfig: ``families.family_of_config``
    weights: str                       # "model_ema", "model", "state_dict" or "safetensors"
    sha256: str
    args: argparse.Namespace | None = None
    extra: dict = field(default_factory=dict)   # epoch etc. for the report

    def split(self) -> tuple[dict, dict]:
        """Backbone and head state dicts, each with MAR's own key names."""
        p = self.config.head.prefix
        head = {k[len(p):]: v for k, v in self.state_dict.items() if k.startswith(p)}
        other_heads = ("head.", "diffloss.")
        bb = {k: v for k, v in self.state_dict.items() if not k.startswith(other_heads)}
        return bb, head


def load_model_checkpoint(path: str, weights: str = "ema", heads: int | None = None,
                          with_hash: bool = True, force_heads: bool = False) -> ModelCheckpoint:
    """A FAR, MAR or FAR-Causal checkpoint in any supported layout; ``weights`` is ``ema`` or
    ``model``."""
    if weights not in ("ema", "model"):
        raise FarError(f"--weights must be 'ema' or 'model', got {weights!r}.")
    obj, meta = _read_raw(path, "checkpoint")
    args, extra = None, {}
    if meta is not None:
        sd, used = obj, "safetensors"
    elif isinstance(obj, dict) and ("model" in obj or "model_ema" in obj):
        args = obj.get("args")
        if args is not None and not isinstance(args, argparse.Namespace):
            args = argparse.Namespace(**args) if isinstance(args, dict) else None
        extra = {k: obj[k] for k in ("epoch",) if k in obj and isinstance(obj[k], (int, float))}
        if weights == "ema" and "model_ema" in obj:
            sd, used = obj["model_ema"], "model_ema"
        elif "model" in obj:
            sd, used = obj["model"], "model"
            if weights == "ema":
                log.warning("%s has no model_ema; using model", path)
        else:
            raise FarError(f"{path} has model_ema but no model; use --weights ema.")
    elif _is_state_dict(obj):
        sd, used = obj, "state_dict"
    else:
        raise FarError(f"{path} holds neither a state dict nor a training checkpoint "
                       "with 'model'/'model_ema'.")
    if not _is_state_dict(sd):
        raise FarError(f"The '{used}' entry of {path} is not a state dict of tensors.")
    family = family_for_state_dict(sd)
    cfg = family.infer_config(sd, args, meta, heads, force_heads)
    _compare_keys(sd, family.expected_keys(cfg), path, ignore=())
    digest = sha256_file(path) if with_hash else ""
    return ModelCheckpoint(path, sd, cfg, used, digest, args, extra)


def _compare_keys(sd, expected, path, ignore):
    have = {k for k in sd if not k.startswith(ignore)}
    missing = sorted(set(expected) - have)
    unexpected = sorted(have - set(expected))
    bad = sorted(k for k in set(expected) & have if tuple(sd[k].shape) != tuple(expected[k]))

    def few(keys):
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    if missing:
        raise FarError(f"{path} is missing {len(missing)} expected tensors: {few(missing)}.")
    if unexpected:
        raise FarError(f"{path} has {len(unexpected)} unexpected tensors: {few(unexpected)}.")
    if bad:
        k = bad[0]
        raise FarError(f"{path} has {len(bad)} mis-shaped tensors, e.g. {k} is "
                       f"{tuple(sd[k].shape)} but the inferred config needs {tuple(expected[k])}.")


@dataclass
class VAECheckpoint:
    path: str
    state_dict: dict     # decoder.* and post_quant_conv.* only
    config: VAEConfig
    sha256: str


def load_vae_checkpoint(path: str, scale_factor: float | None = None,
                        with_hash: bool = True) -> VAECheckpoint:
    """The VAE's ``{"model": ...}`` file, a bare state dict or safetensors; encoder keys ignored."""
    obj, meta = _read_raw(path, "VAE")
    sd = obj["model"] if isinstance(obj, dict) and "model" in obj and not _is_state_dict(obj) else obj
    if not _is_state_dict(sd):
        raise FarError(f"{path} does not hold a VAE state dict (expected {{'model': state_dict}}).")
    file_scale = None
    if isinstance(obj, dict) and isinstance(obj.get("scale_factor"), float):
        file_scale = obj["scale_factor"]
    if meta and "scale_factor" in meta:
        try:
            file_scale = float(meta["scale_factor"])
        except ValueError:
            file_scale = math.nan
    scale = scale_factor or file_scale or DEFAULT_VAE_SCALE
    if not math.isfinite(scale) or scale <= 0:
        raise FarError(f"The VAE file {path} records scale_factor {scale!r}; it must be a positive number.")
    cfg = infer_vae_config(sd, scale)
    dec = {k: v for k, v in sd.items() if k.startswith(("decoder.", "post_quant_conv."))}
    from .reference import VAEDecoder
    with torch.device("meta"):
        expected = {k: v.shape for k, v in VAEDecoder(cfg).state_dict().items()}
    _compare_keys(dec, expected, path, ignore=())
    return VAECheckpoint(path, dec, cfg, sha256_file(path) if with_hash else "")


# --- building modules ----------------------------------------------------------------------

def build_model(ckpt: ModelCheckpoint):
    """Backbone and head with the checkpoint's weights, in eval mode."""
    return family_of_config(ckpt.config).build_modules(ckpt.config, *ckpt.split())


def build_vae(ckpt: VAECheckpoint):
    from .reference import VAEDecoder
    vae = VAEDecoder(ckpt.config)
    vae.load_state_dict(ckpt.state_dict, strict=True)
    return vae.eval()


# --- writing -----------------------------------------------------------------------------

def model_state_dict(backbone, head) -> dict:
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    sd.update({head.cfg.prefix + k: v.detach().clone() for k, v in head.state_dict().items()})
    return sd


def write_training_checkpoint(path: str, model: dict, model_ema: dict | None = None,
                              args: argparse.Namespace | None = None, epoch: int = 0,
                              optimizer: dict | None = None) -> None:
    """MAR's trainer layout: model, model_ema, optimizer, epoch, scaler, args."""
    obj = {"model": model, "model_ema": model_ema if model_ema is not None else model,
           "optimizer": optimizer or {"state": {}, "param_groups": []}, "epoch": epoch,
           "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                      "growth_interval": 2000, "_growth_tracker": 0},
           "args": args if args is not None else argparse.Namespace()}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_safetensors(path: str, state_dict: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def write_vae_checkpoint(path: str, state_dict: dict, scale_factor: float | None = None) -> None:
    obj = {"model": state_dict}
    if scale_factor is not None:
        obj["scale_factor"] = float(scale_factor)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def param_counts(cfg: ModelConfig, vae_cfg: VAEConfig | None = None) -> dict:
    """Parameters per component, counted on meta tensors (no memory)."""
    out = family_of_config(cfg).param_counts(cfg)
    if vae_cfg is not None:
        from .reference import VAEDecoder
        with torch.device("meta"):
            out["vae_decoder"] = sum(p.numel() for p in VAEDecoder(vae_cfg).parameters())
    return out
