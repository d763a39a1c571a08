#!/usr/bin/env bash
# Build the C++ runtime: bash runtime/cpp/build.sh
# Uses ONNXRUNTIME_ROOT (an official ONNX Runtime release folder: include/ + lib/) when set;
# otherwise fetch_onnxruntime.sh makes one from the npm headers and the installed
# onnxruntime wheel (PYTHON, default: the repository's .venv, else python3).
# Environment: BUILD_DIR (default runtime/cpp/build), FAR_BUILD_TESTS (ON/OFF), JOBS.
# Prints the path of far-generate as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD_DIR:-$here/build}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/../../.venv/bin/python" ]; then PYTHON="$here/../../.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
# exit 3: a build dependency this machine lacks (as fetch_onnxruntime.sh's missing headers):
# tests/test_cpp_runtime.py skips with this sentence and fails on anything else.
if ! echo '#include <nlohmann/json.hpp>' | "${CXX:-c++}" -std=c++17 -x c++ -fsyntax-only - 2>/dev/null; then
  echo "error: nlohmann/json.hpp is missing, with which the C++ runtime parses manifest.json (Debian: apt-get install nlohmann-json3-dev)." >&2
  exit 3
fi
mkdir -p "$build"
exec 9>"$build/.build.lock"          # one build at a time in this folder
flock 9
if [ -z "${ONNXRUNTIME_ROOT:-}" ]; then
  ONNXRUNTIME_ROOT=$(bash "$here/fetch_onnxruntime.sh" "$build/onnxruntime")
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DONNXRUNTIME_ROOT="$ONNXRUNTIME_ROOT" -DFAR_BUILD_TESTS="${FAR_BUILD_TESTS:-ON}" >&2
else
  cmake -S "$here" -B "$build" -DONNXRUNTIME_ROOT="$ONNXRUNTIME_ROOT" -DFAR_BUILD_TESTS="${FAR_BUILD_TESTS:-ON}" >&2
fi
cmake --build "$build" --parallel "${JOBS:-2}" >&2
echo "$build/far-generate"
