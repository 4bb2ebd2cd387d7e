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


def read_jsonl(stream: BinaryIO) -> Iterator[Row]:
    for number, raw_bytes in enumerate(stream, start=1):
        raw = raw_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
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
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield RowError(1, f"unreadable header: {exc}", "")
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
        if not any(cell.strip() for cell in row):
            yield RowError(start, "blank line", raw, skipped=True)
        elif len(row) > width or (len(row) < width and not pad_short_rows):
            yield RowError(start, f"{len(row)} fields where the header has {width}", raw)
        else:
            # zip stops at the shorter row: the missing trailing cells are added as empty.
            data = dict(zip(header, row, strict=False)) | dict.fromkeys(header[len(row) :], "")
            yield RawRecord(start, data, raw)
    text.detach()


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
