"""Loopback HTTP(S) reverse proxy for tests, chaos runs and benchmarks.

Sits between a client (the azure SDKs, the launcher, a poller in another process) and a local
emulator (Azurite for blobs, the ARM emulator for Container Instances) so a run can:

* COUNT requests by kind (`storage_kind` / `arm_kind` classify them) and add a fixed DELAY per
  request, standing in for a cloud round trip in benchmarks;
* inject FAULTS (500, 503, 429 + Retry-After, and dropped connections both before forwarding and
  after the upstream applied the request: "applied but the response was lost");
* fire TRIGGERS: a callback (e.g. `os.kill(pid, SIGKILL)`) on the Nth request of a kind, before it
  is forwarded or after the upstream applied it, which is how crash tests pick their crash point.

It forwards the request target byte-for-byte (Shared Key signs the path and query, not the host),
streams bodies in fixed-size chunks both ways so multi-GB blobs pass in bounded memory, and keeps
one upstream keep-alive connection per client connection (= per handler thread).

In-process: ``with Proxy(upstream=azurite_url, delay_ms=20) as p: ... p.counts()``.
Other processes: ``python -m localdev.proxy --upstream URL --port N`` prints the URL (and the CA
path with ``--tls``) and is steered through ``/_proxy/...`` (counts, reset, config, trigger), a
control endpoint that is never counted, delayed or faulted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Bytes per read/write when streaming a body; bounds the proxy's memory per connection."""
BUFFER_LIMIT = 1024 * 1024
"""Request bodies up to this size are buffered, so a stale upstream keep-alive can be retried."""
CONTROL_PREFIX = "/_proxy/"
MAX_PAUSE_SECONDS = 600.0
"""A paused proxy lets its held requests go after this long, so a forgotten pause cannot hang."""
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
FAULT_LABELS = ("500", "503", "429", "drop_before", "drop_after")

Classifier = Callable[[str, str, str | Mapping[str, str], Mapping[str, str]], str]
Flavor = Literal["storage", "arm"]
When = Literal["before", "after"]
Then = Literal["drop", "continue"]


# --------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------


