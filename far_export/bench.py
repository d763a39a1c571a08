"""``far-export bench``: the PyTorch eager reference and the runtime, side by side.

One command, one report. For each model (FAR, and MAR when given) it starts one worker
process per backend, loads the model once, then for every configuration (K, O, batch, CFG)
runs warm-ups and N measured runs, alternating the backends run by run (A B B A ...) with the
same seeds, so every speed ratio is measured under the same machine load. The report holds:

- per backend: images/s, latency per image (median, p90), the time split into backbone, head,
  VAE decoder and overhead (end-to-end time minus the time inside those components), peak RSS;
- the MAR (diffusion head, its own step count, 100 by default) against FAR (shortcut head,
  O = 8) end to end on the same backbone, with each head's share of time;
- a K x O sweep of the FAR model;
- the machine's measured fp32 matmul peak next to the backbone's achieved FLOP/s.

How time is split. Reference: forward hooks time ``backbone``, ``head`` and ``vae`` module
calls (``perf_counter``); the CFG combine and Euler/DDPM updates between head calls are
outside the head module and count as overhead, as the runtime's numpy code between graph
calls does. Runtime: ``backend.timer`` (time inside ``run_with_iobinding`` per graph).

How memory is measured. Each backend runs in its own worker process, so its peak resident
set is its own: the kernel's high-water mark (VmHWM) is reset before each configuration
(``/proc/self/clear_refs``) and read after it; the runtime worker never imports torch
(reported), so its figure is what a deployment costs. Where the reset is refused, the
figure is the process's lifetime peak (``ru_maxrss``) and the report says so.

Backends: ``pytorch-eager`` and ``onnxruntime-cpu`` run here. TensorRT and CUDA graphs are
listed as unavailable with the reason (no TensorRT here; no CUDA device) -- never faked.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

from far_runtime.errors import FarError

from .bench_report import COMPONENTS, REFERENCE, RUNTIME, markdown, write_report
from .flops import plan_flops

log = logging.getLogger(__name__)

MAR_VS_FAR_O = 8                    # the paper's FAR setting for its 2.3x claim
TENSORRT, TORCH_CUDA = "tensorrt-fp32", "torch-cuda-graphs-fp32"   # GPU backends, when present

# A VAE per preset whose latent grid is sqrt(seq_len) on a side: tiny -> 8x8 images, small
# -> 32x32 (the demo's VAE shape), B -> MAR's kl16 (256x256).
PRESET_VAES = {
    "tiny": dict(embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1),
    "small": dict(embed_dim=16, z_channels=16, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1),
    "B": dict(),                                    # VAEConfig defaults are kl16
}


# --- the models: presets, checkpoints, bundles ---------------------------------------------

def write_preset_models(preset_name: str, folder: str, seed: int = 0) -> dict:
    """Random FAR and MAR checkpoints with the *same backbone weights*, and a random VAE.

    Files (safetensors, heads in the metadata) are reused when present: they depend only on
    the preset and the seed.
    """
    from .checkpoint import model_state_dict, write_safetensors
    from .config import VAEConfig, head_config_for, preset
    from .reference import SimpleMLPAdaLN
    from .synthetic import random_model, write_random_vae
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f"{preset_name}_s{seed}_{k}.{ext}")
             for k, ext in (("far", "safetensors"), ("mar", "safetensors"), ("vae", "pth"))}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    import torch
    cfg = preset(preset_name, "shortcut")
    backbone, far_head = random_model(cfg, seed)
    mar_cfg = head_config_for(cfg.backbone, "diffusion", cfg.head.depth, cfg.head.width)
    g = torch.Generator().manual_seed(seed + 1)
    mar_head = SimpleMLPAdaLN(mar_cfg).init_weights(g).eval()
    meta = {"encoder_heads": cfg.backbone.encoder_heads, "decoder_heads": cfg.backbone.decoder_heads}
    write_safetensors(paths["far"], model_state_dict(backbone, far_head), meta)
    write_safetensors(paths["mar"], model_state_dict(backbone, mar_head), meta)
    write_random_vae(paths["vae"], VAEConfig(**PRESET_VAES[preset_name]), seed + 2)
    return paths


def backbone_digest(checkpoint: str) -> str:
    """sha256 over the backbone's tensors (names, shapes, bytes): equal iff same backbone."""
    from .checkpoint import load_model_checkpoint
    bb, _ = load_model_checkpoint(checkpoint, with_hash=False).split()
    h = hashlib.sha256()
    for k in sorted(bb):
        t = bb[k].contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _is_bundle(path: str) -> bool:
    return os.path.isdir(path)


