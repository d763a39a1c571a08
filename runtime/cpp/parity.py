"""Parity and overhead of the C++ runtime against the Python runtime, as a markdown table.

    .venv/bin/python runtime/cpp/parity.py graphs/demo /tmp/mar-bundle [--K 1,16,64] [--O 1,8] [--B 1,4]

FAR/MAR bundles run every --K; a FAR-Causal bundle (model kind "causal") runs its only K, L,
left out as its users leave it (K column: L). --heads auto,fused,step runs each head mode.
Per bundle and setting: the max abs difference of the final latents (same seed), whether the
randomness arrays are byte-identical, and, alternating the two runtimes on warm sessions, the
wall time of a whole generate in each (VAE decode included when the bundle has one) and the
C++ loop's time outside ONNX Runtime.
"""
import argparse
import os
import sys
import time
from itertools import product

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from far_cpp import CRuntime, RunStats, draw_randomness as c_draw, load_library  # noqa: E402
from far_runtime.pipeline import Pipeline  # noqa: E402
from far_runtime.randomness import draw_randomness  # noqa: E402


def ints(s):
    return [int(x) for x in s.split(",")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--lib", default=os.path.join(HERE, "build", "libfar_runtime.so"))
    ap.add_argument("--K", type=ints, default=[1, 16, 64])
    ap.add_argument("--O", type=ints, default=[1, 8])
    ap.add_argument("--B", type=ints, default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each runtime, alternated")
    ap.add_argument("--heads", default="auto", help="head modes, comma-separated: auto, fused, step")
    a = ap.parse_args()
    lib = load_library(a.lib)
    print(f"load {open('/proc/loadavg').read().split()[:3]}")
    print("| bundle | head | K | O | CFG | B | max abs latent diff | randomness identical | Python s | C++ s | C++ outside ORT |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for root in a.bundles:
        py = Pipeline.load(root, threads=a.threads)
        cc = CRuntime(lib, root, threads=a.threads)
        m = py.model
        diffusion = m["head_kind"] == "diffusion"
        causal = m.get("kind") == "causal"
        heads = ["auto"] if diffusion else a.heads.split(",")
        for K, O, head_opt, cfg, B in product([None] if causal else a.K, [8] if diffusion else a.O, heads,
                                              (1.0, 3.0), a.B):
            labels = [(3 * i + 1) % m["num_classes"] for i in range(B)]
            kw = dict(K=K, O=O, cfg=cfg, seed=a.seed, head=head_opt)
            ckw = dict(kw, K=K or 0)       # the C API's FAR_K_DEFAULT: L for FAR-Causal
            S = cc.info.diffusion_steps
            r = draw_randomness(a.seed, B, m["seq_len"], m["token_dim"], S)
            o, n, s = c_draw(lib, a.seed, B, m["seq_len"], m["token_dim"], S)
            same = (o.tobytes() == r.orders.tobytes() and n.tobytes() == r.noise.tobytes()
                    and (S == 0 or s.tobytes() == r.step_noise.tobytes()))
            ref = py.generate_tokens(labels, **kw)  # the latents compared
            got = cc.tokens(labels, **ckw)
            diff = float(np.abs(ref - got).max())
            # Timed: the whole generate (VAE decode, finite check, uint8 included)
            # when the bundle has a decoder, warm, alternating the two runtimes.
            full = py.bundle.has("vae_decoder")
            run_py = py.generate if full else py.generate_tokens
            run_cc = cc.images if full else cc.tokens
            run_py(labels, **kw)
            run_cc(labels, **ckw)
            tp, tc, st = [], [], RunStats()
            for _ in range(a.reps):                  # alternate the two runtimes
                t0 = time.perf_counter()
                run_py(labels, **kw)
                tp.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run_cc(labels, stats=st, **ckw)
                tc.append(time.perf_counter() - t0)
            outside = (st.total_seconds - st.ort_seconds) / st.total_seconds
            head = "diffusion" if diffusion else py.head_mode(O, head_opt)
            print(f"| {os.path.basename(root.rstrip('/'))} | {head} | {K or m['seq_len']} | {O} | {cfg:g} | {B} | {diff:.1e} | "
                  f"{'yes' if same else 'NO'} | {np.median(tp):.4f} | {np.median(tc):.4f} | {100 * outside:.2f}% |",
                  flush=True)
        cc.close()
    print(f"load {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
