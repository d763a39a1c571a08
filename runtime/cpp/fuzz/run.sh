#!/usr/bin/env bash
# Fuzz one loader of untrusted bytes with libFuzzer + AddressSanitizer/UBSan:
#   bash runtime/cpp/fuzz/run.sh TARGET SECONDS [libFuzzer options...]
# TARGET: manifest or respacing (fuzz/fuzz_<target>.cpp). Builds in runtime/cpp/build-fuzz
# with clang (Debian: clang libclang-rt-14-dev), fuzzes a working corpus seeded from the
# repository's tests/fuzz/cpp/<target>/, then merges into the repository corpus only the
# inputs that reach code it did not. Exit 3: clang or libFuzzer missing; otherwise libFuzzer's status
# (a finding leaves crash-*/oom-*/timeout-* files in runtime/cpp/build-fuzz/findings/).
set -euo pipefail

target=${1:?usage: run.sh TARGET SECONDS [libFuzzer options...]}
seconds=${2:?usage: run.sh TARGET SECONDS [libFuzzer options...]}
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD_DIR:-$here/build-fuzz}
corpus=$repo/tests/fuzz/cpp/$target
[ -d "$corpus" ] || { echo "error: no corpus folder $corpus (targets: manifest, respacing)." >&2; exit 2; }
command -v clang++ >/dev/null || { echo "error: clang++ is missing (Debian: apt-get install clang libclang-rt-14-dev)." >&2; exit 3; }
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     clang++ -fsanitize=fuzzer,address -x c++ - -o /dev/null 2>/dev/null; then
  echo "error: clang cannot link libFuzzer with AddressSanitizer (Debian: apt-get install libclang-rt-14-dev)." >&2
  exit 3
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv-test/bin/python" ]; then PYTHON=$repo/.venv-test/bin/python; else PYTHON=python3; fi
fi
export PYTHON
mkdir -p "$build/findings" "$build/corpus/$target"
exec 9>"$build/.build.lock"
flock 9
ort=${ONNXRUNTIME_ROOT:-$(bash "$here/fetch_onnxruntime.sh" "$build/onnxruntime")}
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
CC=clang CXX=clang++ cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFAR_FUZZ=ON \
  -DONNXRUNTIME_ROOT="$ort" >&2
cmake --build "$build" --parallel "${JOBS:-2}" --target "fuzz_$target" >&2
dict=()
if [ -f "$here/fuzz/$target.dict" ]; then dict=(-dict="$here/fuzz/$target.dict"); fi
cd "$build/findings"
status=0
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0} \
  "$build/fuzz_$target" "$build/corpus/$target" "$corpus" "${dict[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 \
  -timeout=10 -max_len=16384 -print_final_stats=1 "$@" || status=$?
# Into the repository only what reaches new code (edges, not hit counts): a few hundred small
# files. FUZZ_MERGE=0 (the slow test) leaves the repository as it is.
if [ "${FUZZ_MERGE:-1}" != 0 ]; then
  "$build/fuzz_$target" -merge=1 -use_counters=0 "$corpus" "$build/corpus/$target" -max_len=16384 >/dev/null 2>&1 || true
fi
exit $status
