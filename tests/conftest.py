"""Session fixtures: tiny checkpoints the project writes itself, their bundles (each exported
once per session), and ``variant``: one object per model variant that parity tests run over.

far_export (torch) is imported only by the fixtures that export: with FAR_TEST_BUNDLES set
(tiny_bundles.py; .ci/run's Python 3.10 job, which has the runtime alone) ``bundles`` comes
from that folder."""
from dataclasses import dataclass

import pytest

import tiny_bundles

VARIANT_NAMES = ("far", "mar", "far-causal")      # far_runtime.variants.VARIANTS


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """Tiny FAR (shortcut), MAR (diffusion) and FAR-Causal (L = 16, two class tokens) training
    checkpoints plus a tiny VAE."""
    return tiny_bundles.write_tiny_files(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def bundles(request, tmp_path_factory):
    """Exported bundles of the tiny FAR (O in 1, 2, 8) and MAR checkpoints."""
    if tiny_bundles.PREBUILT:
        return tiny_bundles.prebuilt("masked")
    files = request.getfixturevalue("tiny_files")
    return tiny_bundles.export_masked(files, str(tmp_path_factory.mktemp("bundles")))


@pytest.fixture(scope="session")
def causal_files(tiny_files, tmp_path_factory):
    """The tiny FAR-Causal checkpoint, the VAE, the FAR checkpoint and where ``built`` puts its bundle."""
    return {"ckpt": tiny_files["causal"], "vae": tiny_files["vae"], "far": tiny_files["far"],
            "bundle": str(tmp_path_factory.mktemp("causal") / "bundle")}


@pytest.fixture(scope="session")
def built(causal_files):
    """``far-export build`` of the tiny causal checkpoint (export, validation, verify):
    the bundle folder and the command's output."""
    from click.testing import CliRunner
    from far_export.cli import main
    res = CliRunner().invoke(main, ["build", causal_files["ckpt"], "--vae", causal_files["vae"],
                                    "--out", causal_files["bundle"], "--head-steps", "1,2",
                                    "--validate-batches", "1,3"])
    assert res.exit_code == 0, res.output
    return causal_files["bundle"], res.output


@dataclass(frozen=True)
class TinyVariant:
    """One model variant's tiny files: what the reference loads and what the runtime runs."""
    name: str              # "far", "mar" or "far-causal"
    ckpt: str              # training checkpoint
    vae: str
    bundle: str            # exported from ckpt and vae
    reference: object      # far_export.reference.pipeline.ReferencePipeline of ckpt and vae

    @property
    def masked(self) -> bool:
        """FAR or MAR: K iterations over a random order (FAR-Causal: K is L)."""
        return self.name != "far-causal"

    @property
    def shortcut(self) -> bool:
        """A shortcut head (FAR, FAR-Causal): O steps, fused graphs; MAR's is a diffusion head."""
        return self.name != "mar"


@pytest.fixture(scope="session", params=VARIANT_NAMES)
def variant(request, tiny_files) -> TinyVariant:
    """FAR, MAR and FAR-Causal in turn; each bundle is exported once per session."""
    from far_export.reference.pipeline import ReferencePipeline
    name = request.param
    if name == "far-causal":
        ckpt, bundle = tiny_files["causal"], request.getfixturevalue("built")[0]
    else:
        ckpt, bundle = tiny_files[name], request.getfixturevalue("bundles")[name]
    return TinyVariant(name, ckpt, tiny_files["vae"], bundle,
                       ReferencePipeline.load(ckpt, tiny_files["vae"]))
