"""Compare outputs.py's folders from x86-64 and aarch64, print the figures, and exit 1 when a
promise is broken: PNG bytes C++ = Python on each machine, the loop's own arithmetic
bit-identical across machines and runtimes, the randomness equal across machines but for
ziggurat tail samples by one ulp (numpy's tail uses libm's log1pf), the C++ runtime's latents and
randomness equal to the Python runtime's on each machine. Reported, not required: the PNG bytes
and latents across machines (ONNX Runtime's kernels differ per CPU), and whether the demo grid equals
far_export/demo/grid.png (made on another x86 CPU; its bytes follow ONNX Runtime's kernels too).

    python compare.py X86_DIR ARM_DIR [--grid far_export/demo/grid.png]
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loop_math import MASK_LENGTHS, differing  # noqa: E402

ZIGGURAT_R = 3.6541528853610088     # numpy's float32 ziggurat: samples beyond it come from its tail


def pixels(png: bytes) -> np.ndarray:
    """The filtered scanlines of a PNG written by images.py (filter 0: the pixel bytes)."""
    pos, idat, width = 8, b"", 0
    while pos < len(png):
        n = struct.unpack(">I", png[pos:pos + 4])[0]
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width = struct.unpack(">I", data[:4])[0]
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    return np.frombuffer(zlib.decompress(idat), np.uint8).reshape(-1, 1 + 3 * width)[:, 1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("x86")
    ap.add_argument("arm")
    ap.add_argument("--grid", help="the PNG README command 1 must draw")
    a = ap.parse_args()
    failures = []

    def check(ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    info = {k: json.load(open(os.path.join(d, "info.json"))) for k, d in (("x86", a.x86), ("arm", a.arm))}
    for k, i in info.items():
        print(f"{k}: {i['machine']}, Python {i['python']}, numpy {i['numpy']}, onnxruntime {i['onnxruntime']}, "
              f"seconds {i['seconds']}")
    read = lambda d, f: open(os.path.join(d, f), "rb").read()        # noqa: E731
    for case in ("demo", "mar"):
        pngs = {f"{m} {r}": read(d, f"{case}_{r}.png") for m, d in (("x86", a.x86), ("aarch64", a.arm))
                for r in ("py", "cpp") if os.path.exists(os.path.join(d, f"{case}_{r}.png"))}
        for m in ("x86", "aarch64"):
            check(pngs.get(f"{m} py") is not None and pngs.get(f"{m} py") == pngs.get(f"{m} cpp"),
                  f"{case}: PNG bytes C++ = Python on {m}")
        px, pa = pixels(pngs["x86 py"]), pixels(pngs["aarch64 py"])
        n = int(np.count_nonzero(px != pa))
        print(f"      {case}: PNG x86-64 vs aarch64: " + ("bytes equal" if pngs["x86 py"] == pngs["aarch64 py"] else
              f"DIFFER in {n} of {px.size} pixel bytes, by at most {int(np.abs(px.astype(int) - pa).max())} "
              "(the latents below, rounded to 8 bits)"))
        if case == "demo" and a.grid:
            grid = open(a.grid, "rb").read()
            print(f"      demo: README command 1's grid {'equals' if pngs['x86 py'] == grid else 'differs from'} "
                  f"far_export/demo/grid.png on x86-64, {'equals' if pngs['aarch64 py'] == grid else 'differs from'} "
                  "it on aarch64")
        lat = {f"{m} {r}": np.load(os.path.join(d, f"{case}_{r}.npy")) for m, d in (("x86", a.x86), ("aarch64", a.arm))
               for r in ("py", "cpp")}
        check(lat["aarch64 cpp"].tobytes() == lat["aarch64 py"].tobytes(),
              f"{case}: latents C++ = Python on aarch64, bit for bit")
        check(lat["x86 cpp"].tobytes() == lat["x86 py"].tobytes(), f"{case}: latents C++ = Python on x86-64, bit for bit")
        d = np.abs(lat["x86 py"].astype(np.float64) - lat["aarch64 py"]).max()
        print(f"      {case}: latents x86-64 vs aarch64 (ONNX Runtime's kernels): max abs diff {d:.2e}, "
              f"max |latent| {np.abs(lat['x86 py']).max():.1f}")

    x = np.load(os.path.join(a.x86, "loop_math.npz"))
    r = np.load(os.path.join(a.arm, "loop_math.npz"))
    n = len(x["py_inputs"])
    check(differing(x["py_inputs"], r["py_inputs"]) == 0, f"loop math: the same {n} exp inputs on both")
    for runtime in ("py", "cpp"):
        check(differing(x[f"{runtime}_exp32"], r[f"{runtime}_exp32"]) == 0,
              f"loop math: exp32 ({runtime}) bit-identical x86-64 vs aarch64 on {n} inputs")
        for L in MASK_LENGTHS:
            check(differing(x[f"{runtime}_mask{L}"], r[f"{runtime}_mask{L}"]) == 0,
                  f"loop math: mask lengths ({runtime}), every K in 1..256, L={L}, identical")
        check(differing(x[f"{runtime}_ddpm"], r[f"{runtime}_ddpm"]) == 0,
              f"loop math: float32 DDPM coefficients ({runtime}) of {len(x['py_ddpm'])} values "
              "(respacings 1..1000, ddimN, sections) identical")
    for m, z in (("x86-64", x), ("aarch64", r)):
        check(differing(z["py_exp32"], z["cpp_exp32"]) == 0, f"loop math: exp32 C++ = Python on {m}")
        check(differing(z["py_ddpm"], z["cpp_ddpm"]) == 0, f"loop math: DDPM coefficients C++ = Python on {m}")
    check(differing(x["py_mask_ratios"], r["py_mask_ratios"]) == 0,
          f"loop math: the {len(x['py_mask_ratios'])} mask-schedule cosines bit-identical x86-64 vs aarch64")
    print("      measured, fraction of the inputs whose float32 result differs x86-64 vs aarch64:")
    for key, what in (("py_np_exp_f32", "numpy float32 np.exp (before: MAR's noise scale)"),
                      ("py_np_exp_f64", "numpy float64 np.exp rounded to float32"),
                      ("cpp_expf", "glibc expf (C++ std::exp(float))"),
                      ("cpp_exp64", "glibc exp (double) rounded to float32"),
                      ("py_exp32", "exp32 (after), Python"), ("cpp_exp32", "exp32 (after), C++")):
        print(f"        {what}: {differing(x[key], r[key])}/{n} = {differing(x[key], r[key]) / n:.3g}")
    print(f"        float64 DDPM coefficients (before rounding): {differing(x['py_ddpm_f64'], r['py_ddpm_f64'])}"
          f"/{len(x['py_ddpm_f64'])} differ")
    for m, z in (("x86-64", x), ("aarch64", r)):
        print(f"        on {m}, numpy float32 np.exp vs exp32 (the correctly rounded value): "
              f"{differing(z['py_np_exp_f32'], z['py_exp32']) / n:.3g}")

    for m, i in (("x86-64", info["x86"]), ("aarch64", info["arm"])):
        same = i["randomness"]["cpp_equals_python"]
        check(len(same) == i["randomness"]["draws"] and all(same), f"randomness: C++ = Python on {m}, {len(same)} draws")
    # Across machines: numpy's float32 ziggurat takes a tail sample (|x| > R) from libm's log1pf,
    # whose last bit may differ between platforms; everything else must be identical.
    x = np.load(os.path.join(a.x86, "randomness.npz"))
    r = np.load(os.path.join(a.arm, "randomness.npz"))
    total = differ = tails = 0
    outside = []
    for k in x.files:
        p, q = x[k].ravel(), r[k].ravel()
        d = np.nonzero(p != q)[0]
        total += p.size
        differ += d.size
        if k.startswith("orders"):
            outside += list(d)
            continue
        tails += int(np.count_nonzero(np.abs(p) > ZIGGURAT_R))
        ulps = np.abs(p[d].view(np.int32).astype(np.int64) - q[d].view(np.int32).astype(np.int64))
        outside += [j for j, u in zip(d, ulps) if not (abs(p[j]) > ZIGGURAT_R and u <= 1)]
    check(not outside, f"randomness x86-64 vs aarch64: {differ} of {total} values differ, each a ziggurat tail "
                       f"sample (|x| > {ZIGGURAT_R:.3f}; {tails} in these draws) by 1 ulp (libm's log1pf)")
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
