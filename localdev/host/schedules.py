"""Timer schedules as the Functions host reads them: six-field NCRONTAB or a .NET TimeSpan."""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime, timedelta
from datetime import time as dtime

from localdev.host.errors import ScheduleError

_MONTH_NAMES = (
    "January February March April May June July August September October November December"
).split()
_DAY_NAMES = "Sunday Monday Tuesday Wednesday Thursday Friday Saturday".split()
_DIGITS = re.compile(r"[0-9]+")

# (NCrontab's field kind, lowest value, highest value, names for the values or None)
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...] | None], ...] = (
    ("Second", 0, 59, None),
    ("Minute", 0, 59, None),
    ("Hour", 0, 23, None),
    ("Day", 1, 31, None),
    ("Month", 1, 12, tuple(_MONTH_NAMES)),
    ("DayOfWeek", 0, 6, tuple(_DAY_NAMES)),
)
# NCrontab gives up around year 9999; 28 years cover every weekday/leap-day combination.
_MAX_SEARCH_DAYS = 366 * 28


def _cron_value(text: str, kind: str, names: tuple[str, ...] | None, low: int) -> int:
    """One value: digits, or (Month/DayOfWeek) a case-insensitive prefix of an English name."""
    if not text:
        raise ScheduleError(f"A crontab field value cannot be empty ([{kind}] field).")
    if text[0].isdigit():
        if not _DIGITS.fullmatch(text):
            raise ScheduleError(f"'{text}' is not a valid [{kind}] crontab field value.")
        return int(text)
    if names is None:
        raise ScheduleError(
            f"'{text}' is not a valid [{kind}] crontab field value. It must be a numeric value."
        )
    for index, name in enumerate(names):
        if name.lower().startswith(text.lower()):
            return index + low
    raise ScheduleError(
        f"'{text}' is not a known value name. Use one of the following: {', '.join(names)}."
    )


def _parse_cron_field(
    text: str, kind: str, low: int, high: int, names: tuple[str, ...] | None
) -> frozenset[int]:
    """Expand one field (``*``, ``a``, ``a-b``, lists, ``/step``) the way NCrontab does."""
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not _DIGITS.fullmatch(step_text):
                raise ScheduleError(f"'{text}' is not a valid [{kind}] crontab field expression.")
            step = max(int(step_text), 1)  # NCrontab treats a step below 1 as 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _cron_value(first, kind, names, low)
            end = _cron_value(last, kind, names, low)
            start, end = min(start, end), max(start, end)  # NCrontab swaps a reversed range
        else:
            start = _cron_value(base, kind, names, low)
            end = high if slash else start  # "5/15" means 5 to the end in steps of 15
        for value in (start, end):
            if not low <= value <= high:
                raise ScheduleError(
                    f"{value} is out of range for the [{kind}] field. "
                    f"Value must be between {low} and {high} (all inclusive)."
                )
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclasses.dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule, evaluated on local wall-clock time like NCrontab."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse ``{second} {minute} {hour} {day} {month} {day-of-week}``."""
        tokens = [token for token in expression.split(" ") if token]
        if len(tokens) != len(_CRON_FIELDS):
            hint = ""
            if len(tokens) == 5:
                hint = (
                    " This looks like a classic five-field crontab; Azure Functions needs a "
                    f"leading {{second}} field, e.g. '0 {' '.join(tokens)}'."
                )
            raise ScheduleError(
                f"'{expression}' is an invalid NCRONTAB expression. It must contain 6 fields: "
                f"{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}.{hint}"
            )
        fields = [
            _parse_cron_field(token, kind, low, high, names)
            for token, (kind, low, high, names) in zip(tokens, _CRON_FIELDS, strict=True)
        ]
        schedule = cls(
            expression=" ".join(tokens),
            seconds=tuple(sorted(fields[0])),
            minutes=tuple(sorted(fields[1])),
            hours=tuple(sorted(fields[2])),
            days=fields[3],
            months=fields[4],
            days_of_week=fields[5],
        )
        schedule.next_after(datetime(2000, 1, 1))  # fail now, not at runtime, if it never fires
        return schedule

    def _first_time_after(self, after: dtime | None) -> dtime | None:
        """Earliest time of day on the schedule strictly after ``after`` (any if None)."""
        if after is None:
            return dtime(self.hours[0], self.minutes[0], self.seconds[0])
        for hour in self.hours:
            if hour < after.hour:
                continue
            if hour > after.hour:
                return dtime(hour, self.minutes[0], self.seconds[0])
            for minute in self.minutes:
                if minute < after.minute:
                    continue
                if minute > after.minute:
                    return dtime(hour, minute, self.seconds[0])
                for second in self.seconds:
                    if second > after.second:
                        return dtime(hour, minute, second)
        return None

    def next_after(self, base: datetime) -> datetime:
        """First occurrence strictly after ``base`` (naive local time, whole seconds)."""
        day: date = base.date()
        after: dtime | None = base.time().replace(microsecond=0)
        for _ in range(_MAX_SEARCH_DAYS):
            weekday = (day.weekday() + 1) % 7  # NCrontab: Sunday is 0
            if day.month in self.months and day.day in self.days and weekday in self.days_of_week:
                at = self._first_time_after(after)
                if at is not None:
                    return datetime.combine(day, at)
            day += timedelta(days=1)
            after = None
        raise ScheduleError(f"The schedule '{self.expression}' never occurs.")

    def __str__(self) -> str:
        return f"Cron: '{self.expression}'"


