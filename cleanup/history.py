"""Batch history that scales: an index of finished batches, read one page per List Blobs call.

Why: done/ and failed/ keep one folder per batch forever. Listing them and sorting in memory
costs one entry per batch ever run (half a million after a year at one batch a minute) on every
call. Instead, when a batch reaches done/ or failed/, the janitor writes two empty index blobs

    <INDEX_PREFIX>all/<key>        <INDEX_PREFIX><succeeded|failed>/<key>

whose metadata carries the batch's summary (state, name dropped, files, bytes, attempts, times,
exit code, reason). `<key>` is the batch id with every digit of its time part inverted (d ->
9-d) followed by the batch id itself: List Blobs returns names in ascending order, so it yields
the newest batch first, and `maxresults` + the listing's continuation marker page through the
history. A page is one List Blobs call with include=metadata whatever the history's size.

Chosen over the alternatives because it needs nothing Azurite lacks: blob index tags (Find
Blobs by Tags) are only partly emulated by Azurite and return tag matches in no useful order;
date-partitioned folders still need a listing per partition and a merge.

Safety: the key depends only on the batch id, so a rewrite (a retried sweep, a retried batch
whose reason changed) lands on the same two blobs. Each entry is fenced like the manifests
(docs/fencing.md): it is created only if absent (`If-None-Match: *`), and an entry already there
is replaced only by a later version of the batch's manifest, with `If-Match` on the etag just
read. The version (`mlversion`) is the manifest's `updated` (every manifest write stamps it with
storage's clock), then the time of its last retry; so a janitor that stalled and comes back
after another one finished the batch and an operator retried it never puts its older summary
back. `Sweep.finish` writes the entries after the final manifest and before it deletes the
manifest in processing/: a crash in between leaves a `finishing` batch that the next sweep
finishes again, index included (from the final manifest already there, not its own copy).

Existing deployments: batches finished before this version have no index entry. When a listing
reaches the end of the index and the backfill marker (`<INDEX_PREFIX>_backfilled`) is absent,
the older batches are read the old way (folders of done/ and failed/), so nothing disappears;
`python -m cleanup backfill-index` indexes them once (idempotent) and writes the marker.
Active batches (processing/) are few (about MAX_ACTIVE_GROUPS) and are read directly.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient

from launcher.batch import ACTIVE_STATES, Manifest, ManifestUnreadable, State, parse_iso
from launcher.clients import Clients

logger = logging.getLogger(__name__)

ALL = "all"
BACKFILL_MARKER = "_backfilled"
MAX_LABEL = 200  # characters of the dropped name kept in the index (metadata is <= 8 KiB)
MAX_REASON = 400
FINISHED_STATES = (State.SUCCEEDED, State.FAILED)
# Summary fields kept in index metadata, in the order of the page's table.
FIELDS = (
    "batch",
    "state",
    "label",
    "folder",
    "files",
    "bytes",
    "attempt",
    "group",
    "exit_code",
    "reason",
    "claimed_at",
    "launched_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "retry_of",
    "retried_at",
    "profile",
    "vcpu_seconds",
    "gb_seconds",
    "gpu_seconds",
    "cost",
)
# Index metadata outside the row: which manifest version the entry shows (see `record`).
VERSION_KEY = "mlversion"
RACES = 3  # concurrent replacements of one entry before a writer gives up (next rewrite wins)
_INT_FIELDS = ("files", "bytes", "attempt", "exit_code")
_FLOAT_FIELDS = ("duration_seconds", "vcpu_seconds", "gb_seconds", "gpu_seconds", "cost")


def index_key(batch_id: str) -> str:
    """Newest first in List Blobs order: invert the digits of the time part of the id."""
    head, _, _ = batch_id.rpartition("-")
    inverted = "".join(str(9 - int(c)) if c.isdigit() else c for c in head)
    return f"{inverted}-{batch_id}"


def label(m: Manifest) -> str:
    """What the user dropped: the folder (folder mode) or the file names of a tick batch."""
    if m.folder:
        name = m.folder
    elif not m.files:
        name = "(no files)"
    elif len(m.files) == 1:
        name = m.files[0].name
    else:
        name = f"{m.files[0].name} (+{len(m.files) - 1} more)"
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "…"


def summary(m: Manifest, prefix: str) -> dict[str, Any]:
    """One row of the history, as the API, the CLI and the page show it."""
    first = m.attempts[0] if m.attempts else None
    last = m.attempts[-1] if m.attempts else None
    reason = m.reason or (m.last_error or {}).get("message") or (last.reason if last else None)
    usage = m.cost or {}
    return {
        "batch": m.batch_id,
        "state": m.state.value,
        "label": label(m),
        "folder": f"{prefix}{m.batch_id}/",
        "files": len(m.files),
        "bytes": sum(f.size for f in m.files),
        "attempt": m.attempt,
        "group": m.group,
        "exit_code": last.exit_code if last else None,
        "reason": reason[:MAX_REASON] if reason else None,
        "claimed_at": m.created,
        "launched_at": (first.launched_at if first else None) or m.launched_at,
        "started_at": last.started_at if last else None,
        "finished_at": m.finished_at or (last.finished_at if last else None),
        "duration_seconds": last.duration_seconds if last else None,
        "retry_of": m.retry_of,
        "retried_at": (m.retried or {}).get("last_at"),
        # The job profile (a later feature adds it to the manifest) and the usage and estimated
        # cost of all attempts (launcher/cost.py; USD at the PRICE_* settings).
        "profile": str(getattr(m, "profile", None) or "default"),
        "vcpu_seconds": usage.get("vcpu_seconds"),
        "gb_seconds": usage.get("gb_seconds"),
        "gpu_seconds": usage.get("gpu_seconds"),
        "cost": usage.get("cost"),
    }


def _to_metadata(row: dict[str, Any]) -> dict[str, str]:
    # Metadata travels as HTTP headers: ASCII only, so every value is percent-encoded.
    return {
        f"ml{k.replace('_', '')}": quote(str(row[k]), safe="") for k in FIELDS if row[k] is not None
    }


def _from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k in FIELDS:
        raw = meta.get(f"ml{k.replace('_', '')}")
        value: Any = unquote(raw) if raw is not None else None
        if value is not None and k in _INT_FIELDS:
            value = int(value) if value.lstrip("-").isdigit() else None
        elif value is not None and k in _FLOAT_FIELDS:
            try:
                value = float(value)
            except ValueError:
                value = None
        row[k] = value
    return row


def entry_version(m: Manifest) -> str:
    """The manifest version an index entry shows: `updated` (stamped with storage's clock by every
    manifest write), then the last retry's time, so that a retry within the same second as the
    finish still counts as newer."""
    return f"{m.updated}~{(m.retried or {}).get('last_at') or ''}"


def _newer(ours: str, stored: str | None) -> bool:
    """Whether version `ours` is later than `stored` (an entry without one predates versions)."""
    if not stored:
        return True
    oldest = datetime.min.replace(tzinfo=UTC)

    def key(value: str) -> tuple[datetime, datetime]:
        updated, _, retried = value.partition("~")
        return (parse_iso(updated) or oldest, parse_iso(retried) or oldest)

    try:
        return key(ours) > key(stored)
    except ValueError:
        return True  # not a version this module wrote


def record(clients: Clients, manifest: Manifest, prefix: str) -> None:
    """Write (or rewrite) the index entries of a finished batch, fenced: see module doc."""
    s = clients.settings
    ours = entry_version(manifest)
    meta = _to_metadata(summary(manifest, prefix)) | {VERSION_KEY: quote(ours, safe="")}
    key = index_key(manifest.batch_id)
    for sub in (manifest.state.value, ALL):
        _put_entry(clients.container.get_blob_client(f"{s.index_prefix}{sub}/{key}"), meta, ours)


def _put_entry(blob: BlobClient, meta: dict[str, str], ours: str) -> bool:
    """Create the entry, or replace it if it shows an older version and is unchanged since it
    was read. False if the entry there is as new or newer (or kept changing: RACES)."""
    for _ in range(RACES):
        try:
            blob.upload_blob(b"", overwrite=False, metadata=meta)  # If-None-Match: *
            return True
        except ResourceExistsError:
            pass
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            continue  # deleted meanwhile: create it
        stored = (props.metadata or {}).get(VERSION_KEY)
        if not _newer(ours, unquote(stored) if stored is not None else None):
            logger.info("index entry %s shows this version or a later one: kept", blob.blob_name)
            return False
        try:
            blob.upload_blob(
                b"",
                overwrite=True,
                metadata=meta,
                etag=props.etag,
                match_condition=MatchConditions.IfNotModified,
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            continue  # another writer got there first: compare with what it wrote
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
    logger.warning("index entry %s kept changing (%s races): not rewritten", blob.blob_name, RACES)
    return False


@dataclass
class Page:
    batches: list[dict[str, Any]] = field(default_factory=list)
    continuation_token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": len(self.batches),
            "batches": self.batches,
            "continuationToken": self.continuation_token,
        }


def _encode_token(phase: str, value: str) -> str:
    raw = json.dumps({"p": phase, "v": value}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, str]:
    """(phase, value); raises ValueError for a token this module did not write."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        phase, value = raw["p"], raw["v"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("continuation token is not valid") from exc
    if phase not in ("index", "legacy") or not isinstance(value, str):
        raise ValueError("continuation token is not valid")
    return phase, value


