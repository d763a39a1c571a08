#!/usr/bin/env bash
# Build the C++ runtime: bash runtime/cpp/build.sh
# Uses ONNXRUNTIME_ROOT (an official ONNX Runtime release folder: include/ + lib/) when set;
# otherwise fetch_onnxruntime.sh makes one from the installed onnxruntime wheel (PYTHON, default:
# the repository's .venv, else python3) and headers that match its version. Either way the
# headers' C API version must lie between the runtime's (src/ort_api.h) and the library's.
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
# Headers that match the library: their C API version at least the runtime's (src/ort_api.h)
# and no newer than the library's (onnxruntime 1.N serves C API 1..N), or refuse.
header=$(find "$ONNXRUNTIME_ROOT/include" -name onnxruntime_c_api.h 2>/dev/null | head -1)
header_api=$(sed -n 's/^#define ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "${header:-/dev/null}" | head -1)
lib=$(find "$ONNXRUNTIME_ROOT"/lib* -maxdepth 1 -name 'libonnxruntime.so.1.*' 2>/dev/null | head -1)
lib_version=${lib##*/libonnxruntime.so.}
lib_api=$(echo "$lib_version" | sed -n 's/^1\.\([0-9][0-9]*\)\..*/\1/p')
need_api=$(sed -n 's/^constexpr uint32_t kOrtApiVersion = \([0-9][0-9]*\);/\1/p' "$here/src/ort_api.h")
if [ -z "$header_api" ]; then
  echo "error: $ONNXRUNTIME_ROOT/include has no onnxruntime_c_api.h with an ORT_API_VERSION; pass an official ONNX Runtime release folder." >&2
  exit 2
fi
if [ "$header_api" -lt "$need_api" ]; then
  echo "error: the headers in $ONNXRUNTIME_ROOT are ONNX Runtime C API $header_api, but the runtime needs $need_api (onnxruntime 1.$need_api) or later." >&2
  exit 2
fi
if [ -n "$lib_api" ] && [ "$header_api" -gt "$lib_api" ]; then
  echo "error: the headers in $ONNXRUNTIME_ROOT are ONNX Runtime C API $header_api, newer than its library $lib_version (C API $lib_api); use the headers of $lib_version or older." >&2
  exit 2
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
