"""The bad-input corpus: hostile bundles, bad checkpoints, bad options, bad output paths.

Every case runs a real CLI command (in-process through click's runner; a few end to end in a
subprocess) and asserts exit status 2, exactly one sentence on stderr ("error: ...", one line,
no traceback), and that the case's folder is unchanged afterwards: nothing half-written left
behind, nothing lost (a previous bundle stays byte for byte), no temporary files. The
concurrent build and the kill -9 of a re-export run as real processes.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bad_input_helpers import assert_one_sentence, copy_bundle, edit_manifest, run_cli, snapshot

ROOT = os.geteuid() == 0


class Case:
    def __init__(self, tmp, files, bundles):
        self.tmp, self.files, self.bundles = str(tmp), files, bundles

    def path(self, *parts) -> str:
        return os.path.join(self.tmp, *parts)

    def bundle(self, kind="far") -> str:
        return copy_bundle(self.bundles[kind], self.path(f"b_{kind}"))

    def write(self, name, data: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def checkpoint(self, name, mutate=None, args_update=None, src="mar") -> str:
        """A copy of a tiny training checkpoint with its state dict or args changed."""
        obj = torch.load(self.files[src], weights_only=False)      # our own test file
        if mutate:
            for key in ("model", "model_ema"):
                mutate(obj[key])
        if args_update:
            ns = vars(obj["args"])
            ns.update(args_update)
            obj["args"] = argparse.Namespace(**ns)
        torch.save(obj, self.path(name))
        return self.path(name)


def _gen(c, *extra, kind="far"):
    return ["generate", c.bundle(kind), "--num", "2", "--K", "2", "--O", "2",
            "--out", c.path("grid.png"), *extra]


def _manifest(fn, kind="far"):
    def setup(c):
        b = c.bundle(kind)
        edit_manifest(b, fn)
        return ["generate", b, "--num", "2", "--K", "2", "--O", "2", "--out", c.path("grid.png")]
    return setup


def _graph_file(name):
    def fn(m):
        m["graphs"]["head_fused_o2"]["file"] = name
        m["graphs"]["head_fused_o2"]["files"] = {name: "0" * 64}
        return m
    return fn


def _symlink_out(c):
    b = c.bundle()
    outside = c.path("outside.onnx")
    shutil.move(os.path.join(b, "head_fused_o2.onnx"), outside)
    os.symlink(outside, os.path.join(b, "head_fused_o2.onnx"))
    return ["generate", b, "--num", "2", "--K", "2", "--O", "2", "--out", c.path("grid.png")]


def _manifest_symlink(c):
    b = c.bundle()
    shutil.move(os.path.join(b, "manifest.json"), c.path("manifest.json"))
    os.symlink(c.path("manifest.json"), os.path.join(b, "manifest.json"))
    return ["generate", b, "--out", c.path("grid.png")]


def _unlisted_file(c):
    b = c.bundle()
    shutil.copy(os.path.join(b, "head_fused_o8.onnx"), os.path.join(b, "extra.onnx"))
    edit_manifest(b, lambda m: (m["graphs"]["head_fused_o2"].update(file="extra.onnx"), m)[1])
    return ["generate", b, "--num", "2", "--K", "2", "--O", "2", "--out", c.path("grid.png")]


def _tampered(c):
    b = c.bundle()
    p = os.path.join(b, "backbone.onnx")
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(p, "wb").write(bytes(data))
    return ["generate", b, "--out", c.path("grid.png")]


def _missing_graph(c):
    b = c.bundle()
    os.unlink(os.path.join(b, "vae_decoder.onnx"))
    return ["generate", b, "--out", c.path("grid.png")]


def _no_manifest(c):
    b = c.bundle()
    os.unlink(os.path.join(b, "manifest.json"))
    return ["generate", b, "--out", c.path("grid.png")]


def _not_json(c):
    b = c.bundle()
    with open(os.path.join(b, "manifest.json"), "w") as f:
        f.write('{"format": "far-export-bundle", ')
    return ["generate", b, "--out", c.path("grid.png")]


def _bundle_is_file(c):
    return ["generate", c.write("bundle.txt", b"x"), "--out", c.path("grid.png")]


def _export(c, *extra, ckpt=None, vae=None, out=None):
    return ["export", ckpt or c.files["far"], "--vae", vae or c.files["vae"],
            "--out", out or c.bundle("far"), *extra]


def _unreadable(c):
    if ROOT:      # root reads any mode; /proc/self/mem fails every read with EIO
        return _export(c, ckpt="/proc/self/mem")
    p = c.write("locked.pth", open(c.files["far"], "rb").read())
    os.chmod(p, 0)
    return _export(c, ckpt=p)


def _pickled_code(c):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + c.path("pwned"),))
    torch.save({"model": Evil()}, c.path("evil.pth"))
    return _export(c, ckpt=c.path("evil.pth"))


def _legacy_pickle(c):
    import pickle
    return _export(c, ckpt=c.write("legacy.pth", pickle.dumps({"a": 1}, protocol=2)))


def _truncated(c):
    data = open(c.files["far"], "rb").read()
    return _export(c, ckpt=c.write("cut.pth", data[: len(data) // 2]))


def _wrong_rank(c):
    def mutate(sd):
        sd["z_proj.weight"] = sd["z_proj.weight"].reshape(-1)
    return _export(c, ckpt=c.checkpoint("rank.pth", mutate, src="far"))


def _steps(value):
    return lambda c: ["export", c.checkpoint("steps.pth", args_update={"num_sampling_steps": value}),
                      "--vae", c.files["vae"], "--out", c.bundle("mar")]


def _random_vae(c):
    torch.save({"model": {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}}, c.path("notvae.pth"))
    return _export(c, vae=c.path("notvae.pth"))


def _out_file(c):
    return _export(c, out=c.write("out.txt", b"keep me"))


def _out_under_file(c):
    c.write("afile", b"keep me")
    return _export(c, out=c.path("afile", "bundle"))


def _out_user_folder(c):
    os.makedirs(c.path("mine"))
    c.write(os.path.join("mine", "notes.txt"), b"my notes")
    return _export(c, out=c.path("mine"))


def _save_randomness_bad_class(c):
    return _gen(c, "--class", "12", "--save-randomness", c.path("r.npz"))


def _stale_verify(c):
    b = c.bundle()
    with open(os.path.join(b, "verify.json"), "w") as f:
        json.dump({"passed": True, "summary": "PASSED", "judged": {"checkpoint_sha256": "0" * 64}}, f)
    return ["verify", b, "--status"]


def _verify(*extra):
    return lambda c: ["verify", c.bundle(), "--out", c.path("v.json"), *extra]


def _sample(*extra):
    return lambda c: ["sample", c.files["far"], "--vae", c.files["vae"], "--num", "1", "--K", "2",
                      "--O", "2", "--out", c.path("ref.png"), *extra]


CASES = {
    # --- hostile or broken bundles (runtime) ---
    "manifest-traversal-dotdot": (_manifest(_graph_file("../../outside.onnx")), "outside the bundle folder"),
    "manifest-traversal-etc-passwd": (_manifest(_graph_file("../../../../../../etc/passwd")), "outside the bundle folder"),
    "manifest-absolute-path": (_manifest(_graph_file("/etc/passwd")), "outside the bundle folder"),
    "manifest-symlink-leads-out": (_symlink_out, "outside the bundle folder"),
    "manifest-itself-a-symlink-out": (_manifest_symlink, "outside the bundle folder"),
    "manifest-file-not-hashed": (_unlisted_file, "not among the graph's hashed files"),
    "manifest-is-array": (_manifest(lambda m: [m]), "a JSON list, not an object"),
    "manifest-no-graphs": (_manifest(lambda m: {k: v for k, v in m.items() if k != "graphs"}), "no 'graphs'"),
    "manifest-no-model": (_manifest(lambda m: {k: v for k, v in m.items() if k != "model"}), "no 'model'"),
    "manifest-graphs-is-list": (_manifest(lambda m: dict(m, graphs=list(m["graphs"]))), "no 'graphs'"),
    "manifest-max-batch-string": (_manifest(lambda m: dict(m, max_batch="8")), "max_batch"),
    "manifest-bad-sha": (_manifest(lambda m: (m["graphs"]["backbone"]["files"].update({"backbone.onnx": "x"}), m)[1]), "without a sha256"),
    "manifest-not-json": (_not_json, "not valid JSON"),
    "manifest-format-version": (_manifest(lambda m: dict(m, format_version=99)), "format version 99"),
    "manifest-missing": (_no_manifest, "has no manifest.json"),
    "graph-byte-flipped": (_tampered, "does not match the sha256"),
    "graph-missing": (_missing_graph, "is missing"),
    "bundle-is-a-file": (_bundle_is_file, "is a file, not a bundle folder"),
    "bundle-does-not-exist": (lambda c: ["generate", c.path("nope"), "--out", c.path("g.png")], "does not exist"),
    # --- generate options ---
    "cfg-nan": (lambda c: _gen(c, "--cfg", "nan"), "finite"),
    "cfg-inf": (lambda c: _gen(c, "--cfg", "inf"), "finite"),
    "temperature-nan": (lambda c: _gen(c, "--temperature", "nan"), "finite"),
    "temperature-negative": (lambda c: _gen(c, "--temperature", "-1"), ">= 0"),
    "seed-negative": (lambda c: _gen(c, "--seed", "-1"), "non-negative"),
    "num-zero": (lambda c: _gen(c, "--num", "0"), "1..1024"),
    "num-100000": (lambda c: _gen(c, "--num", "100000"), "--num must be in 1..1024"),
    "num-over-max-batch": (lambda c: _gen(c, "--num", "9"), "re-export with --max-batch 9"),
    "k-zero": (lambda c: _gen(c, "--K", "0"), "1..256"),
    "k-300": (lambda c: _gen(c, "--K", "300"), "1..256"),
    "o-not-power-of-two": (lambda c: _gen(c, "--O", "3"), "power of two"),
    "o-without-fused-graph": (lambda c: _gen(c, "--O", "4", "--head", "fused"), "no fused head graph"),
    "class-not-integer": (lambda c: _gen(c, "--class", "cat"), "--class takes integers"),
    "class-unknown": (lambda c: _gen(c, "--class", "12"), "Class 12 is unknown"),
    "threads-zero": (lambda c: _gen(c, "--threads", "0"), "--threads"),
    "out-is-a-folder": (lambda c: _gen(c)[:-1] + [c.tmp], "is a folder"),
    "out-under-a-file": (lambda c: _gen(c)[:-1] + [os.path.join(c.write("f", b"x"), "g.png")], "which is a file"),
    "out-not-writable": (lambda c: _gen(c)[:-1] + ["/proc/far-export-test/g.png"], "cannot be written"),
    "save-randomness-then-bad-class": (_save_randomness_bad_class, "Class 12 is unknown"),
    "save-randomness-is-a-folder": (lambda c: _gen(c, "--save-randomness", c.tmp), "is a folder"),
    # --- verify options ---
    "verify-k-zero": (_verify("--K", "0"), "1..256"),
    "verify-o-zero": (_verify("--O", "0"), "power of two"),
    "verify-batch-zero": (_verify("--batch", "0"), "--batch must be at least 1"),
    "verify-batch-negative": (_verify("--batch", "-2"), "--batch must be at least 1"),
    "verify-batch-over-max": (_verify("--batch", "9"), "max batch 8"),
    "verify-cfg-nan": (_verify("--cfg", "nan"), "finite"),
    "verify-seed-negative": (_verify("--seed", "-1"), "non-negative"),
    "verify-stale-report": (_stale_verify, "no longer applies"),
    # --- export options (over a valid bundle, which must survive) ---
    "export-opset-99": (lambda c: _export(c, "--opset", "99"), "--opset must be in 18.."),
    "export-opset-17": (lambda c: _export(c, "--opset", "17"), "--opset must be in 18.."),
    "export-heads-negative": (lambda c: _export(c, "--heads", "-1"), "--heads must be in 1..1024"),
    "export-heads-contradict-metadata": (lambda c: _export(c, "--heads", "4"), "contradicts the checkpoint"),
    "export-max-batch-zero": (lambda c: _export(c, "--max-batch", "0"), "--max-batch must be in 1..1024"),
    "export-max-batch-2000": (lambda c: _export(c, "--max-batch", "2000"), "--max-batch must be in 1..1024"),
    "export-validate-batches-zero": (lambda c: _export(c, "--validate-batches", "0"), "--validate-batches"),
    "export-head-steps-3": (lambda c: _export(c, "--head-steps", "3"), "powers of two"),
    "export-components-bogus": (lambda c: _export(c, "--components", "bogus"), "--components"),
    "export-out-is-a-file": (_out_file, "is a file, not a folder"),
    "export-out-under-a-file": (_out_under_file, "which is a file"),
    "export-out-user-folder": (_out_user_folder, "not a bundle; refusing to replace it"),
    # --- checkpoints ---
    "checkpoint-missing": (lambda c: _export(c, ckpt=c.path("nope.pth")), "does not exist"),
    "checkpoint-is-a-folder": (lambda c: _export(c, ckpt=c.tmp), "is a folder"),
    "checkpoint-unreadable": (_unreadable, "cannot be read"),
    "checkpoint-pickled-code": (_pickled_code, "Unsupported global"),
    "checkpoint-legacy-pickle": (_legacy_pickle, "legacy pickle"),
    "checkpoint-truncated": (_truncated, "truncated, corrupt"),
    "checkpoint-random-bytes": (lambda c: _export(c, ckpt=c.write("rnd.pth", os.urandom(4096))), "not a PyTorch checkpoint"),
    "checkpoint-wrong-rank": (_wrong_rank, "has shape (128,)"),
    "checkpoint-is-the-vae": (lambda c: _export(c, ckpt=c.files["vae"]), "holds a VAE"),
    "vae-is-the-model": (lambda c: _export(c, vae=c.files["far"]), "holds a MAR/FAR model, not a VAE"),
    "vae-is-not-a-vae": (_random_vae, "not an LDM KL-VAE"),
    "vae-random-safetensors": (lambda c: _export(c, vae=c.write("v.safetensors", os.urandom(64))), "not a readable safetensors"),
    "mar-steps-ddim-impossible": (_steps("ddim3000"), "no integer stride"),
    "mar-steps-section-too-big": (_steps("10,15,2000"), "cannot be divided into 2000"),
    "mar-steps-not-a-form": (_steps("fast"), "not a form MAR reads"),
    "mar-steps-zero": (_steps("0"), "positive counts"),
    "inspect-heads-zero": (lambda c: ["inspect", c.files["far"], "--heads", "0"], "--heads must be an integer in 1..32"),
    # --- the reference sampler ---
    "sample-seed-negative": (_sample("--seed", "-1"), "non-negative"),
    "sample-cfg-nan": (_sample("--cfg", "nan"), "finite"),
    "sample-out-is-a-folder": (lambda c: _sample()(c)[:-1] + [c.tmp], "is a folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tiny_files, bundles, tmp_path, record_property):
    setup, expect = CASES[name]
    case = Case(tmp_path, tiny_files, bundles)
    args = setup(case)
    before = snapshot(str(tmp_path))
    result = run_cli(args)
    sentence = assert_one_sentence(result.exit_code, result.stderr, expect)
    record_property("sentence", sentence)
    assert snapshot(str(tmp_path)) == before, "the case changed its folder"
    assert not os.path.exists(case.path("pwned"))


# --- end to end, as a user runs them (each subprocess imports torch: keep these few) ---

E2E = [
    (["-m", "far_runtime.cli", "generate", "{bundle}", "--cfg", "nan", "--out", "{tmp}/g.png"], "finite"),
    (["-m", "far_export.cli", "export", "{far}", "--vae", "{vae}", "--opset", "99", "--out", "{bundle}"],
     "--opset must be in 18.."),
]


@pytest.mark.parametrize("i", range(len(E2E)))
def test_bad_input_end_to_end(i, tiny_files, bundles, tmp_path):
    argv, expect = E2E[i]
    b = copy_bundle(bundles["far"], str(tmp_path / "b"))
    before = snapshot(str(tmp_path))
    args = [a.format(bundle=b, tmp=tmp_path, far=tiny_files["far"], vae=tiny_files["vae"]) for a in argv]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert_one_sentence(r.returncode, r.stderr, expect)
    assert snapshot(str(tmp_path)) == before


SMALL_EXPORT = dict(components=["backbone", "head"], head_steps=[2], validate_batches=[1, 3])


def _export_cmd(ckpt, out):
    return [sys.executable, "-m", "far_export.cli", "export", ckpt, "--out", out, "--components",
            "backbone,head", "--head-steps", "2", "--validate-batches", "1,3"]


def _export_here(ckpt, out):
    from far_export.export.bundle import export_bundle
    export_bundle(ckpt, None, out, **SMALL_EXPORT)


def _leftovers(parent: str, name: str) -> list[str]:
    return [f for f in os.listdir(parent) if f.startswith(f".{name}.")]


def _assert_consistent(out: str, checkpoints: dict) -> str:
    """The bundle loads (every hash checked), and its graphs are the named checkpoint's:
    the runtime matches that checkpoint's reference sampler."""
    from far_export.reference.pipeline import ReferencePipeline
    from far_runtime.pipeline import Pipeline
    from far_runtime.randomness import draw_randomness
    pipe = Pipeline.load(out)
    src = pipe.bundle.manifest["source"]["checkpoint"]
    assert src in checkpoints.values()
    ref = ReferencePipeline.load(src)
    r = draw_randomness(5, 2, 16, 4)
    a = pipe.generate_tokens([1, 2], K=4, O=2, cfg=2.0, randomness=r)
    b = ref.tokens([1, 2], num_iter=4, head_steps=2, cfg=2.0, randomness=r).numpy()
    assert np.abs(a - b).max() <= 1e-4
    return src


