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

from azure.storage.blob import ContainerClient

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

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.stuck
            or self.double_launched
            or self.unfinished
            or self.unsafe_paths
        )

    def summary(self) -> str:
        parts = [
            f"{self.dropped} dropped",
            f"{len(self.lost)} lost",
            f"{len(self.duplicated)} duplicated",
            f"{len(self.double_launched)} double-launched",
            f"{self.finished} batches finished",
        ]
        for label, items in (
            ("stuck", self.stuck),
            ("unfinished", self.unfinished),
            ("unsafe paths", self.unsafe_paths),
            ("groups not recorded in any manifest", self.unrecorded_groups),
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

    def check(self, arena: Arena, expect_groups_gone: bool = True) -> Verdict:
        container = arena.container
        v = Verdict(dropped=len(arena.dropped))
        sizes = {blob.name: int(blob.size) for blob in container.list_blobs()}
        incoming = {n for n in sizes if n.startswith("incoming/")}
        processing = sorted(n for n in sizes if n.startswith("processing/"))
        if processing:
            v.unfinished += [f"left in processing/: {n}" for n in processing[:10]]
        # Finished batches and the inputs their manifests list.
        located: dict[str, list[tuple[str, str]]] = {}
        recorded_groups: set[str] = set()
        in_flight: dict[str, list[tuple[str, str]]] = {}
        for name in sizes:
            found = re.fullmatch(r"processing/([^/]+)/_batch\.json", name)
            if found:
                manifest = json.loads(container.download_blob(name).readall())
                for entry in manifest.get("files", []):
                    path = f"processing/{found.group(1)}/{entry['blob']}"
                    in_flight.setdefault(entry["source"], []).append((found.group(1), path))
            found = re.fullmatch(r"(done/|failed/)([^/]+)/_batch\.json", name)
            if not found:
                continue
            prefix, batch = found.group(1), found.group(2)
            manifest = json.loads(container.download_blob(name).readall())
            v.finished += 1
            state = manifest.get("state")
            if (prefix, state) not in (("done/", "succeeded"), ("failed/", "failed")):
                v.unfinished.append(f"{name} has state {state!r}")
            recorded_groups.update(a.get("group") or "" for a in manifest.get("attempts", []))
            folder = f"{prefix}{batch}/"
            for entry in manifest.get("files", []):
                path = folder + entry["blob"]
                normal = posixpath.normpath(path)
                if not normal.startswith(folder) or normal != path or len(path) > 1024:
                    v.unsafe_paths.append(path)
                located.setdefault(entry["source"], []).append((batch, path))
        for key, d in arena.dropped.items():
            hits = [
                batch
                for batch, path in located.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            here = d.name in incoming and self._matches(container, d.name, d, sizes[d.name])
            active = [
                batch
                for batch, path in in_flight.get(d.name, [])
                if path in sizes and self._matches(container, path, d, sizes[path])
            ]
            if len(hits) + int(here) + len(active) > 1:
                v.duplicated.append(key)
                v.where[key] = f"DUPLICATED: batches {hits + active}, in incoming: {here}"
            elif hits:
                stored = next(p for b, p in located[d.name] if b == hits[0])
                v.where[key] = f"claimed: {stored}"
                if "batch" not in d.expect:
                    v.where[key] += " (claimed although expected to stay)"
            elif active:
                v.stuck.append(key)
                v.where[key] = f"STUCK in unfinished batch {active[0]}"
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
        return v


def add_verdict(row: Row, v: Verdict, label: str) -> None:
    row.dropped += v.dropped
    row.lost += len(v.lost)
    row.duplicated += len(v.duplicated)
    row.double_launched += len(v.double_launched)
    row.finished += v.finished
    row.figures["group_creates"] = row.figures.get("group_creates", 0) + v.creates
    if v.unrecorded_groups:
        # A group ran that no finished batch records: its run is not accounted for.
        row.failures += [
            f"{label}: group {g} is recorded in no manifest" for g in v.unrecorded_groups
        ]
    if v.stuck or v.unfinished or v.unsafe_paths:
        row.unfinished += 1
    row.failures += [f"{label}: {p}" for p in v.problems()]
