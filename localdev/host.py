"""A small local Azure Functions host for this Python v2 app: a development aid.

It stands in for ``func start`` (Azure Functions Core Tools) where Core Tools cannot be
installed; where it is installed, ``func start`` works as well and remains the reference.

    python -m localdev.host [--app function_app.py] [--settings local.settings.json]
                            [--port 7071] [--bind 127.0.0.1] [--grace-seconds 10]
                            [--once FUNCTION_NAME] [--log-level INFO]

What it does, following the real host where this module could check it:

* Settings: reads ``Values`` of ``local.settings.json`` (default: next to the app file)
  into ``os.environ`` *before* importing the app, because the app reads settings at import
  or first use. Variables already in the environment win, as with Core Tools.
  ``Host.LocalHttpPort`` is the default port; ``--port`` overrides it.
* Indexing: imports the app file as Python's worker does (its folder first on
  ``sys.path``), finds the ``azure.functions.FunctionApp`` (``app`` if several) and
  asks the library's own registry (``app.get_functions()``) for triggers and bindings.
* Timer triggers: NCRONTAB with six fields, seconds first
  (``{second} {minute} {hour} {day} {month} {day-of-week}``), parsed with NCrontab's rules
  (names such as ``Mon``/``Jan``, day-of-week 0-6 with Sunday 0, day *and* day-of-week
  must both match). The five-field crontab form is rejected, as Functions does. A .NET
  TimeSpan (``hh:mm:ss``) is accepted too (in Azure only on App Service plans).
  ``%NAME%`` is resolved from the environment; a missing setting stops startup naming it.
  Schedules use the local time zone like the host (Azure runs in UTC unless
  ``WEBSITE_TIME_ZONE``/``TZ`` is set; a ``TZ`` in local settings is honoured here).
  Runs of one function never overlap: as in the host's timer listener, an occurrence that
  passes while the previous run is still going is not queued; the function runs once more
  straight after (logged). ``run_on_startup`` is honoured. The function gets an
  ``azure.functions.TimerRequest`` (``past_due`` is always false: no schedule monitor).
* HTTP triggers: ``http://localhost:<port>/api/<route>`` (``routePrefix`` from ``host.json``
  if set), route templates with ``{name}``, ``{name?}``, ``{name=default}``, ``{*rest}``
  and the common constraints (``int``, ``alpha``, ``guid``, ``min(n)`` ...). The function
  gets a real ``azure.functions.HttpRequest``; the returned ``HttpResponse`` (or ``str``)
  is written back. Like the host: a method the function does not accept answers 404
  (not 405: azure-functions-host#10098), an exception answers 500 with an empty body.
* Keys, enforced like Azure (Core Tools disables them locally; this host does not):
  ``anonymous`` needs none, ``function`` needs the function key or the master key,
  ``admin`` needs the master key; sent as the ``x-functions-key`` header (which wins) or
  the ``code`` query parameter; otherwise 401 with an empty body. The keys come from
  these local settings (or environment variables):

  - ``LOCALDEV_MASTER_KEY``: master key (admin level, every function, admin API).
  - ``LOCALDEV_FUNCTION_KEY``: one key valid for every function-level function (it
    plays the part of the host's ``default`` host key).

  Either one left unset is generated at random for the run and logged once at startup.
* Admin API: ``POST /admin/functions/<name>`` with the master key runs a timer function
  now (202 Accepted), as the host does for non-HTTP functions.
* Logging: the root logger prints time, level, logger and message; every invocation logs
  ``Executing 'Functions.<name>' (Reason=..., Id=...)`` and
  ``Executed 'Functions.<name>' (Succeeded|Failed, Id=..., Duration=<n>ms)``; failures
  log the traceback and never stop the host.
* Ctrl-C / SIGTERM: stops scheduling and serving, waits up to ``--grace-seconds`` for
  running invocations, exits 0 (a second signal forces exit 1).
* ``--once NAME`` runs one timer function once and exits: 0 on success, 1 if it raised
  (only that function's schedule needs to resolve). Exit code 2 means a configuration or
  startup error (bad schedule, missing setting, port in use, import failure ...).

Not emulated: bindings and triggers other than timer and HTTP (such functions are skipped
with a warning), ``host.json`` settings other than ``routePrefix`` (extensions, function
timeouts, logging, retries), scale-out and cold starts, the storage-based singleton lock
and schedule monitor across processes (two local hosts both fire), ``past_due``, the
worker's thread-pool and event-loop sizing (each ``async`` function runs in its own loop),
HTTP streaming, CORS, proxies, easy auth, and function-specific or named keys.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import importlib.util
import inspect
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
import types
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import date, datetime, timedelta
from datetime import time as dtime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import _abc as func_abc
from azure.functions.decorators.http import HttpOutput, HttpTrigger
from azure.functions.decorators.timer import TimerTrigger
from azure.functions.http import HttpRequest as WorkerHttpRequest
from azure.functions.timer import TimerRequest

logger = logging.getLogger("localdev.host")

MASTER_KEY_SETTING = "LOCALDEV_MASTER_KEY"
FUNCTION_KEY_SETTING = "LOCALDEV_FUNCTION_KEY"
_KEY_FIELDS = {MASTER_KEY_SETTING: "master", FUNCTION_KEY_SETTING: "function"}
DEFAULT_PORT = 7071
DEFAULT_ROUTE_PREFIX = "api"
DEFAULT_GRACE_SECONDS = 10.0
MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024  # the host's default request size limit
HOST_API_REASON = "This function was programmatically called via the host APIs."

EXIT_OK = 0
EXIT_FUNCTION_FAILED = 1
EXIT_CONFIG_ERROR = 2


class HostError(Exception):
    """A configuration or startup problem: reported in one line, exit code 2."""


class _BodyError(Exception):
    """A request body this host will not read; carries the HTTP status to answer."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ScheduleError(HostError):
    """A timer schedule that the Functions host would refuse."""


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """The parts of local.settings.json this host uses."""

    values: dict[str, str]
    local_http_port: int | None = None


