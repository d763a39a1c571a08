#!/usr/bin/env bash
# JetPack 6's Python in CI: the runtime alone under Python 3.10 with its 3.10 pins (numpy 2.2.6,
# onnxruntime 1.23.2), installed as a board installs it (`pip install ./runtime[cpu]`, not
# editable), and the tests that need no torch run there: the C++ runtime built against that
# onnxruntime (C API 23; fetch_onnxruntime.sh picks matching headers) and compared with the
# Python runtime bit for bit, engine building up to the TensorRT call, the loop's arithmetic.
#
#   bash tests/py310/run.sh      # .ci/run runs it after the main suite
#
# Needs a python3.10 (on PATH, or pyenv's 3.10.x) and the main suite's .venv-test, which exports
# the tiny bundles (tests/tiny_bundles.py; torch is not installed under 3.10). Without a
# python3.10 it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=
candidates=("$(command -v python3.10 || true)")               # pyenv's shim may be there and refuse
if command -v pyenv >/dev/null; then candidates+=("$(pyenv root)"/versions/3.10.*/bin/python3.10); fi
for c in "${candidates[@]}"; do
  if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then py=$c; break; fi
done
if [ -z "$py" ]; then
  echo "py310: no python3.10 on this machine, so the JetPack 6 job did not run"
  exit 0
fi
start=$SECONDS
work=$(mktemp -d /tmp/far-py310.XXXXXX)
trap 'rm -rf "$work"' EXIT
.venv-test/bin/python tests/tiny_bundles.py "$work/bundles" >/dev/null 2>&1
pytest_pin=$(sed -n 's/.*"\(pytest==[0-9.]*\)".*/\1/p' pyproject.toml | head -1)
"$py" -m venv --clear .venv-py310
.venv-py310/bin/pip install -q './runtime[cpu]' "$pytest_pin" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
.venv-py310/bin/python -c "import sys, numpy, onnxruntime
print(f'py310: Python {sys.version.split()[0]}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}')"
echo "py310: set up in $((SECONDS - start)) s"
FAR_TEST_BUNDLES=$work/bundles BUILD_DIR=$PWD/runtime/cpp/build/py310 .venv-py310/bin/python -m pytest -q \
  -p no:cacheprovider tests/test_cpp_runtime.py tests/test_cpp_ort_api.py tests/test_engine_build.py \
  tests/test_loop_math.py tests/test_lru.py
echo "py310: done in $((SECONDS - start)) s"
