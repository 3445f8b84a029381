"""Dropping files and deciding, from storage and ARM, where each one ended."""

from __future__ import annotations

import hashlib
import json
import posixpath
import random
import re
import string
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from .core import HASH_LIMIT, MIB
from .report import Row
from .stack import Arena, Dropped, Stack


def content_for(name: str, rng: random.Random) -> bytes:
    """Unique, recognisable content: the hash then identifies this version of this file."""
    token = "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))
    return f"{name}\n{token}\n".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(arena: Arena, name: str, data: bytes, expect: frozenset[str] | None = None) -> None:
    arena.dropped[name] = Dropped(name, sha(data), len(data), expect=expect or frozenset({"batch"}))


def drop_files(arena: Arena, names: Sequence[str], rng: random.Random, workers: int = 16) -> None:
    """Upload `names` (full blob names) with unique content and remember each as dropped."""
    items = [(n, content_for(n, rng)) for n in names]

    def upload(item: tuple[str, bytes]) -> None:
        arena.container.upload_blob(item[0], item[1], overwrite=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(upload, items))
    for name, data in items:
        record(arena, name, data)


@dataclass
class Verdict:
    """Where every dropped file ended, from storage and ARM."""

    dropped: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # in incoming/ or processing/ at the end
    double_launched: list[str] = field(default_factory=list)
    finished: int = 0
    unfinished: list[str] = field(default_factory=list)  # processing/ leftovers, groups left
    unsafe_paths: list[str] = field(default_factory=list)
    creates: int = 0
    unrecorded_groups: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # dropped name -> outcome text
    # Batch folders without a readable manifest (the app quarantines them) and the dropped
    # files found in them by content: kept, not lost, but not finished either.
    quarantined: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    # Files in a failed batch that `cleanup retry` restored AND in the batch that ran them again
    # (the retry's copy landed, its delete of the failed copy did not): intended, not duplicated.
    retried_twice: list[str] = field(default_factory=list)
    batches: dict[str, list[str]] = field(default_factory=dict)  # dropped key -> finished batches
    # Completion notifications (arenas with a queue): distinct message ids received, repeats
    # (the same id again: at-least-once, dropped by receivers), finished batches with no
    # message, and messages that are wrong (no such finished batch, a field that disagrees with
    # the final manifest, or two different bodies under one id: not deduplicable).
    notified: int = 0
    notify_repeats: int = 0
    notify_missing: list[str] = field(default_factory=list)
    notify_wrong: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.stuck
            or self.double_launched
            or self.notify_missing
            or self.notify_wrong
            or self.unfinished
            or self.unsafe_paths
            or self.quarantined
        )

    def summary(self) -> str:
        parts = [
            f"{self.dropped} dropped",
            f"{len(self.lost)} lost",
            f"{len(self.duplicated)} duplicated",
            f"{len(self.double_launched)} double-launched",
            f"{self.finished} batches finished",
        ]
        if self.notified or self.notify_repeats:
            parts.append(f"{self.notified} notified ({self.notify_repeats} repeats)")
        for label, items in (
            ("stuck", self.stuck),
            ("unfinished", self.unfinished),
            ("unsafe paths", self.unsafe_paths),
            ("groups not recorded in any manifest", self.unrecorded_groups),
            ("quarantined batch folders", self.quarantined),
            ("files kept in quarantined batches", self.kept),
            ("files in a retried batch and its rerun", self.retried_twice),
            ("finished batches without a notification", self.notify_missing),
            ("wrong notifications", self.notify_wrong),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        return ", ".join(parts)

    def problems(self, limit: int = 5) -> list[str]:
        out = []
        for label, items in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("stuck", self.stuck),
            ("double-launched", self.double_launched),
            ("unfinished", self.unfinished),
            ("unsafe path", self.unsafe_paths),
            ("quarantined", self.quarantined),
            ("not notified", self.notify_missing),
            ("wrong notification", self.notify_wrong),
        ):
            for item in items[:limit]:
                out.append(f"{label}: {item!r}")
        return out


