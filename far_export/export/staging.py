"""Build a bundle beside ``--out`` and swap it in whole: nothing half-written, nothing lost.

    with staged_bundle(out) as staging:     # lock held, leftovers of killed runs cleaned
        ... write every file into ``staging`` ...
    # on success: old bundle renamed aside, staging renamed to out, old removed

A lock file ``.<name>.lock`` next to ``out`` (``fcntl.flock``) admits one build per ``out``;
a second one is refused in one sentence. While the lock is held, ``.<name>.staging-*`` and
``.<name>.old-*`` folders left by a killed run are stale by construction and are removed; an
old bundle moved aside by a run killed mid-swap (``out`` missing) is put back first. The old
bundle stays untouched until the new one is complete; its ``engines/`` folder (engines are
keyed by graph sha256, so stale ones are refused at load) moves into the new bundle.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import uuid

from far_runtime import bundle as rt_bundle
from far_runtime.errors import FarError
from far_runtime.files import check_writable_folder

log = logging.getLogger(__name__)

KEEP = ("engines",)      # what a rebuilt bundle takes over from the one it replaces


def check_out_folder(out: str) -> str:
    """``out`` must be a bundle, an empty folder or a new path; never a file or a user's folder."""
    full = check_writable_folder(out, "--out")
    if os.path.isdir(full) and os.listdir(full) and not os.path.isfile(os.path.join(full, rt_bundle.MANIFEST)):
        raise FarError(f"--out {out} is a folder that holds files but no {rt_bundle.MANIFEST}, so it is "
                       "not a bundle; refusing to replace it (pass a new or empty folder).")
    return full


def _acquire(lock_path: str, out: str) -> int:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FarError(f"Another far-export build is writing {out} (it holds {lock_path}); "
                           "wait for it to finish or choose another --out.") from None
        try:   # the file may have been unlinked by the previous holder between open and flock
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release(fd: int, lock_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)          # unlinked while held, so no one else locks a stale inode
    os.close(fd)


def _clean_leftovers(out: str) -> None:
    parent, name = os.path.split(out)
    olds = sorted(glob.glob(os.path.join(parent, f".{name}.old-*")), key=os.path.getmtime)
    if not os.path.exists(out):
        for old in reversed(olds):
            if os.path.isfile(os.path.join(old, rt_bundle.MANIFEST)):
                log.warning("restoring %s from %s (a previous export was killed mid-swap)", out, old)
                os.rename(old, out)
                olds.remove(old)
                break
    for path in olds + glob.glob(os.path.join(parent, f".{name}.staging-*")):
        log.info("removing %s, left by a killed export", path)
        shutil.rmtree(path, ignore_errors=True)


def _swap(staging: str, out: str) -> None:
    parent, name = os.path.split(out)
    if not os.path.exists(out):
        os.rename(staging, out)
        return
    for keep in KEEP:
        src = os.path.join(out, keep)
        if os.path.isdir(src) and not os.path.exists(os.path.join(staging, keep)):
            shutil.copytree(src, os.path.join(staging, keep), symlinks=True,
                            copy_function=_link_or_copy)   # the old bundle stays whole
    aside = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_bundle(out: str):
    """Yield a staging folder beside ``out``; on a clean exit it becomes ``out`` in one swap."""
    out = check_out_folder(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    lock_path = os.path.join(parent, f".{name}.lock")
    fd = _acquire(lock_path, out)
    staging = os.path.join(parent, f".{name}.staging-{uuid.uuid4().hex[:12]}")
    try:
        _clean_leftovers(out)
        check_out_folder(out)         # again, now that no one else can change it
        os.mkdir(staging)
        yield staging
        _swap(staging, out)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
        _release(fd, lock_path)
