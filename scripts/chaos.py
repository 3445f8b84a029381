#!/usr/bin/env python3
"""Reliability suite: crash, race, fault, lease-theft, bad-input, bad-config and security
scenarios against the REAL pipeline, with figures.

Why this exists: the README promises that nothing dropped is lost, nothing runs twice, bad input
cannot escape its batch and bad settings stop the app before it touches anything. Unit tests
check each mechanism; this suite attacks the whole system the way production does (processes
killed mid-request, pollers racing, flaky networks, users doing odd things) and counts.

What runs: a real Azurite (`localdev.azurite.run_azurite`), the ACI emulator
(`localdev.aci_emulator.testing.start_emulator`, containers are local processes), the poll and
the janitor as separate processes (`python -m launcher poll`, `python -m cleanup sweep`, settings
in environment variables as in production) and loopback reverse proxies (`localdev.proxy`) in
front of both services for counting, fault injection and crash triggers. Every subprocess tags
its requests through `AZURE_HTTP_USER_AGENT`, so one shared proxy can aim a trigger at one trial
and one role (`copy:c7.poll` is the copy requests of crash trial 7's pollers).

Scenarios (counts: `--quick` for `make test`, default = full for `make chaos`):
  crash     SIGKILL poll or sweep at a random request (storage copy/delete/put_blob/list, ARM
            put/delete/get/logs; before or after the service applied it); after a killed poll
            the user drops names again that the dead tick had taken; then run until quiet.
  race      three pollers and two sweepers looping concurrently while files arrive in waves.
  faults    10% of storage and of ARM requests fail (500, 503, 429 + Retry-After, connection
            dropped before or after the service applied the request); in the full run the
            first fault run uses the real sample worker image, which reads through the faults.
  lease     the poll lease is broken mid-claim and a second poller takes it at once; or it is
            broken while a group PUT is in flight and the new holder's tick runs first.
  badinput  a corpus of awkward blobs (names, sizes, blob types, snapshots, leases, tiers,
            changes mid-claim), each recorded with what happened to it.
  config    every setting missing or malformed in turn: exit code 2, one message naming it,
            zero requests to storage or ARM.
  security  ops endpoints without/with wrong keys, dry runs, secrets in logs and in ARM,
            property tests of blob paths and group names derived from user input.

Definitions checked from storage and ARM at the end of each scenario (`Checker`):
  lost            a dropped file (name + content hash) in no finished batch (done/ or failed/
                  manifest lists it AND the input blob is there), not legitimately in incoming/
                  and not in an unfinished batch either (that is "stuck", counted as unfinished)
  duplicated      the same dropped file in more than one batch (or in one and still in
                  incoming/)
  double-launched a container group name created more than once, or redeployed (the emulator's
                  log records each create (ARM 201) and redeploy; a retried PUT that ARM answered
                  from the existing group is not a launch)
Limits: seeded (`--seed`), bounded counts and time, loopback only (nothing leaves 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import posixpath
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.mgmt.containerinstance import ContainerInstanceManagementClient  # noqa: E402
from azure.storage.blob import (  # noqa: E402
    BlobBlock,
    BlobLeaseClient,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
)

import config  # noqa: E402
from localdev.aci_emulator.testing import Emulator, make_client, start_emulator  # noqa: E402
from localdev.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port, run_azurite  # noqa: E402
from localdev.azurite import wait_for_port as _wait_for_port  # noqa: E402
from localdev.proxy import Classifier, FaultConfig, Proxy, arm_kind, storage_kind  # noqa: E402

SUBSCRIPTION = "00000000-0000-0000-0000-0000000c4a05"
PASS_COMMAND = '["python", "-c", "pass"]'
# Exit code from the batch id: a third of the batches always fail (they end in failed/), a third
# fail their first attempt only (relaunch), a third succeed: every janitor path runs.
FLAKY_COMMAND = json.dumps(
    [
        "python",
        "-c",
        "import os, sys, zlib; h = zlib.crc32(os.environ['ML_BATCH_ID'].encode()) % 3; "
        "sys.exit(1 if h == 0 or (h == 1 and os.environ['ML_ATTEMPT'] == '1') else 0)",
    ]
)
WORKER_IMAGE = "modellauncher/worker:latest"
TAG_ENV = "AZURE_HTTP_USER_AGENT"
TAG_RE = re.compile(r"chaos-tag/(\S+)")
MIB = 1024 * 1024
GIB = 1024 * MIB
HASH_LIMIT = 8 * MIB  # larger blobs are compared by size and sampled ranges
STORAGE_WRITES = (
    "put_blob",
    "put_block",
    "put_block_list",
    "copy",
    "delete",
    "batch",
    "delete_container",
    "create_container",
    "set_metadata",
    "abort_copy",
    "lease",
)
ARM_WRITES = ("arm_put", "arm_delete", "arm_patch", "arm_stop", "arm_other")


class Interrupted(RuntimeError):
    """The run is stopping (Ctrl-C, SIGTERM): no new process may start."""


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Run modes and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """Trial counts and time bounds of one run."""

    name: str
    crash_trials: int
    crash_parallel: int
    race_ticks: int
    race_files: int
    race_waves: int
    fault_runs: int
    fault_files: int
    lease_trials: int
    lease_files: int
    big_block_mib: int  # a real block blob, uploaded (the sparse 1 GiB page blob is always there)
    config_cases: int | None  # None: every case
    property_examples: int
    trial_seconds: float  # bound on one crash/lease trial
    scenario_seconds: float  # bound on one scenario's drive to quiescence
    fault_seconds: float  # bound on one fault run (storage retries back off 15 s and more)
    fault_worker: bool  # the first fault run uses the sample worker image (else a no-op one)


FULL = Mode(
    name="full",
    crash_trials=100,
    crash_parallel=3,
    race_ticks=200,
    race_files=1000,
    race_waves=10,
    fault_runs=2,
    fault_files=60,
    lease_trials=3,
    lease_files=160,
    big_block_mib=1024,
    config_cases=None,
    property_examples=3000,
    trial_seconds=150,
    scenario_seconds=420,
    fault_seconds=900,
    fault_worker=True,
)
QUICK = Mode(
    name="quick",
    crash_trials=8,
    crash_parallel=2,
    race_ticks=30,
    race_files=100,
    race_waves=3,
    fault_runs=1,
    fault_files=8,
    lease_trials=1,
    lease_files=120,
    big_block_mib=16,
    config_cases=14,
    property_examples=300,
    trial_seconds=120,
    scenario_seconds=180,
    fault_seconds=240,
    fault_worker=False,
)
SCENARIOS = ("crash", "race", "faults", "lease", "badinput", "config", "security")


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    trials: int = 0
    dropped: int = 0
    lost: int = 0
    duplicated: int = 0
    double_launched: int = 0
    finished: int = 0
    unfinished: int = 0  # trials that ended with files stuck, or batches or groups left over
    failures: list[str] = field(default_factory=list)  # anything else that broke a promise
    notes: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)  # scenario-specific counts
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.double_launched or self.unfinished or self.failures
        )


@dataclass
class CheckResult:
    """One pass/fail statement (security, configuration, bad input)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    mode: str
    seed: int
    rows: list[Row] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    bad_input: list[dict[str, Any]] = field(default_factory=list)
    bad_config: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    logdir: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for row, raw in zip(self.rows, out["rows"], strict=True):
            raw["ok"] = row.ok
        return out


# ---------------------------------------------------------------------------------------------
# Processes: every child is registered so Ctrl-C or a crash of this script leaves none behind
# ---------------------------------------------------------------------------------------------


class Processes:
    """Starts children in their own session and kills exactly those (by pid) on the way out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, subprocess.Popen[bytes]] = {}
        self.closed = False

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], stdout: Path, stderr: Path
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.closed:
                raise Interrupted("stopping")
            with open(stdout, "wb") as out, open(stderr, "wb") as err:
                proc = subprocess.Popen(
                    list(argv),
                    cwd=REPO_ROOT,
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            self._live[proc.pid] = proc
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """The exit code, or None if it had to be killed after `timeout` seconds."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return None
        finally:
            with self._lock:
                self._live.pop(proc.pid, None)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def kill_all(self) -> None:
        with self._lock:
            self.closed = True
            procs = list(self._live.values())
        for proc in procs:
            self.kill(proc)


