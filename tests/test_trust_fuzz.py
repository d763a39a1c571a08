"""Issue 26, cause 9 (Python): the fuzz corpora replayed as ordinary tests, and a long fuzz run.

Every file under ``tests/fuzz/corpus/<target>/`` (seeds, what atheris found reaching new code,
and the inputs that once failed) goes through its target (``tests/fuzz/targets.py``): each is
accepted or refused with one ``FarError``, nothing else. The long run (``-m slow``) runs
each target under atheris for ``FAR_FUZZ_SECONDS`` (default 120) from a copy of its corpus.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

FUZZ = Path(__file__).resolve().parent / "fuzz"
CASES = sorted((t, p.name) for t in TARGETS for p in (FUZZ / "corpus" / t).iterdir() if p.is_file())


def test_every_target_has_a_corpus():
    assert {t for t, _ in CASES} == set(TARGETS)
    for t in TARGETS:
        files = list((FUZZ / "corpus" / t).iterdir())
        assert sum(f.stat().st_size for f in files) < 2 << 20, f"keep the {t} corpus small (merge it)"


@pytest.mark.parametrize("target, name", CASES)
def test_corpus_file_is_accepted_or_one_far_error(target, name):
    TARGETS[target]((FUZZ / "corpus" / target / name).read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_long_fuzz_run_finds_nothing(target, tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install -e '.[fuzz]')")
    seconds = int(os.environ.get("FAR_FUZZ_SECONDS", "120"))
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    r = subprocess.run([sys.executable, str(FUZZ / "run.py"), target, str(corpus), f"-max_total_time={seconds}",
                        "-max_len=65536", "-timeout=20", "-rss_limit_mb=6144", f"-artifact_prefix={tmp_path}/",
                        *([f"-dict={FUZZ / (target + '.dict')}"] if (FUZZ / (target + ".dict")).exists() else [])],
                       capture_output=True, text=True, timeout=seconds + 300)
    assert r.returncode == 0, r.stderr[-4000:]
