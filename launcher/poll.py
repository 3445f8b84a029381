"""One poll tick: read incoming/ as a stream, and only once something can be claimed, take the
poll lease, recover what earlier ticks left behind, claim new batches and launch them.

A tick's memory and requests grow with what it claims, never with what waits:
- incoming/ is listed page by page in name order (a first page of `FIRST_PAGE_SIZE` names,
  then pages of `LIST_PAGE_SIZE`: the SDK parses a page whole, so the first claim does not wait
  on parsing 5,000 names) and each entry goes through `launcher.intake.Intake`, which hands
  back claimable units as soon as they are known (a settled file; in folder mode a whole ready
  folder once the listing passes its prefix) and keeps only counts and the first names of what
  waits (blocked, settling, folders without their marker). Pages are read, without the lease,
  for as long as nothing claimable has turned up: files at the front that cannot be claimed
  never starve those behind them.
- At the first claimable file the tick reads the remembered refusals (once), takes the lease
  and lists our container groups (one ARM request): that gives the room (MAX_ACTIVE_GROUPS, the
  create budget, MAX_BATCHES_PER_TICK). With no room it stops there: one page, the refusals
  read, the lease and one ARM list, whatever the backlog. Otherwise it lists processing/,
  recovers, learns which files unfinished claims hold, and goes on streaming: each batch is
  claimed (on its own thread) as soon as `Planner` has cut it, and the listing stops as soon
  as the tick has as many batches as its room, or ends. So a tick reads no further than the
  batches it claims, plus the waiting files in front of them.
- A backlog drains in name order (users who want oldest-first prefix names with a timestamp).
  A folder larger than the caps is one batch of its own, claimed whole: the tick then holds
  that folder's entries, which is what it claims.

Cost: an idle tick (nothing claimable) is one List Blobs request while everything waiting fits
in the first page (1,000 names; one more request per 5,000 beyond): no lease, no writes, no ARM
call. Recovery of batches left `claiming`/`claimed` happens on the next busy tick with room, or
when the janitor hands them back (`recover`), which it does on every sweep that sees one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.core.paging import ItemPaged
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
from launcher.claim import claim, resolve_claiming
from launcher.clients import Clients
from launcher.intake import Candidate, Intake, Plan, Planner
from launcher.launch import SPEC_FRESH_SECONDS, LaunchResult, launch_batch
from launcher.refusals import REFUSALS_BLOB, Refusals

logger = logging.getLogger(__name__)

CREATE_WINDOW_SECONDS = 300
# Batches of one tick claimed at once. Their files share the IO_CONCURRENCY pool first come,
# first served, so the first batch still finishes first; the others' manifest writes and
# launches overlap its copies instead of waiting behind them.
BATCH_CONCURRENCY = 4
# Names per List Blobs page of incoming/ (the service's maximum is 5,000; tests lower it), and
# of its first page, kept small so that the first claim does not wait on parsing 5,000 names.
LIST_PAGE_SIZE = 5000
FIRST_PAGE_SIZE = 1000


@dataclass
class TickReport:
    """What a tick saw and did; returned by the CLI, the admin endpoint and the timer log."""

    idle: bool = False
    lease_busy: bool = False
    lease_lost: bool = False
    listed: int = 0  # entries of incoming/ this tick read (it stops once it has its batches)
    list_pages: int = 0
    listing_complete: bool = False  # read to its end
    claimable: int = 0
    unsettled: int = 0
    folder_markers: int = 0
    waiting_folders: list[str] = field(default_factory=list)  # the first launcher.intake.SAMPLE
    waiting_folders_total: int = 0
    blocked: dict[str, str] = field(default_factory=dict)  # the first SAMPLE: name -> why
    blocked_total: int = 0
    held_for_recovery: int = 0  # claimable files listed by an unfinished claim: they wait for it
    # Claimable files left in incoming/ because their job profile is at its own cap, by profile.
    capped: dict[str, int] = field(default_factory=dict)
    active_groups: int | None = None
    active_by_profile: dict[str, int] = field(default_factory=dict)
    room: int | None = None
    claimed: list[dict[str, Any]] = field(default_factory=list)
    launched: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    # Batches sent to failed/ at claim time: an invalid parameters file (launcher.claim).
    rejected: list[dict[str, str]] = field(default_factory=list)
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
        self.active = Counter(g.profile for g in groups)  # our groups per job profile
        self._lock = threading.Lock()
        report.active_groups = len(groups)
        report.active_by_profile = dict(sorted(self.active.items()))
        report.room = self.room

    def profile_room(self, profile: str) -> int:
        """Groups profile `profile` may still create: its own cap (JOB_PROFILES
        max_active_groups) less its groups, within the tick's room."""
        cap = self.clients.settings.profile_cap(profile)
        return max(0, min(self.room, cap - self.active[profile]))

    def launch(self, manifest: Manifest, etag: str, confirm: bool) -> LaunchResult | None:
        """`confirm`: a batch of an earlier tick (recovery), launched only if its profile has
        room; the tick's own batches had theirs reserved when they were planned."""
        if self.lease.lost:
            self.report.lease_lost = True
            return None
        if confirm and self.profile_room(manifest.profile) <= 0:
            logger.info("batch %s: profile %s is at its cap", manifest.batch_id, manifest.profile)
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
                    self.active[manifest.profile] += 1
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


