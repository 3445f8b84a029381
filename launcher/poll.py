"""One poll tick: list incoming/, and only if something can be claimed, take the poll lease,
recover what earlier ticks left behind, claim new batches and launch them.

Cost: an idle tick (nothing claimable) is exactly one List Blobs request: no lease, no writes, no
ARM call. Recovery of batches left `claiming`/`claimed` therefore happens on the next busy tick or
when the janitor hands them back (`recover`), which the janitor does on every sweep that sees one.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from azure.storage.blob import BlobProperties

from launcher import telemetry
from launcher.aci import GroupInfo
from launcher.batch import (
    BatchRef,
    Manifest,
    ManifestConflict,
    ManifestUnreadable,
    Quarantined,
    State,
)
from launcher.blobs import LeaseLock
from launcher.claim import Plan, Scan, claim, plan_batches, resolve_claiming, scan
from launcher.clients import Clients
from launcher.launch import SPEC_FRESH_SECONDS, LaunchResult, launch_batch
from launcher.refusals import REFUSALS_BLOB, Refusals

logger = logging.getLogger(__name__)

CREATE_WINDOW_SECONDS = 300
# Batches of one tick claimed at once. Their files share the IO_CONCURRENCY pool first come,
# first served, so the first batch still finishes first; the others' manifest writes and
# launches overlap its copies instead of waiting behind them.
BATCH_CONCURRENCY = 4


@dataclass
class TickReport:
    """What a tick saw and did; returned by the CLI, the admin endpoint and the timer log."""

    idle: bool = False
    lease_busy: bool = False
    lease_lost: bool = False
    listed: int = 0
    claimable: int = 0
    unsettled: int = 0
    folder_markers: int = 0
    waiting_folders: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)
    held_for_recovery: int = 0  # claimable files listed by an unfinished claim: they wait for it
    active_groups: int | None = None
    room: int | None = None
    claimed: list[dict[str, Any]] = field(default_factory=list)
    launched: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def quarantine(self, q: Quarantined) -> None:
        """Record (and log, at error level) a batch no loop may act on."""
        if any(x["batch"] == q.batch_id for x in self.quarantined):
            return
        self.quarantined.append(q.to_dict())
        log_quarantined(q)


def log_quarantined(q: Quarantined) -> None:
    logger.error(
        "batch %s quarantined: %s; its files are kept and every loop skips it "
        "(repair or release it: docs/operations.md, 'Quarantined batches')",
        q.batch_id,
        q.reason,
    )


def room_for_launches(clients: Clients, groups: list[GroupInfo]) -> int:
    """How many groups this tick may create: MAX_ACTIVE_GROUPS minus our groups that exist
    (finished ones still hold quota until the janitor deletes them), within ACI's create rate
    (MAX_CREATES_PER_5_MIN, counted from our groups' creation tags) and MAX_BATCHES_PER_TICK."""
    s = clients.settings
    # Creation tags carry the launch's manifest time, which may precede the PUT by up to
    # SPEC_FRESH_SECONDS: the window is widened by that much, so the budget is never overrun.
    since = clients.clock.timestamp() - CREATE_WINDOW_SECONDS - SPEC_FRESH_SECONDS
    recent = sum(1 for g in groups if g.created and g.created >= since)
    return max(
        0,
        min(
            s.max_active_groups - len(groups),
            s.max_creates_per_5_min - recent,
            s.max_batches_per_tick,
        ),
    )


class _Launcher:
    """Launches within the room left, under the lease, recording results on the report.
    Safe to call from the tick's batch threads."""

    def __init__(
        self, clients: Clients, lease: LeaseLock, report: TickReport, groups: list[GroupInfo]
    ) -> None:
        self.clients = clients
        self.lease = lease
        self.report = report
        self.existing = {g.name for g in groups}
        self.room = room_for_launches(clients, groups)
        self._lock = threading.Lock()
        report.active_groups = len(groups)
        report.room = self.room

    def launch(self, manifest: Manifest, etag: str, confirm: bool) -> LaunchResult | None:
        if self.lease.lost:
            self.report.lease_lost = True
            return None
        try:
            result = launch_batch(
                self.clients, manifest, etag, self.existing, confirm=confirm, lease=self.lease
            )
        except ManifestConflict:
            # Somebody else (a recovery after our lease was lost) moved this batch on.
            self.report.errors.append(f"batch {manifest.batch_id}: manifest changed during launch")
            logger.warning("batch %s: manifest changed during launch", manifest.batch_id)
            return None
        with self._lock:
            if result.launched:
                self.existing.add(result.group)
                if not result.adopted:
                    self.room -= 1
            self.report.launched.append(asdict(result) | {"etag": None})
            if result.error:
                self.report.errors.append(f"batch {result.batch_id}: {result.error['code']}")
        return result


def _recover(clients: Clients, launcher: _Launcher, refs: list[BatchRef]) -> None:
    """Settle batches left `claiming` by a crashed tick and launch `claimed` ones. A batch
    whose manifest cannot be read is quarantined and skipped; the others go on."""
    s = clients.settings
    # Storage's clock against storage's Last-Modified: a host clock ahead never recovers a
    # live claim early (see launcher.clock).
    stuck_before = clients.clock.now() - timedelta(seconds=s.stuck_claim_seconds)
    for ref in sorted(refs, key=lambda r: r.batch_id):
        if launcher.lease.lost:
            launcher.report.lease_lost = True
            return
        found = None
        try:
            if ref.state is State.CLAIMING and ref.last_modified <= stuck_before:
                found = resolve_claiming(clients, ref.batch_id, ref.etag or None)
                launcher.report.recovered.append(ref.batch_id)
            elif ref.state is State.CLAIMED and launcher.room > 0:
                found = clients.store.read(ref.batch_id)
        except ManifestUnreadable as exc:
            launcher.report.quarantine(Quarantined(ref.batch_id, exc.reason))
            continue
        if found and found[0].state is State.CLAIMED and launcher.room > 0:
            launcher.launch(found[0], found[1], confirm=True)


def _in_open_claims(
    clients: Clients, refs: list[BatchRef], report: TickReport
) -> set[tuple[str, str]]:
    """(source, etag) of every file listed by a batch that is still `claiming` after recovery:
    a claim that crashed less than STUCK_CLAIM_SECONDS ago, or the live claim of a tick that has
    lost its lease. Such a file must wait for that claim to be finished: claimed again now, it
    could end in two batches, because that claim keeps a file whose source is gone once its
    copy is complete (its recovery cannot tell whether the crashed run deleted the source, and
    a live claim whose delete answer was lost cannot either). One read per such batch,
    concurrently; a tick normally sees none."""
    open_claims = [r.batch_id for r in refs if r.state is State.CLAIMING]
    held: set[tuple[str, str]] = set()
    for batch_id, found in zip(
        open_claims, clients.runner.map(clients.store.read, open_claims), strict=True
    ):
        if isinstance(found, ManifestUnreadable):
            # Its files are unknown: it is quarantined, and the others are not held up by it
            # (docs/operations.md says what releasing such a batch means).
            report.quarantine(Quarantined(batch_id, found.reason))
            continue
        if isinstance(found, BaseException):
            raise found  # unknown files: claim nothing rather than risk claiming one twice
        if found is not None and found[0].state is State.CLAIMING:
            held.update((f.source, f.etag.strip('"')) for f in found[0].files)
    return held


class _BatchGate:
    """Lets a tick's batch threads start claiming only while the lease is held, and says once,
    in the log, when the tick stops: from then on no batch starts, and the batches already in
    flight skip the files they have not copied yet (`claim` checks the lease per file)."""

    def __init__(self, lease: LeaseLock, report: TickReport) -> None:
        self.lease = lease
        self.report = report
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopped = False
        self.refused: dict[str, tuple[str, str]] = {}  # refusals seen by the tick's claims
        self.refused_lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.lease.lost:
                self._stop()
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self.lease.lost:
                self._stop()

    def _stop(self) -> None:
        self.report.lease_lost = True
        if not self._stopped:
            self._stopped = True
            logger.warning(
                "poll lease lost: stopping before claiming more (%s batch(es) in flight end "
                "with the files already copied)",
                self._in_flight,
            )


def _claim_and_launch(
    clients: Clients, gate: _BatchGate, launcher: _Launcher, plan: Plan, report: TickReport
) -> None:
    if not gate.enter():
        return
    try:
        result = claim(clients, plan, gate.lease)
    finally:
        gate.leave()
    if result.refused:
        with gate.refused_lock:
            gate.refused.update(result.refused)
    if result.manifest is None or result.etag is None:
        return
    report.claimed.append(
        {"batch": result.manifest.batch_id, "files": result.owned, "dropped": result.dropped}
    )
    launcher.launch(result.manifest, result.etag, confirm=False)


def _locked_tick(
    clients: Clients,
    lease: LeaseLock,
    found: Scan | None,
    report: TickReport,
    refusals: Refusals | None = None,
) -> None:
    # The two listings the tick needs are independent: take them at once.
    groups_future = clients.runner.submit(clients.hook.list_groups)
    refs, quarantined = clients.store.triage(clients.store.list_refs())
    for q in quarantined:
        report.quarantine(q)
    launcher = _Launcher(clients, lease, report, groups_future.result())
    _recover(clients, launcher, refs)
    if found is None:
        return
    claimable = found.claimable
    held = _in_open_claims(clients, refs, report)
    if held:
        # ETags compared without quotes: listings give them bare, property reads quoted.
        claimable = [c for c in claimable if (c.name, c.etag.strip('"')) not in held]
        report.held_for_recovery = len(found.claimable) - len(claimable)
    if report.held_for_recovery:
        logger.warning(
            "%s file(s) in incoming/ are listed by unfinished claims: left for their recovery "
            "(after STUCK_CLAIM_SECONDS)",
            report.held_for_recovery,
        )
    plans = plan_batches(clients.settings, claimable, launcher.room)
    if not plans:
        return
    # Batch threads of their own: a batch waits on its files' tasks in the IO pool, so running
    # it there could starve that pool.
    workers = min(len(plans), BATCH_CONCURRENCY)
    gate = _BatchGate(lease, report)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ml-batch") as pool:
        futures: list[Future[None]] = [
            pool.submit(_claim_and_launch, clients, gate, launcher, plan, report) for plan in plans
        ]
        errors = [f.exception() for f in futures]
    report.claimed.sort(key=lambda c: str(c["batch"]))
    report.launched.sort(key=lambda x: str(x["batch_id"]))
    if refusals is not None and gate.refused:
        refusals.record(gate.refused, clients.clock.now())
        for name, (_etag, code) in gate.refused.items():
            report.blocked[name] = f"storage refused to move it ({code})"
    for exc in errors:
        if exc is not None:
            raise exc


def _with_lease(
    clients: Clients, report: TickReport, found: Scan | None, refusals: Refusals | None = None
) -> TickReport:
    lease = LeaseLock(
        clients.container, clients.settings.poll_lock_blob, clients.settings.lease_seconds
    )
    if not lease.try_acquire():
        report.lease_busy = True
        logger.info("another poll holds the lease on %s: skipping this tick", lease.name)
        return report
    with lease:
        try:
            _locked_tick(clients, lease, found, report, refusals)
        finally:
            if refusals is not None and not lease.lost:
                refusals.save()
    # After the release, which also finds a lease lost since the last renewal.
    report.lease_lost = report.lease_lost or lease.lost
    return report


@telemetry.traced_tick
def poll(clients: Clients) -> TickReport:
    """Run one poll tick."""
    started = time.monotonic()
    s = clients.settings
    report = TickReport()
    listing = list(
        clients.container.list_blobs(name_starts_with=s.incoming_prefix, include=["metadata"])
    )
    # Storage's clock (learned from the listing's own response): a host clock ahead would
    # claim folders still being uploaded (see launcher.clock).
    found = scan(s, listing, clients.clock.now())
    refusals = _remembered_refusals(clients, found, listing) if found.claimable else None
    report.listed = len(listing)
    report.claimable = len(found.claimable)
    report.unsettled = found.unsettled
    report.folder_markers = found.markers
    report.waiting_folders = found.waiting_folders
    report.blocked = found.blocked
    if found.blocked:
        names = sorted(found.blocked)
        logger.warning(
            "%s file(s) in incoming/ cannot be claimed until that changes, left in place: %s",
            len(names),
            "; ".join(f"{n!r} ({found.blocked[n]})" for n in names[:5])
            + (f"; and {len(names) - 5} more" if len(names) > 5 else ""),
        )
    if not found.claimable:
        report.idle = True
        logger.info(
            "poll: nothing to claim (%s listed, %s settling, %s folders waiting)",
            report.listed,
            found.unsettled,
            len(found.waiting_folders),
        )
    else:
        _with_lease(clients, report, found, refusals)
        logger.info(
            "poll: claimed %s batch(es), launched %s, %s error(s)",
            len(report.claimed),
            sum(1 for x in report.launched if x["launched"]),
            len(report.errors),
        )
    report.duration_seconds = round(time.monotonic() - started, 3)
    return report


def _remembered_refusals(clients: Clients, found: Scan, listing: list[BlobProperties]) -> Refusals:
    """Read the remembered refusals (one request, busy ticks only) and move the claimable
    files storage keeps refusing to `blocked`, so they cost no copy (see launcher.refusals)."""
    s = clients.settings
    refusals = Refusals(clients.container, s.lock_prefix + REFUSALS_BLOB).load()
    if not refusals.entries:
        return refusals
    refusals.prune({b.name: str(b.etag) for b in listing})
    now = clients.clock.now()
    keep = []
    for c in found.claimable:
        why = refusals.reason(c.name, c.etag, now)
        if why is None:
            keep.append(c)
        else:
            found.blocked[c.name] = why
    found.claimable = keep
    return refusals


def recover(clients: Clients) -> TickReport:
    """Recovery and launch of waiting batches only (the janitor's hand-back to launch)."""
    started = time.monotonic()
    report = _with_lease(clients, TickReport(), None)
    report.duration_seconds = round(time.monotonic() - started, 3)
    return report
