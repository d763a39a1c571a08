#!/usr/bin/env bash
# Make an ONNX Runtime folder (include/ + lib/, the layout of an official release archive)
# without the archive: the C/C++ headers from the npm package
# com.github.asus4.onnxruntime@0.4.9 (API version 29; cached once per machine) and the
# shared library of the onnxruntime wheel installed in $PYTHON's environment (the C API is
# forward compatible, so headers of API 29 run against a newer library).
#
#   bash runtime/cpp/fetch_onnxruntime.sh OUT_DIR     # prints OUT_DIR when done
#
# Environment: PYTHON (default python3), FAR_EXPORT_CACHE (default ~/.cache/far-export).
set -euo pipefail

out=${1:?usage: fetch_onnxruntime.sh OUT_DIR}
python=${PYTHON:-python3}
pkg=com.github.asus4.onnxruntime
ver=0.4.9
tgz_sha256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
headers_in_tgz="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers"
cache=${FAR_EXPORT_CACHE:-$HOME/.cache/far-export}/ort-headers/$ver

if [ ! -f "$cache/include/onnxruntime_cxx_api.h" ]; then
  # exit 3: the headers cannot be had here (no npm, or the registry unreachable), as opposed to
  # a broken download (exit 2); tests/test_cpp_runtime.py skips on 3 and fails on anything else.
  command -v npm >/dev/null || { echo "error: npm is needed once to fetch the ONNX Runtime headers ($pkg@$ver); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the ONNX Runtime headers from npm ($pkg@$ver, about 150 MB, once per machine)" >&2
  (cd "$tmp" && npm pack "$pkg@$ver" --silent >/dev/null) || { echo "error: npm could not fetch $pkg@$ver (is the npm registry reachable?); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  tgz="$tmp/$pkg-$ver.tgz"
  echo "$tgz_sha256  $tgz" | sha256sum -c --quiet - || { echo "error: $pkg-$ver.tgz does not match its pinned sha256." >&2; exit 2; }
  tar -xzf "$tgz" -C "$tmp" "$headers_in_tgz"
  mkdir -p "$cache.partial/include"
  cp "$tmp/$headers_in_tgz"/*.h "$cache.partial/include/"
  rm -rf "$cache" && mv "$cache.partial" "$cache"
fi

lib=$("$python" - <<'PY'
import glob, os, sys
try:
    import onnxruntime
except ImportError:
    sys.exit("error: onnxruntime is not installed for this Python; install far-runtime[cpu] or set ONNXRUNTIME_ROOT.")
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))
libs = [l for l in libs if not l.endswith(".py")]
if not libs:
    sys.exit("error: the installed onnxruntime wheel has no libonnxruntime.so.*; set ONNXRUNTIME_ROOT.")
print(os.path.realpath(libs[0]))
PY
)

mkdir -p "$out/lib"
rm -rf "$out/include"
cp -r "$cache/include" "$out/include"
# Links in our own folder, never inside site-packages: the SONAME is libonnxruntime.so.1.
ln -sfn "$lib" "$out/lib/$(basename "$lib")"
ln -sfn "$(basename "$lib")" "$out/lib/libonnxruntime.so.1"
ln -sfn libonnxruntime.so.1 "$out/lib/libonnxruntime.so"
echo "$out"
