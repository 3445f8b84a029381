"""Storage's clock, not the host's.

Every time decision the app makes compares its "now" with a time storage wrote (a blob's
Last-Modified) or that the app wrote earlier and another process reads back (a manifest's
`updated`, a group's creation tag, a SAS's validity): settle windows, stuck-claim and vanish
ages, the create budget, SAS start and expiry. A host clock off by minutes would claim folders
still being uploaded, recover live claims, or date a SAS in the future. So "now" is the host's
monotonic progress plus the offset to storage's clock, learned from the `Date` header of the
storage responses the app already gets (no extra request): a tick's first request is its
listing, so every decision after it uses a fresh offset.

`Date` has one-second resolution and is stamped before the response travels, so the estimate
runs up to a second (plus one network latency) behind storage's clock: ages come out slightly
short and settle windows slightly long, the safe side of both.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy

logger = logging.getLogger(__name__)

# Skew worth a warning: beyond it, host-clock time stamps (e.g. x-ms-date of Shared Key
# requests, which Azure rejects beyond 15 minutes) are at risk too.
SKEW_WARNING_SECONDS = 120.0


class ServerClock(SansIOHTTPPolicy):
    """An azure-core policy on the storage pipeline that learns storage's time, and the clock
    every time decision of the app reads (`now()`, `timestamp()`).

    Before the first response it falls back to the host clock (offset 0); every caller makes a
    storage request before its first time decision, so that only happens in tests that build
    a clock by hand."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._synced = False
        self._warned = False
        self._lock = threading.Lock()

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        value = response.http_response.headers.get("Date")
        if not value:
            return
        try:
            server = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return
        self.observe(server, time.time())

    def observe(self, server_time: float, local_time: float) -> None:
        """Record that storage's clock read `server_time` when the host's read `local_time`."""
        offset = server_time - local_time
        with self._lock:
            self._offset, self._synced = offset, True
            warn = abs(offset) > SKEW_WARNING_SECONDS and not self._warned
            self._warned = self._warned or warn
        if warn:
            logger.warning(
                "host clock is %.0f s %s storage's: time decisions use storage's clock",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def offset(self) -> float:
        """Seconds to add to the host clock to get storage's."""
        return self._offset

    def timestamp(self) -> float:
        return time.time() + self._offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp(), UTC)
