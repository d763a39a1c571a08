"""The ``serve`` and ``loadtest`` commands; ``far_runtime.cli`` registers them. Ray is imported lazily."""
from __future__ import annotations

import json

import click

from ..errors import FarError
from ..files import write_json
from .requests import READ_TIMEOUT_S, REQUEST_TIMEOUT_S


@click.command()
@click.argument("bundle")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address Ray Serve's HTTP proxy binds.")
@click.option("--port", default=8000, show_default=True)
@click.option("--replicas", default=1, show_default=True, help="Replicas, each with the bundle loaded.")
@click.option("--max-batch", type=int, help="Largest batch per replica (default and upper bound: the bundle's).")
@click.option("--batch-wait-ms", default=10.0, show_default=True,
              help="How long a batch waits for more requests after its first.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]),
              help="Execution library of every replica (default: the one the bundle's precisions were "
              "chosen on, else onnxruntime).")
@click.option("--precision", help="Compute precision of every graph: fp32 or bf16 (OpenVINO on a CPU with bf16 "
              "units); default: each graph's recorded choice, fp32 where none is recorded.")
@click.option("--threads", type=int, help="The backend's operator threads per replica "
              "(default: this machine's cores / replicas).")
@click.option("--max-queued", type=int, help="Requests waiting for a model replica beyond which the server answers 503 "
              "(default 4 x max batch x replicas).")
@click.option("--address", help="Join this Ray cluster (e.g. auto, or HEAD:6379) instead of starting one.")
@click.option("--read-timeout-s", type=float, default=READ_TIMEOUT_S, show_default=True,
              help="A request's whole body must arrive within this (else HTTP 408).")
@click.option("--request-timeout-s", type=float, default=REQUEST_TIMEOUT_S, show_default=True,
              help="A request is answered within this in all, queue and batch included (else HTTP 503).")
@click.option("--digest", help="Serve the bundle only if its digest is this one (far-runtime info prints it).")
def serve(bundle, host, port, replicas, max_batch, batch_wait_ms, backend, precision, threads, max_queued,
          address, read_timeout_s, request_timeout_s, digest):
    """Serve BUNDLE over HTTP: POST /generate, GET /healthz, GET /info (Ray Serve)."""
    from ..bundle import check_digest_text
    from .server import serve_bundle
    if digest is not None:
        check_digest_text(digest, "--digest")

    def announce():
        click.echo(f"serving {bundle} at http://{host}:{port} ({replicas} replica(s)); Ctrl-C stops", err=True)
    serve_bundle(bundle, announce=announce, host=host, port=port, replicas=replicas, max_batch=max_batch,
                 batch_wait_ms=batch_wait_ms, threads=threads, max_queued=max_queued, address=address,
                 backend=backend, precision=precision, read_timeout_s=read_timeout_s,
                 request_timeout_s=request_timeout_s, digest=digest)
    click.echo("stopped", err=True)


@click.command()
@click.argument("url")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients.")
@click.option("--requests", default=32, show_default=True, help="Requests per client.")
@click.option("--rounds", default=1, show_default=True, help="Alternate the two phases this many times.")
@click.option("--no-sequential", is_flag=True, help="Skip the one-client-at-a-time phase.")
@click.option("--settings", default="{}", show_default=True,
              help='JSON settings every request carries, e.g. \'{"K": 16, "O": 8}\'.')
@click.option("--max-seconds", default=600.0, show_default=True, help="No new request after this long, per phase.")
@click.option("--json", "json_out", help="Also write the report as JSON to this file.")
def loadtest(url, clients, requests, rounds, no_sequential, settings, max_seconds, json_out):
    """Load-test a running far-runtime serve: N concurrent clients vs one client, same requests."""
    from .loadtest import format_report, load_test
    try:
        extra = json.loads(settings)
    except json.JSONDecodeError:
        raise FarError(f"--settings must be a JSON object, got {settings!r}.") from None
    if not isinstance(extra, dict):
        raise FarError(f"--settings must be a JSON object, got {settings!r}.")
    report = load_test(url, clients, requests, rounds, extra, max_seconds, sequential=not no_sequential)
    click.echo(format_report(report))
    if json_out:
        write_json(json_out, report)
