"""Reading incoming/ as a stream: which files may be claimed, and in which batches.

A listing of incoming/ comes page by page in name order. `Intake` classifies each entry as it
comes and hands back *units*, each as soon as it is known claimable: a settled loose file, or,
in folder mode, a whole ready folder once the listing has passed its prefix (names sort, so a
folder's files are contiguous, however many pages it spans). `Planner` cuts units into batch
plans. Nothing that waits costs memory: blocked files, settling files and waiting folders are
counted, and only their first `SAMPLE` names are kept for the report; a folder's entries are
buffered only while it may still be claimed, and dropped as soon as it is known to wait (an
unsettled file, or its ready marker found absent: see `Intake`).

`scan` and `plan_batches` are the same two steps over a whole listing or a list of files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from azure.storage.blob import BlobProperties

from config import Settings
from launcher.batch import RETRY_OF_METADATA

# Names of blocked files and waiting folders a tick keeps for its report (the counts are whole).
SAMPLE = 100


@dataclass(frozen=True)
class Candidate:
    name: str
    relative: str
    etag: str
    size: int
    last_modified: datetime
    retry_of: str | None = None  # metadata mlretryof: put back by `cleanup retry` of that batch
    profile: str = "default"  # its job profile, by its top-level folder (profiles.route)


@dataclass
class Plan:
    files: list[Candidate]
    folder: str | None = None
    profile: str = "default"  # a batch never mixes profiles


@dataclass
class Scan:
    claimable: list[Candidate] = field(default_factory=list)
    unsettled: int = 0
    markers: int = 0
    waiting_folders: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # name -> why storage will not move it


def is_folder_marker(blob: BlobProperties) -> bool:
    """Zero-byte 'directory' blobs made by tools and by hierarchical-namespace accounts."""
    meta = blob.metadata or {}
    return blob.name.endswith("/") or meta.get("hdi_isfolder", "").lower() == "true"


def blocked_reason(blob: BlobProperties) -> str | None:
    """Why storage would refuse to move this blob, as the listing already shows: an archived
    (or rehydrating) blob cannot be copied, and one leased by somebody else cannot be deleted.
    Such files are left alone instead of being tried, and failing, on every tick, which also
    keeps a tick that finds nothing else idle (one request)."""
    if str(blob.blob_tier or "").lower() == "archive":
        return "archive tier"
    if str(blob.lease.state or "").lower() in ("leased", "breaking"):
        return "leased by somebody else"
    return None


class Intake:
    """Classifies a name-ordered listing of incoming/ one entry at a time (`feed`, then `end`)
    and returns the claimable units (`Plan`s: one loose file, or one whole folder) as soon as
    each is known.

    Folder mode: a folder's settled files are buffered until the listing passes its prefix;
    then it is a unit if BATCH_READY_MARKER (when set) was among them. An unsettled file makes
    it wait at once: the buffer is dropped and its remaining files are only counted. A folder
    that grows past `head_after` buffered files without its marker having been listed yet costs
    one `marker_exists` call (a HEAD of the marker blob): absent, the folder waits and is
    dropped the same way; present, it keeps buffering, since it will be claimed whole (caps do
    not split a folder, so a folder larger than them is one batch of its own)."""

    def __init__(
        self,
        settings: Settings,
        now: datetime,
        marker_exists: Callable[[str], bool] | None = None,
        head_after: int = 5000,
        sample: int = SAMPLE,
    ) -> None:
        self.settings = settings
        self.prefix = settings.incoming_prefix
        self.settled_before = now - timedelta(seconds=settings.batch_settle_seconds)
        self.folder_mode = settings.batch_mode == "folder"
        self.marker = settings.batch_ready_marker
        self.marker_exists = marker_exists
        self.head_after = head_after
        self.sample = sample
        self.listed = 0
        self.markers = 0
        self.unsettled = 0
        self.blocked: dict[str, str] = {}
        self.blocked_total = 0
        self.waiting_folders: list[str] = []
        self.waiting_total = 0
        self.marker_checks = 0
        self.last_name: str | None = None
        # The folder being read: its name, its buffered files, and whether it already waits.
        self._folder: str | None = None
        self._files: list[Candidate] = []
        self._waits = False
        self._marker_seen = False
        self._marker_checked = False

    def feed(self, blob: BlobProperties) -> list[Plan]:
        self.listed += 1
        self.last_name = blob.name
        relative = blob.name[len(self.prefix) :]
        folder = relative.split("/", 1)[0] if self.folder_mode and "/" in relative else None
        out = self._close() if self._folder is not None and folder != self._folder else []
        if is_folder_marker(blob):
            self.markers += 1
            return out
        why = blocked_reason(blob)
        profile = self.settings.profile_of(relative)
        if why is None and profile is None:
            why = "no job profile matches its folder and there is no default profile"
        if why is not None or profile is None:
            self.block(blob.name, why or "")
            return out
        cand = Candidate(
            blob.name,
            relative,
            str(blob.etag),
            int(blob.size),
            blob.last_modified,
            (blob.metadata or {}).get(RETRY_OF_METADATA),
            profile,
        )
        settled = blob.last_modified <= self.settled_before
        if not settled:
            self.unsettled += 1
        if folder is None:
            if settled:
                out.append(Plan([cand], profile=profile))
            return out
        if self._folder is None:
            self._folder = folder
        if self._waits:
            return out
        if not settled:
            self._wait()
            return out
        self._files.append(cand)
        if self.marker is not None and relative == f"{folder}/{self.marker}":
            self._marker_seen = True
        if (
            self.marker is not None
            and self.marker_exists is not None
            and not self._marker_seen
            and not self._marker_checked
            and len(self._files) > self.head_after
        ):
            self._marker_checked = True
            self.marker_checks += 1
            if not self.marker_exists(f"{self.prefix}{folder}/{self.marker}"):
                self._wait()
        return out

    def end(self) -> list[Plan]:
        """The listing is complete: the last folder is complete too."""
        return self._close() if self._folder is not None else []

    def block(self, name: str, why: str) -> None:
        self.blocked_total += 1
        if len(self.blocked) < self.sample:
            self.blocked[name] = why

    def _wait(self) -> None:
        self._waits = True
        self._files = []

    def _close(self) -> list[Plan]:
        folder, files = self._folder, self._files
        ready = not self._waits and (self.marker is None or self._marker_seen)
        self._folder, self._files = None, []
        self._waits = self._marker_seen = self._marker_checked = False
        if ready and files:
            return [Plan(files, folder, files[0].profile)]
        if not ready and folder is not None:
            self.waiting_total += 1
            if len(self.waiting_folders) < self.sample:
                self.waiting_folders.append(folder)
        return []


class Planner:
    """Cuts claimable units, in name order, into batch plans, each returned as soon as it is
    complete. tick mode: files cut at BATCH_MAX_FILES / BATCH_MAX_BYTES (a file larger than the
    byte cap travels alone; folders mean nothing), one open batch per job profile (a batch
    never mixes profiles); folder mode: one plan per unit (a folder whole, or a loose file
    alone)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._current: dict[str, list[Candidate]] = {}
        self._size: dict[str, int] = {}

    def add(self, unit: Plan) -> list[Plan]:
        if self.settings.batch_mode == "folder":
            return [unit] if unit.files else []
        out: list[Plan] = []
        s = self.settings
        p = unit.profile
        for c in unit.files:
            current = self._current.setdefault(p, [])
            if current and self._size.get(p, 0) + c.size > s.batch_max_bytes:
                out.append(self._cut(p))
                current = self._current.setdefault(p, [])
            current.append(c)
            self._size[p] = self._size.get(p, 0) + c.size
            if len(current) >= s.batch_max_files:
                out.append(self._cut(p))
        return out

    def flush(self) -> list[Plan]:
        """The last, partial plans, one per profile (the listing has ended)."""
        return [self._cut(p) for p in sorted(self._current) if self._current[p]]

    def _cut(self, profile: str) -> Plan:
        plan = Plan(self._current.pop(profile), profile=profile)
        self._size.pop(profile, None)
        return plan


