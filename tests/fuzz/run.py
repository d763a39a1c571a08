#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer's options after the target's name):

    python tests/fuzz/run.py manifest tests/fuzz/corpus/manifest -max_total_time=600 -max_len=65536 \
        -dict=tests/fuzz/manifest.dict

New inputs that reach new code are written to the first corpus folder given; a finding
(an exception other than ``FarError``) stops the run and is written as ``crash-*``.
Keep the committed corpora small: merge a run's folder into the committed one with
``-merge=1 tests/fuzz/corpus/<target> NEW_FOLDER`` (libFuzzer reruns this script for a merge:
run it with the environment's python3 first on PATH).
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/

with atheris.instrument_imports(include=["far_runtime", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in TARGETS:
        # libFuzzer reruns argv[0] with its own options for -merge: the target goes by environment
        os.environ["FAR_FUZZ_TARGET"] = args.pop(0)
    target = os.environ.get("FAR_FUZZ_TARGET")
    if target not in TARGETS:
        sys.exit(f"usage: run.py {{{','.join(TARGETS)}}} [CORPUS...] [libFuzzer options]")
    atheris.Setup([sys.argv[0], *args], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
