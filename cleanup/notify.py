"""Completion notifications: when a batch reaches done/ or failed/, its summary goes to every
configured target (an Azure Storage queue, NOTIFY_QUEUE; an HTTPS webhook, NOTIFY_WEBHOOK_URL),
at least once, never lost. docs/notifications.md is the user's account of it.

Durability, in the order `Sweep.finish` and the sweep's delivery step act:
  1. `prepare` (before the final manifest is written): the manifest gets `notifications` =
     the message id and every configured target as `pending`, and an outbox blob
     `<LOCK_PREFIX>outbox/<batch>` is created (create-only; its metadata names the final
     prefix). The outbox comes first so that no final manifest with a pending notification can
     exist without one.
  2. the final manifest is created in done/ or failed/ (create-only), the history index entry
     is written, the processing/ manifest deleted (see cleanup/sweep.py).
  3. `deliver` (at the end of the same sweep, under the janitor lease, and on every later
     sweep until nothing is pending): one List Blobs of the outbox; per entry, read the final
     manifest, send to each target still pending, record the result on the final manifest with
     a conditional (If-Match) write, and delete the outbox blob once no target is pending.
A crash anywhere leaves either a `finishing` batch (finished again by the next sweep) or an
outbox blob whose final manifest says `pending`: the next sweep sends it. A crash after a send
and before its record sends it again: receivers drop repeats by the message id, which is
stable (`<batch id>:<final state>`), in the queue message body and the webhook's
`X-ML-Message-Id` header.

Bounded: a sweep spends at most DELIVERY_BUDGET_SECONDS sending (short timeouts, a few
retries with backoff for a webhook answering 5xx/429/408 or not at all); what is left stays
pending for the next sweep. A target that refuses (e.g. the queue does not exist, the webhook
answers 401) is recorded with the error and retried on every sweep: nothing is dropped.

Cost: nothing without targets. With targets, every sweep lists the outbox once (idle: one
List Blobs more, empty), and a finished batch costs the outbox create, one manifest read and
write and the outbox delete, plus one request per target.

Queue messages are base64-encoded UTF-8 JSON (the Azure Functions queue trigger's default
encoding, so a Functions app can consume them as they are). Webhook requests are POSTs of the
same JSON with `X-ML-Signature: sha256=<hex HMAC-SHA256 of the body, key NOTIFY_WEBHOOK_SECRET>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

from cleanup import history
from launcher.batch import Manifest, ManifestConflict, ManifestUnreadable, iso
from launcher.clients import Clients

logger = logging.getLogger(__name__)

OUTBOX = "outbox/"  # under LOCK_PREFIX
PREFIX_METADATA = "mlprefix"
EVENT = "batch.finished"
PENDING, SENT = "pending", "sent"
SIGNATURE_HEADER = "X-ML-Signature"
MESSAGE_ID_HEADER = "X-ML-Message-Id"
EVENT_HEADER = "X-ML-Event"
# Time a sweep may spend sending, all targets and batches together; the rest waits.
DELIVERY_BUDGET_SECONDS = 10.0
MAX_PER_SWEEP = 200  # outbox entries handled per sweep (one listing page)
WEBHOOK_CONNECT_TIMEOUT = 3.0
WEBHOOK_READ_TIMEOUT = 5.0
WEBHOOK_TRIES = 3  # per sweep, with backoff, for answers worth an immediate retry
WEBHOOK_BACKOFF = 0.5  # seconds, doubled per retry
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ERROR = 300
RECORD_TRIES = 3  # conditional writes of the outcome, re-read on a conflict


def message_id(m: Manifest) -> str:
    return f"{m.batch_id}:{m.state.value}"


def outbox_name(clients: Clients, batch_id: str) -> str:
    return f"{clients.settings.lock_prefix}{OUTBOX}{batch_id}"


def profile_of(m: Manifest) -> str:
    """The batch's job profile (a later feature adds `profile` to the manifest)."""
    return str(getattr(m, "profile", None) or "default")


