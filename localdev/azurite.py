"""Start and stop a real Azurite blob service (and, on request, its queue service) for local
runs, tests, chaos and benchmarks.

Azurite is the npm package pinned in package.json (installed by `make venv`/`npm ci` into
node_modules). Running it in memory on a free loopback port keeps parallel test sessions apart.
The queue service (`azurite-queue`, a process of its own) serves completion notifications
(NOTIFY_QUEUE, cleanup/notify.py); connection strings then carry its QueueEndpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# The well-known development-storage key: public, documented by Microsoft, Azurite-only.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# Node preload that removes the part of Azurite's Delete Blob that grows with the blobs stored
# (LokiJS scans the account and re-sorts all four indices per delete); see the file. Only the
# benchmark uses it: tests, `make run` and chaos run stock Azurite.
FAST_DELETE_PRELOAD = Path(__file__).resolve().parent / "azurite_fast_delete.js"


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob endpoint (and queue endpoint, when started with one)."""

    port: int
    process: subprocess.Popen[bytes] | None
    queue_port: int | None = None

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def queue_url(self) -> str | None:
        return f"http://127.0.0.1:{self.queue_port}/{ACCOUNT}" if self.queue_port else None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, queue_port=self.queue_port)


def connection_string(port: int, host: str = "127.0.0.1", queue_port: int | None = None) -> str:
    """Connection string for Azurite on a given port (`UseDevelopmentStorage=true` means 10000,
    and 10001 for queues)."""
    queue = f"QueueEndpoint=http://{host}:{queue_port}/{ACCOUNT};" if queue_port else ""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};{queue}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_binary(name: str = "azurite-blob") -> str:
    local = REPO_ROOT / "node_modules" / ".bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} not found: run `npm ci` (or `make venv`) in the repository root")


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before listening on {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def run_azurite(
    port: int | None = None,
    location: Path | None = None,
    log_file: Path | None = None,
    preload: Path | None = None,
    queue_port: int | None = None,
) -> Iterator[Azurite]:
    """Run Azurite (in memory unless `location` is given) until the context exits; `preload`
    is a Node module required before Azurite starts (e.g. FAST_DELETE_PRELOAD). With
    `queue_port` (0: a free one) the queue service runs too."""
    port = port or free_port()
    with contextlib.ExitStack() as stack:
        queue = None
        if queue_port is not None:
            queue = queue_port or free_port()
            stack.enter_context(
                _run_service(
                    "azurite-queue",
                    "--queueHost",
                    "--queuePort",
                    queue,
                    location=location,
                    log_file=log_file,
                )
            )
        proc = stack.enter_context(
            _run_service(
                "azurite-blob",
                "--blobHost",
                "--blobPort",
                port,
                location=location,
                log_file=log_file,
                preload=preload,
            )
        )
        yield Azurite(port=port, process=proc, queue_port=queue)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _run_service(
    binary: str,
    host_flag: str,
    port_flag: str,
    port: int,
    *,
    location: Path | None,
    log_file: Path | None,
    preload: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """One Azurite service process (`azurite-blob` or `azurite-queue`: same account, same key)
    on 127.0.0.1:`port`, in memory unless `location` is given, silent unless `log_file` is
    given (appended to); stopped when the context exits."""
    argv = [
        azurite_binary(binary),
        host_flag,
        "127.0.0.1",
        port_flag,
        str(port),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--loose",
    ]
    if location is None:
        argv.append("--inMemoryPersistence")
    else:
        location.mkdir(parents=True, exist_ok=True)
        argv += ["--location", str(location)]
    if log_file is None:
        argv.append("--silent")
    env = os.environ.copy()
    if preload is not None:
        env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} --require={preload}".strip()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    try:
        wait_for_port(port, 30, proc)
        service = binary.removeprefix("azurite-")
        logger.info("Azurite %s service on %s (pid %s)", service, f"127.0.0.1:{port}", proc.pid)
        yield proc
    finally:
        _stop(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]