def _manifest(bundle: str) -> dict:
    from far_runtime.bundle import load_bundle
    return load_bundle(bundle, check_hashes=False).manifest


def ensure_bundle(source: str, vae: str | None, folder: str, head_steps, batch: int, say) -> str:
    """A bundle for ``source``: the folder itself, or one exported from the checkpoint into
    ``folder`` (reused when it came from the same file and covers the O values and batch)."""
    if _is_bundle(source):
        return source
    if not os.path.isfile(source):
        raise FarError(f"{source} is neither a checkpoint file nor a bundle folder.")
    from .checkpoint import sha256_file
    from .export.bundle import export_bundle
    digest = sha256_file(source)
    vae_digest = sha256_file(vae) if vae else None
    man_path = os.path.join(folder, "manifest.json")
    if os.path.isfile(man_path):
        with open(man_path) as f:
            man = json.load(f)
        src = man.get("source", {})
        needed = set(head_steps) if man["model"]["head_kind"] == "shortcut" else set()
        if (src.get("sha256") == digest and src.get("vae_sha256") == vae_digest
                and needed <= set(man.get("head_steps", [])) and man.get("max_batch", 0) >= batch):
            say(f"reusing bundle {folder} (exported from the same checkpoint)")
            return folder
    say(f"exporting {source} to {folder}")
    components = ("backbone", "head", "vae") if vae else ("backbone", "head")
    export_bundle(source, vae, folder, components, head_steps=sorted(set(head_steps)),
                  max_batch=max(batch, 8), progress=say)
    return folder


def reference_source(bundle: str) -> dict:
    """The checkpoint and VAE a bundle was exported from (checked by sha256)."""
    from .checkpoint import sha256_file
    man = _manifest(bundle)
    src = man["source"]
    for path, digest, what in ((src["checkpoint"], src["sha256"], "checkpoint"),
                               (src["vae"], src["vae_sha256"], "VAE")):
        if path is None:
            continue
        if not os.path.isfile(path):
            raise FarError(f"The source {what} {path} of bundle {bundle} is not there, so the "
                           "reference cannot run; pass the checkpoint instead of the bundle.")
        if sha256_file(path) != digest:
            raise FarError(f"The {what} {path} is not the one bundle {bundle} was exported from "
                           "(sha256 differs); pass the checkpoint instead of the bundle.")
    return {"checkpoint": src["checkpoint"], "vae": src["vae"],
            "weights": "model" if src["weights"] == "model" else "ema",
            "heads": (man["config"]["backbone"]["encoder_heads"]
                      if man["config"]["backbone"].get("heads_rule") == "user option" else None)}


# --- workers: one process per backend and model ---------------------------------------------

