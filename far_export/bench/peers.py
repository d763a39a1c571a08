"""What ``far-export bench`` compares: PyTorch's CPU configurations and the runtime's precisions.

PyTorch peers (one worker process each, the same reference model): eager fp32 (the baseline),
eager bf16 (``torch.autocast("cpu", torch.bfloat16)``: AMX / AVX512-BF16 kernels where the CPU
has them), ``torch.compile`` (inductor) in fp32 and in bf16. Runtime peers, on ONNX Runtime:
the fp32 bundle and the bundle rewritten to each precision the toolkit can build
(``precision/``), each graph of it in int8 only where int8 measured faster for that graph
(``--int8-min-speedup``); on OpenVINO: the fp32 bundle computed in fp32 and in bf16 (a CPU
with bf16 units), the int8 bundle (every graph int8 where its error budget allows), and the
``--precision auto`` bundle measured on OpenVINO (per graph the fastest passing of fp32,
bf16, int8), run as it records. ``--backend`` keeps one backend's runtime peers.

By default every peer runs, except one whose kernels measured slower than fp32's on this
machine (bf16 on a CPU without bf16 units runs ~50x slower than fp32: a run of the B model
would take hours), which is listed with the measured figures as its reason; naming a peer in
``--peers`` runs it regardless. A peer that fails to build or run is listed with its error.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass

from far_runtime.errors import FarError

from .report import REFERENCE, RUNTIME


@dataclass(frozen=True)
class Peer:
    name: str
    engine: str            # "pytorch" or "runtime"
    dtype: str             # what its matrix products run in: fp32, bf16, fp16, int8 ("auto": per graph)
    compile: bool = False  # torch.compile (inductor)
    backend: str | None = None       # runtime: "onnxruntime" or "openvino"
    bundle: str = "fp32"             # runtime: which bundle (BUNDLES)
    precision: str | None = None     # runtime: the run's --precision (None: the bundle's record)

    def to_dict(self) -> dict:
        return asdict(self)


OV = "openvino-cpu"
PEERS = (Peer(REFERENCE, "pytorch", "fp32"), Peer("pytorch-eager-bf16", "pytorch", "bf16"),
         Peer("pytorch-compile", "pytorch", "fp32", True), Peer("pytorch-compile-bf16", "pytorch", "bf16", True),
         Peer(RUNTIME, "runtime", "fp32", backend="onnxruntime"),
         Peer(RUNTIME + "-int8", "runtime", "int8", backend="onnxruntime", bundle="int8"),
         Peer(RUNTIME + "-fp16", "runtime", "fp16", backend="onnxruntime", bundle="fp16"),
         Peer(RUNTIME + "-bf16", "runtime", "bf16", backend="onnxruntime"),
         Peer(OV, "runtime", "fp32", backend="openvino", precision="fp32"),
         Peer(OV + "-bf16", "runtime", "bf16", backend="openvino", precision="bf16"),
         Peer(OV + "-int8", "runtime", "int8", backend="openvino", bundle="int8-all", precision="fp32"),
         Peer(OV + "-auto", "runtime", "auto", backend="openvino", bundle="auto-openvino"))
BY_NAME = {p.name: p for p in PEERS}
BUILDABLE = ("fp16", "int8")        # runtime precisions precision/convert.py can write
# the bundles runtime peers run: the fp32 export and what the precision rewriter makes of it
BUNDLES = {"fp32": None, "int8": "int8 per graph where int8 measured faster (ONNX Runtime, one thread)",
           "int8-all": "int8 wherever the error budget allows", "fp16": "fp16",
           "auto-openvino": "per graph the fastest passing of fp32/bf16/int8, measured on OpenVINO"}
RUNTIME_BACKENDS = ("onnxruntime", "openvino")


def parse_peers(text: str | None, backend: str = "all") -> tuple[list[Peer], bool]:
    """``all`` (default) or comma-separated peer names; returns the peers and whether they
    were named explicitly (explicit peers run even where they measured slow). ``backend``
    (``--backend``: all, onnxruntime or openvino) keeps the runtime peers of that backend;
    eager fp32 and the ONNX Runtime fp32 runtime always run (every ratio's baselines)."""
    if backend not in ("all", *RUNTIME_BACKENDS):
        raise FarError(f"--backend must be all, {' or '.join(RUNTIME_BACKENDS)}, got {backend!r}.")
    if not text or text.strip() == "all":
        chosen, explicit = list(PEERS), False
    else:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise FarError(f"--peers: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)} or 'all'.")
        chosen, explicit = [p for p in PEERS if p.name in names], True
        if REFERENCE not in names:
            chosen.insert(0, BY_NAME[REFERENCE])       # the baseline every ratio is against
    if backend != "all":
        chosen = [p for p in chosen if p.engine != "runtime" or p.backend == backend or p.name == RUNTIME]
        if RUNTIME not in [p.name for p in chosen]:
            chosen.insert(1, BY_NAME[RUNTIME])
    return chosen, explicit


def _fmt(g) -> str:
    return f"{g:.1f}" if g else "n/a"


def skip_reason(peer: Peer, peaks: dict, explicit: bool) -> str | None:
    """Why ``peer`` does not run here (None: it runs), from the measured matmul peaks."""
    lib = peaks["libraries"]
    cpu = peaks.get("cpu", {})
    units = ", ".join(f for f in ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni") if cpu.get(f)) or "none"
    if peer.engine == "pytorch":
        if peer.compile and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return "torch.compile (inductor) needs a C++ compiler and none is on PATH"
        if peer.dtype == "bf16" and not explicit:
            b, f = lib["bf16"]["torch"]["gflops"], lib["fp32"]["torch"]["gflops"]
            if not b or b < f:
                return (f"torch bf16 matmul measured {_fmt(b)} GFLOP/s here against fp32 {_fmt(f)} "
                        f"(CPU bf16/AMX units: {units}), so a bf16 run would be ~{f / max(b or 1e-9, 1e-9):.0f}x "
                        f"slower than fp32; name it in --peers to run it anyway")
        return None
    if peer.backend == "openvino":
        return openvino_reason(peer)
    if peer.dtype == "fp32":
        return None
    if peer.dtype not in BUILDABLE:
        ort = lib.get(peer.dtype, {}).get("onnxruntime", {})
        return (f"the precision rewriter has no {peer.dtype} mode"
                + (f"; {ort['reason']}" if ort.get("reason") else ""))
    if peer.dtype == "fp16" and not explicit:
        h, f = lib["fp16"]["onnxruntime"], lib["fp32"]["onnxruntime"]["gflops"]
        if not h.get("gflops") or h["gflops"] < f:
            return (f"ONNX Runtime fp16 MatMul measured {_fmt(h.get('gflops'))} GFLOP/s here against fp32 "
                    f"{_fmt(f)} (kernels {', '.join(h.get('kernels', [])) or h.get('reason', '?')}: it casts "
                    "to fp32), so an fp16 bundle is slower on this CPU; name it in --peers to run it anyway")
    return None


def openvino_reason(peer: Peer) -> str | None:
    """Why an OpenVINO peer cannot run here (not installed; bf16 without bf16 units), or None."""
    from far_runtime.backends import check_choice
    try:
        check_choice("openvino", peer.precision)
    except FarError as e:
        return str(e).rstrip(".")
    return None


def choose(peers: list[Peer], peaks: dict, explicit: bool) -> tuple[list[Peer], dict]:
    """The peers that run, and ``{name: reason}`` for those that do not."""
    run, skipped = [], {}
    for p in peers:
        why = skip_reason(p, peaks, explicit)
        if why:
            skipped[p.name] = why
        else:
            run.append(p)
    return run, skipped
