"""A bundle on disk: ``manifest.json`` plus the graphs it names, checked before use.

A bundle is untrusted input. Loading refuses, in one sentence, a manifest over 64 MB (checked
before it is read), a manifest of the wrong structure, a model entry with a field outside its
bounds or buffers over ``limits.MAX_BUFFER_BYTES`` at the bundle's largest shapes, a path that
resolves outside the bundle folder (``..``, absolute, or a symlink leading out), a graph whose
``file`` is not among its hashed ``files``, and any file whose sha256 differs from the
manifest. ``Bundle.read_verified`` reads a graph file once, hashes those very bytes and
returns them, so what a backend runs is what was checked.

The bundle digest (the integrity root; README "Bundle digest"): sha256 over the lines
``"<sha256>  <name>\\n"`` (``sha256sum``'s format) of ``manifest.json`` and of every file the
manifest names, sorted by name (UTF-8 bytes). The manifest's own hash pins the model entry
and every graph hash, so a loader given the expected digest (``load_bundle(root,
digest=...)``) runs exactly the bundle that was pinned.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from .errors import FarError
from .heads import randomness_steps
from .limits import buffer_bytes, check_bounds, is_int, shown
from .schedule import valid_head_steps
from .specs import ComponentSpec
from .variants import Variant, check_model, component_specs, variant_for

MANIFEST = "manifest.json"
FORMAT = "far-export-bundle"
FORMAT_VERSION = 1
MAX_BATCH_LIMIT = 1024
MAX_MANIFEST_BYTES = 64 << 20          # the C++ runtime's limit (runtime/cpp/src/bundle.cpp)
MAX_GRAPHS, MAX_FILES = 256, 4096
PRECISIONS = ("fp32", "fp16", "int8")

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
GRAPH_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Every field of the shared model entry: (smallest, largest). The largest are far beyond any
# FAR/MAR model (FAR-H: 256 tokens of 16, width 1280, 1000 classes) yet keep every product
# of them finite and checkable; a variant bounds its own fields (variants/*.py).
MODEL_BOUNDS = {"seq_len": (1, 65536), "token_dim": (1, 4096), "cond_dim": (1, 65536),
                "num_classes": (1, 1_000_000), "diffusion_steps": (0, 1000),
                "image_size": (0, 16384), "image_channels": (0, 4)}
MAX_RESPACING_CHARS = 256


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inside(root: str, name, what: str = "bundle") -> str:
    """``root/name`` with symlinks followed, refused unless it stays inside ``root``.

    ``what`` names the folder in the sentence: ``bundle`` or ``engine`` (``engines.json``'s
    entries go through the very same rules)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise FarError(f"The {what} manifest names a file {shown(name)}, which is not a file name.")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, name))
    if os.path.isabs(name) or os.path.commonpath([base, real]) != base or real == base:
        raise FarError(f"The {what} manifest names {shown(name)}, which lies outside the {what} folder "
                       f"{root}; refusing to read it.")
    return real


@dataclass
class Bundle:
    root: str
    manifest: dict
    manifest_sha256: str | None = None      # of the very bytes parsed (load_bundle)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def variant(self) -> Variant:
        return variant_for(self.model)

    @property
    def graphs(self) -> dict:
        return self.manifest["graphs"]

    @property
    def digest(self) -> str:
        """The bundle digest (module docstring): manifest bytes and every file it names."""
        if self.manifest_sha256 is None:
            raise FarError("This bundle was not read from disk, so it has no digest.")
        return digest_of(self.manifest_sha256, self.graphs)

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


def digest_of(manifest_sha256: str, graphs: dict) -> str:
    files = {MANIFEST: manifest_sha256}
    for g in graphs.values():
        files.update(g["files"])
    lines = "".join(f"{files[n]}  {n}\n" for n in sorted(files, key=lambda n: n.encode("utf-8")))
    return sha256_bytes(lines.encode("utf-8"))


