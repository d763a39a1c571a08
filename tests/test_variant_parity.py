"""Every variant (FAR, MAR, FAR-Causal) against its PyTorch reference over one grid of shapes.

One helper, ``check_parity``, runs the runtime and the reference on the same ``Randomness``
and compares their tokens (and decoded images); it also checks that the graph calls the
backend executed are exactly the plan's. It is applied over batch x CFG x head x O x K (x
FAR-Causal's loop mode) for each variant; the axes a variant does not have are left out.
Option cases (``OPTION_CASES``) turn the acceleration options of ``far_runtime/accel.py`` on,
alone and together, with the same helper.
Per variant: ``far-export verify`` passes, and ``far-runtime generate`` writes the PNG bytes
``Pipeline.generate`` gives.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import VARIANT_NAMES
from far_export.verify import psnr
from far_runtime.backends import OrtBackend
from far_runtime.bundle import load_bundle
from far_runtime.images import encode_png, grid
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness

TEMPERATURE = 0.9
# Tokens within 1e-5 of the reference's scale (at least 1), the bound of tests/test_runtime.py's
# MAR respacing and saved-randomness tests: MAR's random diffusion heads drive latents far from
# 1 (some 4e4 here). Seen on CPU: at most 6e-7 for every variant.
TOKEN_BOUND = 1e-5
MIN_PSNR_DB = 50.0


@dataclass(frozen=True)
class Case:
    batch: int
    cfg: float
    head: str = "auto"     # "fused" or "step" where the variant has fused heads
    O: int | None = None   # shortcut head steps (MAR: its DDPM steps, O does not apply)
    K: int | None = None   # FAR-Causal: left out, K is L
    mode: str | None = None  # FAR-Causal: "cache" or "recompute"
    accel: tuple = ()        # acceleration options: (key, value) pairs

    def sampling(self) -> dict:
        """The options both pipelines take, without the ones the case leaves out."""
        kw = {"K": self.K, "O": self.O, "cfg": self.cfg, "temperature": TEMPERATURE, **dict(self.accel)}
        return {k: v for k, v in kw.items() if v is not None}

    def __str__(self) -> str:
        parts = [f"b{self.batch}", f"cfg{self.cfg:g}", self.head if self.head != "auto" else "",
                 f"O{self.O}" if self.O else "", f"K{self.K}" if self.K else "", self.mode or "",
                 *(f"{k}={v}" for k, v in self.accel)]
        return "-".join(p for p in parts if p)


def opt(**kw) -> tuple:
    return tuple(sorted(kw.items()))


# Per variant, cases with the acceleration options on. FAR's bundle has fused O 1, 2, 8 and the
# step graph, so '8:1' (O 8, 4, 2, 1 at K = 8) mixes fused and step calls under head=auto.
OPTION_CASES = {
    "far": [Case(2, 3.0, "auto", 2, 8, accel=opt(head_schedule="8:1")),
            Case(1, 3.0, "step", 2, 4, accel=opt(head_schedule="2,1,8,2")),
            Case(3, 3.0, "fused", 2, 4, accel=opt(cfg_interval="0.25:0.75")),
            Case(2, 3.0, "fused", 2, 6, accel=opt(cfg_cache="1:2")),
            Case(3, 3.0, "auto", 2, 8, accel=opt(head_schedule="8:1", cfg_interval="0:0.9", cfg_cache="0:3")),
            Case(2, 1.0, "auto", 2, 4, accel=opt(cfg_interval="0.5:1", cfg_cache="1:1"))],
    "mar": [Case(2, 3.0, K=3, accel=opt(head_schedule="100:10")),
            Case(1, 3.0, K=4, accel=opt(cfg_interval="0.5:1")),
            Case(3, 3.0, K=4, accel=opt(cfg_cache="1:2", head_schedule="20,5,3,1"))],
    "far-causal": [Case(2, 3.0, "auto", 2, mode=m, accel=a) for m in ("cache", "recompute") for a in (
        opt(head_schedule="2:1"), opt(cfg_interval="0.25:0.5"), opt(cfg_interval="0.5:1"),
        opt(cfg_interval="0:0.5", head_schedule=",".join(["1", "2"] * 8)))],
}


def cases(name: str) -> list[Case]:
    """The grid of one variant."""
    batches, cfgs = (1, 3), (1.0, 3.0)
    if name == "mar":                  # 100 DDPM steps per iteration: small K
        return [Case(b, c, K=k) for b, c, k in itertools.product(batches, cfgs, (2, 4))]
    heads, Os = ("fused", "step"), (1, 2)
    if name == "far":
        return [Case(b, c, h, o, k) for b, c, h, o, k in
                itertools.product(batches, cfgs, heads, Os, (1, 4))]
    return [Case(b, c, h, o, mode=m) for b, c, h, o, m in
            itertools.product(batches, cfgs, heads, Os, ("cache", "recompute"))]


GRID = [pytest.param(name, case, seed, id=f"{name}-{case}")
        for name in VARIANT_NAMES for seed, case in enumerate(cases(name) + OPTION_CASES[name])]


class RecordingBackend:
    """The real OrtBackend with every graph call it runs, and every shape it prepares, written
    down: ``run`` and ``prepare`` are wrapped, not replaced."""

    def __init__(self, inner: OrtBackend):
        self.inner, self.name = inner, inner.name
        self.calls, self.prepared = [], []

    def prepare(self, plan) -> None:
        self.prepared.extend(plan.distinct())
        self.inner.prepare(plan)

    def run(self, call, feeds):
        self.calls.append(call)
        return self.inner.run(call, feeds)

    def clear(self) -> None:
        self.calls.clear()
        self.prepared.clear()


def recording_pipeline(bundle_dir: str) -> Pipeline:
    bundle = load_bundle(bundle_dir)
    return Pipeline(bundle, RecordingBackend(OrtBackend(bundle)))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The reference makes many tiny torch calls (MAR: 100 DDPM steps per iteration); with
    intra-op threads on a busy 2-core machine they cost some 30 times more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(variant) -> Pipeline:
    return recording_pipeline(variant.bundle)


def labels_for(case: Case) -> list[int]:
    return [(3 * j + case.batch + int(case.cfg)) % 10 for j in range(case.batch)]


def check_parity(variant, pipe: Pipeline, case: Case, seed: int) -> None:
    """Runtime tokens vs the reference's under identical randomness; the graph calls run are
    the plan's."""
    m = pipe.model
    labels = labels_for(case)
    rnd = draw_randomness(seed, case.batch, m["seq_len"], m["token_dim"], pipe.randomness_steps())
    kw = case.sampling()
    ref_kw = {"num_iter" if k == "K" else "head_steps" if k == "O" else k: v for k, v in kw.items()}
    want = variant.reference.tokens(labels, randomness=rnd, **ref_kw).numpy()

    pipe.backend.clear()
    got = pipe.generate_tokens(labels, randomness=rnd, head=case.head, mode=case.mode, **kw)
    plan_kw = {k: v for k, v in kw.items() if k != "temperature"}
    plan = pipe.plan(case.batch, head=case.head, decode=False, mode=case.mode, **plan_kw)
    assert pipe.backend.calls == plan.calls()
    assert pipe.backend.prepared == plan.distinct()
    if variant.shortcut and case.head != "auto":
        assert plan.head_mode == case.head

    assert got.shape == want.shape == (case.batch, m["seq_len"], m["token_dim"])
    err = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    assert err <= TOKEN_BOUND * scale, (err, scale)
    assert psnr(variant.reference.decode(torch.from_numpy(want)), pipe.decode(got)) >= MIN_PSNR_DB


