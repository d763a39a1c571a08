"""The GPU wing: TensorRT engines and their manifest, CUDA, CUDA graphs, device slots.

Nothing here is imported by the CPU core; CUDA and TensorRT themselves are imported lazily
(``cuda_runtime.py``), so the runtime stays importable on any machine.
"""
