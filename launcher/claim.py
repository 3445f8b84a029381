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
from dataclasses import dataclass, field
from enum import Enum

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

import profiles
from launcher import telemetry
from launcher.batch import (
    FileEntry,
    Manifest,
    ManifestConflict,
    State,
    iso,
    new_batch_id,
    safe_relative_blob,
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
from launcher.intake import Plan, Scan, plan_batches, scan

# Listing and planning live in launcher.intake; these names stay importable from here.
__all__ = ["ClaimResult", "Plan", "Scan", "claim", "plan_batches", "resolve_claiming", "scan"]

logger = logging.getLogger(__name__)
# User file names go into log lines with %r: a name may hold newlines or control characters,
# which must not forge or split log lines.


class FileClaim(Enum):
    OWNED = "owned"
    DROPPED = "dropped"  # left in (or gone from) incoming; not part of this batch
    SKIPPED = "skipped"  # never touched (lease lost before it started)


@dataclass(frozen=True)
class Settled:
    """A file's answer. `discard`: a copy of it may sit in the batch folder and must go, but
    only after the manifest write that proves this claimer still owns the batch (see
    `_finish`). `refused`: storage's error code when it refused to copy or delete the file."""

    claim: FileClaim
    discard: bool = False
    refused: str | None = None


OWNED = Settled(FileClaim.OWNED)


def _copy_file(
    clients: Clients,
    entry: FileEntry,
    dest: str,
    lease: LeaseLock | None,
    recovering: bool,
) -> Settled | None:
    """Step 1 of a file's claim: copy exactly the listed version. None means "copied, now
    delete the source"; anything else is the file's final answer."""
    container = clients.container
    if lease is not None and lease.lost:
        return Settled(FileClaim.SKIPPED)
    try:
        copied = copy_blob(container, entry.source, entry.etag, dest)
    except HttpResponseError as exc:
        if not is_refusal(exc):
            raise
        # Recovery: a finished copy of a version that is no longer the one in incoming/ is
        # kept, as for CHANGED below; one of the version still there is not ours.
        if recovering and _copied(clients, dest) and not _unchanged(clients, entry):
            return OWNED
        return _refused(entry, exc, discard=recovering)
    if copied is Outcome.MISSING:
        # Normal claim: the user removed it first. Recovery: the crashed (or stalled) claimer
        # may have deleted it after copying; the copy tells.
        if recovering and _copied(clients, dest):
            return OWNED
        return Settled(FileClaim.DROPPED, discard=recovering)
    if copied is Outcome.CHANGED:
        # Recovery: the earlier claimer may have copied and deleted this version before the
        # user dropped the same name again, or the user replaced it before that delete. Storage
        # cannot tell the two apart, so a finished copy of this version is kept: at worst a
        # version its user replaced is processed too; none is ever lost.
        if recovering and _copied(clients, dest):
            return OWNED
        logger.info("file %r changed during claim: left for the next tick", entry.source)
        return Settled(FileClaim.DROPPED, discard=recovering)
    return None


def _after_delete(entry: FileEntry, deleted: Outcome | BaseException, recovering: bool) -> Settled:
    """Step 2: the conditional delete of the source decides whether the file is ours.

    A live claim that finds the source changed or gone after its copy drops the file: the user
    replaced or removed it. Recovery keeps it instead: its copy is complete, and the source may
    have been deleted by the claimer it took over from (whose delete was still in flight), so
    dropping could lose the only copy; keeping at worst processes a version its user replaced."""
    if isinstance(deleted, HttpResponseError) and is_refusal(deleted):
        return _refused(entry, deleted, discard=True)
    if isinstance(deleted, BaseException):
        raise deleted
    if deleted in (Outcome.DONE, Outcome.AMBIGUOUS_DONE) or recovering:
        return OWNED
    logger.info("file %r %s before its delete: dropped", entry.source, deleted.value)
    return Settled(FileClaim.DROPPED, discard=True)


def _refused(entry: FileEntry, exc: HttpResponseError, discard: bool) -> Settled:
    """Storage refused to copy or delete the file (archive tier, a lease held by somebody else,
    immutability, no permission): it stays in incoming/ untouched and the batch goes on without
    it, instead of the whole batch waiting in `claiming` for a file that cannot move."""
    code = getattr(exc, "error_code", None) or exc.status_code
    code = str(getattr(code, "value", code))
    logger.warning(
        "file %r cannot be claimed: storage refused (%s); left in incoming", entry.source, code
    )
    return Settled(FileClaim.DROPPED, discard=discard, refused=code)


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
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # source -> (etag, code)


# Conditional deletes per Blob Batch request. The copy task that fills a chunk sends it, so
# deletes overlap the copies still running (sources leave incoming/ soon after their copy lands)
# while a claim stays near one request per file (1 + 1/64).
DELETE_CHUNK = 64


class _DeleteStream:
    """Deletes the sources of copied files in Blob Batch requests of DELETE_CHUNK: sent by the
    copy task that completes a chunk (so they do not queue behind the remaining copies in the
    pool), and the remainder by `flush` once every copy is done."""

    def __init__(self, clients: Clients, manifest: Manifest, recovering: bool) -> None:
        self.clients = clients
        self.files = manifest.files
        self.recovering = recovering
        self.results: dict[int, Settled | BaseException] = {}
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
            result: Settled | BaseException
            try:
                result = _after_delete(self.files[i], deleted, self.recovering)
            except Exception as exc:
                result = exc
            with self._lock:
                self.results[i] = result


@dataclass
class _Settlement:
    owned: list[FileEntry] = field(default_factory=list)
    dropped: int = 0
    skipped: int = 0
    errors: int = 0
    discard: list[str] = field(default_factory=list)  # blob names relative to the batch folder
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)


