"""The stack every scenario shares: Azurite, the ACI emulator, tagged proxies in front of them,
the child processes (poll, sweep, host) and the settings they get."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerinstance import ContainerInstanceManagementClient
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy

import config
from localdev.aci_emulator.testing import Emulator, make_client, start_emulator
from localdev.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, run_azurite
from localdev.proxy import Classifier, Proxy, arm_kind, queue_kind, storage_kind

from .core import MIB, PASS_COMMAND, REPO_ROOT, SUBSCRIPTION, TAG_ENV, TAG_RE, Interrupted


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


def fault_mix(faults: Mapping[str, int]) -> str:
    """A proxy's injected faults as `kind:count` pairs, for the notes."""
    return " ".join(f"{k}:{v}" for k, v in sorted(faults.items()) if k != "total")


@dataclass
class Arena:
    """One scenario's (or trial's) own container and resource group on the shared stack."""

    name: str
    container: ContainerClient
    rg: str
    dropped: dict[str, Dropped] = field(default_factory=dict)
    # The arena's completion-notification queue (NOTIFY_QUEUE), read directly by the checker.
    queue: QueueClient | None = None


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
    """Azurite (blob and queue services), the ACI emulator, direct (unproxied) clients and the
    process registry."""

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
        self.queues: QueueServiceClient
        self.arm: ContainerInstanceManagementClient

    def start(self) -> Stack:
        self.azurite = self.enter_context(run_azurite(queue_port=0))
        # Azure's defaults (provisioning time, update semantics, limits, quotas), and the
        # arenas' resource groups (`rg-chaos-...`) exist. One exception: the create/delete
        # budgets (100 per 5 minutes, 300 per hour per subscription and region) are lifted.
        # The suite runs one arena after another in one subscription, each a deployment of its
        # own, and a quick run alone creates more than 100 groups within 5 minutes; under the
        # budget the later scenarios wait out a 429's Retry-After (minutes) and miss their time
        # bounds. How the app copes with a spent budget is tested in tests/test_launch.py.
        self.emulator = self.enter_context(
            start_emulator(
                self.workdir / "aci",
                page_size=100,
                resource_groups=["rg-chaos-*"],
                creates_per_5_minutes=None,
                creates_per_hour=None,
                deletes_per_5_minutes=None,
                deletes_per_hour=None,
            )
        )
        # Registered after both services, so it runs first on the way out: children die before
        # the services they talk to.
        self.callback(self.procs.kill_all)
        self.service = BlobServiceClient.from_connection_string(
            self.azurite.connection_string, max_single_put_size=64 * MIB, max_block_size=64 * MIB
        )
        self.queues = QueueServiceClient.from_connection_string(self.azurite.connection_string)
        self.arm = make_client(self.emulator, SUBSCRIPTION, polling_interval=0.2)
        return self

    @property
    def storage_upstream(self) -> str:
        return f"http://127.0.0.1:{self.azurite.port}"

    @property
    def queue_upstream(self) -> str:
        return f"http://127.0.0.1:{self.azurite.queue_port}"

    def arena(self, label: str, notify: bool = False) -> Arena:
        """A fresh container + resource group (names unique per run); with `notify`, a queue of
        the same name that the app sends completion notifications to (NOTIFY_QUEUE)."""
        with self._lock:
            self._counter[label] += 1
            n = self._counter[label]
        name = f"chaos-{label}-{self.seed % 100000}-{n}-{random.Random().randrange(16**6):06x}"
        container = self.service.create_container(name[:63])
        queue = None
        if notify:
            queue = self.queues.get_queue_client(
                name[:63], message_decode_policy=TextBase64DecodePolicy()
            )
            queue.create_queue()
        return Arena(name=name[:63], container=container, rg=f"rg-{name[:60]}", queue=queue)

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

    def queue_proxy(self, classify: Classifier | None = None, **kwargs: Any) -> Proxy:
        return self.proxy(self.queue_upstream, classify or tagged(queue_kind), **kwargs)

    def arm_proxy(self, classify: Classifier | None = None, **kwargs: Any) -> Proxy:
        return self.proxy(
            self.emulator.url,
            classify or tagged(arm_kind),
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
        queue: Proxy | None = None,
    ) -> dict[str, str]:
        """Settings for a poll/sweep process, as environment variables (like
        tests/conftest.py `Pipeline.subprocess_env`), with the caller's environment scrubbed
        of every setting so nothing from the shell leaks in. An arena with a queue gets
        NOTIFY_QUEUE, its queue endpoint through `queue` when given."""
        env = {k: v for k, v in os.environ.items() if not is_setting(k)}
        connection = storage.blob_connection_string() if storage else self.azurite.connection_string
        if arena.queue is not None:
            endpoint = f"{queue.url if queue else self.queue_upstream}/{ACCOUNT}"
            connection = ";".join(
                p for p in connection.split(";") if p and not p.startswith("QueueEndpoint=")
            )
            connection += f";QueueEndpoint={endpoint};"
            env[config.NOTIFY_QUEUE] = arena.queue.queue_name
        env.update(
            {
                config.STORAGE_CONNECTION_STRING: connection,
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


SETTING_NAMES = frozenset(
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


def is_setting(name: str) -> bool:
    return (
        name in SETTING_NAMES
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
