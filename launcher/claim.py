"""The claim protocol: move settled files from incoming/ into exactly one batch, crash-safely.

1. Write the manifest `processing/<batch>/_batch.json` first (create-only), state `claiming`,
   listing each file's source name, etag and size.
2. Server-side copy of exactly each file's etag into the batch folder (all files concurrently),
   then delete each copied source only if its etag is unchanged (Blob Batch requests of 64
   conditional deletes, sent as the copies land). **A successful conditional delete is what makes a file
   ours**: a file overwritten mid-claim fails the condition and stays in incoming for the next
   tick (its copy is removed and it leaves the manifest); a file somebody else deleted leaves the
   batch too.
3. Set the manifest to `claimed` with the files that are ours (an empty batch is rolled back).

Between 1 and 2 the poll lease is renewed synchronously (`LeaseLock.confirm`): a later lease
holder then sees this manifest and leaves its files alone, so two claims never compete for a
file even after a lease was lost (a lost delete answer could otherwise make both keep it).

A crash anywhere leaves a `claiming` manifest. `resolve_claiming` finishes such a batch file by
file (finish the copy and delete, or drop the file) once the manifest is older than
STUCK_CLAIM_SECONDS, so a slow but live tick is never raced.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties

from config import Settings
from launcher import telemetry
from launcher.batch import (
    FileEntry,
    Manifest,
    ManifestConflict,
    State,
    iso,
    new_batch_id,
    safe_relative_blob,
    utcnow,
)
from launcher.blobs import (
    LeaseLock,
    Outcome,
    copy_blob,
    delete_many_if_unchanged,
    delete_quietly,
    is_refusal,
)
from launcher.clients import Clients

logger = logging.getLogger(__name__)
# User file names go into log lines with %r: a name may hold newlines or control characters,
# which must not forge or split log lines.


@dataclass(frozen=True)
class Candidate:
    name: str
    relative: str
    etag: str
    size: int
    last_modified: datetime


@dataclass
class Plan:
    files: list[Candidate]
    folder: str | None = None


@dataclass
class Scan:
    claimable: list[Candidate] = field(default_factory=list)
    unsettled: int = 0
    markers: int = 0
    waiting_folders: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # name -> why storage will not move it


def is_folder_marker(blob: BlobProperties) -> bool:
    """Zero-byte 'directory' blobs made by tools and by hierarchical-namespace accounts."""
    meta = blob.metadata or {}
    return blob.name.endswith("/") or meta.get("hdi_isfolder", "").lower() == "true"


def blocked_reason(blob: BlobProperties) -> str | None:
    """Why storage would refuse to move this blob, as the listing already shows: an archived
    (or rehydrating) blob cannot be copied, and one leased by somebody else cannot be deleted.
    Such files are left alone instead of being tried, and failing, on every tick, which also
    keeps a tick that finds nothing else idle (one request)."""
    if str(blob.blob_tier or "").lower() == "archive":
        return "archive tier"
    if str(blob.lease.state or "").lower() in ("leased", "breaking"):
        return "leased by somebody else"
    return None


def scan(settings: Settings, blobs: Iterable[BlobProperties], now: datetime) -> Scan:
    """Sort a listing of incoming/ into what may be claimed now and what must wait."""
    result = Scan()
    settle = timedelta(seconds=settings.batch_settle_seconds)
    prefix = settings.incoming_prefix
    by_folder: dict[str, list[tuple[Candidate, bool]]] = defaultdict(list)
    loose: list[tuple[Candidate, bool]] = []
    for blob in blobs:
        if is_folder_marker(blob):
            result.markers += 1
            continue
        why = blocked_reason(blob)
        if why is not None:
            result.blocked[blob.name] = why
            continue
        relative = blob.name[len(prefix) :]
        cand = Candidate(blob.name, relative, str(blob.etag), int(blob.size), blob.last_modified)
        settled = blob.last_modified <= now - settle
        if not settled:
            result.unsettled += 1
        if settings.batch_mode == "folder" and "/" in relative:
            by_folder[relative.split("/", 1)[0]].append((cand, settled))
        else:
            loose.append((cand, settled))
    result.claimable += [c for c, ok in loose if ok]
    marker = settings.batch_ready_marker
    for folder, items in by_folder.items():
        ready = all(ok for _, ok in items) and (
            marker is None or any(c.relative == f"{folder}/{marker}" for c, _ in items)
        )
        if ready:
            result.claimable += [c for c, _ in items]
        else:
            result.waiting_folders.append(folder)
    return result


def plan_batches(settings: Settings, claimable: list[Candidate], limit: int) -> list[Plan]:
    """Group claimable files into at most `limit` batches.

    tick mode: files in name order, cut at BATCH_MAX_FILES / BATCH_MAX_BYTES (a file larger than
    the byte cap travels alone). folder mode: one batch per top-level folder, whole (caps do not
    split a folder); a loose file directly under incoming/ is a batch of its own.
    """
    plans: list[Plan] = []
    if limit <= 0:
        return plans
    ordered = sorted(claimable, key=lambda c: c.name)
    if settings.batch_mode == "folder":
        folders: dict[str, list[Candidate]] = defaultdict(list)
        for c in ordered:
            if "/" in c.relative:
                folders[c.relative.split("/", 1)[0]].append(c)
            else:
                plans.append(Plan([c]))
        plans += [Plan(files, folder) for folder, files in folders.items()]
        plans.sort(key=lambda p: p.files[0].name)
        return plans[:limit]
    current: list[Candidate] = []
    size = 0
    for c in ordered:
        if current and (
            len(current) >= settings.batch_max_files or size + c.size > settings.batch_max_bytes
        ):
            plans.append(Plan(current))
            if len(plans) >= limit:
                return plans
            current, size = [], 0
        current.append(c)
        size += c.size
    if current:
        plans.append(Plan(current))
    return plans[:limit]


class FileClaim(Enum):
    OWNED = "owned"
    DROPPED = "dropped"  # left in (or gone from) incoming; not part of this batch
    SKIPPED = "skipped"  # never touched (lease lost before it started)


def _copy_file(
    clients: Clients,
    entry: FileEntry,
    dest: str,
    lease: LeaseLock | None,
    recovering: bool,
) -> FileClaim | None:
    """Step 1 of a file's claim: copy exactly the listed version. None means "copied, now
    delete the source"; anything else is the file's final answer."""
    container = clients.container
    if lease is not None and lease.lost:
        return FileClaim.SKIPPED
    try:
        copied = copy_blob(container, entry.source, entry.etag, dest)
    except HttpResponseError as exc:
        if not is_refusal(exc):
            raise
        # Recovery: a finished copy of a version that is no longer the one in incoming/ is
        # kept, as for CHANGED below; one of the version still there is not ours.
        if recovering and _copied(clients, dest) and not _unchanged(clients, entry):
            return FileClaim.OWNED
        return _refused(clients, entry, dest if recovering else None, exc)
    if copied is Outcome.MISSING:
        # Normal claim: the user (or another claimer) removed it first. Recovery: our crashed
        # run may have deleted it after copying; the copy tells.
        if recovering and _copied(clients, dest):
            return FileClaim.OWNED
        return FileClaim.DROPPED
    if copied is Outcome.CHANGED:
        # Recovery: our crashed run may have copied and deleted this version before the user
        # dropped the same name again, or the user replaced it before that delete. Storage
        # cannot tell the two apart, so a finished copy of this version is kept: at worst a
        # version its user replaced is processed too; none is ever lost.
        if recovering and _copied(clients, dest):
            return FileClaim.OWNED
        logger.info("file %r changed during claim: left for the next tick", entry.source)
        return FileClaim.DROPPED
    return None


