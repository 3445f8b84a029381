"""The running host: timer threads plus one threaded HTTP server, started and stopped together."""

from __future__ import annotations

import logging
import threading

from localdev.host.errors import HostError
from localdev.host.functions import HttpFunction, TimerFunction
from localdev.host.invocation import Invoker
from localdev.host.keys import KeyRing
from localdev.host.server import HostHttpServer
from localdev.host.settings import DEFAULT_ROUTE_PREFIX
from localdev.host.timers import TimerRunner

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")


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
        self._server: HostHttpServer | None = None
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
            self._server = HostHttpServer((bind, port), self)
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
