"""The HTTP edge of ``far-runtime serve``: each request read within deadlines, then handed on.

Why a deployment of its own (issue 26): Ray Serve's proxy streams a request body to the
replica that handles the request, and that replica holds one of its ``max_ongoing_requests``
slots until the handler returns. When the model replicas read bodies themselves, a client
that sends part of a body and stops holds one of their ``2 x max batch`` slots for as long
as it likes, and a few such clients leave no slot (and no queue place) for anyone else. Here
the model replicas (``deployment.FarServer``) are called only with complete bodies, through
a ``DeploymentHandle``; the bodies are read by this small asyncio deployment, whose slots
(``edge_slots``: the model's capacity and queue plus ``SLOW_CLIENT_SLOTS``) cost a coroutine
each, not model capacity.

Deadlines, both ours (Ray 2.60's proxy lets any client switch its own ``request_timeout_s``
off with an ``x-request-timeout-seconds: 0`` header, so it is only a backstop):
- the whole body within ``read_timeout_s`` (HTTP 408 with a sentence), a stalled upload
  therefore holds an edge slot for at most that long;
- the whole request within ``request_timeout_s`` (HTTP 503 with a sentence); the model
  request is cancelled.

Backpressure stays Ray's: at most ``2 x max batch`` requests in each model replica and
``max_queued`` waiting at the edge's handle, beyond that HTTP 503 with Ray's sentence and
``Retry-After``.
"""
from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .requests import MAX_BODY_BYTES, RequestError

log = logging.getLogger(__name__)

SLOW_CLIENT_SLOTS = 256          # edge slots beyond the model's capacity and queue: slow uploads


def edge_slots(max_batch: int, replicas: int, max_queued: int) -> int:
    """Requests the edge holds at once: every model slot and queue place, plus room for
    ``SLOW_CLIENT_SLOTS`` clients still sending their bodies."""
    return 2 * max_batch * replicas + max_queued + SLOW_CLIENT_SLOTS


def error(status: int, sentence: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": sentence}, status_code=status, headers=headers)


async def read_body(request: Request) -> bytes:
    """The request body, refused past ``MAX_BODY_BYTES`` as soon as it grows past it."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="far-runtime-http", ray_actor_options={"num_cpus": 0})
class FarIngress:
    def __init__(self, model, read_timeout_s: float, request_timeout_s: float):
        self.model = model                       # DeploymentHandle of deployment.FarServer
        self.read_timeout_s = read_timeout_s
        self.request_timeout_s = request_timeout_s

    async def __call__(self, request: Request) -> Response:
        try:
            return await asyncio.wait_for(self._handle(request), self.request_timeout_s)
        except asyncio.TimeoutError:
            return error(503, f"The request was not answered within {self.request_timeout_s:g} s "
                              "(the server's --request-timeout-s); retry later.")
        except BackPressureError as e:          # the model replicas' queue is full: Ray's own sentence
            retry = None if e.retry_after_s is None else {"Retry-After": str(max(1, round(e.retry_after_s)))}
            return error(e.status_code, e.message, retry)

    async def _handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz":
            return JSONResponse({"status": "ok"})
        if path == "/info":
            return JSONResponse(await self._call(self.model.info.remote()))
        if path != "/generate":
            return error(404, f"There is no {path}; use POST /generate, GET /healthz or GET /info.")
        if request.method != "POST":
            return error(405, "Send generate requests with POST and a JSON body.")
        try:
            body = await asyncio.wait_for(read_body(request), self.read_timeout_s)
        except asyncio.TimeoutError:
            return error(408, f"The request body did not arrive within {self.read_timeout_s:g} s "
                              "(the server's --read-timeout-s); send the whole body at once.")
        except RequestError as e:
            return error(400, str(e))
        out = await self._call(self.model.generate.remote(body, dict(request.query_params)))
        if out.error:
            return error(out.status, out.error)
        return Response(out.body, media_type=out.media_type)

    @staticmethod
    async def _call(response):
        """Await a model call; if this request is cancelled (its deadline), cancel that call."""
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
