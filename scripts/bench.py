"""Benchmark: cheap when idle, fast when busy, measured against the one-by-one baseline.

    .venv/bin/python scripts/bench.py [--tiny] [--json FILE] [--delay-ms 20] [--strict]

Runs the app's public entry points (`config.load_settings`, `launcher.clients.build_clients`,
`launcher.poll.poll`, `cleanup.sweep.sweep`) against Azurite and the local ACI emulator, each
behind its own loopback counting proxy (`python -m localdev.proxy`) that adds a fixed delay per
request (default 20 ms, standing in for a cloud round trip) and counts requests by kind.

How it measures, and why:
- The proxies, and every measured tick or sweep, run as processes of their own: in one process
  they would share the GIL with the SDK's I/O threads and distort the speed figures, and a tick
  alone in its process has a peak memory that is the tick's own.
- Peak memory is the worker's VmHWM from /proc, not `getrusage().ru_maxrss`: on Linux the
  latter carries the parent's peak over fork/exec, so a child started by a big orchestrator
  would report the orchestrator's memory.
- Every measured run starts with a fresh, empty Azurite (same port, behind the same proxy), so
  left-overs of one scenario cannot slow the next; the scale row compares its two ticks at the
  SAME store size (the smaller tick runs next to ballast blobs in another container).
- Azurite runs with a Node preload, localdev/azurite_fast_delete.js (--stock-azurite: without).
  Stock Azurite deletes a blob through LokiJS `findAndRemove`, which re-sorts all four indices
  of its blob table on every call: one Delete Blob costs O(n log n) in the blobs stored (~2.5 ms
  of its single thread at 1,000-2,000 blobs, ~28 ms at 10,000; techfort/LokiJS#773), after
  looking the row up twice by scanning every blob of the account. Real Blob Storage has no such
  cost. On a 2-core machine it made the emulator the limit of the project and of the ceiling
  loop, while the latency-bound baseline hid it, so the speedup row measured Azurite. The preload
  looks the row up by blob name first and removes a single matched row through LokiJS' own
  in-place index update (same rows removed, same answers: tests/test_bench.py runs one script
  against both). The
  claim section adds one round on stock Azurite as an informational row, and the JSON keeps
  Azurite's CPU time for every run.
- Figures compared with each other are measured in the same run through the same proxies and
  are reported as ratios (medians over --rounds rounds). No absolute timing is asserted.
- The CPU seconds of the worker, Azurite, the emulator and both proxies are recorded per run
  (JSON `raw`), with the load average: on a shared or small machine the emulator, not the app,
  is often the limit, and these numbers show which: on 2 cores Azurite (one Node thread, about
  1.2 ms of CPU per copy and, with the preload, 1 ms per delete) still bounds both the project
  and the ceiling loop, while the baseline is bound by latency.

Rows (each with its figure, its target and whether it is met):
  1. idle poll tick: storage requests (= 1) and ARM requests (= 0);
  2. idle sweep: ARM requests (= 1) and storage requests (<= 2: the listing of processing/ and,
     for the stall alarm, one of incoming/);
  3. claiming N files in one tick: storage requests per file (<= 2 + 50/N: one copy and one
     delete per file, plus at most 50 per tick for list pages, manifests, lease, recovery list;
     the app sends the deletes as Blob Batch requests of 64, so it needs about 1 + 1/64);
  4. claim speed: files/s of this project (a whole tick: list, lease, manifests, launches), of
     the seed system's one-by-one loop (copy, then delete, each file in turn; on a sample of
     --baseline-files, its rate per file does not depend on the count) and of a raw concurrent
     copy-and-delete loop as wide as IO_CONCURRENCY (the ceiling), measured back to back in
     each round; targets: >= 10x the baseline, >= 0.8 of the ceiling (medians of the rounds);
  5. scale: 10x the files waiting, all claimed in one tick, the tick process's peak memory
     < 200 MB, the poll lease held throughout (sampled from outside while the tick runs, and
     the tick's own `lease_lost` false) and tick time growing at most linearly (+ --tolerance);
  6. launch: ARM requests per launched batch (<= 2) and the time from the tick's listing of a
     10-file drop to ARM accepting the group's PUT (< 1 s: never the SDK's 30 s LRO poll);
  7. sweep of G finished groups: wall time, ARM requests per finished group (<= 4), storage
     requests per finished batch (<= 2 per blob moved + 9, two of them the history index
     entries) and how many requests were in flight on average (concurrent, bounded by
     SWEEP_CONCURRENCY);
  8. history: the newest page of 50 batches, all states and `failed` only, at 1,000 and at
     20,000 finished batches (index entries written directly, not measured): storage requests
     (the same at both sizes, <= 5) and time (< 0.5 s at 20 ms per request).
  9. backlog, with the caps 2 batches of 100 a tick: with 100,000 files waiting, the tick
     process's peak memory (< 200 MB and no more than with 10,000 waiting), the time from the
     tick's start to the first group PUT accepted (< 3 s) and its storage requests (at most 5 %
     more than a tick claiming the same 200 files with nothing else waiting); with no room,
     one List Blobs request; 10,000 blocked (archived) files in front of 1,000 claimable ones,
     which that tick claims; and a 2,000-file backlog drained 200 a tick with nothing lost or
     claimed twice (name and content hash, as scripts/chaos checks). The files are uploaded
     48 at a time straight to Azurite (not measured; the row says how long it all took).

`--tiny` (50 / 200 files, 10 groups, a 2,000-file backlog) runs in about two minutes;
tests/test_bench.py runs it and checks the count-based rows. `--only backlog` runs row 9 alone
(7.5 minutes in full on a busy 2-CPU machine, most of it uploading). The batches of row 7 are set up with the app's
own claim and launch functions directly against the emulators (no proxy, not measured), because
ACI's create rate (MAX_CREATES_PER_5_MIN <= 100) would otherwise take several ticks five minutes
apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
from azure.core import MatchConditions  # noqa: E402
from azure.core.exceptions import ResourceNotFoundError  # noqa: E402
from azure.core.pipeline import PipelineRequest, PipelineResponse  # noqa: E402
from azure.core.pipeline.policies import SansIOHTTPPolicy  # noqa: E402
from azure.core.pipeline.transport import RequestsTransport  # noqa: E402
from azure.storage.blob import BlobServiceClient, ContainerClient, StandardBlobTier  # noqa: E402

SUBSCRIPTION = "00000000-0000-0000-0000-0000000be4c4"
RESULT_MARK = "BENCH-RESULT "
PAYLOAD = b"model-launcher benchmark input\n" * 32  # ~1 KB per file: request counts, not bytes
SECTIONS = "idle,claim,scale,launch,sweep,history,backlog"

# Targets (see the module docstring).
CLAIM_FIXED_ALLOWANCE = 50  # storage requests per claiming tick beyond one copy + one delete
SPEEDUP_TARGET = 10.0
CEILING_TARGET = 0.8
PEAK_RSS_TARGET_MB = 200.0
LAUNCH_ARM_TARGET = 2.0
LAUNCH_LATENCY_TARGET_S = 1.0
SWEEP_ARM_TARGET = 4.0
SWEEP_STORAGE_FIXED = (
    9  # read, logs, record, list, final manifest, 2 index entries, delete manifest + 1
)
SWEEP_FILES_PER_BATCH = 5
LAUNCH_FILES = 10
IDLE_SWEEP_STORAGE_TARGET = 2  # processing/ for the sweep, incoming/ for the stall alarm
HISTORY_PAGE = 50
HISTORY_SIZES = (1_000, 20_000)
HISTORY_REQUEST_TARGET = 5
HISTORY_SECONDS_TARGET = 0.5
HISTORY_FAILED_EVERY = 10  # one finished batch in ten failed
# Row 9 (backlog): the caps, 2 batches of 100 a tick, whatever waits.
BACKLOG_CAPS = {
    "BATCH_MAX_FILES": "100",
    "MAX_BATCHES_PER_TICK": "2",
    "MAX_ACTIVE_GROUPS": "100",
    "MAX_CREATES_PER_5_MIN": "100",
    "LEASE_SECONDS": "15",
}
BACKLOG_PER_TICK = 200
BACKLOG_FIRST_PUT_S = 3.0
BACKLOG_REQUEST_EXCESS = 0.05  # storage requests beyond those of claiming the same files alone
BLOCKED_CAPS = {"BATCH_MAX_FILES": "500", "MAX_BATCHES_PER_TICK": "2"}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Helpers shared by the orchestrator and the worker
# ------------------------------------------------------------------------------------------------


def _control(url: str, path: str, ca: str | None, body: Any = None) -> Any:
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


def _counts(url: str, ca: str | None) -> dict[str, int]:
    return dict(_control(url, "counts", ca)["counts"])


def _transport(pool: int) -> RequestsTransport:
    """A transport whose connection pool fits `pool` threads (requests defaults to 10)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=True)


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


