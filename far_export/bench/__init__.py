"""``far-export bench``: PyTorch's CPU configurations and the runtime's precisions, side by side.

Peers (``peers.py``): PyTorch eager fp32 (the baseline), eager bf16 (autocast), torch.compile
fp32 and bf16; the runtime on the fp32 bundle and on the bundles the precision rewriter builds
from it (int8 per graph only where it measured faster). Every peer runs by default, except
those whose kernels measured slower than fp32 here (``peaks.py``: the matmul peak per dtype
and library), which are listed with the figures; a peer that fails says why. Each peer's first
run is compared with eager fp32's (``compare.py``: latent error, image PSNR, the gate), and
``summary`` names the fastest passing PyTorch and runtime configurations.

One command, one report. For each model (FAR or FAR-Causal, and MAR when given beside FAR)
it starts one worker process per backend, loads the model once, then for every configuration
(K, O, the variant's loop, batch, CFG) runs warm-ups and N measured runs, alternating the backends run by run (A B B A ...) with the
same seeds, so every speed ratio is measured under the same machine load. The report holds:

- per backend: images/s, latency per image (median, p90), the time split into backbone, head,
  VAE decoder and overhead (end-to-end time minus the time inside those components), peak RSS;
- the MAR (diffusion head, its own step count, 100 by default) against FAR (shortcut head,
  O = 8) end to end on the same backbone, with each head's share of time;
- a K x O sweep of the FAR model; for FAR-Causal (K is L) its loops x O, with the KV cache
  against recomputing the prefix (``loops``);
- the machine's measured matmul peak per dtype next to the backbone's achieved FLOP/s, each
  backbone against the peak of the dtype it runs in.

How time is split. Reference: forward hooks time ``backbone``, ``head`` and ``vae`` module
calls (``perf_counter``; FAR-Causal's ``prefill`` and ``step``, called directly, are wrapped); the CFG combine and Euler/DDPM updates between head calls are
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
from .cli import bench
from .engines import TimedBackend
from .models import TENSORRT, TORCH_CUDA, backbone_digest, write_preset_models
from .report import COMPONENTS, REFERENCE, RUNTIME, markdown, write_report
from .sweep import run_bench

__all__ = ["bench", "run_bench", "TimedBackend", "backbone_digest", "write_preset_models", "COMPONENTS",
           "REFERENCE", "RUNTIME", "TENSORRT", "TORCH_CUDA", "markdown", "write_report"]
