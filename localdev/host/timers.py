"""The timer scheduler: one thread per timer function, like the host's timer listener."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from azure.functions.timer import TimerRequest

from localdev.host.functions import TimerFunction
from localdev.host.invocation import Invoker

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")


def iso(moment: datetime | None) -> str:
    """ISO 8601 with offset; the host's DateTime.MinValue stands in for 'never'."""
    if moment is None:
        return "0001-01-01T00:00:00"
    return moment.astimezone().isoformat()


class TimerRunner:
    """One timer function's schedule, run in its own thread like the host's timer listener.

    The listener awaits each invocation and then computes the next occurrence after the time
    the timer fired; if that occurrence has already passed, it fires at once. So runs never
    overlap and missed occurrences collapse into a single catch-up run.
    """

    def __init__(self, timer: TimerFunction, invoker: Invoker, stop: threading.Event) -> None:
        self.timer = timer
        self._invoker = invoker
        self._stop = stop
        self._last: datetime | None = None
        self._last_updated: datetime | None = None
        self.thread = threading.Thread(target=self._run, name=f"timer-{timer.name}", daemon=True)

    def start(self) -> None:
        """Start the schedule thread."""
        self.thread.start()

    def fire(self, fired_at: datetime, next_due: datetime | None, reason: str) -> bool:
        """Invoke the function once (waiting for a run in progress); return success."""
        status: dict[str, str] = {}
        if self.timer.use_monitor:
            status = {
                "Last": iso(self._last),
                "Next": iso(next_due or fired_at),
                "LastUpdated": iso(self._last_updated),
            }
        request = TimerRequest(
            past_due=False, schedule_status=status, schedule={"AdjustForDST": True}
        )
        with self.timer.lock:
            outcome = self._invoker.invoke(
                self.timer.name,
                self.timer.user_function,
                {self.timer.arg_name: request},
                reason=reason,
                wants_context=self.timer.wants_context,
            )
        self._last = self._last_updated = fired_at
        return outcome.succeeded

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must not silently end a schedule
            logger.exception("The timer for 'Functions.%s' stopped unexpectedly", self.timer.name)

    def _loop(self) -> None:
        name, schedule = self.timer.name, self.timer.schedule
        base = datetime.now()
        if self.timer.run_on_startup and not self._stop.is_set():
            logger.info("Function '%s' is configured to run on startup. Executing now.", name)
            self.fire(base, None, f"Timer fired at {iso(base)}")
        next_due = schedule.next_after(base)
        while self._sleep_until(next_due):
            fired_at = datetime.now()
            self.fire(fired_at, next_due, f"Timer fired at {iso(fired_at)}")
            # as the host: never compute the next occurrence from before the scheduled one
            following = schedule.next_after(max(fired_at, next_due))
            if following <= datetime.now() and not self._stop.is_set():
                logger.warning(
                    "Function 'Functions.%s' was still running at its next occurrence (%s); "
                    "running it again now. Occurrences are not queued and runs never overlap.",
                    name,
                    following.isoformat(timespec="seconds"),
                )
            next_due = following

    def _sleep_until(self, due: datetime) -> bool:
        """Sleep until ``due`` (local wall clock); False once the host is stopping."""
        while not self._stop.is_set():
            remaining = due.timestamp() - time.time()
            if remaining <= 0:
                return True
            self._stop.wait(min(remaining, 30.0))  # re-read the clock now and then (DST, NTP)
        return False
