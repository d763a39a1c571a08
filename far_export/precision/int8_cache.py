"""The int8 Q/DQ version of one graph, quantised once and kept beside its calibration feeds.

``quantize_graph`` (``int8.py``) is the slow part of an int8 build: on the B preset every
attempt writes and loads a 200-700 MB graph. Which graphs a bundle then keeps in int8 is a
separate choice (``--int8-min-speedup`` on ONNX Runtime, ``--precision auto`` on any backend),
so the quantised graph and what was measured making it are stored in the graph's
calibration cache entry (``convert.FeedCache``: keyed by checkpoint, VAE, graph sha256 and
calibration settings), under a key of the int8 settings that change the result; builds that
differ only in how they choose quantise once. A stored graph whose sha256 differs from the
one recorded is ignored and quantised again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace

from far_runtime.bundle import sha256_file

from .int8 import Int8Settings, quantize_graph

log = logging.getLogger(__name__)


def _short(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def result_key(settings: Int8Settings) -> dict:
    """The int8 settings that change the quantised graph (not ``min_speedup``: a choice)."""
    d = settings.to_dict()
    d.pop("min_speedup", None)
    return {**d, "ranges": settings.calibration_dict()}


def int8_candidate(fp32_path: str, out_path: str, feeds: dict, entry: str, settings: Int8Settings,
                   graph: str, say=None) -> dict:
    """Write the int8 version of ``graph`` to ``out_path`` (only when it fits the error budget)
    and return ``quantize_graph``'s record, plus ``quantized``: "cached" or "now"."""
    say = say or log.info
    os.makedirs(entry, exist_ok=True)
    key = _short(result_key(settings))
    stored, record = (os.path.join(entry, f"int8-{key}{ext}") for ext in (".onnx", ".json"))
    info = _load(record, stored)
    if info is not None:
        if info["precision"] == "int8":
            shutil.copyfile(stored, out_path)
        say(f"{graph}: int8 graph from the calibration cache ({info['precision']})")
        return {**info, "ranges": "cached", "quantized": "cached"}
    ranges = os.path.join(entry, f"int8_ranges-{_short(settings.calibration_dict())}.json")
    info = quantize_graph(fp32_path, out_path, feeds["calibration"], feeds["held_out"], ranges,
                          replace(settings, min_speedup=None), graph, progress=say, timed=False)
    keep = dict(info)
    if info["precision"] == "int8":
        keep["sha256"] = sha256_file(out_path)
        shutil.copyfile(out_path, stored + ".partial")
        os.replace(stored + ".partial", stored)
    with open(record + ".partial", "w") as f:
        json.dump(keep, f)
    os.replace(record + ".partial", record)
    return {**info, "quantized": "now"}


def _load(record: str, stored: str) -> dict | None:
    if not os.path.isfile(record):
        return None
    try:
        with open(record) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable int8 cache record %s (%s)", record, e)
        return None
    if info.get("precision") == "int8":
        if not os.path.isfile(stored) or sha256_file(stored) != info.get("sha256"):
            log.warning("ignoring int8 cache entry %s: its graph is missing or changed", stored)
            return None
    info.pop("sha256", None)
    return info
