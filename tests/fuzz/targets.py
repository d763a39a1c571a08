"""Fuzz targets of the runtime's loaders of untrusted bytes (issue 26, cause 9).

Each target takes any bytes and must either accept them or refuse them with one
``FarError``: any other exception (a traceback in the CLI, a 500 in the server) is a finding.

- ``manifest``: ``manifest.json`` bytes through ``bundle.parse_manifest`` (JSON, structure,
  model bounds, buffer sizes), then what a loader computes from an accepted one: the specs,
  the digest, the variant's plan of one request and every path's containment.
- ``manifest_fields``: the same, from a valid FAR, MAR or FAR-Causal manifest with fields
  replaced or removed as the bytes say (byte mutations rarely get past the JSON).
- ``engines``: ``engines.json`` bytes through ``engine_manifest.parse_engine_manifest``, then
  each engine path's containment and the rebuild advice, which must never quote the file.
- ``randomness``: saved-randomness ``.npz`` bytes through ``randomness.read_randomness``.
- ``request``: a ``POST /generate`` body through ``serve.requests.parse_body`` and the
  request checker of a FAR, a MAR and a FAR-Causal pipeline (the checker plans the request
  but runs nothing, so the pipelines need no graphs and no backend).

``python -m tests.fuzz.run TARGET`` runs one under atheris; ``tests/test_trust_fuzz.py``
replays every corpus file (``corpus/<target>/``) as an ordinary test.
"""
from __future__ import annotations

import copy
import io
import json
import os
import re
import shlex
import tempfile
from pathlib import Path

from far_runtime.bundle import Bundle, digest_of, inside, parse_manifest
from far_runtime.errors import FarError
from far_runtime.gpu.engine_manifest import parse_engine_manifest, rebuild_command
from far_runtime.pipeline import Pipeline
from far_runtime.randomness import read_randomness
from far_runtime.serve.requests import RequestChecker, parse_body, parse_output

FOLDER = tempfile.mkdtemp(prefix="far-fuzz-")      # an empty folder the paths must stay inside
REBUILD = "`far-runtime engines b --precision fp32`"
FLAGS = {"--k", "--batch", "--out", "--max-profiles", "--version-compatible", "--hardware-compatible",
         "--optimization-level", "--workspace-gb", "--graphs"}
SAFE = re.compile(r"^[A-Za-z0-9_.:+/-]{1,200}$")

_MODEL = {"seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10, "diffusion_steps": 0,
          "image_size": 8, "image_channels": 3, "head_kind": "shortcut"}
_MODELS = {
    "far": dict(_MODEL),
    "mar": {**_MODEL, "head_kind": "diffusion", "diffusion_steps": 100},
    "causal": {**_MODEL, "kind": "causal", "class_tokens": 2, "context": 17, "depth": 2, "heads": 2,
               "head_dim": 16},
}
_GRAPHS = {"far": ("backbone", "head_step", "head_fused_o1", "head_fused_o2", "head_fused_o8", "vae_decoder"),
           "mar": ("backbone", "head_step", "vae_decoder"),
           "causal": ("causal_prefill", "causal_step", "causal_recompute", "head_step", "head_fused_o2",
                      "vae_decoder")}
_CHECKERS = []


def _checkers():
    """Request checkers of three tiny pipelines built from manifests alone (no graph is run)."""
    if not _CHECKERS:
        for name, model in _MODELS.items():
            manifest = {"model": model, "max_batch": 8, "head_steps": [1, 2, 8] if name == "far" else
                        ([] if name == "mar" else [2]),
                        "graphs": {g: {"file": f"{g}.onnx", "files": {f"{g}.onnx": "0" * 64}} for g in _GRAPHS[name]}}
            _CHECKERS.append(RequestChecker(Pipeline(Bundle(FOLDER, manifest), backend=None)))
    return _CHECKERS


def manifest(data: bytes) -> None:
    try:
        m = parse_manifest(data, "fuzz/manifest.json")
        b = Bundle(FOLDER, m, "0" * 64)
        b.specs()
        digest_of("0" * 64, m["graphs"])
        variant = b.variant
        variant.plan(b.model, 1, None, (m["head_steps"] or [1])[0], True, "fused", True, m["max_batch"])
        for g in b.graphs:
            b.file_paths(g)
    except FarError:
        pass


_SEEDS = [json.loads((Path(__file__).parent / "corpus" / "manifest" / f"{n}.json").read_bytes())
          for n in ("far", "mar", "causal")]


def _leaves(obj, path=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


def _value(kind: int, raw: bytes):
    """A JSON value of one of a dozen kinds, from ``raw`` (8 bytes)."""
    n = int.from_bytes(raw, "little", signed=True)
    return [n, n % 70000, -(n % 5), 2 ** (n % 80), float(n) / 7, None, True, raw.hex()[: n % 17],
            "../" * (n % 4) + "x", [n % 9] * (n % 5), {"a": n % 3}, 1e308 * (n % 3)][kind % 12]


def manifest_fields(data: bytes) -> None:
    """Valid manifests (FAR, MAR, FAR-Causal) with fields replaced or removed as ``data`` says
    (9 bytes an edit: which field, what value), so the checks past the JSON are reached."""
    m = copy.deepcopy(_SEEDS[data[0] % 3] if data else _SEEDS[0])
    for i in range(1, len(data) - 9, 10):
        paths = [p for p, _ in _leaves(m) if p]
        if not paths:
            break
        path = paths[int.from_bytes(data[i:i + 2], "little") % len(paths)]
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if data[i + 2] % 16 == 15:
            del parent[path[-1]]
        else:
            parent[path[-1]] = _value(data[i + 2], data[i + 3:i + 11] if i + 11 <= len(data) else b"\0" * 8)
    manifest(json.dumps(m).encode())


def engines(data: bytes) -> None:
    try:
        m = parse_engine_manifest(data, "fuzz/engines.json", REBUILD)
    except FarError:
        return
    for entry in m["engines"].values():
        try:
            inside(FOLDER, entry["file"], "engine")
        except FarError:
            pass
        advice = rebuild_command("b", "fp16", m, entry, os.path.join(FOLDER, "e"))
        words = shlex.split(advice.strip("`"))       # the project's words and checked values only
        assert advice[0] == advice[-1] == "`" and words[:5] == ["far-runtime", "engines", "b", "--precision", "fp16"]
        assert all(w in FLAGS or SAFE.match(w) for w in words[5:]), advice


def randomness(data: bytes) -> None:
    try:
        read_randomness(io.BytesIO(data), "fuzz.npz")
    except FarError:
        pass


def request(data: bytes) -> None:
    try:
        obj = parse_body(data)
    except FarError:
        return
    for checker in _checkers():
        for output in ("png", parse_output({"latents": "1"})):
            try:
                checker.check(obj, output)
            except FarError:
                pass


TARGETS = {"manifest": manifest, "manifest_fields": manifest_fields, "engines": engines,
           "randomness": randomness, "request": request}
