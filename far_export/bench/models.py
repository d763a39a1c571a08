"""The models under test: random presets (FAR and MAR sharing one backbone), the bundle each
is exported to once, and where the reference finds the checkpoint a bundle came from."""
from __future__ import annotations

import hashlib
import json
import logging
import os

from far_runtime.errors import FarError

log = logging.getLogger(__name__)

MAR_VS_FAR_O = 8                    # the paper's FAR setting for its 2.3x claim
TENSORRT, TORCH_CUDA = "tensorrt-fp32", "torch-cuda-graphs-fp32"   # GPU backends, when present

# A VAE per preset whose latent grid is sqrt(seq_len) on a side: tiny -> 8x8 images, small
# -> 32x32 (the demo's VAE shape), B -> MAR's kl16 (256x256).
PRESET_VAES = {
    "tiny": dict(embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1),
    "small": dict(embed_dim=16, z_channels=16, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1),
    "B": dict(),                                    # VAEConfig defaults are kl16
}


# --- the models: presets, checkpoints, bundles ---------------------------------------------

def write_preset_models(preset_name: str, folder: str, seed: int = 0) -> dict:
    """Random FAR and MAR checkpoints with the *same backbone weights*, and a random VAE.

    Files (safetensors, heads in the metadata) are reused when present: they depend only on
    the preset and the seed.
    """
    from ..checkpoint import model_state_dict, write_safetensors
    from ..config import VAEConfig, head_config_for, preset
    from ..reference import SimpleMLPAdaLN
    from ..synthetic import random_model, write_random_vae
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f"{preset_name}_s{seed}_{k}.{ext}")
             for k, ext in (("far", "safetensors"), ("mar", "safetensors"), ("vae", "pth"))}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    import torch
    cfg = preset(preset_name, "shortcut")
    backbone, far_head = random_model(cfg, seed)
    mar_cfg = head_config_for(cfg.backbone, "diffusion", cfg.head.depth, cfg.head.width)
    g = torch.Generator().manual_seed(seed + 1)
    mar_head = SimpleMLPAdaLN(mar_cfg).init_weights(g).eval()
    meta = {"encoder_heads": cfg.backbone.encoder_heads, "decoder_heads": cfg.backbone.decoder_heads}
    write_safetensors(paths["far"], model_state_dict(backbone, far_head), meta)
    write_safetensors(paths["mar"], model_state_dict(backbone, mar_head), meta)
    write_random_vae(paths["vae"], VAEConfig(**PRESET_VAES[preset_name]), seed + 2)
    return paths


def preset_models(preset_name: str, folder: str, seed: int, skip_mar: bool) -> dict:
    """``{"far": {"source", "vae"}, "mar": ...}`` of the preset's models (MAR unless skipped)."""
    files = write_preset_models(preset_name, folder, seed)
    names = ["far"] + ([] if skip_mar else ["mar"])
    return {n: {"source": files[n], "vae": files["vae"]} for n in names}


def backbone_digest(checkpoint: str) -> str:
    """sha256 over the backbone's tensors (names, shapes, bytes): equal iff same backbone."""
    from ..checkpoint import load_model_checkpoint
    bb, _ = load_model_checkpoint(checkpoint, with_hash=False).split()
    h = hashlib.sha256()
    for k in sorted(bb):
        t = bb[k].contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def is_bundle(path: str) -> bool:
    return os.path.isdir(path)


def bundle_manifest(bundle: str) -> dict:
    from far_runtime.bundle import load_bundle
    return load_bundle(bundle, check_hashes=False).manifest


def ensure_bundle(source: str, vae: str | None, folder: str, head_steps, batch: int, say) -> str:
    """A bundle for ``source``: the folder itself, or one exported from the checkpoint into
    ``folder`` (reused when it came from the same file and covers the O values and batch)."""
    if is_bundle(source):
        return source
    if not os.path.isfile(source):
        raise FarError(f"{source} is neither a checkpoint file nor a bundle folder.")
    from ..checkpoint import sha256_file
    from ..export.bundle import export_bundle
    digest = sha256_file(source)
    vae_digest = sha256_file(vae) if vae else None
    man_path = os.path.join(folder, "manifest.json")
    if os.path.isfile(man_path):
        with open(man_path) as f:
            man = json.load(f)
        src = man.get("source", {})
        needed = set(head_steps) if man["model"]["head_kind"] == "shortcut" else set()
        if (src.get("sha256") == digest and src.get("vae_sha256") == vae_digest
                and needed <= set(man.get("head_steps", [])) and man.get("max_batch", 0) >= batch):
            say(f"reusing bundle {folder} (exported from the same checkpoint)")
            return folder
    say(f"exporting {source} to {folder}")
    components = ("backbone", "head", "vae") if vae else ("backbone", "head")
    export_bundle(source, vae, folder, components, head_steps=sorted(set(head_steps)),
                  max_batch=max(batch, 8), progress=say)
    return folder


def reference_source(bundle: str) -> dict:
    """The checkpoint and VAE a bundle was exported from (checked by sha256)."""
    from ..checkpoint import sha256_file
    man = bundle_manifest(bundle)
    src = man["source"]
    for path, digest, what in ((src["checkpoint"], src["sha256"], "checkpoint"),
                               (src["vae"], src["vae_sha256"], "VAE")):
        if path is None:
            continue
        if not os.path.isfile(path):
            raise FarError(f"The source {what} {path} of bundle {bundle} is not there, so the "
                           "reference cannot run; pass the checkpoint instead of the bundle.")
        if sha256_file(path) != digest:
            raise FarError(f"The {what} {path} is not the one bundle {bundle} was exported from "
                           "(sha256 differs); pass the checkpoint instead of the bundle.")
    bb = man["config"]["backbone"]
    return {"checkpoint": src["checkpoint"], "vae": src["vae"],
            "weights": "model" if src["weights"] == "model" else "ema",
            "heads": (bb.get("encoder_heads", bb.get("heads"))           # FAR/MAR, FAR-Causal
                      if bb.get("heads_rule") == "user option" else None)}


def precision_bundle(fp32_bundle: str, folder: str, options, say) -> str:
    """The fp32 bundle rewritten to ``options.precision`` (``precision/convert.py``, per-graph
    choices included) in ``folder``; reused when made from the same fp32 graphs with the same
    options. The fp32 graphs are copied, not re-exported."""
    import shutil
    from far_runtime.files import write_json
    from ..precision.convert import convert_bundle
    man = bundle_manifest(fp32_bundle)
    wanted = {"graphs_sha256": hashlib.sha256(json.dumps({g: e["files"] for g, e in man["graphs"].items()},
                                                          sort_keys=True).encode()).hexdigest(),
              "precision": options.precision, "int8": options.int8.to_dict(),
              "calibration": options.calibration.to_dict()}
    wanted = json.loads(json.dumps(wanted))        # as the manifest stores it (tuples read back as lists)
    path = os.path.join(folder, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f).get("derived_from", {}).get("key") == wanted:
                say(f"reusing {options.precision} bundle {folder}")
                return folder
    say(f"building the {options.precision} bundle {folder} from {fp32_bundle}")
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp32_bundle, tmp, ignore=shutil.ignore_patterns("manifest.json"))
    new, _ = convert_bundle(tmp, man, options, progress=say)
    new["derived_from"] = {"bundle": os.path.abspath(fp32_bundle), "key": wanted}
    write_json(os.path.join(tmp, "manifest.json"), new)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
