"""One TensorRT engine from one ONNX graph: the builder calls, and nothing else.

Kept in its own file because its source is part of every engine's cache key
(``builder_code_sha256``): a change of build flags here rebuilds every engine, with no
format number to remember to bump. Written against TensorRT 10.x (JetPack 6 has 10.3) and
11.x alike:
networks are strongly typed (11 has no other kind and ignores the flag, so it is passed to
10 only), INT8 comes from the graph's Q/DQ nodes, and every status the builder returns
(``parse_from_file``, ``add_optimization_profile``, ``build_serialized_network``) is checked.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile

from ..errors import FarError
from ..specs import ComponentSpec
from .engine_manifest import GraphSource

log = logging.getLogger(__name__)


def builder_code_sha256(path: str = __file__) -> str:
    """sha256 of this file: part of every engine's key."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def trt_major(version: str) -> int:
    digits = str(version).split(".")[0]
    return int(digits) if digits.isdigit() else 0


def network_flags(trt_version: str, strongly_typed_bit: int | None) -> int:
    """Network creation flags: STRONGLY_TYPED on TensorRT 10; nothing on 11+, where every
    network is strongly typed and the flag is ignored."""
    if trt_major(trt_version) >= 11 or strongly_typed_bit is None:
        return 0
    return 1 << int(strongly_typed_bit)


def atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TimingCache:
    """One timing cache shared by every engine of a build, saved per GPU and TensorRT version."""

    def __init__(self, trt, path: str):
        self.trt, self.path, self.cache = trt, path, None
        self.data = b""
        if os.path.isfile(path):
            with open(path, "rb") as f:
                self.data = f.read()

    def attach(self, config) -> None:
        if self.cache is None:
            self.cache = config.create_timing_cache(self.data)
            if self.cache is None:          # unreadable (another TensorRT): start afresh
                log.warning("timing cache %s is not usable here; starting a new one", self.path)
                self.cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(self.cache, ignore_mismatch=False):
            log.warning("timing cache %s was made on another device; not used", self.path)

    def save(self) -> None:
        if self.cache is not None:
            atomic_write(self.path, bytes(self.cache.serialize()))


def build_engine(trt, logger, source: GraphSource, spec: ComponentSpec, profiles: list,
                 options: dict, timing: TimingCache | None = None) -> bytes:
    """One serialised engine from one ONNX graph, strongly typed, with the given profiles."""
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(network_flags(trt.__version__, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(source.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FarError(f"TensorRT's ONNX parser rejected {source.path}: {errors} "
                       "(see trt_readiness.json in the bundle).")
    net_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    unknown = net_inputs - set(spec.input_names())
    if unknown:
        raise FarError(f"{source.path} has inputs {sorted(unknown)} that the '{spec.name}' spec does not "
                       "know; it is not a graph of this bundle.")
    config = builder.create_builder_config()
    config.builder_optimization_level = options["optimization_level"]
    if options["workspace_bytes"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options["workspace_bytes"])
    if options["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    level = options["hardware_compatibility"]
    if level != "none":
        levels = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
        value = getattr(trt.HardwareCompatibilityLevel, levels[level], None)
        if value is None:
            raise FarError(f"TensorRT {trt.__version__} has no hardware compatibility level {level}.")
        config.hardware_compatibility_level = value
    if timing is not None:
        timing.attach(config)
    for i, prof in enumerate(profiles):
        p = builder.create_optimization_profile()
        lo, opt, hi = ({d: v[j] for d, v in prof.items()} for j in range(3))
        for t in spec.inputs:
            if t.name in net_inputs:
                p.set_shape(t.name, t.shape(lo), t.shape(opt), t.shape(hi))
        index = config.add_optimization_profile(p)
        if index != i:                          # -1: TensorRT found the profile invalid
            raise FarError(f"TensorRT rejected optimisation profile {prof} of '{spec.name}' "
                           f"(add_optimization_profile returned {index}).")
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise FarError(f"TensorRT could not build an engine for '{spec.name}' (see the log above).")
    return bytes(data)
