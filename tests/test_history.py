"""The batch history (cleanup/history.py): written when a batch finishes, read one page per
List Blobs call whatever its size, with a fallback and a backfill for older batches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cleanup import history
from cleanup.admin import retry_failed
from cleanup.sweep import Sweep, sweep
from launcher.batch import FileEntry, Manifest, State, iso, new_batch_id
from launcher.clients import Clients
from launcher.poll import poll
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import CountingPolicy, drop

START = datetime(2026, 1, 1, tzinfo=UTC)


def finished(
    clients: Clients, n: int, every_failed: int = 4, store: bool = False, start: int = 0
) -> list[str]:
    """`n` finished batches, one a minute (every `every_failed`-th failed), indexed; with
    `store`, their manifests are written to done/ or failed/ (and not indexed: older ones)."""
    s = clients.settings

    def one(i: int) -> str:
        failed = i % every_failed == 0
        m = Manifest(
            batch_id=new_batch_id(START + timedelta(minutes=i)),
            state=State.FAILED if failed else State.SUCCEEDED,
            created=iso(START + timedelta(minutes=i)) or "",
            updated="",
            files=[FileEntry(f"incoming/f{i}/a.txt", f"f{i}/a.txt", f"f{i}/a.txt", "e", 10)],
            folder=f"f{i}",
            reason="exit code 2 (Error)" if failed else None,
        )
        prefix = s.failed_prefix if failed else s.done_prefix
        if store:
            clients.store.put_final(m, prefix)
        else:
            history.record(clients, m, prefix)
        return m.batch_id

    ids = [r for r in clients.runner.map(one, range(start, start + n)) if isinstance(r, str)]
    assert len(ids) == n
    return ids


def read_all(clients: Clients, state: State | None, limit: int) -> list[dict]:
    rows, token, pages = [], None, 0
    while True:
        page = history.list_page(clients, state, limit, token)
        rows += page.batches
        pages += 1
        token = page.continuation_token
        if token is None:
            return rows
        assert pages < 100


def test_a_real_run_is_indexed_and_retry_updates_the_entry(pipeline: Pipeline) -> None:
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "raise SystemExit(2)"]',
        NO_RETRY_EXIT_CODES="2",
        BATCH_MODE="folder",
    )
    drop(pipeline.container, ["incoming/<b>job&'/x.txt", "incoming/<b>job&'/y.txt"])
    poll(clients)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sweep(clients)
        rows = history.list_page(clients, State.FAILED, 10).batches
        if rows:
            break
        time.sleep(0.5)
    (row,) = rows
    assert row["label"] == "<b>job&'" and row["files"] == 2 and row["bytes"] == 8
    assert row["state"] == "failed" and row["exit_code"] == 2 and row["attempt"] == 1
    assert row["folder"] == f"failed/{row['batch']}/" and row["finished_at"]
    assert [r["batch"] for r in history.list_page(clients, None, 10).batches] == [row["batch"]]
    assert history.list_page(clients, State.SUCCEEDED, 10).batches == []
    retry_failed(clients, row["batch"])
    (again,) = history.list_page(clients, State.FAILED, 10).batches
    assert again["retried_at"]


def rows_of(clients: Clients, batch_id: str) -> list[dict]:
    """The batch's row in the index of all states and in that of its state."""
    found = [history.list_page(clients, s, 10).batches for s in (None, State.FAILED)]
    return [r for rows in found for r in rows if r["batch"] == batch_id]


def test_a_stale_record_never_puts_an_older_summary_back(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    prefix = clients.settings.failed_prefix
    at = [iso(START + timedelta(minutes=i)) or "" for i in range(10)]
    finish = Manifest(
        batch_id=new_batch_id(START),
        state=State.FAILED,
        created=at[0],
        updated=at[1],
        files=[FileEntry("incoming/f/a.txt", "f/a.txt", "f/a.txt", "e", 10)],
        folder="f",
        reason="exit code 2 (Error)",
        finished_at=at[1],
    )
    history.record(clients, finish, prefix)
    # A retry in the same second as the finish is still the newer version.
    retried = replace(finish, retried={"first_at": at[1], "last_at": at[1]})
    history.record(clients, retried, prefix)
    assert [r["retried_at"] for r in rows_of(clients, finish.batch_id)] == [at[1], at[1]]
    again = replace(finish, updated=at[5], retried={"first_at": at[1], "last_at": at[5]})
    history.record(clients, again, prefix)
    # The janitor that finished the batch stalled and comes back now: its summary is older.
    history.record(clients, finish, prefix)
    history.record(clients, retried, prefix)
    assert [r["retried_at"] for r in rows_of(clients, finish.batch_id)] == [at[5], at[5]]
    latest = replace(again, updated=at[9], retried={"first_at": at[1], "last_at": at[9]})
    history.record(clients, latest, prefix)
    assert [r["retried_at"] for r in rows_of(clients, finish.batch_id)] == [at[9], at[9]]


def test_a_stalled_finish_after_a_retry_leaves_the_retried_entry(pipeline: Pipeline) -> None:
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "raise SystemExit(2)"]',
        NO_RETRY_EXIT_CODES="2",
    )
    drop(pipeline.container, ["incoming/stale.txt"])
    poll(clients)
    deadline = time.monotonic() + 120
    while not (rows := history.list_page(clients, State.FAILED, 10).batches):
        assert time.monotonic() < deadline, "the batch never failed"
        sweep(clients)
        time.sleep(0.5)
    batch_id = rows[0]["batch"]
    found = clients.store.read(batch_id, clients.settings.failed_prefix)
    assert found is not None
    # What a janitor that stalled in `finish` still holds: the `finishing` manifest it read.
    stale = replace(found[0], state=State.FINISHING, target="failed", retried=None)
    retry_failed(clients, batch_id)
    (retried,) = rows_of(clients, batch_id)[:1]
    assert retried["retried_at"]
    Sweep(clients, dry_run=False).finish(stale, found[1])  # it comes back and finishes again
    assert [r["retried_at"] for r in rows_of(clients, batch_id)] == [retried["retried_at"]] * 2
    final = clients.store.read(batch_id, clients.settings.failed_prefix)
    assert final is not None and final[0].retried