def _after_delete(
    clients: Clients, entry: FileEntry, dest: str, deleted: Outcome | BaseException
) -> FileClaim:
    """Step 2: the conditional delete of the source decides whether the file is ours."""
    if isinstance(deleted, HttpResponseError) and is_refusal(deleted):
        return _refused(clients, entry, dest, deleted)
    if isinstance(deleted, BaseException):
        raise deleted
    if deleted in (Outcome.DONE, Outcome.AMBIGUOUS_DONE):
        return FileClaim.OWNED
    # Overwritten after our copy (stays in incoming) or deleted by somebody else: not ours.
    logger.info("file %r %s before its delete: dropped", entry.source, deleted.value)
    delete_quietly(clients.container, dest)
    return FileClaim.DROPPED


def _refused(
    clients: Clients, entry: FileEntry, copy: str | None, exc: HttpResponseError
) -> FileClaim:
    """Storage refused to copy or delete the file (archive tier, a lease held by somebody else,
    no permission): it stays in incoming/ untouched and the batch goes on without it, instead
    of the whole batch waiting in `claiming` for a file that cannot move."""
    code = getattr(exc, "error_code", None) or exc.status_code
    code = getattr(code, "value", code)
    logger.warning(
        "file %r cannot be claimed: storage refused (%s); left in incoming", entry.source, code
    )
    if copy is not None:
        delete_quietly(clients.container, copy)
    return FileClaim.DROPPED


