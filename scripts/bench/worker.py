"""The worker: one measured operation (a poll tick, a sweep, a history page, the baseline or
the ceiling loop) in a process of its own, `python -m scripts.bench.worker`, which reads its
spec as JSON on stdin and prints its result after RESULT_MARK."""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from azure.core import MatchConditions
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import ContainerClient

from .common import RESULT_MARK, proxy_control, proxy_counts


class Gauge:
    """Requests in flight (storage and ARM together) and their peak: how concurrent, and how
    bounded, an operation really was. Unlike a mean over wall time, the peak barely depends on
    how busy the machine is."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self.lock:
            self.now += delta
            self.peak = max(self.peak, self.now)


class Marks(SansIOHTTPPolicy):
    """Records when the first response of each kind of request arrived (monotonic clock) and
    keeps the in-flight gauge.

    Passed to `build_clients` as an extra per-retry policy, so it sees exactly the requests
    the app sends; used to time "listing returned" -> "ARM accepted the PUT"."""

    def __init__(self, flavor: str, gauge: Gauge) -> None:
        self.flavor = flavor
        self.gauge = gauge
        self.first: dict[str, float] = {}

    def on_request(self, request: PipelineRequest) -> None:
        self.gauge.add(1)

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        self.gauge.add(-1)
        http = request.http_request
        kind = f"{self.flavor}:{http.method}"
        if "comp=list" in http.url:
            kind += ":list"
        now = time.monotonic()
        with self.gauge.lock:
            self.first.setdefault(kind, now)

    def on_exception(self, request: PipelineRequest) -> None:
        self.gauge.add(-1)


def _peak_rss_kb() -> int:
    """This process's peak resident set size in KiB (see the scripts.bench docstring for why VmHWM)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _baseline(container: ContainerClient, incoming: str, dest: str) -> int:
    """The seed system's claim: list, then for each blob a copy and then a delete, in turn."""
    moved = 0
    for blob in container.list_blobs(name_starts_with=incoming):
        src = container.get_blob_client(blob.name)
        dst = container.get_blob_client(dest + blob.name[len(incoming) :])
        status = dst.start_copy_from_url(src.url).get("copy_status")
        while status == "pending":  # never on Azurite; a pending copy must finish first
            time.sleep(0.05)
            status = dst.get_blob_properties().copy.status
        container.delete_blob(blob.name)
        moved += 1
    return moved


def _ceiling(container: ContainerClient, incoming: str, dest: str, workers: int) -> int:
    """The ceiling: the same conditional copy and conditional delete per file, on a pool as wide
    as IO_CONCURRENCY, with none of the app's bookkeeping (no lease, manifest or launch)."""
    blobs = list(container.list_blobs(name_starts_with=incoming))

    def one(name: str, etag: str) -> None:
        src = container.get_blob_client(name)
        dst = container.get_blob_client(dest + name[len(incoming) :])
        dst.start_copy_from_url(
            src.url, source_etag=etag, source_match_condition=MatchConditions.IfNotModified
        )
        container.delete_blob(name, etag=etag, match_condition=MatchConditions.IfNotModified)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(one, b.name, str(b.etag)) for b in blobs]:
            fut.result()
    return len(blobs)


def worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one operation (`op`: poll | sweep | baseline | ceiling) and measure it.

    Clients are built before the counters are reset, so the counts are the operation's alone;
    this process resets the proxies itself, right before the operation starts."""
    from cleanup.sweep import sweep
    from config import load_settings
    from launcher.clients import build_clients
    from launcher.poll import poll

    settings = load_settings(spec["env"])
    gauge = Gauge()
    storage_marks, arm_marks = Marks("storage", gauge), Marks("arm", gauge)
    clients = build_clients(settings, [storage_marks], [arm_marks])
    storage_url, arm_url, arm_ca = spec["storage_proxy"], spec["arm_proxy"], spec["arm_ca"]
    rss_before = _peak_rss_kb()
    proxy_control(storage_url, "reset", None, {})
    proxy_control(arm_url, "reset", arm_ca, {})
    op = spec["op"]
    report: dict[str, Any] | None = None
    files = 0
    cpu_start = _cpu_seconds()
    wall_start = time.time()
    started = time.monotonic()
    if op == "poll":
        report = poll(clients).to_dict()
        files = sum(int(c["files"]) for c in report["claimed"])
    elif op == "sweep":
        report = sweep(clients).to_dict()
    elif op == "history":
        from cleanup import history
        from launcher.batch import State

        page = history.list_page(clients, State(spec["state"]) if spec["state"] else None, 50)
        report = {"rows": len(page.batches), "more": page.continuation_token is not None}
    elif op == "baseline":
        files = _baseline(clients.container, settings.incoming_prefix, spec["dest"])
    elif op == "ceiling":
        files = _ceiling(
            clients.container, settings.incoming_prefix, spec["dest"], settings.io_concurrency
        )
    else:
        raise ValueError(f"unknown op {op!r}")
    seconds = time.monotonic() - started
    wall_end = time.time()
    cpu = _cpu_seconds() - cpu_start
    counts = {"storage": proxy_counts(storage_url, None), "arm": proxy_counts(arm_url, arm_ca)}
    marks = {k: v - started for k, v in (storage_marks.first | arm_marks.first).items()}
    return {
        "op": op,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "files": files,
        "counts": counts,
        "report": report,
        "marks": marks,
        "peak_in_flight": gauge.peak,
        "rss_before_kb": rss_before,
        "peak_rss_kb": _peak_rss_kb(),
        "wall_start": wall_start,
        "wall_end": wall_end,
    }


def worker_main() -> int:
    import logging

    # The app's warnings (slow lease renewals, retries given up) go to the worker's log file.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = json.loads(sys.stdin.read())
    print(RESULT_MARK + json.dumps(worker(spec)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