def held_by_open_claims(
    clients: Clients, refs: list[BatchRef], quarantine: Callable[[Quarantined], None]
) -> set[tuple[str, str]]:
    """(source, bare etag) of every file listed by a batch that is still `claiming` after
    recovery: a claim that crashed less than STUCK_CLAIM_SECONDS ago, or the live claim of a
    tick that has lost its lease. Such a file must wait for that claim to be finished: claimed
    again now, it could end in two batches, because that claim keeps a file whose source is
    gone once its copy is complete (its recovery cannot tell whether the crashed run deleted
    the source, and a live claim whose delete answer was lost cannot either). One read per such
    batch, concurrently; a tick normally sees none. A manifest that cannot be read goes to
    `quarantine` (the tick's report records and logs it) and holds nothing up. The poll tick
    and the status page (cleanup/status.py) both ask this one function."""
    open_claims = [r.batch_id for r in refs if r.state is State.CLAIMING]
    held: set[tuple[str, str]] = set()
    for batch_id, found in zip(
        open_claims, clients.runner.map(clients.store.read, open_claims), strict=True
    ):
        if isinstance(found, ManifestUnreadable):
            # Its files are unknown: it is quarantined, and the others are not held up by it
            # (docs/operations.md says what releasing such a batch means).
            quarantine(Quarantined(batch_id, found.reason))
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
    m = result.manifest
    entry = {"batch": m.batch_id, "files": result.owned, "dropped": result.dropped}
    report.claimed.append(entry | {"profile": m.profile})
    if m.state is State.FINISHING:  # its parameters file is invalid: straight to failed/
        report.rejected.append({"batch": m.batch_id, "reason": m.reason or ""})
        return
    launcher.launch(m, result.etag, confirm=False)


def _settle_earlier_batches(
    clients: Clients, launcher: _Launcher, report: TickReport
) -> list[BatchRef]:
    """List processing/ (one page per 5,000 blobs, per-batch summaries kept), quarantine what
    cannot be read, and recover what earlier ticks left `claiming` or `claimed`."""
    refs, quarantined = clients.store.triage(clients.store.list_refs())
    for q in quarantined:
        report.quarantine(q)
    _recover(clients, launcher, refs)
    return refs


