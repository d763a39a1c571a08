"""The C++ runtime negotiates ONNX Runtime's C API (runtime/cpp/src/ort_api.cpp): it asks for
version 18, the oldest with every function it calls, so it runs against any library from 1.18 on
(JetPack 6's 1.23.2 in .ci/run's Python 3.10 job, 1.32 in the main suite), keeps only that
version's functions, and refuses an older library in one sentence naming both versions instead
of crashing; build.sh refuses headers newer than the library it links."""
import hashlib
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from cpp_helpers import CPP, cpp_build  # noqa: F401 (a fixture)

OLD = "1.17.3"                  # C API 17: one version short of what the runtime calls
OLD_TGZ_SHA256 = "fd586d4ab53d89fdade19ffcc75b208fd66ab417b247cb6ae299be1bb40d76be"
NODE_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
REFUSAL = (f"This ONNX Runtime library is version {OLD}, but the far runtime needs onnxruntime 1.18 or later "
           "(C API 18); install a newer onnxruntime and rebuild the runtime against it.")


@pytest.fixture(scope="module")
def old_library():
    """onnxruntime 1.17.3's shared library for this machine, from ONNX Runtime's own npm package
    onnxruntime-node@1.17.3 (50 MB, pinned by sha256, cached once per machine; the PyPI wheels of
    that release link it statically)."""
    cache = Path(os.environ.get("FAR_EXPORT_CACHE", Path.home() / ".cache" / "far-export")) / f"onnxruntime-{OLD}"
    lib = cache / platform.machine() / f"libonnxruntime.so.{OLD}"
    if lib.is_file():
        return lib
    if platform.machine() not in NODE_ARCH:
        pytest.skip(f"onnxruntime-node@{OLD} has no Linux library for {platform.machine()}")
    if shutil.which("npm") is None:
        pytest.skip(f"npm is needed once to fetch onnxruntime {OLD}'s library (onnxruntime-node@{OLD})")
    tmp = tempfile.mkdtemp()
    try:
        r = subprocess.run(["npm", "pack", f"onnxruntime-node@{OLD}", "--silent"], cwd=tmp, capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"onnxruntime-node@{OLD} cannot be fetched here: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        tgz = os.path.join(tmp, f"onnxruntime-node-{OLD}.tgz")
        assert hashlib.sha256(Path(tgz).read_bytes()).hexdigest() == OLD_TGZ_SHA256
        with tarfile.open(tgz) as t:
            data = t.extractfile(f"package/bin/napi-v3/linux/{NODE_ARCH[platform.machine()]}/libonnxruntime.so.{OLD}").read()
        lib.parent.mkdir(parents=True, exist_ok=True)
        partial = lib.parent / f"{lib.name}.partial"
        partial.write_bytes(data)
        partial.replace(lib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def ort_root(cpp_build):
    return os.environ.get("ONNXRUNTIME_ROOT") or os.path.join(cpp_build["dir"], "onnxruntime")


def probe_against(cpp_build, library: Path, tmp_path) -> subprocess.CompletedProcess:
    """ort_api_probe linked against ``library`` (through a folder holding it under its SONAME:
    libonnxruntime.so.1 today; 1.17.3's is its full version)."""
    libdir = tmp_path / f"lib-{library.name}"
    libdir.mkdir()
    for name in {"libonnxruntime.so.1", library.resolve().name}:
        (libdir / name).symlink_to(library.resolve())
    exe = tmp_path / f"probe-{library.name}"
    src = os.path.join(CPP, "src")
    subprocess.run(["c++", "-std=c++17", "-O2", "-DORT_API_MANUAL_INIT", "-I", src,
                    "-I", os.path.join(ort_root(cpp_build), "include"),
                    os.path.join(os.path.dirname(__file__), "ort_api_probe.cpp"),
                    os.path.join(src, "ort_api.cpp"), os.path.join(src, "errors.cpp"),
                    str(libdir / "libonnxruntime.so.1"), f"-Wl,-rpath,{libdir}", "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)


def test_runtime_asks_for_api_18_and_keeps_only_its_functions(cpp_build, tmp_path):
    import onnxruntime
    current = Path(ort_root(cpp_build)) / "lib" / "libonnxruntime.so.1"
    r = probe_against(cpp_build, current, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"C API 18 of onnxruntime {onnxruntime.__version__}: 280 functions"


def test_an_older_library_is_refused_in_one_sentence(cpp_build, old_library, tmp_path):
    r = probe_against(cpp_build, old_library, tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)              # not a crash (a negative status)
    assert r.stderr.strip() == REFUSAL                               # and ONNX Runtime printed nothing of its own


def test_build_refuses_headers_newer_than_the_library(cpp_build, old_library, tmp_path):
    root = tmp_path / "ort"
    (root / "lib").mkdir(parents=True)
    shutil.copytree(os.path.join(ort_root(cpp_build), "include"), root / "include")
    (root / "lib" / old_library.name).symlink_to(old_library)
    r = subprocess.run(["bash", os.path.join(CPP, "build.sh")], capture_output=True, text=True,
                       env={**os.environ, "ONNXRUNTIME_ROOT": str(root), "BUILD_DIR": str(tmp_path / "build")})
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: the headers in {root} are ONNX Runtime C API ")
    assert line.endswith(f"newer than its library {OLD} (C API 17); use the headers of {OLD} or older.")
