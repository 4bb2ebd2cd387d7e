"""Streaming record readers: one record at a time, with its line number, never the whole file.

A line that cannot be read is yielded as a RowError in place of a record, so the caller can
quarantine it and go on with the next one.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson


@dataclass(slots=True)  # one per input row: a frozen dataclass's __init__ costs 0.3 µs more
class RawRecord:
    line: int
    data: dict[str, Any]
    raw: str


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    reason: str
    raw: str
    skipped: bool = False  # not a fault (a blank line): counted, not quarantined


Row = RawRecord | RowError


@dataclass(slots=True)
class ReadStats:
    """What a reader noticed beside its rows, for the run's warnings: complete once the rows
    are read. `padded_rows`: rows read with missing trailing cells taken as empty (csv with
    pad_short_rows), the first of them at `first_padded_line`. `header`: the input's column
    names (csv), once read."""

    padded_rows: int = 0
    first_padded_line: int | None = None
    header: list[str] | None = None

    def padded(self, line: int) -> None:
        self.padded_rows += 1
        if self.first_padded_line is None:
            self.first_padded_line = line

    def warnings(self) -> list[str]:
        """The noticed as sentences for the run's warnings (none when nothing was noticed)."""
        if not self.padded_rows:
            return []
        return [
            f"{self.padded_rows} row(s) lacked trailing fields (first at line {self.first_padded_line}): "
            "read with those cells empty"
        ]


NOT_UTF8 = "not valid UTF-8 (a Latin-1 or UTF-16 file? the input must be UTF-8)"


def utf8_fault(text: str) -> bool:
    """Whether text read with errors="surrogateescape" held bytes that are not UTF-8. Replacing
    them (errors="replace") would alter a value silently: a host name or an e-mail address
    with a U+FFFD in it is another one, so such a row is quarantined instead."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def readable(text: str) -> str:
    """surrogateescape'd text as text that can be stored and printed: each byte that was not
    UTF-8 as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_jsonl(stream: BinaryIO, *, stats: ReadStats | None = None) -> Iterator[Row]:
    """One JSON object per line. (`stats`: the readers' common signature; nothing to note.)"""
    for number, raw_bytes in enumerate(stream, start=1):
        try:
            raw = raw_bytes.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield RowError(number, NOT_UTF8, raw_bytes.decode("utf-8", errors="replace").rstrip("\r\n"))
            continue
        if not raw.strip():
            yield RowError(number, "blank line", raw, skipped=True)
            continue
        if not raw.lstrip().startswith("{"):
            yield RowError(number, "not a JSON object (log output or other noise)", raw)
            continue
        try:
            data = orjson.loads(raw_bytes)
        except orjson.JSONDecodeError as exc:
            yield RowError(number, f"not valid JSON (truncated line?): {exc}", raw)
            continue
        if not isinstance(data, dict):
            yield RowError(number, "not a JSON object", raw)
            continue
        yield RawRecord(number, data, raw)


def read_csv(
    stream: BinaryIO, *, pad_short_rows: bool = False, stats: ReadStats | None = None
) -> Iterator[Row]:
    """CSV with a header row; a row with the wrong number of fields is a fault of that row.

    With `pad_short_rows`, a row with fewer fields than the header is read as if its missing
    trailing cells were empty (producers leave trailing empty cells out, and a header may gain
    a column its rows lack), and counted in `stats`. A row with more fields than the header is
    still a fault, and so is a short last line that ends without a line break: the file was cut
    off there, and its last cell may be cut too.
    """
    stats = stats if stats is not None else ReadStats()
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _LastLine(text) if pad_short_rows and _may_end_mid_line(stream) else None
    reader = csv.reader(lines if lines is not None else text)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield RowError(1, f"unreadable header: {exc}", "")
        return
    fault = _header_fault(header)
    if fault is not None:  # the rows cannot be read without their header: nothing after it is
        yield RowError(1, f"unreadable header: {fault}", readable(",".join(header)))
        return
    stats.header = header
    width = len(header)
    line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield RowError(reader.line_num, f"not valid CSV: {exc}", "")
            line = reader.line_num
            continue
        start, line = line + 1, reader.line_num
        raw = ",".join(row)
        if utf8_fault(raw):
            columns = [name for name, cell in zip(header, row, strict=False) if utf8_fault(cell)]
            where = f" in column(s) {', '.join(columns)}" if columns else ""
            yield RowError(start, f"{NOT_UTF8}{where}", readable(raw))
        elif not (row and row[0].strip()) and not any(cell.strip() for cell in row):
            # (a first cell with text, most rows, answers it without looking at the others)
            yield RowError(start, "blank line", raw, skipped=True)
        elif len(row) > width or (len(row) < width and not pad_short_rows):
            yield RowError(start, f"{len(row)} fields where the header has {width}", raw)
        elif len(row) < width and lines is not None and lines.cut_off():
            reason = f"{len(row)} fields where the header has {width}, on the last line, "
            yield RowError(start, reason + "which ends without a line break: the file looks cut off", raw)
        else:
            data = dict(zip(header, row, strict=False))
            if len(row) < width:
                stats.padded(start)
                # zip stopped at the shorter row: the missing trailing cells are added as empty.
                data.update(dict.fromkeys(header[len(row) :], ""))
            yield RawRecord(start, data, raw)
    text.detach()


def _may_end_mid_line(stream: BinaryIO) -> bool:
    """Whether the input may end without a line break (its last line cut off); True when that
    cannot be told without reading it all (a stream that cannot seek)."""
    try:
        start = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        if end == 0:
            return False
        stream.seek(end - 1)
        last = stream.read(1)
        stream.seek(start)
    except (OSError, ValueError, AttributeError):
        return True
    return last not in (b"\n", b"\r")


class _LastLine:
    """The lines of a text, remembering the last one handed out: whether the row the csv
    reader just returned ended with a line break. Used only for an input that may end without
    one, so the common case reads the file directly."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._last = ""

    def __iter__(self) -> _LastLine:
        return self

    def __next__(self) -> str:
        self._last = next(self._lines)
        return self._last

    def cut_off(self) -> bool:
        return not self._last.endswith(("\n", "\r"))


def _header_fault(header: list[str]) -> str | None:
    """Why a CSV header cannot be used (None when it can): bytes that are not UTF-8 (a UTF-16
    file reads as one), or a column name given twice (a row's dict would keep only the last
    of the two cells, silently)."""
    if utf8_fault("".join(header)):
        return NOT_UTF8
    seen: set[str] = set()
    twice = [name for name in header if name and (name in seen or seen.add(name))]
    if twice:
        return f"column(s) named more than once: {', '.join(dict.fromkeys(twice))}"
    return None


# A reader: callable(stream, *, stats=None, **its options) -> rows.
READERS: dict[str, Callable[..., Iterator[Row]]] = {"jsonl": read_jsonl, "csv": read_csv}

# The keyword options each reader takes (a mapping's `reader_options`); none by default.
READER_OPTIONS: dict[str, frozenset[str]] = {"csv": frozenset({"pad_short_rows"})}


def reader_with_options(name: str, options: dict[str, Any]) -> Callable[..., Iterator[Row]]:
    """The reader `name` as a callable(stream, *, stats=None), its options bound."""
    unknown = set(options) - READER_OPTIONS.get(name, frozenset())
    if unknown:
        raise ValueError(f"reader {name!r} takes no option(s) {sorted(unknown)}")
    reader = READERS[name]
    return functools.partial(reader, **options) if options else reader