def check_digest_text(digest, option: str = "digest") -> str:
    """An expected digest as given by a user: 64 hex digits (either case), lower-cased."""
    if not isinstance(digest, str) or not SHA256_HEX.match(digest.strip().lower()):
        raise FarError(f"The expected {option} must be 64 hexadecimal digits (a bundle digest as "
                       "'far-runtime info' prints it).")
    return digest.strip().lower()


def check_digest(bundle: Bundle, expected: str, option: str = "digest") -> None:
    want = check_digest_text(expected, option)
    if bundle.digest != want:
        raise FarError(f"Bundle {bundle.root} has digest {bundle.digest}, not the expected {want}; "
                       "refusing a bundle other than the one pinned.")


def check_sizes(manifest: dict, bad) -> None:
    """Every buffer a run of this bundle can allocate, at the largest shape each graph's
    profile allows, and the randomness of a full batch: each under ``limits.MAX_BUFFER_BYTES``."""
    model, mb = manifest["model"], manifest["max_batch"]
    try:
        for spec in component_specs(model, mb, manifest["head_steps"]).values():
            top = {d: r[2] for d, r in spec.ranges.items()}
            for t in spec.inputs + spec.outputs:
                buffer_bytes(t.shape(top), np.dtype(t.dtype).itemsize,
                             f"Graph {spec.name}'s {t.name} of the largest run")
        L, C = model["seq_len"], model["token_dim"]
        buffer_bytes((max(1, randomness_steps(model)), mb, L, C), 4, "The randomness of a full batch")
    except FarError as e:
        bad(str(e).rstrip("."))


def _check_model(manifest: dict, graphs: dict, bad) -> None:
    model = manifest.get("model")
    if not isinstance(model, dict):
        bad("it has no 'model' object")
    check_bounds(model, MODEL_BOUNDS, bad)
    if model.get("head_kind") not in ("shortcut", "diffusion"):
        bad(f"model.head_kind is {shown(model.get('head_kind'), 40)}, not 'shortcut' or 'diffusion'")
    respacing = model.get("timestep_respacing", "")
    if not isinstance(respacing, str) or len(respacing) > MAX_RESPACING_CHARS:
        bad(f"model.timestep_respacing is not a string of at most {MAX_RESPACING_CHARS} characters")
    if model["head_kind"] == "diffusion":
        if model["diffusion_steps"] < 1:
            bad("a diffusion model has no diffusion_steps")
        try:
            randomness_steps(model)
        except FarError as e:
            bad(f"its respacing cannot be used ({str(e).rstrip('.')})")
    check_model(model, bad)               # the variant's own keys and bounds (variants/)
    if "vae_decoder" in graphs and model["image_channels"] != 3:
        bad(f"model.image_channels is {model['image_channels']}, but the runtime decodes RGB images (3)")


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
        raise FarError(f"{mpath} has bundle format version {shown(manifest.get('format_version'), 40)}, "
                       f"but this runtime reads version {FORMAT_VERSION}; rebuild the bundle with this toolkit.")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        bad("it has no 'graphs' object naming at least one graph")
    _check_model(manifest, graphs, bad)
    mb = manifest.get("max_batch")
    if not is_int(mb) or not 1 <= mb <= MAX_BATCH_LIMIT:
        bad(f"max_batch is {shown(mb, 40)}, not an integer in 1..{MAX_BATCH_LIMIT}")
    hs = manifest.get("head_steps")
    if not isinstance(hs, list) or len(hs) > 8 or not all(is_int(o) and valid_head_steps(o) for o in hs):
        bad(f"head_steps is {shown(hs, 60)}, not a list of powers of two in 1..128")
    if manifest.get("precision", "fp32") not in PRECISIONS:
        bad(f"precision is {shown(manifest.get('precision'), 40)}, not one of {', '.join(PRECISIONS)}")
    _check_graphs(graphs, mpath, bad)
    check_sizes(manifest, bad)


