"""Scenario security: ops keys, dry runs, secrets in logs and ARM, names from user input."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import config
from localdev.azurite import ACCOUNT_KEY, free_port
from localdev.azurite import wait_for_port as _wait_for_port
from localdev.proxy import Proxy

from .checks import Checker, add_verdict, drop_files
from .core import ARM_WRITES, REPO_ROOT, STORAGE_WRITES, TAG_ENV, Mode, log
from .drive import drive
from .properties import property_checks
from .report import CheckResult, Report, Row
from .stack import Arena, Stack, is_setting, sum_kinds


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
    values = {k: v for k, v in env.items() if is_setting(k)}
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
    host_env = {k: v for k, v in os.environ.items() if not is_setting(k)}
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