def _settle_files(
    clients: Clients,
    manifest: Manifest,
    lease: LeaseLock | None,
    recovering: bool,
) -> _Settlement:
    """Copy every file concurrently; delete the copied sources in Blob Batch requests as the
    copies land (see `_DeleteStream`): about one request per file instead of two. Nothing here
    deletes a copy: that waits for the manifest write in `_finish`."""
    folder = clients.store.folder(manifest.batch_id)
    deletes = _DeleteStream(clients, manifest, recovering)

    def copy(index: int) -> Settled | None:
        entry = manifest.files[index]
        result = _copy_file(clients, entry, folder + entry.blob, lease, recovering)
        if result is None:
            deletes.add(index)
        return result

    copied = clients.runner.map(copy, range(len(manifest.files)))
    deletes.flush()
    out = _Settlement()
    for index, (entry, first) in enumerate(zip(manifest.files, copied, strict=True)):
        res = deletes.results.get(index) if first is None else first
        if isinstance(res, BaseException) or res is None:
            logger.warning("batch %s: claim of %r failed: %s", manifest.batch_id, entry.source, res)
            out.errors += 1
            continue
        if res.discard:
            out.discard.append(entry.blob)
        if res.refused:
            out.refused[entry.source] = (entry.etag, res.refused)
        if res.claim is FileClaim.OWNED:
            out.owned.append(entry)
        elif res.claim is FileClaim.DROPPED:
            out.dropped += 1
        else:
            out.skipped += 1
    return out


