"""The admin operations behind the HTTP endpoints, as plain functions of query parameters.

`function_app.py` only turns an HttpRequest into `params` and a `Reply` into an HttpResponse;
the Functions host enforces the key (auth level FUNCTION: a function key or the master key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cleanup import history
from cleanup.sweep import SweepReport, sweep
from config import ConfigError, get_settings
from launcher.batch import FileEntry, State, iso, utcnow
from launcher.blobs import move_blob
from launcher.clients import Clients, get_clients
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


def retry_failed(clients: Clients, batch_id: str) -> list[str]:
    """Put a failed batch's inputs back into incoming/ under their original names, so the next
    poll claims them as a new batch. The failed folder keeps its manifest (marked `retried_at`)
    and logs for the record. Returns the names written to incoming/."""
    s, store = clients.settings, clients.store
    found = store.read(batch_id, s.failed_prefix)
    if found is None:
        raise BadRequest(f"no failed batch {batch_id!r} under {s.failed_prefix}")
    manifest, etag = found
    folder = store.folder(batch_id, s.failed_prefix)
    container = clients.container

    def restore(entry: FileEntry) -> str | None:
        target = s.incoming_prefix + entry.name
        if not move_blob(container, folder + entry.blob, target):
            return None  # already restored by an earlier run
        return target

    results = clients.runner.map(restore, manifest.files)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(
            f"batch {batch_id}: {len(failures)} input(s) not restored: {failures[0]}"
        )
    restored = [r for r in results if isinstance(r, str)]
    manifest.reason = (manifest.reason or "") + f" [retried {iso(utcnow())}]"
    store.update(manifest, etag, s.failed_prefix)
    history.record(clients, manifest, s.failed_prefix)  # the index shows the retry too
    logger.info(
        "batch %s: %s input(s) put back into %s", batch_id, len(restored), s.incoming_prefix
    )
    return restored
