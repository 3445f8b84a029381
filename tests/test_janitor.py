"""The janitor against Azurite and the ACI emulator: every outcome, dry runs, concurrency."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.mgmt.containerinstance.models import (
    Container,
    ContainerGroup,
    ResourceRequests,
    ResourceRequirements,
)

from cleanup.sweep import SweepReport, sweep
from launcher.clients import Clients
from launcher.poll import poll
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import all_names, drop

EXIT_BY_ATTEMPT = (
    '["python", "-c", "import os, sys; print(\'attempt\', os.environ[\'ML_ATTEMPT\']); '
    "sys.exit(int(os.environ['FAIL_UNTIL']) >= int(os.environ['ML_ATTEMPT']))\"]"
)
QUICK = {"ACI_IMAGE": "python:3.11", "ACI_COMMAND": '["python", "-c", "print(42)"]'}


def read_json(p: Pipeline, name: str) -> dict[str, Any]:
    return json.loads(p.container.download_blob(name).readall())


def manifest_of(p: Pipeline, batch: str) -> tuple[str, dict[str, Any]]:
    for prefix in ("processing/", "done/", "failed/"):
        names = all_names(p.container, f"{prefix}{batch}/_batch.json")
        if names:
            return prefix, read_json(p, names[0])
    raise AssertionError(f"no manifest for {batch}")


def sweep_until(
    clients: Clients, done: Callable[[], bool], timeout: float = 60
) -> list[SweepReport]:
    reports = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports.append(sweep(clients))
        if done():
            return reports
        time.sleep(0.3)
    raise TimeoutError(f"condition not reached; last report {reports[-1] if reports else None}")


def wait_provisioned(p: Pipeline, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while p.get_group(name).provisioning_state in ("Pending", "Creating"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still provisioning")
        time.sleep(0.2)


def only_batch(p: Pipeline) -> str:
    ids = {n.split("/")[1] for n in all_names(p.container) if n.endswith("/_batch.json")}
    assert len(ids) == 1, ids
    return ids.pop()


def test_success_moves_batch_to_done_keeps_logs_and_deletes_group(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/job/a.txt", "incoming/job/b.csv"], b"id,x\n1,2\n")
    clients = pipeline.clients(BATCH_MODE="folder")  # the real sample worker image
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    _prefix, m = manifest_of(pipeline, batch)
    assert m["state"] == "succeeded" and m["attempt"] == 1
    attempt = m["attempts"][0]
    assert attempt["exit_code"] == 0 and attempt["outcome"] == "succeeded"
    assert (
        attempt["started_at"] and attempt["finished_at"] and attempt["duration_seconds"] is not None
    )
    names = all_names(pipeline.container, f"done/{batch}/")
    assert f"done/{batch}/job/a.txt" in names and f"done/{batch}/job/b.csv" in names
    logs = pipeline.container.download_blob(f"done/{batch}/_logs/attempt-1.log").readall().decode()
    assert batch in logs  # the worker's own log lines, saved before the group was deleted
    assert all_names(pipeline.container, f"processing/{batch}/") == []
    assert pipeline.groups() == []
    assert all_names(pipeline.container, f"output/{batch}/_summary.json")


def test_nonzero_exit_is_relaunched_then_succeeds(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND=EXIT_BY_ATTEMPT,
        ACI_ENV_FAIL_UNTIL="1",
        MAX_ATTEMPTS="3",
    )
    poll(clients)
    batch = only_batch(pipeline)
    reports = sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    assert any(batch in r.relaunched for r in reports)
    _, m = manifest_of(pipeline, batch)
    assert m["state"] == "succeeded" and m["attempt"] == 2
    assert [(a["attempt"], a["exit_code"], a["outcome"]) for a in m["attempts"]] == [
        (1, 1, "failed"),
        (2, 0, "succeeded"),
    ]
    logs = all_names(pipeline.container, f"done/{batch}/_logs/")
    assert logs == [f"done/{batch}/_logs/attempt-1.log", f"done/{batch}/_logs/attempt-2.log"]
    assert pipeline.groups() == []


def test_exhausted_attempts_go_to_failed_with_a_reason(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND=EXIT_BY_ATTEMPT,
        ACI_ENV_FAIL_UNTIL="99",
        MAX_ATTEMPTS="2",
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/")
    _, m = manifest_of(pipeline, batch)
    assert m["state"] == "failed" and m["attempt"] == 2
    assert "exit code 1" in m["reason"] and "attempt 2/2" in m["reason"]
    assert all_names(pipeline.container, f"failed/{batch}/a.txt")
    assert pipeline.groups() == []


def test_timeout_stops_the_group_and_counts_as_a_failed_attempt(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "import time; print(1, flush=True); time.sleep(600)"]',
        JOB_TIMEOUT_MINUTES="0.05",
        MAX_ATTEMPTS="1",
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/", timeout=40)
    _, m = manifest_of(pipeline, batch)
    assert m["attempts"][0]["outcome"] == "timeout"
    assert "longer than 0.05 minutes" in m["reason"]
    assert pipeline.groups() == []
    procs = [
        g for g in pipeline.emulator.groups() if g.get("resource_group") == pipeline.resource_group
    ]
    assert procs == []


def test_failed_provisioning_is_a_failed_attempt(pipeline: Pipeline) -> None:
    # ACI retries a failing pull until its provisioning timeout (30 min) before provisioning
    # turns Failed; 3 s here.
    pipeline.emulator.configure(provision_timeout_seconds=3)
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(ACI_IMAGE="registry.invalid/nope:1", MAX_ATTEMPTS="1")
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/")
    _, m = manifest_of(pipeline, batch)
    assert m["attempts"][0]["outcome"] == "provisioning-failed"
    assert m["reason"] and "pull" in m["reason"].lower()


def test_vanished_group_is_relaunched(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(**QUICK, MAX_ATTEMPTS="3", VANISH_GRACE_SECONDS="0")
    poll(clients)
    batch = only_batch(pipeline)
    [group] = pipeline.groups()
    wait_provisioned(pipeline, str(group.name))  # ACI refuses to delete a group being created
    pipeline.arm().container_groups.begin_delete(pipeline.resource_group, group.name).result()
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    _, m = manifest_of(pipeline, batch)
    assert [a["outcome"] for a in m["attempts"]] == ["vanished", "succeeded"]


def test_orphan_group_is_deleted_after_grace(pipeline: Pipeline) -> None:
    clients = pipeline.clients(ORPHAN_GRACE_MINUTES="0")
    group = ContainerGroup(
        location="local",
        os_type="Linux",
        restart_policy="Never",
        containers=[
            Container(
                name="worker",
                image="python:3.11",
                command=["python", "-c", "pass"],
                resources=ResourceRequirements(requests=ResourceRequests(cpu=1, memory_in_gb=1)),
            )
        ],
        tags={
            "managed-by": "model-launcher",
            "ml-source": f"devstoreaccount1/{pipeline.container.container_name}",
            "ml-batch": "20200101-000000-zzzzzz",
            "ml-attempt": "1",
            "ml-created": "0",
        },
    )
    clients.hook.create("ml-20200101-000000-zzzzzz-a1", group)
    foreign = ContainerGroup(**{**group.__dict__})  # not ours: another deployment's group
    foreign.tags = {**group.tags, "ml-source": "otheraccount/other"}
    clients.hook.create("ml-someone-else-a1", foreign)
    report = sweep(clients)
    assert report.orphans == ["ml-20200101-000000-zzzzzz-a1"]
    assert [g.name for g in pipeline.groups()] == ["ml-someone-else-a1"]


def snapshot(p: Pipeline) -> tuple[dict[str, str], dict[str, str]]:
    blobs = {b.name: str(b.etag) for b in p.container.list_blobs()}
    groups = {str(g.name): str(g.tags) for g in p.groups()}
    return blobs, groups


def test_dry_run_changes_nothing(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt", "incoming/b.txt"])
    clients = pipeline.clients(**QUICK, BATCH_MAX_FILES="1")
    poll(clients)
    time.sleep(2)  # both groups have terminated
    before = snapshot(pipeline)
    report = sweep(clients, dry_run=True)
    assert report.dry_run and len(report.actions) >= 4, report.actions
    assert snapshot(pipeline) == before
    assert sweep(clients).finished  # the real sweep then does what was reported


def test_concurrent_sweeps_never_double_finish(pipeline: Pipeline) -> None:
    drop(pipeline.container, [f"incoming/f{i}.txt" for i in range(4)])
    env = pipeline.subprocess_env(**QUICK, BATCH_MAX_FILES="1", ACI_ENV_FAIL_UNTIL="1")
    env["ACI_COMMAND"] = EXIT_BY_ATTEMPT
    clients = pipeline.clients(
        **{**QUICK, "ACI_COMMAND": EXIT_BY_ATTEMPT}, BATCH_MAX_FILES="1", ACI_ENV_FAIL_UNTIL="1"
    )
    poll(clients)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "cleanup", "sweep"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        codes = [p.wait(60) for p in procs]
        assert set(codes) <= {0, 1, 3}, codes
        if (
            len(all_names(pipeline.container, "done/")) >= 12
        ):  # 4 batches x (file + manifest + 2 logs)
            break
        time.sleep(0.5)
    done = [n for n in all_names(pipeline.container, "done/") if n.endswith("_batch.json")]
    assert len(done) == 4
    for name in done:
        m = read_json(pipeline, name)
        assert [a["attempt"] for a in m["attempts"]] == [1, 2]  # exactly one relaunch each
    assert pipeline.groups() == []


def test_idle_sweep_is_one_arm_list(pipeline: Pipeline) -> None:
    from tests.helpers import CountingPolicy

    storage = CountingPolicy()
    arm = CountingPolicy()
    clients = pipeline.clients(storage, arm_policies=(arm,))
    report = sweep(clients)
    assert report.idle and report.stall is not None and not report.stall["stalled"]
    # processing/ for the sweep, incoming/ for the stall alarm (cleanup/alarm.py)
    assert storage.counts == {"list": 2} and arm.total == 1


def test_stall_alarm_logs_an_error_naming_how_many_and_how_old(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    drop(pipeline.container, ["incoming/late-1.txt", "incoming/late-2.txt"])
    # Settled and claimable, but nobody polls: with a threshold of 0.1 minutes, wait 6 s.
    clients = pipeline.clients(STALL_ALARM_MINUTES="0.1")
    quiet = sweep(clients)
    assert quiet.stall is not None and not quiet.stall["stalled"]
    deadline = time.monotonic() + 60
    report = quiet
    while time.monotonic() < deadline:
        with caplog.at_level(logging.ERROR, logger="cleanup.alarm"):
            report = sweep(clients)
        if report.stall and report.stall["stalled"]:
            break
        time.sleep(0.5)
    assert report.stall is not None and report.stall["stalled"] and report.stall["files"] == 2
    assert report.stall["oldest_seconds"] > 6
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("stall alarm: 2 claimable file(s)" in e for e in errors), errors
    # Claimed, the files no longer count.
    poll(clients)
    after = sweep(clients).stall
    assert after is not None and not after["stalled"] and after["files"] == 0
    assert after["waiting_files"] == 0 and report.stall["waiting_files"] == 2


def test_no_retry_exit_codes_fail_at_once(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "raise SystemExit(2)"]',
        MAX_ATTEMPTS="3",
        NO_RETRY_EXIT_CODES="1,2",
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/")
    _, m = manifest_of(pipeline, batch)
    assert m["attempt"] == 1 and "NO_RETRY_EXIT_CODES" in m["reason"]


def test_claimed_batches_are_handed_back_to_launch_by_the_sweep(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    pipeline.emulator.configure(quota=0)
    clients = pipeline.clients(**QUICK)
    poll(clients)  # claimed, launch refused: ContainerGroupQuotaReached recorded
    batch = only_batch(pipeline)
    assert manifest_of(pipeline, batch)[1]["state"] == "claimed"
    pipeline.emulator.configure(quota=None)
    report = sweep(clients)  # incoming is empty, so no poll tick would ever pick it up
    assert report.handed_back == [batch]
    assert manifest_of(pipeline, batch)[1]["state"] == "launched"
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")


def test_retry_puts_a_failed_batch_back_into_incoming(pipeline: Pipeline) -> None:
    from cleanup.admin import retry_failed

    drop(pipeline.container, ["incoming/job/a.txt", "incoming/job/b.txt"])
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "raise SystemExit(5)"]',
        MAX_ATTEMPTS="1",
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/")
    restored = retry_failed(clients, batch)["restored"]
    assert sorted(restored) == ["incoming/job/a.txt", "incoming/job/b.txt"]
    assert all_names(pipeline.container, "incoming/") == sorted(restored)
    assert all_names(pipeline.container, f"failed/{batch}/job/") == []
    _, m = manifest_of(pipeline, batch)
    assert m["retried"]["restored"] == sorted(restored)
    again = retry_failed(clients, batch)  # idempotent: nothing more, recorded once
    assert again["restored"] == [] and again["restored_earlier"] == 2
    assert manifest_of(pipeline, batch)[1]["retried"] == m["retried"]
    poll(clients)
    assert len({n.split("/")[1] for n in all_names(pipeline.container, "processing/")}) == 1


def test_a_vanished_group_waits_out_its_grace_and_says_until_when(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(**QUICK, VANISH_GRACE_SECONDS="3600")
    poll(clients)
    batch = only_batch(pipeline)
    [group] = pipeline.groups()
    wait_provisioned(pipeline, str(group.name))  # ACI refuses to delete a group being created
    pipeline.arm().container_groups.begin_delete(pipeline.resource_group, group.name).result()
    report = sweep(clients)
    [waiting] = report.waiting
    assert waiting["batch"] == batch and waiting["group"] == group.name
    assert waiting["until"] > manifest_of(pipeline, batch)[1]["launched_at"]
    _, m = manifest_of(pipeline, batch)
    assert m["state"] == "launched" and m["attempts"][-1]["outcome"] is None


def test_a_saved_log_says_when_aci_kept_only_its_tail(pipeline: Pipeline) -> None:
    """ACI keeps only the last 16 KB / 1,000 lines of a stopped container's log; the janitor
    reads it after the stop, so the saved log says its beginning is probably missing."""
    drop(pipeline.container, ["incoming/a.txt"])
    chatty = '["python", "-c", "[print(f\\"line {i:05d} \\" + 40 * \\"x\\") for i in range(3000)]"]'
    clients = pipeline.clients(ACI_IMAGE="python:3.11", ACI_COMMAND=chatty)
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    log = pipeline.container.download_blob(f"done/{batch}/_logs/attempt-1.log").readall().decode()
    first, rest = log.split("\n", 1)
    assert first.startswith("[model-launcher] ACI keeps only the last 16 KB / 1,000 lines")
    assert "line 00000" not in rest and "line 02999" in rest
    short = pipeline.clients(**QUICK)
    drop(pipeline.container, ["incoming/b.txt"])
    poll(short)
    ids = {n.split("/")[1] for n in all_names(pipeline.container) if n.endswith("/_batch.json")}
    [other] = ids - {batch}
    sweep_until(short, lambda: manifest_of(pipeline, other)[0] == "done/")
    saved = pipeline.container.download_blob(f"done/{other}/_logs/attempt-1.log").readall()
    assert not saved.startswith(b"[model-launcher]")
