"""The README's quickstart, run as written: `make demo` and `make run` (on free ports)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "local.settings.example.json"


def test_make_demo_exits_0_with_its_table(tmp_path: Path) -> None:
    args = f"--free-ports --settings {EXAMPLE} --state-dir {tmp_path} --timeout 200"
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"RUN_ARGS={args}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "demo outcome as expected" in out
    table = [line for line in out.splitlines() if line.startswith("2")]
    assert sorted(line.split()[1:3] for line in table) == [
        ["also-good", "succeeded"],
        ["bad", "failed"],
        ["good", "succeeded"],
    ]
    # The failed batch names its file (the worker's _error.json, read by the janitor).
    assert "input bad/broken.csv is unreadable" in next(line for line in table if " bad " in line)


def test_make_run_serves_the_pipeline_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    args = f"--free-ports --settings {EXAMPLE} --state-dir {tmp_path}"
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"RUN_ARGS={args}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Model Launcher is running" in text, text
        host = (
            next(line for line in lines if "Functions host on" in line)
            .split("http://")[1]
            .split("/")[0]
        )
        conn = (
            next(line for line in lines if "Azurite on" in line)
            .split("Azurite on ")[1]
            .split(",")[0]
        )
        port = conn.split(":")[2].split("/")[0]
        # Drop a folder with the provided script, as the printed instructions say.
        folder = tmp_path / "job"
        folder.mkdir()
        (folder / "hello.txt").write_text("hello\nworld\n")
        env = {
            **os.environ,
            "STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        }
        subprocess.run(
            [sys.executable, "scripts/drop.py", str(folder)],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        headers = {"x-functions-key": "local-function-key"}
        assert requests.get(f"http://{host}/api/ops/batches", timeout=30).status_code == 401
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:
            requests.post(f"http://{host}/api/ops/poll", headers=headers, timeout=60)
            requests.post(f"http://{host}/api/ops/janitor", headers=headers, timeout=60)
            body = requests.get(
                f"http://{host}/api/ops/batches", headers=headers, timeout=30
            ).json()
            state = body["batches"][0]["state"] if body["batches"] else None
            if state == "succeeded":
                break
            time.sleep(1)
        assert state == "succeeded"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        rest = proc.communicate(timeout=60)[0]
    # make itself dies of the SIGINT (as it does at a terminal); what matters is that the
    # pipeline shut down: every component said so and nothing listens any more.
    assert proc.returncode in (0, -signal.SIGINT, 130, 2), rest[-3000:]
    assert "stopping" in rest
    assert "functions-host stopped" in rest and "aci-emulator stopped" in rest
    with contextlib.suppress(requests.ConnectionError):
        requests.get(f"http://{host}/", timeout=5)
        raise AssertionError("the Functions host still answers after Ctrl-C")
