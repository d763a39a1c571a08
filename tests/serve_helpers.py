"""What tests/test_serve.py and tests/test_serve_causal.py share: a real `far-runtime serve` in a
subprocess (its own session, so its Ray processes can be checked gone), concurrent requests,
PNG reading, and the two batch-invariance checks every served bundle must pass."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

from far_runtime.serve.client import FarClient, ServeError


def read_png(data: bytes) -> np.ndarray:
    """Our own encoder's PNGs (8-bit RGB, filter 0) back to [H, W, 3]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, (w, h) = 8, b"", (0, 0)
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[int]:
    """Live processes of one session (the server started its own): Ray's daemons and workers."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d))
    return out


class Server:
    def __init__(self, bundle, *args):
        pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install far-runtime[serve])")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "far_runtime.cli", "serve", bundle, "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.client = FarClient(self.url, timeout=60)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"far-runtime serve exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if self.client.healthz()["status"] == "ok":
                    return
            except Exception:     # noqa: BLE001 - not up yet
                time.sleep(0.5)
        self.stop()
        pytest.fail("far-runtime serve did not become healthy within 150 s")

    def stop(self) -> tuple[int, str, list]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        left = []
        for _ in range(20):                    # Ray's daemons exit right after the driver
            left = session_processes(self.proc.pid)
            if not left:
                break
            time.sleep(0.5)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return self.proc.returncode, self.proc.stdout.read(), left


def concurrently(fn, args):
    """``fn(*a)`` for every ``a`` at once, each from its own thread, started together."""
    barrier = threading.Barrier(len(args))
    out = [None] * len(args)

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(*args[i])
        except ServeError as e:
            out[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def assert_batched_equal_direct(server, pipe, jobs):
    """``jobs`` [(class, settings)] sent at once, twice (latents, then images): requests were
    batched, and each answer is bitwise the request run alone (seed s alone =
    ``draw_randomness(s, 1, ...)``); ONNX Runtime CPU computes each row the same whatever the
    batch (README says so)."""
    before = server.client.info()["serve"]
    lat = concurrently(lambda c, kw: server.client.generate(c, output="latents", **kw), jobs)
    imgs = concurrently(lambda c, kw: server.client.generate(c, output="npy", **kw), jobs)
    after = server.client.info()["serve"]
    assert after["largest_batch"] >= 2, "no two requests were batched together"
    assert after["batches"] - before["batches"] < 2 * len(jobs)
    for (c, kw), latents, image in zip(jobs, lat, imgs):
        alone = pipe.generate_tokens([c], **kw)[0]
        assert latents.shape == alone.shape and np.array_equal(latents, alone)
        direct = pipe.generate([c], **kw)[0]
        assert image.dtype == np.uint8 and np.array_equal(image, direct)


def assert_png_is_generate(server, bundle, out, label, seed):
    """{"class": c, "seed": s} is `far-runtime generate --num 1 --class c --seed s`, pixel for pixel."""
    png = server.client.generate(label, seed=seed)
    subprocess.run([sys.executable, "-m", "far_runtime.cli", "generate", bundle, "--num", "1", "--class", str(label),
                    "--seed", str(seed), "--threads", "1", "--out", str(out)], check=True, capture_output=True)
    served, grid = read_png(png), read_png(out.read_bytes())
    h, w, _ = served.shape
    assert np.array_equal(served, grid[2:2 + h, 2:2 + w])          # grid() pads one image by 2 px
