"""The loopback proxy against real Azurite, the real storage SDK and a local echo upstream."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import trustme
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    LinearRetry,
    generate_blob_sas,
)
from azure.storage.queue import QueueClient

from localdev.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, connection_string
from localdev.proxy import FaultConfig, Proxy, arm_kind, kind_matches, queue_kind, storage_kind

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def fast_retry(total: int = 10) -> LinearRetry:
    """The SDK's own retry policy, with test-sized backoff (the default waits ~15 s)."""
    return LinearRetry(backoff=0.01, random_jitter_range=0.005, retry_total=total)


def via(proxy: Proxy, retries: int = 10, **kwargs: Any) -> BlobServiceClient:
    """A storage SDK client whose every request goes through `proxy`."""
    return BlobServiceClient.from_connection_string(
        proxy.blob_connection_string(), retry_policy=fast_retry(retries), **kwargs
    )


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[Proxy]:
    with Proxy(upstream=f"http://127.0.0.1:{azurite.port}") as p:
        yield p


# --------------------------------------------------------------------------------------------
# A tiny echo upstream (plain or TLS) for what Azurite cannot show: chunked bodies, Host, TLS.
# --------------------------------------------------------------------------------------------

PATTERN = bytes(range(256)) * 4096  # 1 MiB


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> tuple[int, str]:
        digest, total = hashlib.sha256(), 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                while size:
                    data = self.rfile.read(min(size, MiB))
                    digest.update(data)
                    total += len(data)
                    size -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, MiB))
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        return total, digest.hexdigest()

    def _any(self) -> None:
        size, digest = self._read_body()
        server: Any = self.server
        server.peers.add(self.client_address)
        split = urlsplit(self.path)
        if split.path == "/big":
            n = int(parse_qs(split.query)["mib"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(n * MiB))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(PATTERN)
            return
        info = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "len": size,
            "sha256": digest,
        }
        data = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Multi", "a")
        self.send_header("X-Multi", "b")
        if split.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (data[:10], data[10:]):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        if split.path == "/close-after":
            self.close_connection = True  # closes without announcing it: a stale keep-alive

    do_GET = do_PUT = do_POST = do_DELETE = _any


@contextlib.contextmanager
def echo_upstream(tmp_path: Path, tls: bool) -> Iterator[tuple[str, str | None, Any]]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.peers = set()
    ca_path = None
    if tls:
        ca = trustme.CA()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        ca_path = str(tmp_path / "upstream-ca.pem")
        ca.cert_pem.write_to_path(ca_path)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", ca_path, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "kind"),
    [
        ("GET", "/acct/c", "restype=container&comp=list&maxresults=2", {}, "list"),
        ("GET", "/acct", "comp=list", {}, "list"),
        ("PUT", "/acct/c/a/b.json", "", {"x-ms-copy-source": "http://x/acct/c/s"}, "copy"),
        ("PUT", "/acct/c/a/b.json", "", {"x-ms-blob-type": "BlockBlob"}, "put_blob"),
        ("PUT", "/acct/c/b", "comp=block&blockid=AAA", {}, "put_block"),
        ("PUT", "/acct/c/b", "comp=blocklist", {}, "put_block_list"),
        ("PUT", "/acct/c/b", "comp=lease", {"X-MS-Lease-Action": "Acquire"}, "lease:acquire"),
        ("PUT", "/acct/c/b", "comp=lease", {"x-ms-lease-action": "renew"}, "lease:renew"),
        ("PUT", "/acct/c", "restype=container&comp=lease", {}, "lease"),
        ("PUT", "/acct/c/b", "comp=metadata", {}, "set_metadata"),
        ("PUT", "/acct/c", "restype=container", {}, "create_container"),
        ("PUT", "/acct/c/b", "comp=copy&copyid=1", {"x-ms-copy-action": "abort"}, "abort_copy"),
        ("PUT", "/acct/c/b", "comp=tier", {}, "other"),
        ("DELETE", "/acct/c/dir/b", "", {}, "delete"),
        ("DELETE", "/acct/c", "restype=container", {}, "delete_container"),
        ("GET", "/acct/c/dir/b", "", {}, "get_blob"),
        ("HEAD", "/acct/c/b", "", {}, "get_props"),
        ("GET", "/acct/c", "restype=container", {}, "get_props"),
        ("POST", "/acct/c", "restype=container&comp=batch", {}, "batch"),
        ("POST", "/acct", "comp=batch", {}, "batch"),
        ("POST", "/acct/c", "restype=container&comp=other", {}, "other"),
    ],
)
def test_storage_kind(
    method: str, path: str, query: str, headers: dict[str, str], kind: str
) -> None:
    assert storage_kind(method, path, query, headers) == kind


