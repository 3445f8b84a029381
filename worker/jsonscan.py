"""Incremental JSON syntax validator with bounded memory.

`json.loads` needs the whole document in memory (and several times its size once parsed), so a
1 GiB `.json` input would exhaust a small container. This validator checks RFC 8259 syntax from
text chunks of any size while keeping only a nesting stack and a few pending characters. It is
stricter than `json.loads` in one way: NaN/Infinity literals are rejected, as the RFC requires.
"""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')
_ESCAPE = re.compile(r'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CHARS = re.compile(r"[-+0-9.eE]*")
_WORD = re.compile(r"[A-Za-z]*")
_LITERALS = {"true": "boolean", "false": "boolean", "null": "null"}
# A single number or literal longer than this is not data anybody means; refuse to buffer it.
_MAX_TOKEN = 1 << 20

# What the next significant character may be.
_VALUE, _VALUE_OR_END, _KEY, _KEY_OR_END, _COLON, _COMMA_OR_END, _DONE = range(7)


class JsonSyntaxError(ValueError):
    """Invalid JSON, with a 1-based line and column like `json.JSONDecodeError`."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} at line {line} column {column}")
        self.reason = message
        self.line = line
        self.column = column


class JsonValidator:
    """Feed text with `feed()`, then call `close()`; both raise `JsonSyntaxError`."""

    def __init__(self) -> None:
        self._stack: list[bool] = []  # True for an object, False for an array
        self._expect = _VALUE
        self._in_string = False
        self._string_is_key = False
        self._pending = ""
        self._lines = 0  # newlines before the pending text
        self._column = 0  # characters since the last newline before the pending text
        self.top_level: str | None = None

    def feed(self, text: str) -> None:
        self._run(self._pending + text if self._pending else text, final=False)

    def close(self) -> None:
        text, self._pending = self._pending, ""
        self._run(text, final=True)
        if self._in_string:
            raise self._error("unterminated string", text, len(text))
        if self._expect != _DONE:
            reason = "empty document" if self.top_level is None else "unexpected end of data"
            raise self._error(reason, text, len(text))

    def _error(self, reason: str, text: str, pos: int) -> JsonSyntaxError:
        line = self._lines + text.count("\n", 0, pos) + 1
        last_newline = text.rfind("\n", 0, pos)
        column = pos - last_newline if last_newline >= 0 else self._column + pos + 1
        return JsonSyntaxError(reason, line, column)

    def _start_value(self, kind: str) -> None:
        if not self._stack and self.top_level is None:
            self.top_level = kind

    def _value_done(self) -> None:
        self._expect = _COMMA_OR_END if self._stack else _DONE

    def _run(self, text: str, final: bool) -> None:
        pos = self._scan(text, final)
        if len(text) - pos > _MAX_TOKEN:
            raise self._error("token too long", text, pos)
        self._lines += text.count("\n", 0, pos)
        last_newline = text.rfind("\n", 0, pos)
        self._column = pos - last_newline - 1 if last_newline >= 0 else self._column + pos
        self._pending = text[pos:]

    def _scan(self, text: str, final: bool) -> int:
        """Consume `text` as far as it can be judged; return where the undecided tail starts."""
        pos, end = 0, len(text)
        while pos < end:
            if self._in_string:
                pos = _STRING_RUN.match(text, pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    return pos
                ch = text[pos]
                if ch == '"':
                    self._in_string = False
                    pos += 1
                    if self._string_is_key:
                        self._expect = _COLON
                    else:
                        self._value_done()
                    continue
                if ch == "\\":
                    match = _ESCAPE.match(text, pos)
                    if match:
                        pos = match.end()
                        continue
                    needed = 6 if text.startswith("u", pos + 1) else 2
                    if not final and end - pos < needed:
                        return pos
                    raise self._error("invalid escape sequence in string", text, pos)
                raise self._error("unescaped control character in string", text, pos)

            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= end:
                return pos
            ch = text[pos]
            expect = self._expect
            if expect == _DONE:
                raise self._error("extra data after the JSON value", text, pos)
            if ch == '"':
                if expect in (_KEY, _KEY_OR_END):
                    self._string_is_key = True
                elif expect in (_VALUE, _VALUE_OR_END):
                    self._string_is_key = False
                    self._start_value("string")
                else:
                    raise self._error(self._expected(), text, pos)
                self._in_string = True
                pos += 1
            elif ch in "{[":
                if expect not in (_VALUE, _VALUE_OR_END):
                    raise self._error(self._expected(), text, pos)
                is_object = ch == "{"
                self._start_value("object" if is_object else "array")
                self._stack.append(is_object)
                self._expect = _KEY_OR_END if is_object else _VALUE_OR_END
                pos += 1
            elif ch in "}]":
                is_object = ch == "}"
                empty_ok = _KEY_OR_END if is_object else _VALUE_OR_END
                if not (
                    self._stack
                    and self._stack[-1] is is_object
                    and expect in (empty_ok, _COMMA_OR_END)
                ):
                    raise self._error(self._expected(), text, pos)
                self._stack.pop()
                self._value_done()
                pos += 1
            elif ch == ",":
                if expect != _COMMA_OR_END:
                    raise self._error(self._expected(), text, pos)
                self._expect = _KEY if self._stack[-1] else _VALUE
                pos += 1
            elif ch == ":":
                if expect != _COLON:
                    raise self._error(self._expected(), text, pos)
                self._expect = _VALUE
                pos += 1
            elif expect not in (_VALUE, _VALUE_OR_END):
                raise self._error(self._expected(), text, pos)
            elif ch in "-0123456789":
                stop = _NUMBER_CHARS.match(text, pos).end()  # type: ignore[union-attr]
                if stop >= end and not final:
                    return pos
                if not _NUMBER.fullmatch(text, pos, stop):
                    raise self._error("invalid number", text, pos)
                self._start_value("number")
                self._value_done()
                pos = stop
            elif ch.isalpha():
                stop = _WORD.match(text, pos).end()  # type: ignore[union-attr]
                if stop >= end and not final:
                    return pos
                kind = _LITERALS.get(text[pos:stop])
                if kind is None:
                    raise self._error("invalid literal", text, pos)
                self._start_value(kind)
                self._value_done()
                pos = stop
            else:
                raise self._error(f"unexpected character {ch!r}", text, pos)
        return pos

    def _expected(self) -> str:
        return {
            _VALUE: "expected a value",
            _VALUE_OR_END: "expected a value or ']'",
            _KEY: "expected a string key",
            _KEY_OR_END: "expected a string key or '}'",
            _COLON: "expected ':'",
            _COMMA_OR_END: "expected ',' or '" + ("}" if self._stack[-1] else "]") + "'"
            if self._stack
            else "expected end of data",
            _DONE: "expected end of data",
        }[self._expect]
