"""A batch: its id, its blob layout and its manifest, the single source of truth for its state.

Layout in the watched container (prefixes are settings):

    incoming/<user files>                      dropped by users
    processing/<batch>/_batch.json             manifest (state machine below)
    processing/<batch>/<relative path>         claimed inputs
    processing/<batch>/_logs/attempt-<n>.log   container logs, saved before a group is deleted
    done/<batch>/... or failed/<batch>/...     the same tree once the batch is finished
    output/<batch>/...                         what the worker writes

States: claiming -> claimed -> launched -> finishing -> succeeded | failed.
A failed attempt with attempts left goes launched -> launched (attempt n+1).

The manifest blob also carries its state, attempt and group as blob metadata so one List Blobs
call with metadata shows every active batch without reading each manifest.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContainerClient, ContentSettings

from config import Settings
from launcher.blobs import delete_quietly

MANIFEST_NAME = "_batch.json"
LOGS_DIR = "_logs"
RENAMED_DIR = "_renamed"
RESERVED_TOP = frozenset({MANIFEST_NAME, LOGS_DIR, RENAMED_DIR})
MAX_BLOB_NAME = 1024
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


class State(StrEnum):
    CLAIMING = "claiming"
    CLAIMED = "claimed"
    LAUNCHED = "launched"
    FINISHING = "finishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ACTIVE_STATES = (State.CLAIMING, State.CLAIMED, State.LAUNCHED, State.FINISHING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if dt else None


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_batch_id(now: datetime | None = None) -> str:
    """Sortable (UTC time first), unique (random suffix) and valid inside an ARM name."""
    now = now or utcnow()
    suffix = "".join(secrets.choice(_B32) for _ in range(6))
    return now.strftime("%Y%m%d-%H%M%S-") + suffix


def safe_relative_blob(settings: Settings, batch_id: str, relative: str, source: str) -> str:
    """Where an input lives below its batch folder.

    The user's relative path is kept when it is safe: no empty, '.' or '..' segment, no
    segment ending in a dot, no clash with the app's own names, and short enough to stay within
    the 1,024-character blob name limit under every state prefix. Anything else is stored as
    `_renamed/<sha256 of the source name>` and the manifest keeps the original name, so no
    user name can ever escape its batch prefix or collide with another file.
    """
    segments = relative.split("/")
    longest = max(len(p) for p in settings.state_prefixes) + len(batch_id) + 1
    clean = (
        relative
        and all(seg not in ("", ".", "..") and not seg.endswith(".") for seg in segments)
        and segments[0] not in RESERVED_TOP
        and "\\" not in relative
        and longest + len(relative) <= MAX_BLOB_NAME
        and all(ch >= " " and ch != "\x7f" for ch in relative)
    )
    if clean:
        return relative
    return f"{RENAMED_DIR}/{hashlib.sha256(source.encode('utf-8')).hexdigest()}"


@dataclass
class FileEntry:
    source: str  # full name in incoming/ at claim time
    name: str  # path relative to the incoming prefix, as the user sees it
    blob: str  # path relative to the batch folder (see safe_relative_blob)
    etag: str
    size: int


@dataclass
class Attempt:
    attempt: int
    group: str
    launched_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    exit_code: int | None = None
    outcome: str | None = None  # succeeded | failed | timeout | provisioning-failed | vanished
    reason: str | None = None
    logs: str | None = None  # blob name relative to the batch folder


@dataclass
class Manifest:
    batch_id: str
    state: State
    created: str
    updated: str
    files: list[FileEntry] = field(default_factory=list)
    mode: str = "tick"
    folder: str | None = None
    ready_marker: str | None = None
    attempt: int = 0
    group: str | None = None
    launched_at: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    last_error: dict[str, str] | None = None
    target: str | None = None  # "done" or "failed" while finishing
    reason: str | None = None
    finished_at: str | None = None
    rev: str = ""
    version: int = 1

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        raw: dict[str, Any] = json.loads(data)
        known = set(cls.__dataclass_fields__)
        raw = {k: v for k, v in raw.items() if k in known}
        raw["state"] = State(raw["state"])
        raw["files"] = [FileEntry(**f) for f in raw.get("files", [])]
        raw["attempts"] = [Attempt(**a) for a in raw.get("attempts", [])]
        return cls(**raw)

    def current_attempt(self) -> Attempt | None:
        for rec in reversed(self.attempts):
            if rec.attempt == self.attempt:
                return rec
        return None

    def input_count(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class BatchRef:
    """What one List Blobs call with metadata tells about a batch, without reading it."""

    batch_id: str
    prefix: str
    state: State | None
    attempt: int
    group: str | None
    last_modified: datetime


class ManifestConflict(RuntimeError):
    """Somebody else changed the manifest since we read it."""


class ManifestStore:
    """Reads and writes manifests with optimistic concurrency (etag) and a per-write `rev`
    token, so a retried write whose first attempt landed is recognised as ours."""

    def __init__(self, container: ContainerClient, settings: Settings) -> None:
        self.container = container
        self.settings = settings

    def folder(self, batch_id: str, prefix: str | None = None) -> str:
        return f"{prefix or self.settings.processing_prefix}{batch_id}/"

    def path(self, batch_id: str, prefix: str | None = None) -> str:
        return self.folder(batch_id, prefix) + MANIFEST_NAME

    @staticmethod
    def _metadata(m: Manifest) -> dict[str, str]:
        return {"mlstate": m.state.value, "mlattempt": str(m.attempt), "mlgroup": m.group or ""}

    def _upload(self, m: Manifest, name: str, **conditions: Any) -> str:
        m.updated = iso(utcnow()) or ""
        m.rev = uuid.uuid4().hex
        result = self.container.get_blob_client(name).upload_blob(
            m.to_bytes(),
            metadata=self._metadata(m),
            content_settings=ContentSettings(content_type="application/json; charset=utf-8"),
            **conditions,
        )
        return str(result["etag"])

    def create(self, m: Manifest, prefix: str | None = None) -> str:
        """Create-only write; a 409 after a retried first attempt that landed is ours."""
        name = self.path(m.batch_id, prefix)
        try:
            return self._upload(m, name, overwrite=False)
        except ResourceExistsError:
            found = self.read(m.batch_id, prefix)
            if found and found[0].rev == m.rev:
                return found[1]
            raise

    def put(self, m: Manifest, prefix: str) -> str:
        """Unconditional write, used for the final manifest under done/ or failed/."""
        return self._upload(m, self.path(m.batch_id, prefix), overwrite=True)

    def update(self, m: Manifest, etag: str, prefix: str | None = None) -> str:
        """Write if unchanged since `etag`; raise ManifestConflict otherwise."""
        name = self.path(m.batch_id, prefix)
        try:
            return self._upload(
                m, name, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            found = self.read(m.batch_id, prefix)
            if found and found[0].rev == m.rev:
                return found[1]
            raise ManifestConflict(f"manifest {name} changed under us") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                found = self.read(m.batch_id, prefix)
                if found and found[0].rev == m.rev:
                    return found[1]
                raise ManifestConflict(f"manifest {name} changed under us") from exc
            raise

    def read(self, batch_id: str, prefix: str | None = None) -> tuple[Manifest, str] | None:
        try:
            downloader = self.container.get_blob_client(self.path(batch_id, prefix)).download_blob()
        except ResourceNotFoundError:
            return None
        data = downloader.readall()
        return Manifest.from_bytes(data), str(downloader.properties.etag)

    def delete(self, batch_id: str, prefix: str | None = None) -> None:
        delete_quietly(self.container, self.path(batch_id, prefix))

    def list_refs(self, prefix: str | None = None) -> list[BatchRef]:
        """Every batch under `prefix` (default processing/) from one listing with metadata."""
        base = prefix or self.settings.processing_prefix
        refs = []
        for blob in self.container.list_blobs(name_starts_with=base, include=["metadata"]):
            rest = blob.name[len(base) :]
            batch_id, _, tail = rest.partition("/")
            if tail != MANIFEST_NAME:
                continue
            meta = blob.metadata or {}
            try:
                state: State | None = State(meta.get("mlstate", ""))
            except ValueError:
                state = None
            refs.append(
                BatchRef(
                    batch_id=batch_id,
                    prefix=base,
                    state=state,
                    attempt=int(meta.get("mlattempt") or 0),
                    group=meta.get("mlgroup") or None,
                    last_modified=blob.last_modified,
                )
            )
        return refs
