"""The torch-free runtime: parity with the reference over K/O/CFG/batch, determinism, errors,
bundle checks, providers and thread safety."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from far_export.reference.pipeline import ReferencePipeline
from far_runtime.errors import FarError
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import Randomness, draw_randomness


@pytest.fixture(scope="module")
def far(bundles, tiny_files):
    return Pipeline.load(bundles["far"]), ReferencePipeline.load(tiny_files["far"], tiny_files["vae"])


@pytest.mark.parametrize("K", [1, 8, 64])
@pytest.mark.parametrize("O", [1, 2, 8])
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_parity_far(far, K, O, B, cfg):
    pipe, ref = far
    labels = [(3 * i + K) % 10 for i in range(B)]
    r = draw_randomness(K * 7 + O, B, 16, 4)
    a = ref.tokens(labels, num_iter=K, head_steps=O, cfg=cfg, temperature=0.95, randomness=r)
    b = pipe.generate_tokens(labels, K=K, O=O, cfg=cfg, temperature=0.95, randomness=r)
    assert np.abs(a.numpy() - b).max() <= 1e-3
    from far_export.verify import psnr
    assert psnr(ref.decode(a), pipe.decode(b)) >= 50


def test_step_graph_equals_fused(far):
    pipe, _ = far
    a = pipe.generate_tokens([1, 2], K=4, O=8, cfg=2.0, seed=3, head="fused")
    b = pipe.generate_tokens([1, 2], K=4, O=8, cfg=2.0, seed=3, head="step")
    assert np.abs(a - b).max() <= 1e-5


def test_determinism_and_saved_randomness(far, tmp_path):
    pipe, ref = far
    a = pipe.generate([1, 5], K=8, O=2, cfg=3.0, seed=11)
    b = pipe.generate([1, 5], K=8, O=2, cfg=3.0, seed=11)
    c = pipe.generate([1, 5], K=8, O=2, cfg=3.0, seed=12)
    assert a.dtype == np.uint8 and a.shape == (2, 8, 8, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    path = str(tmp_path / "rnd.npz")
    draw_randomness(11, 2, 16, 4).save(path)
    loaded = Randomness.load(path)
    t_rt = pipe.generate_tokens([1, 5], K=8, O=2, cfg=3.0, randomness=loaded)
    t_ref = ref.tokens([1, 5], num_iter=8, head_steps=2, cfg=3.0, randomness=loaded).numpy()
    assert np.abs(t_rt - t_ref).max() <= 1e-5


@pytest.mark.parametrize("kw,msg", [
    (dict(labels=[10]), "Class 10 is unknown"), (dict(labels=[-1]), "unknown"),
    (dict(labels=[], ), "at least 1"), (dict(K=0), "K"), (dict(K=257), "K"),
    (dict(O=3), "power of two"), (dict(O=4, head="fused"), "no fused head graph"),
    (dict(labels=list(range(9))), "max batch"),
])
def test_errors(far, kw, msg):
    pipe, _ = far
    args = dict(labels=[1], K=4, O=2)
    args.update(kw)
    with pytest.raises(FarError, match=msg):
        pipe.generate_tokens(args.pop("labels"), **args)


def test_o_without_fused_graph_uses_step_graph(far):
    pipe, ref = far
    r = draw_randomness(0, 1, 16, 4)
    a = pipe.generate_tokens([2], K=4, O=4, cfg=2.0, randomness=r)   # no head_fused_o4 exported
    b = ref.tokens([2], num_iter=4, head_steps=4, cfg=2.0, randomness=r).numpy()
    assert np.abs(a - b).max() <= 1e-5


def test_bundle_integrity_checks(bundles, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(bundles["far"], root)
    with open(os.path.join(root, "head_step.onnx"), "ab") as f:
        f.write(b"tamper")
    with pytest.raises(FarError, match="sha256"):
        Pipeline.load(root)
    os.unlink(os.path.join(root, "head_step.onnx"))
    with pytest.raises(FarError, match="missing"):
        Pipeline.load(root)
    m = json.load(open(os.path.join(root, "manifest.json")))
    m["format_version"] = 99
    json.dump(m, open(os.path.join(root, "manifest.json"), "w"))
    with pytest.raises(FarError, match="format version"):
        Pipeline.load(root, check_hashes=False)
    os.unlink(os.path.join(root, "manifest.json"))
    with pytest.raises(FarError, match="not a far-export bundle"):
        Pipeline.load(root)


def test_gpu_provider_is_never_a_silent_cpu_fallback(bundles):
    with pytest.raises(FarError, match="CUDAExecutionProvider"):
        Pipeline.load(bundles["far"], providers=("CUDAExecutionProvider",))


def test_spinning_is_off_when_every_core_is_a_worker(bundles):
    """Intra-op workers on every core: none spins (it would take the calling thread's core);
    one thread, or an explicit entry, is left as asked. Results do not depend on it."""
    from far_runtime.backends import SPIN_KEYS, usable_cores
    cores = usable_cores()
    every = Pipeline.load(bundles["far"], threads=max(cores, 2))
    one = Pipeline.load(bundles["far"], threads=1)
    for key in SPIN_KEYS:
        assert every.backend._session_options().get_session_config_entry(key) == "0"
        with pytest.raises(RuntimeError, match="does not have configuration"):   # left unset
            one.backend._session_options().get_session_config_entry(key)
    asked = {k: "1" for k in SPIN_KEYS}
    from far_runtime.backends import OrtBackend
    keep = OrtBackend(every.bundle, threads=max(cores, 2), session_config=asked)
    assert all(keep._session_options().get_session_config_entry(k) == "1" for k in SPIN_KEYS)
    a = every.generate_tokens([1, 2], K=3, O=2, cfg=3.0, seed=4)
    b = one.generate_tokens([1, 2], K=3, O=2, cfg=3.0, seed=4)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_thread_safety(far):
    pipe, _ = far
    jobs = [([i % 10, (i + 3) % 10], 100 + i) for i in range(6)]
    expected = [pipe.generate_tokens(l, K=8, O=2, cfg=2.0, seed=s) for l, s in jobs]
    got = [None] * len(jobs)
    errors = []

    def work(i):
        try:
            for _ in range(2):
                got[i] = pipe.generate_tokens(jobs[i][0], K=8, O=2, cfg=2.0, seed=jobs[i][1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)


def test_runtime_imports_and_runs_without_torch(bundles, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from far_runtime.pipeline import Pipeline\n"
        f"p = Pipeline.load({bundles['far']!r})\n"
        "img = p.generate([1, 2], K=4, O=2, cfg=2.0, seed=0)\n"
        "assert img.shape == (2, 8, 8, 3), img.shape\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_cli_generate_and_verify(bundles, tmp_path):
    exe = [sys.executable, "-m", "far_export.cli"]
    out = str(tmp_path / "grid.png")
    r = subprocess.run(exe + ["generate", bundles["far"], "--class", "1,2", "--num", "4", "--K", "4",
                              "--O", "2", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for bad in (["--class", "12"], ["--K", "300"], ["--O", "4", "--head", "fused"], ["--num", "0"],
                ["--num", "9"]):
        r = subprocess.run(exe + ["generate", bundles["far"], "--out", out] + bad,
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: "), (bad, r.stderr)
    rep = str(tmp_path / "verify.json")
    r = subprocess.run(exe + ["verify", bundles["far"], "--K", "8", "--out", rep], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.load(open(rep))
    assert data["passed"] and len(data["results"]) == 6   # O in 1,2,8 x cfg in 1,3
    assert all(len(x["per_iteration_latent_max_abs"]) == 8 for x in data["results"])
    assert "PASSED" in r.stdout


def test_graph_replaced_after_load_is_refused_not_run(bundles, tmp_path):
    """Bytes hashed are the bytes run: a graph swapped on disk after Pipeline.load is refused
    when its session is made (here: the O=8 graph put in place of the O=2 one)."""
    root = shutil.copytree(bundles["far"], str(tmp_path / "b"))
    pipe = Pipeline.load(root)
    shutil.copy(os.path.join(root, "head_fused_o8.onnx"), os.path.join(root, "head_fused_o2.onnx"))
    with pytest.raises(FarError, match="sha256"):
        pipe.generate_tokens([1], K=2, O=2, cfg=2.0, seed=0)


def test_sampling_options_are_checked_in_the_api(far):
    pipe, ref = far
    for kw, msg in ((dict(cfg=float("nan")), "finite"), (dict(cfg=float("inf")), "finite"),
                    (dict(temperature=float("nan")), "finite"), (dict(seed=-1), "non-negative"),
                    (dict(K=True), "integer"), (dict(O=2.0), "integer")):
        args = {"K": 2, "O": 2, **kw}
        with pytest.raises(FarError, match=msg):
            pipe.generate([1], **args)
        with pytest.raises(FarError, match=msg):
            ref.tokens([1], **{"num_iter" if k == "K" else "head_steps" if k == "O" else k: v
                               for k, v in args.items()})


def test_numpy_integers_are_fine_as_k_and_o(far):
    pipe, ref = far
    a = pipe.generate_tokens([1], K=np.int64(4), O=np.int32(2), seed=np.int64(3))
    b = pipe.generate_tokens([1], K=4, O=2, seed=3)
    c = ref.tokens([1], num_iter=np.int64(4), head_steps=np.int16(2), seed=np.uint8(3)).numpy()
    assert np.array_equal(a, b) and np.abs(a - c).max() <= 1e-5


def test_non_finite_output_is_never_an_image(far, monkeypatch):
    pipe, _ = far
    real = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda t: real(t) * np.float32(np.inf))
    with pytest.raises(FarError, match="NaN or infinite"):
        pipe.generate([1], K=2, O=2)


@pytest.mark.parametrize("S", [1, 2, 21, 25, 50, 100, 250, 999, 1000])
def test_respaced_timesteps_match_mar_accumulate_and_round(S):
    """MAR advances a float index by the fractional stride and rounds the running sum."""
    from far_runtime.ddpm import respaced_timesteps
    got = respaced_timesteps(1000, S)
    stride = 1 if S == 1 else 999 / (S - 1)
    idx, want = 0.0, []
    for _ in range(S):
        want.append(round(idx))
        idx += stride
    assert got == sorted(set(want)) and len(got) == S and got[0] == 0 and got[-1] <= 999


def test_respacing_forms_of_mar():
    from far_runtime.ddpm import ddpm_schedule, space_timesteps
    assert space_timesteps(1000, 21)[10] == 499            # i * stride rounds to 500 here
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    sections = space_timesteps(1000, "10,15,20")            # sections of 334, 333, 333 steps
    assert len(sections) == 45 and sections[:2] == [0, 37] and sections[10] == 334
    assert sections[25] == 667 and sections[-1] == 999
    assert space_timesteps(1000, "") == list(range(1000))   # MAR: empty means every step
    assert ddpm_schedule("ddim25").steps == 25
    for bad, msg in (("ddim3000", "no integer stride"), ("10,15,2000", "cannot be divided"),
                     ("fast", "not a form"), ("0", "positive"), (0, "1..1000"), (True, "count")):
        with pytest.raises(FarError, match=msg):
            ddpm_schedule(bad)


def test_stale_verify_report_is_refused(bundles, tmp_path):
    from far_export.verify import judged, read_report
    from far_runtime.bundle import load_bundle
    from far_runtime.files import write_json
    root = shutil.copytree(bundles["far"], str(tmp_path / "b"))
    write_json(os.path.join(root, "verify.json"),
               {"passed": True, "summary": "PASSED", "judged": judged(load_bundle(root))})
    assert read_report(root)["passed"]
    m = json.load(open(os.path.join(root, "manifest.json")))
    m["source"]["sha256"] = "f" * 64                     # re-exported from another checkpoint
    json.dump(m, open(os.path.join(root, "manifest.json"), "w"))
    with pytest.raises(FarError, match="no longer applies"):
        read_report(root)


def test_mar_ddim_respacing_reaches_the_runtime(tiny_files, tmp_path):
    """A MAR checkpoint trained with --num_sampling_steps ddim25: the manifest keeps the
    respacing, and runtime and reference walk the same 25 timesteps."""
    from far_export.export.bundle import export_bundle
    obj = torch.load(tiny_files["mar"], weights_only=False)        # our own test file
    obj["args"].num_sampling_steps = "ddim25"
    ck = str(tmp_path / "mar_ddim.pth")
    torch.save(obj, ck)
    out = str(tmp_path / "b")
    m = export_bundle(ck, None, out, components=["backbone", "head"], validate_batches=[1])
    assert m["model"]["diffusion_steps"] == 25 and m["model"]["timestep_respacing"] == "ddim25"
    pipe = Pipeline.load(out)
    ref = ReferencePipeline.load(ck)
    r = draw_randomness(2, 1, 16, 4, 25)
    a = ref.tokens([3], num_iter=2, cfg=2.0, randomness=r).numpy()
    b = pipe.generate_tokens([3], K=2, cfg=2.0, randomness=r)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())


def test_temporaries_of_a_killed_writer_are_cleaned(tmp_path):
    """atomic_write names its temporary after its pid; the next write of the same file removes
    those whose writer is gone (SIGKILL runs no cleanup), and leaves a live writer's alone."""
    from far_runtime.files import write_text
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".tmp-{gone}-abc123-report.txt"
    live = tmp_path / f".tmp-{os.getpid()}-def456-report.txt"
    other = tmp_path / f".tmp-{gone}-ghi789-other.txt"
    for p in (stale, live, other):
        p.write_text("partial")
    write_text(str(tmp_path / "report.txt"), "done")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "report.txt").read_text() == "done"