class ModuleTimer:
    """Seconds per named torch module, from forward pre-hooks and hooks (same shape as the
    runtime's ``GraphTimer``: ``seconds``, ``calls``, ``reset``)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._start = {}

    def attach(self, name: str, module) -> None:
        def pre(mod, args):
            self._start[name] = time.perf_counter()

        def post(mod, args, out):
            self.seconds[name] += time.perf_counter() - self._start.pop(name)
            self.calls[name] += 1
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def component_of(graph: str) -> str:
    if graph == "backbone":
        return "backbone"
    if graph.startswith("head"):
        return "head"
    if graph in ("vae", "vae_decoder"):
        return "vae"
    raise ValueError(graph)


class RuntimeEngine:
    """The torch-free runtime over a bundle (ONNX Runtime today)."""

    name = RUNTIME

    def __init__(self, spec: dict):
        from far_runtime.pipeline import Pipeline
        self.pipe = Pipeline.load(spec["bundle"], threads=spec["threads"])
        self.timer = self.pipe.backend.timer
        m = self.pipe.model
        self.dims = (m["seq_len"], m["token_dim"], m["diffusion_steps"])
        self.decodes = self.pipe.bundle.has("vae_decoder")

    def generate_tokens(self, labels, K, O, cfg, rnd):
        return self.pipe.generate_tokens(labels, K=K, O=O, cfg=cfg, randomness=rnd)

    def decode(self, tokens):
        return self.pipe.decode(tokens)


class TimedBackend:
    """Any runtime backend with a ``GraphTimer`` around ``run`` (for backends without one).
    GPU backends return host arrays, so ``run`` has synchronised when it returns: the time
    includes the host<->device copies of that call."""

    def __init__(self, backend):
        from far_runtime.backends import GraphTimer
        self.inner = backend
        self.name = backend.name
        self.timer = GraphTimer()

    def prepare(self, plan) -> None:
        self.inner.prepare(plan)

    def run(self, call, feeds):
        t0 = time.perf_counter()
        out = self.inner.run(call, feeds)
        self.timer.add(call.graph, time.perf_counter() - t0)
        return out


class GpuEngine(RuntimeEngine):
    """The runtime's loop over a GPU backend (fp32): TensorRT engines or PyTorch with CUDA
    graphs. Only built where ``backend_availability`` says the backend can run."""

    def __init__(self, spec: dict):
        from far_runtime.bundle import load_bundle
        from far_runtime.pipeline import Pipeline
        bundle = load_bundle(spec["bundle"])
        if spec["backend"] == TENSORRT:
            from far_runtime.trt_backend import TrtBackend
            backend = TrtBackend(bundle, precision="fp32")
        else:
            from .torch_cuda_backend import TorchCudaBackend
            backend = TorchCudaBackend(bundle, dtype="fp32", cuda_graphs=True)
        self.name = spec["backend"]
        self.pipe = Pipeline(bundle, TimedBackend(backend))
        self.timer = self.pipe.backend.timer
        m = self.pipe.model
        self.dims = (m["seq_len"], m["token_dim"], m["diffusion_steps"])
        self.decodes = bundle.has("vae_decoder")


class ReferenceEngine:
    """The PyTorch eager reference, its modules timed by hooks."""

    name = REFERENCE

    def __init__(self, spec: dict):
        import torch
        from .reference.pipeline import ReferencePipeline
        torch.set_num_threads(spec["threads"])
        self.torch = torch
        self.pipe = ReferencePipeline.load(spec["checkpoint"], spec["vae"], spec["weights"], spec["heads"])
        # the modules hold copies of the weights; drop the loader's state dicts so the peak
        # RSS is the eager model's, not the model's plus the file's
        for ck in (self.pipe.ckpt, self.pipe.vae_ckpt):
            if ck is not None:
                ck.state_dict.clear()
        import gc
        gc.collect()
        self.timer = ModuleTimer()
        self.timer.attach("backbone", self.pipe.backbone)
        self.timer.attach("head", self.pipe.head)
        self.decodes = self.pipe.vae is not None
        if self.decodes:
            self.timer.attach("vae", self.pipe.vae)
        bb, hd = self.pipe.ckpt.config.backbone, self.pipe.ckpt.config.head
        self.dims = (bb.seq_len, bb.token_dim, hd.diffusion_steps if hd.kind == "diffusion" else 0)

    def generate_tokens(self, labels, K, O, cfg, rnd):
        return self.pipe.tokens(labels, num_iter=K, head_steps=O, cfg=cfg, randomness=rnd)

    def decode(self, tokens):
        return self.pipe.decode(tokens)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_run(engine, labels, K: int, O: int, cfg: float, seed: int) -> dict:
    """One timed end-to-end run: K iterations to token latents, then the VAE decode."""
    from far_runtime.randomness import draw_randomness
    L, C, S = engine.dims
    rnd = draw_randomness(seed, len(labels), L, C, S)        # drawn outside the timed region
    engine.timer.reset()
    t0 = time.perf_counter()
    tokens = engine.generate_tokens(labels, K, O, cfg, rnd)
    t1 = time.perf_counter()
    gen_graph = sum(engine.timer.seconds.values())
    if engine.decodes:
        engine.decode(tokens)
    t2 = time.perf_counter()
    comps = {c: 0.0 for c in COMPONENTS}
    calls = {}
    for g, s in engine.timer.seconds.items():
        comps[component_of(g)] += s
        calls[g] = engine.timer.calls[g]
    comps["overhead"] = (t2 - t0) - sum(comps[c] for c in ("backbone", "head", "vae"))
    tok = tokens.numpy() if hasattr(tokens, "numpy") else np.asarray(tokens)
    return {"total": t2 - t0, "generate": t1 - t0, "decode": t2 - t1,
            "generate_overhead": (t1 - t0) - gen_graph, "components": comps, "calls": calls,
            "tokens": tok}


def worker_main() -> None:
    """A worker process: reads one JSON spec, then JSON requests, one per line, on stdin;
    answers one JSON line each on the original stdout (anything else goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    spec = json.loads(sys.stdin.readline())
    try:
        engine = {REFERENCE: ReferenceEngine, RUNTIME: RuntimeEngine}.get(spec["backend"], GpuEngine)(spec)
    except FarError as e:
        send({"error": str(e)})
        return
    send({"ready": True, "rss_mb": (_status_kb("VmRSS") or 0) / 1024,
          "torch_imported": "torch" in sys.modules, "decodes": engine.decodes})
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "reset_peak":
            send({"reset": _reset_peak_rss()})
            continue
        if req["cmd"] == "peak":
            hwm = _status_kb("VmHWM")
            send({"peak_rss_mb": (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024})
            continue
        try:
            r = measure_run(engine, req["labels"], req["K"], req["O"], req["cfg"], req["seed"])
        except FarError as e:
            send({"error": str(e)})
            continue
        tok = r.pop("tokens")
        if req.get("tokens"):
            r["tokens"] = tok.tolist()
        send(r)
    send({"lifetime_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, spec: dict):
        self.backend = spec["backend"]
        self.proc = subprocess.Popen([sys.executable, "-m", "far_export.bench"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self.ask(spec)
        if "error" in self.info:
            self.close()
            raise FarError(self.info["error"])

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise FarError(f"The {self.backend} worker process exited (status {code}) without an "
                           "answer; its error is printed above.")
        return json.loads(line)

    def close(self) -> dict:
        out = {}
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                out = json.loads(line) if line else {}
            except (BrokenPipeError, json.JSONDecodeError):
                pass
            self.proc.wait()
        return out


# --- measuring -----------------------------------------------------------------------------

def labels_for(batch: int, num_classes: int) -> list[int]:
    return [(3 * i + 1) % num_classes for i in range(batch)]


def measure_config(workers: list, K: int, O: int, batch: int, cfg: float, runs: int, warmup: int,
                   seed: int, num_classes: int, say) -> dict:
    """Warm-ups, then ``runs`` measured runs per backend, alternating backends A B B A ...;
    run r of every backend uses seed ``seed + r``."""
    labels = labels_for(batch, num_classes)
    base = {"cmd": "run", "labels": labels, "K": K, "O": O, "cfg": cfg}
    for w in workers:
        for i in range(warmup):
            r = w.ask({**base, "seed": seed + i})
            if "error" in r:
                raise FarError(r["error"])
    reset = all([w.ask({"cmd": "reset_peak"})["reset"] for w in workers])
    results = {w.backend: [] for w in workers}
    tokens = {}
    for r in range(runs):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            res = w.ask({**base, "seed": seed + r, "tokens": r == 0})
            if "error" in res:
                raise FarError(res["error"])
            if "tokens" in res:
                tokens[w.backend] = np.asarray(res.pop("tokens"), np.float32)
            results[w.backend].append(res)
        say(f"  K={K} O={O} batch={batch} cfg={cfg}: run {r + 1}/{runs}: "
            + ", ".join(f"{b} {results[b][-1]['total']:.3f}s" for b in results))
    out = {"K": K, "O": O, "batch": batch, "cfg": cfg, "runs": runs, "warmup": warmup,
           "peak_rss_scope": "this configuration" if reset else "worker lifetime (reset refused)",
           "labels": labels, "seeds": [seed + r for r in range(runs)], "backends": {}}
    for w in workers:
        out["backends"][w.backend] = summarize(results[w.backend], batch)
        out["backends"][w.backend]["peak_rss_mb"] = w.ask({"cmd": "peak"})["peak_rss_mb"]
    if REFERENCE in tokens and RUNTIME in tokens:
        a, b = tokens[REFERENCE], tokens[RUNTIME]
        out["same_work"] = {"latent_max_abs_diff": float(np.abs(a - b).max()),
                            "latent_max_abs": float(np.abs(a).max())}
        out["speedup"] = (out["backends"][REFERENCE]["latency_median_s"]
                          / out["backends"][RUNTIME]["latency_median_s"])
        out["speedup_paired_median"] = float(np.median(
            [a["total"] / b["total"] for a, b in zip(results[REFERENCE], results[RUNTIME])]))
    if REFERENCE in results:
        ref = out["backends"][REFERENCE]["latency_median_s"]
        out["speedup_over_eager"] = {b: ref / r["latency_median_s"] for b, r in out["backends"].items()
                                     if b != REFERENCE}
    return out


def summarize(runs: list[dict], batch: int) -> dict:
    """Latency (median, p90) and throughput from the per-run totals; the breakdown as means,
    so its parts add up to the mean end-to-end time exactly (shares sum to 1)."""
    totals = np.array([r["total"] for r in runs])
    per_image = totals / batch
    mean_total = float(totals.mean())
    comps = {c: float(np.mean([r["components"][c] for r in runs])) for c in COMPONENTS}
    gen = float(np.mean([r["generate"] for r in runs]))
    gen_over = float(np.mean([r["generate_overhead"] for r in runs]))
    return {"total_s": [float(t) for t in totals],
            "latency_median_s": float(np.median(per_image)),
            "latency_p90_s": float(np.percentile(per_image, 90)),
            "latency_min_s": float(per_image.min()),
            "images_per_s": batch / float(np.median(totals)),
            "mean_total_s": mean_total,
            "breakdown_s": comps,
            "shares": {c: comps[c] / mean_total for c in COMPONENTS},
            "generate_s": gen, "decode_s": float(np.mean([r["decode"] for r in runs])),
            "generate_overhead_share": gen_over / gen if gen > 0 else 0.0,
            "calls": runs[0]["calls"]}


def add_flops(entry: dict, manifest: dict, batch: int, K: int, cfg: float) -> None:
    """Counted backbone/head FLOPs of each backend's run and the FLOP/s it achieved.

    The backbone work is the same for both; the head's is not: the reference evaluates the
    whole head (time, step and condition embedders included) on every row at every step, a
    fused runtime graph embeds the condition once and the time/step once per step.
    """
    from far_runtime.plan import make_plan
    from far_runtime.specs import fused_name
    model = manifest["model"]
    steps = entry["O"]
    fused = model["head_kind"] == "shortcut" and fused_name(steps) in manifest["graphs"]
    for b, r in entry["backends"].items():
        mode = "fused" if fused and b != REFERENCE else "step"
        fl = plan_flops(manifest["config"], make_plan(model, batch, K, steps, cfg != 1.0, mode, False))
        t = r["breakdown_s"]
        r["flops"] = fl
        r["head_mode"] = mode
        r["achieved_gflops"] = {c: (fl[c] / t[c] / 1e9 if t[c] > 0 else None) for c in ("backbone", "head")}


def backend_availability(bundle: str | None = None) -> dict:
    """Which backends can run here; the others with the reason. The GPU backends run the
    runtime's own loop (fp32) where PyTorch sees a CUDA device (CUDA graphs) and, for
    TensorRT, where it is installed and fp32 engines were built for the bundle."""
    out = {REFERENCE: {"available": True}, RUNTIME: {"available": True}}
    try:
        import torch
        cuda = torch.cuda.is_available()
        why_not = (f"PyTorch {torch.__version__} sees no CUDA device"
                   + ("" if torch.version.cuda else " (a CPU-only build)"))
    except ImportError:
        cuda, why_not = False, "PyTorch is not installed"
    out[TORCH_CUDA] = {"available": cuda, "reason": None if cuda else why_not}
    try:
        import tensorrt  # noqa: F401
        trt, trt_why = True, None
    except (ImportError, OSError) as e:
        trt, trt_why = False, ("TensorRT is not installed" if isinstance(e, ImportError)
                               else f"TensorRT does not load ({e})")
    if trt and not cuda:
        trt, trt_why = False, why_not
    if trt and bundle:
        from far_runtime.trt_backend import ENGINE_MANIFEST, default_engine_dir
        edir = default_engine_dir(bundle, "fp32")
        if not os.path.isfile(os.path.join(edir, ENGINE_MANIFEST)):
            trt, trt_why = False, f"no fp32 engines in {edir} (build them with far-export engines)"
    out[TENSORRT] = {"available": trt, "reason": trt_why}
    return out


def machine_load() -> dict:
    with open("/proc/loadavg") as f:
        parts = f.read().split()
    return {"loadavg_1m": float(parts[0]), "loadavg_5m": float(parts[1]),
            "loadavg_15m": float(parts[2]), "cpus": os.cpu_count()}


def run_bench(source: str | None, out: str, preset: str | None = None, mar: str | None = None,
              vae: str | None = None, K: int = 16, O: int = 8, batch: int = 1, cfg: float = 3.0,
              threads: int | None = None, runs: int = 5, warmup: int = 1, sweep_K=(16, 64),
              sweep_O=(1, 2, 4, 8), seed: int = 0, matmul_seconds: float = 1.0, say=None) -> dict:
    """Measure everything, write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
    say = say or log.info
    from far_runtime.schedule import check_head_steps, check_k
    for k in [K, *sweep_K]:
        check_k(k)
    for o in [O, *sweep_O]:
        check_head_steps(o)
    if runs < 1 or warmup < 0 or batch < 1:
        raise FarError(f"--runs and --batch must be at least 1 and --warmup at least 0 "
                       f"(got {runs}, {batch}, {warmup}).")
    if (source is None) == (preset is None):
        raise FarError("Pass either a CHECKPOINT or BUNDLE, or --preset tiny|small|B (not both).")
    if preset and mar:
        raise FarError("--preset writes its own MAR model; leave out --mar (or pass a CHECKPOINT).")
    threads = threads or os.cpu_count() or 1
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    load_before = machine_load()
    head_steps_needed = sorted({O, MAR_VS_FAR_O, *sweep_O})

    models = {}
    same_backbone = None
    if preset:
        files = write_preset_models(preset, os.path.join(out, "models"), seed)
        models["far"] = {"source": files["far"], "vae": files["vae"]}
        models["mar"] = {"source": files["mar"], "vae": files["vae"]}
    else:
        models["far"] = {"source": source, "vae": vae}
        if mar:
            models["mar"] = {"source": mar, "vae": vae}
    for name, m in models.items():
        m["bundle"] = ensure_bundle(m["source"], m["vae"], os.path.join(out, "bundles", name),
                                    head_steps_needed, batch, say)
        m["reference"] = reference_source(m["bundle"])
        m["manifest"] = _manifest(m["bundle"])
    if "mar" in models:
        same_backbone = (backbone_digest(models["far"]["reference"]["checkpoint"])
                         == backbone_digest(models["mar"]["reference"]["checkpoint"]))
        if models["mar"]["manifest"]["model"]["head_kind"] != "diffusion":
            raise FarError("--mar must be a MAR model (diffusion head); its head is a shortcut head.")
    if models["far"]["manifest"]["model"]["head_kind"] != "shortcut":
        raise FarError("The model to benchmark must be a FAR model (shortcut head); pass a MAR "
                       "model with --mar next to its FAR twin.")

    say(f"measuring the fp32 matmul peak ({threads} threads, ~{2 * matmul_seconds:.0f}s)")
    from .flops import measure_matmul_peak
    matmul = measure_matmul_peak(threads, matmul_seconds)

    report = {"command": None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
              "threads": threads, "runs": runs, "warmup": warmup, "seed": seed, "preset": preset,
              "backends": backend_availability(models["far"]["bundle"]), "matmul_peak": matmul,
              "models": {}, "main": None, "mar_vs_far": None, "sweep": [],
              "memory_method": ("peak resident set (VmHWM) of each backend's own worker process, "
                                "reset before each configuration via /proc/self/clear_refs")}
    configs_done = {}

    def run_model(name: str, configs: list[tuple]):
        m = models[name]
        man = m["manifest"]
        avail = backend_availability(m["bundle"])
        specs = [{"backend": REFERENCE, "threads": threads, **m["reference"]},
                 {"backend": RUNTIME, "threads": threads, "bundle": m["bundle"]}]
        specs += [{"backend": b, "threads": threads, "bundle": m["bundle"]}
                  for b in (TORCH_CUDA, TENSORRT) if avail[b]["available"]]
        workers = []
        try:
            for s in specs:
                workers.append(Worker(s))
            info = {w.backend: w.info for w in workers}
            report["models"][name] = {
                "source": m["source"], "bundle": os.path.abspath(m["bundle"]),
                "head_kind": man["model"]["head_kind"], "config": man["config"],
                "model": man["model"], "idle_rss_mb": {b: i["rss_mb"] for b, i in info.items()},
                "torch_imported": {b: i["torch_imported"] for b, i in info.items()}}
            for (k, o) in configs:
                if (name, k, o) in configs_done:
                    continue
                say(f"{name}: K={k} O={o if man['model']['head_kind'] == 'shortcut' else man['model']['diffusion_steps']}")
                entry = measure_config(workers, k, o, batch, cfg, runs, warmup, seed,
                                       man["model"]["num_classes"], say)
                entry["model"] = name
                if man["model"]["head_kind"] == "diffusion":
                    entry["O"] = man["model"]["diffusion_steps"]
                    entry["head"] = "diffusion"
                else:
                    entry["head"] = "shortcut"
                entry["load"] = machine_load()
                add_flops(entry, man, batch, k, cfg)
                configs_done[(name, k, o)] = entry
                # what is measured so far survives an interrupted run
                from far_runtime.files import write_json
                write_json(os.path.join(out, "bench.partial.json"), list(configs_done.values()))
        finally:
            for w in workers:
                life = w.close()
                if name in report["models"] and life:
                    report["models"][name].setdefault("lifetime_peak_rss_mb", {})[w.backend] = \
                        life.get("lifetime_peak_rss_mb")

    far_configs = [(K, O)] + ([(K, MAR_VS_FAR_O)] if "mar" in models else []) + \
                  [(k, o) for k in sweep_K for o in sweep_O]
    run_model("far", far_configs)
    report["main"] = configs_done[("far", K, O)]
    report["sweep"] = [configs_done[("far", k, o)] for k in sweep_K for o in sweep_O]
    if "mar" in models:
        run_model("mar", [(K, 0)])
        report["mar_vs_far"] = mar_vs_far(configs_done[("far", K, MAR_VS_FAR_O)],
                                          configs_done[("mar", K, 0)], same_backbone)
    report["throughput"] = throughput(report)
    report["load"] = {"before": load_before, "after": machine_load()}
    report["seconds"] = time.time() - t_start
    write_report(report, out)
    return report


def mar_vs_far(far: dict, mar: dict, same_backbone: bool | None) -> dict:
    out = {"K": far["K"], "far_O": far["O"], "mar_steps": mar["O"], "same_backbone_weights": same_backbone,
           "far": far, "mar": mar, "backends": {}}
    for b in far["backends"]:
        f, m = far["backends"][b], mar["backends"][b]
        out["backends"][b] = {"far_latency_s": f["latency_median_s"], "mar_latency_s": m["latency_median_s"],
                              "far_speedup_over_mar": m["latency_median_s"] / f["latency_median_s"],
                              "far_head_share": f["shares"]["head"], "mar_head_share": m["shares"]["head"]}
    return out


def throughput(report: dict) -> dict:
    """The backbone's achieved FLOP/s in the main configuration against the matmul peak."""
    peak = report["matmul_peak"]["peak_gflops"]
    nominal = (report["matmul_peak"].get("nominal") or {}).get("gflops")
    out = {"matmul_peak_gflops": peak, "nominal_peak_gflops": nominal, "backends": {}}
    for b, r in report["main"]["backends"].items():
        g = r["achieved_gflops"]["backbone"]
        out["backends"][b] = {"backbone_gflops": g, "backbone_fraction_of_matmul_peak": g / peak if g else None,
                              "backbone_fraction_of_nominal": g / nominal if g and nominal else None,
                              "head_gflops": r["achieved_gflops"]["head"]}
    return out


# --- the command -------------------------------------------------------------------------------

def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FarError(f"{option} takes comma-separated integers, got {text!r}.") from None


def command_line(source, **opts) -> str:
    """The command that reproduces a report, every option spelled out."""
    import shlex
    parts = ["far-export", "bench"] + ([shlex.quote(source)] if source else [])
    for k, v in opts.items():
        if v is not None:
            parts += [f"--{k.replace('_', '-')}", shlex.quote(str(v))]
    return " ".join(parts)


def _command():
    import click

    @click.command()
    @click.argument("source", required=False)
    @click.option("--preset", type=click.Choice(["tiny", "small", "B"]),
                  help="Random FAR and MAR models with the same backbone (and a random VAE) instead of SOURCE.")
    @click.option("--mar", "mar_path", help="MAR checkpoint or bundle with the same backbone, for MAR vs FAR.")
    @click.option("--vae", "vae_path", help="VAE checkpoint (for a CHECKPOINT source).")
    @click.option("--K", "num_iter", default=16, show_default=True, help="Autoregressive iterations.")
    @click.option("--O", "head_steps", default=8, show_default=True, help="FAR head steps.")
    @click.option("--batch", default=1, show_default=True)
    @click.option("--cfg", default=3.0, show_default=True, help="Classifier-free guidance (1.0: none).")
    @click.option("--threads", type=int, help="Threads for both backends (default: all cores).")
    @click.option("--runs", default=5, show_default=True, help="Measured runs per backend and configuration.")
    @click.option("--warmup", default=1, show_default=True, help="Warm-up runs per backend and configuration.")
    @click.option("--sweep-K", "sweep_k", default="16,64", show_default=True, help="K values of the sweep ('' for none).")
    @click.option("--sweep-O", "sweep_o", default="1,2,4,8", show_default=True, help="O values of the sweep.")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--matmul-seconds", default=1.0, show_default=True,
                  help="How long to time the matmul peak, per library.")
    @click.option("--out", default="out/bench", show_default=True, help="Report folder.")
    def bench(source, preset, mar_path, vae_path, num_iter, head_steps, batch, cfg, threads, runs,
              warmup, sweep_k, sweep_o, seed, matmul_seconds, out):
        """Time eager PyTorch against the runtime: latency, breakdown, memory, MAR vs FAR, K x O."""
        if source is None and preset is None:
            from .defaults import default_paths
            source, vae_path = default_paths(None, vae_path)
        sk, so = _int_list(sweep_k, "--sweep-K"), _int_list(sweep_o, "--sweep-O")
        if not sk or not so:
            sk, so = [], []
        report = run_bench(source, out, preset, mar_path, vae_path, num_iter, head_steps, batch, cfg,
                           threads, runs, warmup, sk, so, seed, matmul_seconds,
                           say=lambda m: click.echo(m, err=True))
        report["command"] = command_line(source if preset is None else None, preset=preset, mar=mar_path,
                                         vae=vae_path, K=num_iter, O=head_steps, batch=batch, cfg=cfg,
                                         threads=report["threads"], runs=runs, warmup=warmup,
                                         sweep_K=sweep_k, sweep_O=sweep_o, seed=seed,
                                         matmul_seconds=matmul_seconds, out=out)
        write_report(report, out)
        click.echo(markdown(report))
        click.echo(f"wrote {os.path.join(out, 'bench.json')}, bench.md and bench.png")
    return bench


bench = _command()

if __name__ == "__main__":
    worker_main()
