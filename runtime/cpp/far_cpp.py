"""ctypes binding of far_runtime.h (the C API of the C++ runtime), for tests and the parity script.

    lib = load_library("runtime/cpp/build/libfar_runtime.so")
    rt = CRuntime(lib, "graphs/demo")
    tokens = rt.tokens([1, 2], K=16, O=8, cfg=3.0, seed=0)      # float32 [B, L, C]; K=0: the model's default
"""
import ctypes

import numpy as np


API_VERSION = 3      # far_runtime.h's FAR_RUNTIME_API_VERSION, whose structs this file mirrors


def load_library(path: str):
    lib = ctypes.CDLL(path)
    lib.far_last_error.restype = ctypes.c_char_p
    if lib.far_api_version() != API_VERSION:
        raise RuntimeError(f"{path} has C API version {lib.far_api_version()}, but far_cpp.py mirrors {API_VERSION}.")
    return lib


def draw_randomness(lib, seed: int, batch: int, seq_len: int, token_dim: int, steps: int = 0):
    """orders, noise, step_noise (None when steps is 0) from the C++ port of numpy's generator."""
    orders = np.zeros((batch, seq_len), np.int64)
    noise = np.zeros((batch, seq_len, token_dim), np.float32)
    step = np.zeros((max(steps, 1), batch, seq_len, token_dim), np.float32)
    rc = lib.far_draw_randomness(ctypes.c_uint64(seed), batch, seq_len, token_dim, steps,
                                 orders.ctypes.data_as(ctypes.c_void_p), noise.ctypes.data_as(ctypes.c_void_p),
                                 step.ctypes.data_as(ctypes.c_void_p))
    if rc:
        raise CError(rc, lib.far_last_error().decode())
    return orders, noise, (step if steps else None)


class LoadOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("provider", ctypes.c_char_p), ("device_id", ctypes.c_int), ("threads", ctypes.c_int),
                ("check_hashes", ctypes.c_int), ("trt_cache_dir", ctypes.c_char_p), ("digest", ctypes.c_char_p)]


class SampleOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("K", ctypes.c_int), ("O", ctypes.c_int), ("cfg", ctypes.c_double),
                ("cfg_schedule", ctypes.c_char_p), ("temperature", ctypes.c_double),
                ("seed", ctypes.c_uint64), ("head", ctypes.c_char_p),
                ("head_schedule", ctypes.c_char_p), ("cfg_interval", ctypes.c_char_p), ("cfg_cache", ctypes.c_char_p)]


class ModelInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("seq_len", "token_dim", "num_classes", "max_batch", "image_size",
                                            "image_channels", "diffusion", "diffusion_steps")]


class RunStats(ctypes.Structure):
    _fields_ = [("total_seconds", ctypes.c_double), ("ort_seconds", ctypes.c_double), ("graph_calls", ctypes.c_int)]


class CRuntime:
    """One far_runtime* loaded through the C API."""

    def __init__(self, lib, bundle: str, provider: str = "cpu", threads: int = 1, digest: str | None = None):
        self.lib = lib
        opts = LoadOptions()
        lib.far_load_options_default(ctypes.byref(opts))
        opts.provider, opts.threads = provider.encode(), threads
        opts.digest = digest.encode() if digest is not None else None
        self.handle = ctypes.c_void_p()
        rc = lib.far_load(bundle.encode(), ctypes.byref(opts), ctypes.byref(self.handle))
        if rc:
            raise CError(rc, lib.far_last_error().decode())
        self.info = ModelInfo()
        assert lib.far_model(self.handle, ctypes.byref(self.info)) == 0

    def options(self, K=0, O=8, cfg=1.0, seed=0, temperature=1.0, head="auto", schedule="linear",
                head_schedule=None, cfg_interval=None, cfg_cache=None):
        """far_sample_options; the acceleration options are strings, None (NULL) for off."""
        o = SampleOptions()
        self.lib.far_sample_options_default(ctypes.byref(o))
        o.K, o.O, o.cfg, o.seed, o.temperature = K, O, cfg, seed, temperature
        o.head, o.cfg_schedule = head.encode(), schedule.encode()
        for k, v in (("head_schedule", head_schedule), ("cfg_interval", cfg_interval), ("cfg_cache", cfg_cache)):
            setattr(o, k, None if v is None else v.encode())
        return o

    def tokens(self, labels, stats=None, **kw) -> np.ndarray:
        lab = np.ascontiguousarray(labels, dtype=np.int64)
        out = np.zeros((len(lab), self.info.seq_len, self.info.token_dim), np.float32)
        rc = self.lib.far_generate_tokens(self.handle, lab.ctypes.data_as(ctypes.c_void_p), len(lab),
                                          ctypes.byref(self.options(**kw)), out.ctypes.data_as(ctypes.c_void_p),
                                          ctypes.c_size_t(out.size), ctypes.byref(stats) if stats is not None else None)
        if rc:
            raise CError(rc, self.lib.far_last_error().decode())
        return out

    def images(self, labels, stats=None, **kw) -> np.ndarray:
        lab = np.ascontiguousarray(labels, dtype=np.int64)
        s = self.info.image_size
        out = np.zeros((len(lab), s, s, 3), np.uint8)
        rc = self.lib.far_generate(self.handle, lab.ctypes.data_as(ctypes.c_void_p), len(lab),
                                   ctypes.byref(self.options(**kw)), out.ctypes.data_as(ctypes.c_void_p),
                                   ctypes.c_size_t(out.size), ctypes.byref(stats) if stats is not None else None)
        if rc:
            raise CError(rc, self.lib.far_last_error().decode())
        return out

    def close(self):
        self.lib.far_free(self.handle)


class CError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message