ARM = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups"


@pytest.mark.parametrize(
    ("method", "path", "query", "kind"),
    [
        ("GET", ARM, "api-version=2023-05-01", "arm_list"),
        ("GET", ARM, "api-version=2023-05-01&$skipToken=abc", "arm_list"),
        (
            "GET",
            "/subscriptions/s/providers/Microsoft.ContainerInstance/containerGroups",
            "",
            "arm_list",
        ),
        ("GET", ARM + "/job-1", "api-version=1", "arm_get"),
        ("PUT", ARM + "/job-1", "", "arm_put"),
        ("DELETE", ARM + "/job-1", "", "arm_delete"),
        ("PATCH", ARM + "/job-1", "", "arm_patch"),
        ("POST", ARM + "/job-1/stop", "", "arm_stop"),
        ("POST", ARM + "/job-1/restart", "", "arm_other"),
        ("GET", ARM + "/job-1/containers/main/logs", "tail=10", "arm_logs"),
        (
            "GET",
            "/subscriptions/s/providers/Microsoft.ContainerInstance/locations/x/operations/1",
            "",
            "arm_other",
        ),
    ],
)
def test_arm_kind(method: str, path: str, query: str, kind: str) -> None:
    assert arm_kind(method, path, query, {}) == kind


def test_queue_kinds_of_a_real_sdk_sequence(azurite: Azurite) -> None:
    """The SDK's Queue requests, through the proxy to Azurite's queue service, get the kinds the
    chaos suite aims its notification crash point at (queue_send)."""
    assert azurite.queue_port is not None
    with Proxy(f"http://127.0.0.1:{azurite.queue_port}", classify=queue_kind) as p:
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={p.url}/{ACCOUNT};"
        )
        name = f"q{uuid.uuid4().hex[:12]}"
        queue = QueueClient.from_connection_string(conn, name)
        queue.create_queue()
        queue.send_message("one")
        queue.send_message("two")
        assert [m.content for m in queue.peek_messages(max_messages=5)] == ["one", "two"]
        got = queue.receive_message(visibility_timeout=60)
        assert got is not None and got.content == "one"
        queue.delete_message(got)
        queue.get_queue_properties()
        counts = p.counts()
    kinds = {k: v for k, v in counts.items() if k != "total"}
    assert kinds == {
        "queue_create": 1,
        "queue_send": 2,
        "queue_peek": 1,
        "queue_receive": 1,
        "queue_delete_message": 1,
        "queue_other": 1,
    }, counts


def test_kind_matching() -> None:
    assert kind_matches("lease", "lease:acquire")
    assert kind_matches("*", "put_blob")
    assert not kind_matches("put", "put_blob")
    assert FaultConfig(rate_503=1, kinds=frozenset({"lease"})).applies_to("lease:renew")
    with pytest.raises(ValueError):
        FaultConfig(rate_500=0.6, rate_503=0.6)


# --------------------------------------------------------------------------------------------
# Counting and delay through the real SDK
# --------------------------------------------------------------------------------------------


