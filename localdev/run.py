"""`make run` / `make demo`: the whole pipeline on one machine.

Starts Azurite (blob storage, port 10000 so `UseDevelopmentStorage=true` works), the ACI emulator
(https on 127.0.0.1:8443, the sample worker image mapped to `python -m worker`) and the local
Functions host (http://localhost:7071) loading function_app.py with local.settings.json (created
from local.settings.example.json on first run). Ctrl-C stops everything.

`--demo` drives the same stack: drops a sample folder with one unreadable file, waits until every
batch reaches done/ or failed/, prints a table and exits 0 only if the outcome is the expected one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from localdev.azurite import REPO_ROOT, free_port, run_azurite, wait_for_port

STATE = REPO_ROOT / ".localdev"
SETTINGS = REPO_ROOT / "local.settings.json"
EXAMPLE = REPO_ROOT / "local.settings.example.json"
AZURITE_PORT = 10000
EMULATOR_PORT = 8443
HOST_PORT = 7071


def log(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def load_values(path: Path) -> dict[str, str]:
    if not path.exists():
        shutil.copyfile(EXAMPLE, path)
        log(f"created {path.name} from {EXAMPLE.name}")
    values: dict[str, str] = json.loads(path.read_text())["Values"]
    return values


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
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
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


DEMO_FILES: dict[str, bytes] = {
    "good/notes.txt": b"Model Launcher demo\nfiles in, containers out\n",
    "good/table.csv": b"id,name\n1,alpha\n2,beta\n3,gamma\n",
    "good/config.json": b'{"model": "small", "threshold": 0.5}',
    "also-good/readme.md": b"# second folder\nprocessed by its own container group\n",
    "bad/broken.csv": b"id,name\n1,\xff\xfe not utf-8\n",
}


def run_demo(container: ContainerClient, values: dict[str, str], timeout: float) -> int:
    incoming = values.get("INCOMING_PREFIX", "incoming/")
    marker = values.get("BATCH_READY_MARKER")
    for name, data in DEMO_FILES.items():
        container.upload_blob(incoming + name, data, overwrite=True)
        if marker:
            container.upload_blob(incoming + name.split("/")[0] + "/" + marker, b"", overwrite=True)
    log(
        f"dropped {len(DEMO_FILES)} files in 3 folders under {incoming} (bad/ has an unreadable file)"
    )
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = batches(container, values)
        left = [
            n for n in container.list_blobs(name_starts_with=incoming) if not n.name.endswith("/")
        ]
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


def batches(container: ContainerClient, values: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for prefix in (
        values.get("PROCESSING_PREFIX", "processing/"),
        values.get("DONE_PREFIX", "done/"),
        values.get("FAILED_PREFIX", "failed/"),
    ):
        for blob in container.list_blobs(name_starts_with=prefix):
            if blob.name.endswith("/_batch.json") and blob.name.count("/") == prefix.count("/") + 1:
                m = json.loads(container.download_blob(blob.name).readall())
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
            f"{r['duration_s'] if r['duration_s'] is not None else '-':>10}  {r['reason'][:60]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.run", description=__doc__)
    parser.add_argument(
        "--demo", action="store_true", help="drop a sample folder and check the outcome"
    )
    parser.add_argument("--timeout", type=float, default=240, help="demo: seconds to wait")
    parser.add_argument(
        "--settings", type=Path, default=SETTINGS, help="local.settings.json to use"
    )
    parser.add_argument("--state-dir", type=Path, default=STATE, help="logs and emulator state")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 10000/8443/7071"
    )
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    values = load_values(args.settings)
    ports = (
        (free_port(), free_port(), free_port())
        if args.free_ports
        else (AZURITE_PORT, EMULATOR_PORT, HOST_PORT)
    )
    container_name = values["WATCH_CONTAINER"]
    emulator_dir = state / "aci"
    emulator_dir.mkdir(exist_ok=True)
    (emulator_dir / "emulator.json").unlink(missing_ok=True)
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as stack:
        azurite = stack.enter_context(
            run_azurite(ports[0], location=state / "azurite", log_file=state / "azurite.log")
        )
        container = prepare_container(azurite.connection_string, container_name)
        log(f"Azurite on {azurite.blob_url}, container '{container_name}' ready")
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
                ],
                "aci-emulator",
                state,
            )
        )
        wait_for_file(emulator_dir / "emulator.json", emulator, 30)
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
        wait_for_port(ports[2], 30, host)
        log(
            f"Functions host on http://localhost:{ports[2]}/api/ (log: {state / 'functions-host.log'})"
        )
        if args.demo:
            return run_demo(container, values, args.timeout)
        key = values.get("LOCALDEV_FUNCTION_KEY", "<function key>")
        print(
            f"""
Model Launcher is running. Next:
  drop files:     .venv/bin/python scripts/drop.py path/to/folder   (or any Storage client on Azurite)
  watch progress: tail -f .localdev/functions-host.log
  list batches:   curl -s -H 'x-functions-key: {key}' http://localhost:{ports[2]}/api/ops/batches
  status page:    http://localhost:{ports[2]}/api/ops/status?code={key}
  run a poll:     curl -s -X POST -H 'x-functions-key: {key}' http://localhost:{ports[2]}/api/ops/poll
  run janitor:    curl -s -X POST -H 'x-functions-key: {key}' 'http://localhost:{ports[2]}/api/ops/janitor?dryRun=true'
Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        try:
            while not stop["now"]:
                for proc, name in ((emulator, "ACI emulator"), (host, "Functions host")):
                    if proc.poll() is not None:
                        log(f"{name} exited with {proc.returncode}; stopping")
                        return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        log("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
