"""Reading a POSTed TAXII envelope one object at a time (TAXII 2.1 section 5.5).

Parsing the whole body first (as orjson.loads does) turns 10 MB of `[0,0,...]` into five
million Python objects before anything can count them, and every object into a status entry
after: one such POST took 4.5 GB of server memory. Here the body is walked as a stream of parser
events (ijson's C backend), each object is built on its own and handed on as soon as it is
complete, so the caller validates it and keeps only what is valid; counting stops at
`server.max_objects_per_post` with a 413 before the rest is looked at.

Objects are built here rather than by ijson's own `items()`, which keeps the dotted path of
every open container: 100,000 levels of `[` (200 KB) cost it gigabytes. This builder keeps a
stack of containers and stops building below `MAX_DEPTH`: what lies deeper is skipped and
replaced by `TOO_DEEP`, so the object still arrives with its id and is refused on its own
(connector.submission_checks.validate) while the objects beside it are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ijson

from connector.submission_checks import MAX_DEPTH, TOO_DEEP
from taxii_server.errors import TaxiiError

_OPEN = ("start_map", "start_array")
_CLOSE = ("end_map", "end_array")
Event = tuple[str, Any]


def not_an_envelope(detail: str) -> TaxiiError:
    return TaxiiError(400, "Not a TAXII envelope", f'Expected {{"objects": [...]}}: {detail}.')


def envelope_objects(body: bytes, limit: int) -> Iterator[Any]:
    """The envelope's objects, one at a time, in order. Raises TaxiiError 400 when the body is
    not a JSON object whose `objects` is an array (also when that is found only at the end: the
    caller must not write anything before the iterator is exhausted), 413 past `limit` objects."""
    events = _events(body)
    first = _next(events)
    if first[0] != "start_map":
        raise not_an_envelope("the body is not a JSON object")
    seen_objects = False
    while True:
        event, key = _next(events)
        if event == "end_map":
            break
        value_event = _next(events)
        if key != "objects":
            _skip(value_event, events)
            continue
        if seen_objects:
            raise not_an_envelope("'objects' is given twice")
        seen_objects = True
        if value_event[0] != "start_array":
            raise not_an_envelope("'objects' is not an array")
        count = 0
        while True:
            item = _next(events)
            if item[0] == "end_array":
                break
            count += 1
            if count > limit:
                raise TaxiiError(
                    413,
                    "Too many objects",
                    f"An envelope may hold at most {limit} objects (server.max_objects_per_post); "
                    "send the rest in further requests.",
                )
            yield _value(item, events)
    for _ in events:  # the parser raises on anything after the envelope
        raise not_an_envelope("more than one JSON value")


def _events(body: bytes) -> Iterator[Event]:
    """Parser events; a malformed body is a TAXII 400 naming where the parser stopped."""
    try:
        yield from ijson.basic_parse(body, use_float=True)
    except ijson.JSONError as exc:
        # yajl's message points at the place with a copy of the text around it: keep the first
        # line only (the body may hold anything, secrets included).
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaxiiError(400, "Invalid JSON", reason[:200]) from None


def _next(events: Iterator[Event]) -> Event:
    """The next event; the parser reports a body that ends early, this is the backstop (a
    StopIteration must not escape a generator)."""
    try:
        return next(events)
    except StopIteration:
        raise not_an_envelope("the body ends early") from None


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
