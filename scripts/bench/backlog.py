"""Row 9: a tick's cost grows with what it claims, never with what waits: a big backlog,
no room, blocked files in front, and a backlog drained at the caps with nothing lost."""

from __future__ import annotations

import time
import uuid
from typing import Any

from azure.storage.blob import ContainerClient, StandardBlobTier

from .common import PEAK_RSS_TARGET_MB, Row
from .harness import Bench

# The caps, 2 batches of 100 a tick, whatever waits.
BACKLOG_CAPS = {
    "BATCH_MAX_FILES": "100",
    "MAX_BATCHES_PER_TICK": "2",
    "MAX_ACTIVE_GROUPS": "100",
    "MAX_CREATES_PER_5_MIN": "100",
    "LEASE_SECONDS": "15",
}
BACKLOG_PER_TICK = 200
BACKLOG_FIRST_PUT_S = 3.0
BACKLOG_REQUEST_EXCESS = 0.05  # storage requests beyond those of claiming the same files alone
BLOCKED_CAPS = {"BATCH_MAX_FILES": "500", "MAX_BATCHES_PER_TICK": "2"}


def run(bench: Bench) -> None:
    """A tick's cost grows with what it claims, never with what waits (launcher.poll)."""
    cfg = bench.cfg
    from launcher.poll import LIST_PAGE_SIZE

    big, mid = cfg.backlog_files, max(cfg.backlog_files // 10, BACKLOG_PER_TICK + 1)
    print(
        f"9. backlog: {BACKLOG_PER_TICK} claimed a tick (2 batches of 100) with "
        f"{BACKLOG_PER_TICK:,}, {mid:,} and {big:,} files waiting"
    )
    started = time.monotonic()
    bench.fresh_azurite()
    runs: dict[int, dict[str, Any]] = {}
    seeding = 0.0
    containers: dict[int, ContainerClient] = {}
    for count in (BACKLOG_PER_TICK, mid, big):
        container = containers[count] = bench.new_container("backlog")
        took = bench.upload(container, [f"incoming/drop/f{i:06d}.dat" for i in range(count)])
        seeding += took
        print(f"    [seeded {count:,} files in {took:.1f} s]", flush=True)
        runs[count] = bench.run_worker("poll", bench.env(container.container_name, BACKLOG_CAPS))
        assert runs[count]["files"] == BACKLOG_PER_TICK, runs[count]["report"]
    alone, small, large = runs[BACKLOG_PER_TICK], runs[mid], runs[big]
    bench.raw.update(backlog_alone=alone, backlog_small=small, backlog=large)
    peak, peak_small = large["peak_rss_kb"] / 1024, small["peak_rss_kb"] / 1024
    # Compared with the smaller backlog only when both fill the first page (tiny runs do not).
    paged = mid >= LIST_PAGE_SIZE
    ok = peak < PEAK_RSS_TARGET_MB and (not paged or peak <= peak_small * 1.05)
    versus = f" and <= the {mid:,}-file tick's + 5%" if paged else ""
    bench.add(Row("backlog_peak_rss_mb", "9", f"{big:,} files waiting, {BACKLOG_PER_TICK} claimed: peak memory (VmHWM) of the tick process ({mid:,} waiting: {peak_small:.1f} MB)", round(peak, 1), "MB", f"< {PEAK_RSS_TARGET_MB:g} MB{versus}", ok, False))  # fmt: skip
    first_put = large["marks"].get("arm:PUT", float("inf"))
    bench.add(Row("backlog_first_put_s", "9", f"{big:,} files waiting: tick start -> first group PUT accepted, at {cfg.delay_ms:g} ms/request", round(first_put, 3), "s", f"< {BACKLOG_FIRST_PUT_S:g} s", first_put < BACKLOG_FIRST_PUT_S, False))  # fmt: skip
    base = alone["counts"]["storage"]["total"]
    storage = large["counts"]["storage"]["total"]
    limit = base * (1 + BACKLOG_REQUEST_EXCESS)
    bench.add(Row("backlog_storage_requests", "9", f"{big:,} files waiting: the tick's storage requests (claiming the same {BACKLOG_PER_TICK} files with nothing else waiting: {base})", storage, "", f"<= {limit:.0f} (+{BACKLOG_REQUEST_EXCESS:.0%})", storage <= limit, True))  # fmt: skip
    lists = large["counts"]["storage"].get("list", 0)
    bench.add(Row("backlog_list_requests", "9", f"{big:,} files waiting: List Blobs requests of that tick (incoming/ stops after its batches, + processing/)", lists, "", "<= 2", lists <= 2, True))  # fmt: skip
    # Room 0: the two groups that tick launched fill MAX_ACTIVE_GROUPS=2.
    full = bench.run_worker(
        "poll",
        bench.env(containers[big].container_name, BACKLOG_CAPS | {"MAX_ACTIVE_GROUPS": "2"}),
    )
    bench.raw["backlog_room0"] = full
    assert full["report"]["room"] == 0, full["report"]
    lists = full["counts"]["storage"].get("list", 0)
    others = {k: v for k, v in full["counts"]["storage"].items() if k not in ("list", "total")}
    bench.add(Row("backlog_room0_list_requests", "9", f"Room 0, {big - BACKLOG_PER_TICK:,} files waiting: List Blobs requests (other storage: {others}; ARM: {full['counts']['arm']['total']})", lists, "", "<= 1", lists <= 1, True))  # fmt: skip
    blocked_in_front(bench)
    drain(bench)
    bench.add(Row("backlog_setup_s", "9", f"Row 9 wall time, including uploading its {big + mid + BACKLOG_PER_TICK + cfg.blocked_files + cfg.blocked_claimable + cfg.drain_files:,} files 48 at a time ({seeding:.0f} s for the first three drops)", round(time.monotonic() - started, 1), "s", "-", None, False))  # fmt: skip


def blocked_in_front(bench: Bench) -> None:
    cfg = bench.cfg
    n, free = cfg.blocked_files, cfg.blocked_claimable
    container = bench.new_container("blocked")
    # Archived files are what the listing itself shows as blocked (one request per upload).
    bench.upload(
        container,
        [f"incoming/a-archived/f{i:06d}.dat" for i in range(n)],
        standard_blob_tier=StandardBlobTier.ARCHIVE,
    )
    bench.upload(container, [f"incoming/b-free/f{i:06d}.dat" for i in range(free)])
    res = bench.run_worker("poll", bench.env(container.container_name, BLOCKED_CAPS))
    bench.raw["backlog_blocked"] = res
    left = sum(1 for _ in container.list_blobs(name_starts_with="incoming/"))
    report = res["report"]
    ok = res["files"] == free and left == n and report["blocked_total"] == n
    bench.add(Row("backlog_blocked_in_front", "9", f"{n:,} blocked (archived) files in front of {free:,} claimable ones: claimed in that tick ({res['counts']['storage'].get('list', 0)} List Blobs)", res["files"], "files", f"= {free:,}", ok, True))  # fmt: skip


def drain(bench: Bench) -> None:
    """Ticks until nothing is left: each claims what the caps allow, in name order, and
    every file ends in exactly one batch (audited as the reliability suite does)."""
    n = bench.cfg.drain_files
    container = bench.new_container("drain")
    contents = {f"incoming/drop/f{i:06d}.dat": f"{i}\n{uuid.uuid4()}\n".encode() for i in range(n)}
    bench.upload(container, list(contents), content=contents.__getitem__)
    expected = {name: _sha(data) for name, data in contents.items()}
    per_tick: list[int] = []
    env = bench.env(container.container_name, BACKLOG_CAPS)
    while len(per_tick) <= n // BACKLOG_PER_TICK + 1:
        res = bench.run_worker("poll", env)
        if res["report"]["idle"]:
            break
        per_tick.append(res["files"])
    bench.raw["backlog_drain"] = {"per_tick": per_tick}
    lost, duplicated = audit(container, expected)
    at_caps = all(c == BACKLOG_PER_TICK for c in per_tick[:-1]) and sum(per_tick) == n
    bench.add(Row("backlog_drain_ticks", "9", f"Draining {n:,} files: ticks, each claiming {BACKLOG_PER_TICK} (the caps) but the last", len(per_tick), "ticks", f"= {-(-n // BACKLOG_PER_TICK)}, {BACKLOG_PER_TICK} a tick", at_caps and len(per_tick) == -(-n // BACKLOG_PER_TICK), True))  # fmt: skip
    bench.add(Row("backlog_drain_lost_duplicated", "9", f"Draining {n:,} files: lost + claimed twice (name and content hash, every batch checked)", len(lost) + len(duplicated), "files", "= 0", not lost and not duplicated, True))  # fmt: skip


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def audit(container: ContainerClient, expected: dict[str, str]) -> tuple[list[str], list[str]]:
    """(lost, duplicated), decided as scripts/chaos does: a file is lost when no batch holds a
    copy of its content and it is not in incoming/ either; duplicated when more than one place
    (batches and incoming/) holds it."""
    from launcher.batch import MANIFEST_NAME, Manifest

    places: dict[str, int] = {}
    for blob in container.list_blobs(name_starts_with="processing/"):
        if not blob.name.endswith("/" + MANIFEST_NAME):
            continue
        manifest = Manifest.from_bytes(container.download_blob(blob.name).readall())
        folder = blob.name[: -len(MANIFEST_NAME)]
        for f in manifest.files:
            data = container.download_blob(folder + f.blob).readall()
            if expected.get(f.source) == _sha(data):
                places[f.source] = places.get(f.source, 0) + 1
    for blob in container.list_blobs(name_starts_with="incoming/"):
        if expected.get(blob.name) == _sha(container.download_blob(blob.name).readall()):
            places[blob.name] = places.get(blob.name, 0) + 1
    lost = [n for n in expected if places.get(n, 0) == 0]
    duplicated = [n for n in expected if places.get(n, 0) > 1]
    return lost, duplicated
