"""The HTTP side of the proxy: the threaded server, and the per-connection handler that
classifies, delays, faults or forwards each request and streams bodies both ways."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import select
import socket
import socketserver
import ssl
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .rules import Plan, Refusal, fault_answer, refusal_answer

if TYPE_CHECKING:
    from .core import Proxy

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Bytes per read/write when streaming a body; bounds the proxy's memory per connection."""
BUFFER_LIMIT = 1024 * 1024
"""Request bodies up to this size are buffered, so a stale upstream keep-alive can be retried."""
CONTROL_PREFIX = "/_proxy/"
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


class ClientGoneError(Exception):
    """The downstream client disconnected; nothing can be answered any more."""


class Server(ThreadingHTTPServer):
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
        assert isinstance(server, Server)
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
        except ClientGoneError:
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
            raise ClientGoneError from exc
        if len(data) < n:
            raise ClientGoneError(f"client closed after {len(data)} of {n} body bytes")
        return data

    def _readline(self) -> bytes:
        try:
            line = self.rfile.readline(65537)
        except OSError as exc:
            raise ClientGoneError from exc
        if not line:
            raise ClientGoneError("client closed inside a chunked body")
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
            except ClientGoneError:
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
            raise ClientGoneError from exc

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
            raise ClientGoneError from exc

    def _send_refusal(self, refusal: Refusal) -> None:
        self._send_simple(*refusal_answer(refusal))

    def _send_fault(self, status: int, plan: Plan) -> None:
        self._send_simple(
            *fault_answer(status, plan.faults, plan.faults.flavor or self.proxy.flavor)
        )

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


def _readable(sock: socket.socket) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)
