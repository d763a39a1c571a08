"""Helpers of the bad-input corpus: run a CLI in-process, check the one sentence, and take
snapshots of a folder so a case can prove it left nothing behind and lost nothing."""
import hashlib
import json
import os
import re
import shutil

from click.testing import CliRunner

SENTENCE = re.compile(r"^error: [^\n]+\n?$")


def snapshot(root: str) -> dict:
    """Every path under ``root`` -> sha256 of its bytes (or 'dir' / the target of a link)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_cli(args: list[str], runtime: bool = False):
    """``far-export ARGS`` (or ``far-runtime ARGS``) in this process; returns click's result."""
    if runtime:
        from far_runtime.cli import main
    else:
        from far_export.cli import main
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_one_sentence(code: int, stderr: str, expect: str) -> str:
    """Exit status 2, exactly one line on stderr starting 'error: ', no traceback."""
    assert code == 2, f"exit {code}, stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and SENTENCE.match(lines[0]), stderr
    assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"
    return lines[0][len("error: "):]


def copy_bundle(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(root: str, fn) -> None:
    path = os.path.join(root, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    m = fn(m)
    with open(path, "w") as f:
        json.dump(m, f)
