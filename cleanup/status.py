"""What the status page shows, as plain functions: the "now" snapshot (incoming/, groups, the
stall alarm), one batch in detail (files under their original names, attempts, outputs), an
attempt's log, and the HTTP wrappers the routes in function_app.py call.

Everything here only reads, except `retry` (admin.retry_failed). User input (file and folder
names, log text) is returned as data; the page renders it with textContent, never as HTML.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cleanup import alarm, history
from cleanup.admin import BadRequest, Reply, _clients, _guard, _only, retry_failed
from config import Settings
from launcher.aci import AciError, GroupInfo
from launcher.batch import LOGS_DIR, Manifest, State, iso
from launcher.clients import Clients
from launcher.launch import CONTAINER_NAME
from launcher.poll import CREATE_WINDOW_SECONDS, held_by_open_claims

logger = logging.getLogger(__name__)

BATCH_ID_RE = re.compile(r"^\d{8}-\d{6}-[a-z2-7]{6}$")
MAX_LOG_BYTES = 1024 * 1024  # the page shows the last MiB of a log
MAX_LISTED = 200  # names listed per kind (blocked files, waiting folders, outputs)
PAGE_DIR = Path(__file__).parent / "page"
ASSETS = {
    "status.js": "text/javascript",
    "status.css": "text/css",
}
# The page's security headers: its own scripts and styles only, no framing, no referrer (the key
# may be in the page's URL), no caching of operator data.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def now_snapshot(clients: Clients) -> dict[str, Any]:
    """incoming/ (waiting, blocked, folders without their marker, held for recovery), groups
    against MAX_ACTIVE_GROUPS, recent creates, the stall alarm. incoming/ is streamed page by
    page and classified as a poll tick would (launcher.intake), keeping counts and a sample of
    names: at most a page of listing in memory, one List Blobs per 5,000 names. Plus one ARM
    list, one List Blobs of processing/ and a manifest read per unfinished claim."""
    s = clients.settings
    groups_future = clients.runner.submit(clients.hook.list_groups)
    refs = clients.store.list_refs()
    # Files unfinished claims hold, as the poll tick works them out; an unreadable manifest
    # holds nothing (the tick and the janitor quarantine it and log why).
    held = held_by_open_claims(clients, refs, lambda q: None)
    found = alarm.survey(clients, held)
    now, intake = found.now, found.intake
    groups: dict[str, Any]
    try:
        infos: list[GroupInfo] = groups_future.result()
        recent = clients.clock.timestamp() - CREATE_WINDOW_SECONDS
        groups = {
            "active": len(infos),
            "max": s.max_active_groups,
            "created_last_5_min": sum(1 for g in infos if g.created and g.created >= recent),
            "max_creates_per_5_min": s.max_creates_per_5_min,
            "by_profile": _groups_by_profile(s, infos),
            "error": None,
        }
    except AciError as exc:
        groups = {"active": None, "max": s.max_active_groups, "error": f"{exc.code}: {exc}"}
    blocked = intake.blocked if intake else {}
    return {
        "time": iso(now),
        "incoming": {
            "files": found.files,
            "bytes": found.bytes,
            "oldest_seconds": alarm.age_seconds(found.oldest, now) if found.oldest else None,
            "claimable": found.claimable,
            "settling": intake.unsettled if intake else 0,
            "blocked": [{"name": n, "reason": r} for n, r in sorted(blocked.items())][:MAX_LISTED],
            "blocked_total": intake.blocked_total if intake else 0,
            "waiting_folders": sorted(intake.waiting_folders if intake else [])[:MAX_LISTED],
            "waiting_folders_total": intake.waiting_total if intake else 0,
            "ready_marker": s.batch_ready_marker,
            "held_for_recovery": found.held,
            "claimable_by_profile": dict(sorted(found.by_profile.items())),
        },
        "active_batches": {
            state.value: sum(1 for r in refs if r.state is state)
            for state in (State.CLAIMING, State.CLAIMED, State.LAUNCHED, State.FINISHING)
        },
        "groups": groups,
        "alarm": found.alarm(),
    }


def _groups_by_profile(s: Settings, infos: list[GroupInfo]) -> dict[str, dict[str, int]]:
    """Active groups against each job profile's cap (profiles.py): every configured profile,
    and any other a group is tagged with."""
    active = Counter(g.profile for g in infos)
    return {
        name: {"active": active[name], "max": s.profile_cap(name)}
        for name in sorted(set(s.profile_names) | set(active))
    }


def _find(clients: Clients, batch_id: str) -> tuple[Manifest, str]:
    """(manifest, prefix) of a batch wherever it is now."""
    if not BATCH_ID_RE.match(batch_id):
        raise BadRequest(f"not a batch id: {batch_id!r}")
    s = clients.settings
    prefixes = (s.processing_prefix, s.done_prefix, s.failed_prefix)
    reads = clients.runner.map(lambda p: clients.store.read(batch_id, p), prefixes)
    for prefix, got in zip(prefixes, reads, strict=True):
        if isinstance(got, BaseException):
            raise got
        if got is not None:
            return got[0], prefix
    raise LookupError(f"no batch {batch_id}")


def batch_detail(clients: Clients, batch_id: str) -> dict[str, Any]:
    """One batch: summary, files under their original names, attempts, outputs."""
    manifest, prefix = _find(clients, batch_id)
    output = f"{clients.settings.output_prefix}{batch_id}/"
    outputs: list[dict[str, Any]] = []
    for blob in clients.container.list_blobs(name_starts_with=output):
        if len(outputs) >= MAX_LISTED:
            break
        outputs.append({"name": blob.name[len(output) :], "bytes": int(blob.size or 0)})
    return {
        "summary": history.summary(manifest, prefix),
        "mode": manifest.mode,
        "folder": manifest.folder,
        "files": [{"name": f.name, "bytes": f.size} for f in manifest.files],
        "attempts": [asdict(a) for a in manifest.attempts],
        "last_error": manifest.last_error,
        "outputs": outputs,
        "output_prefix": output,
        "retryable": manifest.state is State.FAILED and "[retried" not in (manifest.reason or ""),
    }


def attempt_log(clients: Clients, batch_id: str, attempt: int) -> dict[str, Any]:
    """The saved log of an attempt (its last MiB); for the attempt still running, the live
    container log from ACI."""
    manifest, prefix = _find(clients, batch_id)
    if manifest.state is State.LAUNCHED and attempt == manifest.attempt and manifest.group:
        text = clients.hook.logs(manifest.group, CONTAINER_NAME)
        return {"attempt": attempt, "live": True, "text": text[-MAX_LOG_BYTES:]}
    name = f"{prefix}{batch_id}/{LOGS_DIR}/attempt-{attempt}.log"
    blob = clients.container.get_blob_client(name)
    try:
        size = int(blob.get_blob_properties().size or 0)
    except Exception as exc:  # not found or unreadable: the page says so
        raise LookupError(f"no log for attempt {attempt} of batch {batch_id}") from exc
    start = max(0, size - MAX_LOG_BYTES)
    data = blob.download_blob(offset=start).readall() if size else b""
    return {"attempt": attempt, "live": False, "text": data.decode("utf-8", "replace")}


# -- HTTP wrappers (function_app.py routes call these) -------------------------------------------


def _not_found(exc: LookupError) -> Reply:
    return Reply(404, {"error": "NotFound", "message": str(exc)})


@_guard
def get_now(params: Mapping[str, str]) -> Reply:
    """The "now" part of the page."""
    _only(params, ())
    return Reply(200, now_snapshot(_clients()))


@_guard
def get_batch(params: Mapping[str, str]) -> Reply:
    """One batch in detail (`batch` is the route parameter)."""
    _only(params, ("batch",))
    try:
        return Reply(200, batch_detail(_clients(), params["batch"]))
    except LookupError as exc:
        return _not_found(exc)


@_guard
def get_log(params: Mapping[str, str]) -> Reply:
    """An attempt's log as text inside JSON (the page shows it with textContent)."""
    _only(params, ("batch", "attempt"))
    attempt = params["attempt"]
    if not attempt.isdigit():
        raise BadRequest(f"attempt must be a number, got {attempt!r}")
    try:
        return Reply(200, attempt_log(_clients(), params["batch"], int(attempt)))
    except LookupError as exc:
        return _not_found(exc)


@_guard
def retry(params: Mapping[str, str]) -> Reply:
    """Put a failed batch's inputs back into incoming/ (the page asks to confirm first)."""
    _only(params, ("batch",))
    batch_id = params["batch"]
    if not BATCH_ID_RE.match(batch_id):
        raise BadRequest(f"not a batch id: {batch_id!r}")
    restored = retry_failed(_clients(), batch_id)
    return Reply(200, {"batch": batch_id, "restored": len(restored)})


def page_html() -> tuple[bytes, str]:
    """The page itself (served under the key, route ops/status)."""
    return (PAGE_DIR / "status.html").read_bytes(), "text/html"


def page_asset(name: str) -> tuple[bytes, str] | None:
    """(content, mimetype; all UTF-8) of the page's script or stylesheet, None otherwise: the
    public route serves these two files and nothing else."""
    if name not in ASSETS:
        return None
    return (PAGE_DIR / name).read_bytes(), ASSETS[name]