class _Tick:
    """One poll tick's state while it streams incoming/ (see the module docstring)."""

    def __init__(self, clients: Clients, report: TickReport, stack: ExitStack) -> None:
        self.clients = clients
        self.s = clients.settings
        self.report = report
        self.stack = stack
        self.intake: Intake | None = None
        self.planner = Planner(self.s)
        self.refusals: Refusals | None = None
        self.seen: dict[str, str] = {}  # remembered refusals as listed: name -> etag
        self.pruned_from: str | None = None  # first name listed after the refusals were read
        self.lease: LeaseLock | None = None
        self.launcher: _Launcher | None = None
        self.gate: _BatchGate | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.futures: list[Future[None]] = []
        self.held: set[tuple[str, str]] = set()
        self.room = 0  # batches this tick may still start
        self.used: Counter[str] = Counter()  # groups per profile, with this tick's batches
        self.stopped = False  # stopped listing before its end

    def run(self) -> None:
        for page in self._pages():
            self.report.list_pages += 1
            # Storage's clock, learned from this listing's own response: a host clock ahead
            # would claim folders still being uploaded (see launcher.clock).
            intake = self.intake or self._start_intake()
            for blob in page:
                if not self._take(intake.feed(blob)):
                    self.stopped = True
                    return
                if self.refusals is not None and blob.name in self.refusals.entries:
                    self.seen[blob.name] = str(blob.etag)
        intake = self.intake or self._start_intake()
        if not self._take(intake.end()):
            self.stopped = True
            return
        if self.pool is not None and self.room > 0:
            for plan in self.planner.flush():
                if self.room <= 0:
                    break
                self._submit(plan)

    def _pages(self) -> Iterator[Iterator[BlobProperties]]:
        """incoming/ in name order: a first page of FIRST_PAGE_SIZE names, then pages of
        LIST_PAGE_SIZE. The SDK parses a page whole, about 0.25 ms of CPU a name, so a small
        first page lets the first claim start early whatever waits behind it."""

        def listing(size: int) -> ItemPaged[BlobProperties]:
            return self.clients.container.list_blobs(
                name_starts_with=self.s.incoming_prefix, include=["metadata"], results_per_page=size
            )

        first = listing(min(FIRST_PAGE_SIZE, LIST_PAGE_SIZE)).by_page()
        for page in first:
            yield page
            break
        token = getattr(first, "continuation_token", None)  # a PageIterator's, once it paged
        if token:
            yield from listing(LIST_PAGE_SIZE).by_page(continuation_token=token)

    def _start_intake(self) -> Intake:
        self.intake = Intake(
            self.s, self.clients.clock.now(), self._marker_exists, head_after=LIST_PAGE_SIZE
        )
        return self.intake

    def _marker_exists(self, name: str) -> bool:
        try:
            self.clients.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return False
        return True

    def _take(self, units: list[Plan]) -> bool:
        """Offer claimable units; False once the tick has all it may claim (or must stop)."""
        return all(self._offer(unit) for unit in units)

    def _offer(self, unit: Plan) -> bool:
        assert self.intake is not None
        files = self._not_refused(unit.files)
        if not files:
            return True
        self.report.claimable += len(files)
        if self.lease is None and not self._take_lease():
            return False
        if self.held:
            kept = [c for c in files if (c.name, c.etag.strip('"')) not in self.held]
            self.report.held_for_recovery += len(files) - len(kept)
            files = kept
        if self._profile_left(unit.profile) <= 0:
            self._capped(unit.profile, len(files))
            return True  # the listing goes on for the other profiles
        for plan in self.planner.add(Plan(files, unit.folder, unit.profile)):
            self._submit(plan)
            if self.room <= 0:
                return False
        return self.lease is not None and not self.lease.lost

    def _profile_left(self, profile: str) -> int:
        return min(self.room, self.s.profile_cap(profile) - self.used[profile])

    def _capped(self, profile: str, files: int) -> None:
        self.report.capped[profile] = self.report.capped.get(profile, 0) + files

    def _not_refused(self, files: list[Candidate]) -> list[Candidate]:
        """Files storage keeps refusing to move go to `blocked` (see launcher.refusals). The
        remembered refusals are read once, at the first claimable file: an idle tick stays one
        List Blobs request."""
        assert self.intake is not None
        if self.refusals is None:
            self.refusals = Refusals(self.clients.container, self.s.lock_prefix + REFUSALS_BLOB)
            self.refusals.load()
            self.pruned_from = self.intake.last_name
            self.seen = {c.name: c.etag for c in files if c.name in self.refusals.entries}
        if not self.refusals.entries:
            return files
        now = self.clients.clock.now()
        keep = []
        for c in files:
            why = self.refusals.reason(c.name, c.etag, now)
            if why is None:
                keep.append(c)
            else:
                self.intake.block(c.name, why)
        return keep

    def _take_lease(self) -> bool:
        """Take the poll lease, find the room for launches (one ARM list), and only with room,
        recover earlier batches and learn which files their open claims hold. False: the tick
        claims nothing and stops listing."""
        clients, report = self.clients, self.report
        lease = LeaseLock(clients.container, self.s.poll_lock_blob, self.s.lease_seconds)
        if not lease.try_acquire():
            report.lease_busy = True
            logger.info("another poll holds the lease on %s: skipping this tick", lease.name)
            return False
        self.stack.enter_context(lease)
        self.lease = lease
        self.stack.callback(self._save_refusals)
        launcher = _Launcher(clients, lease, report, clients.hook.list_groups())
        self.launcher = launcher
        if launcher.room <= 0:
            # Nothing may be launched: no processing/ listing, no recovery (the janitor hands
            # stuck claims back on its sweeps) and no more of incoming/.
            logger.info("poll: no room for a launch (%s groups exist)", report.active_groups)
            return False
        refs = _settle_earlier_batches(clients, launcher, report)
        self.room = launcher.room
        if self.room <= 0 or lease.lost:
            return False
        self.used = Counter(launcher.active)
        self.held = held_by_open_claims(clients, refs, report.quarantine)
        self.gate = _BatchGate(lease, report)
        # Batch threads of their own: a batch waits on its files' tasks in the IO pool, so
        # running it there could starve that pool. Shut down (every batch waited for) before
        # the lease is released.
        self.pool = self.stack.enter_context(
            ThreadPoolExecutor(
                max_workers=min(self.room, BATCH_CONCURRENCY), thread_name_prefix="ml-batch"
            )
        )
        return True

    def _submit(self, plan: Plan) -> None:
        """Start claiming a plan, if the room (and its profile's) allows; else its files wait."""
        assert self.pool is not None and self.gate is not None and self.launcher is not None
        if self._profile_left(plan.profile) <= 0:
            self._capped(plan.profile, len(plan.files))
            return
        self.room -= 1
        self.used[plan.profile] += 1
        self.futures.append(
            self.pool.submit(
                _claim_and_launch, self.clients, self.gate, self.launcher, plan, self.report
            )
        )

    def _save_refusals(self) -> None:
        """Under the lease, once every batch has ended: remember this tick's refusals and
        forget those the listing showed gone or changed, within the names it listed."""
        assert self.intake is not None and self.lease is not None
        refusals, refused = self.refusals, self.gate.refused if self.gate else {}
        if refusals is None or self.lease.lost:
            return
        refusals.prune(self.seen, self.pruned_from, self.intake.last_name if self.stopped else None)
        if refused:
            refusals.record(refused, self.clients.clock.now())
            for name, (_etag, code) in refused.items():
                self.intake.block(name, f"storage refused to move it ({code})")
        refusals.save()

    def errors(self) -> list[BaseException]:
        return [e for e in (f.exception() for f in self.futures) if e is not None]


