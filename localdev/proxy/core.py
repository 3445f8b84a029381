"""The `Proxy` object: starts the server, holds the counts, delay, faults, triggers, pause
and refusals that its handler threads consult, and the in-process API to steer them."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .classify import Classifier, Flavor, arm_kind, kind_matches, storage_kind
from .handler import Server
from .rules import FaultConfig, Plan, Refusal, Then, Trigger, When

logger = logging.getLogger(__name__)

MAX_PAUSE_SECONDS = 600.0
"""A paused proxy lets its held requests go after this long, so a forgotten pause cannot hang."""


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
            self._server = Server((listen_host, listen_port), self, ctx)
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

    def _admit(self, kind: str) -> Plan:
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
            return Plan(kind, self._delay_s, fault, faults, before, after)

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