def read_local_settings(path: Path) -> LocalSettings:
    """Parse local.settings.json; Core Tools' layout, plain-text values only."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise HostError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise HostError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(raw, dict):
        raise HostError(f"{path}: expected a JSON object with a 'Values' object")
    if raw.get("IsEncrypted"):
        raise HostError(
            f"{path}: IsEncrypted is true; this host reads plain-text values only "
            "(decrypt with `func settings decrypt` or set IsEncrypted to false)"
        )
    raw_values = raw.get("Values") or {}
    if not isinstance(raw_values, dict):
        raise HostError(f"{path}: 'Values' must be an object of strings")
    values: dict[str, str] = {}
    for name, value in raw_values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            values[name] = "True" if value else "False"  # what Core Tools' JSON reader makes of it
        elif isinstance(value, (str, int, float)):
            values[name] = str(value)
        else:
            raise HostError(f"{path}: Values.{name} must be a string, not {type(value).__name__}")
    port: int | None = None
    host_section = raw.get("Host")
    if isinstance(host_section, dict) and host_section.get("LocalHttpPort") is not None:
        try:
            port = int(host_section["LocalHttpPort"])
        except (TypeError, ValueError) as exc:
            raise HostError(f"{path}: Host.LocalHttpPort must be a port number") from exc
    return LocalSettings(values=values, local_http_port=port)


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into the environment unless already set there; return the names copied.

    Existing variables win so a one-off ``NAME=value python -m localdev.host`` overrides the
    file, as with Core Tools.
    """
    applied = []
    for name, value in values.items():
        if name in environ:
            logger.debug("Setting %s: keeping the value already in the environment", name)
            continue
        environ[name] = value
        applied.append(name)
    if "TZ" in applied and hasattr(time, "tzset"):
        time.tzset()  # schedules follow the local time zone, as in the host
    return applied


_SETTING_REF = re.compile(r"%([^%]+)%")


def resolve_setting_references(value: str, environ: Mapping[str, str], *, where: str) -> str:
    """Replace ``%NAME%`` with the app setting, like the host's name resolver."""

    def _lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        resolved = environ.get(name)
        if resolved is None:
            raise HostError(
                f"Error indexing method '{where}': '%{name}%' does not resolve to a value "
                f"(app setting {name} is neither in the environment nor in local.settings.json Values)"
            )
        return resolved

    return _SETTING_REF.sub(_lookup, value)


# --------------------------------------------------------------------------- schedules

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


def _runs_more_than_once_a_minute(schedule: Schedule, now: datetime) -> bool:
    """The host's rule for turning the schedule monitor (and ScheduleStatus) off."""
    if isinstance(schedule, TimeSpanSchedule):
        return schedule.interval < timedelta(minutes=1)
    return next_occurrences(schedule, now, 2)[1] < now + timedelta(minutes=1)


# --------------------------------------------------------------------------- app indexing


