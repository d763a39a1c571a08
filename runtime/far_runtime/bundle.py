"""A bundle on disk: ``manifest.json`` plus the graphs it names, checked before use."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from .errors import FarError
from .specs import ComponentSpec, component_specs

MANIFEST = "manifest.json"
FORMAT = "far-export-bundle"
FORMAT_VERSION = 1


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    root: str
    manifest: dict

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def graphs(self) -> dict:
        return self.manifest["graphs"]

    def path(self, graph: str) -> str:
        return os.path.join(self.root, self.graphs[graph]["file"])

    def specs(self) -> dict[str, ComponentSpec]:
        """The specs the exporter used, rebuilt from the manifest's model entry."""
        return component_specs(self.model, self.manifest["max_batch"], self.manifest["head_steps"])

    def has(self, graph: str) -> bool:
        return graph in self.graphs


def load_bundle(root: str, check_hashes: bool = True) -> Bundle:
    """Read and check a bundle: format version, every file present with its recorded sha256."""
    mpath = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise FarError(f"Bundle folder {root} does not exist; create one with 'far-export build'.")
    if not os.path.isfile(mpath):
        raise FarError(f"{root} has no {MANIFEST}, so it is not a far-export bundle "
                       "(or its export did not finish).")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FarError(f"{mpath} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}).") from None
    if manifest.get("format") != FORMAT:
        raise FarError(f"{mpath} is not a far-export bundle manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FarError(f"{mpath} has bundle format version {manifest.get('format_version')}, but this "
                       f"runtime reads version {FORMAT_VERSION}; rebuild the bundle with this toolkit.")
    if check_hashes:
        for name, g in manifest["graphs"].items():
            for fname, digest in g["files"].items():
                p = os.path.join(root, fname)
                if not os.path.isfile(p):
                    raise FarError(f"Graph file {p} named in the manifest is missing.")
                if sha256_file(p) != digest:
                    raise FarError(f"Graph file {p} does not match the sha256 in the manifest "
                                   "(modified or corrupt); rebuild the bundle.")
    return Bundle(root, manifest)
