"""``python -m localdev.host``: flags, startup (settings, keys, indexing), ``--once`` and the
serve loop with its signal handling and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import types
from datetime import datetime
from pathlib import Path

from localdev.host.errors import EXIT_CONFIG_ERROR, EXIT_FUNCTION_FAILED, EXIT_OK, HostError
from localdev.host.functions import HttpFunction, TimerFunction, index_functions, load_function_app
from localdev.host.invocation import HOST_API_REASON, Invoker
from localdev.host.keys import KEY_FIELDS, resolve_keys
from localdev.host.runtime import LocalHost
from localdev.host.schedules import TimeSpanSchedule, next_occurrences
from localdev.host.settings import (
    LocalSettings,
    apply_settings,
    read_local_settings,
    read_route_prefix,
)
from localdev.host.timers import TimerRunner, iso

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")

DEFAULT_PORT = 7071
DEFAULT_GRACE_SECONDS = 10.0


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
        upcoming = "\n".join(iso(moment) for moment in next_occurrences(timer.schedule, now, 5))
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
            key = getattr(keys, KEY_FIELDS[setting])
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