@dataclasses.dataclass
class TimerFunction:
    """An indexed timer-triggered function."""

    name: str
    user_function: Callable[..., Any]
    arg_name: str
    schedule_expression: str
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool
    wants_context: bool
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@dataclasses.dataclass
class HttpFunction:
    """An indexed HTTP-triggered function."""

    name: str
    user_function: Callable[..., Any]
    arg_name: str
    route: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    auth_level: str  # "anonymous" | "function" | "admin"
    wants_context: bool


def load_function_app(app_path: Path) -> func.FunctionRegister:
    """Import the app file as the Python worker does and return its FunctionApp."""
    if not app_path.is_file():
        raise HostError(f"App file not found: {app_path}")
    app_dir = str(app_path.parent)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)  # the worker puts the script root first on sys.path
    module_name = app_path.stem
    spec = importlib.util.spec_from_file_location(module_name, app_path)
    if spec is None or spec.loader is None:
        raise HostError(f"Cannot import {app_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # errors propagate with their traceback
    apps = {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, func.FunctionRegister)
    }
    if not apps:
        raise HostError(f"{app_path} defines no azure.functions.FunctionApp instance")
    if "app" in apps:
        return apps["app"]
    if len(apps) > 1:
        raise HostError(f"{app_path} defines several FunctionApp instances: {sorted(apps)}")
    return next(iter(apps.values()))


def _check_parameters(name: str, user_function: Callable[..., Any], arg_name: str) -> bool:
    """Check the signature like the worker does; return whether it takes ``context``."""
    parameters = set(inspect.signature(user_function).parameters)
    wants_context = "context" in parameters
    declared = parameters - {"context"}
    if declared != {arg_name}:
        raise HostError(
            f"Cannot load the {name} function: its Python parameters {sorted(declared)} do not "
            f"match its trigger binding '{arg_name}' (this host supports no other bindings)"
        )
    return wants_context


def _auth_level_name(level: object) -> str:
    value = getattr(level, "value", level)
    return str(value or "function").lower()


def index_functions(
    app: func.FunctionRegister,
    environ: Mapping[str, str],
    *,
    only: str | None = None,
) -> tuple[list[TimerFunction], list[HttpFunction]]:
    """Turn the library's function registry into what this host runs.

    Schedules are resolved and parsed here so that a bad one stops startup with its name.
    With ``only``, other functions are listed but not validated (``--once``).
    """
    timers: list[TimerFunction] = []
    https: list[HttpFunction] = []
    now = datetime.now()
    for function in app.get_functions():  # builds (and validates names) once per app
        name = function.get_function_name() or function.get_user_function().__name__
        if only is not None and name.lower() != only.lower():
            continue
        trigger = function.get_trigger()
        others = [
            binding
            for binding in function.get_bindings()
            if binding is not trigger
            and not (isinstance(binding, HttpOutput) and binding.name == "$return")
        ]
        if others or not isinstance(trigger, (TimerTrigger, HttpTrigger)):
            kinds = sorted({binding.get_binding_name() for binding in function.get_bindings()})
            logger.warning(
                "Skipping function '%s': this local host emulates only timer and HTTP "
                "triggers without other bindings (it uses %s)",
                name,
                ", ".join(kinds),
            )
            continue
        user_function = function.get_user_function()
        wants_context = _check_parameters(name, user_function, trigger.name)
        if isinstance(trigger, TimerTrigger):
            where = f"Functions.{name}"
            expression = resolve_setting_references(trigger.schedule, environ, where=where)
            try:
                schedule = parse_schedule(expression)
            except ScheduleError as exc:
                raise ScheduleError(f"Error indexing method '{where}': {exc}") from exc
            use_monitor = trigger.use_monitor
            if use_monitor is None:
                use_monitor = not _runs_more_than_once_a_minute(schedule, now)
            timers.append(
                TimerFunction(
                    name=name,
                    user_function=user_function,
                    arg_name=trigger.name,
                    schedule_expression=trigger.schedule,
                    schedule=schedule,
                    run_on_startup=bool(trigger.run_on_startup),
                    use_monitor=bool(use_monitor),
                    wants_context=wants_context,
                )
            )
        else:
            template = trigger.route or name
            if template.strip("/").lower().startswith(("admin", "runtime")):
                # The real host refuses these: they collide with its own admin/webhook APIs.
                raise HostError(
                    f"function {name!r}: route {template!r} conflicts with one or more built in "
                    "routes (routes starting with 'admin' or 'runtime' are reserved by the host)"
                )
            methods = None
            if trigger.methods:
                methods = frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods)
            https.append(
                HttpFunction(
                    name=name,
                    user_function=user_function,
                    arg_name=trigger.name,
                    route=RouteTemplate.parse(template),
                    methods=methods,
                    auth_level=_auth_level_name(trigger.auth_level),
                    wants_context=wants_context,
                )
            )
    https.sort(key=lambda fn: fn.route.precedence)
    return timers, https