@pytest.mark.parametrize("variant, case, seed", GRID, indirect=["variant"])
def test_runtime_matches_reference(variant, pipe, case, seed):
    check_parity(variant, pipe, case, seed)


def test_verify_passes(variant, tmp_path):
    from far_export.cli import main
    report = str(tmp_path / "verify.json")
    args = ["verify", variant.bundle, "--out", report] + (["--K", "4"] if variant.masked else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output
    data = json.load(open(report))
    assert data["passed"] and data["results"]


def test_cli_png_is_the_pipeline_png(variant, tmp_path):
    """``far-runtime generate`` writes the bytes of ``Pipeline.generate``'s grid; the graph
    calls of that generate (decode included) are the plan's."""
    from far_runtime.cli import main
    png = str(tmp_path / "grid.png")
    K = ["--K", "4"] if variant.masked else []
    res = CliRunner().invoke(main, ["generate", variant.bundle, "--class", "1,2", "--num", "3", *K,
                                    "--O", "2", "--cfg", "3.0", "--temperature", "0.9",
                                    "--seed", "5", "--out", png])
    assert res.exit_code == 0, res.output

    pipe = recording_pipeline(variant.bundle)
    k = 4 if variant.masked else None
    images = pipe.generate([1, 2, 1], K=k, O=2, cfg=3.0, temperature=0.9, seed=5)
    assert open(png, "rb").read() == encode_png(grid(images))
    assert pipe.backend.calls == pipe.plan(3, k, 2, 3.0).calls()
    assert pipe.backend.calls[-1].graph == "vae_decoder"
