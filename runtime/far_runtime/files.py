"""Atomic file writes: a temporary name in the same folder, then a rename."""
from __future__ import annotations

import json
import os
import tempfile


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``; never leaves a partial file."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON (numpy scalars as numbers), written atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
    atomic_write(path, write)


def write_text(path: str, text: str) -> None:
    """``text`` written atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def _json_default(o):
    if hasattr(o, "dtype") and getattr(o, "shape", None) == ():   # numpy scalar
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
