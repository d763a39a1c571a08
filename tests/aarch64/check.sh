#!/usr/bin/env bash
# The aarch64 check (Jetson's CPU, emulated): does the runtime installed from this checkout on an
# arm64 Debian draw the same PNG bytes as on x86-64, is the loop's own arithmetic (and the
# randomness) bit-identical, and does the C++ runtime equal the Python runtime there?
#
#   sudo bash tests/aarch64/check.sh      # as root; tests/test_aarch64.py runs it (marked slow)
#
# 1. Debian packages on the host: mmdebstrap, qemu-user-static, binfmt-support, arch-test,
#    g++-aarch64-linux-gnu (apt-get, when missing); binfmt_misc mounted, qemu-aarch64 enabled.
# 2. An arm64 Debian bookworm root from mmdebstrap, cached in $FAR_EXPORT_CACHE/aarch64 (the
#    first run builds it, 5 to 13 min; later runs reuse it, and the whole check takes ~11 min),
#    with an ARM /proc/cpuinfo bind-mounted over the emulated one (under qemu-user the guest
#    sees the host's x86 cpuinfo, on which `import onnxruntime` segfaults) and QEMU_CPU=cortex-a76
#    (the closest qemu has to Jetson Orin's Cortex-A78AE: ARMv8.2 with dot product, no SVE).
# 3. In the guest: a venv with `pip install ./runtime[cpu]` from this checkout (PyPI's aarch64
#    wheels). The C++ runtime is cross-compiled on the host with Debian's aarch64 g++ against
#    the root (--sysroot) and the guest wheel's libonnxruntime: measured on one source file
#    (plan.cpp, -O3), the guest's own g++ under qemu took 16.6 s of CPU, the cross-compiler 1.7 s.
# 4. Bundles made on the host with far-export (the embedded demo, README command 1's run; a
#    small random MAR with ddim25), outputs.py on both machines, compare.py on the two folders.
#
# Environment: PYTHON (the host's Python with far-export; default the checkout's .venv-test,
# else .venv), FAR_EXPORT_CACHE (default ~/.cache/far-export), WORK (default a new /tmp folder).
# Exit status: 0 every check passed, 1 a check failed, 3 this machine cannot run the check
# (not root, no apt-get, the Debian archive or PyPI unreachable), 2 anything else.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${FAR_EXPORT_CACHE:-$HOME/.cache/far-export}/aarch64
work=${WORK:-$(mktemp -d /tmp/far-aarch64.XXXXXX)}
start=$SECONDS
log() { echo "[aarch64 check +$((SECONDS - start))s] $*" >&2; }
cannot() { echo "error: $*" >&2; exit 3; }
trap 'rc=$?; [ $rc = 0 ] || [ $rc = 1 ] || [ $rc = 3 ] || exit 2' EXIT

[ "$(id -u)" = 0 ] || cannot "the aarch64 check needs root (mmdebstrap, chroot and bind mounts)."
if [ -z "${PYTHON:-}" ]; then
  for p in "$repo/.venv-test/bin/python" "$repo/.venv/bin/python"; do [ -x "$p" ] && PYTHON=$p && break; done
fi
[ -n "${PYTHON:-}" ] && "$PYTHON" -c "import far_export" 2>/dev/null ||
  cannot "no Python with far-export for the host side: make the README's .venv-test or set PYTHON."

# --- 1. host packages and binfmt ---------------------------------------------------------------
host_pkgs="mmdebstrap qemu-user-static binfmt-support arch-test g++-aarch64-linux-gnu cmake ninja-build"
if ! dpkg -s $host_pkgs >/dev/null 2>&1; then
  command -v apt-get >/dev/null || cannot "the aarch64 check installs Debian packages and needs apt-get."
  log "installing $host_pkgs"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $host_pkgs; } >&2 ||
    cannot "apt-get could not install $host_pkgs (is the Debian archive reachable?)."
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
  cannot "binfmt_misc cannot be mounted here, so aarch64 programs cannot run under qemu."
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || cannot "qemu-aarch64 is not registered with binfmt_misc."

# --- 2. the arm64 root -------------------------------------------------------------------------
guest_pkgs="python3,python3-venv,ca-certificates,libstdc++-12-dev,libpng-dev,libssl-dev,zlib1g-dev,nlohmann-json3-dev,libgtest-dev"
root=$cache/bookworm-arm64-$(echo "$guest_pkgs" | sha256sum | cut -c1-12)
mkdir -p "$cache"
exec 8>"$cache/.lock"
flock 8                                     # one check at a time on this machine
if [ ! -x "$root/usr/bin/python3" ]; then
  log "building the arm64 bookworm root (mmdebstrap under qemu, 5 to 13 min, once): $root"
  rm -rf "$root.partial"
  mmdebstrap --arch=arm64 --variant=apt --include="$guest_pkgs" bookworm "$root.partial" >&2 ||
    cannot "mmdebstrap could not build the arm64 root (is the Debian archive reachable?)."
  mv "$root.partial" "$root"
fi

mounts=()
cleanup() { for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done; }
trap 'rc=$?; cleanup; [ $rc = 0 ] || [ $rc = 1 ] || [ $rc = 3 ] || exit 2' EXIT
bind() { mount "$@"; mounts+=("${@: -1}"); }
bind -t proc proc "$root/proc"
bind --bind "$here/cpuinfo" "$root/proc/cpuinfo"
bind --rbind /dev "$root/dev"
bind --bind -o ro /sys "$root/sys"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/far-host-ca.crt"   # the host's CAs (a proxy's included)
guest() {
  chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU=cortex-a76 \
    PIP_CERT=/etc/ssl/certs/far-host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    LD_LIBRARY_PATH=/far/build:/far/ort/lib "$@"
}
log "guest: $(guest uname -m), $(guest python3 --version)"