def test_counts_a_scripted_sdk_sequence_exactly(
    proxy: Proxy, blob_service: BlobServiceClient, container_name: str
) -> None:
    svc = via(proxy, max_single_put_size=4096, max_block_size=4096)
    cc = svc.create_container(container_name)
    for i in range(5):
        cc.upload_blob(f"b{i}", b"x" * 10)
    assert [b.name for b in cc.list_blobs(results_per_page=2)] == [f"b{i}" for i in range(5)]
    big = os.urandom(10_000)
    cc.upload_blob("big", big)  # 3 staged blocks + a block list

    # The copy source names the proxy's host:port; Azurite resolves same-account sources by path.
    src_url = cc.get_blob_client("b0").url
    assert f":{proxy.port}/" in src_url
    dst = cc.get_blob_client("copy-of-b0")
    dst.start_copy_from_url(src_url)
    assert dst.get_blob_properties().copy.status == "success"
    assert dst.download_blob().readall() == b"x" * 10

    b1 = cc.get_blob_client("b1")
    lease = b1.acquire_lease(lease_duration=15)
    lease.renew()
    b1.set_blob_metadata({"k": "v"}, lease=lease)
    with pytest.raises(ResourceModifiedError):
        b1.delete_blob(
            lease=lease, etag='"0x8D000000000000"', match_condition=MatchConditions.IfNotModified
        )
    b1.delete_blob(lease=lease)
    cc.get_blob_client("b2").acquire_lease(lease_duration=15).release()

    assert proxy.counts() == {
        "create_container": 1,
        "put_blob": 5,
        "list": 3,
        "put_block": 3,
        "put_block_list": 1,
        "copy": 1,
        "get_props": 1,
        "get_blob": 1,
        "lease:acquire": 2,
        "lease:renew": 1,
        "lease:release": 1,
        "set_metadata": 1,
        "delete": 2,
        "total": 23,
    }
    assert proxy.fault_counts() == {"total": 0}
    # What the proxy forwarded really landed in Azurite (checked without the proxy).
    direct = blob_service.get_container_client(container_name)
    assert sorted(b.name for b in direct.list_blobs()) == [
        "b0",
        "b2",
        "b3",
        "b4",
        "big",
        "copy-of-b0",
    ]
    assert direct.download_blob("big").readall() == big
    proxy.reset_counts()
    assert proxy.counts() == {"total": 0}


def test_delay_is_added_per_request(proxy: Proxy, container: ContainerClient) -> None:
    container.upload_blob("d", b"d")
    blob = via(proxy).get_blob_client(container.container_name, "d")
    blob.get_blob_properties()  # warm the connection
    proxy.set_delay(60)
    started = time.monotonic()
    for _ in range(5):
        blob.get_blob_properties()
    assert time.monotonic() - started >= 5 * 0.060
    assert proxy.config()["delay_ms"] == 60


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def test_faults_at_a_high_rate_are_absorbed_by_sdk_retries(
    proxy: Proxy, container: ContainerClient
) -> None:
    proxy.set_faults(
        FaultConfig(rate_500=0.1, rate_503=0.1, rate_drop_before=0.1, rate_drop_after=0.1)
    )
    cc = via(proxy, retries=20).get_container_client(container.container_name)
    for i in range(25):
        data = f"payload {i}".encode()
        cc.upload_blob(f"f{i}", data, overwrite=True)  # idempotent, so a lost response is fine
        assert cc.get_blob_client(f"f{i}").get_blob_properties().size == len(data)
        assert cc.download_blob(f"f{i}").readall() == data
    assert len(list(cc.list_blobs())) == 25
    faults = proxy.fault_counts()
    for label in ("500", "503", "drop_before", "drop_after"):
        assert faults.get(label, 0) > 0, faults
    assert "429" not in faults
    # Every fault was retried once more, and nothing else was sent.
    assert proxy.counts()["total"] - faults["total"] == 25 * 3 + 1


def test_fault_responses_look_like_the_service(proxy: Proxy, container: ContainerClient) -> None:
    container.upload_blob("x", b"x")
    proxy.set_faults(FaultConfig(rate_429=1.0, retry_after_s=7))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"/{ACCOUNT}/{container.container_name}/x")
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 429
    assert resp.getheader("Retry-After") == "7"
    assert resp.getheader("x-ms-error-code") == "ServerBusy"
    assert "<Code>ServerBusy</Code>" in body
    # The storage SDK does not retry 429 (real storage throttles with 503 ServerBusy).
    with pytest.raises(HttpResponseError) as err:
        via(proxy).get_blob_client(container.container_name, "x").get_blob_properties()
    assert err.value.status_code == 429

    proxy.set_faults(FaultConfig(rate_503=1.0, flavor="arm"))
    conn.request("GET", "/subscriptions/s/resourceGroups/rg")  # same keep-alive connection
    resp = conn.getresponse()
    assert resp.status == 503
    assert json.loads(resp.read())["error"]["code"] == "ServiceUnavailable"
    conn.close()

    # A kinds filter confines faults: reads pass, deletes fail.
    proxy.set_faults(FaultConfig(rate_503=1.0, kinds=frozenset({"delete"})))
    blob = via(proxy, retries=0).get_blob_client(container.container_name, "x")
    assert blob.download_blob().readall() == b"x"
    with pytest.raises(HttpResponseError) as err:
        blob.delete_blob()
    assert err.value.status_code == 503
    assert proxy.fault_counts() == {"429": 2, "503": 2, "total": 4}


