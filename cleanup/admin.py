"""The admin operations behind the HTTP endpoints, as plain functions of query parameters.

`function_app.py` only turns an HttpRequest into `params` and a `Reply` into an HttpResponse;
the Functions host enforces the key (auth level FUNCTION: a function key or the master key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from cleanup import history
from cleanup.sweep import SweepReport, sweep
from config import ConfigError, get_settings
from launcher.batch import (
    LOGS_DIR,
    RETRY_OF_METADATA,
    FileEntry,
    Manifest,
    ManifestConflict,
    ManifestUnreadable,
    State,
    iso,
)
from launcher.blobs import Restore, move_blob, restore_blob
from launcher.clients import Clients, get_clients
from launcher.errors import explain
from launcher.launch import CONTAINER_NAME
from launcher.poll import TickReport, poll

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "")


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class BadRequest(ValueError):
    pass


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"query parameter {name} must be true or false, got {params.get(name)!r}")


def _only(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed) - {"code"})
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )


def _clients() -> Clients:
    return get_clients(get_settings())


def _guard(fn: Callable[[Mapping[str, str]], Reply]) -> Callable[[Mapping[str, str]], Reply]:
    """Turn bad parameters into 400 and configuration problems into 500, both with a message."""

    def wrapper(params: Mapping[str, str]) -> Reply:
        try:
            return fn(params)
        except BadRequest as exc:
            return Reply(400, {"error": "BadRequest", "message": str(exc)})
        except ConfigError as exc:
            logger.error("admin endpoint refused: %s", exc)
            return Reply(500, {"error": "InvalidConfiguration", "problems": exc.problems})
        except Exception as exc:
            problem = explain(exc, get_settings())
            if problem is None:
                logger.exception("ops endpoint %s failed", fn.__name__)
                return Reply(
                    500,
                    {
                        "error": "InternalError",
                        "message": f"{type(exc).__name__}; the host log has the details",
                    },
                )
            logger.error("ops endpoint %s: %s", fn.__name__, problem.message)
            return Reply(problem.status, problem.to_dict())

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _report_or_busy(report: SweepReport | TickReport, error: str, what: str) -> Reply:
    if report.lease_busy:
        return Reply(409, {"error": error, "message": f"{what} holds the lease; try again shortly"})
    return Reply(200, report.to_dict())


@_guard
def run_janitor(params: Mapping[str, str]) -> Reply:
    """Run a sweep now; `dryRun=true` reports what it would do and changes nothing."""
    _only(params, ("dryRun",))
    report = sweep(_clients(), dry_run=_flag(params, "dryRun"))
    return _report_or_busy(report, "SweepInProgress", "another janitor sweep")


@_guard
def run_poll(params: Mapping[str, str]) -> Reply:
    """Run a poll tick now."""
    _only(params, ())
    return _report_or_busy(poll(_clients()), "PollInProgress", "another poll tick")


@_guard
def list_batches(params: Mapping[str, str]) -> Reply:
    """One page of batches newest first (see cleanup/history.py): `state=` filters (claiming,
    claimed, launched, finishing, succeeded, failed), `limit=` is the page size (default 100),
    `continuationToken=` (from the previous page) reads the next page."""
    _only(params, ("state", "limit", "continuationToken"))
    state_text = params.get("state", "").strip().lower()
    try:
        state = State(state_text) if state_text else None
    except ValueError:
        raise BadRequest(
            f"state must be one of: {', '.join(s.value for s in State)}; got {state_text!r}"
        ) from None
    try:
        limit = int(params.get("limit", str(DEFAULT_LIST_LIMIT)))
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {params.get('limit')!r}") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    token = params.get("continuationToken") or None
    clients = _clients()  # outside the try: a ConfigError is a ValueError too
    try:
        page = history.list_page(clients, state, limit, token)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return Reply(200, page.to_dict())


def retry_failed(clients: Clients, batch_id: str) -> dict[str, Any]:
    """Put a failed batch's inputs back into incoming/ under their original names, so the next
    poll claims them as a new batch. The failed folder keeps its manifest (recording the retry)
    and logs.

    Never over a user's file: a name that exists in incoming/ (the user dropped a corrected
    file meanwhile) is skipped and reported under `kept`, and the old input stays in the failed
    folder (see `blobs.restore_blob`). Idempotent: a second run restores only what the first
    could not, and records the retry once."""
    s, store = clients.settings, clients.store
    try:
        found = store.read(batch_id, s.failed_prefix)
    except ManifestUnreadable as exc:
        raise BadRequest(f"failed batch {batch_id!r} cannot be retried: {exc.reason}") from None
    if found is None:
        raise BadRequest(f"no failed batch {batch_id!r} under {s.failed_prefix}")
    manifest, etag = found
    folder = store.folder(batch_id, s.failed_prefix)
    container = clients.container

    def restore(entry: FileEntry) -> Restore:
        return restore_blob(
            container,
            folder + entry.blob,
            s.incoming_prefix + entry.name,
            {RETRY_OF_METADATA: batch_id},
        )

    results = clients.runner.map(restore, manifest.files)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(
            f"batch {batch_id}: {len(failures)} input(s) not restored: {failures[0]}"
        )
    restored = [
        s.incoming_prefix + e.name
        for e, r in zip(manifest.files, results, strict=True)
        if r is Restore.RESTORED
    ]
    kept = [
        {
            "file": s.incoming_prefix + e.name,
            "kept_at": folder + e.blob,
            "reason": "a file of that name is in incoming/ (dropped since); not overwritten",
        }
        for e, r in zip(manifest.files, results, strict=True)
        if r is Restore.EXISTS
    ]
    already = sum(1 for r in results if r is Restore.MISSING)
    now = iso(clients.clock.now())
    if restored or kept or manifest.retried is None:
        previous = manifest.retried or {}
        manifest.retried = {
            "first_at": previous.get("first_at") or now,
            "last_at": now,
            "restored": sorted(set(previous.get("restored") or []) | set(restored)),
            "kept": [k["file"] for k in kept],
        }
        try:
            store.update(manifest, etag, s.failed_prefix)
            history.record(clients, manifest, s.failed_prefix)  # the index shows the retry too
        except ManifestConflict:
            logger.warning("batch %s: retried concurrently; its record is the other's", batch_id)
    for k in kept:
        logger.warning(
            "batch %s: %s exists in incoming/: its failed input stays at %s",
            batch_id,
            k["file"],
            k["kept_at"],
        )
    logger.info(
        "batch %s: %s input(s) put back into %s, %s kept, %s restored earlier",
        batch_id,
        len(restored),
        s.incoming_prefix,
        len(kept),
        already,
    )
    return {"batch": batch_id, "restored": restored, "kept": kept, "restored_earlier": already}


@dataclass(frozen=True)
class AttemptLogs:
    batch: str
    attempt: int
    source: str  # the saved log blob, or "live from group NAME"
    text: str


def find_batch(clients: Clients, batch_id: str) -> tuple[Manifest, str]:
    """A batch's manifest and its folder's prefix, wherever it is (processing/, done/, failed/)."""
    s = clients.settings
    for prefix in (s.processing_prefix, s.done_prefix, s.failed_prefix):
        try:
            found = clients.store.read(batch_id, prefix)
        except ManifestUnreadable as exc:
            raise BadRequest(f"batch {batch_id} is quarantined: {exc.reason}") from None
        if found is not None:
            return found[0], prefix
    raise BadRequest(
        f"no batch {batch_id!r} under {s.processing_prefix}, {s.done_prefix} or {s.failed_prefix}"
    )


def batch_logs(clients: Clients, batch_id: str, attempt: int | None = None) -> AttemptLogs:
    """The container log of one attempt (default: the latest): the copy the janitor saved
    under `_logs/`, or, while the attempt still runs, the live log from its group."""
    manifest, prefix = find_batch(clients, batch_id)
    number = attempt if attempt is not None else manifest.attempt
    if number < 1:
        raise BadRequest(f"batch {batch_id} has not been launched yet (state {manifest.state})")
    rec = next((a for a in manifest.attempts if a.attempt == number), None)
    if rec is None and number != manifest.attempt:
        known = ", ".join(str(a.attempt) for a in manifest.attempts) or "none"
        raise BadRequest(f"batch {batch_id} has no attempt {number} (attempts: {known})")
    if rec is not None and rec.logs:
        name = clients.store.folder(batch_id, prefix) + rec.logs
        try:
            text = clients.container.download_blob(name).readall().decode("utf-8", "replace")
        except ResourceNotFoundError:
            raise BadRequest(f"batch {batch_id} attempt {number}: {name} is missing") from None
        return AttemptLogs(batch_id, number, name, text)
    if manifest.state is State.LAUNCHED and number == manifest.attempt and manifest.group:
        text = clients.hook.logs(manifest.group, CONTAINER_NAME)
        return AttemptLogs(batch_id, number, f"live from group {manifest.group}", text)
    outcome = rec.outcome if rec is not None else manifest.state.value
    raise BadRequest(f"batch {batch_id} attempt {number} has no saved log ({outcome})")


def release_quarantined(clients: Clients, batch_id: str) -> dict[str, Any]:
    """Move a quarantined batch (unreadable manifest, or none) out of processing/ into
    failed/<batch>/, with a new manifest listing its inputs, so that `retry` can put them back
    into incoming/. The broken manifest is kept beside it as `_batch.broken.json`.

    Refused while the batch's manifest is readable (then it is not quarantined) and while one
    of its container groups exists (its container may still be writing). Resumable: the new
    manifest is written create-only first, moves are idempotent, and the broken manifest is
    deleted last, only if unchanged."""
    s, store, container = clients.settings, clients.store, clients.container
    try:
        found = store.read(batch_id)
    except ManifestUnreadable as exc:
        reason = exc.reason
    else:
        if found is not None:
            raise BadRequest(
                f"batch {batch_id} is not quarantined: its manifest is readable "
                f"(state {found[0].state.value})"
            )
        reason = "no manifest"
    groups = [g.name for g in clients.hook.list_groups() if g.batch_id == batch_id]
    if groups:
        raise BadRequest(
            f"batch {batch_id} still has container group(s) {', '.join(groups)}: wait until they "
            f"finished, or delete them (az container delete -g {s.resource_group} -n NAME)"
        )
    folder, target = store.folder(batch_id), store.folder(batch_id, s.failed_prefix)
    blobs = list(container.list_blobs(name_starts_with=folder))
    manifest_path = store.path(batch_id)
    inputs = [
        b
        for b in blobs
        if b.name != manifest_path and not b.name[len(folder) :].startswith(LOGS_DIR + "/")
    ]
    if not blobs:
        raise BadRequest(f"no batch {batch_id!r} under {s.processing_prefix}")
    now = iso(clients.clock.now()) or ""
    manifest = Manifest(
        batch_id=batch_id,
        state=State.FAILED,
        created=now,
        updated=now,
        files=[
            FileEntry(
                source=s.incoming_prefix + b.name[len(folder) :],
                name=b.name[len(folder) :],
                blob=b.name[len(folder) :],
                etag="",
                size=int(b.size),
            )
            for b in inputs
        ],
        reason=f"released from quarantine ({reason}); inputs listed by the blobs found",
        finished_at=now,
    )
    store.put_final(manifest, s.failed_prefix)
    broken = container.get_blob_client(manifest_path)
    moves = [(b.name, target + b.name[len(folder) :]) for b in blobs if b.name != manifest_path]
    etag = None
    if any(b.name == manifest_path for b in blobs):
        etag = str(broken.get_blob_properties().etag)
        moves.append((manifest_path, target + "_batch.broken.json"))
    results = clients.runner.map(
        lambda pair: move_blob(container, pair[0], pair[1], keep_source=pair[0] == manifest_path),
        moves,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(
            f"batch {batch_id}: {len(failures)} blob(s) not moved yet: {failures[0]}"
        )
    if etag is not None:
        try:
            store.delete(batch_id, etag)
        except ManifestConflict:
            raise RuntimeError(
                f"batch {batch_id}: its manifest changed during the release; run it again"
            ) from None
    logger.warning("batch %s: released from quarantine into %s", batch_id, target)
    return {"batch": batch_id, "failed_folder": target, "inputs": len(inputs), "reason": reason}