class Checker:
    """The one place that decides lost / duplicated / double-launched (see module docstring)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def _matches(self, container: ContainerClient, blob: str, d: Dropped, size: int) -> bool:
        if size != d.size:
            return False
        client = container.get_blob_client(blob)
        if d.md5 is not None:
            return bytes(client.get_blob_properties().content_settings.content_md5 or b"") == d.md5
        if d.size <= HASH_LIMIT:
            return sha(client.download_blob().readall()) == d.sha256
        first = client.download_blob(offset=0, length=MIB).readall()
        last = client.download_blob(offset=d.size - MIB, length=MIB).readall()
        return (sha(first), sha(last)) == d.samples

    def _quarantined_files(
        self, arena: Arena, folder: str, sizes: dict[str, int]
    ) -> dict[str, str]:
        """Dropped keys found, by content, among the blobs of a folder without a readable
        manifest: dropped key -> blob name."""
        by_sha = {d.sha256: key for key, d in arena.dropped.items() if d.size <= HASH_LIMIT}
        found: dict[str, str] = {}
        for name, size in sizes.items():
            if not name.startswith(folder) or size > HASH_LIMIT:
                continue
            key = by_sha.get(sha(arena.container.download_blob(name).readall()))
            if key is not None:
                found[key] = name
        return found

    def check(self, arena: Arena, expect_groups_gone: bool = True) -> Verdict:
        container = arena.container
        v = Verdict(dropped=len(arena.dropped))
        sizes = {blob.name: int(blob.size) for blob in container.list_blobs()}
        incoming = {n for n in sizes if n.startswith("incoming/")}
        processing = sorted(n for n in sizes if n.startswith("processing/"))
        if processing:
            v.unfinished += [f"left in processing/: {n}" for n in processing[:10]]
        # Every batch folder, with its manifest if it has a readable one.
        folders = sorted(
            {
                found.group(1)
                for n in sizes
                if (found := re.match(r"((?:processing|done|failed)/[^/]+/)", n))
            }
        )
        # Finished batches and the inputs their manifests list; for each entry, whether it is
        # in a failed batch that `cleanup retry` says it restored.
        located: dict[str, list[tuple[str, str, bool]]] = {}
        finals: dict[str, dict[str, Any]] = {}  # notification id -> final manifest
        recorded_groups: set[str] = set()
        in_flight: dict[str, list[tuple[str, str]]] = {}
        kept: dict[str, str] = {}
        for folder in folders:
            prefix, batch = folder.split("/")[0] + "/", folder.split("/")[1]
            manifest = read_manifest(container, folder + "_batch.json", sizes)
            if manifest is None:
                v.quarantined.append(folder)
                kept.update(self._quarantined_files(arena, folder, sizes))
                continue
            if prefix == "processing/":
                for entry in manifest["files"]:
                    path = folder + entry["blob"]
                    in_flight.setdefault(entry["source"], []).append((batch, path))
                recorded_groups.update(a.get("group") or "" for a in manifest.get("attempts", []))
                continue
            v.finished += 1
            state = manifest.get("state")
            finals[f"{batch}:{state}"] = manifest
            if (prefix, state) not in (("done/", "succeeded"), ("failed/", "failed")):
                v.unfinished.append(f"{folder}_batch.json has state {state!r}")
            recorded_groups.update(a.get("group") or "" for a in manifest.get("attempts", []))
            restored = set((manifest.get("retried") or {}).get("restored") or [])
            for entry in manifest["files"]:
                path = folder + entry["blob"]
                normal = posixpath.normpath(path)
                if not normal.startswith(folder) or normal != path or len(path) > 1024:
                    v.unsafe_paths.append(path)
                retried = prefix == "failed/" and entry["source"] in restored
                located.setdefault(entry["source"], []).append((batch, path, retried))
        for key, d in arena.dropped.items():
            found_in = [
                (batch, retried)
                for batch, path, retried in located.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            hits = [batch for batch, _ in found_in]
            v.batches[key] = hits
            here = d.name in incoming and self._matches(container, d.name, d, sizes[d.name])
            active = [
                batch
                for batch, path in in_flight.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            places = len(hits) + int(here) + len(active) + int(key in kept)
            rerun = [b for b, retried in found_in if not retried]
            if places == 2 and len(hits) == 2 and len(rerun) == 1:
                # Left in the failed batch it was restored from, and run again: as intended.
                v.retried_twice.append(key)
                v.where[key] = f"retried: in failed batch {hits} and in {rerun[0]}"
            elif places > 1:
                v.duplicated.append(key)
                v.where[key] = (
                    f"DUPLICATED: batches {hits + active}, in incoming: {here}, "
                    f"kept in a quarantined batch: {kept.get(key)}"
                )
            elif hits:
                stored = next(p for b, p, _ in located[d.name] if b == hits[0])
                v.where[key] = f"claimed: {stored}"
                if "batch" not in d.expect:
                    v.where[key] += " (claimed although expected to stay)"
            elif active:
                v.stuck.append(key)
                v.where[key] = f"STUCK in unfinished batch {active[0]}"
            elif key in kept:
                v.kept.append(key)
                v.where[key] = f"kept in a quarantined batch: {kept[key]}"
            elif here:
                v.where[key] = "left in incoming/"
                if "incoming" not in d.expect:
                    v.stuck.append(key)
            elif "gone" in d.expect:
                v.where[key] = "gone (removed or replaced by its user mid-claim)"
            else:
                v.lost.append(key)
                v.where[key] = "LOST"
        creates, redeploys = self.stack.group_events(arena.rg)
        v.creates = sum(creates.values())
        for name, count in sorted(creates.items()):
            if count > 1:
                v.double_launched.append(f"{name} created {count} times")
        for name, count in sorted(redeploys.items()):
            v.double_launched.append(f"{name} redeployed {count} time(s)")
        v.unrecorded_groups = sorted(n for n in creates if n not in recorded_groups)
        if expect_groups_gone:
            left = [str(g.name) for g in self.stack.groups(arena.rg)]
            v.unfinished += [f"group still exists: {n}" for n in left]
        if arena.queue is not None:
            check_notifications(arena.queue, finals, v)
        return v


def check_notifications(queue: QueueClient, finals: dict[str, dict[str, Any]], v: Verdict) -> None:
    """Every finished batch has its message (id `<batch>:<state>`), every message belongs to a
    finished batch and agrees with its final manifest, and repeats of an id are byte-identical,
    so a receiver that drops repeats by id sees each batch exactly once."""
    bodies: dict[str, set[str]] = {}
    readable = 0
    # Received messages stay invisible for the visibility timeout, so the loop ends.
    for msg in queue.receive_messages(messages_per_page=32, visibility_timeout=3600):
        text = str(msg.content)
        try:
            doc = json.loads(text)
            key = str(doc["id"])
        except (ValueError, KeyError, TypeError):
            v.notify_wrong.append(f"unreadable message {text[:80]!r}")
            continue
        readable += 1
        bodies.setdefault(key, set()).add(text)
    v.notified = len(bodies)
    v.notify_repeats = readable - len(bodies)
    for key in sorted(finals.keys() - bodies.keys()):
        v.notify_missing.append(f"no message for finished batch {key}")
    for key, texts in sorted(bodies.items()):
        if len(texts) > 1:
            v.notify_wrong.append(f"{key}: {len(texts)} different bodies under one id")
        manifest = finals.get(key)
        if manifest is None:
            v.notify_wrong.append(f"{key}: no finished batch with this id and state")
            continue
        doc = json.loads(next(iter(texts)))
        expected = {
            "batch": manifest["batch_id"],
            "state": manifest["state"],
            "files": len(manifest["files"]),
            "attempts": manifest.get("attempt"),
        }
        got = {k: doc.get(k) for k in expected}
        if got != expected:
            v.notify_wrong.append(f"{key}: message says {got}, final manifest {expected}")


def read_manifest(
    container: ContainerClient, name: str, sizes: dict[str, int]
) -> dict[str, Any] | None:
    """A manifest's JSON if it is there and has the fields this check reads, else None (the
    app quarantines such a batch too: it cannot tell which files are whose)."""
    if name not in sizes:
        return None
    try:
        raw = json.loads(container.download_blob(name).readall())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or not all(
        k in raw for k in ("batch_id", "state", "created", "updated")
    ):
        return None
    files = raw.get("files") or []
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("source"), str) and isinstance(f.get("blob"), str)
        for f in files
    ):
        return None
    raw["files"] = files
    return raw


def add_verdict(row: Row, v: Verdict, label: str) -> None:
    row.dropped += v.dropped
    row.lost += len(v.lost)
    row.duplicated += len(v.duplicated)
    row.double_launched += len(v.double_launched)
    row.finished += v.finished
    if v.notified or v.notify_repeats:
        row.figures["notified"] = row.figures.get("notified", 0) + v.notified
        row.figures["notify_repeats"] = row.figures.get("notify_repeats", 0) + v.notify_repeats
    row.figures["group_creates"] = row.figures.get("group_creates", 0) + v.creates
    if v.unrecorded_groups:
        # A group ran that no finished batch records: its run is not accounted for.
        row.failures += [
            f"{label}: group {g} is recorded in no manifest" for g in v.unrecorded_groups
        ]
    if v.stuck or v.unfinished or v.unsafe_paths or v.quarantined:
        row.unfinished += 1
    row.failures += [f"{label}: {p}" for p in v.problems()]
