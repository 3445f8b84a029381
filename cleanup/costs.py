"""Cost per profile over a time window (`GET /api/ops/costs?days=N`), summed from the history
index (cleanup/history.py), whose entries carry each finished batch's usage and estimated cost.

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


def claimed_at(batch_id: str) -> datetime | None:
    """The claim time encoded in a batch id (`YYYYMMDD-HHMMSS-xxxxxx`, UTC)."""
    try:
        return datetime.strptime(batch_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def per_profile(clients: Clients, days: float = DEFAULT_DAYS) -> dict[str, Any]:
    """Usage and estimated cost summed per profile (and per final state) over the window."""
    now = clients.clock.now()
    since = now - timedelta(days=days)
    profiles: dict[str, dict[str, Any]] = {}
    seen, truncated = 0, False
    pages = clients.container.list_blobs(
        name_starts_with=f"{clients.settings.index_prefix}{history.ALL}/",
        include=["metadata"],
        results_per_page=PAGE_SIZE,
    ).by_page()
    done = False
    for page in pages:
        for blob in page:
            row = history._from_metadata(blob.metadata or {})
            when = claimed_at(row["batch"] or "")
            if when is None:
                continue
            if when < since:
                done = True
                break
            if seen >= MAX_ENTRIES:
                truncated = done = True
                break
            seen += 1
            entry = profiles.setdefault(
                row["profile"] or "default",
                {"batches": 0, "succeeded": 0, "failed": 0} | dict.fromkeys(SUMMED, 0.0),
            )
            entry["batches"] += 1
            if row["state"] in ("succeeded", "failed"):
                entry[row["state"]] += 1
            for key in SUMMED:
                entry[key] += row[key] or 0.0
        if done:
            break
    for entry in profiles.values():
        for key in SUMMED:
            entry[key] = round(entry[key], 6 if key == "cost" else 1)
    total = {"batches": sum(p["batches"] for p in profiles.values())} | {
        key: round(sum(p[key] for p in profiles.values()), 6 if key == "cost" else 1)
        for key in SUMMED
    }
    return {
        "since": iso(since),
        "until": iso(now),
        "days": days,
        "currency": CURRENCY,
        "profiles": dict(sorted(profiles.items())),
        "total": total,
        "truncated": truncated,
    }


@_guard
def get_costs(params: Mapping[str, str]) -> Reply:
    """`GET ops/costs?days=N`: see the module doc."""
    _only(params, ("days",))
    raw = params.get("days", str(DEFAULT_DAYS))
    try:
        days = float(raw)
    except ValueError:
        raise BadRequest(f"days must be a number, got {raw!r}") from None
    if not 0 < days <= MAX_DAYS:
        raise BadRequest(f"days must be more than 0 and at most {MAX_DAYS}, got {raw!r}")
    return Reply(200, per_profile(_clients(), days))
