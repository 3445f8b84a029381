"""The HTTP side of the host: routes requests to HTTP functions, the admin API and the home page."""

from __future__ import annotations

import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from azure.functions import _abc as func_abc
from azure.functions.http import HttpRequest as WorkerHttpRequest

from localdev.host.invocation import HOST_API_REASON

if TYPE_CHECKING:
    from localdev.host.runtime import LocalHost

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")

MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024  # the host's default request size limit


class _BodyError(Exception):
    """A request body this host will not read; carries the HTTP status to answer."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


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
    server: HostHttpServer

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


class HostHttpServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows its LocalHost (for routes, keys and the invoker)."""

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
