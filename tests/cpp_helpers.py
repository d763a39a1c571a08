"""Helpers of the C++ runtime tests (test_cpp_runtime.py, test_cpp_causal.py): the build of
runtime/cpp as a fixture, far-generate and far-runtime generate side by side, and bundle
copies with an edited manifest."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from far_runtime.cli import main as runtime_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP = os.path.join(ROOT, "runtime", "cpp")
sys.path.insert(0, CPP)
from far_cpp import load_library  # noqa: E402


@pytest.fixture(scope="session")
def cpp_build():
    """Build runtime/cpp once (bash runtime/cpp/build.sh; incremental, so a second run reuses it)."""
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the C++ runtime needs {' and '.join(missing)}, which this machine lacks")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", os.path.join(CPP, "build.sh")], env=env, capture_output=True, text=True)
    if res.returncode == 3:                 # a dependency this machine lacks: nlohmann/json, or the ONNX Runtime headers
        pytest.skip("the C++ runtime cannot be built here: " + res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr[-4000:]
    exe = res.stdout.strip().splitlines()[-1]
    assert os.path.isfile(exe), exe
    build = os.path.dirname(exe)
    return {"exe": exe, "dir": build, "lib": load_library(os.path.join(build, "libfar_runtime.so"))}


def far_generate(cpp_build, *args):
    return subprocess.run([cpp_build["exe"], *map(str, args)], capture_output=True, text=True)


def python_generate(*args):
    return CliRunner().invoke(runtime_cli, ["generate", *map(str, args)])


def last_lines(py, cc):
    """The last line each CLI printed on its error output (click mixes stderr into output)."""
    return py.output.strip().splitlines()[-1], cc.stderr.strip().splitlines()[-1]


def edited_copy(src, dst, edit):
    """A copy of a bundle whose manifest.json went through edit(manifest) (no hash covers it)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return str(dst)


# manifest.h's bounds of the model entry's integers (issue #26: "model.X is N, not an integer in lo..hi").
BOUNDS = {"seq_len": (1, 65536), "token_dim": (1, 4096), "cond_dim": (1, 65536), "num_classes": (1, 1000000),
          "diffusion_steps": (0, 1000), "image_size": (0, 8192), "image_channels": (0, 16),
          "class_tokens": (1, 4096), "context": (1, 4096 + 65536 - 1), "depth": (1, 1024), "heads": (1, 1024),
          "head_dim": (1, 4096)}


def as_bounded(sentence: str) -> str:
    """A Python sentence "model.X is V, not an integer >= lo" in the bounded words both runtimes
    use after issue #26 ("not an integer in lo..hi"); other sentences unchanged."""
    def sub(m):
        lo, hi = BOUNDS[m.group(1)]
        return f"model.{m.group(1)} is {m.group(2)}, not an integer in {lo}..{hi}"
    return re.sub(r"model\.(\w+) is (.*?), not an integer >= \d+", sub, sentence)


@pytest.fixture(scope="module")
def causal_bundle(built):
    """The session's tiny FAR-Causal bundle (tests/conftest.py: ``far-export build`` of L = 16,
    P = 2, O in 1, 2)."""
    return built[0]