def _check_graphs(graphs: dict, mpath: str, bad) -> None:
    if len(graphs) > MAX_GRAPHS:
        bad(f"it names over {MAX_GRAPHS} graphs")
    total = 0
    for name, g in graphs.items():
        if not GRAPH_NAME.match(name):
            bad(f"it names a graph {shown(name, 60)}, not a plain name of letters, digits, '_', '.' or '-'")
        if not isinstance(g, dict) or not isinstance(g.get("files"), dict) or not g["files"]:
            bad(f"graph {shown(name, 60)} has no 'files' object")
        total += len(g["files"])
        if total > MAX_FILES:
            bad(f"it names over {MAX_FILES} files")
        for fname, digest in g["files"].items():
            if not isinstance(digest, str) or not SHA256_HEX.match(digest):
                bad(f"graph {shown(name, 60)} lists {shown(fname, 60)} without a sha256")
            if CONTROL_CHARS.search(fname):
                bad(f"graph {shown(name, 60)} names a file with control characters, {shown(fname, 60)}")
        if g.get("precision", "fp32") not in PRECISIONS:
            bad(f"graph {shown(name, 60)} has precision {shown(g.get('precision'), 40)}")
        if not isinstance(g.get("file"), str) or g["file"] not in g["files"]:
            raise FarError(f"{mpath} names {shown(g.get('file'))} as the file of graph {shown(name, 60)}, but that "
                           "file is not among the graph's hashed files; refusing an unverified graph.")


def read_manifest(mpath: str) -> tuple[dict, str]:
    """The parsed and checked manifest and the sha256 of the very bytes parsed; its size is
    checked (``os.fstat``) before a byte is read, and the read itself is bounded."""
    too_large = FarError(f"{mpath} is too large to be a bundle manifest.")
    try:
        with open(mpath, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise too_large
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise FarError(f"{mpath} cannot be read ({e.strerror or type(e).__name__}).") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise too_large
    return parse_manifest(data, mpath), sha256_bytes(data)


def parse_manifest(data: bytes, mpath: str) -> dict:
    """The checked manifest of these bytes (what ``read_manifest`` read; the fuzz target)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FarError(f"{mpath} is not valid JSON ({getattr(e, 'msg', None) or e.reason}).") from None
    except (RecursionError, ValueError) as e:     # ValueError: e.g. Python's int-digit limit
        raise FarError(f"{mpath} cannot be read ({type(e).__name__}).") from None
    check_structure(manifest, mpath)
    return manifest


def load_bundle(root: str, check_hashes: bool = True, digest: str | None = None) -> Bundle:
    """Read and check a bundle: size, structure, format version, every path inside the folder,
    every file present with its recorded sha256; with ``digest``, the bundle digest too."""
    if digest is not None:
        check_digest_text(digest)
    mpath = os.path.join(root, MANIFEST)
    if os.path.isfile(root):
        raise FarError(f"{root} is a file, not a bundle folder; pass the folder that holds {MANIFEST}.")
    if not os.path.isdir(root):
        raise FarError(f"Bundle folder {root} does not exist; create one with 'far-export build'.")
    if not os.path.isfile(mpath):
        raise FarError(f"{root} has no {MANIFEST}, so it is not a far-export bundle "
                       "(or its export did not finish).")
    inside(root, MANIFEST)            # a manifest that is a symlink out of the folder is refused too
    manifest, manifest_sha = read_manifest(mpath)
    bundle = Bundle(root, manifest, manifest_sha)
    if digest is not None:
        check_digest(bundle, digest)
    for name in manifest["graphs"]:
        for fname, p in bundle.file_paths(name).items():
            if not os.path.isfile(p):
                raise FarError(f"Graph file {os.path.join(root, fname)} named in the manifest is missing.")
            if check_hashes:
                try:
                    file_digest = sha256_file(p)
                except OSError as e:
                    raise FarError(f"Graph file {p} cannot be read ({e.strerror}).") from None
                if file_digest != manifest["graphs"][name]["files"][fname]:
                    raise FarError(f"Graph file {p} does not match the sha256 in the manifest "
                                   "(modified or corrupt); rebuild the bundle.")
    return bundle


def bundle_digest(root: str) -> str:
    """The digest of the bundle at ``root``, every file's sha256 checked first (what
    ``far-export build`` and ``far-runtime info`` print, and apps pin)."""
    return load_bundle(root).digest
