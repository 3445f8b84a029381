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
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from launcher.clients import Clients
from launcher.intake import Intake, Plan, is_folder_marker

logger = logging.getLogger(__name__)


def age_seconds(moment: datetime, now: datetime) -> float:
    return round(max(0.0, (now - moment).total_seconds()), 1)


@dataclass
class Survey:
    """What incoming/ holds, classified as a poll tick would (launcher.intake) and counted:
    the one reading of incoming/ behind the stall alarm and the status page."""

    now: datetime
    limit: float  # STALL_ALARM_MINUTES in seconds
    intake: Intake | None = None
    files: int = 0  # folder markers not counted
    bytes: int = 0
    oldest: datetime | None = None
    claimable: int = 0
    held: int = 0  # claimable, but listed by an unfinished claim
    late: int = 0  # claimable and older than the limit
    late_oldest: float = 0.0
    by_profile: Counter[str] = field(default_factory=Counter)  # claimable, per job profile

    def tally(self, units: list[Plan], held: Set[tuple[str, str]]) -> None:
        for c in (c for unit in units for c in unit.files):
            if (c.name, c.etag.strip('"')) in held:
                self.held += 1
                continue
            self.claimable += 1
            self.by_profile[c.profile] += 1
            age = age_seconds(c.last_modified, self.now)
            if age > self.limit:
                self.late += 1
                self.late_oldest = max(self.late_oldest, age)

    def alarm(self) -> dict[str, Any]:
        return {
            "stalled": bool(self.late),
            "files": self.late,
            "oldest_seconds": self.late_oldest if self.late else None,
            "threshold_seconds": self.limit,
        }


def survey(clients: Clients, held: Set[tuple[str, str]] = frozenset()) -> Survey:
    """Stream incoming/ page by page: at most a page of listing in memory, one List Blobs per
    5,000 names; `held` are (name, bare etag) of files unfinished claims list."""
    s = clients.settings
    out = Survey(now=clients.clock.now(), limit=s.stall_alarm_minutes * 60)
    for page in clients.container.list_blobs(
        name_starts_with=s.incoming_prefix, include=["metadata"]
    ).by_page():
        if out.intake is None:
            out.now = clients.clock.now()  # storage's, learned from the listing (launcher/clock)
            out.intake = Intake(s, out.now)
        for blob in page:
            if not is_folder_marker(blob):
                out.files += 1
                out.bytes += int(blob.size or 0)
                out.oldest = (
                    blob.last_modified
                    if out.oldest is None
                    else min(out.oldest, blob.last_modified)
                )
            out.tally(out.intake.feed(blob), held)
    if out.intake is not None:
        out.tally(out.intake.end(), held)
    return out


def check_stall(clients: Clients) -> dict[str, Any]:
    """The janitor's stall check (one `survey` of incoming/); logs an error when stalled."""
    s = clients.settings
    found = survey(clients)
    alarm = found.alarm()
    # For the metrics (launcher/telemetry.py): everything waiting, not only what is late.
    alarm["waiting_files"] = found.files
    alarm["oldest_waiting_seconds"] = age_seconds(found.oldest, found.now) if found.oldest else None
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
