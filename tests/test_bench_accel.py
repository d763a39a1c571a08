"""``far-export bench --accel`` on the tiny FAR and MAR bundles (a few images: figures are not
asserted, timing never): the report's schema, the pass rule applied to the measured scores,
the fastest passing entry, the load-free work ratios, the preset's speed-only report, a MAR
that is not there, and untrusted option sets refused in one sentence."""
import json
import math

import pytest
from click.testing import CliRunner

from far_export.bench.accel import (DEFAULTS, SETS, best_entry, head_steps_needed, models_to_run,
                                    option_sets, parse_flags, passes)
from far_export.bench.accel_report import passing_front
from far_export.cli import main
from far_runtime.errors import FarError

IMAGES = 4
ENTRY_KEYS = {"model", "name", "options", "speedup", "accuracy", "frechet", "passes"}


def run_accel(args, out):
    res = CliRunner().invoke(main, ["bench", "--accel", *args, "--threads", "1", "--runs", "1", "--warmup", "0",
                                    "--out", str(out)])
    report = None
    if res.exit_code == 0:
        with open(out / "bench.json") as f:
            report = json.load(f)
    return res, report


@pytest.fixture(scope="module")
def accel(bundles, tmp_path_factory):
    """The built-in option sets of both models plus one of the user's, 4 images each."""
    out = tmp_path_factory.mktemp("accel")
    res, report = run_accel([bundles["far"], "--mar", bundles["mar"], "--batch", "2", "--accel-images", str(IMAGES),
                             "--accel-set", "far:mine=--head-schedule 8,8,4,4,2,2,1,1,1,1,1,1,1,1,1,1 --cfg-cache=1:2"],
                            out)
    assert res.exit_code == 0, res.output
    return report, out, res.output


def test_report_schema(accel):
    rep, out, text = accel
    assert (out / "bench.md").is_file() and (out / "accel.png").stat().st_size > 1000
    assert "| set | options | speed-up |" in text and rep["command"].startswith("far-export bench --accel ")
    for model in ("far", "mar"):
        entries = [e for e in rep["accel"] if e["model"] == model]
        names = [e["name"] for e in entries]
        assert names[0] == DEFAULTS and set(names[1:]) == set(SETS[model]) | ({"mine"} if model == "far" else set())
        for e in entries:
            assert ENTRY_KEYS <= set(e)
            assert e["speedup"] > 0 and e["images_per_s"] > 0 and e["n_images"] == IMAGES
            assert 0 <= e["accuracy"] <= 1 and math.isfinite(e["frechet"]) and isinstance(e["passes"], bool)
            # the options are the canonical far-runtime generate flags: they parse back to themselves
            assert " ".join(parse_flags(e["options"], e["name"]).flags()) == e["options"]
        assert entries[0]["options"] == "" and entries[0]["speedup"] == 1.0 and entries[0]["passes"] is True
        assert set(rep["accel_best"]) == {"far", "mar"}
    mine = next(e for e in rep["accel"] if e["name"] == "mine")
    assert mine["options"] == "--head-schedule 8,8,4,4,2,2,1,1,1,1,1,1,1,1,1,1 --cfg-cache 1:2"
    assert rep["accel_skipped"] == {}


def test_work_ratios_follow_the_plans(accel):
    """Load-free figures: fewer head steps or fewer unconditional rows is less work, exactly
    the defaults' for the defaults."""
    rep = accel[0]
    for e in rep["accel"]:
        if e["name"] == DEFAULTS:
            assert e["work_ratio"] == 1.0
        else:
            assert e["work_ratio"] > 1.0, e["name"]
        assert e["flops"]["backbone"] > 0 and e["flops"]["head"] > 0


def test_pass_rule_on_the_measured_scores(accel):
    rep = accel[0]
    for model, info in rep["models"].items():
        d = info["defaults"]
        a, b = d["seed_set_a"], d["seed_set_b"]
        assert d["spread"]["frechet"] == abs(a["frechet"] - b["frechet"])
        assert d["spread"]["accuracy"] == abs(a["accuracy"] - b["accuracy"])
        assert math.isclose(d["frechet_ceiling"], a["frechet"] + 2 * d["spread"]["frechet"])
        for e in (e for e in rep["accel"] if e["model"] == model):
            assert e["passes"] == passes(e["accuracy"], e["frechet"], a["accuracy"], a["frechet"],
                                         d["spread"]["frechet"])
            assert e["passes"] == (e["accuracy"] >= a["accuracy"] - 0.02 - 1e-12
                                   and e["frechet"] <= d["frechet_ceiling"])


def test_best_is_the_fastest_passing_entry(accel):
    rep = accel[0]
    for model in ("far", "mar"):
        ok = [e for e in rep["accel"] if e["model"] == model and e["passes"]]
        best = rep["accel_best"][model]
        assert best in ok and best["speedup"] == max(e["speedup"] for e in ok)
        t = rep["accel_targets"][model]
        assert t["best_speedup"] == best["speedup"] and t["met"] == (best["speedup"] >= t["target"])
    fast_fail = {"name": "a", "speedup": 9.0, "passes": False}
    slow_ok = {"name": "b", "speedup": 1.2, "passes": True}
    fast_ok = {"name": "c", "speedup": 1.7, "passes": True}
    assert best_entry([fast_fail, slow_ok, fast_ok]) is fast_ok
    assert best_entry([fast_fail, {"name": "d", "speedup": 3.0, "passes": None}]) is None


