"""Helpers of the C++ runtime tests (test_cpp_runtime.py, test_cpp_causal.py): the build of
runtime/cpp as a fixture, far-generate and far-runtime generate side by side, and bundle
copies with an edited manifest."""
import json
import os
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
    if res.returncode == 3:                 # fetch_onnxruntime.sh: no npm, or its registry unreachable
        pytest.skip("the ONNX Runtime C/C++ headers cannot be fetched here: " + res.stderr.strip().splitlines()[-1])
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
