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
from launcher.clock import ServerClock

MANIFEST_NAME = "_batch.json"
# Blob metadata `cleanup retry` puts on the inputs it restores to incoming/: the failed batch's
# id, which the claim records as the new manifest's `retry_of`.
RETRY_OF_METADATA = "mlretryof"
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
    # Usage and estimated cost of this attempt (launcher/cost.py): billed from launch to finish.
    billed_seconds: float | None = None
    vcpu_seconds: float | None = None
    gb_seconds: float | None = None
    gpu_seconds: float | None = None
    cost: float | None = None


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
    # Copies in the batch folder that are not part of the batch (their file was dropped during
    # the claim): deleted once this manifest version is written, and never moved to done/.
    discarded: list[str] = field(default_factory=list)
    # How often recovery took over this claim from a tick that crashed or stalled.
    takeovers: int = 0
    # Attempts the platform killed (exit 7147/7148): relaunched without counting against
    # MAX_ATTEMPTS, up to MAX_PLATFORM_RELAUNCHES.
    platform_kills: int = 0
    retried: dict[str, Any] | None = None  # set by `cleanup retry`: when, and what was restored
    retry_of: str | None = None  # the failed batch whose inputs `cleanup retry` put back
    # Sum of the attempts' usage and estimated cost (launcher/cost.py), kept with every attempt.
    cost: dict[str, Any] | None = None
    # Completion notifications of a finished batch (cleanup/notify.py): message id and, per
    # target, pending|sent with attempts and the last error. Written before any send.
    notifications: dict[str, Any] | None = None
    # The job profile (profiles.py) the batch runs with, decided at claim time by its folder,
    # and its parameters: the ML_PARAM_* environment checked against that profile's
    # declarations, from `params_file` (folder mode; kept in the batch, not an input).
    profile: str = "default"
    params: dict[str, str] | None = None
    params_file: str | None = None
    rev: str = ""
    version: int = 1

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, batch_id: str | None = None) -> Manifest:
        """Parse and check a manifest; anything else raises ManifestUnreadable with the reason
        (an operator's editor may truncate one; a tool may write valid JSON of another shape)."""
        where = batch_id or "?"
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestUnreadable(where, f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ManifestUnreadable(where, f"a JSON {type(raw).__name__}, not an object")
        missing = [k for k in ("batch_id", "state", "created", "updated") if k not in raw]
        if missing:
            raise ManifestUnreadable(where, f"missing field(s): {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        raw = {k: v for k, v in raw.items() if k in known}
        try:
            raw["state"] = State(raw["state"])
            raw["files"] = [FileEntry(**f) for f in raw.get("files") or []]
            raw["attempts"] = [Attempt(**a) for a in raw.get("attempts") or []]
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ManifestUnreadable(where, f"unexpected shape ({exc})") from None
        bad = [
            f
            for f in manifest.files
            if not all(isinstance(v, str) for v in (f.source, f.name, f.blob, f.etag))
            or not isinstance(f.size, int)
        ]
        if bad or not isinstance(manifest.batch_id, str) or not isinstance(manifest.attempt, int):
            raise ManifestUnreadable(where, "unexpected shape (wrong field types)")
        if batch_id is not None and manifest.batch_id != batch_id:
            raise ManifestUnreadable(
                where, f"names batch {manifest.batch_id!r}, not its folder's {batch_id!r}"
            )
        return manifest

    def current_attempt(self) -> Attempt | None:
        for rec in reversed(self.attempts):
            if rec.attempt == self.attempt:
                return rec
        return None

    def input_count(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class BatchRef:
    """What one List Blobs call with metadata tells about a batch, without reading it.

    `state` is None when the manifest's metadata is missing or unknown (a manifest written by
    hand or by another tool) or when the folder has no manifest at all (`has_manifest` False):
    `ManifestStore.triage` sorts those out."""

    batch_id: str
    prefix: str
    state: State | None
    attempt: int
    group: str | None
    last_modified: datetime
    etag: str = ""
    has_manifest: bool = True
    blobs: int = 0  # blobs in the folder besides the manifest


@dataclass(frozen=True)
class Quarantined:
    """A batch no loop may act on: its manifest cannot be read, or it has none. Its files are
    kept where they are; docs/operations.md ("Quarantined batches") says how to repair or
    release it."""

    batch_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"batch": self.batch_id, "reason": self.reason}


class ManifestConflict(RuntimeError):
    """Somebody else changed the manifest since we read it."""


class ManifestUnreadable(ValueError):
    """A manifest that is not valid JSON of the manifest's shape."""

    def __init__(self, batch_id: str, reason: str) -> None:
        super().__init__(f"batch {batch_id}: manifest unreadable: {reason}")
        self.batch_id = batch_id
        self.reason = reason


class ManifestStore:
    """Reads and writes manifests with optimistic concurrency (etag) and a per-write `rev`
    token, so a retried write whose first attempt landed is recognised as ours."""

    def __init__(
        self, container: ContainerClient, settings: Settings, clock: ServerClock | None = None
    ) -> None:
        self.container = container
        self.settings = settings
        self.clock = clock or ServerClock()

    def folder(self, batch_id: str, prefix: str | None = None) -> str:
        return f"{prefix or self.settings.processing_prefix}{batch_id}/"

    def path(self, batch_id: str, prefix: str | None = None) -> str:
        return self.folder(batch_id, prefix) + MANIFEST_NAME

    @staticmethod
    def _metadata(m: Manifest) -> dict[str, str]:
        return {"mlstate": m.state.value, "mlattempt": str(m.attempt), "mlgroup": m.group or ""}

    def _upload(self, m: Manifest, name: str, **conditions: Any) -> str:
        m.updated = iso(self.clock.now()) or ""
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

    def put_final(self, m: Manifest, prefix: str) -> str | None:
        """Create-only write of the final manifest under done/ or failed/. A manifest already
        there is the one an earlier (crashed or concurrent) finish of this batch wrote: it is
        kept, and None is returned."""
        try:
            return self._upload(m, self.path(m.batch_id, prefix), overwrite=False)
        except ResourceExistsError:
            return None

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
        """The manifest and its etag; None if there is none. Raises ManifestUnreadable."""
        try:
            downloader = self.container.get_blob_client(self.path(batch_id, prefix)).download_blob()
        except ResourceNotFoundError:
            return None
        data = downloader.readall()
        return Manifest.from_bytes(data, batch_id), str(downloader.properties.etag)

    def delete(self, batch_id: str, etag: str, prefix: str | None = None) -> bool:
        """Delete the manifest only if it is still the version `etag`. True if deleted (or
        already gone); raises ManifestConflict if somebody else changed it meanwhile."""
        blob = self.container.get_blob_client(self.path(batch_id, prefix))
        try:
            blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            return False
        except (ResourceModifiedError, HttpResponseError) as exc:
            if isinstance(exc, ResourceModifiedError) or exc.status_code == 412:
                raise ManifestConflict(f"manifest of batch {batch_id} changed under us") from exc
            raise
        return True

    def triage(self, refs: list[BatchRef]) -> tuple[list[BatchRef], list[Quarantined]]:
        """Give every ref a state: a manifest without (known) metadata is read for it; one that
        cannot be read, and a folder without a manifest, are quarantined. One read per such
        batch; a healthy processing/ costs nothing here."""
        good = [r for r in refs if r.state is not None]
        quarantined: list[Quarantined] = []
        for ref in refs:
            if ref.state is not None:
                continue
            if not ref.has_manifest:
                quarantined.append(
                    Quarantined(ref.batch_id, f"no {MANIFEST_NAME}: {ref.blobs} blob(s) in folder")
                )
                continue
            try:
                found = self.read(ref.batch_id, ref.prefix)
            except ManifestUnreadable as exc:
                quarantined.append(Quarantined(ref.batch_id, exc.reason))
                continue
            if found is None:
                continue  # finished or rolled back since the listing
            m, etag = found
            good.append(
                BatchRef(
                    ref.batch_id, ref.prefix, m.state, m.attempt, m.group, ref.last_modified, etag
                )
            )
        return good, quarantined

    def list_refs(self, prefix: str | None = None) -> list[BatchRef]:
        """Every batch under `prefix` (default processing/) from one listing with metadata,
        including folders that hold blobs but no manifest (`has_manifest` False)."""
        base = prefix or self.settings.processing_prefix
        refs: dict[str, BatchRef] = {}
        others: dict[str, tuple[int, datetime]] = {}
        for blob in self.container.list_blobs(name_starts_with=base, include=["metadata"]):
            rest = blob.name[len(base) :]
            batch_id, _, tail = rest.partition("/")
            if not tail:
                continue  # a blob directly under processing/ is not a batch
            if tail != MANIFEST_NAME:
                count, newest = others.get(batch_id, (0, blob.last_modified))
                others[batch_id] = (count + 1, max(newest, blob.last_modified))
                continue
            meta = blob.metadata or {}
            try:
                state: State | None = State(meta.get("mlstate", ""))
            except ValueError:
                state = None
            try:
                attempt = int(meta.get("mlattempt") or 0)
            except ValueError:
                attempt, state = 0, None
            refs[batch_id] = BatchRef(
                batch_id=batch_id,
                prefix=base,
                state=state,
                attempt=attempt,
                group=meta.get("mlgroup") or None,
                last_modified=blob.last_modified,
                etag=str(blob.etag),
            )
        for batch_id, (count, newest) in others.items():
            if batch_id in refs:
                continue
            refs[batch_id] = BatchRef(
                batch_id, base, None, 0, None, newest, has_manifest=False, blobs=count
            )
        return sorted(refs.values(), key=lambda r: r.batch_id)
