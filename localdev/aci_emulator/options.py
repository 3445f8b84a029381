"""Runtime options of the emulator: behaviour knobs and fault injection.

One `Options` object is shared by the HTTP threads; it is changed at start (CLI flags) and at run
time (`POST /_emulator/config`). Every read/write goes through `OptionsStore`, which holds the
lock and the seeded random generator, so a given seed and request order reproduce the same faults.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from localdev.aci_emulator.limits import default_group_limits, validate_group_limits

UNKNOWN_IMAGE_MODES = ("reject", "pull-failure")
FAULT_NAMES = ("429", "500", "503", "after-commit", "drop")
INT_OR_NONE = (
    "quota",
    "cores_quota",
    "creates_per_5_minutes",
    "creates_per_hour",
    "deletes_per_5_minutes",
    "deletes_per_hour",
    "seed",
)


@dataclass
class Options:
    """Everything `POST /_emulator/config` may change (field names are the JSON keys).

    The defaults are Azure's (see docs/emulator.md and `limits`): small unit tests may opt out
    explicitly (e.g. `provision_seconds=0`), everything else runs against these."""

    # Regional quotas per (subscription, location); None = unlimited.
    quota: int | None = 100  # `ContainerGroups`
    cores_quota: int | None = 100  # `StandardCores`
    # Create and delete budgets per (subscription, location); None = unlimited.
    creates_per_5_minutes: int | None = 100
    creates_per_hour: int | None = 300
    deletes_per_5_minutes: int | None = 100
    deletes_per_hour: int | None = 300
    group_limits: dict[str, Any] = field(default_factory=default_group_limits)
    # Resource groups that exist (fnmatch globs, any case); others answer 404 ResourceGroupNotFound.
    resource_groups: list[str] = field(default_factory=lambda: ["rg-local"])
    authorization_failed: bool = False  # every ARM request answers 403 AuthorizationFailed
    page_size: int = 50
    provision_seconds: float = 2.0
    provision_timeout_seconds: float = 1800.0  # a pull still failing then: provisioning Failed
    platform_kill_rate: float = 0.0  # chance per second that a running container is killed
    latency_ms: float = 0.0
    fault_429_rate: float = 0.0
    retry_after: float = 1.0
    # Retry-After on in-progress operation polls: None = the time left until provisioning ends
    # (any client polling interval then finishes promptly), 0 = none (as in recorded ACI traffic).
    operation_retry_after: float | None = None
    fault_5xx_rate: float = 0.0
    fault_after_commit_rate: float = 0.0
    fault_drop_rate: float = 0.0
    unknown_image: str = "reject"
    kill_grace_seconds: float = 2.0
    restart_backoff_seconds: float = 1.0
    seed: int | None = None
    fault_queue: list[dict[str, str]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{key} must be a number between 0 and 1")
    return float(value)


def _non_negative(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    return float(value)


def _queue_entry(value: Any) -> dict[str, str]:
    """A queued fault: `"429"` or `{"fault": "429", "method": "PUT", "kind": "container_group"}`
    (the optional filters pick which request consumes it)."""
    entry = {"fault": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
    ):
        raise ValueError("fault_queue entries are fault names or objects of strings")
    if entry.get("fault") not in FAULT_NAMES:
        raise ValueError(f"fault_queue: fault must be one of {', '.join(FAULT_NAMES)}")
    if set(entry) - {"fault", "method", "kind"}:
        raise ValueError("fault_queue entries may only have fault, method and kind")
    if "method" in entry:
        entry["method"] = entry["method"].upper()
    return dict(entry)


def validate_update(update: Any) -> dict[str, Any]:
    """Check a config update (all or nothing) and return it with normalised values."""
    if not isinstance(update, dict):
        raise ValueError("the config update must be a JSON object")
    known = {f.name for f in dataclasses.fields(Options)}
    unknown = set(update) - known
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    for key, value in update.items():
        if key.endswith("_rate"):
            clean[key] = _rate(key, value)
        elif key == "operation_retry_after":
            clean[key] = None if value is None else _non_negative(key, value)
        elif key in INT_OR_NONE:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{key} must be a non-negative integer or null")
            clean[key] = value
        elif key == "group_limits":
            clean[key] = validate_group_limits(value)
        elif key == "resource_groups":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError("resource_groups must be a list of names or globs")
            clean[key] = list(value)
        elif key == "authorization_failed":
            if not isinstance(value, bool):
                raise ValueError("authorization_failed must be true or false")
            clean[key] = value
        elif key == "page_size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("page_size must be a positive integer")
            clean[key] = value
        elif key == "unknown_image":
            if value not in UNKNOWN_IMAGE_MODES:
                raise ValueError(f"unknown_image must be one of {', '.join(UNKNOWN_IMAGE_MODES)}")
            clean[key] = value
        elif key == "fault_queue":
            if not isinstance(value, list):
                raise ValueError("fault_queue must be a list")
            clean[key] = [_queue_entry(v) for v in value]
        else:
            clean[key] = _non_negative(key, value)
    return clean


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one ARM request, decided before it is handled."""

    latency: float = 0.0
    before: str | None = None  # "429" | "500" | "503": answer without touching state
    after_commit: bool = False  # handle it, then answer 500 (mutations only)
    drop: bool = False  # handle it, then close the connection without an answer


class OptionsStore:
    """Thread-safe holder of `Options` and the seeded random generator."""

    def __init__(self, options: Options) -> None:
        self._lock = threading.Lock()
        self._options = copy.deepcopy(options)
        self._random = random.Random(options.seed)

    def snapshot(self) -> Options:
        with self._lock:
            return copy.deepcopy(self._options)

    def update(self, update: Any) -> Options:
        clean = validate_update(update)
        with self._lock:
            for key, value in clean.items():
                setattr(self._options, key, value)
            if "seed" in clean:
                self._random = random.Random(clean["seed"])
        return self.snapshot()

    def plan(self, method: str, kind: str, mutating: bool) -> FaultPlan:
        """Draw the faults for one request: a matching queued fault first, else the rates.
        Four numbers are drawn per request whatever the rates, so a seed gives one sequence."""
        with self._lock:
            o = self._options
            draws = [self._random.random() for _ in range(4)]
            queued = None
            for i, entry in enumerate(o.fault_queue):
                if entry.get("method", method) == method and entry.get("kind", kind) == kind:
                    queued = o.fault_queue.pop(i)["fault"]
                    break
            latency = o.latency_ms / 1000.0
            if queued in ("429", "500", "503"):
                return FaultPlan(latency=latency, before=queued)
            if queued == "after-commit":
                return FaultPlan(latency=latency, after_commit=True)
            if queued == "drop":
                return FaultPlan(latency=latency, drop=True)
            if draws[0] < o.fault_429_rate:
                return FaultPlan(latency=latency, before="429")
            if draws[1] < o.fault_5xx_rate:
                return FaultPlan(latency=latency, before="500" if draws[2] < 0.5 else "503")
            after = mutating and draws[3] < o.fault_after_commit_rate
            drop = not after and draws[2] < o.fault_drop_rate
            return FaultPlan(latency=latency, after_commit=after, drop=drop)
