"""Nothing lost when a claimer stalls, clocks disagree or an operator errs (issue: fence every
write). Each test is one of the situations that lost files before the fence: a stalled claimer
whose held requests land after recovery took its batch over, a host clock ten minutes ahead,
and a retry over a file the user dropped again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import BlobLeaseClient

from cleanup.admin import retry_failed
from launcher.batch import FileEntry, Manifest, State, iso, new_batch_id, utcnow
from launcher.clock import ServerClock
from launcher.poll import poll
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import all_names, drop
from tests.test_janitor import QUICK, manifest_of, only_batch, sweep_until

SKEW_DIR = REPO_ROOT / "localdev" / "skew"


class StallPolicy(SansIOHTTPPolicy):
    """Holds the first request that `match`es until `release()`: a storage link that hangs
    for that request, which then lands late (nothing is dropped)."""

    def __init__(self, match: Any) -> None:
        self.match = match
        self.stalled = threading.Event()
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._used = False

    def on_request(self, request: PipelineRequest) -> None:
        with self._lock:
            if self._used or not self.match(request.http_request):
                return
            self._used = True
        self.stalled.set()
        self._go.wait(120)

    def release(self) -> None:
        self._go.set()


def test_a_stalled_claimer_never_undoes_the_recovery_that_replaced_it(pipeline: Pipeline) -> None:
    """Claimer A stalls with its source deletes in flight, longer than its lease and
    STUCK_CLAIM_SECONDS; B takes the lease, recovers A's claim and launches it; then A's
    deletes land (404: B made them). A must not drop its copies nor roll the batch back."""
    container = pipeline.container
    names = [f"incoming/f{i:02d}.txt" for i in range(30)]
    drop(container, names)
    stall = StallPolicy(lambda r: r.method == "POST" and "comp=batch" in r.url)
    a_clients = pipeline.clients(stall, **QUICK)
    a_report: dict[str, Any] = {}
    a = threading.Thread(target=lambda: a_report.update(poll(a_clients).to_dict()))
    a.start()
    assert stall.stalled.wait(60), "A never reached its deletes"
    batch = only_batch(pipeline)
    # A's lease runs out while it hangs (broken here rather than waited for).
    BlobLeaseClient(container.get_blob_client("locks/poll")).break_lease(0)
    b = poll(pipeline.clients(STUCK_CLAIM_SECONDS="0", **QUICK))
    assert b.recovered == [batch]
    assert [x["batch_id"] for x in b.launched if x["launched"]] == [batch]
    stall.release()
    a.join(120)
    assert not a.is_alive()
    assert a_report["lease_lost"] is True
    assert a_report["launched"] == []

    prefix, m = manifest_of(pipeline, batch)
    assert (prefix, m["state"]) == ("processing/", "launched")
    assert sorted(f["source"] for f in m["files"]) == names
    copies = all_names(container, f"processing/{batch}/")
    assert sorted(copies) == sorted(
        [f"processing/{batch}/_batch.json"]
        + [f"processing/{batch}/{n[len('incoming/') :]}" for n in names]
    )
    assert all_names(container, "incoming/") == []
    assert [g.name for g in pipeline.groups()] == [m["group"]]


def _skewed_poll(pipeline: Pipeline, skew: int, **overrides: str) -> dict[str, Any]:
    """`python -m launcher poll` on a host whose clock is `skew` seconds off."""
    env = pipeline.subprocess_env(**overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(SKEW_DIR), str(REPO_ROOT)])
    env["ML_CLOCK_SKEW_SECONDS"] = str(skew)
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "poll"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_clock_ahead_does_not_claim_a_folder_still_being_uploaded(pipeline: Pipeline) -> None:
    drop(pipeline.container, ["incoming/job/part-1.csv"])
    report = _skewed_poll(pipeline, 600, BATCH_MODE="folder", BATCH_SETTLE_SECONDS="30")
    assert report["claimed"] == [] and report["unsettled"] == 1
    assert report["waiting_folders"] == ["job"]
    assert all_names(pipeline.container, "processing/") == []


def test_a_clock_ahead_does_not_recover_a_live_claim(pipeline: Pipeline) -> None:
    """A claim written a moment ago is live; a poller whose clock runs 10 minutes ahead must
    not take it for one abandoned STUCK_CLAIM_SECONDS (300 s) ago."""
    container = pipeline.container
    drop(container, ["incoming/a.txt", "incoming/b.txt"])
    files = []
    for name in ("incoming/a.txt", "incoming/b.txt"):
        props = container.get_blob_client(name).get_blob_properties()
        files.append(FileEntry(name, name[9:], name[9:], str(props.etag), props.size))
    now = iso(utcnow()) or ""
    live = new_batch_id()
    pipeline.clients().store.create(
        Manifest(batch_id=live, state=State.CLAIMING, created=now, updated=now, files=files)
    )
    report = _skewed_poll(pipeline, 600, STUCK_CLAIM_SECONDS="300", **QUICK)
    assert report["recovered"] == []
    assert report["held_for_recovery"] == 2
    assert manifest_of(pipeline, live)[1]["state"] == "claiming"


def test_a_clock_ahead_still_gives_containers_a_valid_sas(pipeline: Pipeline) -> None:
    """The SAS handed to the container is dated by storage's clock: the sample worker reads
    its inputs with it and succeeds, although the launching host's clock is 10 minutes ahead."""
    drop(pipeline.container, ["incoming/data/a.json"], b'{"x": 1}')
    report = _skewed_poll(pipeline, 600)
    assert len(report["launched"]) == 1, report
    batch = only_batch(pipeline)
    sweep_until(
        pipeline.clients(), lambda: manifest_of(pipeline, batch)[0] != "processing/", timeout=90
    )
    prefix, m = manifest_of(pipeline, batch)
    assert prefix == "done/", m["attempts"]
    assert len(m["attempts"]) == 1


def test_the_server_clock_follows_storage_not_the_host() -> None:
    clock = ServerClock()
    clock.observe(server_time=1_000_000.0, local_time=1_000_600.0)  # host 10 minutes ahead
    assert abs(clock.offset + 600) < 1e-6
    assert abs(clock.timestamp() - (time.time() - 600)) < 5


def test_retry_never_overwrites_a_file_the_user_dropped_again(pipeline: Pipeline) -> None:
    container = pipeline.container
    drop(container, ["incoming/data/x.csv", "incoming/data/y.csv"], b"old")
    clients = pipeline.clients(
        ACI_IMAGE="python:3.11",
        ACI_COMMAND='["python", "-c", "raise SystemExit(5)"]',
        MAX_ATTEMPTS="1",
    )
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "failed/")
    container.upload_blob("incoming/data/x.csv", b"corrected")  # the user's fix

    result = retry_failed(clients, batch)
    assert result["restored"] == ["incoming/data/y.csv"]
    assert [k["file"] for k in result["kept"]] == ["incoming/data/x.csv"]
    assert container.download_blob("incoming/data/x.csv").readall() == b"corrected"
    assert container.download_blob("incoming/data/y.csv").readall() == b"old"
    # The old input was not lost either: it waits in the failed folder.
    assert container.download_blob(f"failed/{batch}/data/x.csv").readall() == b"old"
    assert manifest_of(pipeline, batch)[1]["retried"]["kept"] == ["incoming/data/x.csv"]