def scan(settings: Settings, blobs: Iterable[BlobProperties], now: datetime) -> Scan:
    """Sort a whole listing of incoming/ into what may be claimed now and what must wait (every
    name kept: for tests and tools; a tick streams with `Intake` instead)."""
    intake = Intake(settings, now, sample=2**62)
    result = Scan()
    for blob in sorted(blobs, key=lambda b: str(b.name)):
        for unit in intake.feed(blob):
            result.claimable += unit.files
    for unit in intake.end():
        result.claimable += unit.files
    result.unsettled, result.markers = intake.unsettled, intake.markers
    result.waiting_folders, result.blocked = intake.waiting_folders, intake.blocked
    return result


def plan_batches(settings: Settings, claimable: list[Candidate], limit: int) -> list[Plan]:
    """Group claimable files into at most `limit` batches, in name order (see `Planner`)."""
    if limit <= 0:
        return []
    planner = Planner(settings)
    plans: list[Plan] = []
    folder: str | None = None
    unit: list[Candidate] = []
    for c in sorted(claimable, key=lambda c: c.name):
        key = c.relative.split("/", 1)[0] if "/" in c.relative else None
        if unit and (key is None or key != folder):
            plans += planner.add(Plan(unit, folder, unit[0].profile))
            unit = []
        folder = key
        unit.append(c)
    if unit:
        plans += planner.add(Plan(unit, folder, unit[0].profile))
    plans += planner.flush()
    return plans[:limit]
