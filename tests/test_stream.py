"""A tick reads incoming/ no further than the batches it may claim (issue: scale with the
backlog). Pages are lowered to 10 entries, so a few dozen files span several pages; every
count is of real HTTP requests against Azurite and the ACI emulator."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from azure.storage.blob import BlobLeaseClient, ContainerClient

from cleanup.status import now_snapshot
from launcher import poll as poll_module
from launcher.batch import FileEntry, Manifest, State, iso, new_batch_id, utcnow
from launcher.poll import poll
from localdev.azurite import Azurite
from tests.conftest import Pipeline
from tests.helpers import CountingPolicy, all_names, drop, make_settings
from tests.test_claim import batch_contents

PAGE = 10


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(poll_module, "LIST_PAGE_SIZE", PAGE)
    yield


def content(container: ContainerClient, names: list[str]) -> None:
    for n in names:
        container.upload_blob(n, f"content of {n}".encode())


def claimed_sources(container: ContainerClient) -> list[str]:
    return sorted(batch_contents(container))


def test_an_idle_tick_is_one_request_while_what_waits_fits_the_first_page(
    azurite: Azurite, container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.clients import build_clients

    monkeypatch.setattr(poll_module, "FIRST_PAGE_SIZE", 5)
    counter = CountingPolicy()
    settings = make_settings(
        azurite.connection_string, container.container_name, BATCH_SETTLE_SECONDS="3600"
    )
    clients = build_clients(settings, storage_policies=[counter])
    drop(container, [f"incoming/f{i:02d}" for i in range(5)])
    report = poll(clients)
    assert report.idle and report.unsettled == 5 and report.listing_complete
    assert counter.counts == Counter({"list": 1})
    # More waiting: every page is read (something claimable may sit behind), a first one of 5
    # names and then pages of 10, still without the lease or any other request.
    drop(container, [f"incoming/g{i:02d}" for i in range(25)])
    counter.reset()
    report = poll(clients)
    assert report.idle and report.unsettled == 30 and report.list_pages == 4
    assert counter.counts == Counter({"list": 4})


def test_a_tick_stops_listing_once_it_has_its_batches(pipeline: Pipeline) -> None:
    """100 files waiting, room for 2 batches of 5: the tick claims the first 10 names and
    reads one page of 10 entries, not ten pages."""
    container = pipeline.container
    names = [f"incoming/f{i:03d}" for i in range(100)]
    content(container, names)
    counter = CountingPolicy()
    clients = pipeline.clients(counter, BATCH_MAX_FILES="5", MAX_BATCHES_PER_TICK="2")
    report = poll(clients)
    assert [c["files"] for c in report.claimed] == [5, 5]
    assert counter.counts["list"] == 2  # incoming/ (one page) and processing/
    assert report.list_pages == 1 and report.listed == PAGE and not report.listing_complete
    assert claimed_sources(container) == names[:10]
    assert all_names(container, "incoming/") == names[10:]


def test_what_cannot_be_claimed_in_front_does_not_starve_what_can(pipeline: Pipeline) -> None:
    """In front, in name order: files leased by somebody else, files an unfinished claim
    holds, and (below) files still settling, each more than a page; behind them the claimable
    ones, which this tick claims."""
    container = pipeline.container
    leased = [f"incoming/a-leased{i:02d}" for i in range(15)]
    held = [f"incoming/b-held{i:02d}" for i in range(15)]
    free = [f"incoming/c-free{i:02d}" for i in range(7)]
    content(container, leased + held + free)
    for n in leased:
        BlobLeaseClient(container.get_blob_client(n)).acquire(-1)
    # A claim that crashed just now lists the `held` files: they wait for its recovery.
    files = []
    for n in held:
        props = container.get_blob_client(n).get_blob_properties()
        files.append(FileEntry(n, n[9:], n[9:], str(props.etag), props.size))
    now = iso(utcnow()) or ""
    clients = pipeline.clients(STUCK_CLAIM_SECONDS="300", MAX_BATCHES_PER_TICK="1")
    crashed = new_batch_id()
    clients.store.create(
        Manifest(batch_id=crashed, state=State.CLAIMING, created=now, updated=now, files=files)
    )
    report = poll(clients)
    assert [c["files"] for c in report.claimed] == [len(free)]
    assert report.blocked_total == len(leased) and report.held_for_recovery == len(held)
    assert report.listing_complete and report.list_pages == 4
    assert all_names(container, "incoming/") == leased + held
    # The status page works the held files out the same way (poll.held_by_open_claims): one
    # List Blobs of processing/, one read of the open claim, one List Blobs of incoming/.
    counter = CountingPolicy()
    snap = now_snapshot(pipeline.clients(counter, STUCK_CLAIM_SECONDS="300"))
    assert snap["incoming"]["held_for_recovery"] == len(held)
    assert snap["incoming"]["claimable"] == 0 and snap["incoming"]["blocked_total"] == len(leased)
    assert counter.total == 3, counter.counts


def test_settling_files_in_front_do_not_starve_settled_ones_behind(pipeline: Pipeline) -> None:
    container = pipeline.container
    settled = [f"incoming/z{i:02d}" for i in range(5)]
    content(container, settled)
    clients = pipeline.clients(BATCH_SETTLE_SECONDS="3")
    uploaded = container.get_blob_client(settled[-1]).get_blob_properties().last_modified
    deadline = time.monotonic() + 30
    while (clients.clock.now() - uploaded).total_seconds() < 4:  # storage's clock, not ours
        assert time.monotonic() < deadline
        container.get_container_properties()
        time.sleep(0.2)
    fresh = [f"incoming/a{i:02d}" for i in range(25)]
    drop(container, fresh)
    report = poll(clients)
    assert report.unsettled == len(fresh)
    assert [c["files"] for c in report.claimed] == [len(settled)]
    assert all_names(container, "incoming/") == fresh


def test_folders_span_pages_exceed_the_caps_and_wait_without_memory(pipeline: Pipeline) -> None:
    """Folder mode, pages of 10, BATCH_MAX_FILES 5: a marker-less folder of 25 files in front
    costs one HEAD (its marker is absent) and is dropped from memory; a ready folder of 25
    files whose marker sorts after them costs one HEAD (present) and is claimed whole, caps
    or not; a small ready folder behind it is claimed too."""
    container = pipeline.container
    waiting = [f"incoming/a-wait/F{i:02d}" for i in range(25)]
    big = [f"incoming/big/F{i:02d}" for i in range(25)] + ["incoming/big/_READY"]
    small = ["incoming/small/_READY", "incoming/small/x.txt"]
    content(container, waiting + big + small)
    counter = CountingPolicy()
    clients = pipeline.clients(
        counter, BATCH_MODE="folder", BATCH_READY_MARKER="_READY", BATCH_MAX_FILES="5"
    )
    report = poll(clients)
    assert sorted(c["files"] for c in report.claimed) == [2, 26]
    assert report.waiting_folders == ["a-wait"] and report.waiting_folders_total == 1
    assert counter.counts["head"] == 2
    assert all_names(container, "incoming/") == waiting
    assert claimed_sources(container) == sorted(big + small)


def test_room_zero_costs_one_page_the_lease_and_one_arm_list(pipeline: Pipeline) -> None:
    container = pipeline.container
    content(container, ["incoming/first.txt"])
    caps = {"MAX_ACTIVE_GROUPS": "1"}
    first = poll(pipeline.clients(**caps))
    assert [x["launched"] for x in first.launched] == [True]  # its group now holds the room
    content(container, [f"incoming/f{i:03d}" for i in range(60)])
    storage, arm = CountingPolicy(), CountingPolicy()
    report = poll(pipeline.clients(storage, arm_policies=(arm,), **caps))
    assert report.room == 0 and report.claimed == [] and not report.idle
    assert storage.counts["list"] == 1 and report.list_pages == 1
    assert arm.counts == Counter({"get": 1})
    # The rest: the refusals read, the lease (its blob created once) and its release.
    assert storage.total <= 6, storage.counts


def test_a_backlog_drains_in_name_order_at_the_caps_rate(pipeline: Pipeline) -> None:
    """Four ticks of 2 batches of 5 drain 40 files in name order, 10 a tick, each file in
    exactly one batch, whatever arrives meanwhile behind them."""
    container = pipeline.container
    names = [f"incoming/f{i:03d}" for i in range(40)]
    content(container, names)
    clients = pipeline.clients(BATCH_MAX_FILES="5", MAX_BATCHES_PER_TICK="2")
    for tick in range(4):
        report = poll(clients)
        assert sum(c["files"] for c in report.claimed) == 10
        assert claimed_sources(container) == names[: 10 * (tick + 1)]
        if tick == 1:
            late = ["incoming/a-late"]  # sorts first: drained next
            content(container, late)
            names = sorted(names + late)
    report = poll(clients)
    assert sum(c["files"] for c in report.claimed) == 1
    owners = batch_contents(container)
    assert sorted(owners) == names and all(len(b) == 1 for b in owners.values())
    assert all_names(container, "incoming/") == []
