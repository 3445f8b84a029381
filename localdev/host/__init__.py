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

Modules: ``settings`` (local.settings.json, ``%NAME%``, host.json), ``schedules`` (NCRONTAB
and TimeSpan), ``routes`` (route templates), ``functions`` (importing and indexing the app),
``invocation`` (calling functions), ``timers`` (the scheduler), ``keys``, ``server`` (HTTP
requests and the admin API), ``runtime`` (``LocalHost``: timers plus server) and ``cli``
(flags, startup, exit codes). They all log as ``localdev.host``.
"""

from __future__ import annotations

from localdev.host.cli import DEFAULT_GRACE_SECONDS, DEFAULT_PORT, configure_logging, main
from localdev.host.errors import (
    EXIT_CONFIG_ERROR,
    EXIT_FUNCTION_FAILED,
    EXIT_OK,
    HostError,
    ScheduleError,
)
from localdev.host.functions import (
    HttpFunction,
    TimerFunction,
    index_functions,
    load_function_app,
)
from localdev.host.invocation import (
    HOST_API_REASON,
    InvocationContext,
    InvocationOutcome,
    Invoker,
)
from localdev.host.keys import FUNCTION_KEY_SETTING, MASTER_KEY_SETTING, KeyRing, resolve_keys
from localdev.host.routes import RouteTemplate
from localdev.host.runtime import LocalHost
from localdev.host.schedules import (
    CronSchedule,
    Schedule,
    TimeSpanSchedule,
    next_occurrences,
    parse_schedule,
)
from localdev.host.server import MAX_REQUEST_BODY_BYTES
from localdev.host.settings import (
    DEFAULT_ROUTE_PREFIX,
    LocalSettings,
    apply_settings,
    read_local_settings,
    read_route_prefix,
    resolve_setting_references,
)
from localdev.host.timers import TimerRunner

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_PORT",
    "DEFAULT_ROUTE_PREFIX",
    "EXIT_CONFIG_ERROR",
    "EXIT_FUNCTION_FAILED",
    "EXIT_OK",
    "FUNCTION_KEY_SETTING",
    "HOST_API_REASON",
    "MASTER_KEY_SETTING",
    "MAX_REQUEST_BODY_BYTES",
    "CronSchedule",
    "HostError",
    "HttpFunction",
    "InvocationContext",
    "InvocationOutcome",
    "Invoker",
    "KeyRing",
    "LocalHost",
    "LocalSettings",
    "RouteTemplate",
    "Schedule",
    "ScheduleError",
    "TimeSpanSchedule",
    "TimerFunction",
    "TimerRunner",
    "apply_settings",
    "configure_logging",
    "index_functions",
    "load_function_app",
    "main",
    "next_occurrences",
    "parse_schedule",
    "read_local_settings",
    "read_route_prefix",
    "resolve_keys",
    "resolve_setting_references",
]