def read_route_prefix(app_dir: Path) -> str:
    """``extensions.http.routePrefix`` from host.json (default ``api``)."""
    host_json = app_dir / "host.json"
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    try:
        data = json.loads(host_json.read_text(encoding="utf-8-sig"))
        prefix = data.get("extensions", {}).get("http", {}).get("routePrefix")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise HostError(f"{host_json}: cannot read extensions.http.routePrefix ({exc})") from exc
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix).strip("/")


# --------------------------------------------------------------------------- routes

_PARAM = re.compile(r"\{([^{}]+)\}")
_SIMPLE_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "datetime": r"[^/]+",
}


def _split_constraints(text: str) -> list[str]:
    """Split ``name:int:min(1)`` on colons outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _constraint_check(name: str, constraint: str) -> tuple[str | None, Callable[[str], bool]]:
    """Regex fragment and value check for one ASP.NET route constraint."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", constraint)
    if match is None:
        raise HostError(f"Route parameter '{name}': cannot read constraint '{constraint}'")
    kind, argument = match.group(1).lower(), match.group(2)
    if kind in _SIMPLE_CONSTRAINTS and argument is None:
        return _SIMPLE_CONSTRAINTS[kind], lambda _value: True
    numbers = [int(x) for x in argument.split(",")] if argument and kind != "regex" else []
    if kind == "min":
        return r"-?\d+", lambda v: int(v) >= numbers[0]
    if kind == "max":
        return r"-?\d+", lambda v: int(v) <= numbers[0]
    if kind == "range":
        return r"-?\d+", lambda v: numbers[0] <= int(v) <= numbers[1]
    if kind == "minlength":
        return None, lambda v: len(v) >= numbers[0]
    if kind == "maxlength":
        return None, lambda v: len(v) <= numbers[0]
    if kind == "length":
        if len(numbers) == 1:
            return None, lambda v: len(v) == numbers[0]
        return None, lambda v: numbers[0] <= len(v) <= numbers[1]
    if kind == "regex" and argument is not None:
        pattern = re.compile(argument, re.IGNORECASE)
        return None, lambda v: pattern.search(v) is not None
    logger.warning("Route parameter '%s': constraint '%s' is not checked locally", name, constraint)
    return None, lambda _value: True


@dataclasses.dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET-style route template, matched case-insensitively like the host."""

    template: str
    regex: re.Pattern[str]
    checks: tuple[tuple[str, Callable[[str], bool]], ...]
    defaults: tuple[tuple[str, str], ...]
    precedence: tuple[tuple[int, ...], str]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        """Compile ``items/{id:int}/{rest?}``-style templates."""
        cleaned = template.strip().strip("/")
        pattern = ""
        checks: list[tuple[str, Callable[[str], bool]]] = []
        defaults: list[tuple[str, str]] = []
        ranks: list[int] = []
        segments = cleaned.split("/") if cleaned else []
        for index, segment in enumerate(segments):
            whole = _PARAM.fullmatch(segment)
            if whole is None:
                # literal text, possibly with embedded parameters ("file.{ext}")
                piece, last = "", 0
                for param in _PARAM.finditer(segment):
                    piece += re.escape(segment[last : param.start()])
                    name, fragment = cls._parameter(param.group(1), checks)
                    piece += f"(?P<{name}>{fragment or '[^/]+?'})"
                    last = param.end()
                piece += re.escape(segment[last:])
                pattern += "/" + piece
                ranks.append(1 if "{" not in segment else 2)
                continue
            body = whole.group(1)
            catch_all = body.startswith("*")
            optional = body.endswith("?")
            body = body.lstrip("*").rstrip("?")
            default = None
            if "=" in body:
                body, default = body.split("=", 1)
            name, fragment = cls._parameter(body, checks)
            if catch_all:
                if index != len(segments) - 1:
                    raise HostError(f"Route '{template}': a catch-all must be the last segment")
                pattern += f"(?:/(?P<{name}>.*))?"
                ranks.append(5)
            elif optional or default is not None:
                pattern += f"(?:/(?P<{name}>{fragment or '[^/]+'}))?"
                ranks.append(4)
            else:
                pattern += f"/(?P<{name}>{fragment or '[^/]+'})"
                ranks.append(2 if fragment else 3)
            if default is not None:
                defaults.append((name, default))
        return cls(
            template=cleaned,
            regex=re.compile(pattern + "/?", re.IGNORECASE),
            checks=tuple(checks),
            defaults=tuple(defaults),
            precedence=(tuple(ranks), cleaned),
        )

    @staticmethod
    def _parameter(
        body: str, checks: list[tuple[str, Callable[[str], bool]]]
    ) -> tuple[str, str | None]:
        """Parameter name and regex fragment; value checks go into ``checks``."""
        name, *constraints = _split_constraints(body)
        if not name.isidentifier():
            raise HostError(f"Route parameter name '{name}' is not supported by this host")
        fragment: str | None = None
        for constraint in constraints:
            part, check = _constraint_check(name, constraint)
            fragment = part or fragment
            checks.append((name, check))
        return name, fragment

    def match(self, path: str) -> dict[str, str] | None:
        """Route values for ``path`` (relative to the prefix, leading ``/``) or None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        values = {key: value for key, value in found.groupdict().items() if value is not None}
        for key, default in self.defaults:
            values.setdefault(key, default)
        for key, check in self.checks:
            if key in values:
                try:
                    if not check(values[key]):
                        return None
                except ValueError:
                    return None
        return values


