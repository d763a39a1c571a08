"""far-runtime serve on Ray Serve: a real server on a free loopback port, concurrent requests
checked against direct runtime calls with the same seeds, the 400s, the 503 of a full queue,
and a shutdown that leaves no process behind. The grouping, randomness and request checks
are plain functions, tested without Ray. FAR-Causal: tests/test_serve_causal.py; the server
helpers both use: tests/serve_helpers.py."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from serve_helpers import (Server, assert_batched_equal_direct, assert_png_is_generate, concurrently,
                           free_port)

from far_runtime.defaults import CFG_SCHEDULES
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import draw_randomness
from far_runtime.serve.batching import group_by_settings, request_randomness, run_batch, stack_randomness
from far_runtime.serve.client import FarClient, ServeError
from far_runtime.serve.requests import GenerateRequest, RequestChecker, RequestError, parse_body, parse_output


@pytest.fixture(scope="module")
def fused_only(bundles, tmp_path_factory):
    """The tiny FAR bundle without its step graph: fused heads for O in 1, 2, 8 only."""
    out = str(tmp_path_factory.mktemp("serve") / "fused_only")
    shutil.copytree(bundles["far"], out)
    path = os.path.join(out, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    for name in [g for g in manifest["graphs"] if g == "head_step"]:
        for fname in manifest["graphs"].pop(name)["files"]:
            os.unlink(os.path.join(out, fname))
    with open(path, "w") as f:
        json.dump(manifest, f)
    return out


@pytest.fixture(scope="module")
def pipe(fused_only):
    return Pipeline.load(fused_only, threads=1)


# --- plain functions, no Ray ---------------------------------------------------------------

def req(label=1, seed=0, K=4, O=2, cfg=3.0, schedule="linear", temperature=1.0, output="png"):
    return GenerateRequest(label, seed, K, O, cfg, schedule, temperature, output)


def test_grouping_keeps_arrival_order_and_splits_settings():
    rs = [req(seed=0), req(seed=1, K=8), req(seed=2), req(seed=3, cfg=2.0), req(seed=4, K=8), req(seed=5, label=7)]
    assert group_by_settings(rs) == [[0, 2, 5], [1, 4], [3]]
    assert group_by_settings([req(output="png"), req(output="latents")]) == [[0, 1]]   # output is not a setting


def test_stacked_randomness_rows_are_single_request_draws(bundles):
    for name in ("far", "mar"):
        model = Pipeline.load(bundles[name]).model
        rows = [request_randomness(s, model) for s in (5, 9, 5)]
        stacked = stack_randomness(rows)
        steps = model["diffusion_steps"] if model["head_kind"] == "diffusion" else 0
        for i, s in enumerate((5, 9, 5)):
            alone = draw_randomness(s, 1, model["seq_len"], model["token_dim"], steps)   # generate --num 1 --seed s
            assert np.array_equal(stacked.orders[i], alone.orders[0])
            assert np.array_equal(stacked.noise[i], alone.noise[0])
            if steps:
                assert np.array_equal(stacked.step_noise[:, i], alone.step_noise[:, 0])


@pytest.mark.parametrize("body, msg", [
    (b'{"class": 3', "not valid JSON"),
    (b'[3]', "must be a JSON object"),
    (b'{"class": 3, "cfg": NaN}', "not a number JSON allows"),
    (b'{"class": 3, "temperature": Infinity}', "not a number JSON allows"),
    (b'{"class": 3, "cfg": 1e999}', "finite number"),
    (b'{"class": 10}', "Class 10 is unknown"),
    (b'{"class": -1}', "Class -1 is unknown"),
    (b'{"class": "3"}', "'class' must be an integer"),
    (b'{"class": true}', "'class' must be an integer"),
    (b'{"class": 3, "seed": false}', "'seed' must be an integer"),
    (b'{"class": 3, "seed": 1.5}', "'seed' must be an integer"),
    (b'{"class": 3, "seed": -1}', "'seed' must be in"),
    (b'{"class": 3, "K": 0}', "K (autoregressive iterations)"),
    (b'{"class": 3, "K": 257}', "K (autoregressive iterations)"),
    (b'{"class": 3, "O": 3}', "power of two"),
    (b'{"class": 3, "O": 4}', "no head graph for O=4"),
    (b'{"class": 3, "cfg": "3"}', "'cfg' must be a finite number"),
    (b'{"class": 3, "cfg_schedule": "cosine"}', "'cfg_schedule' must be one of"),
    (b'{"class": 3, "temperature": -0.5}', "'temperature' must be at least 0"),
    (b'{"class": 3, "steps": 8}', "Unknown key 'steps'"),
    (b'{"seed": 3}', "no 'class'"),
    (b'\xff\xfe', "not UTF-8"),
    (b'[' * 30000, "nests too deeply"),
])
def test_request_checks(pipe, body, msg):
    with pytest.raises(RequestError, match=None) as e:
        RequestChecker(pipe).check(parse_body(body))
    assert msg in str(e.value) and str(e.value).endswith(".")


def test_request_defaults_are_the_generate_commands(pipe):
    """The server reads far_runtime.defaults (no CLI import); they equal the click command's."""
    from far_runtime.cli import generate, resolve_k
    params = {p.name: p for p in generate.params}
    d = {name: p.default for name, p in params.items()}
    r = RequestChecker(pipe).check({"class": 2}, parse_output({}))
    assert d["num_iter"] is None            # --K left out: the model's default (16 for FAR/MAR)
    assert (r.seed, r.K, r.O, r.cfg, r.cfg_schedule, r.temperature) == (
        d["seed"], resolve_k(None, pipe.model), d["head_steps"], d["cfg"], d["cfg_schedule"],
        d["temperature"]) and r.K == 16
    assert tuple(params["cfg_schedule"].type.choices) == CFG_SCHEDULES
    assert parse_output({"format": "npy"}) == "npy" and parse_output({"latents": "1"}) == "latents"
    for q in ({"format": "jpg"}, {"latents": "yes"}, {"fmt": "png"}, {"latents": "1", "format": "png"}):
        with pytest.raises(RequestError):
            parse_output(q)


