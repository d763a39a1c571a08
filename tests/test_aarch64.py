"""The aarch64 check (tests/aarch64/check.sh: Jetson's CPU under qemu-user, an arm64 Debian root
from mmdebstrap) from pytest. Marked slow: about 11 minutes with the arm64 root cached in
~/.cache/far-export/aarch64, 5 to 13 more the first time (measured in the README). Skips where it
cannot run: not root, no apt-get, the Debian archive or PyPI unreachable (exit status 3)."""
import os
import subprocess
import sys

import pytest

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aarch64", "check.sh")


@pytest.mark.slow
def test_aarch64_png_bytes_loop_arithmetic_and_cpp_equal_x86(tmp_path):
    r = subprocess.run(["bash", CHECK], capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work")})
    if r.returncode == 3:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "all checks passed"