# --------------------------------------------------------------------------- invocation


class _TraceContext(func_abc.TraceContext):
    @property
    def trace_parent(self) -> str:
        return ""

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """The ``context`` argument the worker passes to functions that declare it."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._thread_local = threading.local()
        self._thread_local.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> func_abc.TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> func_abc.RetryContext:
        return _RetryContext()


@dataclasses.dataclass
class InvocationOutcome:
    """What one invocation produced."""

    succeeded: bool
    result: Any = None


class Invoker:
    """Calls user functions with the host's log lines and tracks what is running."""

    def __init__(self, function_directory: str) -> None:
        self._function_directory = function_directory
        self._running: dict[str, str] = {}  # invocation id -> function name
        self._idle = threading.Condition()

    def invoke(
        self,
        name: str,
        user_function: Callable[..., Any],
        kwargs: dict[str, Any],
        *,
        reason: str,
        wants_context: bool,
    ) -> InvocationOutcome:
        """Run one invocation; exceptions are logged with traceback, never raised."""
        invocation_id = str(uuid.uuid4())
        if wants_context:
            kwargs = {
                **kwargs,
                "context": InvocationContext(invocation_id, name, self._function_directory),
            }
        with self._idle:
            self._running[invocation_id] = name
        logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation_id)
        started = time.monotonic()
        try:
            result = user_function(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except (Exception, SystemExit):
            elapsed = (time.monotonic() - started) * 1000
            logger.exception(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)\n"
                "Exception while executing function: Functions.%s",
                name,
                invocation_id,
                elapsed,
                name,
            )
            return InvocationOutcome(succeeded=False)
        finally:
            with self._idle:
                self._running.pop(invocation_id, None)
                self._idle.notify_all()
        elapsed = (time.monotonic() - started) * 1000
        logger.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            name,
            invocation_id,
            elapsed,
        )
        return InvocationOutcome(succeeded=True, result=result)

    def wait_idle(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for running invocations; return those still running."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            return sorted(self._running.values())


async def _await(awaitable: Any) -> Any:
    return await awaitable


# --------------------------------------------------------------------------- timers


def _iso(moment: datetime | None) -> str:
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
                "Last": _iso(self._last),
                "Next": _iso(next_due or fired_at),
                "LastUpdated": _iso(self._last_updated),
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
            self.fire(base, None, f"Timer fired at {_iso(base)}")
        next_due = schedule.next_after(base)
        while self._sleep_until(next_due):
            fired_at = datetime.now()
            self.fire(fired_at, next_due, f"Timer fired at {_iso(fired_at)}")
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


# --------------------------------------------------------------------------- HTTP


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The two keys this host knows and the host's rules for them."""

    master: str
    function: str

    def presented(self, header: str | None, query: Mapping[str, list[str]]) -> str | None:
        """The key a request carries: the ``x-functions-key`` header first, then ``code``."""
        if header is not None:
            return header
        codes = query.get("code")
        return codes[0] if codes else None

    def _is(self, presented: str | None, key: str) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), key.encode())

    def allows(self, auth_level: str, presented: str | None) -> bool:
        """Whether a request with ``presented`` may call a function at ``auth_level``."""
        if auth_level == "anonymous":
            return True
        if self._is(presented, self.master):
            return True
        return auth_level == "function" and self._is(presented, self.function)


