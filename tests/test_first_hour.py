"""The first hour of a new user, driven through the real commands (subprocesses): a bad setting
stops `make run` with its message, the CLIs read local.settings.json, `make reset`, `drop.py`
with storage down, `cleanup batches`/`logs`/`retry`, and a failed batch naming its file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cleanup.sweep import sweep
from launcher.poll import poll
from localdev.azurite import Azurite, connection_string, free_port
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import all_names, settings_env

EXAMPLE = REPO_ROOT / "local.settings.example.json"
# What a user's shell has; none of the app's settings (the code is found by PYTHONPATH, so the
# tools can run from the folder that holds the test's local.settings.json).
BASE_ENV = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
BASE_ENV["PYTHONPATH"] = str(REPO_ROOT)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return run([sys.executable, "-m", module, *args], cwd, {**BASE_ENV, **(env or {})})


def test_make_run_with_a_bad_setting_exits_nonzero_with_the_message(tmp_path: Path) -> None:
    values = json.loads(EXAMPLE.read_text())
    del values["Values"]["ACI_IMAGE"]
    values["Values"]["POLL_SCHEDULE"] = "*/10 * * * *"  # five fields: crontab, not NCRONTAB
    bad = tmp_path / "bad.settings.json"
    bad.write_text(json.dumps(values))
    state = tmp_path / "state"
    args = f"--free-ports --settings {bad} --state-dir {state}"
    proc = run(
        ["make", "--no-print-directory", "run", f"RUN_ARGS={args}"], REPO_ROOT, {**os.environ}
    )
    assert proc.returncode != 0
    assert "ACI_IMAGE is required" in proc.stderr
    assert "POLL_SCHEDULE" in proc.stderr and "expected 6 fields" in proc.stderr
    assert "Model Launcher is running" not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (state / "azurite.log").exists()  # nothing was started


def test_clis_read_local_settings_and_the_environment_wins(
    tmp_path: Path, azurite: Azurite, container_name: str
) -> None:
    values = settings_env(azurite.connection_string, container_name, ARM_AUTH="identity")
    values.pop("ARM_ENDPOINT")
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": values}))
    ok = cli("launcher", "check-config", cwd=tmp_path)  # ./local.settings.json, found by itself
    assert ok.returncode == 0 and "configuration is valid" in ok.stdout, ok.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chosen = cli(
        "launcher",
        "check-config",
        "--settings",
        str(tmp_path / "local.settings.json"),
        cwd=elsewhere,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert cli("launcher", "check-config", cwd=elsewhere).returncode == 2  # no file, no settings
    env_wins = cli("launcher", "check-config", cwd=tmp_path, env={"WATCH_CONTAINER": "Bad_Name"})
    assert env_wins.returncode == 2 and "WATCH_CONTAINER='bad_name'" in env_wins.stderr
    missing = cli("cleanup", "batches", cwd=tmp_path)  # the container does not exist yet
    assert missing.returncode == 4 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_make_reset_clears_local_state_and_nothing_else(tmp_path: Path) -> None:
    state = tmp_path / "localdev"
    (state / "azurite").mkdir(parents=True)
    (state / "azurite" / "__blobstorage__").write_text("x")
    (state / "run.pid").write_text(str(os.getpid()))  # a live process: `make run` is up
    reset = ["make", "--no-print-directory", "reset", f"STATE_DIR={state}"]
    refused = run(reset, REPO_ROOT, {**os.environ})
    assert refused.returncode != 0 and "make run is up" in refused.stderr
    assert (state / "azurite" / "__blobstorage__").exists()
    (state / "run.pid").unlink()
    done = run(reset, REPO_ROOT, {**os.environ})
    assert done.returncode == 0, done.stderr
    assert not state.exists()
    assert (REPO_ROOT / "Makefile").exists() and (REPO_ROOT / ".venv").exists()


def test_drop_with_storage_down_says_to_check_make_run(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    env = {**BASE_ENV, "STORAGE_CONNECTION_STRING": connection_string(free_port())}
    proc = run(
        [sys.executable, str(REPO_ROOT / "scripts" / "drop.py"), str(tmp_path / "a.txt")],
        tmp_path,
        env,
        timeout=60,  # it used to retry for 88 s
    )
    assert proc.returncode == 4
    assert "is `make run` up?" in proc.stderr and "Traceback" not in proc.stderr


def sweep_until_failed(pipeline: Pipeline, clients: Any, batch: str) -> None:
    deadline = time.monotonic() + 90
    while not all_names(pipeline.container, f"failed/{batch}/_batch.json"):
        assert time.monotonic() < deadline, "batch did not fail"
        sweep(clients)
        time.sleep(0.3)


def test_a_failed_batch_names_its_file_and_the_cli_shows_logs_and_retries_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The sample worker reports the unreadable file in _error.json; the janitor puts it into
    the reason; `cleanup batches`, `cleanup logs` and `cleanup retry` show it as text."""
    settings = {"BATCH_MODE": "folder", "MAX_ATTEMPTS": "1"}
    pipeline.container.upload_blob("incoming/Übung/ok.txt", b"fine\n")
    pipeline.container.upload_blob("incoming/Übung/broken.csv", b"id\n\xff\xfe\n")
    clients = pipeline.clients(**settings)
    poll(clients)
    [batch] = {n.split("/")[1] for n in all_names(pipeline.container, "processing/")}
    sweep_until_failed(pipeline, clients, batch)
    report = json.loads(pipeline.container.download_blob(f"output/{batch}/_error.json").readall())
    assert report["exit_code"] == 2 and report["files"][0]["name"] == "Übung/broken.csv"

    env = pipeline.env(**settings)
    table = cli("cleanup", "batches", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.startswith(batch)]
    assert "Übung/" in row and "failed" in row and "Übung/broken.csv is unreadable" in row
    rows = json.loads(cli("cleanup", "batches", "--json", cwd=tmp_path, env=env).stdout)["batches"]
    assert "broken.csv" in rows[0]["reason"] and rows[0]["label"] == "Übung"

    logs = cli("cleanup", "logs", batch, cwd=tmp_path, env=env)
    assert logs.returncode == 0 and "FAILED" in logs.stdout, logs.stderr
    assert f"failed/{batch}/_logs/attempt-1.log" in logs.stderr
    none = cli("cleanup", "logs", batch, "--attempt", "3", cwd=tmp_path, env=env)
    assert none.returncode == 2 and "no attempt 3" in none.stderr

    first = cli("cleanup", "retry", batch, cwd=tmp_path, env=env)
    assert first.returncode == 0 and "2 input(s) put back" in first.stdout, first.stderr
    again = cli("cleanup", "retry", batch, "--json", cwd=tmp_path, env=env)
    assert json.loads(again.stdout)["restored"] == []
    manifest = json.loads(pipeline.container.download_blob(f"failed/{batch}/_batch.json").readall())
    assert manifest["retried"]["restored"] == ["incoming/Übung/broken.csv", "incoming/Übung/ok.txt"]

    poll(clients)  # the new batch, linked to the old one
    rows = json.loads(cli("cleanup", "batches", "--json", cwd=tmp_path, env=env).stdout)["batches"]
    [new] = [r for r in rows if r["batch"] != batch]
    assert new["retry_of"] == batch
    table = cli("cleanup", "batches", cwd=tmp_path, env=env).stdout
    assert f"retry of {batch}" in table and f"retried as {new['batch']}" in table


def test_two_ctrl_c_stop_make_run_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "localdev.run", "--free-ports"),
            *("--settings", str(EXAMPLE), "--state-dir", str(tmp_path)),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Press Ctrl-C" in line:
            break
    assert (tmp_path / "run.pid").read_text() == str(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode in (0, 130), rest
    assert "Traceback" not in "".join(seen) + rest
    assert "functions-host stopped" in rest and "aci-emulator stopped" in rest
    assert not (tmp_path / "run.pid").exists()
