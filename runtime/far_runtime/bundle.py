"""A bundle on disk: ``manifest.json`` plus the graphs it names, checked before use.

A bundle is untrusted input. Loading refuses, in one sentence, a manifest of the wrong
structure, a path that resolves outside the bundle folder (``..``, absolute, or a symlink
leading out), a graph whose ``file`` is not among its hashed ``files``, and any file whose
sha256 differs from the manifest. ``Bundle.read_verified`` reads a graph file once, hashes
those very bytes and returns them, so what a backend runs is what was checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from .errors import FarError
from .specs import ComponentSpec
from .variants import Variant, check_model, component_specs, variant_for

MANIFEST = "manifest.json"
FORMAT = "far-export-bundle"
FORMAT_VERSION = 1
MAX_BATCH_LIMIT = 1024

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_INTS = {"seq_len": 1, "token_dim": 1, "cond_dim": 1, "num_classes": 1,
               "diffusion_steps": 0, "image_size": 0, "image_channels": 0}


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inside(root: str, name) -> str:
    """``root/name`` with symlinks followed, refused unless it stays inside ``root``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise FarError(f"The bundle manifest names a graph file {name!r}, which is not a file name.")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, name))
    if os.path.isabs(name) or os.path.commonpath([base, real]) != base or real == base:
        raise FarError(f"The bundle names {name!r}, which lies outside the bundle folder "
                       f"{root}; refusing to read it.")
    return real


@dataclass
class Bundle:
    root: str
    manifest: dict

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def variant(self) -> Variant:
        return variant_for(self.model)

    @property
    def graphs(self) -> dict:
        return self.manifest["graphs"]

    def path(self, graph: str) -> str:
        return inside(self.root, self.graphs[graph]["file"])

    def file_paths(self, graph: str) -> dict[str, str]:
        """Every file of ``graph`` (the graph and its external data) -> its checked path."""
        return {f: inside(self.root, f) for f in self.graphs[graph]["files"]}

    def read_verified(self, graph: str, fname: str | None = None) -> bytes:
        """The bytes of one file of ``graph``, read once and checked against the manifest."""
        g = self.graphs[graph]
        fname = fname or g["file"]
        p = inside(self.root, fname)
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            raise FarError(f"Graph file {p} named in the manifest cannot be read ({e.strerror}).") from None
        if sha256_bytes(data) != g["files"][fname]:
            raise FarError(f"Graph file {p} does not match the sha256 in the manifest "
                           "(modified or corrupt since the bundle was checked); rebuild the bundle.")
        return data

    def specs(self) -> dict[str, ComponentSpec]:
        """The specs the exporter used, rebuilt from the manifest's model entry."""
        return component_specs(self.model, self.manifest["max_batch"], self.manifest["head_steps"])

    def has(self, graph: str) -> bool:
        return graph in self.graphs


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_structure(manifest, mpath: str) -> None:
    """Refuse a manifest that is valid JSON of the wrong shape, in one sentence."""
    def bad(what):
        raise FarError(f"{mpath} is not a usable bundle manifest: {what}; rebuild the bundle.")
    if not isinstance(manifest, dict):
        raise FarError(f"{mpath} is not a far-export bundle manifest (a JSON "
                       f"{type(manifest).__name__}, not an object).")
    if manifest.get("format") != FORMAT:
        raise FarError(f"{mpath} is not a far-export bundle manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FarError(f"{mpath} has bundle format version {manifest.get('format_version')!r}, but this "
                       f"runtime reads version {FORMAT_VERSION}; rebuild the bundle with this toolkit.")
    model = manifest.get("model")
    if not isinstance(model, dict):
        bad("it has no 'model' object")
    for key, lo in _MODEL_INTS.items():
        if not _is_int(model.get(key)) or model[key] < lo:
            bad(f"model.{key} is {model.get(key)!r}, not an integer >= {lo}")
    if model.get("head_kind") not in ("shortcut", "diffusion"):
        bad(f"model.head_kind is {model.get('head_kind')!r}, not 'shortcut' or 'diffusion'")
    if model["head_kind"] == "diffusion" and model["diffusion_steps"] < 1:
        bad("a diffusion model has no diffusion_steps")
    if not isinstance(model.get("timestep_respacing", ""), str):
        bad("model.timestep_respacing is not a string")
    check_model(model, bad)               # the variant's own keys (variants/)
    mb = manifest.get("max_batch")
    if not _is_int(mb) or not 1 <= mb <= MAX_BATCH_LIMIT:
        bad(f"max_batch is {mb!r}, not an integer in 1..{MAX_BATCH_LIMIT}")
    hs = manifest.get("head_steps")
    if not isinstance(hs, list) or not all(_is_int(o) and o >= 1 for o in hs):
        bad(f"head_steps is {hs!r}, not a list of positive integers")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        bad("it has no 'graphs' object naming at least one graph")
    for name, g in graphs.items():
        if not isinstance(g, dict) or not isinstance(g.get("files"), dict) or not g["files"]:
            bad(f"graph {name!r} has no 'files' object")
        for fname, digest in g["files"].items():
            if not isinstance(digest, str) or not _SHA256.match(digest):
                bad(f"graph {name!r} lists {fname!r} without a sha256")
        if g.get("file") not in g["files"]:
            raise FarError(f"{mpath} names {g.get('file')!r} as the file of graph {name!r}, but that "
                           "file is not among the graph's hashed files; refusing an unverified graph.")


def load_bundle(root: str, check_hashes: bool = True) -> Bundle:
    """Read and check a bundle: structure, format version, every path inside the folder,
    every file present with its recorded sha256."""
    mpath = os.path.join(root, MANIFEST)
    if os.path.isfile(root):
        raise FarError(f"{root} is a file, not a bundle folder; pass the folder that holds {MANIFEST}.")
    if not os.path.isdir(root):
        raise FarError(f"Bundle folder {root} does not exist; create one with 'far-export build'.")
    if not os.path.isfile(mpath):
        raise FarError(f"{root} has no {MANIFEST}, so it is not a far-export bundle "
                       "(or its export did not finish).")
    inside(root, MANIFEST)            # a manifest that is a symlink out of the folder is refused too
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FarError(f"{mpath} is not valid JSON ({getattr(e, 'msg', None) or e.reason}).") from None
    except (OSError, RecursionError) as e:
        raise FarError(f"{mpath} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__}).") from None
    check_structure(manifest, mpath)
    bundle = Bundle(root, manifest)
    for name in manifest["graphs"]:
        for fname, p in bundle.file_paths(name).items():
            if not os.path.isfile(p):
                raise FarError(f"Graph file {os.path.join(root, fname)} named in the manifest is missing.")
            if check_hashes:
                try:
                    digest = sha256_file(p)
                except OSError as e:
                    raise FarError(f"Graph file {p} cannot be read ({e.strerror}).") from None
                if digest != manifest["graphs"][name]["files"][fname]:
                    raise FarError(f"Graph file {p} does not match the sha256 in the manifest "
                                   "(modified or corrupt); rebuild the bundle.")
    return bundle
