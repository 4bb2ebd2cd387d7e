"""Evidence of a re-observation stored as what changed, not as a second copy.

A scan feed reports the same host every day, and its evidence changes in a detail or two (the
server's clock in an HTTP Date header, a session cookie, a dynamic page's length). Stored whole
each time, a day's re-observations grew the store by more than the day's input
(bench/ingest.py: 1.6x); stored as their changes, by a fraction of it.

The keys of a feed's evidence are the same in every row ("server", "http_date", ...): half of
a body's bytes. So a notification's evidence is stored as its values, and the list of their
key paths once, in an evidence row of its own that every body of that shape refers to:

    %[[key, ...], ...]              the key paths of a shape of evidence
    #<pk of its key paths>[value, ...]    evidence as its values, in the order of its paths
    {...}                           evidence as it is (what the code before this stored; and
                                    evidence its values would not make shorter)
    [base pk, [[[key, ...], value], [[key, ...]], [i, value], [i], ...]]
                                    a change to the evidence a notification was first stored
                                    with (a path and a value: set the value there; a path
                                    alone: remove what is there); a path the base has is given
                                    as its number i among the base's key paths (in the order
                                    of `%`), which a change of a day's cookie and page length
                                    made a third of the size of the paths it stands for

The first character tells them apart (evidence is always an object). The values keep their
JSON text, so a search of the stored bodies for a value (forget) finds it as before. Every
change is stored with digest 0: it is never looked up by its content, and the index entries of
one key go in at its end, in order.

A change is taken only when applying it gives back exactly the bytes of the evidence it stands
for (key order included), so a version's rendering is the same either way. Its base is the
evidence of the notification's own row, which every notification whose versions refer to the
change holds: the base is in use as long as the change is (retention).

A change is kept in the version that first has it (an "inline change", in the version's block:
connector/store/packing.py), not in an evidence row of its own: on PostgreSQL a row's header,
line pointer and index entries cost more than the change they held (a second day of the same
hosts: 53 of its 91 bytes a row). A version's evidence is then the change's text itself
(records.EvidenceKey), which names its base. When a later version has the same evidence, the
change is stored as an evidence row (digest 0) after all, which that version and the ones after
refer to; the version that first had it keeps its copy. So a change that stays is stored twice,
not once a day. Changes stored before (digest 0 rows) stay as they are.
"""

from __future__ import annotations

from typing import Any

import orjson

Change = list[Any]
CHANGE_DIGEST = 0


KEYS = "%"
VALUES = "#"


def is_change(body: str) -> bool:
    return body.startswith("[")


def row_of(key: int | str) -> int:
    """The evidence row a version's evidence needs: its own pk, or an inline change's base."""
    if key.__class__ is int:
        return key  # type: ignore[return-value]
    return int(key[1 : key.index(",")])  # type: ignore[index,union-attr]  # "[<base>,[ops]]"


def reference(body: str) -> int | None:
    """The pk of the stored body this one needs to be read: a change's base, the key paths of
    evidence stored as its values; None for any other."""
    if body.startswith(VALUES):
        return int(body[1 : body.index("[")])
    if body.startswith("["):
        return int(orjson.loads(body)[0])
    return None


