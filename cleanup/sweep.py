"""The janitor's sweep: finish batches whose group terminated, keep their logs, relaunch or
dead-letter failures, delete finished groups, and hand stuck batches back to launch.

Order per finished attempt, chosen so a crash at any point is repaired by the next sweep and
never re-runs a batch that already succeeded:
  1. read the logs and save them to `processing/<batch>/_logs/attempt-<n>.log`;
  2. record the attempt (exit code, times, reason) on the manifest: `finishing` (target done or
     failed) or, with attempts left, back to `claimed` for the next attempt;
  3. delete the group (kept when KEEP_FAILED_GROUPS=true and the attempt failed: it is tagged
     `ml-kept` and left alone afterwards);
  4. for `finishing`: move the batch folder to done/ or failed/, write the final manifest there,
     delete the one in processing/;
  5. send the completion notifications of finished batches (cleanup/notify.py: recorded as
     pending, with an outbox entry, before the final manifest is written; sent after it).

Each recorded attempt carries its usage and estimated cost (launcher/cost.py), the manifest
their sum.

Cost: the sweep first lists our groups (one ARM request) and the manifests in processing/ (one
List Blobs), and with notification targets configured the notification outbox (one List Blobs);
with none of them, it stops there, without taking its lease. Otherwise it takes the janitor
lease (so a timer sweep and an on-demand sweep never overlap) and lists again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.mgmt.containerinstance.models import ContainerGroup

from cleanup import alarm, history, notify
from launcher import cost, telemetry
from launcher import poll as launcher_poll
from launcher.aci import AciError, GroupInfo
from launcher.batch import (
    LOGS_DIR,
    Attempt,
    BatchRef,
    Manifest,
    ManifestConflict,
    ManifestUnreadable,
    Quarantined,
    State,
    iso,
    parse_iso,
)
from launcher.blobs import LeaseLock, delete_quietly, move_blob
from launcher.clients import Clients
from launcher.launch import CONTAINER_NAME
from launcher.poll import log_quarantined

logger = logging.getLogger(__name__)

# Exit codes of a container the platform killed ("Container instance exit codes": 7147
# "Killed by the platform", 7148 "Killed due to a host issue / container group failure").
PLATFORM_KILL_EXIT_CODES = frozenset({7147, 7148})
# What ACI keeps of a terminated container's log ("Retrieve container logs and events"): the
# last 16 KB or 1,000 lines; the running container's is capped at 4 MB.
ACI_TERMINATED_LOG_BYTES = 16 * 1024
ACI_TERMINATED_LOG_LINES = 1000


def truncation_note(logs: str) -> str:
    """A first line for a saved log that may have lost its beginning: ACI keeps only the tail
    of a terminated container's log, and the janitor reads it after termination."""
    size = len(logs.encode("utf-8", "replace"))
    if size < ACI_TERMINATED_LOG_BYTES - 1024 and logs.count("\n") < ACI_TERMINATED_LOG_LINES - 1:
        return ""
    return (
        "[model-launcher] ACI keeps only the last 16 KB / 1,000 lines of a stopped container's "
        f"log and this one is {size} bytes: its beginning is probably missing. Complete logs: "
        "Log Analytics (ACI_LOG_ANALYTICS_WORKSPACE_ID), or the worker's own "
        "_logs/attempt-<n>.worker.log when the image writes one (the sample worker does).\n"
    )


SWEEP_CONCURRENCY = 8
# A container's own account of why it failed: output/<batch>/_error.json (docs/operations.md
# "Telling why a batch failed"). Read once per failed attempt, at most this many bytes.
ERROR_REPORT = "_error.json"
ERROR_REPORT_MAX_BYTES = 64 * 1024
ERROR_REASON_MAX_CHARS = 500


@dataclass
class Status:
    """What a container group's instance view says about its attempt."""

    kind: str  # running | succeeded | failed | timeout | provisioning-failed | vanished
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    resources: cost.Resources | None = None  # what the group requested (for the cost)

    @property
    def terminal(self) -> bool:
        return self.kind != "running"


