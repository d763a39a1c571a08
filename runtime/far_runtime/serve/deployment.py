"""The Ray Serve deployments: the model replicas, each one loaded Pipeline, behind an HTTP edge.

Any bundle ``Pipeline.load`` loads: FAR, MAR and FAR-Causal (whose K is L; see ``batching``).

Routes (Ray's proxy forwards every path under ``/`` to the edge, ``ingress.FarIngress``,
which reads each request within its deadlines and calls these replicas with complete bodies):

    POST /generate   JSON {"class": 3, "seed": 7, ...} -> image/png (?format=npy, ?latents=1)
    GET  /healthz    200 once the application is up (the replicas' constructors load the bundle)
    GET  /info       the bundle's model, digest, precision, head steps, max batch, backend and its precision

Requests are checked in ``generate`` (HTTP 400 on any error), then join one ``@serve.batch``
queue; the batch handler groups them by settings (``batching.run_batch``) and runs the
pipeline on a worker thread, so the event loop keeps answering, checking and refusing
requests while a batch computes. Backpressure is Ray Serve's: at most
``max_ongoing_requests`` per replica, ``max_queued_requests`` waiting at the edge's handle,
HTTP 503 beyond that (``build_app``).

Why one batch queue that groups, not one queue per setting: a ``@serve.batch`` queue is
created per decorated function and lives (with its background task) until the replica
ends, and fills strictly in arrival order without looking at the requests. A queue per
setting would mean one never-ending queue per distinct (K, O, cfg, schedule, temperature),
and cfg and temperature are floats chosen by clients: unbounded state driven by untrusted
input. Several queues would also run their batches concurrently, oversubscribing the cores
one batch already uses. Ray Serve itself splits a batch by multiplexed model id inside the
handler the same way.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from ..errors import FarError
from ..pipeline import Pipeline
from .batching import Outcome, run_batch
from .ingress import FarIngress, edge_slots
from .requests import (READ_TIMEOUT_S, REQUEST_TIMEOUT_S, GenerateRequest, RequestChecker, RequestError,
                       parse_body, parse_output)

log = logging.getLogger(__name__)


def rss_megabytes() -> float | None:
    """This process's resident memory (Linux /proc), for /info and the memory check."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def no_spinning(pipe) -> None:
    """ONNX Runtime's intra-op threads spin while they wait for work; beside other replicas
    (and other programs) on a few cores that steals the CPU the work needs.
    Sessions are created on first use, so setting the backend's session config right after
    loading covers all of them. (OpenVINO has no such setting; other backends keep theirs.)"""
    config = getattr(pipe.backend, "session_config", None)
    if config is not None:
        config.update(NO_SPINNING)


@serve.deployment(name="far-runtime")
class FarServer:
    def __init__(self, bundle: str, max_batch: int, batch_wait_ms: float, threads: int | None,
                 digest: str | None = None, backend: str | None = None, precision: str | None = None):
        self.pipe = Pipeline.load(bundle, threads=threads, digest=digest, backend=backend, precision=precision)
        no_spinning(self.pipe)
        self.checker = RequestChecker(self.pipe)
        self.settings = {"max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "threads": threads}
        self.generate_batch.set_max_batch_size(max_batch)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="far-batch")
        self.batches = 0
        self.served = 0
        self.largest_batch = 0
        log.info("replica %d serving %s (max batch %d, wait %g ms, %s, %s threads)", os.getpid(),
                 bundle, max_batch, batch_wait_ms, self.pipe.backend.name, threads or "default")

    def info(self) -> dict:
        b = self.pipe.bundle
        m = b.manifest
        return {"model": b.model, "digest": b.digest, "precision": m.get("precision", "fp32"),
                "head_steps": m.get("head_steps", []), "max_batch": m["max_batch"],
                "backend": self.pipe.backend.name,
                "backend_precision": getattr(self.pipe.backend, "precision", "fp32"),
                "serve": {**self.settings, "pid": os.getpid(), "rss_mb": rss_megabytes(),
                          "batches": self.batches, "requests": self.served,
                          "largest_batch": self.largest_batch}}

    async def generate(self, body: bytes, query: dict) -> Outcome:
        """One complete request (the edge read its body): checked here, then batched."""
        try:
            req = self.checker.check(parse_body(body), parse_output(query))
        except RequestError as e:
            return Outcome(error=str(e), status=400)
        except Exception as e:      # noqa: BLE001 - backstop: whatever a request makes fail is its 400
            log.warning("request refused by an unexpected %s: %s", type(e).__name__, e)
            return Outcome(error=f"The request could not be read ({type(e).__name__}).", status=400)
        return await self.generate_batch(req)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, requests: list[GenerateRequest]):
        self.batches += 1
        self.served += len(requests)
        self.largest_batch = max(self.largest_batch, len(requests))
        log.debug("batch of %d requests", len(requests))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker, run_batch, self.pipe, requests)