def _discard(clients: Clients, manifest: Manifest) -> bool:
    """Delete the copies the manifest lists as discarded. True if none is left."""
    folder = clients.store.folder(manifest.batch_id)
    results = clients.runner.map(
        lambda name: delete_quietly(clients.container, folder + name), manifest.discarded
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        logger.warning(
            "batch %s: %s discarded copy(ies) not deleted yet: %s",
            manifest.batch_id,
            len(failed),
            failed[0],
        )
    return not failed


def _finish(clients: Clients, manifest: Manifest, etag: str, settled: _Settlement) -> str | None:
    """Record the owned files (`claimed`), or roll back an empty batch; with errors the batch
    is left `claiming` for recovery. Returns the new etag, or None.

    The fence: every write here is conditional on the manifest version this claimer last
    wrote, and copies are deleted only after such a write succeeded. A claimer that stalled
    while recovery took its batch over (recovery's first act is a manifest write) fails that
    condition with ManifestConflict and changes nothing; so does a recovery overtaken by
    another. Raises ManifestConflict."""
    if settled.errors:
        return None
    manifest.files = settled.owned
    manifest.discarded = sorted(set(manifest.discarded) | set(settled.discard))
    if settled.owned:
        manifest.state = State.CLAIMED
        _check_params(clients, manifest)
        etag = clients.store.update(manifest, etag)
        if manifest.discarded:
            _discard(clients, manifest)
        return etag
    if manifest.discarded:
        # Written first, so that a crash before the manifest is gone leaves a batch whose
        # recovery has nothing to claim and still knows which copies to delete.
        etag = clients.store.update(manifest, etag)
        if not _discard(clients, manifest):
            return None
    clients.store.delete(manifest.batch_id, etag)
    logger.info("batch %s: nothing left to claim, rolled back", manifest.batch_id)
    return None


def _check_params(clients: Clients, manifest: Manifest) -> None:
    """Folder mode with JOB_PROFILES: the folder's parameters file (one GET of its claimed
    copy), checked against its profile's declarations, becomes the batch's ML_PARAM_*
    environment. An invalid file sends the batch straight to failed/ (state `finishing`: the
    janitor moves it, files kept) with a reason naming the parameter."""
    if not manifest.params_file or manifest.folder is None:
        return
    name = f"{manifest.folder}/{manifest.params_file}"
    entry = next((f for f in manifest.files if f.name == name), None)
    data = None
    if entry is not None:
        blob = clients.store.folder(manifest.batch_id) + entry.blob
        data = clients.container.get_blob_client(blob).download_blob().readall()
    specs = clients.settings.profile_params(manifest.profile)
    env, why = profiles.check_params(specs, data)
    if not why:
        manifest.params = env
        return
    manifest.state, manifest.target = State.FINISHING, "failed"
    where = f"parameters file {name!r}" if entry is not None else "no parameters file"
    manifest.reason = f"{where}: {why} (profile {manifest.profile!r})"
    logger.warning(
        "batch %s: %s: not launched, sent to failed/", manifest.batch_id, manifest.reason
    )


@telemetry.traced_claim
def claim(clients: Clients, plan: Plan, lease: LeaseLock) -> ClaimResult:
    """Claim one planned batch. The caller holds the poll lease."""
    s = clients.settings
    now = clients.clock.now()
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
        retry_of=min((c.retry_of for c in plan.files if c.retry_of), default=None),
        profile=plan.profile,
        params_file=s.params_file if s.job_profiles and s.batch_mode == "folder" else None,
    )
    etag = clients.store.create(manifest)
    # The manifest is written; now prove the lease is still ours before touching a file. A poll
    # that takes the lease after this renewal lists processing/ after it, sees this batch
    # `claiming` and leaves its files alone (poll.held_by_open_claims), so no two claims ever race
    # on one file. If the lease is already gone, a new holder may have listed processing/
    # before this manifest existed: nothing has been touched yet, so the batch is rolled back.
    if not lease.confirm():
        try:
            clients.store.delete(batch_id, etag)
            logger.warning("batch %s: poll lease lost before the first copy: rolled back", batch_id)
        except ManifestConflict:
            logger.warning("batch %s: poll lease lost; recovery has taken the batch", batch_id)
        return ClaimResult(None, None, skipped=len(entries))
    settled = _settle_files(clients, manifest, lease, recovering=False)
    try:
        new_etag = _finish(clients, manifest, etag, settled)
    except ManifestConflict:
        # Recovery took this batch over while we stalled (or lost the lease): it owns every
        # file now, and we touch nothing more.
        logger.warning(
            "batch %s: taken over by recovery during the claim; leaving it to it", batch_id
        )
        new_etag = None
    if settled.errors:
        logger.warning(
            "batch %s: %s file(s) uncertain; left claiming for recovery", batch_id, settled.errors
        )
    result = ClaimResult(
        manifest if new_etag else None,
        new_etag,
        len(settled.owned),
        settled.dropped,
        settled.skipped,
        settled.errors,
        settled.refused,
    )
    if new_etag:
        logger.info(
            "batch %s: claimed %s file(s) (%s dropped, %s skipped)",
            batch_id,
            len(settled.owned),
            settled.dropped,
            settled.skipped,
        )
    return result


def resolve_claiming(
    clients: Clients, batch_id: str, seen_etag: str | None = None
) -> tuple[Manifest, str] | None:
    """Finish a batch a crashed or stalled tick left in `claiming`. Returns the `claimed`
    manifest, or None if nothing was left (rolled back), it could not be settled yet, or
    somebody else moved it on.

    `seen_etag` is the manifest version whose age made the caller call it stuck: a manifest
    changed since is not stuck. Recovery first takes the batch over with a conditional manifest
    write, before touching any file: from then on the claimer it replaces can no longer record
    or roll back anything (its writes are conditional on the version it wrote), so the two
    never both believe they own, or both abandon, a file. Raises ManifestUnreadable."""
    found = clients.store.read(batch_id)
    if found is None:
        return None
    manifest, etag = found
    if manifest.state is not State.CLAIMING:
        return found
    if seen_etag is not None and etag.strip('"') != seen_etag.strip('"'):
        return None
    manifest.takeovers += 1
    try:
        etag = clients.store.update(manifest, etag)
    except ManifestConflict:
        return None
    settled = _settle_files(clients, manifest, None, recovering=True)
    logger.info(
        "batch %s: recovered claim: %s owned, %s dropped, %s uncertain",
        batch_id,
        len(settled.owned),
        settled.dropped,
        settled.errors,
    )
    try:
        new_etag = _finish(clients, manifest, etag, settled)
    except ManifestConflict:
        logger.warning("batch %s: recovery overtaken by another; leaving it to that", batch_id)
        return None
    return (manifest, new_etag) if new_etag else None
