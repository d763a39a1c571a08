"""What check.sh compares across machines: run on x86-64 (the checkout's venv) and on aarch64
(the emulated guest's venv of ./runtime[cpu]), each writing into OUT:

- ``{case}_py.png`` / ``{case}_py.npy``: the Python runtime's PNG grid and final latents;
- ``{case}_cpp.png`` / ``{case}_cpp.npy``: the C++ runtime's (far-generate's PNG, the C API's
  latents), when ``--cpp BUILD_DIR`` is given;
- ``loop_math.npz``: the loop's own arithmetic (tests/loop_math.py), Python and C++ probe;
- ``randomness.npz``: every seed's draw (Python); info.json says whether C++'s is the same.

    python outputs.py OUT --demo BUNDLE --mar BUNDLE [--cpp BUILD_DIR] [--probe EXE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))                     # tests/: loop_math
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "runtime", "cpp"))   # far_cpp

import loop_math  # noqa: E402
from far_runtime.cli import parse_labels  # noqa: E402
from far_runtime.images import check_finite, encode_png, grid, to_uint8  # noqa: E402
from far_runtime.pipeline import Pipeline  # noqa: E402
from far_runtime.randomness import draw_randomness  # noqa: E402

# README command 1's generate (its PNG is far_export/demo/grid.png), and a MAR run with CFG.
CASES = {
    "demo": dict(classes="0,1,2,3,4,5,6,7", num=8, K=16, O=8, cfg=5.0, cfg_schedule="constant",
                 temperature=0.8, seed=0),
    "mar": dict(classes="1,2", num=2, K=8, O=8, cfg=3.0, cfg_schedule="linear", temperature=0.95, seed=5),
}
RANDOMNESS = [(seed, 4, 256, 16, 25) for seed in range(20)] + [(2 ** 64 - 1, 8, 64, 16, 100)]


def python_case(bundle, c, threads):
    pipe = Pipeline.load(bundle, threads=threads)
    labels = parse_labels(c["classes"], c["num"])
    tokens = pipe.generate_tokens(labels, K=c["K"], O=c["O"], cfg=c["cfg"], cfg_schedule=c["cfg_schedule"],
                                  temperature=c["temperature"], seed=c["seed"])
    images = pipe.decode(tokens)
    check_finite(images)
    return tokens, encode_png(grid(to_uint8(images)))


def cpp_case(build, bundle, c, threads, out_png):
    from far_cpp import CRuntime, load_library
    args = [os.path.join(build, "far-generate"), bundle, "--class", c["classes"], "--num", c["num"], "--K", c["K"],
            "--O", c["O"], "--cfg", c["cfg"], "--cfg-schedule", c["cfg_schedule"], "--temperature", c["temperature"],
            "--seed", c["seed"], "--threads", threads, "--out", out_png]
    subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)
    rt = CRuntime(load_library(os.path.join(build, "libfar_runtime.so")), bundle, threads=threads)
    try:
        labels = [int(x) for x in parse_labels(c["classes"], c["num"])]
        return rt.tokens(labels, K=c["K"], O=c["O"], cfg=c["cfg"], seed=c["seed"], temperature=c["temperature"],
                         schedule=c["cfg_schedule"])
    finally:
        rt.close()


def randomness(out_dir, build=None):
    """Every draw of RANDOMNESS into randomness.npz (the Python runtime's), and whether the C++
    runtime's draw is byte for byte the same on this machine."""
    arrays, same = {}, []
    lib = None
    if build:
        from far_cpp import draw_randomness as c_draw, load_library
        lib = load_library(os.path.join(build, "libfar_runtime.so"))
    for i, (seed, B, L, C, S) in enumerate(RANDOMNESS):
        r = draw_randomness(seed, B, L, C, S)
        arrays.update({f"orders{i}": r.orders, f"noise{i}": r.noise, f"step{i}": r.step_noise})
        if lib is not None:
            o, n, st = c_draw(lib, seed, B, L, C, S)
            same.append(o.tobytes() == r.orders.tobytes() and n.tobytes() == r.noise.tobytes()
                        and st.tobytes() == r.step_noise.tobytes())
    np.savez(os.path.join(out_dir, "randomness.npz"), **arrays)
    return {"draws": len(RANDOMNESS), "cpp_equals_python": same}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--demo", required=True)
    ap.add_argument("--mar", required=True)
    ap.add_argument("--cpp", help="C++ build folder (far-generate, libfar_runtime.so)")
    ap.add_argument("--probe", help="loop_math_probe built for this machine")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    info = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "seconds": {}}
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    for case, bundle in (("demo", a.demo), ("mar", a.mar)):
        c = CASES[case]
        t = time.time()
        tokens, png = python_case(bundle, c, a.threads)
        np.save(os.path.join(a.out, f"{case}_py.npy"), tokens)
        with open(os.path.join(a.out, f"{case}_py.png"), "wb") as f:
            f.write(png)
        info["seconds"][f"{case}_py"] = round(time.time() - t, 1)
        if a.cpp:
            t = time.time()
            tokens = cpp_case(a.cpp, bundle, c, a.threads, os.path.join(a.out, f"{case}_cpp.png"))
            np.save(os.path.join(a.out, f"{case}_cpp.npy"), tokens)
            info["seconds"][f"{case}_cpp"] = round(time.time() - t, 1)
    t = time.time()
    dumps = {f"py_{k}": v for k, v in loop_math.python_dumps().items()}
    if a.probe:
        dumps.update({f"cpp_{k}": v for k, v in loop_math.cpp_dumps(a.probe).items()})
    np.savez(os.path.join(a.out, "loop_math.npz"), **dumps)
    info["seconds"]["loop_math"] = round(time.time() - t, 1)
    t = time.time()
    info["randomness"] = randomness(a.out, a.cpp)
    info["seconds"]["randomness"] = round(time.time() - t, 1)
    with open(os.path.join(a.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