def resolve_keys(environ: Mapping[str, str]) -> tuple[KeyRing, list[str]]:
    """Keys from the settings; unset ones are generated (and named, to be logged once)."""
    generated = []
    values = {}
    for setting in (MASTER_KEY_SETTING, FUNCTION_KEY_SETTING):
        value = environ.get(setting, "")
        if not value:
            value = secrets.token_urlsafe(32)
            generated.append(setting)
        values[setting] = value
    return KeyRing(values[MASTER_KEY_SETTING], values[FUNCTION_KEY_SETTING]), generated


def _joined(pairs: Iterable[tuple[str, str]], *, lower: bool = False) -> dict[str, str]:
    """Repeated names joined with commas, as the host flattens headers and query values."""
    merged: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower() if lower else name
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return merged


class _RequestHandler(BaseHTTPRequestHandler):
    """Routes requests to HTTP functions, the admin API and the home page."""

    protocol_version = "HTTP/1.1"
    server_version = "localdev-functions-host"
    server: _HostHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("HTTP %s: %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        host = self.server.host
        if host.stopping.is_set():
            self.close_connection = True
            self._send(503, b"")
            return
        try:
            body = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._send(exc.status, b"")
            return
        raw_path, _, query_string = self.path.partition("?")
        path = urllib.parse.unquote(raw_path)
        query = urllib.parse.parse_qs(query_string, keep_blank_values=True)
        method = self.command.upper()
        if path in ("", "/") and method in ("GET", "HEAD"):
            page = (
                b"<html><body>Your Functions app is up and running (localdev.host).</body></html>"
            )
            self._send(200, page, content_type="text/html; charset=utf-8")
            return
        if path.lower().startswith("/admin/"):
            self._admin(path, method, query)
            return
        found = host.find_route(method, path)
        if found is None:
            self._send(404, b"")
            return
        function, route_params = found
        if not host.keys.allows(
            function.auth_level, host.keys.presented(self.headers.get("x-functions-key"), query)
        ):
            logger.info(
                "Unauthorized %s %s: '%s' needs a %s key (x-functions-key header or code)",
                method,
                raw_path,
                function.name,
                "master" if function.auth_level == "admin" else "function or master",
            )
            self._send(401, b"")
            return
        request = WorkerHttpRequest(
            method=method,
            url=f"http://{self.headers.get('Host', host.address)}{self.path}",
            headers=_joined(self.headers.items(), lower=True),
            params=_joined(urllib.parse.parse_qsl(query_string, keep_blank_values=True)),
            route_params=route_params,
            body_type="bytes",
            body=body,
        )
        outcome = host.invoker.invoke(
            function.name,
            function.user_function,
            {function.arg_name: request},
            reason=HOST_API_REASON,
            wants_context=function.wants_context,
        )
        if not outcome.succeeded:
            self._send(500, b"")
            return
        self._write_result(function.name, outcome.result)

    def _read_body(self) -> bytes:
        """The request body, sent with Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                try:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise _BodyError(400) from None
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_REQUEST_BODY_BYTES:
                    raise _BodyError(413)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _BodyError(400) from None
        if length > MAX_REQUEST_BODY_BYTES:
            raise _BodyError(413)
        return self.rfile.read(length) if length > 0 else b""

    def _admin(self, path: str, method: str, query: Mapping[str, list[str]]) -> None:
        """``POST /admin/functions/<name>``: run a timer function now (master key)."""
        host = self.server.host
        match = re.fullmatch(r"/admin/functions/([^/]+)/?", path, re.IGNORECASE)
        if match is None or method != "POST":
            self._send(404, b"")
            return
        if not host.keys.allows(
            "admin", host.keys.presented(self.headers.get("x-functions-key"), query)
        ):
            self._send(401, b"")
            return
        runner = host.find_timer(match.group(1))
        if runner is None:
            self._send(404, b"")
            return
        threading.Thread(
            target=runner.fire,
            args=(datetime.now(), None, HOST_API_REASON),
            name=f"admin-{runner.timer.name}",
            daemon=True,
        ).start()
        self._send(202, b"")

    def _write_result(self, name: str, result: Any) -> None:
        """Write what the function returned, as the worker's HTTP converter encodes it."""
        if result is None:
            self._send(204, b"")
            return
        if isinstance(result, str):
            self._send(200, result.encode(), content_type="text/plain; charset=utf-8")
            return
        if not isinstance(result, func_abc.HttpResponse):
            logger.error(
                "Function '%s' returned %s; expected azure.functions.HttpResponse or str",
                name,
                type(result).__name__,
            )
            self._send(500, b"")
            return
        headers = list(result.headers.items())
        content_type = None
        if not any(key.lower() == "content-type" for key, _ in headers):
            mimetype = result.mimetype
            charset = getattr(result, "charset", "utf-8")
            content_type = (
                f"{mimetype}; charset={charset}" if mimetype.startswith("text/") else mimetype
            )
        self._send(result.status_code, result.get_body() or b"", headers, content_type)

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)