# ------------------------------------------------------------------------------------------------
# The worker: one measured operation in a process of its own
# ------------------------------------------------------------------------------------------------


def _peak_rss_kb() -> int:
    """This process's peak resident set size in KiB (see the module docstring for why VmHWM)."""
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
    _control(storage_url, "reset", None, {})
    _control(arm_url, "reset", arm_ca, {})
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
    counts = {"storage": _counts(storage_url, None), "arm": _counts(arm_url, arm_ca)}
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


# ------------------------------------------------------------------------------------------------
# The orchestrator: emulators, proxies, scenarios
# ------------------------------------------------------------------------------------------------


@dataclass
class ProxyProcess:
    url: str
    ca: str | None
    process: subprocess.Popen[str]


@contextlib.contextmanager
def run_proxy(
    upstream: str, delay_ms: float, log: Path, tls: bool = False, upstream_ca: str | None = None
) -> Iterator[ProxyProcess]:
    """`python -m localdev.proxy` as a process of its own (its own GIL), until the context ends."""
    argv = [sys.executable, "-m", "localdev.proxy", "--upstream", upstream]
    argv += ["--delay-ms", str(delay_ms)]
    if tls:
        argv += ["--tls", "--classify", "arm"]
    if upstream_ca:
        argv += ["--upstream-ca", upstream_ca]
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    want = 2 if tls else 1
    try:
        stdout = proc.stdout
        assert stdout is not None
        lines: list[str] = []
        # Text-mode stdout reads ahead, so select() cannot tell when a second line waits:
        # read the lines (URL, then CA path with --tls) on a helper thread with a deadline.
        reader = threading.Thread(
            target=lambda: lines.extend(stdout.readline().strip() for _ in range(want)),
            daemon=True,
        )
        reader.start()
        reader.join(30)
        if len(lines) < want or not all(lines):
            raise RuntimeError(f"proxy did not start (log {log})")
        yield ProxyProcess(lines[0], lines[1] if tls else None, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def median_by(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The result whose `key` is the median (the lower one for an even count)."""
    ordered = sorted(results, key=lambda r: float(r[key]))
    return ordered[(len(ordered) - 1) // 2]


class Bench:
    """Owns Azurite, the emulator and the proxies for one run and runs the scenarios."""

    def __init__(self, cfg: Config, workdir: Path, emulator: Any, profile: Path | None) -> None:
        from localdev.azurite import free_port

        self.cfg = cfg
        self.workdir = workdir
        self.emulator = emulator
        self.profile = profile
        self.azurite_port = free_port()
        self._azurite_stack = contextlib.ExitStack()
        self.azurite: Any = None
        self.service: BlobServiceClient | None = None
        self.storage: ProxyProcess | None = None
        self.arm: ProxyProcess | None = None
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.fresh_azurite()

    # -- plumbing --------------------------------------------------------------------------------

    def fresh_azurite(self, stock: bool | None = None) -> None:
        """Replace Azurite with a new, empty one on the same port (the storage proxy's upstream):
        every measured run starts from an empty store. It runs with the fast-delete preload
        unless `stock` (default: --stock-azurite) says otherwise (see the module docstring)."""
        from localdev.azurite import FAST_DELETE_PRELOAD, connection_string, run_azurite

        stock = self.cfg.stock_azurite if stock is None else stock
        self._azurite_stack.close()
        self._azurite_stack = contextlib.ExitStack()
        self.azurite = self._azurite_stack.enter_context(
            run_azurite(port=self.azurite_port, preload=None if stock else FAST_DELETE_PRELOAD)
        )
        self.service = BlobServiceClient.from_connection_string(
            connection_string(self.azurite_port), transport=_transport(64)
        )

    def close(self) -> None:
        self._azurite_stack.close()

    def env(
        self, container: str, overrides: Mapping[str, str] = {}, via_proxy: bool = True
    ) -> dict[str, str]:
        """App settings for one scenario: its own container and resource group."""
        from localdev.azurite import connection_string

        if via_proxy:
            assert self.storage is not None and self.arm is not None and self.arm.ca
            port = int(self.storage.url.rsplit(":", 1)[1])
            conn, arm_url, arm_ca = connection_string(port), self.arm.url, self.arm.ca
        else:
            conn = connection_string(self.azurite_port)
            arm_url, arm_ca = self.emulator.url, str(self.emulator.ca)
        env = {
            "STORAGE_CONNECTION_STRING": conn,
            "WATCH_CONTAINER": container,
            "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "ACI_RESOURCE_GROUP": "rg-" + container,
            "ACI_LOCATION": "local",
            "ARM_ENDPOINT": arm_url,
            "ARM_CA_BUNDLE": arm_ca,
            "ARM_AUTH": "emulator",
            "ACI_IMAGE": "python:3.11",
            "ACI_COMMAND": '["python","-c","pass"]',
            "BATCH_SETTLE_SECONDS": "0",
        }
        env.update(overrides)
        return env

    def claim_overrides(self) -> dict[str, str]:
        """Caps that let the scale drop be claimed in one tick, the same for every claiming run
        so the small and the large tick differ only in the number of files. Batches hold half
        the claim run's files (500 of 1,000: the default BATCH_MAX_FILES), so the claim run is
        two batches and the scale run twenty."""
        return {
            "BATCH_MAX_FILES": str(self.cfg.batch_max_files),
            "MAX_BATCHES_PER_TICK": "100",
            "MAX_ACTIVE_GROUPS": "100",
            "MAX_CREATES_PER_5_MIN": "100",
            "LEASE_SECONDS": "15",  # the shortest allowed: a long tick spans several renewals
        }

    def new_container(self, label: str) -> ContainerClient:
        assert self.service is not None
        return self.service.create_container(f"bench-{label}-{uuid.uuid4().hex[:8]}")

    def seed(self, container: ContainerClient, count: int, prefix: str = "incoming/") -> None:
        """Upload `count` small files directly to Azurite (not through the proxy: not measured)."""
        self.upload(container, [f"{prefix}drop/f{i:06d}.dat" for i in range(count)])

    def upload(
        self,
        container: ContainerClient,
        names: list[str],
        content: Callable[[str], bytes] = lambda _: PAYLOAD,
        **kwargs: Any,
    ) -> float:
        """Upload `names` 48 at a time, directly to Azurite; returns the seconds it took."""
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=48) as pool:
            list(
                pool.map(
                    lambda n: container.upload_blob(n, content(n), overwrite=True, **kwargs),
                    names,
                )
            )
        return time.monotonic() - started

    def helper_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by Azurite, the emulator and the proxies."""
        pids = {"azurite": int(self.azurite.process.pid), "emulator": int(self.emulator.pid)}
        if self.storage is not None:
            pids["storage_proxy"] = self.storage.process.pid
        if self.arm is not None:
            pids["arm_proxy"] = self.arm.process.pid
        out: dict[str, float] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                out[name] = times.user + times.system
        return out

    def run_worker(
        self,
        op: str,
        env: dict[str, str],
        during: Callable[[subprocess.Popen[str]], Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Run one measured operation in a fresh process; `during` runs here meanwhile."""
        assert self.storage is not None and self.arm is not None
        spec = {
            "op": op,
            "env": env,
            "storage_proxy": self.storage.url,
            "arm_proxy": self.arm.url,
            "arm_ca": self.arm.ca,
            **extra,
        }
        log = self.workdir / f"worker-{op}.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "_worker"]
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            out_file = self.profile / f"{time.strftime('%H%M%S')}-{op}.speedscope.json"
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            argv = [
                spy,
                "record",
                "--gil",
                "--nonblocking",
                "--format",
                "speedscope",
                "-o",
                str(out_file),
            ]
            argv += ["--", sys.executable, str(Path(__file__).resolve()), "_worker"]
        cpu_before = self.helper_cpu()
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(spec))
                proc.stdin.close()
                if during is not None:
                    during(proc)
                out = proc.stdout.read()
                proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: leave no worker behind
                    proc.kill()
                    proc.wait()
        cpu_after = self.helper_cpu()
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"worker {op} failed ({proc.returncode}):\n{tail}")
        found = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
        if not found:
            raise RuntimeError(f"worker {op} printed no result:\n{out[-2000:]}")
        result: dict[str, Any] = json.loads(found[-1][len(RESULT_MARK) :])
        result["helper_cpu_seconds"] = {
            k: round(cpu_after[k] - cpu_before.get(k, 0.0), 3) for k in cpu_after
        }
        result["loadavg"] = os.getloadavg()[0]
        cpu = " ".join(f"{k} {v:.1f}" for k, v in result["helper_cpu_seconds"].items())
        print(
            f"    [{op}: {result['seconds']:.2f} s; CPU s: worker {result['cpu_seconds']:.1f} "
            f"{cpu}; load {result['loadavg']:.1f}]",
            flush=True,
        )
        return result

    def add(self, row: Row) -> None:
        self.rows.append(row)
        met = "" if row.met is None else (" met" if row.met else " MISSED")
        print(f"  {row.metric}: {fmt(row.value)} {row.unit} (target {row.target}){met}", flush=True)

    # -- 1 and 2: idle -----------------------------------------------------------------------------

    def idle(self) -> None:
        print("1-2. idle poll tick and idle sweep")
        self.fresh_azurite()
        env = self.env(self.new_container("idle").container_name)
        res = self.run_worker("poll", env)
        assert res["report"]["idle"], res["report"]
        self.raw["idle_poll"] = res
        storage, arm = res["counts"]["storage"]["total"], res["counts"]["arm"]["total"]
        self.add(Row("idle_poll_storage", "1", "Idle poll tick: storage requests", storage, "", "= 1", storage == 1, True))  # fmt: skip
        self.add(Row("idle_poll_arm", "1", "Idle poll tick: ARM requests", arm, "", "= 0", arm == 0, True))  # fmt: skip
        res = self.run_worker("sweep", env)
        assert res["report"]["idle"], res["report"]
        self.raw["idle_sweep"] = res
        storage, arm = res["counts"]["storage"]["total"], res["counts"]["arm"]["total"]
        self.add(Row("idle_sweep_arm", "2", "Idle sweep: ARM requests", arm, "", "= 1", arm == 1, True))  # fmt: skip
        self.add(Row("idle_sweep_storage", "2", "Idle sweep: storage requests (processing/, and incoming/ for the stall alarm)", storage, "", f"<= {IDLE_SWEEP_STORAGE_TARGET}", storage <= IDLE_SWEEP_STORAGE_TARGET, True))  # fmt: skip

    # -- 3 and 4: claiming -------------------------------------------------------------------------

    def claim_tick(
        self, files: int, ballast: int = 0, sample_lease: bool = False, stock: bool | None = None
    ) -> dict[str, Any]:
        """Claim `files` files with one poll tick in a worker process, on a fresh Azurite that
        also holds `ballast` unrelated blobs (so that its per-request cost matches a larger
        drop's); with `sample_lease`, watch the poll lock blob's lease from here (directly, not
        through the proxy) while the tick runs."""
        self.fresh_azurite(stock)
        container = self.new_container("claim")
        self.seed(container, files)
        if ballast:
            # After the files, as in a large drop: Azurite keeps blobs in one array in insertion
            # order, and deleting near its front (what a claim does) shifts everything after.
            self.seed(self.new_container("ballast"), ballast, prefix="ballast/")
        lock = container.get_blob_client("locks/poll")
        samples: list[tuple[float, str]] = []

        def watch(proc: subprocess.Popen[str]) -> None:
            while proc.poll() is None:
                try:
                    lease = lock.get_blob_properties().lease
                    state = f"{lease.state}/{lease.status}"
                except ResourceNotFoundError:
                    state = "absent"
                samples.append((time.time(), state))
                time.sleep(0.1)

        env = self.env(container.container_name, self.claim_overrides())
        res = self.run_worker("poll", env, during=watch if sample_lease else None)
        res["left_in_incoming"] = sum(1 for _ in container.list_blobs(name_starts_with="incoming/"))
        res["lease_samples"] = samples
        res["ballast"] = ballast
        return res

    def raw_loop(self, op: str, files: int, stock: bool | None = None) -> dict[str, Any]:
        """The baseline or the ceiling on `files` files, on a fresh Azurite."""
        self.fresh_azurite(stock)
        container = self.new_container(op)
        self.seed(container, files)
        res = self.run_worker(op, self.env(container.container_name), dest=f"processing/{op}/")
        assert res["files"] == files, res
        return res

    def claim(self) -> None:
        cfg = self.cfg
        n, nb = cfg.claim_files, cfg.baseline_files
        print(f"3-4. claiming {n} files: this project, the raw concurrent loop, the baseline")
        # Each round measures the three back to back and yields its own ratios: on a shared
        # machine the load drifts, and a ratio of two runs a minute apart would measure it.
        rounds: list[dict[str, Any]] = []
        for _ in range(cfg.rounds):
            project = self.claim_tick(n)
            assert project["files"] == n and project["left_in_incoming"] == 0, project["report"]
            ceiling = self.raw_loop("ceiling", n)
            baseline = self.raw_loop("baseline", nb)
            rate = n / project["seconds"]
            rounds.append(
                {
                    "project": project,
                    "ceiling": ceiling,
                    "baseline": baseline,
                    "rate": rate,
                    "ceiling_rate": n / ceiling["seconds"],
                    "baseline_rate": nb / baseline["seconds"],
                    "speedup": rate / (nb / baseline["seconds"]),
                    "of_ceiling": rate / (n / ceiling["seconds"]),
                }
            )
        mid = median_by(rounds, "rate")
        project = mid["project"]
        self.raw.update(claim=project, ceiling=mid["ceiling"], baseline=mid["baseline"])
        keys = ("rate", "ceiling_rate", "baseline_rate", "speedup", "of_ceiling")
        self.raw["claim_rounds"] = [{k: round(r[k], 3) for k in keys} for r in rounds]
        storage = max(r["project"]["counts"]["storage"]["total"] for r in rounds)
        per_file = storage / n
        limit = 2 + CLAIM_FIXED_ALLOWANCE / n
        self.add(Row("claim_storage_per_file", "3", f"Claim {n:,} files in one tick: storage requests per file", round(per_file, 4), "", f"<= {limit:.3f} (2 + {CLAIM_FIXED_ALLOWANCE}/{n})", per_file <= limit + 1e-9, True))  # fmt: skip
        speedup = median_by(rounds, "speedup")["speedup"]
        of_ceiling = median_by(rounds, "of_ceiling")["of_ceiling"]
        at = f"at {cfg.delay_ms:g} ms/request"
        how = f"median of {cfg.rounds} rounds" if cfg.rounds > 1 else "1 round"
        loads = "/".join(f"{r['project']['loadavg']:.1f}" for r in rounds)
        self.add(Row("claim_rate_project", "4", f"Claim speed {at}: this project, whole tick of {n:,} files ({how}; load {loads})", round(mid["rate"], 1), "files/s", "-", None, False))  # fmt: skip
        self.add(Row("claim_rate_ceiling", "4", f"Claim speed {at}: raw concurrent copy-and-delete loop, {cfg.io_concurrency} wide, same round", round(mid["ceiling_rate"], 1), "files/s", "-", None, False))  # fmt: skip
        self.add(Row("claim_rate_baseline", "4", f"Claim speed {at}: one-by-one baseline ({nb:,} files), same round", round(mid["baseline_rate"], 1), "files/s", "-", None, False))  # fmt: skip
        self.add(Row("claim_speedup", "4", f"Claim speed: project / one-by-one baseline ({how})", round(speedup, 2), "x", f">= {SPEEDUP_TARGET:g}x", speedup >= SPEEDUP_TARGET, False))  # fmt: skip
        self.add(Row("claim_of_ceiling", "4", f"Claim speed: project / raw concurrent loop ({how})", round(of_ceiling, 2), "", f">= {CEILING_TARGET:g}", of_ceiling >= CEILING_TARGET, False))  # fmt: skip
        helpers = project["helper_cpu_seconds"]
        stack = project["cpu_seconds"] + sum(helpers.values())
        cores = stack / project["seconds"]
        azurite = 1000 * helpers.get("azurite", 0.0) / project["counts"]["storage"]["total"]
        self.add(Row("claim_stack_cores", "4", f"CPU used by tick + Azurite + proxies during that tick (Azurite {azurite:.1f} ms/request)", round(cores, 2), f"of {cfg.cpu_count} cores", f"- (near {cfg.cpu_count}: CPU-bound, the machine is the limit)", None, False))  # fmt: skip
        if not cfg.stock_azurite:
            # For comparison, one round of project and baseline on stock Azurite, whose O(n log n)
            # Delete Blob makes it the limit of any concurrent claim on a small machine.
            project = self.claim_tick(n, stock=True)
            assert project["files"] == n and project["left_in_incoming"] == 0, project["report"]
            baseline = self.raw_loop("baseline", nb, stock=True)
            stock_rate, stock_base = n / project["seconds"], nb / baseline["seconds"]
            self.raw["claim_stock_azurite"] = {"rate": round(stock_rate, 3), "baseline_rate": round(stock_base, 3)}  # fmt: skip
            self.add(Row("claim_speedup_stock_azurite", "4", f"For comparison, on stock Azurite (1 round): project {stock_rate:.0f} / baseline {stock_base:.1f} files/s", round(stock_rate / stock_base, 2), "x", "- (Azurite-bound on small machines)", None, False))  # fmt: skip

    # -- 5: scale --------------------------------------------------------------------------------

    def scale(self) -> None:
        cfg = self.cfg
        n, n0 = cfg.scale_files, cfg.claim_files
        print(f"5. scale: {n0:,} then {n:,} files waiting, one tick each, same store size")
        small = self.claim_tick(n0, ballast=n - n0)
        big = self.claim_tick(n, sample_lease=True)
        self.raw.update(scale_small=small, scale=big)
        report = big["report"]
        claimed = big["files"]
        one_tick = claimed == n and big["left_in_incoming"] == 0
        self.add(Row("scale_all_claimed", "5", f"{n:,} files waiting: claimed in one tick", claimed, "files", f"= {n:,}, none left", one_tick, True))  # fmt: skip
        peak = big["peak_rss_kb"] / 1024
        self.add(Row("scale_peak_rss_mb", "5", f"{n:,}-file tick: peak memory (VmHWM) of the tick process", round(peak, 1), "MB", f"< {PEAK_RSS_TARGET_MB:g} MB", peak < PEAK_RSS_TARGET_MB, False))  # fmt: skip
        held, detail = lease_held(big["lease_samples"], big["wall_start"], big["wall_end"])
        held = held and not report["lease_lost"] and not report["lease_busy"]
        big["lease"] = detail
        renewals = big["counts"]["storage"].get("lease:renew", 0)
        self.add(Row("scale_lease_held", "5", f"{n:,}-file tick: poll lease held throughout ({detail['leased']} samples, {renewals} renewals), lease_lost false", "yes" if held else "no", "", "yes", held, False))  # fmt: skip
        t0, t1 = small["seconds"], big["seconds"]
        ratio, limit = t1 / t0, (n / n0) * (1 + cfg.tolerance)
        self.add(Row("scale_tick_seconds_small", "5", f"Tick time, {n0:,} files (+{n - n0:,} ballast blobs; load {small['loadavg']:.1f})", round(t0, 2), "s", "-", None, False))  # fmt: skip
        self.add(Row("scale_tick_seconds_large", "5", f"Tick time, {n:,} files (load {big['loadavg']:.1f})", round(t1, 2), "s", "-", None, False))  # fmt: skip
        self.add(Row("scale_time_ratio", "5", f"Tick time growth, {n0:,} -> {n:,} files", round(ratio, 2), "x", f"<= {limit:.1f}x (linear +{cfg.tolerance:.0%})", ratio <= limit, False))  # fmt: skip
        cpu_ratio = big["cpu_seconds"] / small["cpu_seconds"]
        self.add(Row("scale_cpu_ratio", "5", f"Tick process CPU time growth, {n0:,} -> {n:,} files (the app's own work; load-independent)", round(cpu_ratio, 2), "x", f"- (linear: ~{n / n0:g}x)", None, False))  # fmt: skip
        if "claim" in self.raw:
            empty = self.raw["claim"]["seconds"]
            why = "- (stock Azurite's Delete Blob grows with blobs stored)" if cfg.stock_azurite else "- (with the preload, blobs stored barely matter)"  # fmt: skip
            self.add(Row("scale_tick_seconds_empty", "5", f"For comparison: tick time, {n0:,} files, empty store (row 4)", round(empty, 2), "s", why, None, False))  # fmt: skip

    # -- 6: launch -------------------------------------------------------------------------------

    def launch(self) -> None:
        print(f"6. launch: a {LAUNCH_FILES}-file drop")
        self.fresh_azurite()
        container = self.new_container("launch")
        self.seed(container, LAUNCH_FILES)
        res = self.run_worker("poll", self.env(container.container_name))
        self.raw["launch"] = res
        report = res["report"]
        launched = sum(1 for x in report["launched"] if x["launched"])
        assert launched >= 1, report
        arm = res["counts"]["arm"]["total"]
        per_batch = arm / launched
        latency = res["marks"]["arm:PUT"] - res["marks"]["storage:GET:list"]
        self.add(Row("launch_arm_per_batch", "6", "Launch: ARM requests per launched batch", round(per_batch, 2), "", f"<= {LAUNCH_ARM_TARGET:g}", per_batch <= LAUNCH_ARM_TARGET, True))  # fmt: skip
        self.add(Row("launch_latency_s", "6", f"Launch: listing finds {LAUNCH_FILES} files -> PUT accepted, at {self.cfg.delay_ms:g} ms/request", round(latency, 3), "s", f"< {LAUNCH_LATENCY_TARGET_S:g} s", latency < LAUNCH_LATENCY_TARGET_S, False))  # fmt: skip

    # -- 7: sweep --------------------------------------------------------------------------------

    def sweep(self) -> None:
        from cleanup.sweep import SWEEP_CONCURRENCY

        groups = self.cfg.sweep_groups
        print(f"7. sweep of {groups} finished groups (set up directly, not measured)")
        self.fresh_azurite()
        container = self.new_container("sweep")
        self.seed(container, groups * SWEEP_FILES_PER_BATCH)
        name = container.container_name
        direct = self.env(name, self.claim_overrides(), via_proxy=False)
        direct["BATCH_MAX_FILES"] = str(SWEEP_FILES_PER_BATCH)
        launched = setup_launched(direct, groups)
        assert launched == groups, launched
        wait_terminated(self.emulator, "rg-" + name, groups)
        res = self.run_worker("sweep", self.env(name, self.claim_overrides()))
        self.raw["sweep"] = res
        report = res["report"]
        finished = len(report["finished"]) + len(report["failed"])
        assert finished == groups, report
        arm, storage = res["counts"]["arm"]["total"], res["counts"]["storage"]["total"]
        seconds = res["seconds"]
        arm_per, storage_per = arm / finished, storage / finished
        moved = SWEEP_FILES_PER_BATCH + 1  # the inputs and the attempt's log
        storage_limit = 2 * moved + SWEEP_STORAGE_FIXED
        mean_in_flight = (arm + storage) * self.cfg.delay_ms / 1000 / seconds
        peak, bound = res["peak_in_flight"], SWEEP_CONCURRENCY + self.cfg.io_concurrency
        self.add(Row("sweep_wall_s", "7", f"Sweep of {groups} finished groups: wall time (load {res['loadavg']:.1f})", round(seconds, 2), "s", "-", None, False))  # fmt: skip
        self.add(Row("sweep_arm_per_group", "7", "Sweep: ARM requests per finished group", round(arm_per, 3), "", f"<= {SWEEP_ARM_TARGET:g}", arm_per <= SWEEP_ARM_TARGET, True))  # fmt: skip
        self.add(Row("sweep_storage_per_batch", "7", f"Sweep: storage requests per finished batch ({moved} blobs moved)", round(storage_per, 3), "", f"<= {storage_limit} (2/blob + {SWEEP_STORAGE_FIXED})", storage_per <= storage_limit, True))  # fmt: skip
        self.add(Row("sweep_peak_in_flight", "7", f"Sweep: peak requests in flight (SWEEP_CONCURRENCY={SWEEP_CONCURRENCY} groups at once, their moves on the {self.cfg.io_concurrency}-wide pool)", peak, "", f"{SWEEP_CONCURRENCY}..{bound} (concurrent, bounded)", SWEEP_CONCURRENCY <= peak <= bound, False))  # fmt: skip
        self.add(Row("sweep_mean_in_flight", "7", "Sweep: requests in flight on average (requests x delay / wall)", round(mean_in_flight, 1), "", "-", None, False))  # fmt: skip

    # -- 8: history --------------------------------------------------------------------------------

    def history(self) -> None:
        sizes = (600, 1500) if self.cfg.tiny else HISTORY_SIZES  # tiny: 60 failed still fill a page
        print(f"8. history: newest page of {HISTORY_PAGE} at {sizes[0]:,} and {sizes[1]:,} batches")
        self.fresh_azurite()
        name = self.new_container("history").container_name
        seeded = 0
        results: dict[tuple[int, str], dict[str, Any]] = {}
        for size, scale in zip(sizes, ("small", "large"), strict=True):
            seed_history(self.env(name, via_proxy=False), seeded, size)
            seeded = size
            for state in ("", "failed"):
                res = self.run_worker("history", self.env(name), state=state)
                assert res["report"]["rows"] == HISTORY_PAGE and res["report"]["more"], res
                results[(size, state)] = res
                self.raw[f"history_{scale}_{state or 'all'}"] = res
                requests_, seconds = res["counts"]["storage"]["total"], res["seconds"]
                what = f"{state or 'all states'}, {size:,} finished batches"
                self.add(Row(f"history_{scale}_{state or 'all'}_requests", "8", f"History page of {HISTORY_PAGE} ({what}): storage requests", requests_, "", f"<= {HISTORY_REQUEST_TARGET}", requests_ <= HISTORY_REQUEST_TARGET, True))  # fmt: skip
                self.add(Row(f"history_{scale}_{state or 'all'}_seconds", "8", f"History page of {HISTORY_PAGE} ({what}): time at {self.cfg.delay_ms:g} ms/request", round(seconds, 3), "s", f"< {HISTORY_SECONDS_TARGET}", seconds < HISTORY_SECONDS_TARGET, False))  # fmt: skip
        for state in ("", "failed"):
            small, large = (results[(n, state)]["counts"]["storage"]["total"] for n in sizes)
            self.add(Row(f"history_same_cost_{state or 'all'}", "8", f"History page ({state or 'all states'}): requests at {sizes[1]:,} vs {sizes[0]:,} batches", f"{large} vs {small}", "", "equal", large == small, True))  # fmt: skip

    # -- 9: backlog -------------------------------------------------------------------------------

    def backlog(self) -> None:
        """A tick's cost grows with what it claims, never with what waits (launcher.poll)."""
        cfg = self.cfg
        from launcher.poll import LIST_PAGE_SIZE

        big, mid = cfg.backlog_files, max(cfg.backlog_files // 10, BACKLOG_PER_TICK + 1)
        print(
            f"9. backlog: {BACKLOG_PER_TICK} claimed a tick (2 batches of 100) with "
            f"{BACKLOG_PER_TICK:,}, {mid:,} and {big:,} files waiting"
        )
        started = time.monotonic()
        self.fresh_azurite()
        runs: dict[int, dict[str, Any]] = {}
        seeding = 0.0
        containers: dict[int, ContainerClient] = {}
        for count in (BACKLOG_PER_TICK, mid, big):
            container = containers[count] = self.new_container("backlog")
            took = self.upload(container, [f"incoming/drop/f{i:06d}.dat" for i in range(count)])
            seeding += took
            print(f"    [seeded {count:,} files in {took:.1f} s]", flush=True)
            runs[count] = self.run_worker("poll", self.env(container.container_name, BACKLOG_CAPS))
            assert runs[count]["files"] == BACKLOG_PER_TICK, runs[count]["report"]
        alone, small, large = runs[BACKLOG_PER_TICK], runs[mid], runs[big]
        self.raw.update(backlog_alone=alone, backlog_small=small, backlog=large)
        peak, peak_small = large["peak_rss_kb"] / 1024, small["peak_rss_kb"] / 1024
        # Compared with the smaller backlog only when both fill the first page (tiny runs do not).
        paged = mid >= LIST_PAGE_SIZE
        ok = peak < PEAK_RSS_TARGET_MB and (not paged or peak <= peak_small * 1.05)
        versus = f" and <= the {mid:,}-file tick's + 5%" if paged else ""
        self.add(Row("backlog_peak_rss_mb", "9", f"{big:,} files waiting, {BACKLOG_PER_TICK} claimed: peak memory (VmHWM) of the tick process ({mid:,} waiting: {peak_small:.1f} MB)", round(peak, 1), "MB", f"< {PEAK_RSS_TARGET_MB:g} MB{versus}", ok, False))  # fmt: skip
        first_put = large["marks"].get("arm:PUT", float("inf"))
        self.add(Row("backlog_first_put_s", "9", f"{big:,} files waiting: tick start -> first group PUT accepted, at {cfg.delay_ms:g} ms/request", round(first_put, 3), "s", f"< {BACKLOG_FIRST_PUT_S:g} s", first_put < BACKLOG_FIRST_PUT_S, False))  # fmt: skip
        base = alone["counts"]["storage"]["total"]
        storage = large["counts"]["storage"]["total"]
        limit = base * (1 + BACKLOG_REQUEST_EXCESS)
        self.add(Row("backlog_storage_requests", "9", f"{big:,} files waiting: the tick's storage requests (claiming the same {BACKLOG_PER_TICK} files with nothing else waiting: {base})", storage, "", f"<= {limit:.0f} (+{BACKLOG_REQUEST_EXCESS:.0%})", storage <= limit, True))  # fmt: skip
        lists = large["counts"]["storage"].get("list", 0)
        self.add(Row("backlog_list_requests", "9", f"{big:,} files waiting: List Blobs requests of that tick (incoming/ stops after its batches, + processing/)", lists, "", "<= 2", lists <= 2, True))  # fmt: skip
        # Room 0: the two groups that tick launched fill MAX_ACTIVE_GROUPS=2.
        full = self.run_worker(
            "poll",
            self.env(containers[big].container_name, BACKLOG_CAPS | {"MAX_ACTIVE_GROUPS": "2"}),
        )
        self.raw["backlog_room0"] = full
        assert full["report"]["room"] == 0, full["report"]
        lists = full["counts"]["storage"].get("list", 0)
        others = {k: v for k, v in full["counts"]["storage"].items() if k not in ("list", "total")}
        self.add(Row("backlog_room0_list_requests", "9", f"Room 0, {big - BACKLOG_PER_TICK:,} files waiting: List Blobs requests (other storage: {others}; ARM: {full['counts']['arm']['total']})", lists, "", "<= 1", lists <= 1, True))  # fmt: skip
        self.blocked_in_front()
        self.drain()
        self.add(Row("backlog_setup_s", "9", f"Row 9 wall time, including uploading its {big + mid + BACKLOG_PER_TICK + cfg.blocked_files + cfg.blocked_claimable + cfg.drain_files:,} files 48 at a time ({seeding:.0f} s for the first three drops)", round(time.monotonic() - started, 1), "s", "-", None, False))  # fmt: skip

    def blocked_in_front(self) -> None:
        cfg = self.cfg
        n, free = cfg.blocked_files, cfg.blocked_claimable
        container = self.new_container("blocked")
        # Archived files are what the listing itself shows as blocked (one request per upload).
        self.upload(
            container,
            [f"incoming/a-archived/f{i:06d}.dat" for i in range(n)],
            standard_blob_tier=StandardBlobTier.ARCHIVE,
        )
        self.upload(container, [f"incoming/b-free/f{i:06d}.dat" for i in range(free)])
        res = self.run_worker("poll", self.env(container.container_name, BLOCKED_CAPS))
        self.raw["backlog_blocked"] = res
        left = sum(1 for _ in container.list_blobs(name_starts_with="incoming/"))
        report = res["report"]
        ok = res["files"] == free and left == n and report["blocked_total"] == n
        self.add(Row("backlog_blocked_in_front", "9", f"{n:,} blocked (archived) files in front of {free:,} claimable ones: claimed in that tick ({res['counts']['storage'].get('list', 0)} List Blobs)", res["files"], "files", f"= {free:,}", ok, True))  # fmt: skip

    def drain(self) -> None:
        """Ticks until nothing is left: each claims what the caps allow, in name order, and
        every file ends in exactly one batch (audited as the reliability suite does)."""
        n = self.cfg.drain_files
        container = self.new_container("drain")
        contents = {
            f"incoming/drop/f{i:06d}.dat": f"{i}\n{uuid.uuid4()}\n".encode() for i in range(n)
        }
        self.upload(container, list(contents), content=contents.__getitem__)
        expected = {name: _sha(data) for name, data in contents.items()}
        per_tick: list[int] = []
        env = self.env(container.container_name, BACKLOG_CAPS)
        while len(per_tick) <= n // BACKLOG_PER_TICK + 1:
            res = self.run_worker("poll", env)
            if res["report"]["idle"]:
                break
            per_tick.append(res["files"])
        self.raw["backlog_drain"] = {"per_tick": per_tick}
        lost, duplicated = audit(container, expected)
        at_caps = all(c == BACKLOG_PER_TICK for c in per_tick[:-1]) and sum(per_tick) == n
        self.add(Row("backlog_drain_ticks", "9", f"Draining {n:,} files: ticks, each claiming {BACKLOG_PER_TICK} (the caps) but the last", len(per_tick), "ticks", f"= {-(-n // BACKLOG_PER_TICK)}, {BACKLOG_PER_TICK} a tick", at_caps and len(per_tick) == -(-n // BACKLOG_PER_TICK), True))  # fmt: skip
        self.add(Row("backlog_drain_lost_duplicated", "9", f"Draining {n:,} files: lost + claimed twice (name and content hash, every batch checked)", len(lost) + len(duplicated), "files", "= 0", not lost and not duplicated, True))  # fmt: skip


def seed_history(env: dict[str, str], start: int, stop: int) -> None:
    """Index entries of finished batches start..stop-1, one a minute (not measured)."""
    from datetime import UTC, datetime, timedelta

    from cleanup import history
    from config import load_settings
    from launcher.batch import FileEntry, Manifest, State, iso, new_batch_id
    from launcher.clients import build_clients

    clients = build_clients(load_settings(env))
    first = datetime(2025, 1, 1, tzinfo=UTC)

    def one(i: int) -> None:
        when = first + timedelta(minutes=i)
        failed = i % HISTORY_FAILED_EVERY == 0
        m = Manifest(
            batch_id=new_batch_id(when),
            state=State.FAILED if failed else State.SUCCEEDED,
            created=iso(when) or "",
            updated="",
            files=[
                FileEntry(f"incoming/job-{i}/a.txt", f"job-{i}/a.txt", f"job-{i}/a.txt", "e", 1)
            ],
            folder=f"job-{i}",
            attempt=1,
            reason="attempt 1/3: exit code 2 (Error)" if failed else None,
        )
        prefix = clients.settings.failed_prefix if failed else clients.settings.done_prefix
        history.record(clients, m, prefix)

    errors = [r for r in clients.runner.map(one, range(start, stop)) if r is not None]
    assert not errors, errors[:3]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def audit(container: ContainerClient, expected: dict[str, str]) -> tuple[list[str], list[str]]:
    """(lost, duplicated), decided as scripts/chaos does: a file is lost when no batch holds a
    copy of its content and it is not in incoming/ either; duplicated when more than one place
    (batches and incoming/) holds it."""
    from launcher.batch import MANIFEST_NAME, Manifest

    places: dict[str, int] = {}
    for blob in container.list_blobs(name_starts_with="processing/"):
        if not blob.name.endswith("/" + MANIFEST_NAME):
            continue
        manifest = Manifest.from_bytes(container.download_blob(blob.name).readall())
        folder = blob.name[: -len(MANIFEST_NAME)]
        for f in manifest.files:
            data = container.download_blob(folder + f.blob).readall()
            if expected.get(f.source) == _sha(data):
                places[f.source] = places.get(f.source, 0) + 1
    for blob in container.list_blobs(name_starts_with="incoming/"):
        if expected.get(blob.name) == _sha(container.download_blob(blob.name).readall()):
            places[blob.name] = places.get(blob.name, 0) + 1
    lost = [n for n in expected if places.get(n, 0) == 0]
    duplicated = [n for n in expected if places.get(n, 0) > 1]
    return lost, duplicated


def lease_held(
    samples: list[tuple[float, str]], start: float, end: float, margin: float = 1.0
) -> tuple[bool, dict[str, int]]:
    """Was the poll lease held from the first sample that saw it until the tick ended?

    Samples taken after the first `leased` one and more than `margin` seconds before the tick
    returned must all be `leased/locked` (the tick releases the lease in its last moments)."""
    inside = [(t, s) for t, s in samples if start <= t <= end - margin]
    first = next((i for i, (_, s) in enumerate(inside) if s == "leased/locked"), None)
    if first is None:
        return False, {"samples": len(inside), "leased": 0, "gaps": 0}
    after = inside[first:]
    gaps = sum(1 for _, s in after if s != "leased/locked")
    detail = {"samples": len(inside), "leased": len(after) - gaps, "gaps": gaps}
    return gaps == 0, detail


def setup_launched(env: dict[str, str], groups: int) -> int:
    """Claim `groups` batches and launch one group each with the app's own claim and launch
    functions, directly against Azurite and the emulator (no proxy, not measured)."""
    from config import load_settings
    from launcher.batch import utcnow
    from launcher.blobs import LeaseLock
    from launcher.claim import Plan, claim, plan_batches, scan
    from launcher.clients import build_clients
    from launcher.launch import launch_batch

    settings = load_settings(env)
    clients = build_clients(settings)
    listing = list(
        clients.container.list_blobs(
            name_starts_with=settings.incoming_prefix, include=["metadata"]
        )
    )
    plans = plan_batches(settings, scan(settings, listing, utcnow()).claimable, groups)
    lease = LeaseLock(clients.container, settings.poll_lock_blob, settings.lease_seconds)
    assert lease.try_acquire()
    with lease:

        def one(plan: Plan) -> bool:
            result = claim(clients, plan, lease)
            assert result.manifest is not None and result.etag is not None
            return launch_batch(clients, result.manifest, result.etag, set()).launched

        with ThreadPoolExecutor(max_workers=8) as pool:
            return sum(1 for ok in pool.map(one, plans) if ok)


def wait_terminated(emulator: Any, rg: str, groups: int, timeout: float = 300) -> None:
    """Wait until every group of `rg` has run its `python -c pass` to the end."""
    needle = f"/resourcegroups/{rg}/".lower()
    deadline = time.monotonic() + timeout
    while True:
        mine = [g for g in emulator.groups() if needle in g["id"].lower()]
        done = [
            g
            for g in mine
            if g["containers"] and all(c["state"] == "Terminated" for c in g["containers"])
        ]
        if len(mine) == groups and len(done) == groups:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)}/{groups} groups terminated after {timeout}s")
        time.sleep(0.5)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[Row]) -> str:
    """A Markdown table: printed, and pasted as is into docs/performance.md."""
    lines = ["| # | figure | value | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{fmt(r.value)} {r.unit}".strip()
        met = "–" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.section} | {r.metric} | {value} | {r.target} | {met} |")
    return "\n".join(lines)


def slim(res: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one run: figures and counts, reports trimmed to their sizes."""
    report = res.get("report") or {}
    out = {
        "seconds": round(res["seconds"], 3),
        "cpu_seconds": round(res["cpu_seconds"], 3),
        "helper_cpu_seconds": res["helper_cpu_seconds"],
        "loadavg": round(res["loadavg"], 2),
        "files": res["files"],
        "counts": res["counts"],
        "peak_rss_mb": round(res["peak_rss_kb"] / 1024, 1),
        "rss_before_mb": round(res["rss_before_kb"] / 1024, 1),
        "marks": {k: round(v, 4) for k, v in res["marks"].items()},
        "peak_in_flight": res["peak_in_flight"],
        "report": {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()},
    }
    return out | {k: res[k] for k in ("left_in_incoming", "lease", "ballast") if k in res}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Benchmark the app against Azurite and the ACI emulator behind counting, "
        "delaying proxies (see the module docstring).",
    )
    p.add_argument("--tiny", action="store_true", help="50 / 200 files, 10 groups, 2,000 waiting")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--delay-ms", type=float, default=20.0, help="added per request by the proxies")
    p.add_argument("--files", type=int, help="files of the claim runs (default 1,000; tiny 50)")
    p.add_argument(
        "--baseline-files", type=int, help="files of each baseline run (default files/5, >= 50)"
    )
    p.add_argument("--scale-files", type=int, help="files of the scale run (default 10x; tiny 4x)")
    p.add_argument(
        "--backlog-files", type=int, help="files waiting in row 9 (default 100,000; tiny 2,000)"
    )
    p.add_argument("--groups", type=int, help="finished groups to sweep (default 200; tiny 10)")
    p.add_argument("--rounds", type=int, help="runs of project and ceiling (default 3; tiny 1)")
    p.add_argument("--tolerance", type=float, default=0.2, help="allowed excess over linear")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    p.add_argument("--only", default=SECTIONS, help=f"sections to run (default {SECTIONS})")
    p.add_argument("--profile", type=Path, help="record every worker with py-spy into this folder")
    p.add_argument("--workdir", type=Path, help="keep worker and proxy logs here (default: temp)")
    p.add_argument(
        "--stock-azurite",
        action="store_true",
        help="run Azurite without the fast-delete preload (see the module docstring)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["_worker"]:
        return worker_main()
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so Azurite, the emulator and the proxies are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from cleanup.sweep import SWEEP_CONCURRENCY
    from config import load_settings
    from localdev.aci_emulator.testing import start_emulator

    claim_files = args.files or (50 if args.tiny else 1000)
    scale_files = args.scale_files or claim_files * (4 if args.tiny else 10)
    cfg = Config(
        tiny=args.tiny,
        delay_ms=args.delay_ms,
        claim_files=claim_files,
        baseline_files=args.baseline_files or max(50, claim_files // 5),
        scale_files=scale_files,
        sweep_groups=args.groups or (10 if args.tiny else 200),
        batch_max_files=max(1, claim_files // 2),
        tolerance=args.tolerance,
        rounds=max(1, args.rounds or (1 if args.tiny else 3)),
        stock_azurite=args.stock_azurite,
        sweep_concurrency=SWEEP_CONCURRENCY,
        backlog_files=args.backlog_files or (2_000 if args.tiny else 100_000),
        blocked_files=300 if args.tiny else 10_000,
        blocked_claimable=50 if args.tiny else 1_000,
        drain_files=600 if args.tiny else 2_000,
    )
    only = set(args.only.split(","))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-bench-")))
        # Azure's defaults, except that the sweep sets up `sweep_groups` (200) groups at once:
        # ContainerGroups, StandardCores and the create/delete budgets (100 per 5 minutes) are
        # Azure's "changeable limits", raised here as a subscription running at that scale
        # would have them raised. Every benchmark resource group is `rg-<container>`.
        emulator = stack.enter_context(
            start_emulator(
                workdir / "aci",
                resource_groups=["rg-*"],
                quota=None,
                cores_quota=None,
                creates_per_5_minutes=None,
                creates_per_hour=None,
                deletes_per_5_minutes=None,
                deletes_per_hour=None,
            )
        )
        bench = Bench(cfg, workdir, emulator, args.profile)
        stack.callback(bench.close)
        bench.storage = stack.enter_context(
            run_proxy(
                f"http://127.0.0.1:{bench.azurite_port}",
                cfg.delay_ms,
                workdir / "proxy-storage.log",
            )
        )
        bench.arm = stack.enter_context(
            run_proxy(emulator.url, cfg.delay_ms, workdir / "proxy-arm.log", True, str(emulator.ca))
        )
        cfg.io_concurrency = load_settings(bench.env("probe")).io_concurrency
        print(
            f"benchmark: {cfg.delay_ms:g} ms per request; claim {cfg.claim_files:,} files "
            f"({cfg.rounds} round(s)), scale {cfg.scale_files:,}, sweep {cfg.sweep_groups} "
            f"groups; IO_CONCURRENCY {cfg.io_concurrency}; {cfg.cpu_count} CPU(s), load "
            f"{load_start:.1f}; Azurite {'stock' if cfg.stock_azurite else 'with fast-delete preload'}",
            flush=True,
        )
        for section, run in (
            ("idle", bench.idle),
            ("claim", bench.claim),
            ("scale", bench.scale),
            ("launch", bench.launch),
            ("sweep", bench.sweep),
            ("history", bench.history),
            ("backlog", bench.backlog),
        ):
            if section in only:
                run()
    elapsed = time.monotonic() - started
    rows = bench.rows
    missed = [r.key for r in rows if r.met is False]
    print()
    print(table(rows))
    print(f"\nmissed: {', '.join(missed) or 'none'}; took {elapsed:.0f} s")
    if args.json:
        document = {
            "config": asdict(cfg),
            "rows": [asdict(r) for r in rows],
            "missed": missed,
            "elapsed_seconds": round(elapsed, 1),
            "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
            "raw": {
                k: (slim(v) if isinstance(v, dict) and "seconds" in v else v)
                for k, v in bench.raw.items()
            },
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