def _unchanged(clients: Clients, entry: FileEntry) -> bool:
    """True if the source still is the version the manifest lists."""
    try:
        props = clients.container.get_blob_client(entry.source).get_blob_properties()
    except ResourceNotFoundError:
        return False
    return str(props.etag) == entry.etag


def _copied(clients: Clients, name: str) -> bool:
    """True if `name` holds a complete copy (a pending or failed copy is not one)."""
    try:
        props = clients.container.get_blob_client(name).get_blob_properties()
    except ResourceNotFoundError:
        return False
    return props.copy.status in (None, "success")


@dataclass
class ClaimResult:
    manifest: Manifest | None
    etag: str | None
    owned: int = 0
    dropped: int = 0
    skipped: int = 0
    errors: int = 0


# Conditional deletes per Blob Batch request. The copy task that fills a chunk sends it, so
# deletes overlap the copies still running (sources leave incoming/ soon after their copy lands)
# while a claim stays near one request per file (1 + 1/64).
DELETE_CHUNK = 64


class _DeleteStream:
    """Deletes the sources of copied files in Blob Batch requests of DELETE_CHUNK: sent by the
    copy task that completes a chunk (so they do not queue behind the remaining copies in the
    pool), and the remainder by `flush` once every copy is done."""

    def __init__(self, clients: Clients, manifest: Manifest, folder: str) -> None:
        self.clients = clients
        self.files = manifest.files
        self.folder = folder
        self.results: dict[int, FileClaim | BaseException] = {}
        self._pending: list[int] = []
        self._lock = threading.Lock()

    def add(self, index: int) -> None:
        with self._lock:
            self._pending.append(index)
            if len(self._pending) < DELETE_CHUNK:
                return
            chunk, self._pending = self._pending, []
        self._send(chunk)

    def flush(self) -> None:
        with self._lock:
            chunk, self._pending = self._pending, []
        if chunk:
            self._send(chunk)

    def _send(self, chunk: list[int]) -> None:
        pairs = [(self.files[i].source, self.files[i].etag) for i in chunk]
        outcomes: list[Outcome | BaseException]
        try:
            outcomes = delete_many_if_unchanged(self.clients.container, pairs)
        except Exception as exc:  # e.g. a malformed batch answer: every delete is uncertain
            outcomes = [exc] * len(chunk)
        for i, deleted in zip(chunk, outcomes, strict=True):
            entry = self.files[i]
            result: FileClaim | BaseException
            try:
                result = _after_delete(self.clients, entry, self.folder + entry.blob, deleted)
            except Exception as exc:
                result = exc
            with self._lock:
                self.results[i] = result


def _settle_files(
    clients: Clients,
    manifest: Manifest,
    lease: LeaseLock | None,
    recovering: bool,
) -> tuple[list[FileEntry], int, int, int]:
    """Copy every file concurrently; delete the copied sources in Blob Batch requests as the
    copies land (see `_DeleteStream`): about one request per file instead of two."""
    folder = clients.store.folder(manifest.batch_id)
    deletes = _DeleteStream(clients, manifest, folder)

    def copy(index: int) -> FileClaim | None:
        entry = manifest.files[index]
        result = _copy_file(clients, entry, folder + entry.blob, lease, recovering)
        if result is None:
            deletes.add(index)
        return result

    copied = clients.runner.map(copy, range(len(manifest.files)))
    deletes.flush()
    owned, dropped, skipped, errors = [], 0, 0, 0
    for index, (entry, first) in enumerate(zip(manifest.files, copied, strict=True)):
        res = deletes.results.get(index) if first is None else first
        if isinstance(res, BaseException) or res is None:
            logger.warning("batch %s: claim of %r failed: %s", manifest.batch_id, entry.source, res)
            errors += 1
        elif res is FileClaim.OWNED:
            owned.append(entry)
        elif res is FileClaim.DROPPED:
            dropped += 1
        else:
            skipped += 1
    return owned, dropped, skipped, errors


