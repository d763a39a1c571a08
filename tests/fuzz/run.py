"""Run one fuzz target under atheris (libFuzzer's options after the target's name):

    python tests/fuzz/run.py manifest tests/fuzz/corpus/manifest -max_total_time=600 -max_len=65536 \
        -dict=tests/fuzz/manifest.dict

New inputs that reach new code are written to the first corpus folder given; a finding
(an exception other than ``FarError``) stops the run and is written as ``crash-*``.
Keep the committed corpora small: merge a run's folder into the committed one with
``-merge=1 tests/fuzz/corpus/<target> NEW_FOLDER``.
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/

with atheris.instrument_imports(include=["far_runtime", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{','.join(TARGETS)}}} [CORPUS...] [libFuzzer options]")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[sys.argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
