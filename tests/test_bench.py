"""``far-export bench`` on the tiny models: a well-formed report (figures are not asserted),
FAR-Causal through the same path (its loops swept), FLOP counts equal to torch's own counter,
presets that share one backbone, which backends run where, user errors. Nothing here depends
on what the machine has: a GPU backend is either measured or listed with its reason."""
import json
import math
from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from far_export.bench import (COMPONENTS, REFERENCE, RUNTIME, TENSORRT, TORCH_CUDA, backbone_digest,
                              write_preset_models)
from far_export.cli import main
from far_export.config import preset
from far_export.reference import Backbone
from far_export.export.modules import FusedShortcutGraph, ShortcutStepGraph
from far_export.flops import backbone_flops, plan_flops
from far_export.synthetic import random_model
from far_runtime.variants.masked import make_plan


OV = "openvino-cpu"
PEERS = [REFERENCE, "pytorch-eager-bf16", RUNTIME, RUNTIME + "-int8", RUNTIME + "-bf16",
         OV, OV + "-bf16", OV + "-int8", OV + "-auto"]
RUNTIME_PEERS = {RUNTIME, RUNTIME + "-int8", OV, OV + "-bf16", OV + "-int8", OV + "-auto"}


@pytest.fixture(scope="module")
def report(bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAR_EXPORT_CACHE", str(out / "cache"))
        res = CliRunner().invoke(main, [
            "bench", bundles["far"], "--mar", bundles["mar"], "--K", "2", "--O", "8", "--cfg", "3.0",
            "--threads", "1", "--runs", "1", "--warmup", "0", "--sweep-K", "1,2", "--sweep-O", "1,2",
            "--matmul-seconds", "0.05", "--peers", ",".join(PEERS), "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "bench.json") as f:
        return json.load(f), out, res.output


def check_backend_entry(r: dict, batch: int) -> None:
    assert len(r["total_s"]) == 1 and all(t > 0 for t in r["total_s"])
    assert 0 < r["latency_median_s"] <= r["latency_p90_s"] <= max(r["total_s"]) / batch + 1e-12
    assert math.isclose(r["images_per_s"], 1 / r["latency_median_s"], rel_tol=1e-9)
    assert set(r["breakdown_s"]) == set(COMPONENTS)
    assert all(r["breakdown_s"][c] > 0 for c in ("backbone", "head", "vae"))
    assert math.isclose(sum(r["shares"].values()), 1.0, abs_tol=1e-9)
    assert math.isclose(sum(r["breakdown_s"].values()), r["mean_total_s"], rel_tol=1e-9)
    assert 0 <= r["generate_overhead_share"] < 1
    assert r["peak_rss_mb"] > 10
    assert r["flops"]["backbone"] > 0 and r["flops"]["head"] > 0
    assert r["achieved_gflops"]["backbone"] > 0


def gpu_backends(rep: dict) -> set:
    """The GPU backends this machine ran (none without CUDA); the others must say why not."""
    ran = set()
    for gpu in (TENSORRT, TORCH_CUDA):
        entry = rep["backends"][gpu]
        assert isinstance(entry["available"], bool)
        if entry["available"]:
            assert entry["reason"] is None
            ran.add(gpu)
        else:
            assert entry["reason"], gpu          # listed with the reason, never faked
    return ran


def test_report_is_well_formed(report):
    rep, out, text = report
    main_ = rep["main"]
    assert (main_["K"], main_["O"], main_["mode"], main_["batch"], main_["cfg"]) == (2, 8, None, 1, 3.0)
    assert rep["variant"] == "far" and rep["loops"] is None
    gpus = gpu_backends(rep)
    not_run = set(rep["peers_not_run"])
    assert RUNTIME + "-bf16" in not_run and not_run <= {RUNTIME + "-bf16", OV, OV + "-bf16", OV + "-int8", OV + "-auto"}
    for p in not_run - {RUNTIME + "-bf16"}:          # OpenVINO missing, or bf16 without bf16 units
        assert "OpenVINO is not installed" in rep["peers_not_run"][p] or "bf16" in rep["peers_not_run"][p], p
    assert set(main_["backends"]) == set(PEERS) - not_run | gpus
    for r in main_["backends"].values():
        check_backend_entry(r, 1)
    # both backends did the same work: same seeds, same latents (runtime parity is 1e-3)
    assert main_["same_work"]["latent_max_abs_diff"] <= 1e-3
    assert main_["speedup"] > 0 and main_["speedup_paired_median"] > 0
    # the reference counts its head in step mode, the runtime uses the fused O=8 graph
    assert main_["backends"][REFERENCE]["head_mode"] == "step"
    assert main_["backends"][RUNTIME]["head_mode"] == "fused"
    assert [(e["K"], e["O"]) for e in rep["sweep"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for e in rep["sweep"]:
        for r in e["backends"].values():
            check_backend_entry(r, 1)
    mvf = rep["mar_vs_far"]
    assert mvf["mar_steps"] == 100 and mvf["far_O"] == 8
    assert mvf["same_backbone_weights"] is False          # the fixtures' FAR and MAR differ
    assert set(mvf["backends"]) == {REFERENCE, RUNTIME} | gpus     # MAR: the fp32 baselines
    for b in (REFERENCE, RUNTIME):
        row = mvf["backends"][b]
        assert row["far_speedup_over_mar"] > 0 and 0 < row["mar_head_share"] < 1
    assert mvf["mar"]["backends"][RUNTIME]["calls"]["head_step"] == 100 * 2   # K=2 iterations
    mm = rep["matmul_peak"]
    assert mm["peak_gflops"] >= mm["torch_gflops"] > 0 and mm["numpy_gflops"] > 0   # 1 thread: torch only
    assert rep["throughput"]["backends"][RUNTIME]["backbone_fraction_of_matmul_peak"] > 0
    tp = rep["throughput"]["backends"]
    assert tp["pytorch-eager-bf16"]["backbone_dtype"] == "bf16"
    assert tp[RUNTIME + "-int8"]["backbone_dtype"] == rep["bundles"][RUNTIME + "-int8"]["graphs"]["backbone"]["precision"]
    for b in set(tp) & {OV, OV + "-bf16", OV + "-int8", OV + "-auto"}:   # what OpenVINO runs the backbone in
        g = rep["bundles"][b]["graphs"]["backbone"]
        assert tp[b]["backbone_dtype"] == ("int8" if g["precision"] == "int8" else g["compute"]), b
        assert g["compute"] == {OV: "fp32", OV + "-bf16": "bf16", OV + "-int8": "fp32"}.get(b, g["compute"])
    if OV + "-auto" in tp:
        auto = rep["bundles"][OV + "-auto"]
        assert auto["chosen_on"] == {"backend": "openvino", "threads": 1}
        assert all(d["chosen"] in d["candidates"] and d["candidates"][d["chosen"]]["passed"]
                   for d in auto["graphs"].values())
    for b, r in tp.items():     # each backbone against the measured peak of the dtype it runs in
        assert r["dtype_peak_gflops"] == rep["peaks"]["peak"][r["backbone_dtype"]]["gflops"]
    imported = rep["models"]["far"]["torch_imported"]
    assert {b: imported[b] for b in set(imported) - gpus} == {
        REFERENCE: True, "pytorch-eager-bf16": True, **{b: False for b in RUNTIME_PEERS - not_run}}
    cpu = rep["peaks"]["cpu"]
    assert cpu["all_flags"] and all(cpu[f] == (f in cpu["all_flags"]) for f in ("avx2", "avx512_bf16", "amx_bf16"))
    assert set(rep["machine"]["precisions"]) == {"fp32", "bf16", "int8"}
    ov = rep["peaks"]["libraries"]["fp32"]["openvino"]            # measured, or why not
    assert ov.get("gflops") or ov["reason"]
    assert len(rep["peaks"]["measurements"]) == 2                  # before the bundles, after the runs
    assert rep["command"].startswith("far-export bench ") and "--K 2" in rep["command"]
    assert rep["load"]["before"]["cpus"] >= 1


def test_report_files(report):
    rep, out, text = report
    md = (out / "bench.md").read_text()
    assert "| backend | images/s" in md and "MAR (diffusion head, 100 steps)" in md and "K x O sweep" in md
    assert md.strip() in text                              # the command prints the table too
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("rows,n_known", [(1, 0), (2, 5), (3, 15)])
def test_backbone_flops_match_torch_counter(name, rows, n_known):
    cfg = preset(name)
    bb = Backbone(cfg.backbone).eval()
    L, C = cfg.backbone.seq_len, cfg.backbone.token_dim
    known = torch.stack([torch.randperm(L)[:n_known].sort().values for _ in range(rows)])
    pred = torch.stack([torch.arange(L)[:1] for _ in range(rows)])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        bb(torch.randn(rows, L, C), torch.zeros(rows, dtype=torch.long), known, pred)
    assert backbone_flops(asdict(cfg.backbone), rows, n_known) == counter.get_total_flops()


@pytest.mark.parametrize("mode", ["step", "fused"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_plan_head_flops_match_torch_counter(mode, cfg_scale):
    """The head FLOPs of a whole plan equal what torch counts running those graph modules."""
    cfg = preset("tiny")
    _, head = random_model(cfg)
    model = {"seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10, "head_kind": "shortcut",
             "diffusion_steps": 0}
    O, B = 4, 2
    plan = make_plan(model, B, 3, O, cfg_scale != 1.0, mode, False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        for call in plan.calls():
            if call.graph == "head_step":
                n = call.dim("rows")
                ShortcutStepGraph(head)(torch.randn(n, 4), torch.rand(n), torch.full((n,), 0.25),
                                        torch.randn(n, 32))
            elif call.graph.startswith("head_fused"):
                FusedShortcutGraph(head, O)(torch.randn(call.dim("rows"), 4),
                                            torch.randn(call.dim("zrows"), 32), torch.tensor([3.0]))
    assert plan_flops({"backbone": asdict(cfg.backbone), "head": asdict(cfg.head)}, plan)["head"] \
        == counter.get_total_flops()


def test_preset_models_share_the_backbone(tmp_path):
    from far_export.checkpoint import load_model_checkpoint, load_vae_checkpoint
    files = write_preset_models("tiny", str(tmp_path))
    far, mar = load_model_checkpoint(files["far"]), load_model_checkpoint(files["mar"])
    assert (far.config.head.kind, mar.config.head.kind) == ("shortcut", "diffusion")
    assert far.config.backbone.encoder_heads == preset("tiny").backbone.encoder_heads
    assert backbone_digest(files["far"]) == backbone_digest(files["mar"])
    vae = load_vae_checkpoint(files["vae"]).config
    assert vae.embed_dim == far.config.backbone.token_dim
    assert math.isqrt(far.config.backbone.seq_len) * vae.downsample == 8
    other = write_preset_models("tiny", str(tmp_path / "other"), seed=1)
    assert backbone_digest(other["far"]) != backbone_digest(files["far"])


@pytest.mark.parametrize("args,message", [
    (["--preset", "tiny", "some.pth"], "either a CHECKPOINT or BUNDLE"),
    (["--preset", "tiny", "--sweep-O", "3"], "power of two"),
    (["--preset", "tiny", "--K", "0"], "K (autoregressive iterations)"),
    (["/nonexistent/far.pth"], "neither a checkpoint file nor a bundle"),
])
def test_user_errors(args, message, tmp_path):
    res = CliRunner().invoke(main, ["bench", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert message in res.output


def test_timed_backend_wraps_any_backend(bundles):
    """The timing proxy used for the GPU backends, here around ONNX Runtime: same tokens, and
    every graph call of the plan is timed."""
    import numpy as np
    from far_export.bench import TimedBackend
    from far_runtime.backends import OrtBackend
    from far_runtime.bundle import load_bundle
    from far_runtime.pipeline import Pipeline
    bundle = load_bundle(bundles["far"])
    plain, timed = Pipeline(bundle, OrtBackend(bundle)), Pipeline(bundle, TimedBackend(OrtBackend(bundle)))
    a = plain.generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=5)
    b = timed.generate_tokens([1, 2], K=4, O=2, cfg=3.0, seed=5)
    assert np.array_equal(a, b)
    calls = timed.backend.timer.calls
    assert calls["backbone"] == 4 and calls["head_fused_o2"] == 4
    assert all(s > 0 for s in timed.backend.timer.seconds.values())


def test_summary_and_accuracy_are_well_formed(report):
    rep, out, text = report
    acc = rep["main"]["accuracy"]
    assert set(acc) == set(rep["main"]["backends"])
    assert acc[REFERENCE]["latent_max_abs"] == 0 and acc[REFERENCE]["psnr_db"] == math.inf
    assert acc[RUNTIME]["latent_max_abs"] <= 1e-3 and acc[RUNTIME]["passed"]
    for a in acc.values():
        assert a["against"] == REFERENCE and isinstance(a["passed"], bool) and a["psnr_db"] > 0
    sm = rep["summary"]
    assert {"best_pytorch", "best_runtime", "speedup_vs_best_pytorch", "speedup_vs_eager_fp32"} <= set(sm)
    lat = {b: r["latency_median_s"] for b, r in rep["main"]["backends"].items()}
    pt = [b for b in lat if b.startswith("pytorch") and acc[b]["passed"]]
    rt = [b for b in lat if b in RUNTIME_PEERS and acc[b]["passed"]]
    assert sm["best_pytorch"] == min(pt, key=lat.get) and sm["best_runtime"] == min(rt, key=lat.get)
    assert math.isclose(sm["speedup_vs_best_pytorch"], lat[sm["best_pytorch"]] / lat[sm["best_runtime"]])
    assert math.isclose(sm["speedup_vs_eager_fp32"], lat[REFERENCE] / lat[sm["best_runtime"]])
    assert "**Summary**" in text


def test_peers_that_cannot_run_say_why(report):
    rep, out, text = report
    why = rep["peers_not_run"][RUNTIME + "-bf16"]
    assert "no bf16 mode" in why
    assert RUNTIME + "-bf16" not in rep["main"]["backends"]
    assert "Configurations not run" in text


def _peaks(bf16, fp32=50.0, fp16=40.0):
    lib = {"fp32": {"torch": {"gflops": fp32}, "onnxruntime": {"gflops": fp32}},
           "bf16": {"torch": {"gflops": bf16}, "onnxruntime": {"gflops": None, "reason": "no bf16 MatMul"}},
           "fp16": {"onnxruntime": {"gflops": fp16, "kernels": ["Cast", "MatMul"]}}, "int8": {}}
    return {"libraries": lib, "cpu": {"avx2": True}}


def test_peer_choice_follows_measured_peaks():
    from far_export.bench.peers import BY_NAME, choose, parse_peers
    peers, explicit = parse_peers("all")
    assert not explicit and [p.name for p in peers] == list(BY_NAME)
    run, skipped = choose(peers, _peaks(bf16=0.6), explicit)
    assert "pytorch-eager-bf16" in skipped and "0.6 GFLOP/s" in skipped["pytorch-eager-bf16"]
    assert "~83x slower" in skipped["pytorch-eager-bf16"]
    assert "fp16" in skipped[RUNTIME + "-fp16"] and "Cast" in skipped[RUNTIME + "-fp16"]
    assert {REFERENCE, RUNTIME, RUNTIME + "-int8"} <= {p.name for p in run}
    run, skipped = choose(peers, _peaks(bf16=500.0, fp16=80.0), explicit)     # a CPU with bf16 units
    assert {"pytorch-eager-bf16", RUNTIME + "-fp16"} <= {p.name for p in run}
    named, explicit = parse_peers("pytorch-eager-bf16")                        # named: runs regardless
    assert explicit and [p.name for p in named] == [REFERENCE, "pytorch-eager-bf16"]
    assert "pytorch-eager-bf16" not in choose(named, _peaks(bf16=0.6), explicit)[1]


def test_backend_keeps_its_runtime_peers_and_the_baselines():
    from far_export.bench.peers import parse_peers
    ov, _ = parse_peers("all", "openvino")
    assert {p.name for p in ov if p.engine == "runtime"} == {RUNTIME, OV, OV + "-bf16", OV + "-int8", OV + "-auto"}
    assert {"pytorch-eager-bf16", "pytorch-compile"} <= {p.name for p in ov}
    ort, explicit = parse_peers(f"{OV}-bf16,{RUNTIME}-int8", "onnxruntime")
    assert explicit and [p.name for p in ort] == [REFERENCE, RUNTIME, RUNTIME + "-int8"]


def test_peaks_measured_twice_keep_each_librarys_best():
    """A shared machine's load only lowers a peak: the bench measures before and after its
    runs and keeps each library's best (a loaded first measurement made backbones look 4x
    faster than the machine's peak)."""
    from far_export.bench.peaks import merge_peaks

    def measured(torch32, ort32, int8, load):
        lib = {"fp32": {"torch": {"gflops": torch32}, "onnxruntime": {"gflops": ort32}},
               "bf16": {"onnxruntime": {"gflops": None, "reason": "none"}}, "fp16": {},
               "int8": {"onnxruntime": {"gflops": int8}}}
        return {"threads": 1, "libraries": lib, "when": f"t{load}", "load_1m": load,
                "peak": {"fp32": {"gflops": max(torch32, ort32)}, "int8": {"gflops": int8}}}
    m = merge_peaks(measured(30.0, 200.0, 100.0, 10.0), measured(190.0, 150.0, 800.0, 0.5))
    assert m["libraries"]["fp32"]["torch"]["gflops"] == 190.0 and m["libraries"]["fp32"]["onnxruntime"]["gflops"] == 200.0
    assert m["peak"]["fp32"] == {"gflops": 200.0, "library": "onnxruntime"} and m["peak"]["int8"]["gflops"] == 800.0
    assert m["libraries"]["bf16"]["onnxruntime"]["reason"] == "none" and m["peak"]["bf16"]["gflops"] is None
    assert [x["load_1m"] for x in m["measurements"]] == [10.0, 0.5]


def test_unknown_peer_is_a_user_error(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--peers", "pytorch-fast", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown peer" in res.output


def test_bf16_reference_runs_under_autocast_and_matches_fp32_loosely():
    """The reference runs under torch.autocast bf16 (it used to fail in Backbone.decode's
    scatter) and lands near fp32; fp32 itself is unchanged (the parity tests check that)."""
    from far_export.reference.sampler import sample_tokens
    from far_runtime.randomness import draw_randomness
    cfg = preset("tiny")
    backbone, head = random_model(cfg, 0)
    rnd = draw_randomness(0, 2, cfg.backbone.seq_len, cfg.backbone.token_dim, 0)
    ref = sample_tokens(backbone, head, [1, 2], num_iter=4, head_steps=2, cfg=3.0, randomness=rnd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sample_tokens(backbone, head, [1, 2], num_iter=4, head_steps=2, cfg=3.0, randomness=rnd)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    err = float((low - ref).norm() / ref.norm())
    assert 0 < err < 0.05                     # bf16 did run (not bit-identical), and stayed close


def test_backend_availability_follows_what_the_machine_has():
    """The decision itself, for every kind of machine (this one's answer is checked above)."""
    from far_export.bench.sweep import availability
    none = availability(False, "no CUDA device", "TensorRT is not installed", None)
    assert none[TORCH_CUDA] == {"available": False, "reason": "no CUDA device"}
    assert none[TENSORRT] == {"available": False, "reason": "TensorRT is not installed"}
    assert none[REFERENCE]["available"] and none[RUNTIME]["available"]
    cuda_only = availability(True, "", "TensorRT is not installed", None)
    assert cuda_only[TORCH_CUDA] == {"available": True, "reason": None}
    assert not cuda_only[TENSORRT]["available"]
    trt_no_gpu = availability(False, "no CUDA device", None, None)           # TensorRT, no GPU
    assert trt_no_gpu[TENSORRT] == {"available": False, "reason": "no CUDA device"}
    no_engines = availability(True, "", None, "no fp32 engines; run far-export engines")
    assert no_engines[TENSORRT] == {"available": False, "reason": "no fp32 engines; run far-export engines"}
    assert availability(True, "", None, None)[TENSORRT] == {"available": True, "reason": None}


# --- FAR-Causal: the same bench path, its loops (KV cache, recompute) swept ----------------------

CAUSAL_PEERS = [REFERENCE, RUNTIME, RUNTIME + "-int8"]


@pytest.fixture(scope="module")
def causal_report(tmp_path_factory):
    from far_export.synthetic import tiny_causal_config, write_random_causal_checkpoint, write_random_vae
    d = tmp_path_factory.mktemp("bench_causal")
    ckpt, vae, out = str(d / "causal.pth"), str(d / "vae.pth"), d / "out"
    write_random_causal_checkpoint(ckpt, tiny_causal_config(16, class_tokens=2), seed=4)
    write_random_vae(vae, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAR_EXPORT_CACHE", str(d / "cache"))
        res = CliRunner().invoke(main, [
            "bench", ckpt, "--vae", vae, "--O", "2", "--cfg", "3.0", "--threads", "1", "--runs", "1",
            "--warmup", "0", "--sweep-O", "1,2", "--matmul-seconds", "0.05",
            "--peers", ",".join(CAUSAL_PEERS), "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "bench.json") as f:
        return json.load(f), out, res.output


def test_causal_bench_runs_the_variants_loops(causal_report):
    """``far-export bench`` takes a FAR-Causal checkpoint: K is L, the sweep is its loops x O,
    and the KV cache is compared with recomputing the prefix, for every backend."""
    rep, out, text = causal_report
    L = 16
    gpus = gpu_backends(rep)
    main_ = rep["main"]
    assert rep["variant"] == "far-causal" and rep["mar_vs_far"] is None
    assert (main_["K"], main_["O"], main_["mode"]) == (L, 2, "cache")
    assert set(main_["backends"]) == set(CAUSAL_PEERS) | gpus
    for r in main_["backends"].values():
        check_backend_entry(r, 1)
    assert main_["same_work"]["latent_max_abs_diff"] <= 1e-3
    calls = main_["backends"][RUNTIME]["calls"]
    assert calls["causal_prefill"] == 1 and calls["causal_step"] == L - 1 and calls["head_fused_o2"] == L
    assert [(e["K"], e["O"], e["mode"]) for e in rep["sweep"]] == [
        (L, 1, "cache"), (L, 2, "cache"), (L, 1, "recompute"), (L, 2, "recompute")]
    recompute = rep["sweep"][3]["backends"][RUNTIME]["calls"]
    assert recompute["causal_recompute"] == L - 1 and "causal_step" not in recompute
    for e in rep["sweep"]:
        assert e["accuracy"][RUNTIME]["passed"], e["mode"]
        for r in e["backends"].values():
            check_backend_entry(r, 1)
    assert [r["O"] for r in rep["loops"]] == [1, 2]
    for row in rep["loops"]:
        assert row["baseline"] == "cache" and set(row["backends"]) == set(CAUSAL_PEERS) | gpus
        for v in row["backends"].values():
            lat = v["latency_median_s"]
            assert math.isclose(v["ratio_to_baseline"]["recompute"], lat["recompute"] / lat["cache"])
    int8 = rep["bundles"][RUNTIME + "-int8"]["graphs"]
    assert {"causal_prefill", "causal_step", "causal_recompute"} <= set(int8)    # calibrated, every loop
    assert "recompute against cache" in text and "| K | O | loop |" in text


def test_causal_bench_refuses_a_k_other_than_l_and_a_mar_twin(causal_report, bundles, tmp_path):
    rep, out, text = causal_report
    bundle = rep["models"]["far"]["bundle"]
    r = CliRunner()
    res = r.invoke(main, ["bench", bundle, "--K", "4", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "K is L = 16" in res.output
    res = r.invoke(main, ["bench", bundle, "--mar", bundles["mar"], "--out", str(tmp_path)])
    assert res.exit_code == 2 and "leave out --mar" in res.output


@pytest.mark.parametrize("graph,n_known", [("causal_prefill", None), ("causal_step", None),
                                           ("causal_recompute", 1), ("causal_recompute", 9)])
def test_causal_backbone_flops_match_torch_counter(graph, n_known):
    from far_export.flops import causal_backbone_flops
    from far_export.synthetic import random_causal_model, tiny_causal_config
    from far_runtime.plan import make_call
    cfg = tiny_causal_config(16, class_tokens=2)
    bb, _ = random_causal_model(cfg, seed=1)
    rows, c = 3, cfg.backbone
    labels = torch.tensor([1, 2, 10])
    with torch.no_grad():
        _, cache = bb.prefill(labels)
    run, call = {
        "causal_prefill": (lambda: bb.prefill(labels), make_call(graph, batch=rows)),
        "causal_step": (lambda: bb.step(torch.randn(rows, c.token_dim), torch.tensor([c.class_tokens + 4]), cache),
                        make_call(graph, batch=rows, slot=0)),
        "causal_recompute": (lambda: bb(torch.randn(rows, n_known or 1, c.token_dim), labels),
                             make_call(graph, batch=rows, n_known=n_known or 1)),
    }[graph]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run()
    assert causal_backbone_flops(asdict(c), call) == counter.get_total_flops()