def test_concurrent_builds_into_one_out(tiny_files, tmp_path):
    from far_export.synthetic import write_random_checkpoint
    other = str(tmp_path / "other.pth")
    write_random_checkpoint(other, "tiny", "shortcut", seed=7)
    out = str(tmp_path / "out")
    procs = [subprocess.Popen(_export_cmd(ck, out), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for ck in (tiny_files["far"], other)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code != 0:          # the loser says so in one sentence and writes nothing
            assert_one_sentence(code, err, "Another far-export build is writing")
    _assert_consistent(out, {"a": tiny_files["far"], "b": other})
    assert _leftovers(str(tmp_path), "out") == []


def test_kill_9_during_reexport_keeps_the_old_bundle(tiny_files, tmp_path):
    from far_export.synthetic import write_random_checkpoint
    other = str(tmp_path / "other.pth")
    write_random_checkpoint(other, "tiny", "shortcut", seed=8)
    out = str(tmp_path / "out")
    _export_here(tiny_files["far"], out)
    before = snapshot(out)
    p = subprocess.Popen(_export_cmd(other, out), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    # kill once the re-export has started writing its staging folder (graphs being exported)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        staged = [f for f in os.listdir(tmp_path) if f.startswith(".out.staging-")]
        if staged and os.listdir(tmp_path / staged[0]):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the re-export finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert snapshot(out) == before                          # the old bundle, byte for byte
    assert _leftovers(str(tmp_path), "out")                 # the killed run's staging is there ...
    assert _assert_consistent(out, {"a": tiny_files["far"]}) == tiny_files["far"]
    _export_here(other, out)
    assert _leftovers(str(tmp_path), "out") == []           # ... and the next run cleaned it
    assert _assert_consistent(out, {"b": other}) == other


def test_a_second_build_into_a_locked_out_is_refused(tiny_files, bundles, tmp_path):
    """Deterministic half of the concurrent case: while one build holds --out's lock, another
    is refused in one sentence and touches nothing; the held build then swaps in normally."""
    from far_export.export.staging import staged_bundle
    out = copy_bundle(bundles["far"], str(tmp_path / "out"))
    before = snapshot(out)
    with staged_bundle(out) as stage:
        result = run_cli(["export", tiny_files["far"], "--vae", tiny_files["vae"], "--out", out])
        assert_one_sentence(result.exit_code, result.stderr, "Another far-export build is writing")
        assert snapshot(out) == before
        shutil.copytree(bundles["mar"], stage, dirs_exist_ok=True)
    assert snapshot(out) == snapshot(bundles["mar"]) and _leftovers(str(tmp_path), "out") == []