def test_serve_modules_never_import_the_cli():
    """Defaults are data (far_runtime.defaults): far_runtime.cli imports serve.commands, so a
    serve module importing the CLI, even inside a function, would be an import cycle."""
    import ast
    import far_runtime.serve as pkg
    folder = os.path.dirname(pkg.__file__)
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
                mods += [f"{mods[0]}.{a.name}" if node.module else f"{mods[0]}{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            assert not any(m in ("..cli", "far_runtime.cli") or m.startswith(("..cli.", "far_runtime.cli."))
                           for m in mods), (name, mods)


def test_mar_batches_equal_direct_runs(bundles):
    """A MAR (diffusion head) bundle: per-request step noise stacked into a batch gives each
    request the latents and image of `generate --num 1 --seed s`, bitwise on ORT CPU."""
    mar = Pipeline.load(bundles["mar"], threads=1)
    rs = [req(label=c, seed=s, K=4, O=8, cfg=2.0, output=o) for c, s, o in ((1, 5, "latents"), (4, 9, "npy"), (1, 3, "npy"))]
    out = run_batch(mar, rs)
    for r, o in zip(rs, out):
        got = np.load(io.BytesIO(o.body))
        if r.output == "latents":
            assert np.array_equal(got, mar.generate_tokens([r.label], K=4, O=8, cfg=2.0, seed=r.seed)[0])
        else:
            assert np.array_equal(got, mar.generate([r.label], K=4, O=8, cfg=2.0, seed=r.seed)[0])


def test_a_failing_group_fails_only_itself(pipe):
    good = [req(seed=1, output="latents"), req(seed=2, output="latents")]
    bad = req(seed=3, K=4, O=4)                    # not checked: O=4 has no graph in this bundle
    out = run_batch(pipe, [good[0], bad, good[1]])
    assert out[1].error and "O=4" in out[1].error
    for o, r in zip((out[0], out[2]), good):
        alone = pipe.generate_tokens([r.label], K=r.K, O=r.O, cfg=r.cfg, seed=r.seed)
        assert np.array_equal(np.load(io.BytesIO(o.body)), alone[0])