def replica_options(max_batch: int, max_queued: int, replicas: int, cpus_per_replica: float) -> dict:
    """Deployment options: bounded queues (503 beyond them) and the CPUs each replica reserves.

    ``max_ongoing_requests`` is two batches per replica: one running while the next fills.
    """
    return {"num_replicas": replicas, "max_ongoing_requests": 2 * max_batch,
            "max_queued_requests": max_queued,
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
            "ray_actor_options": {"num_cpus": cpus_per_replica}}


def build_app(bundle: str, max_batch: int | None = None, batch_wait_ms: float = 10.0,
              replicas: int = 1, threads: int | None = None, max_queued: int | None = None,
              cpus_per_replica: float | None = None, read_timeout_s: float = READ_TIMEOUT_S,
              request_timeout_s: float = REQUEST_TIMEOUT_S, digest: str | None = None,
              backend: str | None = None, precision: str | None = None):
    """The Ray Serve application for ``bundle``: the edge (``ingress.FarIngress``) in front of
    the model replicas; every option is checked here, before Ray starts."""
    from ..backends import check_choice
    from ..bundle import load_bundle
    bundle = os.path.abspath(bundle)
    loaded = load_bundle(bundle, digest=digest)
    bundle_max = loaded.manifest["max_batch"]
    max_batch = bundle_max if max_batch is None else max_batch
    if type(max_batch) is not int or not 1 <= max_batch <= bundle_max:
        raise FarError(f"--max-batch must be in 1..{bundle_max} (the bundle's max batch), got {max_batch}.")
    if not 0 <= batch_wait_ms <= 10_000:
        raise FarError(f"--batch-wait-ms must be in 0..10000, got {batch_wait_ms}.")
    if type(replicas) is not int or replicas < 1:
        raise FarError(f"--replicas must be at least 1, got {replicas}.")
    if threads is not None and threads < 1:
        raise FarError(f"--threads must be at least 1, got {threads}.")
    from ..graph_precision import bundle_backend
    backend = bundle_backend(loaded.manifest, backend)
    # the library installed, the precision (or the bundle's per-graph record) on this CPU
    precision = check_choice(backend, precision, loaded.manifest)
    max_queued = 4 * max_batch * replicas if max_queued is None else max_queued
    if max_queued < 1:
        raise FarError(f"--max-queued must be at least 1, got {max_queued}.")
    if not 0 < read_timeout_s <= 3600:
        raise FarError(f"--read-timeout-s must be in (0, 3600] seconds, got {read_timeout_s}.")
    if not read_timeout_s <= request_timeout_s <= 86_400:
        raise FarError(f"--request-timeout-s must be in --read-timeout-s..86400 seconds, got {request_timeout_s}.")
    cpus = cpus_per_replica if cpus_per_replica is not None else float(threads or 1)
    opts = replica_options(max_batch, max_queued, replicas, cpus)
    model = FarServer.options(**opts).bind(bundle, max_batch, float(batch_wait_ms), threads, loaded.digest,
                                                backend, precision)
    slots = edge_slots(max_batch, replicas, max_queued)
    return FarIngress.options(max_ongoing_requests=slots, max_queued_requests=slots).bind(
        model, float(read_timeout_s), float(request_timeout_s))


def app_builder(args: dict):
    """For ``serve run far_runtime.serve.deployment:app_builder bundle=/path [max_batch=8 ...]``."""
    known = {"bundle": str, "max_batch": int, "batch_wait_ms": float, "replicas": int,
             "threads": int, "max_queued": int, "cpus_per_replica": float, "read_timeout_s": float,
             "request_timeout_s": float, "digest": str, "backend": str, "precision": str}
    unknown = sorted(set(args) - set(known))
    if unknown or "bundle" not in args:
        raise FarError(f"serve run takes bundle=PATH and optionally {', '.join(list(known)[1:])}"
                       + (f"; unknown: {', '.join(unknown)}." if unknown else "."))
    try:
        kw = {k: known[k](v) for k, v in args.items()}
    except ValueError as e:
        raise FarError(f"serve run got a malformed argument ({e}).") from None
    return build_app(**kw)