class _HostHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # shutdown waits for invocations through the Invoker instead

    def __init__(self, address: tuple[str, int], host: LocalHost) -> None:
        self.host = host
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client hang-ups are routine; anything else is a bug in this host worth a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            logger.debug("HTTP client %s went away: %s", client_address, error)
        else:
            logger.error("Error handling HTTP request from %s", client_address, exc_info=error)


# --------------------------------------------------------------------------- host


class LocalHost:
    """Runs the indexed functions: timer threads plus one threaded HTTP server."""

    def __init__(
        self,
        timers: list[TimerFunction],
        http_functions: list[HttpFunction],
        *,
        keys: KeyRing,
        invoker: Invoker,
        route_prefix: str = DEFAULT_ROUTE_PREFIX,
    ) -> None:
        self.stopping = threading.Event()
        self.invoker = invoker
        self.keys = keys
        self.route_prefix = route_prefix.strip("/")
        self.http_functions = http_functions
        self.runners = [TimerRunner(timer, invoker, self.stopping) for timer in timers]
        self.address = ""
        self._server: _HostHttpServer | None = None
        self._server_thread: threading.Thread | None = None

    def find_route(self, method: str, path: str) -> tuple[HttpFunction, dict[str, str]] | None:
        """The function serving ``path``; None (404) if no route or method matches."""
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        if prefix:
            if path.lower() != prefix.lower() and not path.lower().startswith(prefix.lower() + "/"):
                return None
            path = path[len(prefix) :]
        wrong_method = []
        for function in self.http_functions:
            values = function.route.match(path or "/")
            if values is None:
                continue
            if function.methods is not None and method not in function.methods:
                wrong_method.append(function)
                continue
            return function, values
        if wrong_method:
            logger.info(
                "No route for %s %s%s: '%s' accepts %s (the Functions host answers 404, not 405)",
                method,
                prefix,
                path,
                wrong_method[0].name,
                ",".join(sorted(wrong_method[0].methods or ())),
            )
        return None

    def find_timer(self, name: str) -> TimerRunner | None:
        """A timer function by name (case-insensitive, like function names in the host)."""
        for runner in self.runners:
            if runner.timer.name.lower() == name.lower():
                return runner
        return None

    def function_urls(self, public_host: str) -> list[str]:
        """Core Tools-style listing lines for the startup banner."""
        lines = []
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        for function in sorted(self.http_functions, key=lambda fn: fn.name):
            methods = ",".join(sorted(function.methods)) if function.methods else "ALL"
            lines.append(
                f"{function.name}: [{methods}] http://{public_host}{prefix}/"
                f"{function.route.template} (auth: {function.auth_level})"
            )
        for runner in sorted(self.runners, key=lambda runner: runner.timer.name):
            timer = runner.timer
            source = ""
            if timer.schedule_expression != getattr(timer.schedule, "expression", None):
                source = f" from '{timer.schedule_expression}'"
            lines.append(f"{timer.name}: timerTrigger ({timer.schedule}{source})")
        return lines

    def start(self, bind: str, port: int) -> None:
        """Bind the HTTP port, then start serving and scheduling."""
        try:
            self._server = _HostHttpServer((bind, port), self)
        except OSError as exc:
            raise HostError(f"Cannot listen on {bind}:{port}: {exc.strerror}") from exc
        actual_port = self._server.server_address[1]
        public = "localhost" if bind in ("127.0.0.1", "0.0.0.0") else bind
        self.address = f"{public}:{actual_port}"
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name="http", daemon=True
        )
        self._server_thread.start()
        for runner in self.runners:
            runner.start()

    def stop(self, grace_seconds: float) -> list[str]:
        """Stop scheduling and serving; wait for running invocations; return any left."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        return self.invoker.wait_idle(grace_seconds)


# --------------------------------------------------------------------------- CLI


def configure_logging(level: str) -> None:
    """Root logger: time, level, logger and message, like the host's console output."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s.%(msecs)03d %(levelname)s [%(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localdev.host",
        description="Local stand-in for `func start`: runs this app's timer and HTTP functions.",
    )
    parser.add_argument("--app", default="function_app.py", help="the Functions app file")
    parser.add_argument(
        "--settings",
        default=None,
        help="local settings file (default: local.settings.json next to the app, if present)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="HTTP port (default: Host.LocalHttpPort or 7071)"
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        help="on shutdown, how long to wait for running invocations",
    )
    parser.add_argument(
        "--once", metavar="FUNCTION_NAME", help="run one timer function once and exit"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="root log level (default INFO)",
    )
    return parser.parse_args(argv)