def active_rows(clients: Clients, state: State | None) -> list[dict[str, Any]]:
    """Batches in processing/, newest first: one listing with metadata, then one manifest read
    per active batch (a handful: they are bounded by MAX_ACTIVE_GROUPS and the claim rate)."""
    refs = [r for r in clients.store.list_refs() if state is None or r.state in (state, None)]
    refs.sort(key=lambda r: r.batch_id, reverse=True)
    prefix = clients.settings.processing_prefix
    rows = []
    for ref, found in zip(
        refs, clients.runner.map(clients.store.read, [r.batch_id for r in refs]), strict=True
    ):
        if isinstance(found, tuple) and (state is None or found[0].state is state):
            rows.append(summary(found[0], prefix))
        elif state is None and (isinstance(found, ManifestUnreadable) or not ref.has_manifest):
            # Quarantined (docs/operations.md): shown, so that nothing waits unseen.
            reason = found.reason if isinstance(found, ManifestUnreadable) else "no manifest"
            rows.append(
                {k: None for k in FIELDS}
                | {
                    "batch": ref.batch_id,
                    "state": "quarantined",
                    "folder": f"{prefix}{ref.batch_id}/",
                    "reason": reason,
                }
            )
    return rows


def list_page(clients: Clients, state: State | None, limit: int, token: str | None = None) -> Page:
    """One page of batches newest first. The first page of all states starts with the active
    batches; finished ones come from the index (one List Blobs call per page)."""
    if state in ACTIVE_STATES:
        return Page(active_rows(clients, state)[:limit])  # few: no paging
    page = Page()
    phase, value = _decode_token(token) if token else ("index", "")
    if token is None and state is None:
        page.batches = active_rows(clients, None)
        if len(page.batches) >= limit:
            # More active batches than a page: the finished ones start on the next page.
            page.batches = page.batches[:limit]
            page.continuation_token = _encode_token("index", "")
            return page
    active = {r["batch"] for r in page.batches}
    room = limit - len(page.batches) if token is None else limit
    if phase == "index":
        sub = state.value if state else ALL
        pager: Any = clients.container.list_blobs(  # a PageIterator: has continuation_token
            name_starts_with=f"{clients.settings.index_prefix}{sub}/",
            include=["metadata"],
            results_per_page=room,
        ).by_page(continuation_token=value or None)
        rows = [_from_metadata(b.metadata or {}) for b in next(pager, [])]
        page.batches += [r for r in rows if r["batch"] and r["batch"] not in active]
        if pager.continuation_token:
            page.continuation_token = _encode_token("index", pager.continuation_token)
            return page
        if (not rows and value) or _backfilled(clients):
            return page
        oldest = rows[-1]["batch"] if rows else ""
        value, room = oldest, room - len(rows)
        if room <= 0:
            page.continuation_token = _encode_token("legacy", oldest)
            return page
    legacy, older = _legacy_rows(clients, state, value, room)
    page.batches += [r for r in legacy if r["batch"] not in active]
    if older == 0 and state is None and phase == "index":
        # Nothing in done/ or failed/ is older than the index: no batch predates it, so the
        # fallback is switched off for good (a new deployment gets here on its first read).
        _mark_backfilled(clients)
    if older > len(legacy) and legacy:
        page.continuation_token = _encode_token("legacy", legacy[-1]["batch"])
    return page