# --- a real server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(fused_only):
    s = Server(fused_only, "--max-batch", "4", "--batch-wait-ms", "100", "--max-queued", "8", "--threads", "1")
    yield s
    s.stop()


def test_healthz_and_info(server, fused_only):
    assert server.client.healthz() == {"status": "ok"}
    info = server.client.info()
    assert info["model"]["num_classes"] == 10 and info["max_batch"] == 8 and info["head_steps"] == [1, 2, 8]
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert info["serve"]["max_batch"] == 4 and info["serve"]["threads"] == 1


def test_concurrent_requests_equal_direct_runs(server, pipe):
    """Batched requests (two settings mixed in one burst) give each request's own latents and image."""
    jobs = [(s % 10, dict(seed=s, K=4, O=2, cfg=3.0)) for s in range(6)]
    jobs += [(s % 10, dict(seed=s, K=8, O=8, cfg=1.0, cfg_schedule="constant", temperature=0.7)) for s in (2, 7)]
    assert_batched_equal_direct(server, pipe, jobs)


def test_png_defaults_equal_the_generate_command(server, fused_only, tmp_path):
    assert_png_is_generate(server, fused_only, tmp_path / "grid.png", 3, 5)


@pytest.mark.parametrize("query, body, msg", [
    ("", b'{"class": 11}', "Class 11 is unknown"),
    ("", b'{"class": 3, "K": 300}', "K (autoregressive"),
    ("", b'{"class": 3, "O": 4}', "no head graph for O=4"),
    ("", b'{"class": 3,', "not valid JSON"),
    ("", b'{"class": 3, "seed": "x"}', "'seed' must be an integer"),
    ("", b'{"class": 3, "cfg": NaN}', "not a number JSON allows"),
    ("", b'{"class": false}', "'class' must be an integer"),
    ("", b'{"class": 3, "k": 4}', "Unknown key 'k'"),
    ("?format=gif", b'{"class": 3}', "format must be"),
    ("", b'{"class": 3, "cfg": 1e300}', "NaN or infinite"),           # finite, accepted, overflows
    ("", b'{"class": 3, "pad": "' + b"x" * 70000 + b'"}', "larger than"),
])
def test_bad_requests_get_400_with_a_sentence(server, query, body, msg):
    status, ctype, answer = server.client.request("/generate" + query, body)
    assert status == 400 and ctype.startswith("application/json")
    err = json.loads(answer)["error"]
    assert msg in err and err.endswith(".")


def test_bad_requests_never_fail_their_batch(server, pipe):
    jobs = [(b'{"class": %d, "seed": %d, "K": 4, "cfg": 2.5}' % (s, s) if s % 2 else b'{"class": 3, "K": 4, "O": 4}',)
            for s in range(6)]
    out = concurrently(lambda body: server.client.request("/generate?latents=1", body), jobs)
    for s, (status, _, body) in enumerate(out):
        if s % 2:
            assert status == 200
            got = np.load(io.BytesIO(body))
            assert np.abs(got - pipe.generate_tokens([s], K=4, O=8, cfg=2.5, seed=s)[0]).max() <= 1e-5
        else:
            assert status == 400
    assert server.client.healthz()["status"] == "ok"


def test_full_queue_gets_503_then_serves_again(server):
    """max batch 4: 8 requests in the replica, 8 waiting at the proxy; the rest are refused.

    Ray counts a request as queued until the proxy has assigned it to a replica, so a burst
    of at most --max-queued requests is never refused (the tests above send at most 8)."""
    jobs = [(s % 10, dict(seed=s, K=256, O=8)) for s in range(32)]
    out = concurrently(lambda c, kw: server.client.generate_raw(c, output="latents", **kw), jobs)
    refused = [o for o in out if isinstance(o, ServeError)]
    served = [o for o in out if isinstance(o, bytes)]
    assert len(refused) + len(served) == len(jobs)
    assert refused and all(e.status == 503 and "backpressure" in str(e) and str(e).endswith(".") for e in refused)
    assert len(served) >= 8
    assert server.client.generate(1, seed=1, K=2, output="latents").shape == (16, 4)


