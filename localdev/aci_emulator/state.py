"""The emulator's in-memory records: groups, container runs, events, operations, responses.

Plain data (plus how each renders itself as ARM JSON) so `store.Store` can stay about behaviour.
Log reading lives here too: what ACI returns of a log depends only on the run's state.
"""

from __future__ import annotations

import base64
import binascii
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localdev.aci_emulator.model import (
    RESOURCE_TYPE,
    ArmError,
    ContainerSpec,
    GroupSpec,
    bad_request,
    group_id,
    iso,
)
from localdev.aci_emulator.vocabulary import EVENT_NAMES, EVENT_TYPES

PROVISIONING = ("Pending", "Creating")
MAX_OPERATIONS = 20_000
# "Resource availability & quota limits for ACI" (hard limits): "Container instance log size -
# running instance: 4 MB; stopped instance: 16 KB or 1,000 lines".
LOG_LIMIT_BYTES = 4 * 1024 * 1024
STOPPED_LOG_LIMIT_BYTES = 16 * 1024
STOPPED_LOG_LIMIT_LINES = 1000
PLATFORM_EXIT_CODES = (7147, 7148)
TICK_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 60.0

Key = tuple[str, str, str]


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Event:
    name: str
    message: str
    type: str
    first: float
    last: float
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "firstTimestamp": iso(self.first, millis=False),
            "lastTimestamp": iso(self.last, millis=False),
            "name": self.name,
            "message": self.message,
            "type": self.type,
        }


def add_event(
    events: list[Event], now: float, name: str, message: str, type_: str = "Normal"
) -> None:
    """Record an event the way Kubernetes-style event lists do: repeats bump `count`. Only
    names and types ACI documents (see `vocabulary`) may be emitted."""
    if name not in EVENT_NAMES or type_ not in EVENT_TYPES:
        raise ValueError(f"undocumented ACI event {name!r} ({type_!r})")
    for event in events:
        if event.name == name and event.message == message:
            event.count += 1
            event.last = now
            return
    events.append(Event(name=name, message=message, type=type_, first=now, last=now))


@dataclass
class ContainerRun:
    """One container of one generation of a group, and its process."""

    spec: ContainerSpec
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    pull_fails: bool = False
    state: str | None = None  # None (not created yet) | Waiting | Running | Terminated
    detail: str = ""
    start: float | None = None
    finish: float | None = None
    exit_code: int | None = None
    previous: dict[str, Any] | None = None
    restart_count: int = 0
    restart_at: float | None = None
    platform_exit: int | None = None  # set when the platform kills it: the exit code to report
    backoff: float = 0.0
    started_once: bool = False
    events: list[Event] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def current_state(self) -> dict[str, Any] | None:
        if self.state == "Running" and self.start is not None:
            return {"state": "Running", "startTime": iso(self.start), "detailStatus": ""}
        if self.state == "Terminated" and self.start is not None and self.finish is not None:
            return {
                "state": "Terminated",
                "startTime": iso(self.start),
                "exitCode": self.exit_code,
                "finishTime": iso(self.finish),
                "detailStatus": self.detail,
            }
        if self.state == "Waiting":
            return {"state": "Waiting", "detailStatus": self.detail}
        return None

    def view(self) -> dict[str, Any] | None:
        current = self.current_state()
        if current is None and not self.events:
            return None
        out: dict[str, Any] = {"restartCount": self.restart_count}
        if current is not None:
            out["currentState"] = current
        if self.previous is not None:
            out["previousState"] = self.previous
        out["events"] = [e.to_json() for e in self.events]
        return out


@dataclass
class Group:
    uid: str
    sub: str
    rg: str
    name: str
    spec: GroupSpec
    identity: dict[str, Any] | None
    generation: int = 0
    provisioning_state: str = "Pending"
    accepted: float = 0.0
    creating_at: float = 0.0
    ready_at: float = 0.0
    deployment: int = 1  # a terminated group deployed as new starts a new deployment (and log)
    pull_failure: str | None = None
    timeout_at: float = 0.0  # provisioning still not done then (a failing pull): Failed
    next_pull: float | None = None  # when a failing pull is retried
    pull_backoff: float = 0.0
    containers: list[ContainerRun] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    stopped: bool = False
    pending_kills: int = 0
    # Reloaded from the state file, which never holds secrets (see `persist`): it cannot run
    # its old spec again until a PUT brings the secure values back.
    secrets_lost: bool = False

    @property
    def id(self) -> str:
        return group_id(self.sub, self.rg, self.name)

    @property
    def label(self) -> str:
        """Short name for log lines."""
        return f"{self.rg}/{self.name}"

    @property
    def key(self) -> Key:
        return (self.sub.lower(), self.rg.lower(), self.name.lower())

    @property
    def provisioning(self) -> bool:
        return self.provisioning_state in PROVISIONING

    def running(self) -> list[tuple[ContainerRun, subprocess.Popen[bytes]]]:
        return [(c, c.proc) for c in self.containers if c.proc is not None]


@dataclass
class Operation:
    id: str
    sub: str
    key: Key
    uid: str
    generation: int
    resource_id: str
    started: float


def not_found(rg: str, name: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{RESOURCE_TYPE}/{name}' under resource group '{rg}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def transitioning(name: str) -> ArmError:
    return ArmError(
        409,
        "ContainerGroupTransitioning",
        f"The container group '{name}' is still transitioning, please retry later.",
    )


def encode_token(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        rg, name = raw
        return (str(rg), str(name))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise bad_request("InvalidSkipToken", f"The skip token '{token}' is invalid.") from exc


def read_log(path: Path, tail: int | None, running: bool) -> str:
    """What ACI keeps of a log: the last 4 MB while the container runs, the last 16 KB and at
    most 1,000 lines once it has stopped; then the last `tail` lines of that."""
    limit = LOG_LIMIT_BYTES if running else STOPPED_LOG_LIMIT_BYTES
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = text.splitlines(keepends=True)
    if not running:
        lines = lines[-STOPPED_LOG_LIMIT_LINES:]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return "".join(lines)