def test_pages_are_newest_first_complete_and_filtered(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    ids = finished(clients, 130)
    rows = read_all(clients, None, 50)
    assert [r["batch"] for r in rows] == sorted(ids, reverse=True)
    failed = read_all(clients, State.FAILED, 7)
    assert [r["batch"] for r in failed] == sorted(ids[::4], reverse=True)
    assert all(r["state"] == "failed" and r["reason"] for r in failed)


def test_active_batches_come_first_and_are_not_listed_twice(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    finished(clients, 5)
    drop(pipeline.container, ["incoming/new.txt"])
    poll(clients)  # launched on the ACI emulator, still active
    rows = history.list_page(clients, None, 3).batches
    assert rows[0]["state"] == "launched" and rows[0]["label"] == "new.txt"
    assert len(rows) == 3
    assert len({r["batch"] for r in history.list_page(clients, None, 10).batches}) == 6
    launched = history.list_page(clients, State.LAUNCHED, 3).batches
    assert [r["label"] for r in launched] == ["new.txt"]
    # A page smaller than the active batches: the finished ones follow on the next pages.
    first = history.list_page(clients, None, 1)
    assert [r["label"] for r in first.batches] == ["new.txt"] and first.continuation_token
    rest = history.list_page(clients, None, 10, first.continuation_token).batches
    assert len(rest) == 5 and all(r["state"] in ("succeeded", "failed") for r in rest)


def test_a_page_costs_the_same_at_any_history_size(pipeline: Pipeline) -> None:
    counter = CountingPolicy()
    clients = pipeline.clients(counter)
    costs = []
    for start, count in ((0, 60), (60, 540)):  # 60, then 600 finished batches
        finished(clients, count, start=start)
        for state in (None, State.FAILED):
            counter.reset()
            page = history.list_page(clients, state, 10)
            assert len(page.batches) == 10 and page.continuation_token
            costs.append((state, dict(counter.counts)))
    assert costs[0] == costs[2] and costs[1] == costs[3]
    assert costs[0][1] == {"list": 2}  # processing/ (active batches) and index/all/
    assert costs[1][1] == {"list": 1}


def test_older_batches_fall_back_until_backfilled(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    old = finished(clients, 12, store=True)  # finished before the index existed
    new = finished(clients, 3, start=100)
    rows = read_all(clients, None, 5)
    assert [r["batch"] for r in rows] == sorted(new, reverse=True) + sorted(old, reverse=True)
    failed = read_all(clients, State.FAILED, 2)
    assert [r["batch"] for r in failed] == [new[0], *sorted(old[::4], reverse=True)]
    out = subprocess.run(
        [sys.executable, "-m", "cleanup", "backfill-index"],
        cwd=REPO_ROOT,
        env=pipeline.subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"indexed": 12}
    names = sorted(b.name for b in pipeline.container.list_blobs(name_starts_with="index/"))
    assert "index/_backfilled" in names and len(names) == 2 * 15 + 1
    history.backfill(clients)  # idempotent
    assert sorted(b.name for b in pipeline.container.list_blobs(name_starts_with="index/")) == (
        names
    )
    counter = CountingPolicy()
    counted = pipeline.clients(counter)
    assert [r["batch"] for r in read_all(counted, None, 5)] == [r["batch"] for r in rows]
    assert "list" in counter.counts and counter.counts["list"] <= 3 + 1  # no done/ listing


def test_a_new_deployment_turns_the_fallback_off_on_its_first_read(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    finished(clients, 2)
    history.list_page(clients, None, 10)
    assert pipeline.container.get_blob_client("index/_backfilled").exists()


def test_cli_pages_with_a_continuation_token(pipeline: Pipeline) -> None:
    clients = pipeline.clients()
    ids = finished(clients, 4)

    def cli(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "cleanup", "batches", "--json", "--limit", "3", *args],
            cwd=REPO_ROOT,
            env=pipeline.subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    first = cli()
    second = cli("--continuation-token", first["continuationToken"])
    got = [r["batch"] for r in first["batches"] + second["batches"]]
    assert got == sorted(ids, reverse=True) and second["continuationToken"] is None
