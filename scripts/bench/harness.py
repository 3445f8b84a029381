"""The orchestrator's machinery: the proxies as processes, and `Bench`, which owns Azurite,
the emulator and the proxies for one run, builds each scenario's settings, seeds its files and
runs its measured operations in worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from azure.storage.blob import BlobServiceClient, ContainerClient

from .common import PAYLOAD, RESULT_MARK, ROOT, SUBSCRIPTION, Config, Row, transport
from .report import fmt

WORKER_MODULE = "scripts.bench.worker"


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
        unless `stock` (default: --stock-azurite) says otherwise (see the scripts.bench docstring)."""
        from localdev.azurite import FAST_DELETE_PRELOAD, connection_string, run_azurite

        stock = self.cfg.stock_azurite if stock is None else stock
        self._azurite_stack.close()
        self._azurite_stack = contextlib.ExitStack()
        self.azurite = self._azurite_stack.enter_context(
            run_azurite(port=self.azurite_port, preload=None if stock else FAST_DELETE_PRELOAD)
        )
        self.service = BlobServiceClient.from_connection_string(
            connection_string(self.azurite_port), transport=transport(64)
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
        argv = [sys.executable, "-m", WORKER_MODULE]
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
            argv += ["--", sys.executable, "-m", WORKER_MODULE]
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
