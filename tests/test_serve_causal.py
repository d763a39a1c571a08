"""far-runtime serve with a FAR-Causal bundle (K is L, raster order, noise only): requests
batched, each answer bitwise the request run alone, the PNG `far-runtime generate` writes,
and a K other than L a 400 sentence. Shares tests/serve_helpers.py with tests/test_serve.py."""
import io
import json

import numpy as np
import pytest
from serve_helpers import Server, assert_batched_equal_direct, assert_png_is_generate

from far_runtime.pipeline import Pipeline
from far_runtime.serve.batching import run_batch
from far_runtime.serve.requests import GenerateRequest, RequestChecker, RequestError

L = 16


@pytest.fixture(scope="module")
def causal_bundle(built):
    """The session's tiny FAR-Causal bundle (tests/conftest.py: ``far-export build``, O in 1, 2)."""
    return built[0]


@pytest.fixture(scope="module")
def causal(causal_bundle):
    return Pipeline.load(causal_bundle, threads=1)


def test_causal_requests_default_to_k_l_and_refuse_other_k(causal):
    from far_runtime.cli import generate, resolve_k
    defaults = {p.name: p.default for p in generate.params}
    r = RequestChecker(causal).check({"class": 2})
    assert r.K == L == resolve_k(defaults["num_iter"], causal.model) and r.O == defaults["head_steps"]
    assert RequestChecker(causal).check({"class": 2, "K": L}) == r
    for K in (1, 8, L + 1):
        with pytest.raises(RequestError) as e:
            RequestChecker(causal).check({"class": 2, "K": K})
        assert f"K is L = {L}" in str(e.value) and str(e.value).endswith(".") and str(e.value).count(". ") == 0


def test_causal_batch_equals_direct_runs(causal):
    """No Ray: one run_batch of stacked single-request noise, each row the request alone."""
    rs = [GenerateRequest(c, s, L, 2, 3.0, "linear", 1.0, o) for c, s, o in ((1, 5, "latents"), (4, 9, "npy"), (1, 3, "latents"))]
    out = run_batch(causal, rs)
    for r, o in zip(rs, out):
        got = np.load(io.BytesIO(o.body))
        kw = dict(O=2, cfg=3.0, seed=r.seed)
        want = (causal.generate_tokens if r.output == "latents" else causal.generate)([r.label], **kw)[0]
        assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def server(causal_bundle):
    s = Server(causal_bundle, "--max-batch", "4", "--batch-wait-ms", "100", "--threads", "1")
    yield s
    s.stop()


def test_causal_concurrent_requests_equal_direct_runs(server, causal):
    jobs = [(s % 10, dict(seed=s, O=2, cfg=3.0)) for s in range(5)]
    jobs += [(s % 10, dict(seed=s, K=L, O=1, cfg=1.0, cfg_schedule="constant", temperature=0.7)) for s in (2, 7)]
    assert_batched_equal_direct(server, causal, jobs)


def test_causal_png_equals_the_generate_command(server, causal_bundle, tmp_path):
    assert_png_is_generate(server, causal_bundle, tmp_path / "grid.png", 3, 5)


def test_causal_k_other_than_l_is_a_400(server):
    status, ctype, answer = server.client.request("/generate", b'{"class": 3, "K": 8}')
    err = json.loads(answer)["error"]
    assert status == 400 and ctype.startswith("application/json")
    assert f"K is L = {L}" in err and err.endswith(".")


def test_causal_shutdown_is_clean(server):
    rc, log, left = server.stop()
    assert rc == 0, log
    assert not left, f"processes left after shutdown: {left}"
