"""What every part of the benchmark shares: the result row, the run's configuration, and
how the orchestrator and its workers talk to the proxies' control endpoints."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIPTION = "00000000-0000-0000-0000-0000000be4c4"
RESULT_MARK = "BENCH-RESULT "
PAYLOAD = b"model-launcher benchmark input\n" * 32  # ~1 KB per file: request counts, not bytes
PEAK_RSS_TARGET_MB = 200.0  # rows 5 and 9


@dataclass
class Row:
    """One line of the table: a figure, its target, and whether the target is met.

    `counted` marks figures that are request counts (deterministic, asserted by the tests);
    the others are timings or memory, reported but never asserted anywhere. `met` is None for
    figures shown only to explain others."""

    key: str
    section: str
    metric: str
    value: float | int | str
    unit: str
    target: str
    met: bool | None
    counted: bool


@dataclass
class Config:
    tiny: bool
    delay_ms: float
    claim_files: int
    baseline_files: int
    scale_files: int
    sweep_groups: int
    batch_max_files: int
    tolerance: float
    rounds: int
    backlog_files: int = 100_000
    blocked_files: int = 10_000
    blocked_claimable: int = 1_000
    drain_files: int = 2_000
    stock_azurite: bool = False
    io_concurrency: int = 0
    sweep_concurrency: int = 0
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)


def proxy_control(url: str, path: str, ca: str | None, body: Any = None) -> Any:
    """Call a proxy's /_proxy/ control endpoint (never counted or delayed by the proxy)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/_proxy/{path}",
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return json.loads(response.read() or b"null")


def proxy_counts(url: str, ca: str | None) -> dict[str, int]:
    return dict(proxy_control(url, "counts", ca)["counts"])


def transport(pool: int) -> RequestsTransport:
    """A transport whose connection pool fits `pool` threads (requests defaults to 10)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=True)
