"""HTTP route templates (ASP.NET style, as the host matches them) with their constraints."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable

from localdev.host.errors import HostError

# One logger name for the whole host, so its console output reads as before the split.
logger = logging.getLogger("localdev.host")

_PARAM = re.compile(r"\{([^{}]+)\}")
_SIMPLE_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "datetime": r"[^/]+",
}


def _split_constraints(text: str) -> list[str]:
    """Split ``name:int:min(1)`` on colons outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _constraint_check(name: str, constraint: str) -> tuple[str | None, Callable[[str], bool]]:
    """Regex fragment and value check for one ASP.NET route constraint."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", constraint)
    if match is None:
        raise HostError(f"Route parameter '{name}': cannot read constraint '{constraint}'")
    kind, argument = match.group(1).lower(), match.group(2)
    if kind in _SIMPLE_CONSTRAINTS and argument is None:
        return _SIMPLE_CONSTRAINTS[kind], lambda _value: True
    numbers = [int(x) for x in argument.split(",")] if argument and kind != "regex" else []
    if kind == "min":
        return r"-?\d+", lambda v: int(v) >= numbers[0]
    if kind == "max":
        return r"-?\d+", lambda v: int(v) <= numbers[0]
    if kind == "range":
        return r"-?\d+", lambda v: numbers[0] <= int(v) <= numbers[1]
    if kind == "minlength":
        return None, lambda v: len(v) >= numbers[0]
    if kind == "maxlength":
        return None, lambda v: len(v) <= numbers[0]
    if kind == "length":
        if len(numbers) == 1:
            return None, lambda v: len(v) == numbers[0]
        return None, lambda v: numbers[0] <= len(v) <= numbers[1]
    if kind == "regex" and argument is not None:
        pattern = re.compile(argument, re.IGNORECASE)
        return None, lambda v: pattern.search(v) is not None
    logger.warning("Route parameter '%s': constraint '%s' is not checked locally", name, constraint)
    return None, lambda _value: True


@dataclasses.dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET-style route template, matched case-insensitively like the host."""

    template: str
    regex: re.Pattern[str]
    checks: tuple[tuple[str, Callable[[str], bool]], ...]
    defaults: tuple[tuple[str, str], ...]
    precedence: tuple[tuple[int, ...], str]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        """Compile ``items/{id:int}/{rest?}``-style templates."""
        cleaned = template.strip().strip("/")
        pattern = ""
        checks: list[tuple[str, Callable[[str], bool]]] = []
        defaults: list[tuple[str, str]] = []
        ranks: list[int] = []
        segments = cleaned.split("/") if cleaned else []
        for index, segment in enumerate(segments):
            whole = _PARAM.fullmatch(segment)
            if whole is None:
                # literal text, possibly with embedded parameters ("file.{ext}")
                piece, last = "", 0
                for param in _PARAM.finditer(segment):
                    piece += re.escape(segment[last : param.start()])
                    name, fragment = cls._parameter(param.group(1), checks)
                    piece += f"(?P<{name}>{fragment or '[^/]+?'})"
                    last = param.end()
                piece += re.escape(segment[last:])
                pattern += "/" + piece
                ranks.append(1 if "{" not in segment else 2)
                continue
            body = whole.group(1)
            catch_all = body.startswith("*")
            optional = body.endswith("?")
            body = body.lstrip("*").rstrip("?")
            default = None
            if "=" in body:
                body, default = body.split("=", 1)
            name, fragment = cls._parameter(body, checks)
            if catch_all:
                if index != len(segments) - 1:
                    raise HostError(f"Route '{template}': a catch-all must be the last segment")
                pattern += f"(?:/(?P<{name}>.*))?"
                ranks.append(5)
            elif optional or default is not None:
                pattern += f"(?:/(?P<{name}>{fragment or '[^/]+'}))?"
                ranks.append(4)
            else:
                pattern += f"/(?P<{name}>{fragment or '[^/]+'})"
                ranks.append(2 if fragment else 3)
            if default is not None:
                defaults.append((name, default))
        return cls(
            template=cleaned,
            regex=re.compile(pattern + "/?", re.IGNORECASE),
            checks=tuple(checks),
            defaults=tuple(defaults),
            precedence=(tuple(ranks), cleaned),
        )

    @staticmethod
    def _parameter(
        body: str, checks: list[tuple[str, Callable[[str], bool]]]
    ) -> tuple[str, str | None]:
        """Parameter name and regex fragment; value checks go into ``checks``."""
        name, *constraints = _split_constraints(body)
        if not name.isidentifier():
            raise HostError(f"Route parameter name '{name}' is not supported by this host")
        fragment: str | None = None
        for constraint in constraints:
            part, check = _constraint_check(name, constraint)
            fragment = part or fragment
            checks.append((name, check))
        return name, fragment

    def match(self, path: str) -> dict[str, str] | None:
        """Route values for ``path`` (relative to the prefix, leading ``/``) or None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        values = {key: value for key, value in found.groupdict().items() if value is not None}
        for key, default in self.defaults:
            values.setdefault(key, default)
        for key, check in self.checks:
            if key in values:
                try:
                    if not check(values[key]):
                        return None
                except ValueError:
                    return None
        return values
