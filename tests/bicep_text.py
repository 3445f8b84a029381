"""Just enough Bicep reading for static checks of infra/*.bicep: no Bicep compiler or Azure
access is available where the tests run, so tests/test_infra.py inspects the template text.

The scanner knows Bicep's lexical rules that matter for finding blocks: single-quoted strings
with \\' escapes and ${...} interpolations (which may hold strings of their own), '''multi-line
strings''', and // and /* */ comments. Everything else is left to the tests' own expectations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN = {"{": "}", "[": "]", "(": ")"}


def _skip_string(text: str, i: int) -> int:
    """Index just past the string starting at text[i] == "'"."""
    if text.startswith("'''", i):
        end = text.find("'''", i + 3)
        if end < 0:
            raise ValueError(f"unterminated multi-line string at {i}")
        return end + 3
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == "'":
            return i + 1
        elif text.startswith("${", i):
            i = _skip_expression(text, i + 2, "}")
        else:
            i += 1
    raise ValueError("unterminated string")


def _skip_expression(text: str, i: int, closer: str) -> int:
    """Index just past `closer`, skipping nested brackets, strings and comments."""
    while i < len(text):
        c = text[i]
        if c == closer:
            return i + 1
        if c == "'":
            i = _skip_string(text, i)
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif c in OPEN:
            i = _skip_expression(text, i + 1, OPEN[c])
        else:
            i += 1
    raise ValueError(f"unbalanced {closer!r}")


def strip_comments(text: str) -> str:
    """The text without comments (strings kept verbatim), so comments cannot satisfy a check."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "'":
            end = _skip_string(text, i)
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def balanced_after(text: str, start: int, opener: str = "{") -> str:
    """The bracketed text (brackets included) that opens at the first `opener` from `start`."""
    i = text.index(opener, start)
    return text[i : _skip_expression(text, i + 1, OPEN[opener])]


@dataclass(frozen=True)
class Resource:
    name: str
    type: str
    api_version: str
    condition: str | None  # the `if (...)` expression, without the parentheses
    loop: str | None  # the `for ... in ...` header of a resource loop
    body: str  # the object, braces included


_RESOURCE = re.compile(
    r"^(?:resource|module)\s+(\w+)\s+'([^'@]+)(?:@([^']+))?'\s*(existing\s*)?=\s*", re.M
)


def resources(text: str) -> dict[str, Resource]:
    """Every resource and module declaration by symbolic name (modules get type = their path)."""
    text = strip_comments(text)
    found: dict[str, Resource] = {}
    for m in _RESOURCE.finditer(text):
        rest = text[m.end() :]
        loop = condition = None
        offset = m.end()
        if rest.startswith("["):
            header = re.match(r"\[\s*for\s+(.+?):\s*", rest, re.S)
            assert header, f"unreadable loop in {m.group(1)}"
            loop = header.group(1).strip()
            offset += header.end()
            rest = text[offset:]
        cond = re.match(r"if\s*\(", rest)
        if cond:
            expr = balanced_after(text, offset + cond.end() - 1, "(")
            condition = expr[1:-1].strip()
            offset += cond.end() - 1 + len(expr)
        found[m.group(1)] = Resource(
            name=m.group(1),
            type=m.group(2),
            api_version=m.group(3) or "",
            condition=condition,
            loop=loop,
            body=balanced_after(text, offset),
        )
    return found


def declarations(text: str, kind: str) -> dict[str, str]:
    """`var` or `param` declarations: name -> the text after the name up to the line's end (a
    value that opens a bracket runs to its closing bracket); for a var, the value after `=`."""
    text = strip_comments(text)
    found: dict[str, str] = {}
    for m in re.finditer(rf"^{kind}\s+(\w+)\s+", text, re.M):
        line_end = text.find("\n", m.end())
        line = text[m.end() : line_end if line_end >= 0 else len(text)]
        opener = next((c for c in line if c in OPEN), None)
        if opener and line.rstrip().endswith(opener):
            value = line[: line.index(opener)] + balanced_after(text, m.end(), opener)
        else:
            value = line
        value = value.strip()
        if kind == "var":
            value = value.removeprefix("=").strip()
        found[m.group(1)] = value
    return found


def decorators(text: str, param: str) -> str:
    """The decorator lines directly above `param <name>`."""
    text = strip_comments(text)
    m = re.search(rf"^param\s+{param}\s", text, re.M)
    assert m, f"no param {param}"
    lines = text[: m.start()].rstrip("\n").split("\n")
    above: list[str] = []
    for line in reversed(lines):
        if not line.startswith("@"):
            break
        above.append(line)
    return "\n".join(reversed(above))


def prop(body: str, name: str) -> str:
    """The value of the first `name:` property in an object body (nested objects included), as
    text: a bracketed value whole, anything else up to the end of its line."""
    value = maybe_prop(body, name)
    assert value is not None, f"no property {name!r}"
    return value


def maybe_prop(body: str, name: str) -> str | None:
    """prop(), or None when the body has no such property."""
    m = re.search(rf"(?<![\w.]){re.escape(name)}\s*:\s*", body)
    if m is None:
        return None
    if body[m.end() : m.end() + 1] in OPEN:
        return balanced_after(body, m.end(), body[m.end()])
    # A scalar (or an expression) ends at the line's end, or at the `,` or closing bracket of an
    # inline object such as { name: x, value: y }.
    i = m.end()
    while i < len(body) and body[i] not in "\n,}])":
        if body[i] == "'":
            i = _skip_string(body, i)
        elif body[i] in OPEN:
            i = _skip_expression(body, i + 1, OPEN[body[i]])
        else:
            i += 1
    return body[m.end() : i].strip()


def items(array_text: str) -> list[str]:
    """The top-level `{...}` elements of an array literal."""
    inner = array_text.strip()
    assert inner.startswith("[") and inner.endswith("]"), array_text
    out: list[str] = []
    i = 1
    while True:
        j = inner.find("{", i)
        if j < 0:
            return out
        block = balanced_after(inner, j)
        out.append(block)
        i = j + len(block)
