"""HTTPS front end: ARM routing, bearer check, fault injection, control endpoints and stats.

TLS is negotiated in each connection's own thread (not in the accept loop), so one slow or broken
client cannot stall the others. Request bodies are never logged: they carry secure values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from localdev.aci_emulator.limits import (
    authorization_failed,
    resource_group_exists,
    resource_group_not_found,
)
from localdev.aci_emulator.model import (
    RESOURCE_TYPE,
    SUPPORTED_API_VERSIONS,
    ArmError,
    bad_request,
)
from localdev.aci_emulator.options import Options, OptionsStore
from localdev.aci_emulator.store import Response, Store

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "/_emulator/"
MAX_BODY_BYTES = 4 * 1024 * 1024
_SEG = r"([^/]+)"
_PROVIDER = r"/providers/microsoft\.containerinstance"
ROUTES: list[tuple[str, re.Pattern[str]]] = [
    (
        "list_subscription",
        re.compile(rf"^/subscriptions/{_SEG}{_PROVIDER}/containergroups/?$", re.I),
    ),
    (
        "operation",
        re.compile(
            rf"^/subscriptions/{_SEG}{_PROVIDER}/locations/{_SEG}/operations/{_SEG}/?$", re.I
        ),
    ),
    (
        "list_resource_group",
        re.compile(
            rf"^/subscriptions/{_SEG}/resourcegroups/{_SEG}{_PROVIDER}/containergroups/?$", re.I
        ),
    ),
    (
        "container_group",
        re.compile(
            rf"^/subscriptions/{_SEG}/resourcegroups/{_SEG}{_PROVIDER}/containergroups/{_SEG}/?$",
            re.I,
        ),
    ),
    (
        "action",
        re.compile(
            rf"^/subscriptions/{_SEG}/resourcegroups/{_SEG}{_PROVIDER}/containergroups/{_SEG}"
            r"/(stop|start|restart)/?$",
            re.I,
        ),
    ),
    (
        "logs",
        re.compile(
            rf"^/subscriptions/{_SEG}/resourcegroups/{_SEG}{_PROVIDER}/containergroups/{_SEG}"
            rf"/containers/{_SEG}/logs/?$",
            re.I,
        ),
    ),
]
ALLOWED_METHODS = {
    "list_subscription": {"GET"},
    "list_resource_group": {"GET"},
    "operation": {"GET"},
    "container_group": {"GET", "PUT", "PATCH", "DELETE"},
    "action": {"POST"},
    "logs": {"GET"},
}


class Stats:
    """Request, response and fault counters for `GET /_emulator/stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def count(self, counter: str, key: str) -> None:
        with self._lock:
            getattr(self, counter)[key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_seconds": round(time.time() - self.started, 3),
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "responses": dict(self.responses),
                "faults": dict(self.faults),
            }

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.faults.clear()


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        options: OptionsStore,
        initial: Options,
        tls: ssl.SSLContext,
    ) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.options = options
        self.initial = initial
        self.tls = tls
        self.stats = Stats()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake in this connection's thread; a failed handshake only ends this connection."""
        request.settimeout(30)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            logger.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            Handler(conn, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                conn.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aci-emulator"
    timeout = 120  # idle keep-alive connections are closed after this
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---------------------------------------------------------------- plumbing

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ArmError(413, "RequestEntityTooLarge", "The request body is too large.")
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        status = response.status
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        correlation = self.headers.get("x-ms-client-request-id") or str(uuid.uuid4())
        self.send_header("x-ms-correlation-request-id", correlation)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)
        self.server.stats.count("responses", str(status))

    def _base(self) -> str:
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        return f"https://{host}"

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            body = self._read_body()
        except (ArmError, ValueError) as exc:
            self.close_connection = True
            error = exc if isinstance(exc, ArmError) else bad_request("InvalidRequest", str(exc))
            self._send(Response(error.status, error.body()))
            return
        if url.path.startswith(CONTROL_PREFIX):
            self._control(method, url.path[len(CONTROL_PREFIX) :], body)
            return
        kind, params = _route(url.path)
        self.server.stats.count("requests", f"{method} {kind}")
        auth = self.headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            self._send(_unauthorized(bool(auth)))
            return
        mutating = method in ("PUT", "PATCH", "DELETE", "POST")
        plan = self.server.options.plan(method, kind, mutating)
        if plan.latency:
            time.sleep(plan.latency)
        if plan.before:
            self.server.stats.count("faults", plan.before)
            self._send(self._fault(plan.before, params, mutating))
            return
        try:
            response = self._arm(method, kind, params, query, body)
        except ArmError as exc:
            response = Response(exc.status, exc.body(), exc.headers)
        except Exception:  # an emulator bug must look like an ARM 500, not a dropped socket
            logger.exception("unhandled error in %s %s", method, url.path)
            response = self._fault("500", params, mutating)
        if plan.after_commit and mutating and response.status < 400:
            self.server.stats.count("faults", "after-commit")
            response = self._fault("500", params, mutating)
        if plan.drop:
            self.server.stats.count("faults", "drop")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(response)

    def _arm(
        self,
        method: str,
        kind: str,
        params: tuple[str, ...],
        query: dict[str, list[str]],
        body: bytes,
    ) -> Response:
        if kind == "unknown":
            raise ArmError(
                404,
                "InvalidResourceType",
                "The resource type could not be found in the namespace "
                "'Microsoft.ContainerInstance' for api version "
                f"'{(query.get('api-version') or [''])[0]}'.",
            )
        if method not in ALLOWED_METHODS[kind]:
            raise ArmError(
                405, "MethodNotAllowed", f"The method '{method}' is not allowed for this resource."
            )
        versions = query.get("api-version") or []
        if not versions or not versions[0]:
            raise bad_request(
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        # Operation status URLs are ours (the PUT response names them), so any version passes.
        if kind != "operation" and versions[0] not in SUPPORTED_API_VERSIONS:
            raise bad_request(
                "NoRegisteredProviderFound",
                f"No registered resource provider found for location 'local' and API version "
                f"'{versions[0]}' for type 'containerGroups'. The supported api-versions are "
                f"'{', '.join(SUPPORTED_API_VERSIONS)}'.",
            )
        _check_scope(self.server.options.snapshot(), method, kind, params)
        store = self.server.store
        if kind == "list_subscription":
            skip = _first(query, "$skiptoken")
            return store.list_groups(params[0], None, skip, self._base() + _path_of(self.path))
        if kind == "list_resource_group":
            skip = _first(query, "$skiptoken")
            return store.list_groups(params[0], params[1], skip, self._base() + _path_of(self.path))
        if kind == "operation":
            return store.operation(params[0], params[2])
        sub, rg, name = params[0], params[1], params[2]
        if kind == "logs":
            return store.logs(sub, rg, name, params[3], _tail(query))
        if kind == "action":
            action = params[3].lower()
            if action == "stop":
                return store.stop(sub, rg, name)
            if action == "start":
                return store.start_group(sub, rg, name, self._base())
            return store.restart(sub, rg, name, self._base())
        if method == "GET":
            return store.get(sub, rg, name)
        if method == "DELETE":
            return store.delete(sub, rg, name)
        parsed = _json(body)
        if method == "PATCH":
            return store.patch(sub, rg, name, parsed)
        return store.put(sub, rg, name, parsed, self._base())

    def _fault(self, fault: str, params: tuple[str, ...], mutating: bool) -> Response:
        retry_after = _seconds(self.server.options.snapshot().retry_after)
        sub = params[0] if params else "unknown"
        if fault == "429":
            kind = "write" if mutating else "read"
            return Response(
                429,
                {
                    "error": {
                        "code": "SubscriptionRequestsThrottled",
                        "message": f"Number of '{kind}' requests for subscription '{sub}' "
                        f"exceeded the limit. Please try again after '{retry_after}' seconds.",
                    }
                },
                {"Retry-After": retry_after},
            )
        if fault == "503":
            return Response(
                503,
                {
                    "error": {
                        "code": "ServiceUnavailable",
                        "message": "The server is currently unable to handle the request. "
                        "Please retry your request.",
                    }
                },
                {"Retry-After": retry_after},
            )
        return Response(
            500,
            {
                "error": {
                    "code": "InternalServerError",
                    "message": "Encountered internal server error. Diagnostic information: "
                    f"timestamp '{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}', "
                    f"subscription id '{sub}', tracking id '{uuid.uuid4()}'.",
                }
            },
        )

    # ---------------------------------------------------------------- control endpoint

    def _control(self, method: str, what: str, body: bytes) -> None:
        """Test/dev controls: never faulted, never counted, no bearer needed (loopback only)."""
        server = self.server
        what = what.rstrip("/")
        try:
            if (method, what) == ("GET", "config"):
                result: Any = server.options.snapshot().public()
            elif (method, what) == ("POST", "config"):
                result = server.options.update(_json(body)).public()
                logger.info("options changed: %s", sorted(_json(body)))
            elif (method, what) == ("GET", "stats"):
                result = {**server.stats.snapshot(), **server.store.counts()}
            elif (method, what) == ("POST", "stats/reset"):
                server.stats.reset()
                result = {"ok": True}
            elif (method, what) == ("GET", "groups"):
                result = server.store.describe()
            elif (method, what) == ("POST", "reset"):
                request = _json(body) if body else {}
                removed = server.store.reset()
                if isinstance(request, dict) and request.get("options"):
                    server.options.update(server.initial.public())
                result = {"ok": True, "groups_removed": removed}
            elif (method, what) == ("GET", "health"):
                result = {"ok": True}
            else:
                self._send(Response(404, {"error": {"code": "NotFound", "message": what}}))
                return
        except (ValueError, ArmError) as exc:
            message = exc.message if isinstance(exc, ArmError) else str(exc)
            self._send(Response(400, {"error": {"code": "InvalidConfig", "message": message}}))
            return
        self._send(Response(200, result))


ACTIONS = {
    ("GET", "container_group"): "read",
    ("GET", "list_resource_group"): "read",
    ("GET", "list_subscription"): "read",
    ("GET", "operation"): "read",
    ("PUT", "container_group"): "write",
    ("PATCH", "container_group"): "write",
    ("DELETE", "container_group"): "delete",
    ("GET", "logs"): "containers/logs/read",
}


def _check_scope(opts: Options, method: str, kind: str, params: tuple[str, ...]) -> None:
    """What ARM checks before ACI sees a request: the caller's role assignment (403
    `AuthorizationFailed` with `authorization_failed`), then that the resource group exists
    (404 `ResourceGroupNotFound` unless it matches `resource_groups`)."""
    if opts.authorization_failed:
        if kind == "action":
            action = f"{params[3].lower()}/action"
        else:
            action = ACTIONS.get((method, kind), "read")
        scope = f"/subscriptions/{params[0]}"
        if kind not in ("list_subscription", "operation"):
            scope += f"/resourceGroups/{params[1]}"
            if kind != "list_resource_group":
                scope += f"/providers/{RESOURCE_TYPE}/{params[2]}"
        raise authorization_failed(f"{RESOURCE_TYPE}/{action}", scope)
    if kind not in ("list_subscription", "operation") and not resource_group_exists(
        params[1], opts.resource_groups
    ):
        raise resource_group_not_found(params[1])


def _route(path: str) -> tuple[str, tuple[str, ...]]:
    for kind, pattern in ROUTES:
        match = pattern.match(path)
        if match:
            return kind, tuple(match.groups())
    return "unknown", ()


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _path_of(raw: str) -> str:
    return urlsplit(raw).path


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(
            "InvalidRequestContent",
            f"The request content was invalid and could not be deserialized: '{exc}'.",
        ) from exc


def _tail(query: dict[str, list[str]]) -> int | None:
    raw = _first(query, "tail")
    if raw is None or raw == "":
        return None
    try:
        tail = int(raw)
    except ValueError:
        tail = -1
    if tail < 0:
        raise bad_request(
            "InvalidRequestContent", f"The tail '{raw}' must be a non-negative integer."
        )
    return tail


def _seconds(value: float) -> str:
    """Retry-After as ARM sends it (whole seconds); fractions are kept for fast tests."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _unauthorized(has_header: bool) -> Response:
    if has_header:
        code, message = "InvalidAuthenticationToken", "The access token is invalid."
    else:
        code = "AuthenticationFailed"
        message = "Authentication failed. The 'Authorization' header is missing."
    return Response(
        401,
        {"error": {"code": code, "message": message}},
        {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
            'error="invalid_token", error_description="The authentication failed because of '
            "missing 'Authorization' header.\""
        },
    )
