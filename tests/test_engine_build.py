"""Engines built on the board from the runtime alone (far_runtime.gpu.engine_build): everything up
to the TensorRT call (profiles, keys, file names, the manifest, the commands) is plain data and
tested here on the CPU with the runtime's modules only (no torch, no far-export: this file also
runs in the Python 3.10 job of .ci/run); the call itself needs TensorRT and a GPU
(tests/gpu/check.py). A system TensorRT (JetPack's Debian packages, no wheel) gets its CUDA
major from its package version."""
import importlib.util
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from far_runtime.bundle import load_bundle
from far_runtime.cli import main as runtime_cli
from far_runtime.errors import FarError
from far_runtime.gpu.cuda_runtime import deb_cuda_major, deb_package_of, import_tensorrt, tensorrt_origin
from far_runtime.gpu.engine_build import (COMMAND, engine_entry, engine_file_name, engine_key, engine_manifest_data,
                                          plan_engines, read_manifest, reusable, timing_cache_name,
                                          write_engine_manifest)
from far_runtime.gpu.engine_manifest import ENGINE_MANIFEST, cache_key, check_engine
from far_runtime.gpu.engine_profiles import engine_profiles

TRT_INSTALLED = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_lean"))
# What device_facts reports on a Jetson AGX Orin with JetPack 6.2 (TensorRT 10.3 from Debian packages).
JETSON = {"tensorrt": "10.3.0.30", "tensorrt_module": "tensorrt", "tensorrt_cuda": "12",
          "tensorrt_source": "deb python3-libnvinfer 10.3.0.30-1+cuda12.5", "cuda_python": "12.9",
          "driver": "12.6", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}


def test_plan_engines_derives_the_build_without_tensorrt(bundles, tmp_path):
    job = plan_engines(bundles["far"], out=str(tmp_path / "e"), k_range=(4, 16), batch_range=(1, 2))
    b = load_bundle(bundles["far"])
    assert job.precision == b.manifest.get("precision", "fp32")
    assert job.profiles == engine_profiles(b, (4, 16), (1, 2))
    assert set(job.sources) == set(job.profiles) == set(b.graphs)
    assert job.command.startswith(f"{COMMAND} {bundles['far']} --precision {job.precision} --k 4:16 --batch 1:2")
    sub = plan_engines(bundles["far"], out=str(tmp_path / "e"), graphs=["backbone"])
    assert sub.subset and list(sub.profiles) == ["backbone"] and sub.command.endswith("--graphs backbone")
    with pytest.raises(FarError, match="--batch goes up to 99"):
        plan_engines(bundles["far"], batch_range=(1, 99))
    assert not os.path.exists(tmp_path / "e")                     # nothing written before TensorRT


def test_engine_manifest_from_plain_data_is_what_the_runtime_checks(bundles, tmp_path):
    """Keys, file names, the manifest and its writing; then the runtime's own check of the
    folder accepts it on the same board and refuses it on another GPU."""
    job = plan_engines(bundles["mar"], out=str(tmp_path / "engines"), k_range=(1, 8), batch_range=(1, 2))
    os.makedirs(job.engine_dir)
    entries = {}
    for graph, profs in job.profiles.items():
        key = engine_key(job.sources[graph], profs, job.options, JETSON, "builder-sha")
        data = f"serialized {graph}".encode()       # stands in for TensorRT's bytes: only hashed here
        with open(os.path.join(job.engine_dir, engine_file_name(graph, cache_key(key))), "wb") as f:
            f.write(data)
        entries[graph] = engine_entry(job, graph, key, data, 1.5, JETSON["driver"])
    stale = os.path.join(job.engine_dir, "backbone-0123456789abcdef.engine")
    open(stale, "wb").close()
    previous = {"backbone": {"file": os.path.basename(stale)}}
    manifest = engine_manifest_data(job, JETSON, entries, previous)
    write_engine_manifest(job, manifest, previous)
    assert not os.path.exists(stale)                                # no entry points at it any more
    back = read_manifest(job.engine_dir)
    assert back == json.loads(json.dumps(manifest)) and back["built_on"]["tensorrt_cuda"] == "12"
    assert back["timing_cache"] == timing_cache_name(JETSON) == "timing-orin-nvgpu-sm8.7-trt10.3.0.30-cu12.cache"
    for graph, entry in back["engines"].items():
        assert reusable(entry, entry["key"], job.engine_dir)
        check_engine(graph, entry, JETSON, job.sources[graph], "`R`")
        with pytest.raises(FarError, match="rebuild with `R`"):
            check_engine(graph, entry, {**JETSON, "gpu": "NVIDIA H100", "compute_capability": "9.0"},
                         job.sources[graph], "`R`")
    assert set(os.listdir(job.engine_dir)) == {ENGINE_MANIFEST} | {e["file"] for e in back["engines"].values()}


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here; this checks the sentence without it")
def test_far_runtime_engines_without_tensorrt_is_one_sentence(bundles):
    r = CliRunner().invoke(runtime_cli, ["engines", bundles["far"], "--k", "4:8", "--batch", "1:2"])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: TensorRT is not installed, so engines cannot be built here") and "JetPack" in line
    with pytest.raises(FarError):
        import_tensorrt(builder=True)
    r = CliRunner().invoke(runtime_cli, ["engines", bundles["far"], "--k", "4:8", "--batch", "1:2", "--profiles-only"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output[r.output.index("{"):])
    assert printed == json.loads(json.dumps(engine_profiles(load_bundle(bundles["far"]), (4, 8), (1, 2))))


def test_cuda_major_of_a_system_tensorrt_comes_from_its_debian_package():
    assert deb_cuda_major("10.3.0.30-1+cuda12.5") == "12"          # JetPack 6.1/6.2
    assert deb_cuda_major("8.6.2.3-1+cuda12.2") == "12"            # JetPack 6.0
    assert deb_cuda_major("10.13.3.9-1+cuda13.0") == "13"
    assert deb_cuda_major("2.0.0-1") is None and deb_cuda_major("") is None


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_tensorrt_origin_reads_the_package_that_installed_the_module():
    """A module installed by a Debian package and by no wheel (as JetPack's tensorrt is): its
    package and version are found; this one names no CUDA."""
    path = "/usr/lib/python3/dist-packages/argcomplete/__init__.py"
    if deb_package_of(path) is None:
        pytest.skip("python3-argcomplete (a Debian-packaged Python module) is not installed here")
    spec = importlib.util.spec_from_file_location("argcomplete", path)
    module = importlib.util.module_from_spec(spec)               # a real module, not executed
    package, version = deb_package_of(path)
    assert package == "python3-argcomplete" and version
    assert tensorrt_origin(module) == {"source": f"deb python3-argcomplete {version}", "cuda": "unknown"}
    assert deb_package_of("/nonexistent/tensorrt/__init__.py") is None