def test_rule_on_its_own():
    # accuracy: at most 2 points below the defaults'
    assert passes(0.90, 10.0, 0.92, 10.0, 0.0)
    assert not passes(0.8999, 10.0, 0.92, 10.0, 0.0)
    assert passes(0.99, 10.0, 0.92, 10.0, 0.0)
    # Fréchet: at most the defaults' plus twice the seed-to-seed spread
    assert passes(0.92, 11.0, 0.92, 10.0, 0.5)
    assert not passes(0.92, 11.01, 0.92, 10.0, 0.5)
    assert not passes(0.92, 10.01, 0.92, 10.0, 0.0)
    assert passes(0.92, 9.0, 0.92, 10.0, 0.0)
    assert passing_front([(10.0, 1.0), (11.0, 1.5), (10.5, 0.9), (12.0, 1.4), (9.5, 1.0)]) == \
        [(9.5, 1.0), (11.0, 1.5)]


def test_preset_reports_speed_only(tmp_path):
    """Random weights: speed ratios and work, no quality, nothing passes or is best."""
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"far": {"cache": "--cfg-cache 1:4"}, "mar": {"few steps": "--head-schedule 25:5"}}))
    res, rep = run_accel(["--preset", "tiny", "--batch", "1", "--accel-sets", str(sets)], tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert rep["images"] == 0 and "random weights" in rep["quality"]
    assert [(e["model"], e["name"]) for e in rep["accel"]] == [("far", DEFAULTS), ("far", "cache"),
                                                               ("mar", DEFAULTS), ("mar", "few steps")]
    for e in rep["accel"]:
        assert e["speedup"] > 0 and e["accuracy"] is None and e["frechet"] is None and e["passes"] is None
    assert rep["accel_best"] == {"far": None, "mar": None} and rep["accel_targets"] == {}
    assert (tmp_path / "out" / "accel.png").is_file()


def test_missing_mar_is_skipped_with_a_sentence(bundles, tmp_path, monkeypatch):
    res, rep = run_accel([bundles["far"], "--accel-images", "0", "--accel-set", "x=--cfg-cache 1:4"], tmp_path)
    assert res.exit_code == 0, res.output
    assert {e["model"] for e in rep["accel"]} == {"far"} and rep["accel_best"]["mar"] is None
    assert rep["accel_skipped"]["mar"].startswith("MAR was skipped: no --mar CHECKPOINT was given")
    # the demo FAR (no SOURCE) takes the demo MAR from the assets folder when it is there
    import far_export.defaults as d
    monkeypatch.setattr(d, "ASSETS", str(tmp_path))
    models, skipped = models_to_run(None, None, None, None, False, str(tmp_path), 0)
    assert "mar" not in models and str(tmp_path / "mar_demo.pth") in skipped["mar"]
    (tmp_path / "mar_demo.pth").write_bytes(b"")
    models, skipped = models_to_run(None, None, None, None, False, str(tmp_path), 0)
    assert models["mar"]["source"] == str(tmp_path / "mar_demo.pth") and skipped == {}


@pytest.mark.parametrize("args,message", [
    (["--accel-set", "x=--head-schedule 3:1"], "powers of two"),
    (["--accel-set", "mar:x=--head-schedule 500:10"], "at most the model's 100"),
    (["--accel-set", "x=--cfg-cache 1:0"], "needs N >= 1"),
    (["--accel-set", "x=--cfg-interval 0.8:0.2"], "0 <= LO < HI <= 1"),
    (["--accel-set", "x=--cfg-interval nan:1"], "plain decimal fractions"),
    (["--accel-set", "x=--temperature 0.5"], "its flags are --head-schedule"),
    (["--accel-set", "x=--cfg-cache"], "without a value"),
    (["--accel-set", "x=--cfg-cache 1:2 --cfg-cache 1:4"], "twice"),
    (["--accel-set", "x=--cfg-cache '1:2"], "not a readable list of flags"),
    (["--accel-set", "no flags"], "'[far:|mar:]name=flags'"),
    (["--accel-set", "defaults=--cfg-cache 1:2"], "always measured"),
    (["--accel-sets", "/nonexistent/sets.json"], "cannot be read"),
    (["--accel-images", "-1"], "at least 0"),
    (["--sweep-O", "1,2"], "--sweep-O does not apply to bench --accel"),
])
def test_bad_sets_are_refused(bundles, tmp_path, args, message):
    res, _ = run_accel([bundles["far"], "--mar", bundles["mar"], *args], tmp_path)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_bad_sets_file_and_accel_options_without_accel(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in (("{", "is not JSON"), ('{"far": ["--cfg-cache 1:2"]}', "must hold"),
                          ('{"far": {"x": 3}}', "must be a string of flags")):
        bad.write_text(text)
        with pytest.raises(FarError, match=message):
            option_sets(str(bad))
    res = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--accel-set", "x=--cfg-cache 1:2",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 2 and "applies to bench --accel" in res.output


def test_head_steps_to_export():
    sets, _ = option_sets()
    assert head_steps_needed(sets["far"], 8) == [1, 2, 4, 8]
    assert head_steps_needed({"x": parse_flags("--head-schedule 16:2", "x")}, 4) == [1, 2, 4, 8, 16]


def test_far_causal_is_refused(built, tmp_path):
    res, _ = run_accel([built[0], "--accel-images", "0"], tmp_path)
    assert res.exit_code == 2 and "measures masked FAR models (shortcut head)" in res.output