@dataclass
class SweepReport:
    dry_run: bool = False
    idle: bool = False
    lease_busy: bool = False
    groups_seen: int = 0
    groups_by_profile: dict[str, int] = field(default_factory=dict)  # of groups_seen
    batches_seen: int = 0
    running: list[str] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)
    relaunched: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    handed_back: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)  # groups of quarantined batches
    # `launched` batches whose group is gone, within VANISH_GRACE_SECONDS: batch, group, until
    waiting: list[dict[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stall: dict[str, Any] | None = None  # the stall alarm (cleanup/alarm.py)
    # Completion notifications (cleanup/notify.py): sent, still pending (with the error).
    notified: list[dict[str, str]] = field(default_factory=list)
    notify_pending: list[dict[str, str]] = field(default_factory=list)
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def classify(
    group: ContainerGroup, created: float | None, timeout_minutes: float, now: datetime
) -> Status:
    """Read a group's state the way ACI reports it (restart policy Never). `now` is storage's
    time (see launcher.clock), comparable with ACI's start times and our creation tags."""
    if (group.provisioning_state or "").lower() == "failed":
        return Status("provisioning-failed", reason=_events_reason(group) or "provisioning failed")
    container = group.containers[0] if group.containers else None
    view = getattr(container, "instance_view", None) if container else None
    current = getattr(view, "current_state", None)
    started = _timestamp(getattr(current, "start_time", None))
    state = (getattr(current, "state", None) or "").lower()
    if state == "terminated":
        exit_code = getattr(current, "exit_code", None)
        finished = _timestamp(getattr(current, "finish_time", None))
        detail = getattr(current, "detail_status", None)
        kind = "succeeded" if exit_code == 0 else "failed"
        reason = None if kind == "succeeded" else f"exit code {exit_code} ({detail or 'Error'})"
        return Status(kind, exit_code, started, finished, reason)
    group_state = (getattr(group.instance_view, "state", None) or "").lower()
    if group_state in ("failed", "stopped") and state != "running":
        return Status("failed", None, started, now, f"container group {group_state}")
    begin = started or (datetime.fromtimestamp(created, UTC) if created else None)
    if begin and now - begin > timedelta(minutes=timeout_minutes):
        return Status("timeout", None, started, now, f"ran longer than {timeout_minutes:g} minutes")
    return Status("running", started_at=started)


def _events_reason(group: ContainerGroup) -> str | None:
    """The last event message ACI reported (image pull failures and the like)."""
    events: list[Any] = []
    for container in group.containers or []:
        events += (container.instance_view.events if container.instance_view else None) or []
    events += (group.instance_view.events if group.instance_view else None) or []
    # ACI follows a "Failed" event (the cause, e.g. the pull error) with "BackOff" retries.
    failed = [e for e in events if e.message and (e.name or "").lower() == "failed"]
    chosen = failed or [e for e in events if e.message]
    return f"{chosen[-1].name or chosen[-1].type}: {chosen[-1].message}" if chosen else None


class Sweep:
    def __init__(self, clients: Clients, dry_run: bool) -> None:
        self.clients = clients
        self.s = clients.settings
        self.dry_run = dry_run
        self.report = SweepReport(dry_run=dry_run)

    # -- helpers -----------------------------------------------------------------------------

    def _act(self, description: str) -> bool:
        """Log an action; in a dry run only record it. True if it should be carried out."""
        self.report.actions.append(description)
        if self.dry_run:
            logger.info("dry run: would %s", description)
            return False
        logger.info("janitor: %s", description)
        return True

    def _delete_group(self, name: str, why: str) -> None:
        if not self._act(f"delete group {name} ({why})"):
            return
        try:
            self.clients.hook.delete(name)
            self.report.deleted.append(name)
        except AciError as exc:
            # ContainerGroupTransitioning and friends: the next sweep tries again.
            self.report.errors.append(f"delete {name}: {exc.code}")
            logger.warning("janitor: could not delete %s yet: %s", name, exc)

    def _quarantine(self, q: Quarantined) -> None:
        if any(x["batch"] == q.batch_id for x in self.report.quarantined):
            return
        self.report.quarantined.append(q.to_dict())
        log_quarantined(q)

    def _keep_group(self, name: str) -> None:
        if not self._act(f"keep failed group {name} for inspection (KEEP_FAILED_GROUPS)"):
            return
        self.clients.hook.mark_kept(name)
        self.report.kept.append(name)

    # -- one attempt ---------------------------------------------------------------------------

    def finalize_attempt(self, batch_id: str, group: str, status: Status) -> None:
        """Record a terminated (or timed out, or vanished) attempt and decide what comes next."""
        store = self.clients.store
        found = store.read(batch_id)
        if found is None:
            return
        manifest, etag = found
        if manifest.state is not State.LAUNCHED or manifest.group != group:
            return  # somebody already recorded it
        rec = manifest.current_attempt() or Attempt(attempt=manifest.attempt, group=group)
        if rec not in manifest.attempts:
            manifest.attempts.append(rec)
        if status.kind == "failed" and status.exit_code is not None and not self.dry_run:
            told = self.error_report(batch_id, manifest.attempt)
            if told:
                status.reason = f"{status.reason}: {told}"
        rec.outcome = status.kind
        rec.exit_code = status.exit_code
        rec.reason = status.reason
        now = self.clients.clock.now()
        rec.started_at = iso(status.started_at) or rec.started_at
        rec.finished_at = iso(status.finished_at or now)
        begin = status.started_at or parse_iso(rec.launched_at)
        end = status.finished_at or now
        rec.duration_seconds = round((end - begin).total_seconds(), 1) if begin else None
        # The batch's profile's rules and resources (profiles.py); a profile no longer in
        # JOB_PROFILES falls back to the global settings.
        ps = self.s.for_profile(manifest.profile, strict=False)
        billed = cost.billed_seconds(parse_iso(rec.launched_at), begin, end)
        if billed is not None:
            resources = status.resources or cost.Resources.from_settings(ps)
            rec.billed_seconds = billed
            for key, value in cost.usage(self.s, resources, billed).items():
                setattr(rec, key, value)
        manifest.cost = cost.total(manifest.attempts)
        if status.kind != "vanished":
            rec.logs = f"{LOGS_DIR}/attempt-{manifest.attempt}.log"

        succeeded = status.kind == "succeeded"
        platform = (
            status.kind == "failed"
            and status.exit_code in PLATFORM_KILL_EXIT_CODES
            and manifest.platform_kills < self.s.max_platform_relaunches
        )
        counted = manifest.attempt - manifest.platform_kills  # attempts MAX_ATTEMPTS counts
        if succeeded:
            manifest.state, manifest.target = State.FINISHING, "done"
            verdict = f"batch {batch_id} attempt {manifest.attempt} succeeded"
        elif platform:
            # ACI killed the container itself (maintenance, a host failure): not the batch's
            # fault, so the relaunch does not use up one of MAX_ATTEMPTS.
            manifest.platform_kills += 1
            rec.outcome = status.kind = "platform-killed"
            rec.reason = status.reason = (
                f"killed by the platform (exit {status.exit_code}); relaunched without counting "
                f"against MAX_ATTEMPTS ({manifest.platform_kills} of "
                f"{self.s.max_platform_relaunches} such relaunches)"
            )
            manifest.state = State.CLAIMED
            verdict = (
                f"batch {batch_id} attempt {manifest.attempt} {status.reason}: relaunch as "
                f"attempt {manifest.attempt + 1}"
            )
        elif counted >= ps.max_attempts or status.exit_code in ps.no_retry_exit_codes:
            manifest.state, manifest.target = State.FINISHING, "failed"
            manifest.reason = f"attempt {counted}/{ps.max_attempts}: {status.reason}"
            if status.exit_code in ps.no_retry_exit_codes:
                manifest.reason += " (listed in NO_RETRY_EXIT_CODES: not retried)"
            verdict = f"batch {batch_id} failed for good ({manifest.reason})"
        else:
            manifest.state = State.CLAIMED
            verdict = (
                f"batch {batch_id} attempt {manifest.attempt} {status.kind} ({status.reason}): "
                f"relaunch as attempt {manifest.attempt + 1}"
            )
        if status.kind == "timeout":
            verdict += f"; stop group {group} first"
        if status.kind != "vanished":
            verdict += f"; save logs to {store.folder(batch_id)}{rec.logs}"
        if not self._act(verdict):
            # Dry run: also report what would follow.
            if status.kind != "vanished":
                keep = not succeeded and self.s.keep_failed_groups
                self._act(f"{'keep' if keep else 'delete'} group {group}")
            if manifest.state is State.FINISHING:
                self._act(f"move batch {batch_id} to {manifest.target}/")
            return
        logs = ""
        if status.kind != "vanished":
            try:
                logs = self.clients.hook.logs(group, CONTAINER_NAME)
            except AciError as exc:  # e.g. ContainerLogNotAvailable: the container never started
                logs = f"(no container logs: {exc.code}: {exc.message})\n"
            logs = truncation_note(logs) + logs
        if status.kind == "timeout":
            self.clients.hook.stop(group)
        if rec.logs:
            folder = store.folder(batch_id)
            try:  # create-only: a log saved by an earlier (crashed) finalize of it is kept
                self.clients.container.upload_blob(
                    folder + rec.logs, logs.encode("utf-8", "replace"), overwrite=False
                )
            except ResourceExistsError:
                pass
        try:
            etag = store.update(manifest, etag)
        except ManifestConflict:
            self.report.errors.append(f"batch {batch_id}: manifest changed during finalize")
            return
        entry = {"batch": batch_id, "group": group, "attempt": manifest.attempt} | {
            "profile": manifest.profile,
            "outcome": status.kind,
            "exit_code": status.exit_code,
            "duration_seconds": rec.duration_seconds,
        }
        if succeeded:
            self.report.finished.append(entry)
        elif manifest.state is State.CLAIMED:
            self.report.relaunched.append(batch_id)
        else:
            self.report.failed.append(entry | {"reason": manifest.reason})
        if status.kind != "vanished":
            if not succeeded and self.s.keep_failed_groups:
                self._keep_group(group)
            else:
                self._delete_group(group, f"attempt {manifest.attempt} {status.kind}")
        if manifest.state is State.FINISHING:
            self.finish(manifest, etag)

    def error_report(self, batch_id: str, attempt: int) -> str | None:
        """The reason a failed container gave in output/<batch>/_error.json, if it wrote one for
        this attempt: one bounded GET; absent, unreadable or foreign content is ignored."""
        name = f"{self.s.output_prefix}{batch_id}/{ERROR_REPORT}"
        try:
            data = (
                self.clients.container.get_blob_client(name)
                .download_blob(offset=0, length=ERROR_REPORT_MAX_BYTES)
                .readall()
            )
            doc = json.loads(data)
        except (AzureError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("reason"), str):
            return None
        if doc.get("attempt") is not None and doc.get("attempt") != attempt:
            return None  # an earlier attempt's report
        reason = " ".join(doc["reason"].split())
        if len(reason) > ERROR_REASON_MAX_CHARS:
            reason = reason[: ERROR_REASON_MAX_CHARS - 1] + "…"
        return reason or None

    @telemetry.traced_finish
    def finish(self, manifest: Manifest, etag: str) -> None:
        """Move a `finishing` batch to done/ or failed/ (idempotent, resumable).

        Fenced like every batch write: the final manifest is created only if none is there yet
        (a crashed or concurrent finish of this batch already wrote it), and the manifest in
        processing/ is deleted only if it is still the `finishing` version this sweep read."""
        s, store = self.s, self.clients.store
        target_prefix = s.done_prefix if manifest.target == "done" else s.failed_prefix
        if not self._act(f"move batch {manifest.batch_id} to {target_prefix}"):
            return
        source_folder = store.folder(manifest.batch_id)
        target_folder = store.folder(manifest.batch_id, target_prefix)
        manifest_path = store.path(manifest.batch_id)
        discarded = {source_folder + name for name in manifest.discarded}

        def move(name: str) -> bool:
            if name in discarded:  # a copy of a file the claim dropped: not part of the batch
                return delete_quietly(self.clients.container, name)
            return move_blob(
                self.clients.container, name, target_folder + name[len(source_folder) :]
            )

        # Page by page: a batch of any size costs one page of listing in memory.
        failures: list[BaseException] = []
        pages = self.clients.container.list_blobs(
            name_starts_with=source_folder, results_per_page=launcher_poll.LIST_PAGE_SIZE
        ).by_page()
        for page in pages:
            names = [b.name for b in page if b.name != manifest_path]
            results = self.clients.runner.map(move, names)
            failures += [r for r in results if isinstance(r, BaseException)]
        if failures:
            self.report.errors.append(
                f"batch {manifest.batch_id}: {len(failures)} blob(s) not moved yet: {failures[0]}"
            )
            return
        manifest.state = State.SUCCEEDED if manifest.target == "done" else State.FAILED
        manifest.finished_at = iso(self.clients.clock.now())
        notify.prepare(self.clients, manifest, target_prefix)  # before the final manifest
        indexed = manifest
        if store.put_final(manifest, target_prefix) is None:
            # An earlier finish wrote the final manifest (and a retry may have changed it since):
            # the index shows that one, not this sweep's copy (one more read, on this path only).
            try:
                final = store.read(manifest.batch_id, target_prefix)
            except ManifestUnreadable:
                final = None
            indexed = final[0] if final else manifest
            if final:
                notify.settle_refinish(self.clients, final[0])  # no second message once sent
        history.record(self.clients, indexed, target_prefix)  # before the delete: see history
        try:
            store.delete(manifest.batch_id, etag)
        except ManifestConflict:
            self.report.errors.append(f"batch {manifest.batch_id}: manifest changed during finish")

    # -- the sweep -----------------------------------------------------------------------------

    def inspect(self, g: GroupInfo) -> None:
        assert g.batch_id is not None
        group = self.clients.hook.get(g.name)
        status = (
            Status("vanished", reason="container group disappeared")
            if group is None
            else classify(
                group,
                g.created,
                self.s.for_profile(g.profile, strict=False).job_timeout_minutes,
                self.clients.clock.now(),
            )
        )
        if group is not None:
            status.resources = cost.Resources.from_group(group)
        if not status.terminal:
            self.report.running.append(g.name)
            return
        self.finalize_attempt(g.batch_id, g.name, status)

    def check_vanished(self, ref: BatchRef) -> None:
        """A `launched` batch whose group is not in the list: confirm with a GET (the list may
        lag behind a fresh create) and only after a grace period, then count it as a failed
        attempt."""
        # Age by storage's clock and the manifest's Last-Modified (its launch write), so a host
        # clock ahead never declares a fresh group vanished.
        until = ref.last_modified + timedelta(seconds=self.s.vanish_grace_seconds)
        if self.clients.clock.now() < until:
            self.report.waiting.append(
                {"batch": ref.batch_id, "group": ref.group or "", "until": iso(until) or ""}
            )
            logger.info(
                "batch %s: group %s not found; waiting until %s (VANISH_GRACE_SECONDS) before "
                "counting the attempt as vanished",
                ref.batch_id,
                ref.group,
                iso(until),
            )
            return
        found = self.clients.store.read(ref.batch_id)
        if found is None or found[0].state is not State.LAUNCHED or not found[0].group:
            return
        manifest = found[0]
        if self.clients.hook.get(manifest.group or "") is not None:
            return
        self.finalize_attempt(
            ref.batch_id,
            manifest.group or "",
            Status("vanished", reason="container group disappeared"),
        )

    def plan(
        self, groups: list[GroupInfo], refs: list[BatchRef], quarantined: list[Quarantined]
    ) -> None:
        s = self.s
        by_batch = {r.batch_id: r for r in refs}
        poisoned = {q.batch_id for q in quarantined}
        now = self.clients.clock.timestamp()
        inspect: list[GroupInfo] = []
        current: set[tuple[str, int]] = set()
        for g in groups:
            if g.batch_id in poisoned:
                # Its batch cannot be read: neither finished nor deleted blindly.
                self.report.left_alone.append(g.name)
                continue
            ref = by_batch.get(g.batch_id or "")
            if ref is None:
                age = now - (g.created or 0)
                if age >= s.orphan_grace_minutes * 60:
                    self.report.orphans.append(g.name)
                    self._delete_group(g.name, "orphan: no batch in processing")
                continue
            if ref.state is State.LAUNCHED and g.attempt == ref.attempt:
                inspect.append(g)
                current.add((ref.batch_id, ref.attempt))
            elif (ref.state is State.LAUNCHED and g.attempt < ref.attempt) or (
                ref.state in (State.CLAIMED, State.CLAIMING, State.FINISHING)
                and g.attempt <= ref.attempt
            ):
                self._delete_group(g.name, f"stale attempt {g.attempt} of batch {ref.batch_id}")
        vanished = [
            r for r in refs if r.state is State.LAUNCHED and (r.batch_id, r.attempt) not in current
        ]
        with ThreadPoolExecutor(max_workers=SWEEP_CONCURRENCY, thread_name_prefix="sweep") as pool:
            futures: list[tuple[str, str | None, Future[None]]] = [
                (g.batch_id or "?", g.name, pool.submit(self.inspect, g)) for g in inspect
            ]
            futures += [
                (r.batch_id, r.group, pool.submit(self.check_vanished, r)) for r in vanished
            ]
            futures += [
                (r.batch_id, None, pool.submit(self._finish_ref, r))
                for r in refs
                if r.state is State.FINISHING
            ]
            for batch_id, group, fut in futures:
                try:
                    fut.result()
                except ManifestUnreadable as exc:
                    # Found unreadable when its outcome was to be recorded: nothing recorded,
                    # and its group (terminated or not) neither deleted nor relaunched.
                    self._quarantine(Quarantined(batch_id, exc.reason))
                    if group:
                        self.report.left_alone.append(group)
                except Exception as exc:
                    logger.exception("janitor: batch %s: step failed", batch_id)
                    self.report.errors.append(f"batch {batch_id}: {type(exc).__name__}: {exc}")

    def _finish_ref(self, ref: BatchRef) -> None:
        found = self.clients.store.read(ref.batch_id)
        if found and found[0].state is State.FINISHING:
            self.finish(*found)

    def hand_back(self) -> None:
        """Batches waiting for a (re)launch or left `claiming` go back to the launch step,
        which runs under the poll lease; if a poll holds it, that poll or a later sweep will."""
        stuck_before = self.clients.clock.now() - timedelta(seconds=self.s.stuck_claim_seconds)
        refs, _ = self.clients.store.triage(self.clients.store.list_refs())
        waiting = [
            r.batch_id
            for r in refs
            if r.state is State.CLAIMED
            or (r.state is State.CLAIMING and r.last_modified <= stuck_before)
        ]
        if not waiting or not self._act(f"hand {len(waiting)} batch(es) back to launch"):
            return
        tick = launcher_poll.recover(self.clients)
        self.report.handed_back = [x["batch_id"] for x in tick.launched if x["launched"]]
        self.report.errors += tick.errors
        known = {q["batch"] for q in self.report.quarantined}
        self.report.quarantined += [q for q in tick.quarantined if q["batch"] not in known]

    def _work(self, groups: list[GroupInfo], listed: list[BatchRef]) -> None:
        refs, quarantined = self.clients.store.triage(listed)
        for q in quarantined:
            self._quarantine(q)
        self.report.groups_seen, self.report.batches_seen = len(groups), len(listed)
        self.report.groups_by_profile = dict(sorted(Counter(g.profile for g in groups).items()))
        self.plan(groups, refs, quarantined)
        self.hand_back()

    def send_notifications(self, entries: list[tuple[str, str]] | None = None) -> None:
        """Send the completion notifications the outbox holds (cleanup/notify.py)."""
        done = notify.deliver(self.clients, entries, dry_run=self.dry_run)
        self.report.notified += done.sent
        self.report.notify_pending += done.pending
        if done.left_for_next_sweep:
            self.report.notify_pending.append(
                {
                    "batch": "*",
                    "target": "*",
                    "error": f"{done.left_for_next_sweep} left for the next sweep (time budget)",
                }
            )

    def run(self) -> SweepReport:
        hook, store = self.clients.hook, self.clients.store
        groups = [g for g in hook.list_groups() if g.batch_id and not g.kept]
        refs = store.list_refs()
        outbox = notify.pending_entries(self.clients) if self.s.notify_targets else []
        if not groups and not refs and not outbox:
            self.report.idle = True
            return self.report
        if self.dry_run:
            # A dry run writes nothing, not even the lock blob, so it needs no lease.
            self._work(groups, refs)
            self.send_notifications(outbox)
            return self.report
        lease = LeaseLock(self.clients.container, self.s.janitor_lock_blob, self.s.lease_seconds)
        if not lease.try_acquire():
            self.report.lease_busy = True
            logger.info("janitor: another sweep holds %s", lease.name)
            return self.report
        with lease:
            # Listed again under the lease: another sweep may have acted since.
            self._work(
                [g for g in hook.list_groups() if g.batch_id and not g.kept], store.list_refs()
            )
            if self.s.notify_targets:
                self.send_notifications()  # listed again: this sweep's finished batches are in it now
        return self.report


@telemetry.traced_sweep
def sweep(clients: Clients, dry_run: bool = False) -> SweepReport:
    """Run one janitor sweep; see the module docstring."""
    started = time.monotonic()
    report = Sweep(clients, dry_run).run()
    report.stall = alarm.check_stall(clients)  # every sweep, idle or not: see cleanup/alarm.py
    report.duration_seconds = round(time.monotonic() - started, 3)
    logger.info(
        "janitor%s: %s group(s), %s batch(es): %s finished, %s relaunched, %s failed, "
        "%s deleted, %s error(s)",
        " (dry run)" if dry_run else "",
        report.groups_seen,
        report.batches_seen,
        len(report.finished),
        len(report.relaunched),
        len(report.failed),
        len(report.deleted),
        len(report.errors),
    )
    return report