def message(clients: Clients, m: Manifest, prefix: str) -> dict[str, Any]:
    """The notification: the history row (id, state, folder, files, attempts, exit code,
    reason, times) plus the profile, output prefix, cost and where the batch lives."""
    s = clients.settings
    row = history.summary(m, prefix)
    return {
        "id": message_id(m),
        "event": EVENT,
        "batch": m.batch_id,
        "profile": profile_of(m),
        "state": m.state.value,
        "account": s.account_name,
        "container": s.watch_container,
        "folder": row["folder"],
        "output_prefix": f"{s.output_prefix}{m.batch_id}/",
        "label": row["label"],
        "files": row["files"],
        "bytes": row["bytes"],
        "attempts": m.attempt,
        "exit_code": row["exit_code"],
        "reason": row["reason"],
        "claimed_at": row["claimed_at"],
        "launched_at": row["launched_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "duration_seconds": row["duration_seconds"],
        "cost": m.cost,
    }


def encode(doc: dict[str, Any]) -> bytes:
    """Deterministic bytes: a resend of the same notification is byte-identical."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does (tests use it): constant-time comparison of the signature."""
    return bool(header) and hmac.compare_digest(signature(secret, body), header or "")


def prepare(clients: Clients, m: Manifest, prefix: str) -> None:
    """Before the final manifest is written: mark every configured target pending on it and
    create the outbox entry that makes later sweeps find it (see the module doc)."""
    targets = clients.settings.notify_targets
    if not targets:
        return
    m.notifications = {
        "id": message_id(m),
        "targets": {
            t: {"state": PENDING, "attempts": 0, "last_error": None, "sent_at": None}
            for t in targets
        },
    }
    try:
        clients.container.upload_blob(
            outbox_name(clients, m.batch_id),
            b"",
            overwrite=False,
            metadata={PREFIX_METADATA: prefix},
        )
    except ResourceExistsError:
        pass  # an earlier (crashed) finish of this batch created it


def settle_refinish(clients: Clients, final: Manifest) -> None:
    """A finish that found the final manifest already written (a crashed or stalled janitor
    finishing again) has just run `prepare`, which re-creates the outbox entry if delivery
    already removed it. If the stored final manifest records every configured target as sent,
    that entry would only send the message again: remove it."""
    targets = (final.notifications or {}).get("targets") or {}
    configured = clients.settings.notify_targets
    if configured and all((targets.get(t) or {}).get("state") == SENT for t in configured):
        _remove_outbox(clients, final.batch_id)


@dataclass
class Delivery:
    """What one sweep's delivery step did (part of the sweep report)."""

    sent: list[dict[str, str]] = field(default_factory=list)  # batch, target, id
    pending: list[dict[str, str]] = field(default_factory=list)  # batch, target, error
    left_for_next_sweep: int = 0


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _short(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def send_queue(clients: Clients, body: bytes) -> None:
    assert clients.queue is not None
    clients.queue.send_message(body.decode("utf-8"))


def send_webhook(clients: Clients, body: bytes, msg_id: str, budget: _Budget) -> int:
    """POST, retried with backoff while it answers 5xx/429/408 or not at all, within the
    budget. Returns the tries made; raises with the last problem when not delivered."""
    s = clients.settings
    assert clients.webhook is not None and s.notify_webhook_url and s.notify_webhook_secret
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        SIGNATURE_HEADER: signature(s.notify_webhook_secret, body),
        MESSAGE_ID_HEADER: msg_id,
        EVENT_HEADER: EVENT,
        "User-Agent": "model-launcher-notify",
    }
    problem = "no time left in this sweep"
    tries = 0
    delay = WEBHOOK_BACKOFF
    while tries < WEBHOOK_TRIES and budget.left() > 0.2:
        tries += 1
        left = budget.left()
        try:
            response = clients.webhook.post(
                s.notify_webhook_url,
                data=body,
                headers=headers,
                timeout=(min(WEBHOOK_CONNECT_TIMEOUT, left), min(WEBHOOK_READ_TIMEOUT, left)),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            problem = _short(exc)
        else:
            if 200 <= response.status_code < 300:
                return tries
            problem = f"HTTP {response.status_code} from the webhook"
            if response.status_code not in RETRY_STATUSES:
                break  # a refusal: retried on the next sweep, not now
        if budget.left() <= delay:
            break
        time.sleep(delay)
        delay *= 2
    raise _NotSent(problem, tries)


class _NotSent(RuntimeError):
    def __init__(self, problem: str, tries: int) -> None:
        super().__init__(problem)
        self.tries = tries


def _send(clients: Clients, target: str, body: bytes, msg_id: str, budget: _Budget) -> int:
    if target == "queue":
        try:
            send_queue(clients, body)
        except ResourceNotFoundError as exc:
            raise _NotSent(
                f"queue {clients.settings.notify_queue!r} does not exist: {_short(exc)}", 1
            ) from exc
        except AzureError as exc:
            raise _NotSent(_short(exc), 1) from exc
        return 1
    return send_webhook(clients, body, msg_id, budget)


def pending_entries(clients: Clients) -> list[tuple[str, str]]:
    """(batch id, final prefix) of the outbox: one List Blobs (empty when idle)."""
    base = clients.settings.lock_prefix + OUTBOX
    pager = clients.container.list_blobs(
        name_starts_with=base, include=["metadata"], results_per_page=MAX_PER_SWEEP
    ).by_page()
    return [
        (b.name[len(base) :], (b.metadata or {}).get(PREFIX_METADATA, "")) for b in next(pager, [])
    ]


def deliver(
    clients: Clients, entries: list[tuple[str, str]] | None = None, dry_run: bool = False
) -> Delivery:
    """Send what the outbox holds (listed now unless given); see the module doc."""
    report = Delivery()
    if not clients.settings.notify_targets:
        return report
    if entries is None:
        entries = pending_entries(clients)
    budget = _Budget(DELIVERY_BUDGET_SECONDS)
    for batch_id, prefix in entries:
        if budget.left() <= 0.2:
            report.left_for_next_sweep += 1
            continue
        try:
            _deliver_one(
                clients, batch_id, prefix=prefix, budget=budget, report=report, dry_run=dry_run
            )
        except (AzureError, ManifestUnreadable) as exc:
            logger.warning("notify: batch %s: %s; next sweep retries", batch_id, _short(exc))
            report.pending.append({"batch": batch_id, "target": "*", "error": _short(exc)})
    return report


def _final_prefix(clients: Clients, prefix: str) -> str | None:
    s = clients.settings
    return prefix if prefix in (s.done_prefix, s.failed_prefix) else None


def _deliver_one(
    clients: Clients,
    batch_id: str,
    *,
    prefix: str,
    budget: _Budget,
    report: Delivery,
    dry_run: bool,
) -> None:
    store = clients.store
    final = _final_prefix(clients, prefix)
    found = store.read(batch_id, final) if final else None
    if found is None:
        if final and store.read(batch_id) is not None:
            return  # still finishing (a crash before the final manifest): finish comes first
        logger.warning(
            "notify: outbox entry %s has no finished batch in %r: removed", batch_id, prefix
        )
        if not dry_run:
            _remove_outbox(clients, batch_id)
        return
    assert final is not None
    manifest, etag = found
    state = manifest.notifications or {}
    targets: dict[str, dict[str, Any]] = state.get("targets") or {}
    configured = clients.settings.notify_targets
    todo = [t for t, v in targets.items() if v.get("state") != SENT and t in configured]
    if dry_run:
        report.pending += [{"batch": batch_id, "target": t, "error": "dry run"} for t in todo]
        return
    body = encode(message(clients, manifest, final))
    msg_id = str(state.get("id") or message_id(manifest))
    outcomes: dict[str, tuple[int, str | None]] = {}
    for target in todo:
        if budget.left() <= 0.2:
            report.left_for_next_sweep += 1
            break
        try:
            tries = _send(clients, target, body, msg_id, budget)
        except _NotSent as exc:
            outcomes[target] = (exc.tries, str(exc))
            report.pending.append({"batch": batch_id, "target": target, "error": str(exc)})
            logger.warning(
                "notify: batch %s: %s not sent (%s); next sweep retries", batch_id, target, exc
            )
            continue
        outcomes[target] = (tries, None)
        report.sent.append({"batch": batch_id, "target": target, "id": msg_id})
        logger.info("notify: batch %s: sent %s to %s", batch_id, msg_id, target)
    if outcomes:
        recorded = _record(clients, manifest, etag, final, outcomes)
        if recorded is None:
            return  # the outbox entry stays: the next sweep sends again and records it
        manifest = recorded
    still = [
        t
        for t, v in ((manifest.notifications or {}).get("targets") or {}).items()
        if v.get("state") != SENT and t in configured
    ]
    if not still:
        _remove_outbox(clients, batch_id)


def _apply(m: Manifest, outcomes: dict[str, tuple[int, str | None]], now: str | None) -> None:
    targets = (m.notifications or {}).setdefault("targets", {})
    for target, (tries, error) in outcomes.items():
        rec = targets.setdefault(target, {"state": PENDING, "attempts": 0})
        if rec.get("state") == SENT:
            continue  # sent is final: a concurrent delivery already recorded it
        rec["attempts"] = int(rec.get("attempts") or 0) + tries
        if error is None:
            rec.update(state=SENT, sent_at=now, last_error=None)
        else:
            rec.update(last_error=error, last_try_at=now)


def _record(
    clients: Clients,
    manifest: Manifest,
    etag: str,
    prefix: str,
    outcomes: dict[str, tuple[int, str | None]],
) -> Manifest | None:
    """Record the outcome on the final manifest, If-Match; on a conflict (a retry of the
    batch, a concurrent delivery) re-read and apply again: `sent` only ever gets added."""
    store = clients.store
    for _ in range(RECORD_TRIES):
        _apply(manifest, outcomes, iso(clients.clock.now()))
        try:
            store.update(manifest, etag, prefix)
            return manifest
        except ManifestConflict:
            found = store.read(manifest.batch_id, prefix)
            if found is None:
                break
            manifest, etag = found
    logger.warning(
        "notify: batch %s: outcome not recorded (manifest kept changing); next sweep sends "
        "again (receivers drop the repeat by its id)",
        manifest.batch_id,
    )
    return None


def _remove_outbox(clients: Clients, batch_id: str) -> None:
    try:
        clients.container.delete_blob(outbox_name(clients, batch_id))
    except ResourceNotFoundError:
        pass
