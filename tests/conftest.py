import pytest

from far_export.synthetic import write_random_checkpoint, write_random_vae


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """Tiny FAR (shortcut) and MAR (diffusion) training checkpoints plus a tiny VAE."""
    d = tmp_path_factory.mktemp("tiny")
    files = {"far": str(d / "far.pth"), "mar": str(d / "mar.pth"), "vae": str(d / "vae.pth")}
    write_random_checkpoint(files["far"], "tiny", "shortcut", seed=1)
    write_random_checkpoint(files["mar"], "tiny", "diffusion", seed=2)
    write_random_vae(files["vae"], seed=3)
    return files


@pytest.fixture(scope="session")
def bundles(tiny_files, tmp_path_factory):
    """Exported bundles of the tiny FAR (O in 1, 2, 8) and MAR checkpoints."""
    from far_export.export.bundle import export_bundle
    d = tmp_path_factory.mktemp("bundles")
    out = {"far": str(d / "far"), "mar": str(d / "mar")}
    export_bundle(tiny_files["far"], tiny_files["vae"], out["far"], head_steps=(1, 2, 8))
    export_bundle(tiny_files["mar"], tiny_files["vae"], out["mar"])
    return out
