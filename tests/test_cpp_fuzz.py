"""The C++ runtime's fuzz targets (runtime/cpp/fuzz/): their corpora replayed through the
ordinary build on every run (a crash, an abort or a sentence that is not one line fails), and
a libFuzzer + AddressSanitizer run of each target, marked slow."""
import os
import shutil
import subprocess

import pytest

from cpp_helpers import CPP, ROOT, cpp_build  # noqa: F401 (a fixture)

TARGETS = ("manifest", "respacing")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "cpp")


def corpus(target):
    d = os.path.join(CORPUS, target)
    return sorted(os.path.join(d, f) for f in os.listdir(d))


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays(cpp_build, target):
    files = corpus(target)
    assert len(files) >= 5, "the corpus is missing"
    exe = os.path.join(cpp_build["dir"], f"far-fuzz-replay-{target}")
    res = subprocess.run([exe, *files], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{target}: {res.stderr.strip().splitlines()[-3:]}"
    assert res.stdout.strip() == f"replayed {len(files)} files"


def test_the_replayer_fails_on_a_file_it_cannot_read(cpp_build, tmp_path):
    """A corpus file that is not there is an error, never a silent pass."""
    good = tmp_path / "good"
    good.write_bytes(bytes([25, 0]) + b"ddim25")
    exe = os.path.join(cpp_build["dir"], "far-fuzz-replay-respacing")
    assert subprocess.run([exe, good], capture_output=True).returncode == 0
    assert subprocess.run([exe, good, tmp_path / "missing"], capture_output=True).returncode == 2


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_for_a_while(target):
    """libFuzzer with AddressSanitizer and UBSan for FUZZ_SECONDS (default 300) per target."""
    if shutil.which("clang++") is None:
        pytest.skip("clang++ is missing (Debian: clang libclang-rt-14-dev)")
    seconds = os.environ.get("FUZZ_SECONDS", "300")
    res = subprocess.run(["bash", os.path.join(CPP, "fuzz", "run.sh"), target, seconds], capture_output=True, text=True,
                         env=dict(os.environ, FUZZ_MERGE="0"))          # the repository's corpus stays as it is
    if res.returncode == 3:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr[-4000:]