def shape_of(evidence: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """(the stored key paths of the evidence, its values in their order); None for evidence
    without values.

    The key paths' text is kept by the evidence's layout (its keys, nested as they are): a
    feed's rows share a few layouts, and writing the paths out for each row was a third of
    the time this took."""
    values: list[Any] = []
    layout = _layout(evidence, values)
    if not values:
        return None
    text = _PATHS.get(layout)
    if text is None:
        paths: list[list[str]] = []
        _walk(evidence, [], paths, [])
        if len(_PATHS) >= _PATHS_KEPT:
            _PATHS.clear()
        text = _PATHS[layout] = KEYS + orjson.dumps(paths).decode()
    return text, values


_PATHS: dict[tuple[Any, ...], str] = {}  # layout (_layout) -> its key paths, as stored
_PATHS_KEPT = 1_000


def _layout(node: dict[str, Any], values: list[Any]) -> tuple[Any, ...]:
    """The keys of the evidence in order, a non-empty object's as (key, its layout); its values
    appended to `values` in the order _walk gives them."""
    out: list[Any] = []
    for key, value in node.items():
        if value.__class__ is dict and value:
            out.append((key, _layout(value, values)))
        else:
            out.append(key)
            values.append(value)
    return tuple(out)


def values_body(keys_pk: int, values: list[Any]) -> str:
    return f"{VALUES}{keys_pk}{orjson.dumps(values).decode()}"


def _walk(node: dict[str, Any], path: list[str], paths: list[list[str]], values: list[Any]) -> None:
    """Key paths and values in the order a JSON writer meets them: rebuilding the object from
    them in this order gives back its keys in theirs."""
    for key, value in node.items():
        if value.__class__ is dict and value:
            _walk(value, [*path, key], paths, values)
        else:
            paths.append([*path, key])
            values.append(value)


def _rebuilt(paths: list[list[str]], values: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (*parents, last), value in zip(paths, values, strict=True):
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def change(base_pk: int, base: dict[str, Any], body: str) -> str | None:
    """The change from `base` (the evidence stored under `base_pk`) to the evidence `body`, as
    stored; None when it would not be shorter than `body`, or would not give it back exactly."""
    new = orjson.loads(body)
    if not isinstance(new, dict):
        return None
    ops = _numbered(_ops(base, new, []), base)
    stored = orjson.dumps([base_pk, ops]).decode()
    if (
        len(stored) >= len(body)
        or orjson.dumps(_applied(orjson.loads(orjson.dumps(base)), ops)).decode() != body
    ):
        return None
    return stored


def resolved(body: str, stored: dict[int, str], paths: dict[int, list[list[str]]] | None = None) -> str:
    """The evidence (JSON) a stored body stands for; `stored` holds every body it refers to
    (reference), `paths` the key paths parsed so far (many bodies share them)."""
    if body.startswith("{"):
        return body
    return orjson.dumps(_object(body, stored, {} if paths is None else paths)).decode()


def resolved_object(
    body: str, stored: dict[int, str], paths: dict[int, list[list[str]]] | None = None
) -> dict[str, Any]:
    """resolved(), as a fresh object."""
    return _object(body, stored, {} if paths is None else paths)


def _object(body: str, stored: dict[int, str], paths: dict[int, list[list[str]]]) -> dict[str, Any]:
    if body.startswith(VALUES):
        start = body.index("[")
        keys_pk = int(body[1:start])
        found = paths.get(keys_pk)
        if found is None:
            found = paths[keys_pk] = orjson.loads(stored[keys_pk][1:])
        return _rebuilt(found, orjson.loads(body[start:]))
    if body.startswith("["):
        base_pk, ops = orjson.loads(body)
        return _applied(_object(stored[int(base_pk)], stored, paths), ops)
    return orjson.loads(body)  # type: ignore[no-any-return]


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


def _numbered(ops: list[Change], base: dict[str, Any]) -> list[Change]:
    """The ops with each path the base has given as its number among the base's key paths."""
    numbers = {tuple(path): i for i, path in enumerate(_leaf_paths(base))}
    return [[numbers.get(tuple(op[0]), op[0]), *op[1:]] for op in ops]


def _leaf_paths(node: dict[str, Any]) -> list[list[str]]:
    """The key paths of the evidence, in the order of its stored key paths (shape_of)."""
    paths: list[list[str]] = []
    _walk(node, [], paths, [])
    return paths


def _applied(base: dict[str, Any], ops: list[Change]) -> dict[str, Any]:
    """`base` (a fresh object: changed in place) with the changes made; a numbered path is
    the base's as it was before any of them."""
    leaves = _leaf_paths(base) if any(op[0].__class__ is int for op in ops) else []
    for op in ops:
        *parents, last = leaves[op[0]] if op[0].__class__ is int else op[0]
        node = base
        for key in parents:
            node = node.setdefault(key, {})
        if len(op) == 2:
            node[last] = op[1]
        else:
            node.pop(last, None)
    return base