def test_drop_after_forward_applies_the_write_but_loses_the_response(
    proxy: Proxy, container: ContainerClient
) -> None:
    name = container.container_name
    proxy.set_faults(FaultConfig(rate_drop_after=1.0, kinds=frozenset({"put_blob"})))
    with pytest.raises(AzureError):
        via(proxy, retries=0).get_blob_client(name, "lost").upload_blob(b"applied")
    assert container.download_blob("lost").readall() == b"applied"  # it landed regardless
    assert proxy.fault_counts() == {"drop_after": 1, "total": 1}

    # Lose exactly one response: the SDK's retry of a create-only upload finds the blob there.
    proxy.set_faults(None)
    proxy.add_trigger("put_blob", 1, lambda: None, when="after")
    with pytest.raises(ResourceExistsError):
        via(proxy).get_blob_client(name, "once").upload_blob(b"first try")
    assert container.download_blob("once").readall() == b"first try"
    assert proxy.counts()["put_blob"] == 3


# --------------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------------


def test_triggers_fire_once_before_or_after_forwarding(
    proxy: Proxy, container: ContainerClient
) -> None:
    cc = via(proxy).get_container_client(container.container_name)
    seen_before: list[bool] = []
    trig = proxy.add_trigger(
        "put_blob", 3, lambda: seen_before.append(container.get_blob_client("t2").exists())
    )
    for i in range(5):
        cc.upload_blob(f"t{i}", b"t")  # the 3rd is dropped unforwarded, then retried
    assert trig.fired.is_set()
    assert seen_before == [False]
    assert proxy.counts()["put_blob"] == 6
    assert sorted(b.name for b in container.list_blobs()) == [f"t{i}" for i in range(5)]

    seen_after: list[bool] = []
    proxy.add_trigger(
        "delete",
        2,
        lambda: seen_after.append(container.get_blob_client("t1").exists()),
        when="after",
        then="continue",
    )
    for i in range(5):
        cc.delete_blob(f"t{i}")
    assert seen_after == [False]  # the upstream had applied the delete when the callback ran
    assert proxy.counts()["delete"] == 5
    assert [t["fired"] for t in proxy.snapshot()["triggers"]] == [True, True]


def test_kill_trigger_from_another_process(proxy: Proxy, container: ContainerClient) -> None:
    script = (
        "import sys\n"
        "from azure.storage.blob import ContainerClient\n"
        "cc = ContainerClient.from_connection_string(sys.argv[1], sys.argv[2])\n"
        "sys.stdin.readline()\n"
        "for i in range(10):\n"
        "    cc.upload_blob(f'k{i}', b'k')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, proxy.blob_connection_string(), container.container_name],
        stdin=subprocess.PIPE,
    )
    try:
        spec: dict[str, Any] = {"kind": "put_blob", "nth": 4, "when": "after", "kill_pid": proc.pid}
        r = requests.post(f"{proxy.url}/_proxy/trigger", json=spec, timeout=10)
        assert r.status_code == 200, r.text
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Killed after the 4th upload was applied upstream and before its response came back.
    assert sorted(b.name for b in container.list_blobs()) == ["k0", "k1", "k2", "k3"]
    assert proxy.counts() == {"put_blob": 4, "total": 4}


# --------------------------------------------------------------------------------------------
# Control endpoint
# --------------------------------------------------------------------------------------------


