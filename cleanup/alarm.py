"""The stall alarm: Functions timers can stop silently (Flex Consumption:
azure-functions-host#11828) and nothing else would notice files waiting in incoming/ for hours.

The janitor (a second, independent timer) checks at the end of every sweep, including idle ones:
one List Blobs of incoming/ (the idle sweep: one ARM list and two List Blobs). When settled,
claimable files have waited longer than STALL_ALARM_MINUTES it logs an error naming how many
and how old; the status page turns red from the same rule.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from launcher.claim import Candidate, is_folder_marker, scan
from launcher.clients import Clients

logger = logging.getLogger(__name__)


def age_seconds(moment: datetime, now: datetime) -> float:
    return round(max(0.0, (now - moment).total_seconds()), 1)


def stalled(clients: Clients, claimable: list[Candidate], now: datetime) -> dict[str, Any]:
    """The stall alarm: settled, claimable files that have waited longer than
    STALL_ALARM_MINUTES. A working poll claims them within a tick or two, so such files mean
    the poll timer has stopped (Flex Consumption timers can stop silently) or cannot launch."""
    limit = clients.settings.stall_alarm_minutes * 60
    ages = [age_seconds(c.last_modified, now) for c in claimable]
    late = [a for a in ages if a > limit]
    return {
        "stalled": bool(late),
        "files": len(late),
        "oldest_seconds": max(late) if late else None,
        "threshold_seconds": limit,
    }


def check_stall(clients: Clients) -> dict[str, Any]:
    """The janitor's stall check: one List Blobs of incoming/; logs an error when stalled."""
    s = clients.settings
    listing = list(
        clients.container.list_blobs(name_starts_with=s.incoming_prefix, include=["metadata"])
    )
    now = clients.clock.now()  # storage's, learned from the listing (launcher/clock.py)
    found = scan(s, listing, now)
    alarm = stalled(clients, found.claimable, now)
    files = [b for b in listing if not is_folder_marker(b)]
    oldest = min((b.last_modified for b in files), default=None)
    # For the metrics (launcher/telemetry.py): everything waiting, not only what is late.
    alarm["waiting_files"] = len(files)
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
