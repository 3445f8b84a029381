"""Reading raw setting values: typed numbers, booleans, choices, prefixes, NCRONTAB schedules,
environment-variable groups and commands, each problem collected instead of raised, so that
config.py can name every bad setting in one ConfigError. No setting's meaning lives here."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _parse_connection_string(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(";"):
        if "=" in part:
            key, _, val = part.partition("=")
            out[key.strip().lower()] = val.strip()
    return out


class _Reader:
    """Reads typed values from an environment mapping, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str, *aliases: str) -> str | None:
        for key in (name, *aliases):
            value = self.env.get(key)
            if value is not None and value.strip() != "":
                return value.strip()
        return None

    def text(self, name: str, default: str | None = None, *aliases: str) -> str | None:
        value = self.raw(name, *aliases)
        return default if value is None else value

    def required(self, name: str, what: str, *aliases: str) -> str:
        value = self.raw(name, *aliases)
        if value is None:
            alias_note = f" (or {', '.join(aliases)})" if aliases else ""
            self.problems.append(f"{name}{alias_note} is required: {what}")
            return ""
        return value

    def number(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        low: float | None = None,
        high: float | None = None,
    ) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = parse(value)
            if isinstance(parsed, float) and not math.isfinite(parsed):
                raise ValueError(value)  # float() accepts nan, which passes every bound check
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            self.problems.append(f"{name}={value!r} is not {kind}")
            return default
        if (low is not None and parsed < low) or (high is not None and parsed > high):  # type: ignore[operator]
            bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            self.problems.append(f"{name}={value!r} must be {bounds}")
            return default
        return parsed

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} must be true or false")
        return default

    def int_set(self, name: str) -> frozenset[int]:
        value = self.raw(name)
        if value is None:
            return frozenset()
        try:
            codes = frozenset(int(part) for part in value.replace(" ", "").split(",") if part)
        except ValueError:
            self.problems.append(f"{name}={value!r} must be comma-separated integers, e.g. 1,2")
            return frozenset()
        if 0 in codes:
            self.problems.append(f"{name}: exit code 0 means success and cannot be listed")
        return codes

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self.problems.append(f"{name}={value!r} must be one of: {', '.join(choices)}")
            return default
        return value.lower()

    def prefix(self, name: str, default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        value = value.lstrip("/")
        if not value.endswith("/"):
            value += "/"
        if (
            value == "/"
            or "//" in value
            or any(seg in (".", "..") for seg in value.split("/")[:-1])
        ):
            self.problems.append(
                f"{name}={self.raw(name)!r} must be a folder name like 'incoming/'"
            )
            return default
        return value

    def schedule(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        problem = ncrontab_problem(value)
        if problem:
            self.problems.append(f"{name}={value!r} is not a valid NCRONTAB expression: {problem}")
        return value

    def env_group(self, prefix: str) -> tuple[tuple[str, str], ...]:
        items = []
        for key in sorted(self.env):
            if key.startswith(prefix) and len(key) > len(prefix):
                var = key[len(prefix) :]
                if not _ENV_NAME_RE.match(var):
                    self.problems.append(f"{key}: {var!r} is not a valid environment variable name")
                    continue
                items.append((var, self.env[key]))
        return tuple(items)


# NCRONTAB: {second} {minute} {hour} {day} {month} {day-of-week}, as the Functions host reads it.
_NCRONTAB_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    ),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)


def ncrontab_problem(expr: str) -> str | None:
    """Return why `expr` is not a six-field NCRONTAB expression, or None when it is valid."""
    fields = expr.split()
    if len(fields) != 6:
        return f"expected 6 fields (seconds first), got {len(fields)}"
    for text, (fname, low, high, names) in zip(fields, _NCRONTAB_FIELDS, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return f"{fname} field {text!r}: bad step {step!r}"
            if base == "*":
                continue
            ends = base.split("-")
            if len(ends) > 2 or "" in ends:
                return f"{fname} field {text!r}: cannot parse {part!r}"
            values = []
            for end in ends:
                token = end.lower()
                if token in names:
                    values.append(names[token])
                elif token.isdigit():
                    values.append(int(token))
                else:
                    return f"{fname} field {text!r}: {end!r} is not a number"
            if any(v < low or v > high for v in values):
                return f"{fname} field {text!r}: values must be within {low}-{high}"
            if len(values) == 2 and values[0] > values[1]:
                return f"{fname} field {text!r}: range {part!r} runs backwards"
    return None


def _parse_command(value: str) -> tuple[str, ...]:
    """ACI_COMMAND is a JSON array of strings, or a shell-style string split like a shell would."""
    if value.startswith("["):
        parsed: Any = json.loads(value)
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ValueError("must be a JSON array of strings")
        return tuple(parsed)
    return tuple(shlex.split(value))
