"""Atomic file writes: a temporary name in the same folder, then a rename."""
from __future__ import annotations

import json
import os
import re
import tempfile

from .errors import FarError

_TMP = re.compile(r"^\.tmp-(\d+)-[^-]+-(.+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(directory: str, target: str) -> None:
    """Remove ``.tmp-<pid>-*-<target>`` files whose writer process is gone (killed mid-write)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = _TMP.match(name)
        if m and m.group(2) == target and not _alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename onto ``path``; never leaves a partial file.

    The temporary name carries the writer's pid, so one left by a killed writer (SIGKILL
    runs no cleanup) is recognised and removed by the next write of the same file."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    clean_stale_temporaries(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix="-" + os.path.basename(path),
                               dir=directory)
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


def check_writable_file(path: str, option: str) -> str:
    """Refuse, before any work, an output file path that cannot be written: a folder, a path
    under a file, or a folder this process may not create files in. Creates nothing."""
    if not isinstance(path, str) or not path.strip():
        raise FarError(f"{option} needs a file path, got {path!r}.")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise FarError(f"{option} {path} is a folder; pass a file path such as {os.path.join(path, 'out.png')}.")
    return _check_parent(full, path, option)


def check_writable_folder(path: str, option: str) -> str:
    """Refuse an output folder path under a file, or where no folder can be created."""
    if not isinstance(path, str) or not path.strip():
        raise FarError(f"{option} needs a folder path, got {path!r}.")
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise FarError(f"{option} {path} is a file, not a folder; pass a folder path.")
    return _check_parent(full, path, option)


def _check_parent(full: str, path: str, option: str) -> str:
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FarError(f"{option} {path} lies under {parent}, which is a file, not a folder.")
    try:   # a real probe: os.access says yes to root even on read-only or special file systems
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FarError(f"{option} {path} cannot be written: no files can be created in {parent} "
                       f"({e.strerror}).") from None
    return full