def _finish(
    clients: Clients, manifest: Manifest, etag: str, owned: list[FileEntry], errors: int
) -> str | None:
    """Record the owned files: `claimed`, or roll back an empty batch. With errors the batch is
    left `claiming` so recovery settles the uncertain files later."""
    if errors:
        return None
    manifest.files = owned
    if not owned:
        clients.store.delete(manifest.batch_id)
        logger.info("batch %s: nothing left to claim, rolled back", manifest.batch_id)
        return None
    manifest.state = State.CLAIMED
    return clients.store.update(manifest, etag)


@telemetry.traced_claim
def claim(clients: Clients, plan: Plan, lease: LeaseLock) -> ClaimResult:
    """Claim one planned batch. The caller holds the poll lease."""
    s = clients.settings
    now = utcnow()
    batch_id = new_batch_id(now)
    entries = [
        FileEntry(
            source=c.name,
            name=c.relative,
            blob=safe_relative_blob(s, batch_id, c.relative, c.name),
            etag=c.etag,
            size=c.size,
        )
        for c in plan.files
    ]
    manifest = Manifest(
        batch_id=batch_id,
        state=State.CLAIMING,
        created=iso(now) or "",
        updated=iso(now) or "",
        files=entries,
        mode=s.batch_mode,
        folder=plan.folder,
        ready_marker=s.batch_ready_marker,
    )
    etag = clients.store.create(manifest)
    # The manifest is written; now prove the lease is still ours before touching a file. A poll
    # that takes the lease after this renewal lists processing/ after it, sees this batch
    # `claiming` and leaves its files alone (poll._in_open_claims), so no two claims ever race
    # on one file. If the lease is already gone, a new holder may have listed processing/
    # before this manifest existed: nothing has been touched yet, so the batch is rolled back.
    if not lease.confirm():
        clients.store.delete(batch_id)
        logger.warning("batch %s: poll lease lost before the first copy: rolled back", batch_id)
        return ClaimResult(None, None, skipped=len(entries))
    owned, dropped, skipped, errors = _settle_files(clients, manifest, lease, recovering=False)
    try:
        new_etag = _finish(clients, manifest, etag, owned, errors)
    except ManifestConflict:
        logger.warning("batch %s: manifest changed during claim; left to recovery", batch_id)
        new_etag = None
    if errors:
        logger.warning(
            "batch %s: %s file(s) uncertain; left claiming for recovery", batch_id, errors
        )
    result = ClaimResult(
        manifest if new_etag else None, new_etag, len(owned), dropped, skipped, errors
    )
    if new_etag:
        logger.info(
            "batch %s: claimed %s file(s) (%s dropped, %s skipped)",
            batch_id,
            len(owned),
            dropped,
            skipped,
        )
    return result


def resolve_claiming(clients: Clients, batch_id: str) -> tuple[Manifest, str] | None:
    """Finish a batch a crashed tick left in `claiming`. Returns the `claimed` manifest, or None
    if nothing was left (rolled back) or it could not be settled yet."""
    found = clients.store.read(batch_id)
    if found is None:
        return None
    manifest, etag = found
    if manifest.state is not State.CLAIMING:
        return found
    owned, dropped, _skipped, errors = _settle_files(clients, manifest, None, recovering=True)
    logger.info(
        "batch %s: recovered claim: %s owned, %s dropped, %s uncertain",
        batch_id,
        len(owned),
        dropped,
        errors,
    )
    try:
        new_etag = _finish(clients, manifest, etag, owned, errors)
    except ManifestConflict:
        return None
    return (manifest, new_etag) if new_etag else None
