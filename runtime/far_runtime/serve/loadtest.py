"""A bounded load test of a running ``far-runtime serve``: concurrent clients vs one at a time.

Both phases send the same requests (request i: class i mod classes, seed i, the CLI's
settings). ``clients`` threads each send ``requests`` one after another (a closed loop);
the one-at-a-time phase sends all of them from one thread. Phases alternate ``rounds``
times, so both see the same machine load. Every answer's sha256 is compared across phases:
an image must not depend on what it was batched with. Bounded: at most
``clients * requests`` per phase, and no new request after ``max_seconds``.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import FarError
from .client import FarClient, ServeError

log = logging.getLogger(__name__)


@dataclass
class Phase:
    name: str
    clients: int
    latencies: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)      # status or "timeout" -> count
    digests: dict = field(default_factory=dict)     # request index -> sha256 of the body
    seconds: float = 0.0

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
        return {"phase": self.name, "clients": self.clients, "ok": len(lat), "errors": dict(self.errors),
                "seconds": self.seconds, "images_per_s": len(lat) / self.seconds if self.seconds else 0.0,
                "p50_ms": 1000 * pick(0.50), "p99_ms": 1000 * pick(0.99)}


SETTING_KEYS = ("K", "O", "cfg", "cfg_schedule", "temperature", "head_schedule", "cfg_interval", "cfg_cache")


def check_settings(settings: dict) -> dict:
    """``--settings``: only the settings all requests share; seed and class are the test's own."""
    for key in settings:
        if key in ("seed", "class"):
            raise FarError(f"--settings may not hold '{key}': the load test gives request i "
                           "class i mod classes and seed i, so both phases send the same requests.")
        if key not in SETTING_KEYS:
            raise FarError(f"--settings holds unknown key '{key}'; it may hold {', '.join(SETTING_KEYS)}.")
    return dict(settings)


def replica_rss(client: FarClient, polls: int) -> dict:
    """RSS in MB by replica pid: ``/info`` answers from whichever replica the proxy picks, so
    it is asked ``polls`` times and every replica that answered is recorded."""
    seen = {}
    for _ in range(polls):
        try:
            serve = client.info().get("serve", {})
        except FarError:
            continue
        if serve.get("pid") is not None and serve.get("rss_mb") is not None:
            seen[str(serve["pid"])] = serve["rss_mb"]
    return seen


def run_phase(client: FarClient, name: str, clients: int, jobs: list[list[int]], settings: dict,
              num_classes: int, max_seconds: float) -> Phase:
    """Each of ``clients`` threads sends its list of request indices, one request at a time."""
    phase = Phase(name, clients)
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def worker(indices):
        for i in indices:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                body = client.generate_raw(i % num_classes, seed=i, **settings)
            except ServeError as e:
                with lock:
                    phase.errors[e.status] = phase.errors.get(e.status, 0) + 1
                continue
            except FarError:
                with lock:
                    phase.errors["unreachable"] = phase.errors.get("unreachable", 0) + 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                phase.latencies.append(dt)
                phase.digests[i] = hashlib.sha256(body).hexdigest()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, jobs))
    phase.seconds = time.perf_counter() - t0
    return phase


def load_test(url: str, clients: int = 8, requests: int = 32, rounds: int = 1, settings: dict | None = None,
              max_seconds: float = 600.0, sequential: bool = True, timeout: float = 120.0) -> dict:
    """Run the phases (alternating, ``rounds`` times) and compare every image across them."""
    if clients < 1 or requests < 1 or rounds < 1:
        raise FarError("--clients, --requests and --rounds must each be at least 1.")
    settings = check_settings(settings or {})
    client = FarClient(url, timeout=timeout)
    info = client.info()
    num_classes = info["model"]["num_classes"]
    total = clients * requests
    per_client = [list(range(c * requests, (c + 1) * requests)) for c in range(clients)]
    # Warm-up (untimed, other seeds): one burst of ``clients`` concurrent requests and one
    # single request, so sessions and the common batch shapes exist before timing. Which
    # batch sizes the burst forms is up to the batcher; rarer sizes appear during the test.
    polls = 8
    rss_start = replica_rss(client, polls)
    warm = [[total + c] for c in range(clients)]
    run_phase(client, "warm-up", clients, warm, settings, num_classes, max_seconds)
    run_phase(client, "warm-up", 1, [[total + clients]], settings, num_classes, max_seconds)
    rss_warm = replica_rss(client, polls)
    phases = []
    for r in range(rounds):
        phases.append(run_phase(client, f"{clients} clients", clients, per_client, settings,
                                num_classes, max_seconds))
        if sequential:
            phases.append(run_phase(client, "1 client", 1, [list(range(total))], settings,
                                    num_classes, max_seconds))
        log.info("round %d/%d done", r + 1, rounds)
    reference: dict = {}
    mismatched = 0
    for p in phases:
        for i, d in p.digests.items():
            if reference.setdefault(i, d) != d:
                mismatched += 1
    compared = sum(len(p.digests) for p in phases) - len(reference)
    rss_end = replica_rss(client, polls)
    summaries = [p.summary() for p in phases]
    return {"url": url, "requests_per_phase": total, "settings": settings, "server": info.get("serve"),
            "phases": summaries, "speedup": speedup(summaries),
            "requests_sent": sum(p["ok"] + sum(p["errors"].values()) for p in summaries) + clients + 1,
            "replica_rss_mb": {pid: [rss_start.get(pid), rss_warm.get(pid), rss_end.get(pid)]
                               for pid in sorted(set(rss_start) | set(rss_end))},
            "identical_across_phases": {"compared": compared, "mismatched": mismatched}}


def speedup(summaries: list[dict]) -> float | None:
    """Batched images/s over one-at-a-time images/s, each summed over its rounds."""
    def rate(batched: bool):
        ps = [p for p in summaries if (p["clients"] > 1) == batched]
        secs = sum(p["seconds"] for p in ps)
        return sum(p["ok"] for p in ps) / secs if secs else None
    b, one = rate(True), rate(False)
    return b / one if b and one else None


def format_report(report: dict) -> str:
    rows = ["| phase | ok | errors | images/s | p50 ms | p99 ms |",
            "|---|---:|---|---:|---:|---:|"]
    for p in report["phases"]:
        errors = ", ".join(f"{k}: {v}" for k, v in p["errors"].items()) or "none"
        rows.append(f"| {p['phase']} | {p['ok']} | {errors} | {p['images_per_s']:.2f} | "
                    f"{p['p50_ms']:.0f} | {p['p99_ms']:.0f} |")
    same = report["identical_across_phases"]
    rows.append(f"\nimages compared across phases: {same['compared']}, different: {same['mismatched']}")
    if report.get("speedup"):
        rows.append(f"batched / one-at-a-time throughput: {report['speedup']:.2f}x (all rounds)")
    rss = report.get("replica_rss_mb", {})
    fmt = (lambda v: "n/a" if v is None else f"{v:.0f}")
    for pid, (a, w, b) in rss.items():
        rows.append(f"replica pid {pid} RSS MB over the whole test ({report.get('requests_sent', '?')} "
                    f"requests): {fmt(a)} at start, {fmt(w)} after warm-up, {fmt(b)} at end")
    return "\n".join(rows)
