"""One streaming pass over an input: hash, size, text counts, CSV shape, JSON validity.

Everything is computed from an iterator of byte chunks in a single pass, so memory stays bounded
by the chunk size whatever the input size (a 1 GiB blob never sits in memory). The type is
decided by the user's file name (the stored blob may be `_renamed/<hex>` without extension):
text-like extensions must be valid UTF-8 (an input that is not is unreadable), anything else is
counted as text only if its whole content turns out to be UTF-8 without NUL bytes.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from worker.jsonscan import JsonSyntaxError, JsonValidator

TEXT_EXTENSIONS = frozenset({".txt", ".md", ".csv", ".tsv", ".json", ".log", ".jsonl"})
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# Longest CSV line or field we buffer; beyond it the CSV shape is reported as unavailable.
CSV_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(CSV_LIMIT)
WORD_SLICE = 64 * 1024


class InputUnreadable(Exception):
    """The input cannot be processed as its type promises (the batch fails with exit 2)."""


class _CsvLineTooLong(Exception):
    pass


def extension(name: str) -> str:
    """Lower-case extension of the user's file name ('' when there is none)."""
    return posixpath.splitext(name)[1].lower()


@dataclass
class TextCounts:
    """Line/word/character counts that are exact across chunk boundaries.

    Lines are newline characters, plus one for a non-empty last line without a newline, so
    "a\\nb" has 2 lines like an editor shows. Words are runs of non-whitespace (str.split()).
    """

    lines: int = 0
    words: int = 0
    chars: int = 0
    _last: str = ""

    def feed(self, text: str) -> None:
        self.chars += len(text)
        self.lines += text.count("\n")
        # split() materialises every word: slicing keeps that list small (~1 MB, not ~50 MB
        # for a 4 MiB chunk of short words) at the same C speed.
        for start in range(0, len(text), WORD_SLICE):
            part = text[start : start + WORD_SLICE]
            words = len(part.split())
            if words and self._last and not self._last.isspace() and not part[0].isspace():
                words -= 1  # the first word continues the previous part's last word
            self.words += words
            self._last = part[-1]

    def finish(self) -> None:
        if self.chars and self._last != "\n":
            self.lines += 1


class _Scan:
    """The shared pass: hashes every byte and yields decoded text while it is still text."""

    def __init__(self, name: str, progress: Callable[[int], None] | None) -> None:
        self.ext = extension(name)
        self.strict_text = self.ext in TEXT_EXTENSIONS
        self.digest = hashlib.sha256()
        self.size = 0
        self.is_text = True
        self.not_text_reason: str | None = None
        self.counts = TextCounts()
        self.json = JsonValidator() if self.ext == ".json" else None
        self._progress = progress

    def texts(self, chunks: Iterable[bytes]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        first = True
        for chunk in chunks:
            before = self.size
            self.digest.update(chunk)
            self.size += len(chunk)
            if self._progress is not None:
                self._progress(self.size)
            if not self.is_text:
                continue
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                self._not_text(before - buffered + exc.start)
                continue
            if first and text:
                first = False
                text = text.removeprefix("\ufeff")  # a UTF-8 BOM is not content
            if text and self._accept(text):
                yield text
        if self.is_text:
            buffered = len(decoder.getstate()[0])
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                self._not_text(self.size - buffered + exc.start, truncated=True)
        if self.is_text:
            self.counts.finish()
            if self.json is not None:
                try:
                    self.json.close()
                except JsonSyntaxError as exc:
                    raise InputUnreadable(f"invalid JSON: {exc}") from exc

    def _accept(self, text: str) -> bool:
        if not self.strict_text and "\x00" in text:
            self.is_text = False
            self.not_text_reason = "contains NUL bytes"
            return False
        self.counts.feed(text)
        if self.json is not None:
            try:
                self.json.feed(text)
            except JsonSyntaxError as exc:
                raise InputUnreadable(f"invalid JSON: {exc}") from exc
        return True

    def _not_text(self, byte_offset: int, truncated: bool = False) -> None:
        what = "truncated UTF-8 sequence" if truncated else "invalid UTF-8"
        reason = f"{what} at byte {byte_offset}"
        if self.strict_text:
            raise InputUnreadable(reason)
        self.is_text = False
        self.not_text_reason = reason


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Split decoded text into lines (ends kept) for the csv module, which wants lines."""
    pending = ""
    for text in texts:
        pending += text
        cut = pending.rfind("\n") + 1
        if cut:
            yield from io.StringIO(pending[:cut], newline="")
            pending = pending[cut:]
        elif len(pending) > CSV_LIMIT:
            raise _CsvLineTooLong(f"a line is longer than {CSV_LIMIT} characters")
    if pending:
        yield pending


def _csv_shape(texts: Iterable[str], delimiter: str) -> dict[str, Any]:
    """Data rows (header excluded, blank lines ignored), header columns, ragged rows."""
    columns: int | None = None
    rows = ragged = 0
    shape: dict[str, Any] = {"delimiter": delimiter}
    try:
        for row in csv.reader(_lines(texts), delimiter=delimiter):
            if not row:
                continue
            if columns is None:
                columns = len(row)
                continue
            rows += 1
            if len(row) != columns:
                ragged += 1
    except (csv.Error, _CsvLineTooLong) as exc:
        shape["error"] = f"CSV parsing stopped: {exc}"
    shape.update(rows=rows, columns=columns or 0, ragged_rows=ragged)
    return shape


def analyze(
    name: str, chunks: Iterable[bytes], progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Stats for one input; raises InputUnreadable when a text-typed input is not readable."""
    scan = _Scan(name, progress)
    texts = scan.texts(chunks)
    shape: dict[str, Any] | None = None
    delimiter = CSV_DELIMITERS.get(scan.ext)
    if delimiter is not None:
        shape = _csv_shape(texts, delimiter)
    for _ in texts:  # drain: the hash and counts need every byte even if CSV parsing stopped
        pass

    stats: dict[str, Any] = {"size": scan.size, "sha256": scan.digest.hexdigest()}
    if scan.is_text:
        stats["kind"] = "text"
        stats["text"] = {
            "lines": scan.counts.lines,
            "words": scan.counts.words,
            "chars": scan.counts.chars,
            "detected_by": "extension" if scan.strict_text else "content",
        }
        if shape is not None:
            stats["csv"] = shape
        if scan.json is not None:
            stats["json"] = {"valid": True, "top_level": scan.json.top_level}
    else:
        stats["kind"] = "binary"
        stats["binary_reason"] = scan.not_text_reason
    return stats


def describe(stats: dict[str, Any]) -> str:
    """One human line for the log: '12 lines, 40 words, 3 rows x 4 columns, 1.2 KiB'."""
    parts: list[str] = []
    text = stats.get("text")
    if text:
        parts.append(f"{text['lines']} lines, {text['words']} words")
    else:
        parts.append("binary")
    shape = stats.get("csv")
    if shape:
        parts.append(f"{shape['rows']} rows x {shape['columns']} columns")
        if shape.get("error"):
            parts.append("CSV incomplete: " + shape["error"])
    if stats.get("json"):
        parts.append(f"valid JSON {stats['json']['top_level']}")
    parts.append(human_size(stats["size"]))
    parts.append("sha256 " + stats["sha256"][:12])
    return ", ".join(parts)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
