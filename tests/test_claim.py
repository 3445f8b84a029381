"""The claim path against a real Azurite: exactly-one-batch, idle cost, races with users, names."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import BlobLeaseClient, ContainerClient

from launcher.batch import MANIFEST_NAME, FileEntry, Manifest, State, iso, new_batch_id, utcnow
from launcher.blobs import LeaseLock
from launcher.claim import Plan, claim, plan_batches, resolve_claiming, scan
from launcher.clients import Clients, build_clients
from launcher.poll import poll
from localdev.azurite import Azurite
from tests.conftest import Pipeline
from tests.helpers import CountingPolicy, SideEffectPolicy, all_names, drop, make_settings


def clients_for(
    azurite: Azurite, container: ContainerClient, *policies: object, **overrides: str
) -> Clients:
    settings = make_settings(azurite.connection_string, container.container_name, **overrides)
    return build_clients(settings, storage_policies=list(policies))


def claim_all(clients: Clients) -> list[Manifest]:
    listing = list(clients.container.list_blobs(name_starts_with="incoming/", include=["metadata"]))
    found = scan(clients.settings, listing, utcnow())
    lease = LeaseLock(clients.container, clients.settings.poll_lock_blob, 15)
    assert lease.try_acquire()
    out = []
    with lease:
        for plan in plan_batches(clients.settings, found.claimable, 100):
            result = claim(clients, plan, lease)
            if result.manifest:
                out.append(result.manifest)
    return out


def batch_contents(container: ContainerClient) -> dict[str, list[str]]:
    """source name -> every batch id whose claimed manifest lists it."""
    seen: dict[str, list[str]] = {}
    for blob in container.list_blobs(name_starts_with="processing/"):
        if blob.name.endswith("/" + MANIFEST_NAME):
            m = Manifest.from_bytes(container.download_blob(blob.name).readall())
            for f in m.files:
                seen.setdefault(f.source, []).append(m.batch_id)
                data = container.download_blob(f"processing/{m.batch_id}/{f.blob}").readall()
                assert data == f"content of {f.source}".encode()
    return seen


def test_every_file_lands_in_exactly_one_batch(
    azurite: Azurite, container: ContainerClient
) -> None:
    names = [f"incoming/f{i:02d}.txt" for i in range(15)] + [
        f"incoming/dir/g{i}.csv" for i in range(10)
    ]
    for n in names:
        container.upload_blob(n, f"content of {n}".encode())
    clients = clients_for(azurite, container, BATCH_MAX_FILES="10")
    manifests = claim_all(clients)
    assert [len(m.files) for m in manifests] == [10, 10, 5]
    assert all(m.state is State.CLAIMED for m in manifests)
    seen = batch_contents(container)
    assert sorted(seen) == sorted(names)
    assert all(len(batches) == 1 for batches in seen.values())
    assert all_names(container, "incoming/") == []
    # Manifests record size and etag of what was claimed.
    entry = manifests[0].files[0]
    assert entry.size == len(f"content of {entry.source}") and entry.etag


@pytest.mark.parametrize("trouble", ["snapshots", "leased", "archived", "leased-after-listing"])
def test_a_file_storage_will_not_move_never_blocks_its_batch(
    azurite: Azurite, container: ContainerClient, trouble: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file with snapshots is claimed (they go with it); one that storage will not copy or
    delete (archive tier, somebody else's lease) stays in incoming/, and the rest of its batch
    is claimed instead of the batch waiting in `claiming` forever. Visible in the listing, such
    a file is not even tried; leased after the listing, the refusal leaves it in place too,
    with a log line naming it."""
    drop(container, ["incoming/a.txt", "incoming/b.txt"], b"v1")
    blob = container.get_blob_client("incoming/b.txt")
    policies: list[object] = []
    if trouble == "snapshots":
        blob.create_snapshot()
        blob.upload_blob(b"v2", overwrite=True)
    elif trouble == "leased":
        BlobLeaseClient(blob).acquire(-1)
    elif trouble == "archived":
        blob.set_standard_blob_tier("Archive")
    else:
        policies.append(
            SideEffectPolicy(
                lambda r: "x-ms-copy-source" in r.headers, lambda: BlobLeaseClient(blob).acquire(-1)
            )
        )
    clients = clients_for(azurite, container, *policies)
    listing = list(container.list_blobs(name_starts_with="incoming/", include=["metadata"]))
    blocked = scan(clients.settings, listing, utcnow()).blocked
    [manifest] = claim_all(clients)
    assert manifest.state is State.CLAIMED
    if trouble == "snapshots":
        assert blocked == {}
        assert sorted(f.source for f in manifest.files) == ["incoming/a.txt", "incoming/b.txt"]
        assert container.download_blob(f"processing/{manifest.batch_id}/b.txt").readall() == b"v2"
        assert all_names(container, "incoming/") == []
        return
    assert [f.source for f in manifest.files] == ["incoming/a.txt"]
    assert all_names(container, "incoming/") == ["incoming/b.txt"]
    assert sorted(all_names(container, "processing/")) == [
        f"processing/{manifest.batch_id}/{MANIFEST_NAME}",
        f"processing/{manifest.batch_id}/a.txt",
    ]
    if trouble == "leased-after-listing":
        assert blocked == {}
        assert "'incoming/b.txt' cannot be claimed: storage refused" in caplog.text
    else:
        reason = "archive tier" if trouble == "archived" else "leased by somebody else"
        assert blocked == {"incoming/b.txt": reason}


