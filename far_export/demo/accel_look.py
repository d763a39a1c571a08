"""A quick look at the acceleration options (``far_runtime/accel.py``) on the demo FAR bundle:
images/s against the README's settings and classifier accuracy / Fréchet distance.

    far-export build --out /tmp/demo-accel
    python -m far_export.demo.accel_look /tmp/demo-accel --per-class 20 --rounds 7

Speed: every option set and the baseline (``DEMO_SAMPLING``: K 16, O 8, CFG 5 constant,
temperature 0.8) generate one batch of ``--batch`` images (tokens and decode), alternated
round by round in this process after a warm-up; images/s is the batch over the median time.
Quality: ``10 * per_class`` images per option set, batch ``i`` from seed ``seed + i`` (the
same randomness for every set), scored by ``quality.score.score_images``; the baseline is
scored on a second seed set too (``baseline@seed2``) for the seed-to-seed spread. Not the
full ``far-export bench --accel``: one machine, one run, no plot.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from far_runtime.images import to_uint8
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

from ..quality.score import DEMO_SAMPLING, score_images

SETS = {
    "baseline": {},
    "head 8:1": {"head_schedule": "8:1"},
    "head 8:2": {"head_schedule": "8:2"},
    "head 8:4": {"head_schedule": "8:4"},
    "cfg-interval 0:0.5": {"cfg_interval": "0:0.5"},
    "cfg-interval 0:0.75": {"cfg_interval": "0:0.75"},
    "cfg-interval 0.25:1": {"cfg_interval": "0.25:1"},
    "cfg-cache 1:2": {"cfg_cache": "1:2"},
    "cfg-cache 2:3": {"cfg_cache": "2:3"},
    "cfg-cache 1:4": {"cfg_cache": "1:4"},
    "cfg-cache 1:8": {"cfg_cache": "1:8"},
    "head 8:2 + cfg-cache 2:3": {"head_schedule": "8:2", "cfg_cache": "2:3"},
    "head 8:2 + cfg-cache 1:4": {"head_schedule": "8:2", "cfg_cache": "1:4"},
    "head 8:1 + cfg-cache 1:4": {"head_schedule": "8:1", "cfg_cache": "1:4"},
    "head 8:2 + cfg-interval 0:0.75": {"head_schedule": "8:2", "cfg_interval": "0:0.75"},
    "head 8:2 + interval 0:0.75 + cache 2:3": {"head_schedule": "8:2", "cfg_interval": "0:0.75",
                                               "cfg_cache": "2:3"},
}


def settings() -> dict:
    s = DEMO_SAMPLING
    return {"K": s["K"], "O": s["O"], "cfg": s["cfg"], "cfg_schedule": s["cfg_schedule"],
            "temperature": s["temperature"]}


def images(pipe: Pipeline, labels, seed: int, batch: int, **accel) -> np.ndarray:
    m, out = pipe.model, []
    for i, start in enumerate(range(0, len(labels), batch)):
        lab = labels[start:start + batch]
        rnd = draw_randomness(seed + i, len(lab), m["seq_len"], m["token_dim"])
        out.append(to_uint8(pipe.decode(pipe.generate_tokens(lab, randomness=rnd, **settings(), **accel))))
    return np.concatenate(out)


def speed(pipe: Pipeline, sets: dict, batch: int, rounds: int) -> dict:
    labels = np.arange(batch) % pipe.model["num_classes"]
    times = {name: [] for name in sets}
    for r in range(rounds + 1):                         # round 0 warms every shape up
        for name, accel in sets.items():
            t0 = time.perf_counter()
            pipe.generate(labels, seed=r, **settings(), **accel)
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="option sets to run, ';'-separated names (baseline always)")
    ap.add_argument("--out", default=None, help="JSON of the figures")
    a = ap.parse_args(argv)
    sets = SETS if a.only is None else {n: SETS[n] for n in ["baseline", *a.only.split(";")]}
    pipe = Pipeline.load(a.bundle, threads=a.threads)
    load0 = os.getloadavg()
    ips = speed(pipe, sets, a.batch, a.rounds)
    labels = np.tile(np.arange(pipe.model["num_classes"]), a.per_class)
    rows = {}
    for name, accel in {**sets, "baseline@seed2": {}}.items():
        seed = a.seed + 10_000 if name == "baseline@seed2" else a.seed
        sc = score_images(images(pipe, labels, seed, a.batch, **accel), labels)
        rows[name] = {"options": " ".join(f"--{k.replace('_', '-')} {v}" for k, v in accel.items()),
                      "images_per_s": ips.get(name), "speedup": ips[name] / ips["baseline"] if name in ips else None,
                      "accuracy": sc["accuracy"], "frechet": sc["frechet"], "n": sc["n"]}
    report = {"settings": settings(), "batch": a.batch, "rounds": a.rounds, "load_before": load0,
              "load_after": os.getloadavg(), "rows": rows}
    print(f"{'options':44s} {'img/s':>7s} {'speedup':>8s} {'acc':>6s} {'Frechet':>8s}")
    for name, r in rows.items():
        sp = f"{r['images_per_s']:7.2f} {r['speedup']:7.2f}x" if r["speedup"] else f"{'':7s} {'':8s}"
        print(f"{name:44s} {sp} {r['accuracy']:6.3f} {r['frechet']:8.2f}")
    print(f"load average before {load0}, after {report['load_after']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
