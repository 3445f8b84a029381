"""Cost per profile over a time window (`GET /api/ops/costs?days=N`, `python -m cleanup costs`),
summed from the history index (cleanup/history.py), whose entries carry each finished batch's
usage and estimated cost.

Bounded: the index lists the newest batch first, so the sum reads pages of index entries only
until the first batch claimed before the window (a window of `days` days before storage's
"now", at most MAX_DAYS), and at most MAX_ENTRIES entries (`truncated` says when that cap cut
it short). The window is by claim time (the batch id's time), the order of the index; batches
still running are not counted (their cost is not final), nor batches finished before the index
existed (they have no cost recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cleanup import history
from cleanup.admin import BadRequest, Reply, _clients, _guard, _only
from launcher.batch import iso
from launcher.clients import Clients
from launcher.cost import CURRENCY

MAX_DAYS = 93
DEFAULT_DAYS = 7
MAX_ENTRIES = 100_000
PAGE_SIZE = 5000
SUMMED = ("vcpu_seconds", "gb_seconds", "gpu_seconds", "cost")
# What `per_batch` shows of each batch (history index fields).
BATCH_FIELDS = ("batch", "profile", "state", "label", "attempt", "claimed_at", *SUMMED)


def claimed_at(batch_id: str) -> datetime | None:
    """The claim time encoded in a batch id (`YYYYMMDD-HHMMSS-xxxxxx`, UTC)."""
    try:
        return datetime.strptime(batch_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _window(clients: Clients, since: datetime) -> tuple[list[dict[str, Any]], bool]:
    """Index rows of the batches claimed since `since`, newest first, and whether MAX_ENTRIES
    cut the list short."""
    rows: list[dict[str, Any]] = []
    pages = clients.container.list_blobs(
        name_starts_with=f"{clients.settings.index_prefix}{history.ALL}/",
        include=["metadata"],
        results_per_page=PAGE_SIZE,
    ).by_page()
    for page in pages:
        for blob in page:
            row = history._from_metadata(blob.metadata or {})
            when = claimed_at(row["batch"] or "")
            if when is None:
                continue
            if when < since:
                return rows, False
            if len(rows) >= MAX_ENTRIES:
                return rows, True
            rows.append(row)
    return rows, False


def _rounded(key: str, value: float) -> float:
    return round(value, 6 if key == "cost" else 1)


def per_profile(
    clients: Clients, days: float = DEFAULT_DAYS, with_batches: bool = False
) -> dict[str, Any]:
    """Usage and estimated cost summed per profile (and per final state) over the window; with
    `with_batches`, also each batch's own row (`per_batch`, newest first)."""
    now = clients.clock.now()
    since = now - timedelta(days=days)
    rows, truncated = _window(clients, since)
    profiles: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = profiles.setdefault(
            row["profile"] or "default",
            {"batches": 0, "succeeded": 0, "failed": 0, "attempts": 0} | dict.fromkeys(SUMMED, 0.0),
        )
        entry["batches"] += 1
        entry["attempts"] += row["attempt"] or 0
        if row["state"] in ("succeeded", "failed"):
            entry[row["state"]] += 1
        for key in SUMMED:
            entry[key] += row[key] or 0.0
    for entry in profiles.values():
        for key in SUMMED:
            entry[key] = _rounded(key, entry[key])
    total = {
        "batches": sum(p["batches"] for p in profiles.values()),
        "attempts": sum(p["attempts"] for p in profiles.values()),
    } | {key: _rounded(key, sum(p[key] for p in profiles.values())) for key in SUMMED}
    out: dict[str, Any] = {
        "since": iso(since),
        "until": iso(now),
        "days": days,
        "currency": CURRENCY,
        "profiles": dict(sorted(profiles.items())),
        "total": total,
        "truncated": truncated,
    }
    if with_batches:
        out["per_batch"] = [
            {k: row[k] for k in BATCH_FIELDS} | {"profile": row["profile"] or "default"}
            for row in rows
        ]
    return out


def window_days(raw: str) -> float:
    """`days` as the API and the CLI take it: a number in (0, MAX_DAYS]; BadRequest otherwise."""
    try:
        days = float(raw)
    except ValueError:
        raise BadRequest(f"days must be a number, got {raw!r}") from None
    if not 0 < days <= MAX_DAYS:
        raise BadRequest(f"days must be more than 0 and at most {MAX_DAYS}, got {raw!r}")
    return days


@_guard
def get_costs(params: Mapping[str, str]) -> Reply:
    """`GET ops/costs?days=N`: see the module doc."""
    _only(params, ("days",))
    days = window_days(params.get("days", str(DEFAULT_DAYS)))
    return Reply(200, per_profile(_clients(), days))
