"""The function-app adapter: import the app file as the Python worker does and turn the
library's function registry (``app.get_functions()``) into the timer and HTTP functions this
host runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.decorators.http import HttpOutput, HttpTrigger
from azure.functions.decorators.timer import TimerTrigger

from localdev.host.errors import HostError, ScheduleError
from localdev.host.routes import RouteTemplate
from localdev.host.schedules import Schedule, parse_schedule, runs_more_than_once_a_minute
from localdev.host.settings import resolve_setting_references

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")


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
                use_monitor = not runs_more_than_once_a_minute(schedule, now)
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
