"""Evidence of a re-observation stored as what changed, not as a second copy.

A scan feed reports the same host every day, and its evidence changes in a detail or two (the
server's clock in an HTTP Date header, a session cookie, a dynamic page's length). Stored whole
each time, a day's re-observations grew the store by more than the day's input
(bench/ingest.py: 1.6x); stored as their changes, by a fraction of it.

A stored evidence body is either a notification's evidence, the JSON object itself, or a change
to the evidence a notification was first stored with, a JSON array:

    [base pk, [[[key, ...], value], [[key, ...]], ...]]

(a path and a value: set the value there; a path alone: remove what is there). The two cannot
be confused: evidence is always an object. Every change is stored with digest 0: it is never
looked up by its content, and the index entries of one key go in at its end, in order.

A change is taken only when applying it gives back exactly the bytes of the evidence it stands
for (key order included), so a version's rendering is the same either way. Its base is the
evidence of the notification's own row, which every notification whose versions refer to the
change holds: the base is in use as long as the change is (retention).
"""

from __future__ import annotations

from typing import Any

import orjson

Change = list[Any]
CHANGE_DIGEST = 0


def is_change(body: str) -> bool:
    return body.startswith("[")


def base_of(body: str) -> int:
    """The pk of the evidence a change applies to."""
    return int(orjson.loads(body)[0])


def change(base_pk: int, base: dict[str, Any], body: str) -> str | None:
    """The change from `base` (the evidence stored under `base_pk`) to the evidence `body`, as
    stored; None when it would not be shorter than `body`, or would not give it back exactly."""
    new = orjson.loads(body)
    if not isinstance(new, dict):
        return None
    ops = _ops(base, new, [])
    stored = orjson.dumps([base_pk, ops]).decode()
    if len(stored) >= len(body) or orjson.dumps(_applied(base, ops)).decode() != body:
        return None
    return stored


def resolved(body: str, bases: dict[int, str]) -> str:
    """The evidence a stored body stands for: itself, or its change applied to its base."""
    if not is_change(body):
        return body
    base_pk, ops = orjson.loads(body)
    return orjson.dumps(_applied(orjson.loads(bases[int(base_pk)]), ops)).decode()


def _ops(old: dict[str, Any], new: dict[str, Any], path: list[str]) -> list[Change]:
    ops: list[Change] = []
    for key, value in new.items():
        if key not in old:
            ops.append([[*path, key], value])
            continue
        before = old[key]
        if before == value and type(before) is type(value):
            continue
        if isinstance(before, dict) and isinstance(value, dict):
            ops += _ops(before, value, [*path, key])
        else:
            ops.append([[*path, key], value])
    ops += [[[*path, key]] for key in old if key not in new]
    return ops


def _applied(base: dict[str, Any], ops: list[Change]) -> dict[str, Any]:
    """`base` (a fresh object: changed in place) with the changes made."""
    for op in ops:
        *parents, last = op[0]
        node = base
        for key in parents:
            node = node.setdefault(key, {})
        if len(op) == 2:
            node[last] = op[1]
        else:
            node.pop(last, None)
    return base