# The checkout's files the guest needs (tracked and new, never ignored build outputs).
rm -rf "$root/far" && mkdir -p "$root/far/src"
(cd "$repo" && git ls-files -co --exclude-standard runtime tests/loop_math.py tests/loop_math_probe.cpp tests/aarch64 |
  tar -cf - -T -) | tar -xf - -C "$root/far/src"

# --- 3. the runtime in the guest --------------------------------------------------------------
t=$SECONDS
[ -x "$root/opt/far-venv/bin/python" ] || guest python3 -m venv /opt/far-venv
guest /opt/far-venv/bin/pip install -q '/far/src/runtime[cpu]' >&2 ||
  cannot "pip in the guest could not install ./runtime[cpu] (is PyPI reachable?)."
guest /opt/far-venv/bin/python -c "import onnxruntime, numpy, far_runtime" ||
  { echo "error: the runtime installed in the guest cannot be imported." >&2; exit 1; }
log "guest: pip install ./runtime[cpu] took $((SECONDS - t)) s"

# --- 4. x86-64: bundles, the C++ build, outputs ------------------------------------------------
t=$SECONDS
mkdir -p "$work"
if [ ! -f "$work/demo/manifest.json" ]; then
  "$PYTHON" -m far_export.cli export --out "$work/demo" --validate-batches 1 >&2
fi
if [ ! -f "$work/mar/manifest.json" ]; then
  "$PYTHON" - "$work/mar.pth" <<'PY'
import sys, torch
from far_export.synthetic import write_random_checkpoint
write_random_checkpoint(sys.argv[1], "small", "diffusion", seed=5)
obj = torch.load(sys.argv[1], weights_only=False)          # our own file: MAR with ddim25 sampling
obj["args"].num_sampling_steps = "ddim25"
torch.save(obj, sys.argv[1])
PY
  "$PYTHON" -m far_export.cli export "$work/mar.pth" --vae "$repo/far_export/demo/assets/vae_demo.pth" \
    --out "$work/mar" --validate-batches 1 >&2
fi
log "x86-64: bundles in $((SECONDS - t)) s"
t=$SECONDS
x86_build=$(dirname "$(PYTHON=$PYTHON bash "$repo/runtime/cpp/build.sh" | tail -1)")
"$PYTHON" -c "import sys; sys.path.insert(0, '$repo/tests'); import loop_math; loop_math.build_probe('$work/probe-x86')"
"$PYTHON" "$here/outputs.py" "$work/x86" --demo "$work/demo" --mar "$work/mar" --cpp "$x86_build" --probe "$work/probe-x86"
log "x86-64: C++ build and outputs in $((SECONDS - t)) s"

# --- 5. aarch64: the C++ runtime cross-compiled, outputs in the guest --------------------------
t=$SECONDS
ort_lib=$(guest /opt/far-venv/bin/python -c "import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), 'capi', 'libonnxruntime.so.*')))[0])")
headers=$(PYTHON=$PYTHON bash "$repo/runtime/cpp/fetch_onnxruntime.sh" "$work/ort-x86")/include
mkdir -p "$root/far/ort/lib"
cp -r "$headers" "$root/far/ort/include"
cp "$root$ort_lib" "$root/far/ort/lib/"
ln -s "$(basename "$ort_lib")" "$root/far/ort/lib/libonnxruntime.so.1"
ln -s libonnxruntime.so.1 "$root/far/ort/lib/libonnxruntime.so"
# CMake re-roots find paths under the sysroot, so ONNXRUNTIME_ROOT is the guest's path.
cmake -S "$repo/runtime/cpp" -B "$root/far/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$here/toolchain.cmake" -DCMAKE_SYSROOT="$root" -DONNXRUNTIME_ROOT=/far/ort \
  -DCMAKE_CROSSCOMPILING_EMULATOR="qemu-aarch64-static;-L;$root" -DFAR_BUILD_TESTS=ON >&2
cmake --build "$root/far/build" --parallel "${JOBS:-2}" >&2
"$PYTHON" -c "import sys; sys.path.insert(0, '$repo/tests'); import loop_math; loop_math.build_probe('$root/far/probe', 'aarch64-linux-gnu-g++')"
log "aarch64: C++ runtime, unit tests and probe cross-compiled in $((SECONDS - t)) s"
t=$SECONDS
guest /far/build/far_unit_tests --gtest_brief=1 >&2 || { echo "error: the C++ unit tests failed on aarch64." >&2; exit 1; }
log "aarch64: C++ unit tests passed in $((SECONDS - t)) s"
t=$SECONDS
cp -r "$work/demo" "$work/mar" "$root/far/"
guest /opt/far-venv/bin/python /far/src/tests/aarch64/outputs.py /far/out --demo /far/demo --mar /far/mar \
  --cpp /far/build --probe /far/probe
log "aarch64: outputs in $((SECONDS - t)) s"

# --- 6. compare ---------------------------------------------------------------------------------
"$PYTHON" "$here/compare.py" "$work/x86" "$root/far/out" --grid "$repo/far_export/demo/grid.png" ||
  { log "checks failed (outputs in $work and $root/far/out)"; exit 1; }
log "done in $((SECONDS - start)) s"