def test_loadtest_reports_speedup_and_whole_test_rss(server):
    from far_runtime.errors import FarError
    from far_runtime.serve.loadtest import format_report, load_test
    for bad in ({"seed": 1}, {"class": 2}, {"steps": 8}):
        with pytest.raises(FarError, match=f"--settings .*'{list(bad)[0]}'"):
            load_test(server.url, 2, 2, settings=bad)
    report = load_test(server.url, clients=3, requests=2, settings={"K": 2, "O": 1})
    pid = str(server.client.info()["serve"]["pid"])
    start, warm, end = report["replica_rss_mb"][pid]        # one replica: RSS from one process
    assert start > 0 and warm > 0 and end > 0
    batched, single = report["phases"]
    assert report["speedup"] == pytest.approx(batched["images_per_s"] / single["images_per_s"])
    assert report["requests_sent"] == 2 * 6 + 4 and report["identical_across_phases"]["mismatched"] == 0
    text = format_report(report)
    assert "batched / one-at-a-time throughput" in text and f"replica pid {pid} RSS MB" in text


def test_shutdown_is_clean(server):
    rc, log, left = server.stop()
    assert rc == 0, log
    assert not left, f"processes left after shutdown: {left}"
    with pytest.raises(Exception):
        FarClient(server.url, timeout=5).healthz()


def test_mar_bundle_through_the_server(bundles):
    """A MAR (diffusion head) bundle served: concurrent requests equal direct runs, bitwise."""
    mar = Pipeline.load(bundles["mar"], threads=1)
    s = Server(bundles["mar"], "--max-batch", "3", "--batch-wait-ms", "200", "--threads", "1")
    try:
        jobs = [(c, dict(seed=c + 10, K=4, cfg=2.0)) for c in (1, 4, 6)]
        lat = concurrently(lambda c, kw: s.client.generate(c, output="latents", **kw), jobs)
        assert s.client.info()["serve"]["largest_batch"] >= 2
        for (c, kw), got in zip(jobs, lat):
            assert np.array_equal(got, mar.generate_tokens([c], **kw)[0])
        assert np.array_equal(s.client.generate(2, output="npy", **jobs[0][1]), mar.generate([2], **jobs[0][1])[0])
    finally:
        s.stop()