def _load_settings(args: argparse.Namespace, app_path: Path) -> LocalSettings:
    if args.settings is not None:
        path = Path(args.settings)
        if not path.is_file():
            raise HostError(f"Settings file not found: {path}")
    else:
        path = app_path.parent / "local.settings.json"
        if not path.is_file():
            logger.info("No %s; using the environment only", path)
            return LocalSettings(values={})
    settings = read_local_settings(path)
    applied = apply_settings(settings.values, os.environ)
    logger.info(
        "Read %d app settings from %s (%d already set in the environment)",
        len(settings.values),
        path,
        len(settings.values) - len(applied),
    )
    return settings


def _run_once(
    name: str, indexed: tuple[list[TimerFunction], list[HttpFunction]], invoker: Invoker
) -> int:
    timers, http_functions = indexed
    if not timers:
        if http_functions:
            raise HostError(f"--once: '{name}' is HTTP-triggered; call it over HTTP instead")
        raise HostError(f"--once: no timer-triggered function named '{name}'")
    runner = TimerRunner(timers[0], invoker, threading.Event())
    now = datetime.now()
    ok = runner.fire(now, timers[0].schedule.next_after(now), HOST_API_REASON)
    return EXIT_OK if ok else EXIT_FUNCTION_FAILED


def _log_startup(host: LocalHost) -> None:
    """The function listing and upcoming occurrences, as Core Tools and the host print them."""
    listing = "\n\t".join(host.function_urls(host.address))
    logger.info("Functions:\n\n\t%s\n", listing or "(none)")
    now = datetime.now()
    for runner in host.runners:
        timer = runner.timer
        if isinstance(timer.schedule, TimeSpanSchedule):
            logger.warning(
                "'%s' uses a TimeSpan schedule: Azure accepts those only on App Service plans",
                timer.name,
            )
        upcoming = "\n".join(_iso(moment) for moment in next_occurrences(timer.schedule, now, 5))
        logger.info(
            "The next 5 occurrences of the '%s' schedule (%s) will be:\n%s",
            timer.name,
            timer.schedule,
            upcoming,
        )


def _serve(host: LocalHost, *, bind: str, port: int, grace_seconds: float) -> int:
    """Run until SIGINT/SIGTERM, then stop within the grace period; exit code 0."""
    stop_requested = threading.Event()
    signals_seen = 0

    def _on_signal(signum: int, _frame: types.FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            logger.warning("Second %s: exiting without waiting", signal.Signals(signum).name)
            os._exit(EXIT_FUNCTION_FAILED)
        stop_requested.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    host.start(bind, port)
    _log_startup(host)
    logger.info("Host started on http://%s (Ctrl-C to stop)", host.address)
    while not stop_requested.wait(0.5):
        pass
    logger.info("Stopping: no new invocations; waiting up to %ss for running ones", grace_seconds)
    left = host.stop(grace_seconds)
    if left:
        logger.warning("Still running after %ss, abandoned: %s", grace_seconds, ", ".join(left))
        logger.info("Host stopped")
        logging.shutdown()
        os._exit(EXIT_OK)  # do not let interpreter shutdown wait on the abandoned threads
    logger.info("Host stopped")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 function failed, 2 config error)."""
    args = _parse_args(argv)
    configure_logging(args.log_level)
    app_path = Path(args.app).resolve()
    try:
        settings = _load_settings(args, app_path)
        keys, generated = resolve_keys(os.environ)
        try:
            app = load_function_app(app_path)
            indexed = index_functions(app, os.environ, only=args.once)
        except HostError:
            raise
        except Exception as exc:
            logger.exception("Indexing %s failed", app_path)
            raise HostError(f"Worker failed to index functions: {exc!r}") from exc
        invoker = Invoker(str(app_path.parent))
        if args.once is not None:
            return _run_once(args.once, indexed, invoker)
        for setting in generated:
            key = getattr(keys, _KEY_FIELDS[setting])
            logger.warning("%s is not set; generated for this run: %s", setting, key)
        host = LocalHost(
            *indexed,
            keys=keys,
            invoker=invoker,
            route_prefix=read_route_prefix(app_path.parent),
        )
        port = args.port if args.port is not None else settings.local_http_port or DEFAULT_PORT
        return _serve(host, bind=args.bind, port=port, grace_seconds=args.grace_seconds)
    except HostError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
