"""What ``far-export bench`` compares: PyTorch's CPU configurations and the runtime's precisions.

PyTorch peers (one worker process each, the same reference model): eager fp32 (the baseline),
eager bf16 (``torch.autocast("cpu", torch.bfloat16)``: AMX / AVX512-BF16 kernels where the CPU
has them), ``torch.compile`` (inductor) in fp32 and in bf16. Runtime peers: the fp32 bundle
and the bundle rewritten to each precision the toolkit can build (``precision/``), each graph
of it in int8 only where int8 measured faster for that graph (``--int8-min-speedup``).

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
    dtype: str             # what its matrix products run in: fp32, bf16, fp16, int8
    compile: bool = False  # torch.compile (inductor)

    def to_dict(self) -> dict:
        return asdict(self)


PEERS = (Peer(REFERENCE, "pytorch", "fp32"), Peer("pytorch-eager-bf16", "pytorch", "bf16"),
         Peer("pytorch-compile", "pytorch", "fp32", True), Peer("pytorch-compile-bf16", "pytorch", "bf16", True),
         Peer(RUNTIME, "runtime", "fp32"), Peer(RUNTIME + "-int8", "runtime", "int8"),
         Peer(RUNTIME + "-fp16", "runtime", "fp16"), Peer(RUNTIME + "-bf16", "runtime", "bf16"))
BY_NAME = {p.name: p for p in PEERS}
BUILDABLE = ("fp16", "int8")        # runtime precisions precision/convert.py can write


def parse_peers(text: str | None) -> tuple[list[Peer], bool]:
    """``all`` (default) or comma-separated peer names; returns the peers and whether they
    were named explicitly (explicit peers run even where they measured slow)."""
    if not text or text.strip() == "all":
        return list(PEERS), False
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise FarError(f"--peers: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)} or 'all'.")
    chosen = [p for p in PEERS if p.name in names]
    if REFERENCE not in names:
        chosen.insert(0, BY_NAME[REFERENCE])       # the baseline every ratio is against
    return chosen, True


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
