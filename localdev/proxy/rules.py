"""What the proxy does to a request instead of (or besides) forwarding it: seeded random
faults, one-shot triggers, standing refusals, and the Azure-style error answers they produce."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from .classify import Flavor, kind_matches

FAULT_LABELS = ("500", "503", "429", "drop_before", "drop_after")

When = Literal["before", "after"]
Then = Literal["drop", "continue"]


@dataclass(frozen=True)
class FaultConfig:
    """Per-request fault probabilities (drawn independently per request from a seeded RNG).

    The rates are exclusive slices of [0, 1), so their sum must not exceed 1. `kinds` limits
    faults to matching request kinds (see `kind_matches`); `flavor` picks storage-style XML or
    ARM-style JSON error bodies (None: follow the proxy's classifier).
    """

    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_429: float = 0.0
    rate_drop_before: float = 0.0
    rate_drop_after: float = 0.0
    retry_after_s: float = 1.0
    kinds: frozenset[str] | None = None
    flavor: Flavor | None = None

    def __post_init__(self) -> None:
        rates = self._rates()
        if any(r < 0 or r > 1 for r in rates):
            raise ValueError(f"fault rates must be within [0, 1]: {rates}")
        if sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates add up to more than 1: {sum(rates)}")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.flavor not in (None, "storage", "arm"):
            raise ValueError(f"unknown fault flavor {self.flavor!r}")
        if self.kinds is not None and not isinstance(self.kinds, frozenset):
            kinds: Any = self.kinds
            object.__setattr__(
                self, "kinds", frozenset([kinds] if isinstance(kinds, str) else kinds)
            )

    def _rates(self) -> tuple[float, ...]:
        return (
            self.rate_500,
            self.rate_503,
            self.rate_429,
            self.rate_drop_before,
            self.rate_drop_after,
        )

    @classmethod
    def spread(cls, rate: float, **fields: Any) -> FaultConfig:
        """Split one total fault rate evenly over all five fault types."""
        each = rate / len(FAULT_LABELS)
        return cls(
            rate_500=each,
            rate_503=each,
            rate_429=each,
            rate_drop_before=each,
            rate_drop_after=each,
            **fields,
        )

    @property
    def active(self) -> bool:
        return sum(self._rates()) > 0

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or any(kind_matches(k, kind) for k in self.kinds)

    def pick(self, draw: float) -> str | None:
        """Map a uniform draw in [0, 1) to a fault label, or None for "forward normally"."""
        edge = 0.0
        for label, rate in zip(FAULT_LABELS, self._rates(), strict=True):
            edge += rate
            if draw < edge:
                return label
        return None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kinds"] = sorted(self.kinds) if self.kinds is not None else None
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultConfig:
        fields = dict(data)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if fields.get("kinds") is not None:
            fields["kinds"] = frozenset(fields["kinds"])
        return cls(**fields)


@dataclass(eq=False)
class Trigger:
    """A one-shot hook on the `nth` request whose kind matches `kind` (counted from creation).

    `when="before"`: the callback runs before the request is forwarded; with `then="drop"` (the
    default) the request is then never forwarded and the connection is closed, so "killed before
    the call reached the server" really means the server never saw it.
    `when="after"`: the callback runs once the upstream has answered (the request was applied);
    with `then="drop"` the response is discarded and the client connection closed ("applied but
    the response was lost"); `then="continue"` relays the response as usual.
    `fired` is set after the callback returned, so tests can wait on it.
    """

    kind: str
    nth: int
    callback: Callable[[], object]
    when: When = "before"
    then: Then = "drop"
    seen: int = 0
    fired: threading.Event = dataclasses.field(default_factory=threading.Event)
    _due: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nth": self.nth,
            "when": self.when,
            "then": self.then,
            "seen": self.seen,
            "fired": self.fired.is_set(),
        }


@dataclass(frozen=True)
class Refusal:
    """A standing refusal: every request of a matching kind whose (URL-decoded) path matches
    `path` (a regular expression searched in it) is answered `status` with storage error `code`
    and never forwarded.

    This is a FAKE of what Azurite cannot do: Azure refuses to delete a blob under an
    immutability policy or legal hold (409 BlobImmutableDueToPolicy), or that the caller's role
    may not delete (403 AuthorizationPermissionMismatch); Azurite has neither. A Blob Batch
    request carrying such a delete is refused whole when a rule names kind ``batch`` (Azure
    refuses the subrequest instead; the client then falls back to single deletes)."""

    kind: str
    path: str = ""
    status: int = 409
    code: str = "BlobImmutableDueToPolicy"
    message: str = "This operation is not permitted as the blob is immutable due to a policy."

    def matches(self, kind: str, path: str) -> bool:
        return kind_matches(self.kind, kind) and re.search(self.path, unquote(path)) is not None


@dataclass
class Plan:
    """What to do with one admitted request; decided atomically under the proxy lock."""

    kind: str
    delay_s: float
    fault: str | None
    faults: FaultConfig
    before: list[Trigger]
    after: list[Trigger]


# --------------------------------------------------------------------------------------------
# Error answers, as Blob Storage and ARM word them
# --------------------------------------------------------------------------------------------

Answer = tuple[int, str, str, list[tuple[str, str]]]
"""A local answer: status, body, content type, extra headers."""

STORAGE_ERRORS = {
    500: (
        "InternalError",
        "Server encountered an internal error. Please try again after some time.",
    ),
    503: (
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
    ),
    429: ("ServerBusy", "Operations per second is over the account limit."),
}
ARM_ERRORS = {
    500: ("InternalServerError", "Encountered internal server error. Please try again."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again."),
    429: ("TooManyRequests", "The request is being throttled. Please retry after some time."),
}


def refusal_answer(refusal: Refusal) -> Answer:
    """The storage error a refused request gets, marked `x-proxy-refusal`."""
    request_id = str(uuid.uuid4())
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
        f"{refusal.code}</Code><Message>{refusal.message}\nRequestId:{request_id}</Message></Error>"
    )
    extra = [
        ("x-ms-request-id", request_id),
        ("x-ms-error-code", refusal.code),
        ("x-ms-version", "2021-12-02"),
        ("x-proxy-refusal", refusal.code),
    ]
    return refusal.status, body, "application/xml", extra


def fault_answer(status: int, faults: FaultConfig, flavor: Flavor) -> Answer:
    """An injected 500/503/429 in the service's own error format, marked `x-proxy-fault`."""
    request_id = str(uuid.uuid4())
    extra = [("x-ms-request-id", request_id), ("x-proxy-fault", str(status))]
    if status == 429:
        extra.append(("Retry-After", f"{faults.retry_after_s:g}"))
    if flavor == "arm":
        code, message = ARM_ERRORS[status]
        body = json.dumps({"error": {"code": code, "message": message}})
        extra += [
            ("x-ms-correlation-request-id", request_id),
            ("x-ms-failure-cause", "service"),
        ]
        return status, body, "application/json; charset=utf-8", extra
    code, message = STORAGE_ERRORS[status]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
        f"{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{stamp}</Message></Error>"
    )
    extra += [("x-ms-error-code", code), ("x-ms-version", "2021-12-02")]
    return status, body, "application/xml", extra