def test_serve_refuses_bad_options_before_starting_ray(fused_only):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install far-runtime[serve])")
    for args, msg in ((["--max-batch", "9"], "--max-batch must be in 1..8"),
                      (["--replicas", "0"], "--replicas must be at least 1"),
                      (["--port", "70000"], "--port must be in 1..65535")):
        r = subprocess.run([sys.executable, "-m", "far_runtime.cli", "serve", fused_only, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


# --- reviewer's defects ----------------------------------------------------------------------

@pytest.mark.parametrize("obj, msg", [
    ({"class": 3, "cfg": 10 ** 400}, "'cfg' must be a finite number"),
    ({"class": 3, "temperature": -10 ** 400}, "'temperature' must be a finite number"),
    (parse_body(b'{"class": 3, "cfg": 1e308}') | {"cfg": 1e308 * 10}, "'cfg' must be a finite number"),
])
def test_numbers_beyond_float_range_are_400s(pipe, obj, msg):
    """ints past float range used to raise OverflowError in math.isfinite (HTTP 500)."""
    with pytest.raises(RequestError) as e:
        RequestChecker(pipe).check(obj)
    assert msg in str(e.value) and str(e.value).endswith(".")


def test_huge_integers_are_400s(pipe):
    """Over 4300 digits json.loads raises a plain ValueError (not JSONDecodeError): a 500 before."""
    for digits in (41, 5000, 60000):
        body = b'{"class": 3, "seed": ' + b"9" * digits + b'}'
        with pytest.raises(RequestError) as e:
            RequestChecker(pipe).check(parse_body(body))
        assert "integer of" in str(e.value) and str(e.value).endswith(".")


def test_server_refuses_exactly_what_generate_refuses(pipe, fused_only):
    """The checker runs check_sampling, the `far-runtime generate` command's own check."""
    from click.testing import CliRunner
    from far_runtime.cli import main
    for key, flag, text, value in (("temperature", "--temperature", "-0.5", -0.5), ("K", "--K", "0", 0),
                                   ("O", "--O", "3", 3), ("cfg", "--cfg", "1" + "0" * 400, 10 ** 400),
                                   ("seed", "--seed", "-1", -1)):
        cli = CliRunner().invoke(main, ["generate", fused_only, "--num", "1", flag, text, "--out", os.devnull])
        assert cli.exit_code == 2, (flag, cli.output)
        with pytest.raises(RequestError):
            RequestChecker(pipe).check({"class": 1, key: value})


def test_replica_sessions_do_not_spin(fused_only):
    """no_spinning reaches the SessionOptions the backend builds for every session."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install far-runtime[serve])")
    from far_runtime.serve.deployment import NO_SPINNING, no_spinning
    p = Pipeline.load(fused_only, threads=1)
    no_spinning(p)
    options = p.backend._session_options()
    for key, value in NO_SPINNING.items():
        assert options.get_session_config_entry(key) == value
    tokens = p.generate_tokens([1], K=2, O=1, seed=0)     # sessions made with them still run
    assert tokens.shape == (1, 16, 4)


def test_threads_zero_is_refused_not_the_default(fused_only):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install far-runtime[serve])")
    import ray
    from far_runtime.errors import FarError
    from far_runtime.serve.server import start
    for bad in (0, -1):
        with pytest.raises(FarError, match=r"--threads must be at least 1, got -?\d\.$"):
            start(fused_only, port=free_port(), threads=bad)
    assert not ray.is_initialized()
    with pytest.raises(FarError, match="thread count must be at least 1"):
        Pipeline.load(fused_only, threads=0)          # the backend used to read 0 as "default"


def test_an_overflowing_request_is_its_own_400(pipe):
    """cfg=1e300 is finite (accepted) but overflows: that request gets a 400 sentence, not a
    black PNG; its batch-mates (here with other settings) are unharmed."""
    good = [req(seed=1, output="npy"), req(seed=2, output="latents")]
    extreme = [req(seed=3, cfg=1e300, output="png"), req(seed=4, cfg=1e300, output="latents")]
    out = run_batch(pipe, [good[0], extreme[0], good[1], extreme[1]])
    for o in (out[1], out[3]):
        assert o.body is None and o.status == 400 and "NaN or infinite" in o.error and o.error.endswith(".")
    assert np.array_equal(np.load(io.BytesIO(out[0].body)), pipe.generate([1], K=4, O=2, cfg=3.0, seed=1)[0])
    assert np.array_equal(np.load(io.BytesIO(out[2].body)), pipe.generate_tokens([1], K=4, O=2, cfg=3.0, seed=2)[0])


def test_backend_workspace_is_bounded(fused_only, pipe):
    """Client-chosen K and batch sizes must not grow the per-thread buffers without bound."""
    from far_runtime.backends import OrtBackend
    small = Pipeline(pipe.bundle, OrtBackend(pipe.bundle, threads=1, max_shapes=6))
    assert pipe.backend.max_shapes >= 4 * pipe.model["seq_len"]          # the default fits 4 plans
    for K, labels in ((2, [1]), (4, [1, 2]), (3, [3, 4, 5]), (2, [1])):
        got = small.generate_tokens(labels, K=K, O=1, seed=K)
        assert np.array_equal(got, pipe.generate_tokens(labels, K=K, O=1, seed=K))
        assert len(small.backend._workspace()) <= 6
