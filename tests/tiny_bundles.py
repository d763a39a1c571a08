"""The suite's tiny checkpoints and bundles (conftest.py's fixtures call these), and a command
that writes the bundles once for a run without torch: .ci/run's Python 3.10 job (JetPack 6's
Python, the runtime alone) sets FAR_TEST_BUNDLES to its folder.

    .venv-test/bin/python tests/tiny_bundles.py OUT_DIR
"""
from __future__ import annotations

import os
import sys

PREBUILT = os.environ.get("FAR_TEST_BUNDLES")      # a folder this command wrote, or None
CAUSAL_L = 16
RESPACINGS = ("ddim25", "21")


def write_tiny_files(d: str) -> dict:
    """Tiny FAR (shortcut), MAR (diffusion) and FAR-Causal (L = 16, two class tokens) training
    checkpoints plus a tiny VAE."""
    from far_export.synthetic import (tiny_causal_config, write_random_causal_checkpoint,
                                      write_random_checkpoint, write_random_vae)
    files = {k: os.path.join(d, f"{k}.pth") for k in ("far", "mar", "causal", "vae")}
    write_random_checkpoint(files["far"], "tiny", "shortcut", seed=1)
    write_random_checkpoint(files["mar"], "tiny", "diffusion", seed=2)
    write_random_causal_checkpoint(files["causal"], tiny_causal_config(CAUSAL_L, class_tokens=2), seed=4)
    write_random_vae(files["vae"], seed=3)
    return files


def export_masked(files: dict, d: str) -> dict:
    """Exported bundles of the tiny FAR (O in 1, 2, 8) and MAR checkpoints."""
    from far_export.export.bundle import export_bundle
    out = {"far": os.path.join(d, "far"), "mar": os.path.join(d, "mar")}
    export_bundle(files["far"], files["vae"], out["far"], head_steps=(1, 2, 8))
    export_bundle(files["mar"], files["vae"], out["mar"])
    return out


def export_respaced(files: dict, d: str) -> dict:
    """MAR bundles trained with --num_sampling_steps ddim25 and 21 (a plain count whose
    running index idx += 999/20 rounds differently from i * stride)."""
    import torch
    from far_export.export.bundle import export_bundle
    out = {}
    for steps in RESPACINGS:
        obj = torch.load(files["mar"], weights_only=False)        # our own test file
        obj["args"].num_sampling_steps = steps
        ck = os.path.join(d, f"mar_{steps}.pth")
        torch.save(obj, ck)
        out[steps] = os.path.join(d, f"respaced-{steps}")
        export_bundle(ck, None, out[steps], components=["backbone", "head"], validate_batches=[1])
    return out


def prebuilt(kind: str) -> dict:
    """The bundles FAR_TEST_BUNDLES holds: ``"masked"`` (far, mar) or ``"respaced"``."""
    names = ("far", "mar") if kind == "masked" else RESPACINGS
    return {n: os.path.join(PREBUILT, n if kind == "masked" else f"respaced-{n}") for n in names}


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    files = write_tiny_files(out)
    export_masked(files, out)
    export_respaced(files, out)


if __name__ == "__main__":
    main(sys.argv[1])
