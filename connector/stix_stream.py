"""STIX objects read from a JSON document one at a time: a TAXII envelope or a bundle
(`{"objects": [...]}`), or a plain JSON list of objects.

Parsing the whole document first (as orjson.loads does) turns 10 MB of `[0,0,...]` into five
million Python objects before anything can count them: one such inbox POST took 4.5 GB of
server memory. Here the document is walked as a stream of parser events (ijson's C backend,
from bytes or straight from a file), each object is built on its own and handed on as soon as
it is complete, so the caller validates it and keeps only what is valid; counting stops at
`limit` before the rest is looked at.

Objects are built here rather than by ijson's own `items()`, which keeps the dotted path of
every open container: 100,000 levels of `[` (200 KB) cost it gigabytes. This builder keeps a
stack of containers and stops building below MAX_DEPTH: what lies deeper is skipped and stands
as TOO_DEEP, so the object still arrives with its id and is refused on its own
(connector.submission_checks.validate) while the objects beside it are kept. orjson refused
a file with any object nested over 1,024 levels whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson

from connector.submission_checks import MAX_DEPTH, TOO_DEEP

_PYTHON_BACKEND = ijson.get_backend("python")
_OPEN = ("start_map", "start_array")
_CLOSE = ("end_map", "end_array")
Event = tuple[str, Any]


class StreamError(ValueError):
    """The document is not one this reader takes; `kind` is "json" (not JSON at all) or
    "shape" (JSON, but no list of objects where one belongs)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class TooManyObjects(StreamError):
    def __init__(self, limit: int) -> None:
        super().__init__("shape", f"more than {limit} objects")
        self.limit = limit


def stream_objects(
    source: bytes | BinaryIO,
    *,
    limit: int | None = None,
    require_objects: bool = False,
    allow_list: bool = False,
) -> Iterator[Any]:
    """The document's objects in order. StreamError when it is not a JSON object whose
    `objects` is an array (absent: no objects, unless `require_objects`), or with `allow_list`
    a JSON array of objects; raised also when that is found only at the end, so a caller must
    write nothing before the iterator is exhausted. TooManyObjects past `limit` objects."""
    events = _events(source)
    first = _next(events)
    if first[0] == "start_array" and allow_list:
        yield from _items(events, limit)
    elif first[0] == "start_map":
        seen = False
        while True:
            event, key = _next(events)
            if event == "end_map":
                break
            value = _next(events)
            if key != "objects":
                _skip(value, events)
                continue
            if seen:
                raise StreamError("shape", "'objects' is given twice")
            seen = True
            if value[0] != "start_array":
                raise StreamError("shape", "'objects' is not an array")
            yield from _items(events, limit)
        if require_objects and not seen:
            raise StreamError("shape", "no 'objects' array")
    else:
        raise StreamError("shape", "the document is not a JSON object" + (" or array" if allow_list else ""))
    for _ in events:  # the parser raises on anything after the document
        raise StreamError("json", "more than one JSON value")


def _items(events: Iterator[Event], limit: int | None) -> Iterator[Any]:
    count = 0
    while True:
        try:
            item = _next(events)
            if item[0] == "end_array":
                return
            value = _value(item, events)
        except StreamError as exc:
            if exc.kind != "json":
                raise
            # Where, for a large bundle: the parser's messages give no position.
            raise StreamError(
                "json", f"{str(exc).rstrip('.')}, after {count} whole object(s) of the list"
            ) from None
        count += 1
        if limit is not None and count > limit:
            raise TooManyObjects(limit)
        yield value


# 19 digits or more in a row: possibly an integer beyond 64 bits, which yajl (the C backend)
# refuses as "integer overflow", failing the whole document for one value of one object.
_LONG_NUMBER = re.compile(rb"[0-9]{19,}")
_CHUNK = 1 << 20


def _has_long_number(source: bytes | BinaryIO) -> bool:
    """Whether the document may hold an integer too large for the C backend: a scan for digit
    runs, strings included (a false alarm only costs the slower parser). A file is read
    through and rewound; one that cannot be rewound is left to the C backend."""
    if isinstance(source, bytes | bytearray | memoryview):
        return _LONG_NUMBER.search(source) is not None
    if not source.seekable():
        return False
    start, tail = source.tell(), b""
    try:
        while chunk := source.read(_CHUNK):
            if _LONG_NUMBER.search(tail + chunk):
                return True
            tail = chunk[-18:]
        return False
    finally:
        source.seek(start)


def _events(source: bytes | BinaryIO) -> Iterator[Event]:
    """Parser events; malformed JSON is a StreamError naming where the parser stopped. A
    document that may hold an integer beyond 64 bits is read by ijson's Python backend, which
    builds any integer, so only the object holding it is refused (submission_checks)."""
    if _utf16(source):
        raise StreamError("json", "not UTF-8 (a UTF-16 file? the document must be UTF-8)")
    parser = _PYTHON_BACKEND.basic_parse if _has_long_number(source) else ijson.basic_parse
    try:
        yield from parser(source, use_float=True)
    except ijson.JSONError as exc:
        # yajl's message points at the place with a copy of the text around it: keep the first
        # line only (the document may hold anything, secrets included). It may come as bytes,
        # whose str() is one line with that copy in it.
        said = exc.args[0] if exc.args else ""
        text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise StreamError("json", reason[:200]) from None


def _utf16(source: bytes | BinaryIO) -> bool:
    """Whether the document starts with a UTF-16 byte order mark (a file saved as "Unicode" on
    Windows): the parser would call it an invalid character."""
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:2])
    elif source.seekable():
        start = source.tell()
        head = source.read(2)
        source.seek(start)
    else:
        return False
    return head in (b"\xff\xfe", b"\xfe\xff")


def _next(events: Iterator[Event]) -> Event:
    """The next event; the parser reports a document that ends early, this is the backstop (a
    StopIteration must not escape a generator)."""
    try:
        return next(events)
    except StopIteration:
        raise StreamError("json", "the document ends early") from None


def _value(first: Event, events: Iterator[Event]) -> Any:
    """One JSON value whose first event is `first`, built without recursion; containers
    deeper than MAX_DEPTH are skipped and stand as TOO_DEEP."""
    event, value = first
    if event not in _OPEN:
        return value
    root: dict[str, Any] | list[Any] = {} if event == "start_map" else []
    stack: list[dict[str, Any] | list[Any]] = [root]
    keys: list[str] = [""]
    while stack:
        event, value = _next(events)
        if event == "map_key":
            keys[-1] = value
            continue
        if event in _CLOSE:
            stack.pop()
            keys.pop()
            continue
        if event in _OPEN:
            if len(stack) >= MAX_DEPTH:
                _skip((event, value), events)
                child: Any = TOO_DEEP
            else:
                child = {} if event == "start_map" else []
                _put(stack[-1], keys[-1], child)
                stack.append(child)
                keys.append("")
                continue
        else:
            child = value
        _put(stack[-1], keys[-1], child)
    return root


def _put(container: dict[str, Any] | list[Any], key: str, value: Any) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        container.append(value)


def _skip(first: Event, events: Iterator[Event]) -> None:
    """Consume the rest of a value whose first event is `first`."""
    if first[0] not in _OPEN:
        return
    depth = 1
    while depth:
        event, _ = _next(events)
        if event in _OPEN:
            depth += 1
        elif event in _CLOSE:
            depth -= 1
