"""Start, hold and stop a deployment: a fresh local Ray cluster, or an existing multi-node one.

``far-runtime serve`` calls ``serve_bundle``: it checks every option (and that the port is
free) before Ray starts, starts Ray Serve's HTTP proxy on ``host:port``, deploys the
application, waits until the replicas have loaded the bundle, then holds until SIGINT or
SIGTERM and shuts down what it started: the application, Serve, and (for a local cluster)
Ray itself, so no process outlives the command.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import threading

from ..errors import FarError

log = logging.getLogger(__name__)

APP_NAME = "far-runtime"


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise FarError("Ray Serve is not installed; install far-runtime[serve].")


def check_port_free(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise FarError(f"--port must be in 1..65535, got {port}.")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise FarError(f"Cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host.") from None


def default_threads(replicas: int) -> int:
    """Operator threads per replica: this machine's cores shared among replicas."""
    return max(1, (os.cpu_count() or 1) // max(1, replicas))


def start(bundle: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          max_batch: int | None = None, batch_wait_ms: float = 10.0, threads: int | None = None,
          max_queued: int | None = None, address: str | None = None, read_timeout_s: float | None = None,
          request_timeout_s: float | None = None, digest: str | None = None, backend: str | None = None,
          precision: str | None = None):
    """Deploy and return once the replicas serve; the caller then waits and calls ``stop``."""
    require_ray()
    if threads is not None and (type(threads) is not int or threads < 1):
        raise FarError(f"--threads must be at least 1, got {threads}.")    # 0 must not mean "default"
    from .deployment import build_app
    from .requests import READ_TIMEOUT_S, REQUEST_TIMEOUT_S
    read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s
    request_timeout_s = REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
    local = address is None
    if threads is None and local:
        threads = default_threads(replicas)
    cpus = float(threads or 1)
    app = build_app(bundle, max_batch, batch_wait_ms, replicas, threads, max_queued, cpus,
                    read_timeout_s, request_timeout_s, digest, backend, precision)
    check_port_free(host, port)
    import ray
    from ray import serve
    if local:
        # "local" always starts a new cluster: never join one someone else started here.
        # Ray runs workers at niceness 15 to keep drivers responsive; here the replicas are the
        # work, so they run at this command's own priority.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(replicas * cpus)),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
    else:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        # The proxy's own end-to-end timeout is a backstop only (a client may switch it off with
        # an x-request-timeout-seconds header in Ray 2.60); the edge answers first (ingress.py).
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s + 5})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except BaseException:
        stop(local)
        raise
    return local


def stop(local: bool) -> None:
    """Remove the application; for a cluster this command started, shut Serve and Ray down."""
    import ray
    from ray import serve
    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def serve_bundle(bundle: str, announce=None, **kw) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        local = start(bundle, **kw)
        try:
            if announce:
                announce()
            while not done.wait(0.5):
                pass
            log.info("shutting down")
        finally:
            stop(local)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
