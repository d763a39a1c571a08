#!/usr/bin/env bash
# The one prepared GPU check (issue 15): bash tests/gpu/run.sh [OUT_DIR]
#
# Runs from a copy of the working tree on a machine with no network. It installs nothing
# into the machine's Python and never touches its torch: the tree itself goes on
# PYTHONPATH, and a pure-Python dependency that does not import there (click) is unpacked
# from tests/gpu/wheels/ into a private folder. What it uses from the machine: Python 3.10+,
# numpy and a CUDA build of torch. TensorRT is used only where it already imports.
# Writes OUT_DIR/gpu_check.json (default ./gpu-check-out, or $OUT/gpu-check when $OUT is set).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-${OUT:+$OUT/gpu-check}}"
out="${out:-$PWD/gpu-check-out}"
py="${PYTHON:-python3}"
deps="${GPU_CHECK_DEPS:-${TMPDIR:-/tmp}/far-gpu-check-deps}"
mkdir -p "$out" "$deps"

export PYTHONPATH="$root:$root/runtime:$deps${PYTHONPATH:+:$PYTHONPATH}"
for mod in numpy torch; do
    "$py" -c "import $mod" 2>/dev/null || { echo "gpu-check: $py cannot import $mod, which this check takes from the machine." >&2; exit 2; }
done
# click: from the machine when it has it, else from the carried wheel (a wheel is a zip).
if ! "$py" -c "import click" 2>/dev/null; then
    wheel="$(ls "$here"/wheels/click-*.whl 2>/dev/null | head -n 1)"
    [ -n "$wheel" ] || { echo "gpu-check: click is missing and tests/gpu/wheels has no click wheel." >&2; exit 2; }
    "$py" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$deps"
fi
exec timeout --signal=INT 480 "$py" "$here/check.py" --out "$out"
