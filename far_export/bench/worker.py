"""The worker protocol: one process per engine and model, so each peak RSS is its own.

The parent sends one JSON spec, then one JSON request per line on stdin; the worker answers
one JSON line each on its original stdout (anything else it prints goes to stderr).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys

from far_runtime.errors import FarError

log = logging.getLogger(__name__)

from .engines import GpuEngine, ReferenceEngine, RuntimeEngine, measure_run

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False



def worker_main() -> None:
    """A worker process: reads one JSON spec, then JSON requests, one per line, on stdin;
    answers one JSON line each on the original stdout (anything else goes to stderr)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    spec = json.loads(sys.stdin.readline())
    try:
        engine = {"pytorch": ReferenceEngine, "runtime": RuntimeEngine, "gpu": GpuEngine}[spec["engine"]](spec)
    except FarError as e:
        send({"error": str(e)})
        return
    send({"ready": True, "rss_mb": (_status_kb("VmRSS") or 0) / 1024,
          "torch_imported": "torch" in sys.modules, "decodes": engine.decodes})
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "reset_peak":
            send({"reset": _reset_peak_rss()})
            continue
        if req["cmd"] == "peak":
            hwm = _status_kb("VmHWM")
            send({"peak_rss_mb": (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024})
            continue
        try:
            r = measure_run(engine, req["labels"], req["K"], req["O"], req["cfg"], req["seed"], req.get("mode"))
        except FarError as e:
            send({"error": str(e)})
            continue
        except Exception as e:                   # e.g. torch.compile without a working compiler:
            log.exception("run failed")          # the peer is reported as unable to run, with why
            send({"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"})
            continue
        tok, images = r.pop("tokens"), r.pop("images")
        if req.get("save"):                      # the outputs, for the accuracy comparison
            import numpy as np
            np.savez(req["save"], tokens=tok, **({} if images is None else {"images": images}))
        if req.get("tokens"):
            r["tokens"] = tok.tolist()
        send(r)
    send({"lifetime_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, spec: dict):
        self.backend = spec["backend"]
        self.proc = subprocess.Popen([sys.executable, "-m", "far_export.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self.ask(spec)
        if "error" in self.info:
            self.close()
            raise FarError(self.info["error"])

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise FarError(f"The {self.backend} worker process exited (status {code}) without an "
                           "answer; its error is printed above.")
        return json.loads(line)

    def close(self) -> dict:
        out = {}
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                out = json.loads(line) if line else {}
            except (BrokenPipeError, json.JSONDecodeError):
                pass
            self.proc.wait()
        return out


if __name__ == "__main__":
    worker_main()