@telemetry.traced_tick
def poll(clients: Clients) -> TickReport:
    """Run one poll tick (see the module docstring)."""
    started = time.monotonic()
    report = TickReport()
    with ExitStack() as stack:
        tick = _Tick(clients, report, stack)
        try:
            tick.run()
        finally:
            report.listing_complete = not tick.stopped
    # The lease (if taken) is released and every batch has ended.
    errors = tick.errors()
    if tick.lease is not None:
        report.lease_lost = report.lease_lost or tick.lease.lost
    report.claimed.sort(key=lambda c: str(c["batch"]))
    report.launched.sort(key=lambda x: str(x["batch_id"]))
    _report_listing(report, tick.intake)
    if errors:
        raise errors[0]
    report.duration_seconds = round(time.monotonic() - started, 3)
    return report


def _report_listing(report: TickReport, intake: Intake | None) -> None:
    """What the listing showed (counts whole, names sampled), in the report and the log."""
    if intake is not None:
        report.listed = intake.listed
        report.unsettled = intake.unsettled
        report.folder_markers = intake.markers
        report.waiting_folders = intake.waiting_folders
        report.waiting_folders_total = intake.waiting_total
        report.blocked = intake.blocked
        report.blocked_total = intake.blocked_total
    if report.blocked:
        names = sorted(report.blocked)
        logger.warning(
            "%s file(s) in incoming/ cannot be claimed until that changes, left in place: %s",
            report.blocked_total,
            "; ".join(f"{n!r} ({report.blocked[n]})" for n in names[:5])
            + (f"; and {report.blocked_total - 5} more" if report.blocked_total > 5 else ""),
        )
    if report.held_for_recovery:
        logger.warning(
            "%s file(s) in incoming/ are listed by unfinished claims: left for their recovery "
            "(after STUCK_CLAIM_SECONDS)",
            report.held_for_recovery,
        )
    report.idle = report.claimable == 0
    if report.idle:
        logger.info(
            "poll: nothing to claim (%s listed, %s settling, %s folders waiting)",
            report.listed,
            report.unsettled,
            report.waiting_folders_total,
        )
    else:
        logger.info(
            "poll: claimed %s batch(es), launched %s, %s error(s)",
            len(report.claimed),
            sum(1 for x in report.launched if x["launched"]),
            len(report.errors),
        )


def recover(clients: Clients) -> TickReport:
    """Recovery and launch of waiting batches only (the janitor's hand-back to launch)."""
    started = time.monotonic()
    report = TickReport()
    lease = LeaseLock(
        clients.container, clients.settings.poll_lock_blob, clients.settings.lease_seconds
    )
    if not lease.try_acquire():
        report.lease_busy = True
        logger.info("another poll holds the lease on %s: skipping the hand-back", lease.name)
    else:
        with lease:
            launcher = _Launcher(clients, lease, report, clients.hook.list_groups())
            _settle_earlier_batches(clients, launcher, report)
        report.lease_lost = report.lease_lost or lease.lost
    report.duration_seconds = round(time.monotonic() - started, 3)
    return report
