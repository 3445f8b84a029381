"""One bad batch, a missing container or a file storage refuses to move never stops the
system nor loses anything: the bad batch is quarantined and reported by id, the operator gets
one line that says what to check, and a refusal is remembered instead of paid for each tick."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from cleanup.history import list_page
from cleanup.sweep import sweep
from launcher.poll import poll
from localdev.proxy import Proxy, Refusal
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import CountingPolicy, all_names, drop
from tests.test_janitor import QUICK, manifest_of, only_batch, sweep_until

SLOW_JOB = {
    "ACI_IMAGE": "python:3.11",
    "ACI_COMMAND": '["python", "-c", "import time; time.sleep(30)"]',
}


def _spoil(pipeline: Pipeline, batch: str, body: bytes, keep_metadata: bool = True) -> None:
    """Rewrite a manifest the way an operator's editor or another tool might."""
    blob = pipeline.container.get_blob_client(f"processing/{batch}/_batch.json")
    meta = blob.get_blob_properties().metadata if keep_metadata else {}
    blob.upload_blob(body, overwrite=True, metadata=meta)


def test_a_truncated_manifest_is_quarantined_and_new_files_still_flow(
    pipeline: Pipeline,
) -> None:
    drop(pipeline.container, ["incoming/first.txt"])
    pipeline.emulator.configure(quota=0)  # the first batch stays `claimed`
    poll(pipeline.clients(**QUICK))
    bad = only_batch(pipeline)
    assert manifest_of(pipeline, bad)[1]["state"] == "claimed"
    _spoil(pipeline, bad, b'{"batch_id": "' + bad.encode() + b'", "sta')
    pipeline.emulator.configure(quota=None)

    drop(pipeline.container, ["incoming/second.txt"])
    report = poll(pipeline.clients(**QUICK))
    assert [q["batch"] for q in report.quarantined] == [bad]
    assert "not valid JSON" in report.quarantined[0]["reason"]
    assert len(report.claimed) == 1 and report.claimed[0]["files"] == 1
    assert all_names(pipeline.container, "incoming/") == []
    swept = sweep(pipeline.clients(**QUICK))
    assert [q["batch"] for q in swept.quarantined] == [bad]
    # Its input is kept where it was, and the status API names it.
    assert f"processing/{bad}/first.txt" in all_names(pipeline.container, f"processing/{bad}/")
    rows = {r["batch"]: r for r in list_page(pipeline.clients(), None, 10).batches}
    assert rows[bad]["state"] == "quarantined"


def test_a_launched_batch_with_a_broken_manifest_keeps_its_group(pipeline: Pipeline) -> None:
    """Its group finished, but the outcome cannot be recorded: the sweep names the batch,
    records nothing, and neither deletes nor relaunches the group."""
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(**QUICK)
    poll(clients)
    batch = only_batch(pipeline)
    group = manifest_of(pipeline, batch)[1]["group"]
    _spoil(pipeline, batch, b'{"batch_id": "' + batch.encode() + b'", "state": "launched"}')
    reports = sweep_until(clients, lambda: True)
    while not reports[-1].quarantined:
        assert len(reports) < 100, reports[-1]
        time.sleep(0.2)
        reports.append(sweep(clients))
    report = reports[-1]
    assert [q["batch"] for q in report.quarantined] == [batch]
    assert "missing field" in report.quarantined[0]["reason"]
    assert report.left_alone == [group]
    assert report.deleted == [] and report.errors == []
    assert [g.name for g in pipeline.groups()] == [group]