def test_a_file_that_cannot_move_keeps_the_tick_idle(
    azurite: Azurite, container: ContainerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A leased file alone in incoming/ is reported and named, and the tick stays one request:
    no lease, no manifest, no attempt that storage would refuse anyway."""
    drop(container, ["incoming/locked.txt"])
    BlobLeaseClient(container.get_blob_client("incoming/locked.txt")).acquire(-1)
    counter = CountingPolicy()
    report = poll(clients_for(azurite, container, counter))
    assert report.idle and counter.counts == Counter({"list": 1})
    assert report.blocked == {"incoming/locked.txt": "leased by somebody else"}
    assert "'incoming/locked.txt' (leased by somebody else)" in caplog.text
    assert all_names(container, "incoming/") == ["incoming/locked.txt"]


def test_a_delete_whose_answer_was_lost_still_makes_the_file_ours(
    azurite: Azurite, container: ContainerClient
) -> None:
    """The conditional delete was applied but its response lost: the retry finds the blob gone
    (Azurite answers 412 to If-Match on a missing blob, not 404). The file is ours: it must be
    claimed, not dropped along with its only copy."""
    from localdev.proxy import Proxy

    drop(container, ["incoming/a.txt"], b"v1")
    with Proxy(f"http://127.0.0.1:{azurite.port}") as proxy:
        proxy.add_trigger("batch", 1, lambda: None, when="after", then="drop")
        settings = make_settings(proxy.blob_connection_string(), container.container_name)
        [manifest] = claim_all(build_clients(settings))
    assert [f.source for f in manifest.files] == ["incoming/a.txt"]
    assert container.download_blob(f"processing/{manifest.batch_id}/a.txt").readall() == b"v1"
    assert all_names(container, "incoming/") == []


def test_idle_tick_makes_exactly_one_storage_request(
    azurite: Azurite, container: ContainerClient
) -> None:
    counter = CountingPolicy()
    clients = clients_for(azurite, container, counter, BATCH_SETTLE_SECONDS="3600")
    report = poll(clients)
    assert report.idle and counter.counts == Counter({"list": 1})
    # Folder markers and files still inside the settle window keep a tick idle too.
    container.upload_blob("incoming/folder/", b"")
    container.upload_blob("incoming/fresh.txt", b"x")
    counter.reset()
    report = poll(clients)
    assert report.idle and report.unsettled == 1 and report.folder_markers == 1
    assert counter.counts == Counter({"list": 1})
    assert all_names(container) == ["incoming/folder/", "incoming/fresh.txt"]


def test_file_overwritten_between_copy_and_delete_stays_in_incoming(
    azurite: Azurite, container: ContainerClient
) -> None:
    drop(container, ["incoming/a.txt", "incoming/b.txt"], b"v1")
    other = container  # a separate client would do the same: Azurite sees a second writer

    def overwrite() -> None:
        other.upload_blob("incoming/a.txt", b"v2-new", overwrite=True)

    # Right before the Blob Batch request that carries the conditional deletes.
    policy = SideEffectPolicy(lambda r: r.method == "POST" and "comp=batch" in r.url, overwrite)
    clients = clients_for(azurite, container, policy)
    [manifest] = claim_all(clients)
    assert policy.fired
    assert [f.source for f in manifest.files] == ["incoming/b.txt"]
    assert container.download_blob("incoming/a.txt").readall() == b"v2-new"
    # The stale copy was removed: nothing in the batch that the manifest does not list.
    assert all_names(container, f"processing/{manifest.batch_id}/") == [
        f"processing/{manifest.batch_id}/{MANIFEST_NAME}",
        f"processing/{manifest.batch_id}/b.txt",
    ]
    # The next claim takes the new version.
    [second] = claim_all(clients_for(azurite, container))
    assert container.download_blob(f"processing/{second.batch_id}/a.txt").readall() == b"v2-new"


def test_file_overwritten_before_copy_is_left_for_next_tick(
    azurite: Azurite, container: ContainerClient
) -> None:
    drop(container, ["incoming/a.txt"], b"v1")
    policy = SideEffectPolicy(
        lambda r: "x-ms-copy-source" in r.headers,
        lambda: container.upload_blob("incoming/a.txt", b"v2", overwrite=True),
    )
    assert claim_all(clients_for(azurite, container, policy)) == []
    assert policy.fired
    assert container.download_blob("incoming/a.txt").readall() == b"v2"
    assert all_names(container, "processing/") == []  # empty batch rolled back


def test_a_file_name_cannot_forge_log_lines(
    azurite: Azurite, container: ContainerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A name with a line break is logged escaped, on one line: it cannot start a fake one."""
    name = "incoming/a\nWARNING launcher.poll: forged.txt"
    drop(container, [name], b"v1")
    policy = SideEffectPolicy(
        lambda r: "x-ms-copy-source" in r.headers,
        lambda: container.upload_blob(name, b"v2", overwrite=True),
    )
    caplog.set_level("INFO", logger="launcher")
    assert claim_all(clients_for(azurite, container, policy)) == []
    assert policy.fired
    assert "changed during claim" in caplog.text
    assert not any(
        line.startswith("WARNING launcher.poll: forged") for line in caplog.text.splitlines()
    )
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_file_deleted_by_user_mid_claim_does_not_break_the_tick(
    azurite: Azurite, container: ContainerClient
) -> None:
    drop(container, ["incoming/a.txt", "incoming/b.txt", "incoming/c.txt"])
    policy = SideEffectPolicy(
        lambda r: "x-ms-copy-source" in r.headers, lambda: container.delete_blob("incoming/b.txt")
    )
    manifests = claim_all(clients_for(azurite, container, policy, IO_CONCURRENCY="1"))
    assert policy.fired
    claimed = sorted(f.source for m in manifests for f in m.files)
    assert "incoming/b.txt" not in claimed and len(claimed) == 2
    assert all_names(container, "incoming/") == []


AWKWARD = [
    "incoming/with space.txt",
    "incoming/unicodé/日本語 ファイル.txt",
    "incoming/hash#tag.txt",
    "incoming/per%20cent%.txt",
    "incoming/question?mark.txt",
    "incoming/plus+sign.txt",
    "incoming/.hidden",
    "incoming/trailing.dot.",
    "incoming/dir//double-slash.txt",
    "incoming/_batch.json",
    "incoming/_logs/attempt-1.log",
    "incoming/emoji-🚀.txt",
    "incoming/zero-bytes.bin",
    "incoming/" + "L" * (1024 - len("incoming/")),
    "incoming/deep/" + "/".join(["d"] * 200) + "/leaf.txt",
]


def test_awkward_names_are_claimed_and_stay_inside_the_batch(
    azurite: Azurite, container: ContainerClient
) -> None:
    for name in AWKWARD:
        data = b"" if "zero" in name else f"content of {name}".encode()
        container.upload_blob(name, data)
    container.upload_blob("incoming/marker-dir/", b"")  # a folder marker: skipped, kept
    before = set(all_names(container))
    clients = clients_for(azurite, container, BATCH_MAX_FILES="100")
    [manifest] = claim_all(clients)
    assert sorted(f.source for f in manifest.files) == sorted(AWKWARD)
    after = set(all_names(container))
    written = after - before
    assert all(
        n.startswith(f"processing/{manifest.batch_id}/") or n.startswith("locks/") for n in written
    )
    assert all(len(n) <= 1024 for n in after)
    for f in manifest.files:
        data = container.download_blob(f"processing/{manifest.batch_id}/{f.blob}").readall()
        assert data == (b"" if "zero" in f.source else f"content of {f.source}".encode())
        assert f.name == f.source[len("incoming/") :]
    renamed = {f.source for f in manifest.files if f.blob.startswith("_renamed/")}
    assert {
        "incoming/_batch.json",
        "incoming/_logs/attempt-1.log",
        "incoming/trailing.dot.",
        "incoming/dir//double-slash.txt",
        AWKWARD[13],
    } <= renamed
    assert all_names(container, "incoming/") == ["incoming/marker-dir/"]


def test_poll_lease_held_elsewhere_means_no_writes(
    azurite: Azurite, container: ContainerClient
) -> None:
    drop(container, ["incoming/a.txt"])
    clients = clients_for(azurite, container)
    container.upload_blob("locks/poll", b"")
    holder = BlobLeaseClient(container.get_blob_client("locks/poll"))
    holder.acquire(lease_duration=15)
    report = poll(clients)
    assert report.lease_busy and not report.claimed
    assert all_names(container) == ["incoming/a.txt", "locks/poll"]
    holder.release()


def test_lost_lease_stops_claiming_more(azurite: Azurite, container: ContainerClient) -> None:
    drop(container, [f"incoming/f{i}.txt" for i in range(6)])

    def steal() -> None:
        BlobLeaseClient(container.get_blob_client("locks/poll")).break_lease(0)
        time.sleep(6)  # longer than the renew interval (LEASE_SECONDS/3 = 5 s)

    policy = SideEffectPolicy(lambda r: "x-ms-copy-source" in r.headers, steal)
    clients = clients_for(azurite, container, policy, BATCH_MAX_FILES="2", IO_CONCURRENCY="1")
    manifests = claim_all(clients)
    assert policy.fired
    assert len(manifests) == 1  # the batch in flight is finished, no further batch is claimed
    claimed = [f.source for m in manifests for f in m.files]
    remaining = all_names(container, "incoming/")
    assert sorted(claimed + remaining) == [f"incoming/f{i}.txt" for i in range(6)]


@pytest.mark.parametrize(
    "stage",
    ["nothing", "copied", "copied-and-deleted", "dropped-again", "overwritten", "user-deleted"],
)
def test_recovery_of_a_crashed_claim(
    azurite: Azurite, container: ContainerClient, stage: str
) -> None:
    """A tick crashed in the middle of a claim; recovery leaves every file in exactly one place."""
    clients = clients_for(azurite, container)
    drop(container, ["incoming/a.txt", "incoming/b.txt"], b"v1")
    batch = new_batch_id()
    files = []
    for name in ("incoming/a.txt", "incoming/b.txt"):
        props = container.get_blob_client(name).get_blob_properties()
        files.append(FileEntry(name, name[9:], name[9:], str(props.etag), props.size))
    now = iso(utcnow() - timedelta(minutes=10)) or ""
    m = Manifest(batch_id=batch, state=State.CLAIMING, created=now, updated=now, files=files)
    clients.store.create(m)
    a = container.get_blob_client("incoming/a.txt")
    if stage in ("copied", "copied-and-deleted", "dropped-again", "overwritten"):
        container.get_blob_client(f"processing/{batch}/a.txt").start_copy_from_url(a.url)
    if stage in ("copied-and-deleted", "dropped-again"):
        a.delete_blob()
    if stage in ("dropped-again", "overwritten"):
        # The user dropped the name again after the crashed delete, or replaced it before that
        # delete: recovery cannot tell which, so it keeps the copy of v1 (never loses it) and
        # v2 waits in incoming/ for the next tick.
        a.upload_blob(b"v2", overwrite=True)
    if stage == "user-deleted":
        a.delete_blob()
    found = resolve_claiming(clients, batch)
    assert found is not None
    manifest = found[0]
    assert manifest.state is State.CLAIMED
    in_batch = sorted(f.source for f in manifest.files)
    in_incoming = all_names(container, "incoming/")
    expected_batch = {
        "nothing": ["incoming/a.txt", "incoming/b.txt"],
        "copied": ["incoming/a.txt", "incoming/b.txt"],
        "copied-and-deleted": ["incoming/a.txt", "incoming/b.txt"],
        "dropped-again": ["incoming/a.txt", "incoming/b.txt"],
        "overwritten": ["incoming/a.txt", "incoming/b.txt"],
        "user-deleted": ["incoming/b.txt"],
    }[stage]
    assert in_batch == expected_batch
    assert in_incoming == (["incoming/a.txt"] if stage in ("dropped-again", "overwritten") else [])
    if stage in ("dropped-again", "overwritten"):
        assert container.download_blob(f"processing/{batch}/a.txt").readall() == b"v1"
        assert container.download_blob("incoming/a.txt").readall() == b"v2"
    listed = sorted(all_names(container, f"processing/{batch}/"))
    assert listed == sorted(
        [f"processing/{batch}/{MANIFEST_NAME}"]
        + [f"processing/{batch}/{s[9:]}" for s in expected_batch]
    )


def test_scan_and_plan_in_folder_mode(azurite: Azurite, container: ContainerClient) -> None:
    settings = make_settings(
        azurite.connection_string,
        container.container_name,
        BATCH_MODE="folder",
        BATCH_READY_MARKER="_READY",
        BATCH_SETTLE_SECONDS="60",
    )
    drop(
        container,
        [
            "incoming/ready/a.txt",
            "incoming/ready/b.txt",
            "incoming/ready/_READY",
            "incoming/nomarker/a.txt",
            "incoming/loose.txt",
        ],
    )
    listing = list(container.list_blobs(name_starts_with="incoming/", include=["metadata"]))
    later = utcnow() + timedelta(seconds=120)
    found = scan(settings, listing, later)
    plans = plan_batches(settings, found.claimable, 10)
    assert sorted((p.folder, len(p.files)) for p in plans if p.folder) == [("ready", 3)]
    assert [p.files[0].name for p in plans if p.folder is None] == ["incoming/loose.txt"]
    assert found.waiting_folders == ["nomarker"]
    # A folder with one unsettled file waits whole.
    now_scan = scan(settings, listing, utcnow())
    assert now_scan.claimable == [] and sorted(now_scan.waiting_folders) == ["nomarker", "ready"]


def test_plan_caps_by_files_and_bytes(azurite: Azurite, container: ContainerClient) -> None:
    settings = make_settings(
        azurite.connection_string,
        container.container_name,
        BATCH_MAX_FILES="3",
        BATCH_MAX_BYTES="100",
    )
    drop(container, [f"incoming/s{i}" for i in range(5)], b"x" * 10)
    drop(container, ["incoming/big"], b"x" * 500)
    listing = list(container.list_blobs(name_starts_with="incoming/"))
    found = scan(settings, listing, utcnow() + timedelta(seconds=1))
    plans = plan_batches(settings, found.claimable, 10)
    assert [len(p.files) for p in plans] == [1, 3, 2]  # "big" travels alone
    assert len(plan_batches(settings, found.claimable, 2)) == 2
    assert plan_batches(settings, found.claimable, 0) == []
    assert isinstance(plans[0], Plan)


def test_source_deletes_travel_in_blob_batch_requests(
    azurite: Azurite, container: ContainerClient
) -> None:
    """300 files: 300 copies, and their conditional deletes in Blob Batch requests of 64 (four
    sent while copies still run, the last 44 at the end), not 300 Delete Blob requests."""
    names = [f"incoming/f{i:03d}.txt" for i in range(300)]
    drop(container, names)
    counter = CountingPolicy()
    clients = clients_for(azurite, container, counter, BATCH_MAX_FILES="1000")
    [manifest] = claim_all(clients)
    assert sorted(f.source for f in manifest.files) == names
    assert all_names(container, "incoming/") == []
    assert counter.counts["copy"] == 300
    assert counter.counts["post:batch"] == 5
    assert counter.counts["delete"] == 0


def test_an_account_that_refuses_blob_batch_gets_single_deletes(
    azurite: Azurite, container: ContainerClient
) -> None:
    """Where the account refuses Blob Batch requests as a whole (the service applies none of
    their deletes), the claim falls back to one conditional delete per file and still claims
    everything. The refusal is real: Azurite rejects a batch whose signature no longer matches
    (this test's policy changes a signed header after signing)."""
    from launcher import blobs

    class SpoilBatchSignature(SansIOHTTPPolicy):
        def on_request(self, request: PipelineRequest) -> None:
            http = request.http_request
            if http.method == "POST" and "comp=batch" in http.url:
                http.headers["x-ms-version"] = "2019-02-02"

    names = [f"incoming/f{i}.txt" for i in range(5)]
    drop(container, names)
    counter = CountingPolicy()
    clients = clients_for(azurite, container, SpoilBatchSignature(), counter)
    try:
        [manifest] = claim_all(clients)
        assert sorted(f.source for f in manifest.files) == names
        assert all_names(container, "incoming/") == []
        assert counter.counts["post:batch"] == 1 and counter.counts["delete"] == 5
        # Remembered: the next claim does not try a batch first.
        drop(container, ["incoming/again.txt"])
        counter.reset()
        [second] = claim_all(clients)
        assert [f.source for f in second.files] == ["incoming/again.txt"]
        assert counter.counts["post:batch"] == 0 and counter.counts["delete"] == 1
    finally:
        blobs._no_batch.discard(container.url)


def test_files_of_an_unfinished_claim_wait_for_its_recovery(pipeline: Pipeline) -> None:
    """A tick crashed after copying a file but before deleting its source, and the next tick
    runs well within STUCK_CLAIM_SECONDS: it must leave that file alone (else recovery, which
    finds the source gone and its copy complete, would keep the file in a second batch)."""
    container = pipeline.container
    for name in ("incoming/a.txt", "incoming/b.txt", "incoming/c.txt"):
        drop(container, [name], f"content of {name}".encode())
    crashed = new_batch_id()
    files = []
    for name in ("incoming/a.txt", "incoming/b.txt"):
        props = container.get_blob_client(name).get_blob_properties()
        files.append(FileEntry(name, name[9:], name[9:], str(props.etag), props.size))
    now = iso(utcnow()) or ""
    clients = pipeline.clients(STUCK_CLAIM_SECONDS="300", BATCH_SETTLE_SECONDS="0")
    clients.store.create(
        Manifest(batch_id=crashed, state=State.CLAIMING, created=now, updated=now, files=files)
    )
    a = container.get_blob_client("incoming/a.txt")
    container.get_blob_client(f"processing/{crashed}/a.txt").start_copy_from_url(a.url)

    report = poll(clients)
    assert [c["files"] for c in report.claimed] == [1]  # c.txt only
    assert all_names(container, "incoming/") == ["incoming/a.txt", "incoming/b.txt"]

    # Once the claim counts as abandoned, recovery finishes it and every file has one batch.
    poll(pipeline.clients(STUCK_CLAIM_SECONDS="0", BATCH_SETTLE_SECONDS="0"))
    owners = batch_contents(container)
    assert sorted(owners) == ["incoming/a.txt", "incoming/b.txt", "incoming/c.txt"]
    assert owners["incoming/a.txt"] == [crashed] and owners["incoming/b.txt"] == [crashed]
    assert all_names(container, "incoming/") == []


def test_a_claim_that_cannot_prove_its_lease_touches_no_file(
    azurite: Azurite, container: ContainerClient
) -> None:
    """The lease is broken just as the manifest is written: a new holder may have listed
    processing/ before that manifest existed, so the claim must not copy or delete anything."""
    drop(container, ["incoming/a.txt", "incoming/b.txt"])

    def steal() -> None:
        BlobLeaseClient(container.get_blob_client("locks/poll")).break_lease(0)

    policy = SideEffectPolicy(
        lambda r: r.method == "PUT" and r.url.split("?")[0].endswith("/" + MANIFEST_NAME), steal
    )
    manifests = claim_all(clients_for(azurite, container, policy))
    assert policy.fired
    assert manifests == []
    assert all_names(container, "processing/") == []  # manifest rolled back, no copy made
    assert all_names(container, "incoming/") == ["incoming/a.txt", "incoming/b.txt"]
