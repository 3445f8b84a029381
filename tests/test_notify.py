"""Completion notifications end to end: Azurite's real queue service read with
azure-storage-queue, a local webhook receiver that checks the HMAC signature itself, a sweep
SIGKILLed between finish and notify (before and after its queue send landed), and targets that
are down and come back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from cleanup.sweep import Sweep, sweep
from launcher.batch import State
from launcher.clients import Clients
from launcher.poll import poll
from localdev.azurite import connection_string
from localdev.proxy import Proxy
from tests.conftest import REPO_ROOT, Pipeline
from tests.helpers import CountingPolicy, all_names, drop
from tests.test_janitor import QUICK, manifest_of, only_batch, sweep_until

SECRET = "test-webhook-secret-0123456789"


@dataclass
class Receiver:
    """A loopback webhook receiver: records every POST, answers `status`, and checks the
    signature the way a receiver would (HMAC-SHA256 of the raw body with the shared secret)."""

    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            signed = hmac.compare_digest(expected, self.headers.get("X-ML-Signature", ""))
            status = rec.status if signed else 401
            with rec.lock:
                rec.requests.append(
                    {
                        "status": status,
                        "signed": signed,
                        "id": self.headers.get("X-ML-Message-Id"),
                        "body": body,
                    }
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/batches"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def queue_name() -> str:
    return "q" + uuid.uuid4().hex[:20]


def queue_client(p: Pipeline, name: str) -> QueueClient:
    # No decode policy: the raw message text, to check that it is base64 as documented.
    return QueueClient.from_connection_string(p.azurite.connection_string, name)


def messages(q: QueueClient) -> list[dict[str, Any]]:
    return [json.loads(base64.b64decode(m.content)) for m in q.peek_messages(max_messages=32)]


def notify_env(queue: str, receiver: Receiver | None = None) -> dict[str, str]:
    env = {**QUICK, "NOTIFY_QUEUE": queue}
    if receiver is not None:
        env |= {"NOTIFY_WEBHOOK_URL": receiver.url, "NOTIFY_WEBHOOK_SECRET": SECRET}
    return env


def outbox(p: Pipeline) -> list[str]:
    return all_names(p.container, "locks/outbox/")


def test_a_finished_batch_sends_one_queue_message_and_one_signed_webhook(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    name = queue_name()
    q = queue_client(pipeline, name)
    q.create_queue()
    drop(pipeline.container, ["incoming/report.txt"])
    clients = pipeline.clients(**notify_env(name, receiver))
    poll(clients)
    batch = only_batch(pipeline)
    reports = sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    for _ in range(2):  # later sweeps send nothing again
        sweep(clients)
    sent = [x for r in reports for x in r.notified]
    assert sorted(x["target"] for x in sent) == ["queue", "webhook"]

    [msg] = messages(q)
    assert msg["id"] == f"{batch}:succeeded"
    assert msg["event"] == "batch.finished" and msg["state"] == "succeeded"
    assert msg["batch"] == batch and msg["profile"] == "default"
    assert msg["folder"] == f"done/{batch}/" and msg["output_prefix"] == f"output/{batch}/"
    assert msg["files"] == 1 and msg["attempts"] == 1 and msg["exit_code"] == 0
    assert msg["container"] == pipeline.container.container_name
    assert msg["finished_at"] and msg["claimed_at"] and msg["reason"] is None
    assert msg["cost"]["currency"] == "USD" and msg["cost"]["cost"] > 0

    [hook] = receiver.requests
    assert hook["signed"] and hook["status"] == 200 and hook["id"] == msg["id"]
    assert json.loads(hook["body"]) == msg  # the same document on both targets

    _, manifest = manifest_of(pipeline, batch)
    targets = manifest["notifications"]["targets"]
    assert manifest["notifications"]["id"] == msg["id"]
    assert {t: (v["state"], v["attempts"]) for t, v in targets.items()} == {
        "queue": ("sent", 1),
        "webhook": ("sent", 1),
    }
    assert outbox(pipeline) == []


def test_a_receiver_rejects_a_wrong_signature(pipeline: Pipeline, receiver: Receiver) -> None:
    """The receiver's check can fail: a sender with another secret is refused (401) and the
    notification stays pending, recorded on the manifest with the answer."""
    name = queue_name()
    queue_client(pipeline, name).create_queue()
    drop(pipeline.container, ["incoming/x.txt"])
    env = notify_env(name, receiver) | {"NOTIFY_WEBHOOK_SECRET": "another-secret-0123456789"}
    clients = pipeline.clients(**env)
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    assert receiver.requests and not any(r["signed"] for r in receiver.requests)
    _, manifest = manifest_of(pipeline, batch)
    webhook = manifest["notifications"]["targets"]["webhook"]
    assert webhook["state"] == "pending" and "HTTP 401" in webhook["last_error"]
    assert outbox(pipeline) == [f"locks/outbox/{batch}"]


def test_targets_that_are_down_are_retried_on_later_sweeps_and_never_lost(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    name = queue_name()  # not created yet: the queue target fails
    receiver.status = 503  # the webhook answers 503: retried with backoff, then left pending
    drop(pipeline.container, ["incoming/a.txt"])
    clients = pipeline.clients(**notify_env(name, receiver))
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: manifest_of(pipeline, batch)[0] == "done/")
    assert 2 <= len(receiver.requests) <= 3  # retried within the sweep, bounded
    _, manifest = manifest_of(pipeline, batch)
    targets = manifest["notifications"]["targets"]
    assert targets["queue"]["state"] == "pending"
    assert "does not exist" in targets["queue"]["last_error"]
    assert targets["webhook"]["state"] == "pending" and "503" in targets["webhook"]["last_error"]
    assert outbox(pipeline) == [f"locks/outbox/{batch}"]

    # Still down: an idle sweep (no group, nothing in processing/) tries again.
    report = sweep(clients)
    assert not report.idle and {x["target"] for x in report.notify_pending} == {
        "queue",
        "webhook",
    }
    # Both come back: the next sweep delivers, once.
    q = queue_client(pipeline, name)
    q.create_queue()
    receiver.status = 200
    report = sweep(clients)
    assert sorted(x["target"] for x in report.notified) == ["queue", "webhook"]
    sweep(clients)
    assert [m["id"] for m in messages(q)] == [f"{batch}:succeeded"]
    assert [r["id"] for r in receiver.accepted()] == [f"{batch}:succeeded"]
    _, manifest = manifest_of(pipeline, batch)
    targets = manifest["notifications"]["targets"]
    assert targets["queue"]["state"] == "sent" and targets["queue"]["attempts"] == 3
    assert targets["webhook"]["state"] == "sent" and targets["webhook"]["attempts"] >= 3
    assert outbox(pipeline) == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_between_finish_and_notify_still_delivers_one_deduplicable_message(
    pipeline: Pipeline, when: str
) -> None:
    """A sweep process is SIGKILLed at its queue send: `before` it reaches the queue service
    (nothing sent) or `after` the service stored it (sent, not recorded). The next sweep
    delivers: one message, or a repeat with the same id that a receiver drops."""
    name = queue_name()
    q = queue_client(pipeline, name)
    q.create_queue()
    assert pipeline.azurite.queue_port is not None
    drop(pipeline.container, ["incoming/crash.txt"])
    clients = pipeline.clients(**notify_env(name))
    poll(clients)
    batch = only_batch(pipeline)
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def kill() -> None:
        os.kill(holder["sweep"].pid, signal.SIGKILL)

    with Proxy(upstream=f"http://127.0.0.1:{pipeline.azurite.queue_port}") as proxy:
        trigger = proxy.add_trigger("*", 1, kill, when=when)
        conn = connection_string(pipeline.azurite.port, queue_port=proxy.port)
        env = pipeline.subprocess_env(**notify_env(name), STORAGE_CONNECTION_STRING=conn)
        deadline = time.monotonic() + 90
        while not trigger.fired.is_set():
            assert time.monotonic() < deadline, "the sweep never reached its queue send"
            holder["sweep"] = subprocess.Popen(
                [sys.executable, "-m", "cleanup", "sweep"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            code = holder["sweep"].wait(60)
            if not trigger.fired.is_set():
                assert code in (0, 1), code
                time.sleep(0.3)
        assert holder["sweep"].wait(10) == -signal.SIGKILL
    # Killed between finish and notify: the batch is in done/, the notification pending.
    prefix, manifest = manifest_of(pipeline, batch)
    assert prefix == "done/"
    assert manifest["notifications"]["targets"]["queue"]["state"] == "pending"
    assert outbox(pipeline) == [f"locks/outbox/{batch}"]
    assert len(messages(q)) == (1 if when == "after" else 0)

    # The next sweeps: idle but for the outbox; the dead sweep's janitor lease runs out first.
    reports = sweep_until(clients, lambda: outbox(pipeline) == [], timeout=90)
    assert reports[0].lease_busy
    assert [x["target"] for r in reports for x in r.notified] == ["queue"]
    sweep(clients)
    ids = [m["id"] for m in messages(q)]
    assert set(ids) == {f"{batch}:succeeded"}  # one message after dropping repeats by id
    assert len(ids) == (2 if when == "after" else 1)
    _, manifest = manifest_of(pipeline, batch)
    assert manifest["notifications"]["targets"]["queue"]["state"] == "sent"
    assert outbox(pipeline) == []


def test_a_stale_finish_after_delivery_sends_nothing_again(pipeline: Pipeline) -> None:
    """A janitor that stalled in `finish` comes back after another one finished the batch and
    delivered its notification: the outbox entry its finish re-creates is removed at once, so
    no second message goes out."""
    name = queue_name()
    q = queue_client(pipeline, name)
    q.create_queue()
    clients = pipeline.clients(**notify_env(name))
    drop(pipeline.container, ["incoming/stale.txt"])
    poll(clients)
    batch = only_batch(pipeline)
    sweep_until(clients, lambda: messages(q) != [] and outbox(pipeline) == [], timeout=90)
    found = clients.store.read(batch, clients.settings.done_prefix)
    assert found is not None and found[0].notifications is not None
    # What the stalled janitor still holds: the `finishing` manifest it read, nothing recorded.
    stale = replace(found[0], state=State.FINISHING, target="done", notifications=None)
    Sweep(clients, dry_run=False).finish(stale, found[1])
    assert outbox(pipeline) == []
    sweep(clients)
    assert [m["id"] for m in messages(q)] == [f"{batch}:succeeded"]


def test_the_idle_sweep_lists_the_outbox_once_more_only_with_targets(
    pipeline: Pipeline,
) -> None:
    for env, lists in (({}, 2), (notify_env(queue_name()), 3)):
        storage = CountingPolicy()
        clients: Clients = pipeline.clients(storage, **env)
        report = sweep(clients)
        assert report.idle
        assert storage.counts == {"list": lists}