def _backfilled(clients: Clients) -> bool:
    blob = clients.container.get_blob_client(clients.settings.index_prefix + BACKFILL_MARKER)
    try:
        blob.get_blob_properties()
    except ResourceNotFoundError:
        return False
    return True


def _mark_backfilled(clients: Clients) -> None:
    clients.container.upload_blob(
        clients.settings.index_prefix + BACKFILL_MARKER, b"", overwrite=True
    )


def _finished_folders(clients: Clients, state: State | None) -> list[tuple[str, str]]:
    """(batch id, prefix) of every folder in done/ and failed/: the old, linear way."""
    s = clients.settings
    prefixes = [s.done_prefix, s.failed_prefix]
    if state is State.SUCCEEDED:
        prefixes = [s.done_prefix]
    elif state is State.FAILED:
        prefixes = [s.failed_prefix]
    found = []
    for prefix in prefixes:
        for item in clients.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
            batch_id = item.name[len(prefix) :].rstrip("/")
            if item.name.endswith("/") and batch_id:
                found.append((batch_id, prefix))
    return found


def _legacy_rows(
    clients: Clients, state: State | None, older_than: str, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` batches finished before the index existed (older than `older_than`, the
    oldest indexed batch; all if empty), and how many such batches there are."""
    folders = sorted(
        (f for f in _finished_folders(clients, state) if not older_than or f[0] < older_than),
        reverse=True,
    )
    chosen = folders[:limit]

    def read(entry: tuple[str, str]) -> dict[str, Any] | None:
        got = clients.store.read(entry[0], entry[1])
        return summary(got[0], entry[1]) if got else None

    rows = [r for r in clients.runner.map(read, chosen) if isinstance(r, dict)]
    return rows, len(folders)


def backfill(clients: Clients, folders: Iterable[tuple[str, str]] | None = None) -> int:
    """Index every finished batch (idempotent: an entry already there is kept unless it shows an
    older version of the manifest, see `record`), then write the marker that turns the fallback
    off. Returns how many batches were indexed."""
    found = list(folders if folders is not None else _finished_folders(clients, None))

    def one(entry: tuple[str, str]) -> bool:
        got = clients.store.read(entry[0], entry[1])
        if got is None or got[0].state not in FINISHED_STATES:
            return False
        record(clients, got[0], entry[1])
        return True

    results = clients.runner.map(one, found)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} batch(es) not indexed: {errors[0]}")
    _mark_backfilled(clients)
    count = sum(1 for r in results if r is True)
    logger.info("history: indexed %s finished batch(es)", count)
    return count
