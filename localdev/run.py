"""`make run` / `make demo`: the whole pipeline on one machine.

Starts Azurite (blob storage on port 10000 and queues on 10001, so `UseDevelopmentStorage=true`
works; the NOTIFY_QUEUE queue is created when set), the ACI emulator
(https on 127.0.0.1:8443, the sample worker image mapped to `python -m worker`) and the local
Functions host (http://localhost:7071) loading function_app.py with local.settings.json (created
from local.settings.example.json on first run). Ctrl-C stops everything.

Before starting anything the settings are validated as the app will see them (the file's Values
under the environment); a problem is printed here and the exit code is 2. `make run` uses the
fixed ports, so `UseDevelopmentStorage=true` and the command-line tools reach it; its state
(Azurite's data, logs, the emulator's groups) lives in .localdev/ and survives a restart
(`make reset` clears it). Ctrl-C stops everything; a second Ctrl-C stops it without waiting.

`--demo` drives its own stack, beside a running `make run` if there is one: free ports, in-memory
storage, state in .localdev/demo/. It drops sample folders (one with an unreadable file), waits
until its batches reach done/ or failed/, prints a table and exits 0 only if the outcome is the
expected one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from config import ConfigError, load_settings, load_settings_file
from localdev.azurite import REPO_ROOT, connection_string, free_port, run_azurite, wait_for_port

STATE = REPO_ROOT / ".localdev"
SETTINGS = REPO_ROOT / "local.settings.json"
EXAMPLE = REPO_ROOT / "local.settings.example.json"
AZURITE_PORT = 10000
EMULATOR_PORT = 8443
HOST_PORT = 7071
QUEUE_PORT = 10001


PID_FILE = "run.pid"
# Set by a second Ctrl-C: stop the children without waiting for them.
_FORCE = threading.Event()


def log(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def load_values(path: Path) -> dict[str, str]:
    if not path.exists():
        shutil.copyfile(EXAMPLE, path)
        log(f"created {path.name} from {EXAMPLE.name}")
    return load_settings_file(path)


def app_environment(values: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """What the Functions host hands the app: the file's Values under the environment, under
    what this script sets (ports, CA)."""
    return {**values, **os.environ, **overrides}


def check_settings(values: dict[str, str], storage_port: int, emulator_port: int) -> None:
    """Validate the settings before anything starts, with placeholders for what this script
    sets later (Azurite's connection string, the emulator's URL and CA); raises ConfigError."""
    env = app_environment(
        values,
        {
            "STORAGE_CONNECTION_STRING": connection_string(storage_port),
            "ARM_ENDPOINT": f"https://127.0.0.1:{emulator_port}",
        },
    )
    env.pop("ARM_CA_BUNDLE", None)  # written by the emulator when it starts
    load_settings(env)


def port_in_use(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.3):
        return True
    return False


def run_is_up(state: Path = STATE) -> bool:
    """Whether a `make run` with this state directory is alive (its pid file names a process)."""
    try:
        pid = int((state / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def log_errors(logfile: Path, offset: int, limit: int = 8) -> list[str]:
    """The ERROR lines a component logged since `offset`: why it did not start."""
    try:
        with open(logfile, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line for line in text.splitlines() if " ERROR " in line or "Error:" in line]
    return (lines or text.splitlines())[-limit:]


@contextlib.contextmanager
def process(
    argv: list[str], name: str, state: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    logfile = state / f"{name}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log(f"{name} started (pid {proc.pid}, log {logfile})")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline and not _FORCE.is_set():
                time.sleep(0.05)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log(f"{name} stopped")


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}; see .localdev logs")
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear")


def prepare_container(conn: str, name: str) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(conn)
    container = service.get_container_client(name)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return container


def prepare_queue(conn: str, name: str) -> None:
    """Create the notification queue (in Azure the template does; the app may only send)."""
    client = QueueClient.from_connection_string(conn, name)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()


DEMO_FILES: dict[str, bytes] = {
    "good/notes.txt": b"Model Launcher demo\nfiles in, containers out\n",
    "good/table.csv": b"id,name\n1,alpha\n2,beta\n3,gamma\n",
    "good/config.json": b'{"model": "small", "threshold": 0.5}',
    "also-good/readme.md": b"# second folder\nprocessed by its own container group\n",
    "bad/broken.csv": b"id,name\n1,\xff\xfe not utf-8\n",
}


def run_demo(container: ContainerClient, values: dict[str, str], timeout: float) -> int:
    """Drop the sample folders and judge the batches made of them (and only those)."""
    incoming = values.get("INCOMING_PREFIX", "incoming/")
    marker = values.get("BATCH_READY_MARKER")
    before = {r["batch"] for r in batches(container, values)}
    for name, data in DEMO_FILES.items():
        container.upload_blob(incoming + name, data, overwrite=True)
        if marker:
            container.upload_blob(incoming + name.split("/")[0] + "/" + marker, b"", overwrite=True)
    log(
        f"dropped {len(DEMO_FILES)} files in 3 folders under {incoming} (bad/ has an unreadable file)"
    )
    ours = {name.split("/")[0] for name in DEMO_FILES}
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [
            r
            for r in batches(container, values)
            if r["batch"] not in before and r["folder"] in ours
        ]
        left = [incoming + n for n in DEMO_FILES if _exists(container, incoming + n)]
        finished = [r for r in rows if r["state"] in ("succeeded", "failed")]
        if not left and rows and len(finished) == len(rows):
            break
        time.sleep(2)
    print_table(rows)
    by_folder = {r["folder"]: r["state"] for r in rows}
    expected = {"good": "succeeded", "also-good": "succeeded", "bad": "failed"}
    ok = by_folder == expected
    outputs = list(container.list_blobs(name_starts_with=values.get("OUTPUT_PREFIX", "output/")))
    ok = ok and any(b.name.endswith("_summary.json") for b in outputs)
    log("demo outcome " + ("as expected" if ok else f"NOT as expected: {by_folder}"))
    return 0 if ok else 1


def _exists(container: ContainerClient, name: str) -> bool:
    return bool(container.get_blob_client(name).exists())


def batches(container: ContainerClient, values: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for prefix in (
        values.get("PROCESSING_PREFIX", "processing/"),
        values.get("DONE_PREFIX", "done/"),
        values.get("FAILED_PREFIX", "failed/"),
    ):
        for blob in container.list_blobs(name_starts_with=prefix):
            if blob.name.endswith("/_batch.json") and blob.name.count("/") == prefix.count("/") + 1:
                try:
                    m = json.loads(container.download_blob(blob.name).readall())
                except ResourceNotFoundError:
                    continue  # moved on (to done/ or failed/) since the listing: seen next round
                last = (m.get("attempts") or [{}])[-1]
                rows.append(
                    {
                        "batch": m["batch_id"],
                        "folder": m.get("folder") or "-",
                        "state": m["state"],
                        "attempts": m.get("attempt", 0),
                        "duration_s": last.get("duration_seconds"),
                        "reason": m.get("reason") or "",
                    }
                )
    return sorted(rows, key=lambda r: r["batch"])


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'batch':<26} {'folder':<10} {'state':<10} {'attempts':>8} {'duration_s':>10}  reason"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['batch']:<26} {r['folder']:<10} {r['state']:<10} {r['attempts']:>8} "
            f"{r['duration_s'] if r['duration_s'] is not None else '-':>10}  {r['reason']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localdev.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--demo", action="store_true", help="drop a sample folder and check the outcome"
    )
    parser.add_argument("--timeout", type=float, default=240, help="demo: seconds to wait")
    parser.add_argument(
        "--settings", type=Path, default=SETTINGS, help="local.settings.json to use"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="logs and emulator state (default .localdev, or .localdev/demo for --demo)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="pick free ports instead of 10000/8443/7071 (always for --demo)",
    )
    args = parser.parse_args(argv)
    stop = {"now": False}

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop["now"]:
            if not _FORCE.is_set():
                _FORCE.set()
                log("second Ctrl-C: stopping without waiting")
            return
        stop["now"] = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    try:
        return _main(args, stop)
    except KeyboardInterrupt:
        log("stopped")
        return 130


def _main(args: argparse.Namespace, stop: dict[str, bool]) -> int:
    fresh = args.demo and args.state_dir is None
    state: Path = (args.state_dir or (STATE / "demo" if args.demo else STATE)).resolve()
    if fresh:
        shutil.rmtree(state, ignore_errors=True)  # the demo's own state, new every time
    state.mkdir(parents=True, exist_ok=True)
    try:
        values = load_values(args.settings)
    except ConfigError as exc:
        print(f"[run] {exc}", file=sys.stderr, flush=True)
        return 2
    free = args.free_ports or args.demo
    ports = (
        (free_port(), free_port(), free_port(), free_port())
        if free
        else (AZURITE_PORT, EMULATOR_PORT, HOST_PORT, QUEUE_PORT)
    )
    try:
        check_settings(values, ports[0], ports[1])
    except ConfigError as exc:
        print(
            f"[run] {args.settings} (and the environment, which wins) cannot run the app; "
            f"nothing was started.\n{exc}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    if args.demo and (run_is_up() or port_in_use(HOST_PORT)):
        log(
            "`make run` is up: the demo runs beside it on its own ports and its own in-memory "
            "storage, and leaves its batches alone"
        )
    if not free:
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            print(
                f"[run] port(s) {', '.join(map(str, busy))} in use: is `make run` already up "
                f"(pid file {state / PID_FILE})? Stop it with Ctrl-C, or run this one on other "
                "ports: make run RUN_ARGS=--free-ports",
                file=sys.stderr,
                flush=True,
            )
            return 1
    pid_file = state / PID_FILE
    pid_file.write_text(str(os.getpid()))
    try:
        return _serve(args, stop, state, values, ports)
    except (RuntimeError, TimeoutError) as exc:
        print(f"[run] {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        pid_file.unlink(missing_ok=True)


def _started(name: str, logfile: Path, offset: int, wait: Any) -> None:
    """Wait for a component; if it stops or hangs, say why with its own error lines."""
    try:
        wait()
    except (RuntimeError, TimeoutError) as exc:
        why = "\n".join(f"  {line}" for line in log_errors(logfile, offset))
        raise RuntimeError(f"{name} did not start ({exc}); from {logfile}:\n{why}") from None


def _offset(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _serve(
    args: argparse.Namespace,
    stop: dict[str, bool],
    state: Path,
    values: dict[str, str],
    ports: tuple[int, int, int, int],
) -> int:
    container_name = values["WATCH_CONTAINER"]
    emulator_dir = state / "aci"
    emulator_dir.mkdir(exist_ok=True)
    (emulator_dir / "emulator.json").unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        azurite = stack.enter_context(
            run_azurite(
                ports[0],
                location=None if args.demo else state / "azurite",
                log_file=state / "azurite.log",
                queue_port=ports[3],
            )
        )
        container = prepare_container(azurite.connection_string, container_name)
        log(f"Azurite on {azurite.blob_url}, container '{container_name}' ready")
        queue_name = app_environment(values, {}).get("NOTIFY_QUEUE", "").strip().lower()
        if queue_name:
            prepare_queue(azurite.connection_string, queue_name)
            log(f"Azurite queues on {azurite.queue_url}, notification queue '{queue_name}' ready")
        emulator_log = state / "aci-emulator.log"
        offset = _offset(emulator_log)
        emulator = stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "localdev.aci_emulator",
                    "--port",
                    str(ports[1]),
                    "--state-dir",
                    str(emulator_dir),
                    "--images",
                    "localdev/images.json",
                    # Groups survive a restart of `make run` as after a host outage (make reset
                    # removes the file with the rest of the state).
                    "--state-file",
                    "groups.json",
                    # Azure's defaults otherwise; only the app's resource group exists.
                    "--resource-group",
                    values.get("ACI_RESOURCE_GROUP", "rg-local"),
                ],
                "aci-emulator",
                state,
            )
        )
        _started(
            "the ACI emulator",
            emulator_log,
            offset,
            lambda: wait_for_file(emulator_dir / "emulator.json", emulator, 30),
        )
        info = json.loads((emulator_dir / "emulator.json").read_text())
        log(f"ACI emulator on {info['url']}")
        # The host reads the settings file; the environment wins over it, so the ports and the
        # CA picked here reach the app without editing the user's file.
        env = os.environ.copy()
        env.update(
            {
                "STORAGE_CONNECTION_STRING": azurite.connection_string,
                "ARM_ENDPOINT": info["url"],
                "ARM_CA_BUNDLE": str(info["ca"]),
            }
        )
        host_log = state / "functions-host.log"
        offset = _offset(host_log)
        host = stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "localdev.host",
                    "--app",
                    "function_app.py",
                    "--settings",
                    str(args.settings.resolve()),
                    "--port",
                    str(ports[2]),
                ],
                "functions-host",
                state,
                env,
            )
        )
        _started("the Functions host", host_log, offset, lambda: wait_for_port(ports[2], 30, host))
        log(f"Functions host on http://localhost:{ports[2]}/api/ (log: {host_log})")
        if args.demo:
            return run_demo(container, values, args.timeout)
        key = values.get("LOCALDEV_FUNCTION_KEY", "<function key>")
        print(
            f"""
Model Launcher is running. Next:
  drop files:     .venv/bin/python scripts/drop.py path/to/folder   (or any Storage client on Azurite)
  list batches:   .venv/bin/python -m cleanup batches
  a batch's log:  .venv/bin/python -m cleanup logs <batch>
  watch progress: tail -f {host_log}
  status API:     curl -s -H 'x-functions-key: {key}' http://localhost:{ports[2]}/api/ops/batches
  status page:    http://localhost:{ports[2]}/api/ops/status?code={key}
  run a poll:     curl -s -X POST -H 'x-functions-key: {key}' http://localhost:{ports[2]}/api/ops/poll
Press Ctrl-C to stop everything (state is kept; `make reset` clears it).
""",
            flush=True,
        )
        try:
            while not stop["now"]:
                for proc, name, logfile in (
                    (emulator, "ACI emulator", emulator_log),
                    (host, "Functions host", host_log),
                ):
                    if proc.poll() is not None:
                        why = "\n".join(f"  {line}" for line in log_errors(logfile, 0, 5))
                        log(f"{name} exited with {proc.returncode}; stopping. {logfile}:\n{why}")
                        return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        log("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