def test_valid_json_of_another_shape_without_metadata_is_reported(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(**SLOW_JOB)
    poll(clients)
    batch = only_batch(pipeline)
    group = manifest_of(pipeline, batch)[1]["group"]
    _spoil(pipeline, batch, b'{"hello": "world"}', keep_metadata=False)
    report = sweep(clients)
    assert [q["batch"] for q in report.quarantined] == [batch]
    assert report.left_alone == [group]
    assert [g.name for g in pipeline.groups()] == [group]


def test_a_batch_folder_without_manifest_is_reported(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/a.txt"])
    pipeline.emulator.configure(quota=0)
    poll(pipeline.clients(**QUICK))
    batch = only_batch(pipeline)
    pipeline.container.delete_blob(f"processing/{batch}/_batch.json")
    pipeline.emulator.configure(quota=None)
    report = sweep(pipeline.clients(**QUICK))
    assert report.quarantined == [{"batch": batch, "reason": "no _batch.json: 1 blob(s) in folder"}]
    assert all_names(pipeline.container, f"processing/{batch}/") == [f"processing/{batch}/a.txt"]


@pytest.mark.parametrize("module,args", [("launcher", ["poll"]), ("cleanup", ["batches"])])
def test_a_missing_container_is_one_line_that_names_it(
    pipeline: Pipeline, module: str, args: list[str]
) -> None:
    env = pipeline.subprocess_env(WATCH_CONTAINER="no-such-container")
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'no-such-container'" in lines[0] and "WATCH_CONTAINER" in lines[0]


def test_storage_that_cannot_be_reached_is_one_line(pipeline: Pipeline) -> None:
    env = pipeline.subprocess_env(
        STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
        "KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "poll"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 4, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "cannot reach storage at http://127.0.0.1:9/devstoreaccount1" in done.stderr


def _refusing_proxy(pipeline: Pipeline) -> Proxy:
    proxy = Proxy(upstream=pipeline.azurite.blob_url.rsplit("/", 1)[0])
    proxy.set_refusals(
        [
            Refusal(kind="delete", path=r"/incoming/locked\.txt$"),
            Refusal(kind="batch", status=400, code="InvalidInput", message="refused"),
        ]
    )
    return proxy


def test_a_file_storage_refuses_to_delete_costs_no_copy_on_later_ticks(
    pipeline: Pipeline,
) -> None:
    drop(pipeline.container, ["incoming/locked.txt", "incoming/free.txt"])
    with _refusing_proxy(pipeline) as proxy:
        env = pipeline.env(**QUICK)
        conn = pipeline.azurite.connection_string.replace(
            pipeline.azurite.blob_url.rsplit("/", 1)[0], proxy.url
        )
        counting = CountingPolicy()
        clients = pipeline.clients(counting, STORAGE_CONNECTION_STRING=conn, **QUICK)
        assert env  # same settings as the pipeline's, through the proxy
        first = poll(clients)
        assert first.claimed and first.claimed[0]["files"] == 1
        assert "BlobImmutableDueToPolicy" in first.blocked["incoming/locked.txt"]
        assert all_names(pipeline.container, "incoming/") == ["incoming/locked.txt"]

        counting.reset()
        second = poll(clients)
        counts: dict[str, Any] = dict(counting.counts)
        assert second.idle and second.claimed == []
        assert "BlobImmutableDueToPolicy" in second.blocked["incoming/locked.txt"]
        assert counts.get("copy", 0) == 0 and counting.total == 2, counts  # list + refusals

        # A new version of the file is tried again.
        pipeline.container.upload_blob("incoming/locked.txt", b"v2", overwrite=True)
        counting.reset()
        third = poll(clients)
        assert counting.counts.get("copy", 0) == 1
        assert "incoming/locked.txt" in third.blocked
    assert all_names(pipeline.container, "incoming/") == ["incoming/locked.txt"]


def test_a_quarantined_batch_is_released_to_failed_and_retried(pipeline: Pipeline) -> None:
    from cleanup.admin import BadRequest, release_quarantined, retry_failed

    drop(pipeline.container, ["incoming/job/a.txt", "incoming/job/b.txt"])
    pipeline.emulator.configure(quota=0)  # stays `claimed`
    clients = pipeline.clients(**QUICK)
    poll(clients)
    batch = only_batch(pipeline)
    with pytest.raises(BadRequest, match="not quarantined"):
        release_quarantined(clients, batch)
    _spoil(pipeline, batch, b"{")
    released = release_quarantined(clients, batch)
    assert released["inputs"] == 2
    assert all_names(pipeline.container, "processing/") == []
    assert sorted(all_names(pipeline.container, f"failed/{batch}/")) == [
        f"failed/{batch}/_batch.broken.json",
        f"failed/{batch}/_batch.json",
        f"failed/{batch}/job/a.txt",
        f"failed/{batch}/job/b.txt",
    ]
    restored = retry_failed(clients, batch)["restored"]
    assert sorted(restored) == ["incoming/job/a.txt", "incoming/job/b.txt"]