@dataclass
class Run:
    """One finished CLI process."""

    role: str
    tag: str
    rc: int | None  # None: killed by the timeout
    stdout: Path
    stderr: Path
    seconds: float

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def report(self) -> dict[str, Any] | None:
        """The JSON report the CLI prints on stdout, if it got that far."""
        try:
            data = json.loads(self.out())
        except (json.JSONDecodeError, OSError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def crashed(self) -> bool:
        """Died of an unhandled exception (not killed by us or by the time bound)."""
        if self.rc is None:
            return False
        return self.rc not in (0, 1, 3, -signal.SIGKILL) or "Traceback" in self.err()


# ---------------------------------------------------------------------------------------------
# Proxies: request kinds tagged with the trial/role of the process that sent them
# ---------------------------------------------------------------------------------------------


def tagged(base: Classifier) -> Classifier:
    """`base`'s kind plus `:<tag>` from the client's user agent (see TAG_ENV)."""

    def classify(
        method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
    ) -> str:
        kind = base(method, path, query, headers)
        agent = headers.get("user-agent") or headers.get("User-Agent") or ""
        found = TAG_RE.search(agent)
        return f"{kind}:{found.group(1)}" if found else kind

    return classify


def labelled(labels: Mapping[str, str], container: str) -> Classifier:
    """Storage kind plus `:<label>` when the request's blob (the copy SOURCE for a copy) is one
    of `labels`: how the bad-input scenario counts downloads of, and aims triggers at, one blob."""
    prefix = f"/{ACCOUNT}/{container}/"

    def classify(
        method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
    ) -> str:
        kind = storage_kind(method, path, query, headers)
        target = headers.get("x-ms-copy-source") if kind == "copy" else path
        decoded = urllib.parse.unquote(urllib.parse.urlsplit(target or "").path)
        label = labels.get(decoded[len(prefix) :]) if decoded.startswith(prefix) else None
        return f"{kind}:{label}" if label else kind

    return classify


def sum_kinds(counts: Mapping[str, int], kinds: Sequence[str], tag: str | None = None) -> int:
    """Requests of any of `kinds` (with any suffix), optionally only those tagged `tag`."""
    total = 0
    for key, value in counts.items():
        if key == "total":
            continue
        base = key.split(":", 1)[0]
        if base not in kinds:
            continue
        if tag is not None and not key.endswith(":" + tag):
            continue
        total += value
    return total


# ---------------------------------------------------------------------------------------------
# The stack: Azurite + ACI emulator + process registry, shared by every scenario
# ---------------------------------------------------------------------------------------------


@dataclass
class Arena:
    """One scenario's (or trial's) own container and resource group on the shared stack."""

    name: str
    container: ContainerClient
    rg: str
    dropped: dict[str, Dropped] = field(default_factory=dict)


@dataclass
class Dropped:
    """A file a user dropped: how to recognise it, and which ends are legitimate for it."""

    name: str  # full blob name in incoming/
    sha256: str
    size: int
    samples: tuple[str, str] = ("", "")  # sha256 of the first and last MiB (large blobs)
    md5: bytes | None = None  # for blobs that cannot be read back (archive tier)
    expect: frozenset[str] = frozenset({"batch"})  # batch | incoming | gone


class Stack(contextlib.ExitStack):
    """Azurite, the ACI emulator, direct (unproxied) clients and the process registry."""

    def __init__(self, workdir: Path, seed: int) -> None:
        super().__init__()
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.procs = Processes()
        self.stop = threading.Event()
        self.secrets = {"account key": ACCOUNT_KEY}  # none may appear in any log line
        self._counter = Counter[str]()
        self._lock = threading.Lock()
        self.azurite: Azurite
        self.emulator: Emulator
        self.service: BlobServiceClient
        self.arm: ContainerInstanceManagementClient

    def start(self) -> Stack:
        self.azurite = self.enter_context(run_azurite())
        self.emulator = self.enter_context(start_emulator(self.workdir / "aci", page_size=100))
        # Registered after both services, so it runs first on the way out: children die before
        # the services they talk to.
        self.callback(self.procs.kill_all)
        self.service = BlobServiceClient.from_connection_string(
            self.azurite.connection_string, max_single_put_size=64 * MIB, max_block_size=64 * MIB
        )
        self.arm = make_client(self.emulator, SUBSCRIPTION, polling_interval=0.2)
        return self

    @property
    def storage_upstream(self) -> str:
        return f"http://127.0.0.1:{self.azurite.port}"

    def arena(self, label: str) -> Arena:
        """A fresh container + resource group (names unique per run)."""
        with self._lock:
            self._counter[label] += 1
            n = self._counter[label]
        name = f"chaos-{label}-{self.seed % 100000}-{n}-{random.Random().randrange(16**6):06x}"
        container = self.service.create_container(name[:63])
        return Arena(name=name[:63], container=container, rg=f"rg-{name[:60]}")

    def proxy(
        self, upstream: str, classify: Classifier, seed: int | None = None, **kwargs: Any
    ) -> Proxy:
        """A loopback proxy that lives as long as the stack (faults drawn from `seed`)."""
        proxy = Proxy(
            upstream, classify=classify, seed=self.seed if seed is None else seed, **kwargs
        )
        self.callback(proxy.stop)
        return proxy

    def storage_proxy(self, classify: Classifier | None = None, **kwargs: Any) -> Proxy:
        return self.proxy(self.storage_upstream, classify or tagged(storage_kind), **kwargs)

    def arm_proxy(self, **kwargs: Any) -> Proxy:
        return self.proxy(
            self.emulator.url,
            tagged(arm_kind),
            tls=True,
            upstream_ca=str(self.emulator.ca),
            **kwargs,
        )

    # -- settings and processes ------------------------------------------------------------------

    def env(
        self,
        arena: Arena,
        storage: Proxy | None = None,
        arm: Proxy | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Settings for a poll/sweep process, as environment variables (like
        tests/conftest.py `Pipeline.subprocess_env`), with the caller's environment scrubbed
        of every setting so nothing from the shell leaks in."""
        env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
        env.update(
            {
                config.STORAGE_CONNECTION_STRING: storage.blob_connection_string()
                if storage
                else self.azurite.connection_string,
                config.WATCH_CONTAINER: arena.name,
                config.AZURE_SUBSCRIPTION_ID: SUBSCRIPTION,
                config.ACI_RESOURCE_GROUP: arena.rg,
                config.ACI_LOCATION: "local",
                config.ACI_IMAGE: "python:3.11",
                config.ACI_COMMAND: PASS_COMMAND,
                config.ARM_ENDPOINT: arm.url if arm else self.emulator.url,
                config.ARM_CA_BUNDLE: str(arm.ca_path if arm else self.emulator.ca),
                config.ARM_AUTH: "emulator",
                config.BATCH_SETTLE_SECONDS: "0",
                config.STUCK_CLAIM_SECONDS: "0",
                config.LEASE_SECONDS: "15",
                config.IO_CONCURRENCY: "4",
                config.ORPHAN_GRACE_MINUTES: "0",
                config.JOB_TIMEOUT_MINUTES: "2",
                config.MAX_ATTEMPTS: "2",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(overrides or {})
        return {k: v for k, v in env.items() if v != ""}

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], tag: str
    ) -> tuple[Any, Path, Path]:
        with self._lock:
            self._counter["run:" + tag] += 1
            n = self._counter["run:" + tag]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
        out, err = self.logdir / f"{safe}-{n}.out", self.logdir / f"{safe}-{n}.err"
        proc = self.procs.spawn(argv, {**env, TAG_ENV: f"chaos-tag/{tag}"}, out, err)
        return proc, out, err

    def run(
        self,
        role: str,
        env: Mapping[str, str],
        tag: str,
        *,
        timeout: float = 120,
        holder: dict[str, subprocess.Popen[bytes]] | None = None,
        dry_run: bool = False,
    ) -> Run:
        """Run `python -m launcher poll` (role poll) or `python -m cleanup sweep` (role sweep)
        to completion; `holder[role]` points at the live process so a trigger can kill it."""
        if self.stop.is_set():
            raise Interrupted("stopping")
        argv = [sys.executable, "-m", "launcher", "poll"]
        if role == "sweep":
            argv = [sys.executable, "-m", "cleanup", "sweep", *(["--dry-run"] if dry_run else [])]
        started = time.monotonic()
        proc, out, err = self.spawn(argv, env, tag)
        if holder is not None:
            holder[role] = proc
        rc = self.procs.wait(proc, timeout)
        return Run(role, tag, rc, out, err, round(time.monotonic() - started, 2))

    # -- observation -----------------------------------------------------------------------------

    def groups(self, rg: str) -> list[Any]:
        try:
            return list(self.arm.container_groups.list_by_resource_group(rg))
        except ResourceNotFoundError:
            return []

    def group_events(self, rg: str) -> tuple[Counter[str], Counter[str]]:
        """(creates, redeploys) per group name in `rg`, from the emulator's log: every ARM
        create (201) and every PUT that replaced a running group's spec is logged there."""
        creates: Counter[str] = Counter()
        redeploys: Counter[str] = Counter()
        pattern = re.compile(r" (created|redeploying) ([^/\s]+)/(\S+) \(generation \d+\)")
        text = self.emulator.log_path.read_text(errors="replace")
        for found in pattern.finditer(text):
            if found.group(2).lower() != rg.lower():
                continue
            (creates if found.group(1) == "created" else redeploys)[found.group(3)] += 1
        return creates, redeploys


_SETTING_NAMES = frozenset(
    v for k, v in vars(config).items() if k.isupper() and isinstance(v, str) and k == v
)
_SEED_NAMES = frozenset(
    {
        config.SEED_ACCOUNT_NAME,
        config.SEED_ACCOUNT_KEY,
        config.SEED_CONTAINER_NAME,
        config.SEED_RESOURCE_GROUP,
    }
)


def _is_setting(name: str) -> bool:
    return (
        name in _SETTING_NAMES
        or name in _SEED_NAMES
        or name.startswith(("ACI_", "BATCH_", "LOCALDEV_"))
        or name == TAG_ENV
    )


def break_leases(container: ContainerClient) -> None:
    """A SIGKILLed tick's lease would expire after LEASE_SECONDS; break it to skip the wait.
    Only called when no live process can hold it (the holder was just killed)."""
    for name in ("locks/poll", "locks/janitor"):
        with contextlib.suppress(HttpResponseError):
            BlobLeaseClient(container.get_blob_client(name)).break_lease(0)


# ---------------------------------------------------------------------------------------------
# Dropping files and checking where they ended
# ---------------------------------------------------------------------------------------------


def content_for(name: str, rng: random.Random) -> bytes:
    """Unique, recognisable content: the hash then identifies this version of this file."""
    token = "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))
    return f"{name}\n{token}\n".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(arena: Arena, name: str, data: bytes, expect: frozenset[str] | None = None) -> None:
    arena.dropped[name] = Dropped(name, sha(data), len(data), expect=expect or frozenset({"batch"}))


def drop_files(arena: Arena, names: Sequence[str], rng: random.Random, workers: int = 16) -> None:
    """Upload `names` (full blob names) with unique content and remember each as dropped."""
    items = [(n, content_for(n, rng)) for n in names]

    def upload(item: tuple[str, bytes]) -> None:
        arena.container.upload_blob(item[0], item[1], overwrite=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(upload, items))
    for name, data in items:
        record(arena, name, data)


@dataclass
class Verdict:
    """Where every dropped file ended, from storage and ARM."""

    dropped: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # in incoming/ or processing/ at the end
    double_launched: list[str] = field(default_factory=list)
    finished: int = 0
    unfinished: list[str] = field(default_factory=list)  # processing/ leftovers, groups left
    unsafe_paths: list[str] = field(default_factory=list)
    creates: int = 0
    unrecorded_groups: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # dropped name -> outcome text

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.stuck
            or self.double_launched
            or self.unfinished
            or self.unsafe_paths
        )

    def summary(self) -> str:
        parts = [
            f"{self.dropped} dropped",
            f"{len(self.lost)} lost",
            f"{len(self.duplicated)} duplicated",
            f"{len(self.double_launched)} double-launched",
            f"{self.finished} batches finished",
        ]
        for label, items in (
            ("stuck", self.stuck),
            ("unfinished", self.unfinished),
            ("unsafe paths", self.unsafe_paths),
            ("groups not recorded in any manifest", self.unrecorded_groups),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        return ", ".join(parts)

    def problems(self, limit: int = 5) -> list[str]:
        out = []
        for label, items in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("stuck", self.stuck),
            ("double-launched", self.double_launched),
            ("unfinished", self.unfinished),
            ("unsafe path", self.unsafe_paths),
        ):
            for item in items[:limit]:
                out.append(f"{label}: {item!r}")
        return out


class Checker:
    """The one place that decides lost / duplicated / double-launched (see module docstring)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def _matches(self, container: ContainerClient, blob: str, d: Dropped, size: int) -> bool:
        if size != d.size:
            return False
        client = container.get_blob_client(blob)
        if d.md5 is not None:
            return bytes(client.get_blob_properties().content_settings.content_md5 or b"") == d.md5
        if d.size <= HASH_LIMIT:
            return sha(client.download_blob().readall()) == d.sha256
        first = client.download_blob(offset=0, length=MIB).readall()
        last = client.download_blob(offset=d.size - MIB, length=MIB).readall()
        return (sha(first), sha(last)) == d.samples

    def check(self, arena: Arena, expect_groups_gone: bool = True) -> Verdict:
        container = arena.container
        v = Verdict(dropped=len(arena.dropped))
        sizes = {blob.name: int(blob.size) for blob in container.list_blobs()}
        incoming = {n for n in sizes if n.startswith("incoming/")}
        processing = sorted(n for n in sizes if n.startswith("processing/"))
        if processing:
            v.unfinished += [f"left in processing/: {n}" for n in processing[:10]]
        # Finished batches and the inputs their manifests list.
        located: dict[str, list[tuple[str, str]]] = {}
        recorded_groups: set[str] = set()
        in_flight: dict[str, list[tuple[str, str]]] = {}
        for name in sizes:
            found = re.fullmatch(r"processing/([^/]+)/_batch\.json", name)
            if found:
                manifest = json.loads(container.download_blob(name).readall())
                for entry in manifest.get("files", []):
                    path = f"processing/{found.group(1)}/{entry['blob']}"
                    in_flight.setdefault(entry["source"], []).append((found.group(1), path))
            found = re.fullmatch(r"(done/|failed/)([^/]+)/_batch\.json", name)
            if not found:
                continue
            prefix, batch = found.group(1), found.group(2)
            manifest = json.loads(container.download_blob(name).readall())
            v.finished += 1
            state = manifest.get("state")
            if (prefix, state) not in (("done/", "succeeded"), ("failed/", "failed")):
                v.unfinished.append(f"{name} has state {state!r}")
            recorded_groups.update(a.get("group") or "" for a in manifest.get("attempts", []))
            folder = f"{prefix}{batch}/"
            for entry in manifest.get("files", []):
                path = folder + entry["blob"]
                normal = posixpath.normpath(path)
                if not normal.startswith(folder) or normal != path or len(path) > 1024:
                    v.unsafe_paths.append(path)
                located.setdefault(entry["source"], []).append((batch, path))
        for key, d in arena.dropped.items():
            hits = [
                batch
                for batch, path in located.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            here = d.name in incoming and self._matches(container, d.name, d, sizes[d.name])
            active = [
                batch
                for batch, path in in_flight.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            if len(hits) + int(here) + len(active) > 1:
                v.duplicated.append(key)
                v.where[key] = f"DUPLICATED: batches {hits + active}, in incoming: {here}"
            elif hits:
                stored = next(p for b, p in located[d.name] if b == hits[0])
                v.where[key] = f"claimed: {stored}"
                if "batch" not in d.expect:
                    v.where[key] += " (claimed although expected to stay)"
            elif active:
                v.stuck.append(key)
                v.where[key] = f"STUCK in unfinished batch {active[0]}"
            elif here:
                v.where[key] = "left in incoming/"
                if "incoming" not in d.expect:
                    v.stuck.append(key)
            elif "gone" in d.expect:
                v.where[key] = "gone (removed or replaced by its user mid-claim)"
            else:
                v.lost.append(key)
                v.where[key] = "LOST"
        creates, redeploys = self.stack.group_events(arena.rg)
        v.creates = sum(creates.values())
        for name, count in sorted(creates.items()):
            if count > 1:
                v.double_launched.append(f"{name} created {count} times")
        for name, count in sorted(redeploys.items()):
            v.double_launched.append(f"{name} redeployed {count} time(s)")
        v.unrecorded_groups = sorted(n for n in creates if n not in recorded_groups)
        if expect_groups_gone:
            left = [str(g.name) for g in self.stack.groups(arena.rg)]
            v.unfinished += [f"group still exists: {n}" for n in left]
        return v


def quiescent(stack: Stack, arena: Arena, allowed_incoming: set[str] | None = None) -> bool:
    """incoming/ holds only what may stay, nothing is in processing/, no group exists."""
    for blob in arena.container.list_blobs(name_starts_with="incoming/"):
        if allowed_incoming is None or blob.name not in allowed_incoming:
            return False
    if next(iter(arena.container.list_blobs(name_starts_with="processing/")), None) is not None:
        return False
    return not stack.groups(arena.rg)


@dataclass
class DriveStats:
    runs: int = 0
    killed: int = 0
    crashed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    quiet: bool = False
    seconds: float = 0.0


def drive(
    stack: Stack,
    arena: Arena,
    poll_env: Mapping[str, str],
    sweep_env: Mapping[str, str],
    tag: str,
    *,
    seconds: float,
    allowed_incoming: set[str] | None = None,
    holder: dict[str, subprocess.Popen[bytes]] | None = None,
    on_round: Callable[[int], None] | None = None,
    on_kill: Callable[[Run], None] | None = None,
    stats: DriveStats | None = None,
    run_seconds: float = 120,
) -> DriveStats:
    """Alternate poll and sweep processes until quiescent or `seconds` passed. A process killed
    by a trigger leaves its leases behind: they are broken at once (the holder is dead)."""
    stats = stats or DriveStats()
    started = time.monotonic()
    deadline = started + seconds
    rounds = 0
    while time.monotonic() < deadline:
        if stack.stop.is_set():
            raise Interrupted("stopping")
        for role, env in (("poll", poll_env), ("sweep", sweep_env)):
            run = stack.run(role, env, tag=f"{tag}.{role}", holder=holder, timeout=run_seconds)
            stats.runs += 1
            if run.killed:
                stats.killed += 1
                break_leases(arena.container)
                if on_kill is not None:
                    on_kill(run)
            elif run.rc is None:
                stats.timed_out.append(f"{run.stderr.name}: still running after {run_seconds:.0f}s")
            elif run.crashed:
                stats.crashed.append(f"{run.stderr.name}: rc {run.rc}")
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        if quiescent(stack, arena, allowed_incoming):
            stats.quiet = True
            break
        time.sleep(0.3)
    stats.seconds += round(time.monotonic() - started, 1)
    return stats


def add_verdict(row: Row, v: Verdict, label: str) -> None:
    row.dropped += v.dropped
    row.lost += len(v.lost)
    row.duplicated += len(v.duplicated)
    row.double_launched += len(v.double_launched)
    row.finished += v.finished
    row.figures["group_creates"] = row.figures.get("group_creates", 0) + v.creates
    if v.unrecorded_groups:
        # A group ran that no finished batch records: its run is not accounted for.
        row.failures += [
            f"{label}: group {g} is recorded in no manifest" for g in v.unrecorded_groups
        ]
    if v.stuck or v.unfinished or v.unsafe_paths:
        row.unfinished += 1
    row.failures += [f"{label}: {p}" for p in v.problems()]


# ---------------------------------------------------------------------------------------------
# Scenario 1: crash
# ---------------------------------------------------------------------------------------------

# (role, request kind, highest nth): where a SIGKILL lands. Poll: claim (list, copy, the Blob
# Batch of conditional deletes, manifest put_blob) and launch (arm_put). Sweep: finalize (arm_get,
# arm_logs, put_blob of logs and manifests), relaunch (arm_put via hand-back), delete
# (arm_delete) and the move to done/failed (list, copy, delete).
CRASH_POINTS: tuple[tuple[str, str, int], ...] = (
    ("poll", "list", 2),
    ("poll", "copy", 6),
    ("poll", "batch", 4),
    ("poll", "put_blob", 6),
    ("poll", "arm_put", 3),
    ("sweep", "list", 4),
    ("sweep", "copy", 8),
    ("sweep", "delete", 8),
    ("sweep", "put_blob", 6),
    ("sweep", "arm_get", 4),
    ("sweep", "arm_logs", 3),
    ("sweep", "arm_delete", 3),
    ("sweep", "arm_put", 2),
)


def scenario_crash(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("crash: SIGKILL poll/sweep at a request")
    storage = stack.storage_proxy()
    arm = stack.arm_proxy()
    checker = Checker(stack)
    plans = []
    points = list(CRASH_POINTS)
    rng.shuffle(points)  # a short run still covers a seeded mix of roles and phases
    for i in range(mode.crash_trials):
        role, kind, top = points[i % len(points)]
        plans.append(
            (i, role, kind, rng.randint(1, top), rng.choice(("before", "after")), rng.random())
        )
    rng.shuffle(plans)
    fired: Counter[str] = Counter()
    lock = threading.Lock()

    def trial(plan: tuple[int, str, str, int, str, float]) -> None:
        i, role, kind, nth, when, seed = plan
        trng = random.Random(seed)
        arena = stack.arena("crash")
        holder: dict[str, subprocess.Popen[bytes]] = {}
        proxy = arm if kind.startswith("arm_") else storage
        target = f"c{i}.{role}"

        def kill() -> None:
            proc = holder.get(role)
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)

        trig = proxy.add_trigger(f"{kind}:{target}", nth, kill, when=when)  # type: ignore[arg-type]
        settings = {
            config.BATCH_MAX_FILES: str(trng.randint(1, 4)),
            config.ACI_COMMAND: FLAKY_COMMAND,
        }
        poll_env = stack.env(arena, storage, arm, settings)
        sweep_env = dict(poll_env)
        files = [f"incoming/t{i}/f{k:02d}.txt" for k in range(trng.randint(3, 10))]
        drop_files(arena, files, trng, workers=4)
        stats = DriveStats()
        deadline = time.monotonic() + mode.trial_seconds
        waves = 0
        redropped: list[str] = []
        # Every killed poll (and some sweeps): the user drops names again right after the crash.
        redrop = role == "poll" or trng.random() < 0.3

        def after_kill(run: Run) -> None:
            """Right after the crash, the user drops files again under names the dead tick had
            already taken out of incoming/ (a new version each); after a killed poll, the next
            tick comes long before the dead tick's claim counts as abandoned."""
            if redrop:
                drop_again()
            if role == "poll":
                early = {**poll_env, config.STUCK_CLAIM_SECONDS: "300"}
                stack.run("poll", early, tag=f"c{i}.early", timeout=60)

        def drop_again() -> None:
            present = {b.name for b in arena.container.list_blobs(name_starts_with="incoming/")}
            gone = [d.name for k, d in arena.dropped.items() if "#" not in k]
            gone = [n for n in gone if n not in present]
            # Names taken by the claim the crash interrupted first: the hard case for recovery.
            open_claims = [
                b.name
                for b in arena.container.list_blobs(
                    name_starts_with="processing/", include=["metadata"]
                )
                if b.name.endswith("/_batch.json")
                and (b.metadata or {}).get("mlstate") == "claiming"
            ]
            taken = {
                f["source"]
                for m in open_claims
                for f in json.loads(arena.container.download_blob(m).readall())["files"]
            }
            gone.sort(key=lambda n: n not in taken)
            for name in gone[:2]:
                data = content_for(name + " (dropped again)", trng)
                arena.container.upload_blob(name, data, overwrite=True)
                arena.dropped[name + "#2"] = Dropped(name, sha(data), len(data))
                redropped.append(name)

        while True:
            left = max(deadline - time.monotonic(), 1)
            drive(
                stack,
                arena,
                poll_env,
                sweep_env,
                f"c{i}",
                seconds=left,
                holder=holder,
                on_kill=after_kill,
                stats=stats,
            )
            # A crash point that was not reached yet gets another wave of files (at most two).
            if trig.fired.is_set() or waves >= 2 or time.monotonic() >= deadline:
                break
            waves += 1
            more = [f"incoming/t{i}/w{waves}-{k:02d}.txt" for k in range(trng.randint(2, 6))]
            drop_files(arena, more, trng, workers=4)
        v = checker.check(arena)
        label = f"trial {i} ({role} {kind}#{nth} {when}{', re-drop' if redropped else ''})"
        with lock:
            row.trials += 1
            add_verdict(row, v, label)
            if not stats.quiet:
                row.failures.append(f"{label}: not quiescent after {mode.trial_seconds:.0f}s")
            if trig.fired.is_set():
                fired[f"{role}:{kind}"] += 1
            row.notes += [f"{label}: unhandled exception in {c}" for c in stats.crashed[:2]]
            status = "ok" if v.clean and stats.quiet else "PROBLEM"
            log(
                f"crash {row.trials}/{mode.crash_trials}: {label} "
                f"{'killed' if stats.killed else 'not reached'}; {v.summary()} "
                f"[{stats.seconds:.0f}s] {status}"
            )

    run_parallel(stack, trial, plans, mode.crash_parallel)
    total_fired = sum(fired.values())
    row.figures["kills_fired"] = total_fired
    row.notes.insert(
        0,
        f"{total_fired}/{row.trials} kills fired, at "
        + ", ".join(f"{k} {n}" for k, n in sorted(fired.items())),
    )
    return row


def run_parallel(
    stack: Stack, fn: Callable[[Any], None], items: Sequence[Any], workers: int
) -> None:
    """Run trials on a small pool; the first exception (or Ctrl-C) stops the others."""
    errors: list[BaseException] = []

    def guarded(item: Any) -> None:
        if stack.stop.is_set() or errors:
            return
        try:
            fn(item)
        except Interrupted:
            return
        except BaseException as exc:
            errors.append(exc)
            traceback.print_exc()
            stack.stop.set()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
    try:
        for future in [pool.submit(guarded, item) for item in items]:
            future.result()
    except BaseException:
        # Ctrl-C: stop the trials still running now, instead of letting them run to the end.
        stack.stop.set()
        stack.procs.kill_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------
# Scenario 2: race
# ---------------------------------------------------------------------------------------------


def scenario_race(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("race: 3 pollers + 2 sweepers looping", trials=1)
    arena = stack.arena("race")
    env = stack.env(
        arena,
        None,
        None,
        {
            config.BATCH_MAX_FILES: "25",
            config.MAX_BATCHES_PER_TICK: "8",
            config.MAX_ACTIVE_GROUPS: "40",
            config.IO_CONCURRENCY: "8",
            # Realistic, well above a claim's duration: these processes are alive.
            config.STUCK_CLAIM_SECONDS: "20",
            config.ACI_COMMAND: FLAKY_COMMAND,
        },
    )
    ticks = Counter[str]()
    busy = Counter[str]()
    crashed: list[str] = []
    lock = threading.Lock()
    waves_done = [0]
    started = time.monotonic()

    def total() -> int:
        with lock:
            return sum(ticks.values())

    def maybe_drop() -> None:
        # Wave k goes in once k/waves of the ticks have run (the first one at once).
        with lock:
            due = min(mode.race_waves, 1 + sum(ticks.values()) * mode.race_waves // mode.race_ticks)
            todo = list(range(waves_done[0], due))
            waves_done[0] = max(due, waves_done[0])
        for w in todo:
            files = mode.race_files
            count = files * (w + 1) // mode.race_waves - files * w // mode.race_waves
            names = [f"incoming/w{w:02d}/f{k:04d}.dat" for k in range(count)]
            drop_files(arena, names, rng)
            log(f"race: wave {w + 1}/{mode.race_waves} dropped ({count} files) at tick {total()}")

    def loop(role: str, index: int) -> None:
        lrng = random.Random(rng.random())
        while not stack.stop.is_set():
            if total() >= mode.race_ticks and waves_done[0] >= mode.race_waves:
                return
            maybe_drop()
            run = stack.run(role, env, tag=f"race.{role}{index}")
            data = run.report() or {}
            with lock:
                ticks[role] += 1
                if data.get("lease_busy") or run.rc == 3:
                    busy[role] += 1
                if run.crashed:
                    crashed.append(f"{run.stderr.name}: rc {run.rc}")
            time.sleep(lrng.uniform(0, 0.3))

    maybe_drop()
    threads = [
        threading.Thread(target=loop, args=(role, i), name=f"race-{role}{i}", daemon=True)
        for role, i in (("poll", 1), ("poll", 2), ("poll", 3), ("sweep", 1), ("sweep", 2))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(1)
            if stack.stop.is_set():
                raise Interrupted("stopping")
    loops_seconds = time.monotonic() - started
    log(f"race: {total()} ticks in {loops_seconds:.0f}s ({dict(ticks)}); draining")
    # Drain: every looping process has exited, so immediate recovery is safe now.
    drain_env = {**env, config.STUCK_CLAIM_SECONDS: "0"}
    stats = drive(stack, arena, drain_env, drain_env, "race.drain", seconds=mode.scenario_seconds)
    v = Checker(stack).check(arena)
    add_verdict(row, v, "race")
    if not stats.quiet:
        row.failures.append(f"not quiescent {mode.scenario_seconds:.0f}s after the loops")
    row.figures.update(
        ticks=sum(ticks.values()), poll_ticks=ticks["poll"], sweep_ticks=ticks["sweep"]
    )
    row.notes.append(
        f"{sum(ticks.values())} ticks ({ticks['poll']} poll, {ticks['sweep']} sweep) "
        f"in {loops_seconds:.0f}s; lease busy: {busy['poll']} poll, {busy['sweep']} sweep; "
        f"{v.creates} group creates; drain {stats.runs} runs"
    )
    row.notes += [f"unhandled exception in {c}" for c in crashed[:3]]
    log(f"race: {v.summary()}")
    return row


# ---------------------------------------------------------------------------------------------
# Scenario 3: faults
# ---------------------------------------------------------------------------------------------


def scenario_faults(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("faults: 10% storage + 10% ARM requests fail")
    checker = Checker(stack)
    for run_index in range(mode.fault_runs):
        seed = rng.randrange(2**31)
        worker = mode.fault_worker and run_index == 0
        storage = stack.storage_proxy(faults=FaultConfig.spread(0.10, retry_after_s=0.2), seed=seed)
        arm = stack.arm_proxy(
            faults=FaultConfig.spread(0.10, retry_after_s=0.2, flavor="arm"), seed=seed + 1
        )
        arena = stack.arena("faults")
        env = stack.env(
            arena,
            storage,
            arm,
            {
                config.BATCH_MAX_FILES: "10",
                # The real sample worker reads and writes through the same faulty proxy; the
                # quick run keeps to a no-op container to stay short.
                config.ACI_IMAGE: WORKER_IMAGE if worker else "python:3.11",
                config.ACI_COMMAND: "" if worker else PASS_COMMAND,
                config.MAX_ATTEMPTS: "3",
                config.JOB_TIMEOUT_MINUTES: "3",
            },
        )
        names = [f"incoming/run{run_index}/doc{k:03d}.txt" for k in range(mode.fault_files)]
        drop_files(arena, names, rng)
        stats = drive(
            stack,
            arena,
            env,
            env,
            f"faults{run_index}",
            seconds=mode.fault_seconds,
            run_seconds=mode.fault_seconds,
        )
        v = checker.check(arena)
        row.trials += 1
        add_verdict(row, v, f"fault run {run_index}")
        if not stats.quiet:
            row.failures.append(
                f"fault run {run_index}: not quiescent after {mode.fault_seconds:.0f}s"
            )
        s_counts, s_faults = storage.counts(), storage.fault_counts()
        a_counts, a_faults = arm.counts(), arm.fault_counts()
        for key, value in (
            ("storage_requests", s_counts["total"]),
            ("storage_faults", s_faults["total"]),
            ("arm_requests", a_counts["total"]),
            ("arm_faults", a_faults["total"]),
        ):
            row.figures[key] = row.figures.get(key, 0) + value
        outcomes = Counter(
            "done" if n.startswith("done/") else "failed"
            for n in (b.name for b in arena.container.list_blobs())
            if re.fullmatch(r"(done|failed)/[^/]+/_batch\.json", n)
        )
        row.notes.append(
            f"run {run_index} ({'sample worker' if worker else 'no-op container'}): storage "
            f"{s_faults['total']}/{s_counts['total']} requests faulted "
            f"({_fault_mix(s_faults)}), ARM {a_faults['total']}/{a_counts['total']} "
            f"({_fault_mix(a_faults)}); batches {dict(outcomes)}; {stats.runs} runs, "
            f"{len(stats.crashed)} ended by an unhandled exception, {len(stats.timed_out)} "
            "stopped by the time bound"
        )
        log(f"faults run {run_index}: {v.summary()}; {row.notes[-1]}")
        storage.set_faults(None)
        arm.set_faults(None)
    return row


def _fault_mix(faults: Mapping[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(faults.items()) if k != "total")


# ---------------------------------------------------------------------------------------------
# Scenario 4: lease theft
# ---------------------------------------------------------------------------------------------


def scenario_lease(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    """Three ways to lose the poll lease while still working, in turn over the trials:
    `claim`: the lease is broken in the middle of the victim's claims and a second poller takes
    it at once (both claim the same files for a few seconds); `launch`: the lease is broken
    while the victim's container group PUT is in flight and the new holder's whole tick runs
    before that PUT reaches ARM (a process that stalls longer than its lease); `faults`: as
    `claim`, with 10% of the victim's storage requests failing as well (500, 503, 429, dropped
    before or after storage applied them), lease renewals and Blob Batch deletes included."""
    row = Row("lease theft: poll lease broken mid-tick")
    checker = Checker(stack)
    arm = stack.arm_proxy()
    variants = ("claim", "launch", "faults")
    for trial in range(mode.lease_trials * len(variants)):
        variant = variants[trial % len(variants)]
        arena = stack.arena("lease")
        # In `claim` and `faults`, the victim is slowed down (150 ms per storage request, two at
        # a time) so its tick outlives a lease renewal (every LEASE_SECONDS/3 = 5 s) after the
        # theft. In `launch`, both use the same storage endpoint, as two instances of one app do
        # (the endpoint is part of the group spec).
        faults = FaultConfig.spread(0.10, retry_after_s=0.2) if variant == "faults" else None
        slow = (
            stack.storage_proxy(delay_ms=150, faults=faults, seed=rng.randrange(2**31))
            if variant != "launch"
            else None
        )
        settings = {
            config.BATCH_MAX_FILES: "10",
            config.MAX_BATCHES_PER_TICK: "20",
            config.MAX_ACTIVE_GROUPS: "40",
            config.IO_CONCURRENCY: "2",
            # Both pollers are alive: recovery must not race the victim's open claim.
            config.STUCK_CLAIM_SECONDS: "120",
        }
        victim_env = stack.env(arena, slow, arm, settings)
        thief_env = stack.env(arena, None, None, {**settings, config.IO_CONCURRENCY: "8"})
        files = mode.lease_files if variant != "launch" else 20
        names = [f"incoming/l{trial}/f{k:03d}.txt" for k in range(files)]
        drop_files(arena, names, rng)
        thief: dict[str, Any] = {}

        def steal(
            tr: int = trial,
            env: dict[str, str] = thief_env,
            a: Arena = arena,
            box: dict[str, Any] = thief,
            wait: bool = variant == "launch",
        ) -> None:
            BlobLeaseClient(a.container.get_blob_client("locks/poll")).break_lease(0)
            if wait:
                time.sleep(1.1)  # the victim stalls: its successor's clock is past this second

            def run_thief() -> None:
                with contextlib.suppress(Interrupted):
                    box["run"] = stack.run("poll", env, tag=f"lease{tr}.thief")

            thread = threading.Thread(target=run_thief, daemon=True)
            box["thread"] = thread
            thread.start()
            if wait:  # the victim's request is held until the thief's tick is over
                thread.join(120)

        tag = f"lease{trial}.victim"
        if slow is not None:
            nth = rng.randint(6, 16)
            slow.add_trigger(f"copy:{tag}", nth, steal, when="before", then="continue")
            where = f"copy #{nth}"
        else:
            arm.add_trigger(f"arm_put:{tag}", 1, steal, when="before", then="continue")
            where = "first group PUT (held until the thief's tick ended)"
        victim = stack.run("poll", victim_env, tag=tag)
        thread: Any = thief.get("thread")
        if thread is not None:
            thread.join(120)
        data = victim.report() or {}
        thief_data = (thief["run"].report() if "run" in thief else None) or {}
        planned = -(-files // 10)
        label = f"lease trial {trial} ({variant})"
        note = (
            f"trial {trial} ({variant}): lease broken at the victim's {where}; victim claimed "
            f"{len(data.get('claimed', []))}/{planned} batches, lease_lost="
            f"{data.get('lease_lost')}"
        )
        if slow is not None:
            err = victim.err()
            # Batches claim concurrently: the ones in flight when the tick stops (the log line
            # says how many) end with the files they had copied; no other batch may claim.
            stop = re.search(r"poll lease lost: stopping before claiming more \((\d+) batch", err)
            stop_at = stop.start() if stop else -1
            in_flight = int(stop.group(1)) if stop else 0
            after_stop = err[stop_at:] if stop_at >= 0 else ""
            claimed_after = len(re.findall(r": claimed \d+ file", after_stop))
            ok_stop = bool(data.get("lease_lost")) and stop_at >= 0 and claimed_after <= in_flight
            note += f", stopped claiming: {'yes' if ok_stop else 'NO'}"
            if not ok_stop:
                row.failures.append(f"{label}: the victim did not stop claiming")
            report.checks.append(
                CheckResult(f"{label}: a tick that loses its lease stops claiming", ok_stop)
            )
        if faults is not None and slow is not None:
            faulted = slow.fault_counts()
            note += f", victim's storage faults {faulted['total']} ({_fault_mix(faulted)})"
            slow.set_faults(None)
        note += (
            f"; thief claimed {len(thief_data.get('claimed', []))}, launched "
            f"{sum(1 for x in thief_data.get('launched', []) if x.get('launched'))}"
        )
        row.notes.append(note)
        drain_env = {**thief_env, config.STUCK_CLAIM_SECONDS: "0"}  # both are dead now
        stats = drive(
            stack, arena, drain_env, drain_env, f"lease{trial}", seconds=mode.scenario_seconds
        )
        v = checker.check(arena)
        row.trials += 1
        add_verdict(row, v, label)
        if not stats.quiet:
            row.failures.append(f"{label}: not quiescent")
        log(f"{label}: {v.summary()}; {row.notes[-1]}")
    return row


# ---------------------------------------------------------------------------------------------
# Scenario 5: bad input
# ---------------------------------------------------------------------------------------------


@dataclass
class Awkward:
    """One kind of awkward blob: its name below incoming/, how it is made, what may happen."""

    kind: str
    name: str
    how: str = "block"
    data: bytes | None = None
    expect: frozenset[str] = frozenset({"batch"})
    mid_claim: str | None = None  # overwrite|delete + _before_copy|_before_delete


STAY = frozenset({"incoming"})
GONE = frozenset({"gone"})


def awkward_corpus(big_block_mib: int) -> list[Awkward]:
    """At least 30 kinds; names are relative to incoming/ (full names must fit 1,024 chars)."""
    # processing/<22-char batch id>/ is the longest batch folder: relative names up to 990
    # characters are kept as they are, longer ones are stored as _renamed/<sha256>.
    keep = 1024 - len("processing/") - 22 - 1
    return [
        Awkward("plain name", "plain.txt"),
        Awkward("spaces in folder and file", "with space/and  more spaces.txt"),
        Awkward("leading and trailing spaces", " lead and trail .txt "),
        Awkward("unicode (NFC) folder and file", "ünïcødé/文件.txt"),
        Awkward("unicode NFD twin of an NFC name", unicodedata.normalize("NFD", "café.txt")),
        Awkward("unicode NFC twin of an NFD name", unicodedata.normalize("NFC", "café.txt")),
        Awkward("emoji", "emoji-😀.bin"),
        Awkward("right-to-left override", "rtl-\u202etxt.exe"),
        Awkward("zero-width space and BOM", "\ufeffzero\u200bwidth.txt"),
        Awkward("literal percent-encoding", "100%25 done %41%2F.txt"),
        Awkward("query and fragment characters", "q?sig=abc&x=1#frag.txt"),
        Awkward("URL-reserved characters", "semi;colon,comma'q\"dq+plus=eq@at!$&()*.txt"),
        Awkward("XML special characters", "<tag>&amp;]]>.txt"),
        Awkward("backslash (storage turns it into /)", "back\\slash.txt"),
        Awkward("segment ending in a dot", "dir./x."),
        Awkward("dots-only segment", ".../x.txt"),
        Awkward("hidden-file name", ".hidden"),
        Awkward("empty segment (double slash)", "double//slash.txt"),
        Awkward("leading slash after the prefix", "/leading.txt"),
        Awkward("whitespace-only segment", "   /x.txt"),
        Awkward("tab, CR and LF in the name", "tab\there\rcr\nnewline INFO forged.txt"),
        Awkward("DEL character", "del\x7f.txt"),
        Awkward("app's own names", "_batch.json"),
        Awkward("app's own folders", "_logs/attempt-1.log"),
        Awkward("app's rename folder", "_renamed/0123abcd"),
        Awkward("Windows reserved names", "CON/aux.txt"),
        Awkward("case twin (upper)", "Case.txt"),
        Awkward("case twin (lower)", "case.txt"),
        Awkward("single-character names", "~"),
        Awkward("looks like another state folder", "processing/../done/evil.txt"),
        Awkward("longest name kept as is (990)", "k" * (keep - 4) + ".txt"),
        Awkward("one character longer (renamed)", "r" * (keep - 3) + ".txt"),
        Awkward("name at the 1,024-character limit", "n" * (1024 - len("incoming/"))),
        Awkward("very long single segment", "s" * 300 + "/x.txt"),
        Awkward("deep nesting (200 levels)", "d/" * 200 + "x.txt"),
        Awkward("zero bytes", "empty.txt", data=b""),
        Awkward("folder marker (trailing slash)", "folder/", data=b"", expect=STAY),
        Awkward("folder marker (hdi_isfolder)", "hdi-folder", how="hdi", data=b"", expect=STAY),
        Awkward("metadata and content headers", "meta.txt", how="meta"),
        Awkward("append blob", "append.log", how="append"),
        Awkward("page blob", "disk.vhd", how="page"),
        Awkward("1 GiB sparse page blob (server-side copy only)", "big-1GiB.page", how="sparse"),
        Awkward(f"{big_block_mib} MiB block blob (server-side copy only)", "big.bin", how="big"),
        Awkward("snapshot leftovers", "snapshotted.txt", how="snapshot"),
        Awkward("leased by its user", "leased.txt", how="leased", expect=STAY),
        Awkward("archive tier", "archived.txt", how="archive", expect=STAY),
        Awkward("uncommitted blocks only", "uncommitted.bin", how="uncommitted", expect=STAY),
        Awkward("overwritten before its copy", "ow-copy.txt", mid_claim="overwrite_before_copy"),
        Awkward("overwritten after its copy", "ow-delete.txt", mid_claim="overwrite_before_delete"),
        Awkward(
            "deleted before its copy", "rm-copy.txt", mid_claim="delete_before_copy", expect=GONE
        ),
        Awkward(
            "deleted after its copy",
            "rm-delete.txt",
            mid_claim="delete_before_delete",
            expect=GONE,
        ),
        Awkward("dot segments (../)", "../escape.txt"),
        Awkward("dot segments (./)", "a/./b.txt"),
        Awkward("name over the 1,024-character limit", "o" * (1025 - len("incoming/"))),
        Awkward("C0 control character (U+0001)", "ctl\x01.txt"),
        Awkward("noncharacter U+FFFE", "nonchar\ufffe.txt"),
    ]


def _make_blob(
    container: ContainerClient, a: Awkward, name: str, rng: random.Random, big_mib: int
) -> Dropped:
    """Create one awkward blob; returns what the checker should find (content or samples)."""
    client = container.get_blob_client(name)
    data = a.data if a.data is not None else content_for(name, rng)
    if a.how == "hdi":
        client.upload_blob(data, metadata={"hdi_isfolder": "true"})
    elif a.how == "meta":
        client.upload_blob(
            data,
            metadata={"owner": "chaos", "note": "x" * 200},
            content_settings=ContentSettings(
                content_type="text/csv; charset=latin-1",
                content_encoding="identity",
                content_disposition='attachment; filename="x.csv"',
            ),
        )
    elif a.how == "append":
        client.create_append_blob()
        client.append_block(data[:5])
        client.append_block(data[5:])
    elif a.how == "page":
        data = (data * (1024 // max(len(data), 1) + 1))[:1024]
        client.create_page_blob(1024)
        client.upload_page(data, offset=0, length=1024)
    elif a.how == "sparse":
        client.create_page_blob(GIB)  # 1 GiB of zeros that costs nothing to create
        zeros = sha(bytes(MIB))
        return Dropped(name, "", GIB, samples=(zeros, zeros), expect=a.expect)
    elif a.how == "big":
        return _upload_big(client, name, rng, a, big_mib)
    elif a.how == "snapshot":
        client.upload_blob(b"old version\n")
        client.create_snapshot()
        client.upload_blob(b"middle version\n", overwrite=True)
        client.create_snapshot()
        client.upload_blob(data, overwrite=True)
    elif a.how == "uncommitted":
        client.stage_block("YmxvY2sx", data)
    else:
        client.upload_blob(data, overwrite=True)
        if a.how == "leased":
            BlobLeaseClient(client).acquire(-1)
        elif a.how == "archive":
            client.set_standard_blob_tier("Archive")
            md5 = hashlib.md5(data).digest()
            return Dropped(name, sha(data), len(data), md5=md5, expect=a.expect)
    return Dropped(name, sha(data), len(data), expect=a.expect)


def _upload_big(client: Any, name: str, rng: random.Random, a: Awkward, mib: int) -> Dropped:
    """A real block blob of `mib` MiB, uploaded in 64 MiB blocks (each block distinct)."""
    block = min(mib, 64) * MIB
    pattern = rng.randbytes(MIB)
    ids, first, last = [], b"", b""
    for i in range(mib * MIB // block):
        data = (i.to_bytes(8, "big") + pattern[8:]) * (block // MIB)
        block_id = f"{i:08d}".encode().hex()
        client.stage_block(block_id, data)
        ids.append(BlobBlock(block_id=block_id))
        first = first or data[:MIB]
        last = data[-MIB:]
    client.commit_block_list(ids)
    return Dropped(name, "", mib * MIB, samples=(sha(first), sha(last)), expect=a.expect)


def scenario_badinput(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("bad input: awkward blobs", trials=1)
    arena = stack.arena("badinput")
    corpus = awkward_corpus(mode.big_block_mib)
    records: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    made: dict[str, Awkward] = {}
    for index, a in enumerate(corpus):
        name = "incoming/" + a.name
        rec: dict[str, Any] = {"kind": a.kind, "name": _show(name), "expected": sorted(a.expect)}
        records[a.kind] = rec
        if a.how == "uncommitted":
            # Not a blob yet: invisible to listings, so it is not a dropped file.
            _make_blob(arena.container, a, name, rng, mode.big_block_mib)
            made[name] = a
            continue
        try:
            listed_before = {
                b.name
                for b in arena.container.list_blobs(name_starts_with="incoming/", retry_total=0)
            }
        except HttpResponseError:
            listed_before = set()
        try:
            d = _make_blob(arena.container, a, name, rng, mode.big_block_mib)
        except HttpResponseError as exc:
            rec["outcome"] = (
                f"rejected by storage at upload (HTTP {exc.status_code}): never dropped"
            )
            continue
        # Storage may store another name (a backslash becomes /): take the name it listed.
        try:
            listed = {
                b.name
                for b in arena.container.list_blobs(name_starts_with="incoming/", retry_total=0)
            }
        except HttpResponseError as exc:
            # Azurite cannot list some names (real Azure returns them URL-encoded): remove it
            # again, or every later listing of the container fails too.
            arena.container.get_blob_client(name).delete_blob(delete_snapshots="include")
            rec["outcome"] = (
                f"not testable on Azurite: its List Blobs fails (HTTP {exc.status_code}) "
                "while this name exists; removed again"
            )
            continue
        new = sorted(listed - listed_before)
        if len(new) != 1:
            rec["outcome"] = f"storage listed {len(new)} new blobs for it: {new!r}"
            row.failures.append(f"bad input {a.kind}: could not identify its blob")
            continue
        d.name = new[0]
        rec["stored_as"] = _show(new[0]) if new[0] != name else None
        arena.dropped[d.name] = d
        labels[d.name] = f"b{index}"
        made[d.name] = a
    # One proxy for this scenario: counts requests per blob (downloads of the big ones must stay
    # at zero) and fires the mid-claim changes.
    storage = stack.storage_proxy(classify=labelled(labels, arena.name))
    for name, a in made.items():
        if a.mid_claim is None:
            continue
        action, _, step = a.mid_claim.partition("_before_")
        kind = "copy" if step == "copy" else "delete"

        def change(n: str = name, act: str = action) -> None:
            client = arena.container.get_blob_client(n)
            if act == "delete":
                client.delete_blob()
                return
            data = content_for(n + " (new version)", rng)
            client.upload_blob(data, overwrite=True)
            arena.dropped[n] = Dropped(n, sha(data), len(data))

        storage.add_trigger(f"{kind}:{labels[name]}", 1, change, when="before", then="continue")
    env = stack.env(arena, storage, None, {config.BATCH_MAX_FILES: "6"})
    allowed = {n for n, d in arena.dropped.items() if d.expect == STAY}
    stats = drive(
        stack, arena, env, env, "badinput", seconds=mode.scenario_seconds, allowed_incoming=allowed
    )
    v = Checker(stack).check(arena)
    add_verdict(row, v, "bad input")
    if not stats.quiet:
        row.failures.append(f"not quiescent after {mode.scenario_seconds:.0f}s")
    logs = "".join(p.read_text(errors="replace") for p in stack.logdir.glob("badinput.*.err"))
    counts = storage.counts()
    for name, a in made.items():
        rec = records[a.kind]
        label = labels.get(name)
        downloads = counts.get(f"get_blob:{label}", 0) if label else 0
        if a.how == "uncommitted":
            blobs = list(
                arena.container.list_blobs(name_starts_with=name, include=["uncommittedblobs"])
            )
            ok = len(blobs) == 1
            rec["outcome"] = "left alone: invisible until committed" + ("" if ok else " (GONE?)")
            rec["ok"] = ok
            continue
        rec["outcome"] = v.where.get(name, "?")
        rec["ok"] = name not in v.lost and name not in v.duplicated and name not in v.stuck
        if a.how in ("big", "sparse"):
            rec["downloads"] = downloads
            ok = downloads == 0
            rec["ok"] = rec["ok"] and ok
            report.checks.append(
                CheckResult(
                    f"{a.kind}: claimed and moved to done/ without a download",
                    ok and rec["outcome"].startswith("claimed"),
                    f"{downloads} GET Blob request(s) for it; {rec['outcome']}",
                )
            )
        if a.expect == STAY and a.how not in ("hdi",) and not name.endswith("/"):
            # Left alone on purpose: the poll must say why, naming the file.
            line = next((ln for ln in logs.splitlines() if name in ln), None)
            rec["log_line"] = line.split(": ", 1)[-1][:160] if line else None
            rec["ok"] = rec["ok"] and line is not None
        if downloads and a.how not in ("big", "sparse"):
            rec["downloads"] = downloads
    for rec in records.values():
        rec.setdefault(
            "ok", "rejected" in rec.get("outcome", "") or "not testable" in rec.get("outcome", "")
        )
        if not rec["ok"]:
            row.failures.append(f"bad input {rec['kind']}: {rec.get('outcome')}")
    report.bad_input = list(records.values())
    untestable = sum(1 for r in records.values() if "not testable" in r.get("outcome", ""))
    rejected = sum(1 for r in records.values() if "rejected" in r.get("outcome", ""))
    invisible = sum(1 for a in made.values() if a.how == "uncommitted")
    row.notes.append(
        f"{len(records)} kinds: {len(arena.dropped)} blobs dropped, {invisible} never committed "
        f"(invisible), {rejected} refused by storage at upload, {untestable} not testable on "
        f"Azurite; {stats.runs} runs"
    )
    if stats.crashed:
        row.notes.append(f"unhandled exception in {stats.crashed[0]}")
    log(f"bad input: {v.summary()}")
    return row


def _show(name: str, width: int = 70) -> str:
    text = ascii(name)[1:-1]
    return (
        text
        if len(text) <= width
        else f"{text[: width // 2]}…{text[-width // 2 + 8 :]} ({len(name)} chars)"
    )


# ---------------------------------------------------------------------------------------------
# Scenario 6: bad configuration
# ---------------------------------------------------------------------------------------------

MISSING = None
# For every setting name in config.py: values that must be refused (None: remove the setting),
# plus extra variables to set or remove for that case. A setting added to config.py without an
# entry here is reported, so this table keeps up with the code.
BAD_VALUES: dict[str, list[str | None]] = {
    "STORAGE_CONNECTION_STRING": [MISSING, "AccountKey=abc;Nonsense=1"],
    "STORAGE_ACCOUNT_URL": ["ftp://127.0.0.1/devstoreaccount1", "http://127.0.0.1:1"],
    "WATCH_CONTAINER": [MISSING, "Bad_Name", "ab", "a--b"],
    "INCOMING_PREFIX": ["/", "a//b/", "../up/", "processing/"],
    "PROCESSING_PREFIX": ["a//b/", "./x/", "incoming/sub/"],
    "DONE_PREFIX": ["..", "incoming/"],
    "FAILED_PREFIX": ["a//", "done/"],
    "OUTPUT_PREFIX": ["./", "locks/"],
    "LOCK_PREFIX": ["x//y", "output/"],
    "POLL_SCHEDULE": ["*/5 * * * *", "61 * * * * *", "x * * * * *"],
    "JANITOR_SCHEDULE": ["0 */2 * * * * *", "0 0 25 * * *", "0 0 0 0 * *"],
    "BATCH_MODE": ["batch", "files"],
    "BATCH_READY_MARKER": ["a/b", ".."],
    "BATCH_SETTLE_SECONDS": ["abc", "-1", "86401", "1.5"],
    "BATCH_MAX_FILES": ["0", "100001", "ten"],
    "BATCH_MAX_BYTES": ["0", "1e9", "-5"],
    "MAX_BATCHES_PER_TICK": ["0", "101", "x"],
    "MAX_ACTIVE_GROUPS": ["0", "5001"],
    "MAX_CREATES_PER_5_MIN": ["0", "101"],
    "LEASE_SECONDS": ["14", "61", "-1", "abc"],
    "IO_CONCURRENCY": ["0", "257"],
    "AZURE_SUBSCRIPTION_ID": [MISSING, "not-a-guid", "00000000-0000-0000-0000-00000000000"],
    "ACI_RESOURCE_GROUP": [MISSING, "bad/rg", "r" * 91],
    "ACI_LOCATION": [MISSING],
    # 127.0.0.2 is loopback on Linux but not to config.py: it must refuse the fake ARM token.
    "ARM_ENDPOINT": ["http://127.0.0.1:1", "not a url", "https://127.0.0.2:1"],
    "ARM_CA_BUNDLE": ["/nonexistent/chaos/ca.pem"],
    "ARM_AUTH": ["password", "none"],
    "ACI_IMAGE": [MISSING, "bad image", "img\tname"],
    "ACI_CPU": ["0", "17", "abc", "nan"],
    "ACI_MEMORY_GB": ["0", "65", "inf", "nan"],
    "ACI_GPU_SKU": ["T4"],
    "ACI_GPU_COUNT": ["2", "x"],
    "ACI_COMMAND": ['["unterminated', "[1, 2]", "'unbalanced"],
    "ACI_IDENTITY_ID": ["not-a-resource-id"],
    "ACI_IDENTITY_CLIENT_ID": ["not-a-guid"],
    "ACI_REGISTRY_SERVER": ["chaos.azurecr.io"],
    "ACI_REGISTRY_USERNAME": ["someone"],
    "ACI_REGISTRY_PASSWORD": ["pw-without-user"],
    "ACI_SUBNET_ID": ["not-a-subnet"],
    "GROUP_PREFIX": ["ML_", "1abc", "a--b", "g" * 21],
    "JOB_TIMEOUT_MINUTES": ["0", "abc", "-5", "nan"],
    "MAX_ATTEMPTS": ["0", "21", "x"],
    "NO_RETRY_EXIT_CODES": ["1,x", "0"],
    "KEEP_FAILED_GROUPS": ["maybe"],
    "ORPHAN_GRACE_MINUTES": ["-1", "x"],
    "STUCK_CLAIM_SECONDS": ["-1", "86401"],
    "INDEX_PREFIX": ["a//b/", "locks/"],
    "STALL_ALARM_MINUTES": ["0", "x", "nan"],
}
# Cases that need more than one variable: (setting named in the message, variables to set,
# variables to remove).
COMBINED: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    (
        "STORAGE_ACCOUNT_URL",
        "both storage settings",
        {"STORAGE_ACCOUNT_URL": "http://127.0.0.1:1/x"},
        (),
    ),
    (
        "ACI_GPU_COUNT",
        "count above 4 with a SKU",
        {"ACI_GPU_SKU": "V100", "ACI_GPU_COUNT": "5"},
        (),
    ),
    (
        "ACI_IDENTITY_CLIENT_ID",
        "identity without client id",
        {
            "ACI_IDENTITY_ID": "/subscriptions/x/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"
        },
        (),
    ),
    (
        "ACI_REGISTRY_PASSWORD",
        "registry user without password",
        {"ACI_REGISTRY_SERVER": "chaos.azurecr.io", "ACI_REGISTRY_USERNAME": "u"},
        (),
    ),
    ("ACI_ENV_", "variable name not valid", {"ACI_ENV_1BAD": "x"}, ()),
    ("ML_BATCH_ID", "reserved ML_ prefix", {"ACI_ENV_ML_BATCH_ID": "x"}, ()),
    ("ACI_SECURE_ENV_", "secure variable name not valid", {"ACI_SECURE_ENV_bad-name": "x"}, ()),
    (
        "ACI_SECURE_ENV_TOKEN",
        "plain and secure at once",
        {"ACI_ENV_TOKEN": "a", "ACI_SECURE_ENV_TOKEN": "b"},
        (),
    ),
    (
        "WATCH_CONTAINER",
        "seed alias ContainerName invalid",
        {"ContainerName": "Bad_Name"},
        ("WATCH_CONTAINER",),
    ),
    (
        "ACI_RESOURCE_GROUP",
        "seed alias ResourceGroupName invalid",
        {"ResourceGroupName": "bad/rg"},
        ("ACI_RESOURCE_GROUP",),
    ),
    (
        "STORAGE_CONNECTION_STRING",
        "seed AzureAccountKey without AzureAccountName",
        {"AzureAccountKey": "abc"},
        ("STORAGE_CONNECTION_STRING",),
    ),
]
# Names config.py defines that are not testable here, and why (reported in the output).
NOT_TESTED = {
    config.SEED_ACCOUNT_NAME: "a valid-looking account name makes a valid configuration that "
    "would reach the real Azure endpoint; never sent from this loopback-only suite",
}


def config_cases() -> tuple[list[tuple[str, str, dict[str, str], tuple[str, ...]]], list[str]]:
    """Every (setting, description, set, remove) case, and settings with no known bad value."""
    cases: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = []
    unknown = []
    for name in sorted(_SETTING_NAMES):
        values = BAD_VALUES.get(name)
        if values is None:
            unknown.append(name)
            continue
        for value in values:
            if value is None:
                cases.append((name, "missing", {}, (name,)))
            else:
                cases.append((name, f"{value!r}", {name: value}, ()))
    cases += COMBINED
    return cases, unknown


def scenario_config(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("bad configuration: refuse to start")
    arena = stack.arena("config")
    storage = stack.storage_proxy()
    arm = stack.arm_proxy()
    base = stack.env(arena, storage, arm)
    cases, unknown = config_cases()
    for name in unknown:
        row.failures.append(f"setting {name} has no malformed value in scripts/chaos.py BAD_VALUES")
    if mode.config_cases is not None and len(cases) > mode.config_cases:
        # Always the required ones missing; the rest a seeded sample.
        must = [c for c in cases if c[1] == "missing"]
        rest = [c for c in cases if c[1] != "missing"]
        cases = must + rng.sample(rest, max(mode.config_cases - len(must), 0))
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    storage.reset_counts()
    arm.reset_counts()

    def one(item: tuple[int, tuple[str, str, dict[str, str], tuple[str, ...]]]) -> None:
        index, (setting, what, sets, removes) = item
        env = {k: v for k, v in base.items() if k not in removes}
        env.update(sets)
        outcome: dict[str, Any] = {"setting": setting, "case": what}
        for role in ("poll", "sweep"):
            tag = f"cfg{index}.{role}"
            run = stack.run(role, env, tag=tag, timeout=60)
            err = run.err()
            lines = [ln for ln in err.splitlines() if ln.strip()]
            head = next((ln for ln in lines if ln.startswith("Invalid configuration")), "")
            named = [ln.strip() for ln in lines if ln.strip().startswith("- ") and setting in ln]
            requests = sum(
                n
                for counts in (storage.counts(), arm.counts())
                for k, n in counts.items()
                if k.endswith(":" + tag)
            )
            outcome[role] = {"rc": run.rc, "message": named[0] if named else head or err[-200:]}
            outcome[role]["requests"] = requests
            outcome[role]["ok"] = (
                run.rc == 2 and bool(head) and bool(named) and requests == 0 and not run.out()
            )
        outcome["ok"] = outcome["poll"]["ok"] and outcome["sweep"]["ok"]
        with lock:
            results.append(outcome)

    run_parallel(stack, one, list(enumerate(cases)), 4)
    results.sort(key=lambda r: (r["setting"], r["case"]))
    total = storage.counts()["total"] + arm.counts()["total"]
    for r in results:
        if not r["ok"]:
            row.failures.append(
                f"{r['setting']} {r['case']}: poll rc {r['poll']['rc']} / sweep rc "
                f"{r['sweep']['rc']}: {r['poll']['message'][:120]}"
            )
    if total:
        row.failures.append(f"{total} storage/ARM request(s) during bad-configuration runs")
    row.trials = len(results)
    settings_covered = len({r["setting"] for r in results})
    row.notes.append(
        f"{len(results)} cases over {settings_covered} settings x (poll, sweep): "
        f"{sum(r['ok'] for r in results)} refused with exit 2 and one message naming the "
        f"setting; {total} requests reached storage or ARM"
    )
    for name, why in NOT_TESTED.items():
        row.notes.append(f"not tested: {name}: {why}")
    report.bad_config = results
    report.checks.append(
        CheckResult(
            "bad configuration never reaches storage or ARM", total == 0, f"{total} requests"
        )
    )
    log(f"config: {row.notes[0]}")
    return row


# ---------------------------------------------------------------------------------------------
# Scenario 7: security
# ---------------------------------------------------------------------------------------------


def _http(
    port: int, method: str, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _snapshot(stack: Stack, arena: Arena) -> dict[str, Any]:
    """Everything a request could change: every blob (with etag) and every group (with tags)."""
    blobs = sorted(
        (b.name, str(b.etag), str(b.lease.state))
        for b in arena.container.list_blobs(include=["metadata", "snapshots"])
    )
    groups = sorted(
        (str(g.name), json.dumps(g.tags, sort_keys=True)) for g in stack.groups(arena.rg)
    )
    return {"blobs": blobs, "groups": groups}


def _writes(storage: Proxy, arm: Proxy) -> int:
    return sum_kinds(storage.counts(), STORAGE_WRITES) + sum_kinds(arm.counts(), ARM_WRITES)


def scenario_security(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("security: keys, dry runs, secrets, names", trials=1)
    checks: list[CheckResult] = []
    arena = stack.arena("security")
    storage = stack.storage_proxy()
    arm = stack.arm_proxy()
    secure_value = "secure-" + rng.randbytes(12).hex()
    registry_password = "regpw-" + rng.randbytes(12).hex()
    function_key = "fk-" + rng.randbytes(16).hex()
    master_key = "mk-" + rng.randbytes(16).hex()
    env = stack.env(
        arena,
        storage,
        arm,
        {
            config.BATCH_MAX_FILES: "2",
            "ACI_SECURE_ENV_TOKEN": secure_value,
            "ACI_ENV_MODEL": "small",
            config.ACI_REGISTRY_SERVER: "chaosregistry.azurecr.io",
            config.ACI_REGISTRY_USERNAME: "chaos-user",
            config.ACI_REGISTRY_PASSWORD: registry_password,
            # Containers that wait a little, so the dry runs find running and finished groups.
            config.ACI_COMMAND: '["python", "-c", "import time; time.sleep(0.5)"]',
        },
    )
    drop_files(arena, [f"incoming/s/f{k}.txt" for k in range(6)], rng)
    first = stack.run("poll", env, tag="sec.poll")
    groups = stack.groups(arena.rg)
    checks.append(
        CheckResult(
            "security setup: the poll launched groups with secure values and registry password",
            first.rc == 0 and len(groups) == 3,
            f"poll rc {first.rc}, {len(groups)} groups",
        )
    )
    # The groups as ARM returns them: no secret may come back.
    secrets_in_arm = []
    for g in groups:
        full = stack.arm.container_groups.get(arena.rg, g.name)
        text = json.dumps(full.as_dict(), default=str)
        for label, secret in (
            ("secure env value", secure_value),
            ("registry password", registry_password),
            ("account key", ACCOUNT_KEY),
        ):
            if secret in text:
                secrets_in_arm.append(f"{g.name}: {label}")
        if re.search(r"sig=[A-Za-z0-9%]{10,}", text):
            secrets_in_arm.append(f"{g.name}: SAS signature")
        env_vars = {e.name: e for e in full.containers[0].environment_variables or []}
        if env_vars["TOKEN"].value or env_vars["TOKEN"].secure_value:
            secrets_in_arm.append(f"{g.name}: TOKEN readable")
    checks.append(
        CheckResult(
            "no secret in container groups read back from ARM",
            not secrets_in_arm and bool(groups),
            "; ".join(secrets_in_arm) or f"{len(groups)} groups read back",
        )
    )
    time.sleep(2)  # let the containers finish: the dry runs then have attempts to finalize

    # The local Functions host with its keys; timers set to fire once a year (never here).
    host_dir = stack.workdir / "host"
    host_dir.mkdir(exist_ok=True)
    values = {k: v for k, v in env.items() if _is_setting(k)}
    values.update(
        {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            config.POLL_SCHEDULE: "0 0 0 1 1 *",
            config.JANITOR_SCHEDULE: "0 0 0 1 1 *",
            "LOCALDEV_MASTER_KEY": master_key,
            "LOCALDEV_FUNCTION_KEY": function_key,
        }
    )
    values.pop(TAG_ENV, None)
    settings_path = host_dir / "local.settings.json"
    settings_path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=1))
    port = free_port()
    host_env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    host_env["PYTHONPATH"] = str(REPO_ROOT)
    argv = [sys.executable, "-m", "localdev.host", "--app", "function_app.py"]
    argv += ["--settings", str(settings_path), "--port", str(port)]
    host, _, _ = stack.spawn(argv, {**host_env, TAG_ENV: ""}, "sec.host")
    try:
        _wait_for_port(port, 60, host)
        before = _snapshot(stack, arena)
        storage.reset_counts()
        arm.reset_counts()
        bad_keys: list[tuple[str, dict[str, str], str]] = [
            ("no key", {}, ""),
            ("wrong key header", {"x-functions-key": "wrong"}, ""),
            ("wrong key ?code=", {}, "code=wrong"),
            ("empty key", {"x-functions-key": ""}, ""),
            ("key in the wrong case", {"x-functions-key": function_key.upper()}, ""),
            ("key prefix", {"x-functions-key": function_key[:-1]}, ""),
            ("key with a suffix", {"x-functions-key": function_key + "x"}, ""),
            ("key as a bearer token", {"Authorization": f"Bearer {function_key}"}, ""),
            ("key in another header", {"x-function-key": function_key}, ""),
            (
                "wrong header beats a valid ?code=",
                {"x-functions-key": "wrong"},
                f"code={function_key}",
            ),
        ]
        routes = [("POST", "ops/janitor"), ("POST", "ops/poll"), ("GET", "ops/batches")]
        refused = []
        for method, route in routes:
            for label, headers, query in bad_keys:
                for extra in ("", "dryRun=false"):
                    if extra and route != "ops/janitor":
                        continue
                    q = "&".join(x for x in (query, extra) if x)
                    status, _ = _http(
                        port, method, f"/api/{route}" + (f"?{q}" if q else ""), headers
                    )
                    if status not in (401, 403):
                        refused.append(f"{method} {route} with {label}: HTTP {status}")
        after = _snapshot(stack, arena)
        requests = storage.counts()["total"] + arm.counts()["total"]
        checks.append(
            CheckResult(
                "ops endpoints refuse missing or wrong keys (401/403)",
                not refused,
                "; ".join(refused)
                or f"{len(routes) * len(bad_keys) + len(bad_keys)} calls refused",
            )
        )
        checks.append(
            CheckResult(
                "refused calls change nothing (storage + groups snapshot, zero requests)",
                before == after and requests == 0,
                f"{requests} requests reached storage/ARM",
            )
        )
        # Dry runs: the HTTP one and the CLI one, with work waiting for them.
        storage.reset_counts()
        arm.reset_counts()
        status, body = _http(
            port, "POST", "/api/ops/janitor?dryRun=true", {"x-functions-key": function_key}
        )
        dry = json.loads(body or b"{}")
        cli = stack.run("sweep", env, tag="sec.dryrun", dry_run=True)
        cli_report = cli.report() or {}
        after_dry = _snapshot(stack, arena)
        writes = _writes(storage, arm)
        checks.append(
            CheckResult(
                "dry runs (HTTP ?dryRun=true and CLI --dry-run) change nothing",
                status == 200
                and dry.get("dry_run") is True
                and bool(dry.get("actions"))
                and cli.rc == 0
                and bool(cli_report.get("actions"))
                and writes == 0
                and after_dry == before,
                f"HTTP {status}, {len(dry.get('actions', []))} + "
                f"{len(cli_report.get('actions', []))} actions reported, {writes} write requests",
            )
        )
        # Positive controls: the keys do work, and a real sweep through HTTP changes things.
        status_master, _ = _http(port, "GET", f"/api/ops/batches?code={master_key}")
        status_fn, body = _http(port, "GET", "/api/ops/batches", {"x-functions-key": function_key})
        listed = json.loads(body or b"{}").get("count")
        status_sweep, _ = _http(port, "POST", "/api/ops/janitor", {"x-functions-key": function_key})
        checks.append(
            CheckResult(
                "valid keys are accepted (function key header, master key ?code=)",
                (status_master, status_fn, status_sweep) == (200, 200, 200) and listed == 3,
                f"HTTP {status_master}/{status_fn}/{status_sweep}, {listed} batches listed",
            )
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.pid, signal.SIGTERM)
        if stack.procs.wait(host, 20) is None:
            log("security: the host had to be killed")
    stats = drive(stack, arena, env, env, "sec", seconds=mode.scenario_seconds)
    v = Checker(stack).check(arena)
    add_verdict(row, v, "security")
    if not stats.quiet:
        row.failures.append("not quiescent")
    # Log lines are scanned for these (and the account key) once every scenario has run.
    stack.secrets.update(
        {
            "secure env value": secure_value,
            "registry password": registry_password,
            "function key": function_key,
            "master key": master_key,
        }
    )
    checks += property_checks(mode.property_examples, stack.seed)
    report.checks += checks
    row.failures += [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    row.notes.append(f"{sum(c.ok for c in checks)}/{len(checks)} security checks hold")
    for c in checks:
        log(f"security: {'ok  ' if c.ok else 'FAIL'} {c.name} ({c.detail})")
    return row


def scan_secrets(stack: Stack) -> CheckResult:
    """No secret in any log line of the whole run: every poll, sweep and host process (stdout and
    stderr) and the emulator's log. Container output is the user's and is not scanned."""
    leaks = []
    files = [*sorted(stack.logdir.glob("*")), stack.emulator.log_path]
    for path in files:
        text = path.read_text(errors="replace")
        for label, secret in stack.secrets.items():
            if secret in text:
                leaks.append(f"{path.name}: {label}")
        found = re.search(r"sig=[A-Za-z0-9%+/=]{10,}", text)
        if found:
            leaks.append(f"{path.name}: SAS signature {found.group(0)[:12]}...")
    return CheckResult(
        "no secret (account key, SAS sig=, registry password, secure value, keys) in any log",
        not leaks,
        "; ".join(sorted(set(leaks))[:8]) or f"{len(files)} log files of the whole run scanned",
    )


def property_checks(examples: int, seed: int) -> list[CheckResult]:
    """Blob paths and group names derived from user input, property-tested: with hypothesis
    when installed (shrinks failures to a minimal example), else a seeded random fuzzer."""
    from launcher.batch import MAX_BLOB_NAME, RENAMED_DIR, RESERVED_TOP, safe_relative_blob
    from launcher.launch import LaunchError, group_name
    from localdev.aci_emulator.model import check_group_name

    settings = config.load_settings(
        {
            "STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
            "WATCH_CONTAINER": "watch",
            "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
            "ACI_RESOURCE_GROUP": "rg",
            "ACI_LOCATION": "local",
            "ACI_IMAGE": "python:3.11",
            "ARM_ENDPOINT": "https://127.0.0.1:9",
            "ARM_AUTH": "emulator",
        }
    )
    batch_re = re.compile(r"\d{8}-\d{6}-[a-z2-7]{6}")

    def blob_property(relative: str, batch_id: str) -> None:
        source = "incoming/" + relative
        out = safe_relative_blob(settings, batch_id, relative, source)
        segments = out.split("/")
        assert all(s not in ("", ".", "..") for s in segments), out
        assert "\\" not in out and all(" " <= c != "\x7f" for c in out), out
        assert segments[0] not in RESERVED_TOP or out.startswith(RENAMED_DIR + "/"), out
        if out != relative:
            assert out == f"{RENAMED_DIR}/{hashlib.sha256(source.encode()).hexdigest()}", out
        for prefix in settings.state_prefixes:
            folder = f"{prefix}{batch_id}/"
            full = folder + out
            assert len(full) <= MAX_BLOB_NAME, len(full)
            assert posixpath.normpath(full) == full and full.startswith(folder), full

    def distinct_property(a: str, b: str, batch_id: str) -> None:
        if a != b:
            oa = safe_relative_blob(settings, batch_id, a, "incoming/" + a)
            ob = safe_relative_blob(settings, batch_id, b, "incoming/" + b)
            assert oa != ob, (a, b, oa)

    def group_property(prefix: str, batch_id: str, attempt: int) -> None:
        s = config.load_settings({**_PROPERTY_ENV, "GROUP_PREFIX": prefix})
        try:
            name = group_name(s, batch_id, attempt)
        except LaunchError:
            # Only input that is not a real batch id may be refused, never a real one.
            assert not batch_re.fullmatch(batch_id), (prefix, batch_id, attempt)
            return
        check_group_name(name)  # the emulator's copy of ACI's rule raises if invalid
        assert re.fullmatch(r"[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]", name) and len(name) <= 63

    results: list[CheckResult] = []
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError:
        hypothesis = None  # type: ignore[assignment]
    text = None
    if hypothesis is not None:
        tokens = [*"/.\\ %?#&\t\n\x7f_", "..", "_logs", "_batch.json", "_renamed", "x" * 200]
        text = st.lists(
            st.one_of(st.characters(codec="utf-8"), st.sampled_from(tokens)), max_size=400
        ).map("".join)
        stamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31)).map(
            lambda d: d.replace(tzinfo=UTC)
        )
        real_ids = st.builds(
            lambda d, s: d.strftime("%Y%m%d-%H%M%S-") + s,
            stamps,
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=6, max_size=6),
        )
        any_ids = st.one_of(real_ids, st.text(max_size=70))
        prefixes = st.from_regex(r"\A[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4}){0,2}-?\Z").filter(
            lambda p: len(p) <= 20
        )
        cfg = hypothesis.settings(
            max_examples=examples,
            derandomize=False,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        tests: list[tuple[str, Callable[[], None]]] = [
            (
                "blob paths from user names never leave their batch folder or exceed 1,024 chars",
                hypothesis.seed(seed)(cfg(hypothesis.given(text, real_ids)(blob_property))),
            ),
            (
                "two different user names never share a stored path",
                hypothesis.seed(seed)(
                    cfg(hypothesis.given(text, text, real_ids)(distinct_property))
                ),
            ),
            (
                "group names are valid ARM names for every prefix, batch id and attempt",
                hypothesis.seed(seed)(
                    cfg(hypothesis.given(prefixes, any_ids, st.integers(1, 20))(group_property))
                ),
            ),
        ]
        for label, test in tests:
            try:
                test()
                results.append(CheckResult(label, True, f"hypothesis, {examples} examples"))
            except Exception as exc:  # the shrunk counterexample is in the message
                results.append(CheckResult(label, False, f"{type(exc).__name__}: {exc}"[:400]))
        return results
    # Fallback: seeded fuzzing from an alphabet of troublemakers.
    rng = random.Random(seed)
    alphabet = [*"abcXYZ019/.\\ %?#&\t\n\x7f_-~é文😀", "..", "_logs", "_batch.json", "/"]

    def fuzz(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    def real_id() -> str:
        stamp = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(6 * 10**9))
        return stamp.strftime("%Y%m%d-%H%M%S-") + "".join(
            rng.choices("abcdefghijklmnopqrstuvwxyz234567", k=6)
        )

    cases: list[tuple[str, Callable[[], None]]] = [
        (
            "blob paths from user names never leave their batch folder or exceed 1,024 chars",
            lambda: blob_property(fuzz(rng.choice((20, 400, 1100))), real_id()),
        ),
        (
            "two different user names never share a stored path",
            lambda: distinct_property(fuzz(30), fuzz(30), real_id()),
        ),
        (
            "group names are valid ARM names for every prefix, batch id and attempt",
            lambda: group_property(
                rng.choice(["ml-", "ml", "a", "job-runner-", "x" * 20]),
                rng.choice([real_id(), fuzz(40)]),
                rng.randint(1, 20),
            ),
        ),
    ]
    for label, case in cases:
        try:
            for _ in range(examples):
                case()
            results.append(CheckResult(label, True, f"seeded fuzzing, {examples} examples"))
        except AssertionError as exc:
            results.append(CheckResult(label, False, f"counterexample: {exc}"[:400]))
    return results


_PROPERTY_ENV = {
    "STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "WATCH_CONTAINER": "watch",
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "ACI_RESOURCE_GROUP": "rg",
    "ACI_LOCATION": "local",
    "ACI_IMAGE": "python:3.11",
    "ARM_ENDPOINT": "https://127.0.0.1:9",
    "ARM_AUTH": "emulator",
}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def table(report: Report) -> str:
    header = (
        "| scenario | trials | files dropped | files lost | files duplicated "
        "| groups double-launched | batches finished | result |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report.rows:
        result = "ok" if r.ok else "FAIL"
        lines.append(
            f"| {r.scenario} | {r.trials} | {r.dropped} | {r.lost} | {r.duplicated} "
            f"| {r.double_launched} | {r.finished} | {result} |"
        )
    return "\n".join(lines)


def print_report(report: Report, mode: Mode) -> None:
    print()
    print(table(report))
    print()
    for r in report.rows:
        for note in r.notes:
            print(f"- {r.scenario.split(':')[0]}: {note}")
    if report.bad_input:
        print("\nbad input, per blob:")
        for rec in report.bad_input:
            mark = "ok  " if rec.get("ok") else "FAIL"
            extra = f" [log: {rec['log_line']}]" if rec.get("log_line") else ""
            print(f"  {mark} {rec['kind']}: {rec.get('outcome')}{extra}")
    failed_cfg = [c for c in report.bad_config if not c["ok"]]
    if report.bad_config:
        print(
            f"\nbad configuration: {len(report.bad_config) - len(failed_cfg)}/"
            f"{len(report.bad_config)} cases refused correctly"
        )
        for c in failed_cfg:
            print(f"  FAIL {c['setting']} {c['case']}: poll {c['poll']} sweep {c['sweep']}")
    if report.checks:
        print("\nchecks:")
        for check in report.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name} ({check.detail})")
    problems = [f for r in report.rows for f in r.failures]
    if problems:
        print("\nproblems:")
        for p in problems[:60]:
            print(f"  - {p}")
    print(
        f"\nlimits: seed {report.seed}, mode {mode.name}; crash trials {mode.crash_trials}, race "
        f"{mode.race_ticks} ticks / {mode.race_files} files, {mode.fault_runs} fault run(s) of "
        f"{mode.fault_files} files, {mode.lease_trials} lease trial(s) per variant; each trial "
        f"bounded to {mode.trial_seconds:.0f}s, each drive to quiescence to "
        f"{mode.scenario_seconds:.0f}s, each fault run to {mode.fault_seconds:.0f}s; loopback "
        f"only (Azurite, ACI emulator, proxies, local Functions host on 127.0.0.1)."
    )
    print(f"total {report.seconds:.0f}s; logs in {report.logdir}")
    print("RESULT: " + ("ok" if report.ok else "FAILED"))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Stack, Mode, random.Random, Report], Row]] = {
    "crash": scenario_crash,
    "race": scenario_race,
    "faults": scenario_faults,
    "lease": scenario_lease,
    "badinput": scenario_badinput,
    "config": scenario_config,
    "security": scenario_security,
}


# Mostly waiting in the storage SDK's retry back-off (15 s and more after each fault): runs
# alongside the other scenarios, which use their own containers and resource groups.
BACKGROUND = ("faults",)


def run_suite(mode: Mode, seed: int, only: Sequence[str], workdir: Path) -> Report:
    report = Report(mode=mode.name, seed=seed, logdir=str(workdir / "logs"))
    started = time.monotonic()
    rows: dict[str, Row] = {}
    errors: list[BaseException] = []

    def scenario(stack: Stack, name: str) -> None:
        rng = random.Random(f"{seed}:{name}")
        log(f"scenario {name} ...")
        t0 = time.monotonic()
        try:
            row = RUNNERS[name](stack, mode, rng, report)
        except Interrupted:
            return
        except BaseException as exc:
            errors.append(exc)
            stack.stop.set()
            raise
        row.seconds = round(time.monotonic() - t0, 1)
        rows[name] = row
        log(f"scenario {name}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.0f}s")

    with Stack(workdir, seed) as stack:
        stack.start()
        log(f"stack up: Azurite :{stack.azurite.port}, ACI emulator {stack.emulator.url}")
        background = [
            threading.Thread(target=scenario, args=(stack, n), name=n, daemon=True)
            for n in only
            if n in BACKGROUND and len(only) > 1
        ]
        try:
            for thread in background:
                thread.start()
            for name in only:
                if not any(t.name == name for t in background):
                    scenario(stack, name)
            for thread in background:
                while thread.is_alive():
                    thread.join(1)
            if errors:
                raise errors[0]
            if "security" in rows:
                # Every process of the whole run has finished: scan all their logs.
                check = scan_secrets(stack)
                report.checks.append(check)
                log(f"security: {'ok  ' if check.ok else 'FAIL'} {check.name} ({check.detail})")
                if not check.ok:
                    rows["security"].failures.append(f"{check.name}: {check.detail}")
        finally:
            stack.stop.set()
    report.rows = [rows[n] for n in SCENARIOS if n in rows]
    report.seconds = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (used by make test)")
    parser.add_argument("--seed", type=int, default=20261123, help="seed of every random choice")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--crash-trials", type=int, help="override the number of crash trials")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="logs and emulator state (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    mode = QUICK if args.quick else FULL
    if args.crash_trials is not None:
        mode = dataclasses.replace(mode, crash_trials=args.crash_trials)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    # The SDK warns about error bodies it cannot parse (Azurite's 500s on unlistable names).
    logging.getLogger("azure").setLevel(logging.ERROR)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C, even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log(f"mode {mode.name}, seed {args.seed}, scenarios {','.join(only)}, workdir {workdir}")
    try:
        report = run_suite(mode, args.seed, only, workdir)
    except KeyboardInterrupt:
        log("interrupted: every process started by this run was stopped")
        return 130
    print_report(report, mode)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
