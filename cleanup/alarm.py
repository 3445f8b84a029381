"""The stall alarm: Functions timers can stop silently (Flex Consumption:
azure-functions-host#11828) and nothing else would notice files waiting in incoming/ for hours.

The janitor (a second, independent timer) checks at the end of every sweep, including idle ones:
one List Blobs of incoming/ per 5,000 names, streamed (the idle sweep: one ARM list and two
List Blobs). When settled,
claimable files have waited longer than STALL_ALARM_MINUTES it logs an error naming how many
and how old; the status page turns red from the same rule.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from launcher.clients import Clients
from launcher.intake import Intake, Plan, is_folder_marker

logger = logging.getLogger(__name__)


def age_seconds(moment: datetime, now: datetime) -> float:
    return round(max(0.0, (now - moment).total_seconds()), 1)


def check_stall(clients: Clients) -> dict[str, Any]:
    """The janitor's stall check: incoming/ listed page by page, as a poll tick classifies it
    (launcher.intake), keeping only counts and ages: at most a page of listing in memory, one
    List Blobs request per 5,000 names. Logs an error when stalled."""
    s = clients.settings
    limit = s.stall_alarm_minutes * 60
    intake: Intake | None = None
    now = clients.clock.now()
    waiting = 0
    oldest: datetime | None = None
    late = [0.0, 0.0]  # claimable files past the limit: how many, the oldest's age

    def count(units: list[Plan]) -> None:
        for c in (c for unit in units for c in unit.files):
            age = age_seconds(c.last_modified, now)
            if age > limit:
                late[0] += 1
                late[1] = max(late[1], age)

    for page in clients.container.list_blobs(
        name_starts_with=s.incoming_prefix, include=["metadata"]
    ).by_page():
        if intake is None:
            now = clients.clock.now()  # storage's, learned from the listing (launcher/clock.py)
            intake = Intake(s, now)
        for blob in page:
            if not is_folder_marker(blob):
                waiting += 1
                oldest = blob.last_modified if oldest is None else min(oldest, blob.last_modified)
            count(intake.feed(blob))
    if intake is not None:
        count(intake.end())
    alarm: dict[str, Any] = {
        "stalled": bool(late[0]),
        "files": int(late[0]),
        "oldest_seconds": late[1] if late[0] else None,
        "threshold_seconds": limit,
    }
    # For the metrics (launcher/telemetry.py): everything waiting, not only what is late.
    alarm["waiting_files"] = waiting
    alarm["oldest_waiting_seconds"] = age_seconds(oldest, now) if oldest else None
    if alarm["stalled"]:
        logger.error(
            "stall alarm: %s claimable file(s) in %s have waited longer than %s minute(s) "
            "(oldest %.0f minute(s)): is the poll timer running?",
            alarm["files"],
            s.incoming_prefix,
            f"{s.stall_alarm_minutes:g}",
            alarm["oldest_seconds"] / 60,
        )
    return alarm