def _query(query: str | Mapping[str, str]) -> dict[str, str]:
    """Query parameters with lower-cased names and values (Azure treats them case-insensitively)."""
    items = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query.items()
    return {k.lower(): v.lower() for k, v in items}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def storage_kind(
    method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """Classify a Blob REST request.

    Kinds: ``list``, ``copy`` (PUT with x-ms-copy-source), ``put_blob``, ``put_block``,
    ``put_block_list``, ``lease:<action>`` (``lease`` if no action header), ``delete`` (blob),
    ``batch`` (a Blob Batch request: many deletes in one),
    ``delete_container``, ``get_blob``, ``get_props`` (HEAD, and GET of container properties or
    metadata), ``set_metadata``, ``create_container``, ``abort_copy``, ``other``.
    Container-level calls are recognised by ``restype=container``, not by counting path segments,
    because blob names may contain slashes.
    """
    m = method.upper()
    q = _query(query)
    comp = q.get("comp", "")
    container_level = q.get("restype", "") == "container"
    if m == "HEAD":
        return "get_props"
    if m == "GET":
        if comp == "list":
            return "list"
        if comp in ("", "metadata", "properties") and container_level:
            return "get_props"
        if comp == "":
            return "get_blob" if path.strip("/").count("/") >= 2 else "other"
        if comp == "metadata":
            return "get_props"
        return "other"
    if m == "PUT":
        if comp == "lease":
            action = (_header(headers, "x-ms-lease-action") or "").strip().lower()
            return f"lease:{action}" if action else "lease"
        if comp == "block":
            return "put_block"
        if comp == "blocklist":
            return "put_block_list"
        if comp == "copy":
            return "abort_copy"
        if _header(headers, "x-ms-copy-source"):
            return "copy"
        if comp == "metadata":
            return "set_metadata"
        if comp == "":
            return "create_container" if container_level else "put_blob"
        return "other"
    if m == "DELETE":
        if container_level:
            return "delete_container"
        return "delete" if comp == "" else "other"
    if m == "POST" and comp == "batch":
        return "batch"
    return "other"


_ACI_GROUPS = "/providers/microsoft.containerinstance/containergroups"


def arm_kind(
    method: str, path: str, query: str | Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """Classify an ARM request for Microsoft.ContainerInstance container groups.

    Kinds: ``arm_list`` (GET on the containerGroups collection, subscription- or resource-group
    scoped, nextLink pages included since they hit the same path), ``arm_get``, ``arm_put``,
    ``arm_delete``, ``arm_patch``, ``arm_stop``, ``arm_logs``, ``arm_other``.
    """
    m = method.upper()
    low = path.lower().rstrip("/")
    at = low.find(_ACI_GROUPS)
    if at < 0:
        return "arm_other"
    rest = [p for p in low[at + len(_ACI_GROUPS) :].split("/") if p]
    if not rest:
        return "arm_list" if m == "GET" else "arm_other"
    if len(rest) == 1:
        by_method = {
            "GET": "arm_get",
            "PUT": "arm_put",
            "DELETE": "arm_delete",
            "PATCH": "arm_patch",
        }
        return by_method.get(m, "arm_other")
    if len(rest) == 2 and rest[1] == "stop" and m == "POST":
        return "arm_stop"
    if len(rest) == 4 and rest[1] == "containers" and rest[3] == "logs" and m == "GET":
        return "arm_logs"
    return "arm_other"


def kind_matches(pattern: str, kind: str) -> bool:
    """``*`` matches anything; ``lease`` matches ``lease`` and every ``lease:<action>``."""
    return pattern in ("*", kind) or kind.startswith(pattern + ":")


# --------------------------------------------------------------------------------------------
# Faults and triggers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultConfig:
    """Per-request fault probabilities (drawn independently per request from a seeded RNG).

    The rates are exclusive slices of [0, 1), so their sum must not exceed 1. `kinds` limits
    faults to matching request kinds (see `kind_matches`); `flavor` picks storage-style XML or
    ARM-style JSON error bodies (None: follow the proxy's classifier).
    """

    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_429: float = 0.0
    rate_drop_before: float = 0.0
    rate_drop_after: float = 0.0
    retry_after_s: float = 1.0
    kinds: frozenset[str] | None = None
    flavor: Flavor | None = None

    def __post_init__(self) -> None:
        rates = self._rates()
        if any(r < 0 or r > 1 for r in rates):
            raise ValueError(f"fault rates must be within [0, 1]: {rates}")
        if sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates add up to more than 1: {sum(rates)}")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.flavor not in (None, "storage", "arm"):
            raise ValueError(f"unknown fault flavor {self.flavor!r}")
        if self.kinds is not None and not isinstance(self.kinds, frozenset):
            kinds: Any = self.kinds
            object.__setattr__(
                self, "kinds", frozenset([kinds] if isinstance(kinds, str) else kinds)
            )

    def _rates(self) -> tuple[float, ...]:
        return (
            self.rate_500,
            self.rate_503,
            self.rate_429,
            self.rate_drop_before,
            self.rate_drop_after,
        )

    @classmethod
    def spread(cls, rate: float, **fields: Any) -> FaultConfig:
        """Split one total fault rate evenly over all five fault types."""
        each = rate / len(FAULT_LABELS)
        return cls(
            rate_500=each,
            rate_503=each,
            rate_429=each,
            rate_drop_before=each,
            rate_drop_after=each,
            **fields,
        )

    @property
    def active(self) -> bool:
        return sum(self._rates()) > 0

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or any(kind_matches(k, kind) for k in self.kinds)

    def pick(self, draw: float) -> str | None:
        """Map a uniform draw in [0, 1) to a fault label, or None for "forward normally"."""
        edge = 0.0
        for label, rate in zip(FAULT_LABELS, self._rates(), strict=True):
            edge += rate
            if draw < edge:
                return label
        return None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kinds"] = sorted(self.kinds) if self.kinds is not None else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultConfig:
        fields = dict(data)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if fields.get("kinds") is not None:
            fields["kinds"] = frozenset(fields["kinds"])
        return cls(**fields)


@dataclass(eq=False)
class Trigger:
    """A one-shot hook on the `nth` request whose kind matches `kind` (counted from creation).

    `when="before"`: the callback runs before the request is forwarded; with `then="drop"` (the
    default) the request is then never forwarded and the connection is closed, so "killed before
    the call reached the server" really means the server never saw it.
    `when="after"`: the callback runs once the upstream has answered (the request was applied);
    with `then="drop"` the response is discarded and the client connection closed ("applied but
    the response was lost"); `then="continue"` relays the response as usual.
    `fired` is set after the callback returned, so tests can wait on it.
    """

    kind: str
    nth: int
    callback: Callable[[], object]
    when: When = "before"
    then: Then = "drop"
    seen: int = 0
    fired: threading.Event = dataclasses.field(default_factory=threading.Event)
    _due: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nth": self.nth,
            "when": self.when,
            "then": self.then,
            "seen": self.seen,
            "fired": self.fired.is_set(),
        }


@dataclass(frozen=True)
class Refusal:
    """A standing refusal: every request of a matching kind whose (URL-decoded) path matches
    `path` (a regular expression searched in it) is answered `status` with storage error `code`
    and never forwarded.

    This is a FAKE of what Azurite cannot do: Azure refuses to delete a blob under an
    immutability policy or legal hold (409 BlobImmutableDueToPolicy), or that the caller's role
    may not delete (403 AuthorizationPermissionMismatch); Azurite has neither. A Blob Batch
    request carrying such a delete is refused whole when a rule names kind ``batch`` (Azure
    refuses the subrequest instead; the client then falls back to single deletes)."""

    kind: str
    path: str = ""
    status: int = 409
    code: str = "BlobImmutableDueToPolicy"
    message: str = "This operation is not permitted as the blob is immutable due to a policy."

    def matches(self, kind: str, path: str) -> bool:
        return kind_matches(self.kind, kind) and re.search(self.path, unquote(path)) is not None


@dataclass
class _Plan:
    """What to do with one admitted request; decided atomically under the proxy lock."""

    kind: str
    delay_s: float
    fault: str | None
    faults: FaultConfig
    before: list[Trigger]
    after: list[Trigger]


class _ClientGoneError(Exception):
    """The downstream client disconnected; nothing can be answered any more."""


# --------------------------------------------------------------------------------------------
# Server and handler
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """Threaded server whose TLS handshake runs in the handler thread, not the accept loop."""

    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], proxy: Proxy, ctx: ssl.SSLContext | None):
        self.proxy = proxy
        self.ssl_ctx = ctx
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.ssl_ctx is not None:
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("proxy connection from %s failed: %r", client_address, sys.exception())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 300  # idle keep-alive clients eventually free their thread
    server_version = "model-launcher-proxy"

    def __init__(self, request: Any, client_address: Any, server: socketserver.BaseServer) -> None:
        assert isinstance(server, _Server)
        self.proxy: Proxy = server.proxy
        self._upstream: http.client.HTTPConnection | None = None
        super().__init__(request, client_address, server)

    # -- connection lifecycle ----------------------------------------------------------------

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()
        self.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self._close_upstream()
            self.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            with contextlib.suppress(Exception):
                self._upstream.close()
            self._upstream = None

    def _drop(self) -> None:
        """Close the client connection without sending a single response byte."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        target = self._origin_form(self.path)
        split = urlsplit(target)
        try:
            if split.path.startswith(CONTROL_PREFIX):
                self._control(split.path)
            else:
                self._proxy_request(target, split.path, split.query)
        except _ClientGoneError:
            self._close_upstream()
            self._drop()
        except Exception:
            logger.exception("proxy failed on %s %s", self.command, split.path)
            self._close_upstream()
            self._drop()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_MERGE = _dispatch

    @staticmethod
    def _origin_form(raw: str) -> str:
        """Turn an absolute-form target into origin-form without re-encoding anything."""
        if raw.startswith("/"):
            return raw
        split = urlsplit(raw)
        if split.scheme and split.netloc:
            rest = raw[len(split.scheme) + 3 + len(split.netloc) :]
            return rest if rest.startswith("/") else "/" + rest
        return raw

    def _proxy_request(self, target: str, path: str, query: str) -> None:
        proxy = self.proxy
        headers = {k.lower(): v for k, v in self.headers.items()}
        kind = proxy._classify(self.command, path, query, headers)
        plan = proxy._admit(kind)
        if plan.delay_s > 0:
            time.sleep(plan.delay_s)
        drop = plan.fault == "drop_before"
        for trig in plan.before:
            proxy._fire(trig, kind)
            drop = drop or trig.then == "drop"
        if drop:
            logger.debug("dropping %s %s before forwarding", self.command, path)
            self._drop()
            return
        proxy._wait_if_paused()
        refusal = proxy._refusal(kind, path)
        if refusal is not None:
            self._drain_body()
            self._send_refusal(refusal)
            return
        if plan.fault in ("500", "503", "429"):
            self._drain_body()
            self._send_fault(int(plan.fault), plan)
            return
        resp = self._forward(target)
        if resp is None:
            return
        logger.debug("%s %s [%s] -> %s", self.command, path, kind, resp.status)
        drop = plan.fault == "drop_after"
        for trig in plan.after:
            proxy._fire(trig, kind)
            drop = drop or trig.then == "drop"
        if drop:
            logger.debug("dropping the response to %s %s after forwarding", self.command, path)
            resp.close()
            self._close_upstream()
            self._drop()
            return
        self._relay(resp)

    # -- request body ----------------------------------------------------------------------------

    def _is_chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        try:
            return max(int(raw), 0) if raw else 0
        except ValueError:
            return 0

    def _read(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except OSError as exc:
            raise _ClientGoneError from exc
        if len(data) < n:
            raise _ClientGoneError(f"client closed after {len(data)} of {n} body bytes")
        return data

    def _readline(self) -> bytes:
        try:
            line = self.rfile.readline(65537)
        except OSError as exc:
            raise _ClientGoneError from exc
        if not line:
            raise _ClientGoneError("client closed inside a chunked body")
        return line

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body in chunks of at most CHUNK bytes, de-chunking if needed."""
        if self._is_chunked():
            while True:
                size = int(self._readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._readline() not in (b"\r\n", b"\n"):
                        pass  # trailers are dropped: nothing here uses them
                    return
                while size:
                    piece = self._read(min(size, CHUNK))
                    size -= len(piece)
                    yield piece
                self._readline()
        else:
            remaining = self._content_length()
            while remaining:
                piece = self._read(min(remaining, CHUNK))
                remaining -= len(piece)
                yield piece

    def _drain_body(self) -> None:
        for _ in self._iter_body():
            pass

    # -- forwarding ----------------------------------------------------------------------------

    def _forward_headers(self, chunked: bool) -> list[tuple[str, str]]:
        listed = {
            token.strip().lower()
            for value in self.headers.get_all("Connection", [])
            for token in value.split(",")
        }
        skip = HOP_BY_HOP | listed | {"host", "expect"}
        if chunked:
            skip = skip | {"content-length"}
        host = self.headers.get("Host") if self.proxy.preserve_host else None
        out = [("Host", host or self.proxy.upstream_netloc)]
        out += [(k, v) for k, v in self.headers.items() if k.lower() not in skip]
        return out

    def _upstream_conn(self) -> tuple[http.client.HTTPConnection, bool]:
        """This connection's upstream keep-alive, replaced if the server closed it while idle."""
        conn = self._upstream
        if conn is not None and conn.sock is not None and _readable(conn.sock):
            # Idle and readable means EOF (keep-alive timeout) or junk: never reuse it.
            self._close_upstream()
            conn = None
        if conn is None:
            conn = self.proxy._new_upstream()
            self._upstream = conn
        return conn, conn.sock is not None

    def _forward(self, target: str) -> http.client.HTTPResponse | None:
        """Send the request upstream; None if a 502 was answered instead."""
        chunked = self._is_chunked()
        length = self._content_length()
        buffered = not chunked and length <= BUFFER_LIMIT
        body = self._read(length) if buffered and length else None
        headers = self._forward_headers(chunked)
        for attempt in (1, 2):
            conn, reused = self._upstream_conn()
            try:
                conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                if not buffered:
                    conn.endheaders()
                    for piece in self._iter_body():
                        conn.send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                    if chunked:
                        conn.send(b"0\r\n\r\n")
                else:
                    conn.endheaders(message_body=body)
                return conn.getresponse()
            except _ClientGoneError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._close_upstream()
                # Only a reused keep-alive that the server closed under us is retried: anything
                # else may mean the request was applied, and resending it would not be faithful.
                stale = isinstance(exc, (BrokenPipeError, ConnectionResetError))
                if attempt == 1 and reused and buffered and stale:
                    logger.debug("upstream keep-alive failed (%s); retrying on a new one", exc)
                    continue
                logger.warning(
                    "upstream %s failed for %s %s: %s",
                    self.proxy.upstream,
                    self.command,
                    target,
                    exc,
                )
                self._send_simple(502, f"proxy: upstream failed: {exc}\n", close=True)
                return None
        return None  # pragma: no cover - the loop always returns

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Copy status, end-to-end headers and body to the client, streaming the body."""
        listed = {
            token.strip().lower()
            for value in resp.msg.get_all("Connection", [])
            for token in value.split(",")
        }
        skip = HOP_BY_HOP | listed
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if not no_body and resp.chunked:
            skip = skip | {"content-length"}
        try:
            self.send_response_only(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in skip:
                    self.send_header(name, value)
            if no_body:
                resp.read()
                self.end_headers()
                return
            framed = resp.length is None  # chunked or read-until-close upstream
            if framed and self.request_version == "HTTP/1.0":
                framed = False
                self.close_connection = True
                self.send_header("Connection", "close")
            elif framed:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                try:
                    data = resp.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    logger.warning("upstream body broke off: %s", exc)
                    self._close_upstream()
                    self._drop()
                    return
                if not data:
                    break
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if framed else data)
            if not resp.isclosed():
                resp.read()  # read1(0) on an empty body leaves the response open; close it cleanly
            if framed:
                self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:
            raise _ClientGoneError from exc

    # -- local answers ---------------------------------------------------------------------------

    def _send_simple(
        self,
        status: int,
        body: str | bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: list[tuple[str, str]] | None = None,
        close: bool = False,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response_only(status)
            self.send_header("Date", formatdate(usegmt=True))
            self.send_header("Server", self.server_version)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(data)))
            for name, value in extra or []:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError as exc:
            raise _ClientGoneError from exc

    def _send_refusal(self, refusal: Refusal) -> None:
        request_id = str(uuid.uuid4())
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
            f"{refusal.code}</Code><Message>{refusal.message}\nRequestId:{request_id}</Message></Error>"
        )
        extra = [
            ("x-ms-request-id", request_id),
            ("x-ms-error-code", refusal.code),
            ("x-ms-version", "2021-12-02"),
            ("x-proxy-refusal", refusal.code),
        ]
        self._send_simple(refusal.status, body, "application/xml", extra)

    def _send_fault(self, status: int, plan: _Plan) -> None:
        flavor = plan.faults.flavor or self.proxy.flavor
        request_id = str(uuid.uuid4())
        extra = [("x-ms-request-id", request_id), ("x-proxy-fault", str(status))]
        if status == 429:
            extra.append(("Retry-After", f"{plan.faults.retry_after_s:g}"))
        if flavor == "arm":
            code, message = _ARM_ERRORS[status]
            body = json.dumps({"error": {"code": code, "message": message}})
            extra += [
                ("x-ms-correlation-request-id", request_id),
                ("x-ms-failure-cause", "service"),
            ]
            self._send_simple(status, body, "application/json; charset=utf-8", extra)
            return
        code, message = _STORAGE_ERRORS[status]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
            f"{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{stamp}</Message></Error>"
        )
        extra += [("x-ms-error-code", code), ("x-ms-version", "2021-12-02")]
        self._send_simple(status, body, "application/xml", extra)

    def _control(self, path: str) -> None:
        """Answer /_proxy/... locally: never counted, delayed or faulted."""
        proxy = self.proxy
        raw = b"".join(self._iter_body())
        name = path[len(CONTROL_PREFIX) :].strip("/")
        try:
            data: Any = json.loads(raw) if raw.strip() else {}
            if self.command == "GET" and name in ("", "health"):
                result: Any = {"ok": True, "upstream": proxy.upstream, "url": proxy.url}
            elif self.command == "GET" and name == "counts":
                result = proxy.snapshot()
            elif self.command == "GET" and name == "config":
                result = proxy.config()
            elif self.command == "POST" and name == "reset":
                proxy.reset_counts()
                result = proxy.snapshot()
            elif self.command == "POST" and name == "config":
                proxy.apply_config(data)
                result = proxy.config()
            elif self.command == "POST" and name == "trigger":
                result = proxy.add_kill_trigger(data).to_json()
            elif self.command == "POST" and name == "pause":
                proxy.pause()
                result = proxy.config()
            elif self.command == "POST" and name == "resume":
                proxy.resume()
                result = proxy.config()
            else:
                self._send_simple(
                    404, json.dumps({"error": f"no {self.command} {path}"}), "application/json"
                )
                return
        except (ValueError, TypeError, KeyError) as exc:
            self._send_simple(400, json.dumps({"error": str(exc)}), "application/json")
            return
        self._send_simple(200, json.dumps(result, sort_keys=True), "application/json")


_STORAGE_ERRORS = {
    500: (
        "InternalError",
        "Server encountered an internal error. Please try again after some time.",
    ),
    503: (
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
    ),
    429: ("ServerBusy", "Operations per second is over the account limit."),
}
_ARM_ERRORS = {
    500: ("InternalServerError", "Encountered internal server error. Please try again."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again."),
    429: ("TooManyRequests", "The request is being throttled. Please retry after some time."),
}


def _readable(sock: socket.socket) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class Proxy:
    """A running reverse proxy (started in the constructor, stopped by `stop()` or `with`).

    `preserve_host` (default) forwards the client's Host header, so URLs an emulator builds from
    it (ARM nextLink, Location, Azure-AsyncOperation) lead back through the proxy; set it False to
    send the upstream's host:port instead. Shared Key signatures don't cover the host either way.
    """

    def __init__(
        self,
        upstream: str = "http://127.0.0.1:10000",
        *,
        listen_port: int = 0,
        tls: bool = False,
        upstream_ca: str | os.PathLike[str] | None = None,
        delay_ms: float = 0,
        faults: FaultConfig | None = None,
        seed: int | None = 0,
        classify: Classifier = storage_kind,
        listen_host: str = "127.0.0.1",
        preserve_host: bool = True,
        upstream_timeout: float = 300.0,
    ) -> None:
        split = urlsplit(upstream)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"upstream must be http(s)://host[:port], got {upstream!r}")
        if split.path not in ("", "/") or split.query:
            raise ValueError(f"upstream must not carry a path or query: {upstream!r}")
        self.upstream = f"{split.scheme}://{split.netloc}"
        self.upstream_host = split.hostname
        self.upstream_port = split.port or (443 if split.scheme == "https" else 80)
        self.upstream_netloc = split.netloc
        self.upstream_tls = split.scheme == "https"
        self.preserve_host = preserve_host
        self.flavor: Flavor = "arm" if classify is arm_kind else "storage"
        self._classifier = classify
        self._upstream_timeout = upstream_timeout
        self._upstream_ctx: ssl.SSLContext | None = None
        if self.upstream_tls:
            self._upstream_ctx = ssl.create_default_context(
                cafile=os.fspath(upstream_ca) if upstream_ca else None
            )

        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._triggers: list[Trigger] = []
        self._rng = random.Random(seed)
        self._delay_s = max(delay_ms, 0) / 1000.0
        self._faults = faults or FaultConfig()
        self._conns: set[socket.socket] = set()
        self._stopped = False
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._refusals: tuple[Refusal, ...] = ()

        self.tls = tls
        self.ca_path: str | None = None
        self._tmpdir: str | None = None
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = self._server_tls_context()
        try:
            self._server = _Server((listen_host, listen_port), self, ctx)
        except BaseException:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self.host = listen_host
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://{listen_host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"proxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("proxy %s -> %s", self.url, self.upstream)

    def _server_tls_context(self) -> ssl.SSLContext:
        """Serve HTTPS with a throwaway trustme CA written to a temp file (`ca_path`)."""
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        self._tmpdir = tempfile.mkdtemp(prefix="proxy-ca-")
        self.ca_path = os.path.join(self._tmpdir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    # -- context manager / lifecycle -------------------------------------------------------------

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening, cut open client connections and remove the temp CA (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_conns = list(self._conns)
        for sock in open_conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        logger.info("proxy %s stopped", self.url)

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def _new_upstream(self) -> http.client.HTTPConnection:
        if self._upstream_ctx is not None:
            return http.client.HTTPSConnection(
                self.upstream_host,
                self.upstream_port,
                timeout=self._upstream_timeout,
                context=self._upstream_ctx,
            )
        return http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self._upstream_timeout
        )

    def blob_connection_string(self) -> str:
        """Azurite connection string that points the storage SDK at this proxy (http or https)."""
        from localdev.azurite import ACCOUNT, ACCOUNT_KEY

        scheme = "https" if self.tls else "http"
        return (
            f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.url}/{ACCOUNT};"
        )

    # -- counting, faults, triggers --------------------------------------------------------------

    def _classify(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> str:
        try:
            return self._classifier(method, path, query, headers)
        except Exception:
            logger.exception("classifier failed for %s %s", method, path)
            return "unclassified"

    def _admit(self, kind: str) -> _Plan:
        """Count the request and decide its delay, fault and triggers in one atomic step."""
        with self._lock:
            self._counts[kind] += 1
            self._counts["total"] += 1
            before: list[Trigger] = []
            after: list[Trigger] = []
            for trig in self._triggers:
                if trig._due or trig.fired.is_set() or not kind_matches(trig.kind, kind):
                    continue
                trig.seen += 1
                if trig.seen == trig.nth:
                    trig._due = True
                    (before if trig.when == "before" else after).append(trig)
            faults = self._faults
            fault = None
            if not (before or after) and faults.active and faults.applies_to(kind):
                fault = faults.pick(self._rng.random())
                if fault is not None:
                    self._fault_counts[fault] += 1
                    self._fault_counts["total"] += 1
            return _Plan(kind, self._delay_s, fault, faults, before, after)

    def _fire(self, trig: Trigger, kind: str) -> None:
        logger.info("trigger %s #%s fires %s on a %s request", trig.kind, trig.nth, trig.when, kind)
        try:
            trig.callback()
        except Exception:
            logger.exception("trigger callback for %s #%s failed", trig.kind, trig.nth)
        finally:
            trig.fired.set()

    def counts(self) -> dict[str, int]:
        """Requests seen by kind (faulted and dropped ones too), plus ``total``."""
        with self._lock:
            return {"total": 0, **self._counts}

    def fault_counts(self) -> dict[str, int]:
        """Injected faults by label (``500``, ``503``, ``429``, ``drop_before``, ``drop_after``)."""
        with self._lock:
            return {"total": 0, **self._fault_counts}

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._fault_counts.clear()

    def set_delay(self, ms: float) -> None:
        with self._lock:
            self._delay_s = max(ms, 0) / 1000.0

    def set_faults(self, faults: FaultConfig | None = None, **changes: Any) -> FaultConfig:
        """Replace the fault config (None: no faults), then apply keyword `changes` to it."""
        with self._lock:
            base = faults if faults is not None else (self._faults if changes else FaultConfig())
            self._faults = dataclasses.replace(base, **changes) if changes else base
            return self._faults

    def add_trigger(
        self,
        kind: str,
        nth: int,
        callback: Callable[[], object],
        when: When = "before",
        then: Then = "drop",
    ) -> Trigger:
        """Call `callback` once, on the `nth` request matching `kind` from now on (see Trigger)."""
        if nth < 1:
            raise ValueError("nth counts from 1")
        if when not in ("before", "after") or then not in ("drop", "continue"):
            raise ValueError(f"bad trigger when={when!r} then={then!r}")
        trig = Trigger(kind=kind, nth=nth, callback=callback, when=when, then=then)
        with self._lock:
            self._triggers.append(trig)
        return trig

    def add_kill_trigger(self, spec: Mapping[str, Any]) -> Trigger:
        """Cross-process trigger: send `signal` (default SIGKILL) to `kill_pid` (control API)."""
        pid = int(spec["kill_pid"])
        signum = int(spec.get("signal", signal.SIGKILL))
        return self.add_trigger(
            str(spec["kind"]),
            int(spec["nth"]),
            lambda: os.kill(pid, signum),
            when=spec.get("when", "before"),
            then=spec.get("then", "drop"),
        )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counts": {"total": 0, **self._counts},
                "faults": {"total": 0, **self._fault_counts},
                "triggers": [t.to_json() for t in self._triggers],
            }

    def config(self) -> dict[str, Any]:
        with self._lock:
            return {
                "upstream": self.upstream,
                "delay_ms": self._delay_s * 1000.0,
                "faults": self._faults.to_json(),
                "flavor": self.flavor,
                "paused": self.paused,
                "refusals": [dataclasses.asdict(r) for r in self._refusals],
            }

    # -- stalls and standing refusals ------------------------------------------------------------

    def pause(self) -> None:
        """Stall the link: every request admitted from now on (after its before-triggers) waits
        until `resume`, then goes on as usual, so it lands late rather than never. Requests
        already forwarded are not held. A stall ends by itself after MAX_PAUSE_SECONDS."""
        self._running.clear()
        logger.info("proxy %s paused", self.url)

    def resume(self) -> None:
        self._running.set()
        logger.info("proxy %s resumed", self.url)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _wait_if_paused(self) -> None:
        self._running.wait(MAX_PAUSE_SECONDS)

    def set_refusals(self, refusals: Sequence[Refusal]) -> None:
        with self._lock:
            self._refusals = tuple(refusals)

    def _refusal(self, kind: str, path: str) -> Refusal | None:
        for refusal in self._refusals:
            if refusal.matches(kind, path):
                with self._lock:
                    self._fault_counts["refused"] += 1
                return refusal
        return None

    def apply_config(self, data: Mapping[str, Any]) -> None:
        """Control-endpoint config: ``{"delay_ms": 20, "faults": {...} | null, "refusals":
        [{"kind": "delete", "path": "regex", "status": 409, "code": "..."}]}``, keys optional."""
        unknown = set(data) - {"delay_ms", "faults", "refusals"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        if "refusals" in data:
            self.set_refusals([Refusal(**r) for r in data["refusals"] or []])
        faults = None
        if data.get("faults") is not None:
            faults = FaultConfig.from_json(data["faults"])
        if "delay_ms" in data:
            self.set_delay(float(data["delay_ms"]))
        if "faults" in data:
            self.set_faults(faults)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m localdev.proxy",
        description="Counting/delaying/fault-injecting reverse proxy. Prints its URL (and with "
        "--tls the CA path) on stdout, then serves until SIGINT/SIGTERM. Steer it via "
        "GET /_proxy/counts, POST /_proxy/reset, POST /_proxy/config, POST /_proxy/trigger.",
    )
    p.add_argument("--upstream", default="http://127.0.0.1:10000")
    p.add_argument("--port", type=int, default=0, help="listen port (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--tls", action="store_true", help="serve https with a throwaway CA")
    p.add_argument("--upstream-ca", help="CA bundle to verify an https upstream")
    p.add_argument("--classify", choices=("storage", "arm"), default="storage")
    p.add_argument("--rewrite-host", action="store_true", help="send the upstream's Host")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.0, help="total, spread over all types")
    p.add_argument("--fault-500", type=float)
    p.add_argument("--fault-503", type=float)
    p.add_argument("--fault-429", type=float)
    p.add_argument("--drop-before", type=float, help="drop the connection before forwarding")
    p.add_argument("--drop-after", type=float, help="drop the response after forwarding")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    p.add_argument("--fault-kinds", help="comma-separated kinds the faults apply to")
    p.add_argument("--flavor", choices=("storage", "arm"))
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    faults = FaultConfig.spread(args.fault_rate)
    overrides = {
        "rate_500": args.fault_500,
        "rate_503": args.fault_503,
        "rate_429": args.fault_429,
        "rate_drop_before": args.drop_before,
        "rate_drop_after": args.drop_after,
    }
    kinds = frozenset(k.strip() for k in args.fault_kinds.split(",")) if args.fault_kinds else None
    faults = dataclasses.replace(
        faults,
        **{k: v for k, v in overrides.items() if v is not None},
        retry_after_s=args.retry_after,
        kinds=kinds,
        flavor=args.flavor,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Proxy(
        upstream=args.upstream,
        listen_port=args.port,
        tls=args.tls,
        upstream_ca=args.upstream_ca,
        delay_ms=args.delay_ms,
        faults=faults,
        seed=args.seed,
        classify=arm_kind if args.classify == "arm" else storage_kind,
        listen_host=args.host,
        preserve_host=not args.rewrite_host,
    ) as proxy:
        print(proxy.url, flush=True)
        if proxy.ca_path:
            print(proxy.ca_path, flush=True)
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