@dataclasses.dataclass(frozen=True)
class TimeSpanSchedule:
    """A constant interval (the host's ConstantSchedule): the next run is last run + interval."""

    interval: timedelta

    @classmethod
    def parse(cls, text: str) -> TimeSpanSchedule | None:
        """Parse the .NET TimeSpan forms: ``hh:mm[:ss[.f]]``, ``d.hh:mm:ss``, ``d:hh:mm:ss``, ``d``.

        As documented for the timer trigger, ``hh:mm:ss`` with ``hh`` of 24 or more means
        ``dd:hh:mm``. Returns None when ``text`` is not a TimeSpan at all.
        """
        text = text.strip()
        if _DIGITS.fullmatch(text):
            interval = timedelta(days=int(text))
        else:
            parts = text.split(":")
            if not 2 <= len(parts) <= 4:
                return None
            fraction = ""
            if len(parts) >= 3 and "." in parts[-1]:
                parts[-1], fraction = parts[-1].split(".", 1)
            day_text = ""
            if len(parts) == 4:
                day_text = parts.pop(0)
            elif "." in parts[0]:
                day_text, parts[0] = parts[0].split(".", 1)
            if not all(_DIGITS.fullmatch(part) for part in [*parts, day_text or "0"]):
                return None
            if fraction and not (_DIGITS.fullmatch(fraction) and len(fraction) <= 7):
                return None
            numbers = [int(part) for part in parts]
            if not day_text and len(numbers) == 3 and numbers[0] >= 24 and not fraction:
                numbers = [numbers[0], numbers[1], numbers[2], 0]  # dd:hh:mm
            else:
                numbers = [int(day_text or 0), *numbers, 0][:4]
            days, hours, minutes, seconds = numbers
            if hours > 23 or minutes > 59 or seconds > 59:
                return None
            interval = timedelta(
                days=days,
                hours=hours,
                minutes=minutes,
                seconds=seconds + (float(f"0.{fraction}") if fraction else 0.0),
            )
        if interval <= timedelta(0):
            raise ScheduleError(f"The TimeSpan schedule '{text}' must be longer than zero.")
        return cls(interval)

    def next_after(self, base: datetime) -> datetime:
        """``base`` plus the interval."""
        return base + self.interval

    def __str__(self) -> str:
        total = int(self.interval.total_seconds())
        days, rest = divmod(total, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        prefix = f"{days}." if days else ""
        return f"Constant: {prefix}{hours:02d}:{minutes:02d}:{seconds:02d}"


Schedule = CronSchedule | TimeSpanSchedule


def parse_schedule(expression: str) -> Schedule:
    """Parse a resolved schedule the way the host does: NCRONTAB first, then TimeSpan."""
    unrecognized = (
        f"The schedule expression '{expression}' was not recognized as a valid cron "
        "expression or timespan string"
    )
    if len([token for token in expression.split(" ") if token]) > 1:
        try:
            return CronSchedule.parse(expression)
        except ScheduleError as exc:
            raise ScheduleError(f"{unrecognized}: {exc}") from exc
    timespan = TimeSpanSchedule.parse(expression)
    if timespan is None:
        raise ScheduleError(f"{unrecognized}.")
    return timespan


def next_occurrences(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` occurrences after ``start`` (for the startup log, like the host)."""
    occurrences = []
    current = start
    for _ in range(count):
        current = schedule.next_after(current)
        occurrences.append(current)
    return occurrences


def runs_more_than_once_a_minute(schedule: Schedule, now: datetime) -> bool:
    """The host's rule for turning the schedule monitor (and ScheduleStatus) off."""
    if isinstance(schedule, TimeSpanSchedule):
        return schedule.interval < timedelta(minutes=1)
    return next_occurrences(schedule, now, 2)[1] < now + timedelta(minutes=1)
