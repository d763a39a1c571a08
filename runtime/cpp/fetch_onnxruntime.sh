#!/usr/bin/env bash
# Make an ONNX Runtime folder (include/ + lib/, the layout of an official release archive)
# without the archive: the shared library of the onnxruntime wheel installed in $PYTHON's
# environment, and C/C++ headers that match it, i.e. of a C API version no newer than the
# library's (onnxruntime 1.N serves C API 1..N; src/ort_api.cpp asks for 18, whatever the
# headers declare). Headers come from a registry, pinned by sha256 and cached once per machine:
#   - onnxruntime 1.29 or later: the npm package com.github.asus4.onnxruntime@0.4.9 (API 29, 150 MB);
#   - onnxruntime 1.21 .. 1.28 (JetPack 6's Python 3.10 gets 1.23.2): Debian trixie's
#     libonnxruntime-dev 1.21.0+dfsg-1 (API 21; apt-get, 85 kB plus trixie's package lists);
#   - older: refused; set ONNXRUNTIME_ROOT to that version's official release folder.
#
#   bash runtime/cpp/fetch_onnxruntime.sh OUT_DIR     # prints OUT_DIR when done
#
# Environment: PYTHON (default python3), FAR_EXPORT_CACHE (default ~/.cache/far-export).
# Exit 3: the headers cannot be had here (no npm or apt-get, or the registry unreachable; the
# tests skip), 2: anything else (a refused library, a download that does not match its sha256).
set -euo pipefail

out=${1:?usage: fetch_onnxruntime.sh OUT_DIR}
python=${PYTHON:-python3}
cache_root=${FAR_EXPORT_CACHE:-$HOME/.cache/far-export}/ort-headers

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
version=${lib##*/libonnxruntime.so.}                       # 1.23.2
minor=$(echo "$version" | sed -n 's/^1\.\([0-9][0-9]*\)\..*/\1/p')
[ -n "$minor" ] || { echo "error: cannot read ONNX Runtime's version from $lib; set ONNXRUNTIME_ROOT." >&2; exit 2; }

npm_headers() {
  local pkg=com.github.asus4.onnxruntime ver=0.4.9
  local tgz_sha256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
  local in_tgz="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers"
  headers=$cache_root/$ver
  [ -f "$headers/include/onnxruntime_cxx_api.h" ] && return
  command -v npm >/dev/null || { echo "error: npm is needed once to fetch the ONNX Runtime headers ($pkg@$ver); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the ONNX Runtime headers from npm ($pkg@$ver, about 150 MB, once per machine)" >&2
  (cd "$tmp" && npm pack "$pkg@$ver" --silent >/dev/null) || { echo "error: npm could not fetch $pkg@$ver (is the npm registry reachable?); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  echo "$tgz_sha256  $tmp/$pkg-$ver.tgz" | sha256sum -c --quiet - || { echo "error: $pkg-$ver.tgz does not match its pinned sha256." >&2; exit 2; }
  tar -xzf "$tmp/$pkg-$ver.tgz" -C "$tmp" "$in_tgz"
  mkdir -p "$headers.partial/include"
  cp "$tmp/$in_tgz"/*.h "$headers.partial/include/"
  rm -rf "$headers" && mv "$headers.partial" "$headers"
}

debian_headers() {
  local deb=libonnxruntime-dev ver=1.21.0+dfsg-1
  local deb_sha256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08   # the amd64 .deb; headers are the same on every arch
  headers=$cache_root/debian-$ver
  [ -f "$headers/include/onnxruntime_cxx_api.h" ] && return
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { echo "error: apt-get is needed once to fetch the ONNX Runtime headers for onnxruntime $version (Debian's $deb $ver); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts="arch=amd64 trusted=yes"   # the .deb's sha256 is checked below
  [ -f "$keyring" ] && opts="arch=amd64 signed-by=$keyring"
  echo "deb [$opts] http://deb.debian.org/debian trixie main" > "$tmp/sources.list"
  local apt=(apt-get -q -o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o APT::Architecture=amd64
             -o APT::Architectures::=amd64 -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  echo "fetching the ONNX Runtime headers from Debian ($deb $ver, once per machine)" >&2
  { "${apt[@]}" update && (cd "$tmp" && "${apt[@]}" download "$deb=$ver"); } >/dev/null 2>&1 ||
    { echo "error: apt-get could not fetch Debian's $deb $ver (is the Debian archive reachable?); or set ONNXRUNTIME_ROOT." >&2; exit 3; }
  local file=("$tmp"/${deb}_*.deb)
  echo "$deb_sha256  ${file[0]}" | sha256sum -c --quiet - || { echo "error: $deb $ver does not match its pinned sha256." >&2; exit 2; }
  dpkg-deb -x "${file[0]}" "$tmp/x"
  mkdir -p "$headers.partial"
  cp -r "$tmp/x/usr/include/onnxruntime" "$headers.partial/include"
  rm -rf "$headers" && mv "$headers.partial" "$headers"
}

if [ "$minor" -ge 29 ]; then
  npm_headers
elif [ "$minor" -ge 21 ]; then
  debian_headers
else
  echo "error: onnxruntime $version is older than any headers this script fetches (1.21; the runtime needs 1.18 or later); set ONNXRUNTIME_ROOT to ONNX Runtime $version's release folder (include/ + lib/)." >&2
  exit 2
fi

mkdir -p "$out/lib"
rm -rf "$out/include" "$out"/lib/libonnxruntime.so*
cp -r "$headers/include" "$out/include"
# Links in our own folder, never inside site-packages: the SONAME is libonnxruntime.so.1.
ln -sfn "$lib" "$out/lib/$(basename "$lib")"
ln -sfn "$(basename "$lib")" "$out/lib/libonnxruntime.so.1"
ln -sfn libonnxruntime.so.1 "$out/lib/libonnxruntime.so"
echo "$out"