def test_control_endpoint_is_never_counted_delayed_or_faulted(
    proxy: Proxy, container: ContainerClient
) -> None:
    container.upload_blob("c", b"c")
    ctl = f"{proxy.url}/_proxy"
    with requests.Session() as s:
        assert s.get(f"{ctl}/counts", timeout=10).json()["counts"] == {"total": 0}
        via(proxy).get_blob_client(container.container_name, "c").get_blob_properties()
        cfg: dict[str, Any] = {"delay_ms": 500, "faults": {"rate_503": 1.0, "kinds": ["get_blob"]}}
        assert s.post(f"{ctl}/config", json=cfg, timeout=10).json()["delay_ms"] == 500
        started = time.monotonic()
        for _ in range(5):
            assert s.get(f"{ctl}/counts", timeout=10).status_code == 200
        assert time.monotonic() - started < 0.5  # no 500 ms delay on control calls
        assert s.get(f"{ctl}/config", timeout=10).json()["faults"]["rate_503"] == 1.0
        s.post(f"{ctl}/config", json={"delay_ms": 0}, timeout=10)
        r = s.get(f"{proxy.url}/{ACCOUNT}/{container.container_name}/c", timeout=10)
        assert r.status_code == 503
        assert r.headers["x-ms-error-code"] == "ServerBusy"
        snap = s.get(f"{ctl}/counts", timeout=10).json()
        assert snap["counts"] == {"get_props": 1, "get_blob": 1, "total": 2}
        assert snap["faults"] == {"503": 1, "total": 1}
        assert s.post(f"{ctl}/config", json={"faults": None}, timeout=10).ok
        assert s.post(f"{ctl}/config", data=b"{nope", timeout=10).status_code == 400
        assert s.post(f"{ctl}/config", json={"bogus": 1}, timeout=10).status_code == 400
        assert s.get(f"{ctl}/nothing", timeout=10).status_code == 404
        assert s.post(f"{ctl}/reset", timeout=10).json()["counts"] == {"total": 0}
    assert proxy.counts() == {"total": 0}


# --------------------------------------------------------------------------------------------
# Forwarding fidelity: TLS, Host, chunked, keep-alive, stale upstream, big bodies
# --------------------------------------------------------------------------------------------


def test_tls_both_sides_chunked_bodies_and_keepalive(tmp_path: Path) -> None:
    with (
        echo_upstream(tmp_path, tls=True) as (url, ca_path, server),
        Proxy(upstream=url, upstream_ca=ca_path, tls=True) as p,
    ):
        assert p.url.startswith("https://") and p.ca_path and os.path.exists(p.ca_path)
        ctx = ssl.create_default_context(cafile=p.ca_path)
        conn = http.client.HTTPSConnection("127.0.0.1", p.port, context=ctx, timeout=10)
        target = "/a/b%2Fc?comp=list&x=%20y&x=2"
        conn.request("GET", target, headers={"X-Custom": "1", "Proxy-Authorization": "secret"})
        resp = conn.getresponse()
        seen = json.loads(resp.read())
        assert resp.status == 200
        assert resp.msg.get_all("X-Multi") == ["a", "b"]
        assert seen["path"] == target  # byte-for-byte, encoding untouched
        assert seen["headers"]["host"] == f"127.0.0.1:{p.port}"  # preserved by default
        assert seen["headers"]["x-custom"] == "1"
        assert "proxy-authorization" not in seen["headers"]

        body = os.urandom(3 * MiB + 17)
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", "/chunked-echo", body=pieces, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        seen = json.loads(resp.read())
        assert (seen["len"], seen["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
        assert seen["headers"]["transfer-encoding"] == "chunked"

        # The upstream closes a keep-alive silently; the next request must not notice.
        conn.request("GET", "/close-after")
        assert conn.getresponse().read()
        time.sleep(0.1)
        conn.request("PUT", "/after-close", body=b"123")
        resp = conn.getresponse()
        assert json.loads(resp.read())["len"] == 3
        conn.close()
        assert len(server.peers) == 2  # one upstream connection, then one fresh after the close
        assert p.counts()["total"] == 4

    # An https upstream is verified: without its CA the proxy answers 502.
    with (
        echo_upstream(tmp_path, tls=True) as (url, _, _server),
        Proxy(upstream=url) as p,
    ):
        assert requests.get(f"{p.url}/x", timeout=10).status_code == 502


def test_sdk_over_tls_proxy(azurite: Azurite, container: ContainerClient) -> None:
    with Proxy(upstream=f"http://127.0.0.1:{azurite.port}", tls=True) as p:
        svc = BlobServiceClient.from_connection_string(
            p.blob_connection_string(), connection_verify=p.ca_path
        )
        blob = svc.get_blob_client(container.container_name, "tls")
        blob.upload_blob(b"over https")
        assert blob.download_blob().readall() == b"over https"
        assert p.counts() == {"put_blob": 1, "get_blob": 1, "total": 2}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_large_bodies_stream_in_bounded_memory(tmp_path: Path) -> None:
    mib = 256
    with echo_upstream(tmp_path, tls=False) as (url, _, _server), Proxy(upstream=url) as p:
        peak = [_rss()]
        start = peak[0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], _rss())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60)
            conn.putrequest("PUT", "/upload")
            conn.putheader("Content-Length", str(mib * MiB))
            conn.endheaders()
            for _ in range(mib):
                conn.send(PATTERN)
            seen = json.loads(conn.getresponse().read())
            expected = hashlib.sha256()
            for _ in range(mib):
                expected.update(PATTERN)
            assert (seen["len"], seen["sha256"]) == (mib * MiB, expected.hexdigest())

            conn.request("GET", f"/big?mib={mib}")
            resp = conn.getresponse()
            got, total = hashlib.sha256(), 0
            while data := resp.read(MiB):
                got.update(data)
                total += len(data)
            assert (total, got.hexdigest()) == (mib * MiB, expected.hexdigest())
            conn.close()
        finally:
            done.set()
            sampler.join()
        assert peak[0] - start < 64 * MiB, f"RSS grew by {(peak[0] - start) // MiB} MiB"


