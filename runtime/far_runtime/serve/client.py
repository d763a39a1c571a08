"""A client for ``far-runtime serve`` with nothing but the standard library (and numpy for .npy).

    from far_runtime.serve.client import FarClient
    c = FarClient("http://127.0.0.1:8000")
    png = c.generate(3, seed=7)                      # PNG bytes
    img = c.generate(3, seed=7, output="npy")        # uint8 [H, W, 3]
    lat = c.generate(3, seed=7, output="latents")    # float32 [L, C] token latents
    c.info()

A refused request raises ``ServeError`` with the server's sentence and the HTTP status
(400 for a bad request, 503 when the server's queue is full).
"""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

from ..errors import FarError

QUERIES = {"png": "", "npy": "?format=npy", "latents": "?latents=1"}


class ServeError(FarError):
    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


def _sentence(status: int, body: bytes) -> str:
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return text or f"The server answered HTTP {status}."


class FarClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, path: str, payload: dict | bytes | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request; HTTP errors are answers, not exceptions."""
        data = None
        headers = {}
        if payload is not None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers.get("Content-Type", ""), e.read()
        except (urllib.error.URLError, OSError) as e:
            raise FarError(f"Cannot reach {self.url} ({getattr(e, 'reason', e)}).") from None

    def _json(self, path: str) -> dict:
        status, _, body = self.request(path)
        if status != 200:
            raise ServeError(status, _sentence(status, body))
        return json.loads(body)

    def healthz(self) -> dict:
        return self._json("/healthz")

    def info(self) -> dict:
        return self._json("/info")

    def generate_raw(self, label: int, output: str = "png", **settings) -> bytes:
        """The response body for one request: settings are seed, K, O, cfg, cfg_schedule, temperature."""
        status, _, body = self.request("/generate" + QUERIES[output], {"class": label, **settings})
        if status != 200:
            raise ServeError(status, _sentence(status, body))
        return body

    def generate(self, label: int, output: str = "png", **settings):
        """PNG bytes, or for output "npy" / "latents" the numpy array."""
        body = self.generate_raw(label, output, **settings)
        if output == "png":
            return body
        import numpy as np
        return np.load(io.BytesIO(body), allow_pickle=False)
