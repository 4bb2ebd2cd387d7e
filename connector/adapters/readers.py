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
    unreadable: bool = False  # nothing of the input can be read (its header): an input error


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
    empty: bool = False  # not even a header line: no failure, but often a failed download

    def padded(self, line: int) -> None:
        self.padded_rows += 1
        if self.first_padded_line is None:
            self.first_padded_line = line

    def warnings(self) -> list[str]:
        """The noticed as sentences for the run's warnings (none when nothing was noticed)."""
        said = ["the input is empty, not even a header line (a failed download?)"] if self.empty else []
        if self.padded_rows:
            said.append(
                f"{self.padded_rows} row(s) lacked trailing fields (first at line {self.first_padded_line}): "
                "read with those cells empty"
            )
        return said


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

    A quoted field may hold line breaks, so a record may take several lines. One that does is a
    stray quote that swallowed the lines after it (up to the next quote, or the end of the
    file) when it has the wrong number of fields, an unclosed quote, or a second line that is a
    row of its own (_runs_on): its first line is the fault, and the lines after it are read
    again as rows. Without that, one unclosed quote hid every later row of a report inside one
    cell, and padding delivered them as that row's evidence.
    """
    stats = stats if stats is not None else ReadStats()
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _Lines(text)
    may_be_cut = pad_short_rows and _may_end_mid_line(stream)
    reader = csv.reader(lines)
    header = _header(reader)
    if not isinstance(header, list):
        if header is not None:  # the rows cannot be read without their header: nothing after it is
            yield header
        stats.empty = header is None
        return
    stats.header = header
    width = len(header)
    line = lines.number
    taken = lines.taken
    while True:
        taken.clear()
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            fault, line = _refused(exc, line + 1, lines)
            yield fault
            continue
        start, line = line + 1, lines.number
        if line > start and _runs_on(row, taken, width, pad_short_rows):
            yield RowError(start, _ran_on(start, line, len(row), width), _first(taken))
            lines.again(taken[1:])
            line = start
            continue
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
        elif len(row) < width and may_be_cut and lines.cut_off():
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


def _header(reader: Iterator[list[str]]) -> list[str] | RowError | None:
    """The header's column names, or why it cannot be used (None: the input is empty)."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return None
    except csv.Error as exc:
        return RowError(1, f"unreadable header: {exc}", "", unreadable=True)
    fault = _header_fault(header)
    if fault is not None:
        return RowError(1, f"unreadable header: {fault}", readable(",".join(header)), unreadable=True)
    return header


def _refused(exc: csv.Error, start: int, lines: _Lines) -> tuple[RowError, int]:
    """The fault of a record from line `start` that the csv module refused (a field over its
    size limit, a NUL), and the line read up to: a record that ran on over later lines is read
    again from its second line."""
    end = lines.number
    if end <= start:
        return RowError(end, f"not valid CSV: {exc}", ""), end
    fault = RowError(start, f"not valid CSV: {exc}; {_ran_on(start, end)}", _first(lines.taken))
    lines.again(lines.taken[1:])
    return fault, start


def _runs_on(row: list[str], taken: list[str], width: int, padded: bool) -> bool:
    """Whether a record of several lines is a stray quote's run-on rather than a quoted line
    break: it has the wrong number of fields, it holds an odd number of quotes (in CSV they
    come in pairs: this one ran to the end of the input unclosed), or its second line read alone
    is a row of the header's width (with `padded`, of more than half of it)."""
    if len(row) != width or sum(line.count('"') for line in taken) % 2:
        return True
    fields = len(next(csv.reader([taken[1]]), ()))
    return fields == width or (padded and width // 2 < fields < width)


def _ran_on(start: int, end: int, fields: int | None = None, width: int | None = None) -> str:
    said = (
        f"a quoted field opened on line {start} runs on to line {end} (a stray quote?): "
        f"line {start} is quarantined and the lines after it are read as rows"
    )
    return said if fields == width else f"{fields} fields where the header has {width}: {said}"


def _first(taken: list[str]) -> str:
    return readable(taken[0].rstrip("\r\n")) if taken else ""


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


class _Lines:
    """The input's lines as the csv reader takes them: numbered (a record may take several),
    the current record's kept (`taken`: the caller empties it before each record), and lines
    handed back with `again` read once more, first. A record a stray quote ran on is read again
    from its second line this way."""

    __slots__ = ("_back", "_source", "number", "taken")

    def __init__(self, source: Iterator[str]) -> None:
        self._source = source
        self._back: list[str] = []  # in reverse: the next line to hand out is the last
        self.taken: list[str] = []
        self.number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._back.pop() if self._back else next(self._source)
        self.taken.append(line)
        self.number += 1
        return line

    def again(self, lines: list[str]) -> None:
        self._back.extend(reversed(lines))
        self.number -= len(lines)

    def cut_off(self) -> bool:
        """Whether the line just handed out ended without a line break."""
        return not self.taken or not self.taken[-1].endswith(("\n", "\r"))


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
