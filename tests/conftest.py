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
