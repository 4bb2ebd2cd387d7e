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


@dataclass(frozen=True, slots=True)
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


def read_jsonl(stream: BinaryIO) -> Iterator[Row]:
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


def read_csv(stream: BinaryIO, *, pad_short_rows: bool = False) -> Iterator[Row]:
    """CSV with a header row; a row with the wrong number of fields is a fault of that row.

    With `pad_short_rows`, a row with fewer fields than the header is read as if its missing
    trailing cells were empty (a report whose header gained a column its rows lack); a row
    with more fields than the header is still a fault.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
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
        elif not any(cell.strip() for cell in row):
            yield RowError(start, "blank line", raw, skipped=True)
        elif len(row) > width or (len(row) < width and not pad_short_rows):
            yield RowError(start, f"{len(row)} fields where the header has {width}", raw)
        else:
            # zip stops at the shorter row: the missing trailing cells are added as empty.
            data = dict(zip(header, row, strict=False)) | dict.fromkeys(header[len(row) :], "")
            yield RawRecord(start, data, raw)
    text.detach()


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


READERS: dict[str, Callable[[BinaryIO], Iterator[Row]]] = {"jsonl": read_jsonl, "csv": read_csv}

# The keyword options each reader takes (a mapping's `reader_options`); none by default.
READER_OPTIONS: dict[str, frozenset[str]] = {"csv": frozenset({"pad_short_rows"})}


def reader_with_options(name: str, options: dict[str, Any]) -> Callable[[BinaryIO], Iterator[Row]]:
    """The reader `name` as a callable(stream), its options bound."""
    unknown = set(options) - READER_OPTIONS.get(name, frozenset())
    if unknown:
        raise ValueError(f"reader {name!r} takes no option(s) {sorted(unknown)}")
    reader = READERS[name]
    return functools.partial(reader, **options) if options else reader
