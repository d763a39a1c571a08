"""far-runtime as its own distribution: installs without torch, runs bundles, Python >= 3.10."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
GEN = ["--class", "1,2,3", "--num", "3", "--K", "4", "--O", "2", "--cfg", "2.0", "--seed", "5"]


def test_runtime_code_runs_on_python_3_10():
    """No interpreter 3.10 here (JetPack 6's Python): vermin reads the minimum from the code."""
    vermin = Path(sys.executable).parent / "vermin"
    r = subprocess.run([str(vermin), "-t=3.10-", "--eval-annotations", "--no-tips",
                        "--violations", str(RUNTIME / "far_runtime")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    import tomllib
    project = tomllib.loads((RUNTIME / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    names = [d.split("=")[0].split(";")[0].strip() for d in project["dependencies"]]
    assert set(names) == {"numpy", "click"}


def test_runtime_alone_in_a_fresh_venv(bundles, tmp_path):
    """Only ./runtime[cpu] installed: `far-runtime generate` draws the same PNG bytes as
    `far-export generate`, `info` checks the bundle, and torch cannot be imported."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "far-runtime"
    src = tmp_path / "runtime"          # a copy: a non-editable install builds inside its source tree
    shutil.copytree(RUNTIME, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[cpu]"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    r = subprocess.run([str(py), "-c", "import far_export"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0

    alone, full = tmp_path / "alone.png", tmp_path / "full.png"
    r = subprocess.run([str(exe), "generate", bundles["far"], *GEN, "--out", str(alone)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "far_export.cli", "generate", bundles["far"], *GEN,
                        "--out", str(full)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert alone.read_bytes() == full.read_bytes()

    r = subprocess.run([str(exe), "info", bundles["far"], "--json"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["backends"]["onnxruntime-cpu"]["available"] is True
    assert info["backends"]["tensorrt"]["available"] is False and info["backends"]["tensorrt"]["reason"]
    assert set(info["graphs"]) == {"backbone", "head_step", "head_fused_o1", "head_fused_o2",
                                   "head_fused_o8", "vae_decoder"}
    r = subprocess.run([str(exe), "info", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["generate", "--K", "0"], ["generate", "--class", "99"], ["info"]])
def test_runtime_cli_errors_are_one_sentence(bundles, args, tmp_path):
    cmd, *rest = args
    r = subprocess.run([sys.executable, "-m", "far_runtime.cli", cmd, bundles["far"], *rest,
                        *(["--out", str(tmp_path / "x.png")] if cmd == "generate" else [])],
                       capture_output=True, text=True)
    if cmd == "info":
        assert r.returncode == 0 and "hashes checked" in r.stdout, r.stderr
    else:
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
        assert not (tmp_path / "x.png").exists()