# --------------------------------------------------------------------------------------------
# Concurrency and fd hygiene
# --------------------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_64_concurrent_connections_exact_counts_no_fd_leak(
    azurite: Azurite, container: ContainerClient
) -> None:
    name = container.container_name
    container.upload_blob("hot", b"hot blob")
    sas = generate_blob_sas(
        ACCOUNT,
        name,
        "hot",
        account_key=ACCOUNT_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    target = f"/{ACCOUNT}/{name}/hot?{sas}"
    fds_before = _open_fds()
    errors: list[str] = []
    with Proxy(upstream=f"http://127.0.0.1:{azurite.port}") as p:
        barrier = threading.Barrier(64)

        def worker() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
            barrier.wait()
            for i in range(50):
                if i % 10 == 0:  # a new client connection every 10 requests
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
                try:
                    conn.request("GET", target)
                    resp = conn.getresponse()
                    if (resp.status, resp.read()) != (200, b"hot blob"):
                        errors.append(f"status {resp.status}")
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(repr(exc))
            conn.close()

        threads = [threading.Thread(target=worker) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert p.counts() == {"get_blob": 3200, "total": 3200}
    deadline = time.monotonic() + 5
    while _open_fds() > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds() <= fds_before + 2


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_prints_url_and_ca_and_serves(azurite: Azurite, container: ContainerClient) -> None:
    container.upload_blob("cli", b"cli")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.proxy",
            "--upstream",
            f"http://127.0.0.1:{azurite.port}",
            "--port",
            "0",
            "--tls",
            "--delay-ms",
            "1",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        ca_path = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:")
        assert os.path.exists(ca_path)
        port = int(url.rsplit(":", 1)[1])
        cs = connection_string(port).replace("http://", "https://").replace("=http;", "=https;")
        blob = BlobServiceClient.from_connection_string(cs, connection_verify=ca_path)
        assert (
            blob.get_blob_client(container.container_name, "cli").download_blob().readall()
            == b"cli"
        )
        snap = requests.get(f"{url}/_proxy/counts", verify=ca_path, timeout=10).json()
        assert snap["counts"] == {"get_blob": 1, "total": 1}
        assert (
            requests.get(f"{url}/_proxy/config", verify=ca_path, timeout=10).json()["delay_ms"] == 1
        )
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not os.path.exists(ca_path)  # the throwaway CA is cleaned up
