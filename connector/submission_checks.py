"""Checks on one submitted STIX object, before it meets the store: is it valid STIX 2.1, can the
store write it, is its SCO id its own; and the small helpers the submission flow shares
(references, TLP, the official marking definitions).

Deny by default, but not stricter than STIX: what the spec allows is accepted (UUIDv4 SCO ids,
any pattern), and what the clearinghouse cannot route is kept for the submitter's inbox rather
than refused (connector/observables.py decides what can be routed).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import stix2
from stix2patterns.v21.pattern import Pattern
from stix2validator import ValidationOptions, validate_instance
from stix2validator.errors import ValidationError as ValidatorInputError

from connector.observables import mask_user_info
from connector.store import schema as t
from connector.store.objects import SCO_TYPES, object_version_key
from connector.tlp import TLP1_MARKING_IDS, TLP2_MARKING_IDS, TLP_LEVELS, marking_definition

_OPTIONS = ValidationOptions(version="2.1")
_TYPE_MAX = t.stix_objects.c.type.type.length or 0
_ID_MAX = t.stix_objects.c.stix_id.type.length or 0
TLP_BY_MARKING = {v: k for k, v in TLP2_MARKING_IDS.items()} | TLP1_MARKING_IDS
OFFICIAL_MARKINGS = frozenset(TLP_BY_MARKING)
# What a reference can be: a STIX identifier. Anything else under a `_ref` key (a custom
# property may hold any text, NUL characters included) is never looked up.
STIX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,126}--[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
MESSAGE_MAX = 2000  # characters of a refusal: a validator message can quote a 10 MB value
# Containers nested deeper than this are refused. STIX objects nest a few levels (extensions,
# hashes, external references); orjson writes at most 255 and the validator recurses per level,
# so an object a few hundred levels deep passed validation and then failed the whole
# submission when it was written.
MAX_DEPTH = 100


class _TooDeep:
    """Stands where a streaming reader stopped building (taxii_server/envelope.py): the
    object is refused as nested too deep without the deep part ever being built."""

    def __repr__(self) -> str:
        return "<nested too deep>"


TOO_DEEP = _TooDeep()


def object_version(obj: dict[str, Any]) -> str:
    return str(obj.get("modified") or obj.get("created") or "")


def validate(item: Any) -> str | None:
    """The verdict on one object: None when it is accepted, else why not. A validator message
    can quote the value it refuses: user info in URLs is masked in it too (it is stored, in the
    status resource and run rows), and it is cut at MESSAGE_MAX characters."""
    problem = _validate(item)
    if problem is not None and "@" in problem:
        problem = mask_user_info(problem)
    if problem is not None and len(problem) > MESSAGE_MAX:
        problem = problem[: MESSAGE_MAX - 10] + " ... (cut)"
    return problem


def _validate(item: Any) -> str | None:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("id"), str)
        or not isinstance(item.get("type"), str)
    ):
        return "not a STIX object: it must be a JSON object with string 'type' and 'id'"
    if item.get("type") == "bundle":
        return "a bundle cannot be an object of a submission"
    if len(item["type"]) > _TYPE_MAX or len(item["id"]) > _ID_MAX:
        # The spec allows types of 250 characters; the store's columns are narrower, and
        # PostgreSQL refusing the row would fail the whole submission.
        return f"type or id too long: the store keeps types of {_TYPE_MAX} and ids of {_ID_MAX} characters"
    problem = storage_problem(item)
    if problem:
        return problem
    if item.get("spec_version", "2.1") != "2.1":
        # The 2.1 validator accepts "2.0" (its schemas' enum), but such an object is neither
        # 2.1 nor 2.0 (2.0 objects have no spec_version) and stix2.parse refuses it.
        return f"spec_version {item.get('spec_version')!r}: only STIX 2.1 objects are accepted"
    try:
        result = validate_instance(item, _OPTIONS)
    except ValidatorInputError as exc:
        return str(exc)
    except Exception as exc:  # the validator trips over some wrongly typed properties
        return f"not valid STIX 2.1: {type(exc).__name__}: {exc}"
    if not result.is_valid:
        return "; ".join(str(e) for e in result.errors)
    try:
        object_version_key(item)
    except (ValueError, OverflowError) as exc:  # the validator checked the format; a backstop
        return f"{item['id']}: its version (modified or created) is not a usable timestamp: {exc}"
    return sco_id_problem(item) or credential_problem(item)


def storage_problem(item: dict[str, Any]) -> str | None:
    """Why the store cannot write this object as JSON (None when it can): nesting deeper than
    MAX_DEPTH, or a value orjson cannot write (an integer beyond 64 bits) or would write as
    something else (an infinite number becomes null). Found here, the one
    object is refused; found when the submission is written, it failed every object of it (a
    500 on the inbox, a failed run for `ingest --format stix`). Walked without recursion, so
    no depth makes this check itself fail."""
    stack: list[tuple[Any, int]] = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if value is TOO_DEEP or (depth > MAX_DEPTH and isinstance(value, dict | list)):
            return f"{item['id']}: nested more than {MAX_DEPTH} levels deep; such objects are not kept"
        if isinstance(value, float) and not math.isfinite(value):  # `1e400` read as infinity
            return f"{item['id']}: holds a number out of range (JSON would store it as null)"
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    try:
        orjson.dumps(item)
    except orjson.JSONEncodeError as exc:
        return f"{item['id']}: cannot be stored as JSON ({exc})"
    return None


def credential_problem(obj: dict[str, Any]) -> str | None:
    """A raw credential (user-account.credential) is personal data the clearinghouse never
    takes: as a property, or as what a pattern compares an account's credential with."""
    refused = f"{obj['id']}: raw credentials are not accepted; send the account without them"
    if "credential" in obj or "credential_last_changed" in obj:
        return refused
    if obj.get("type") == "indicator" and obj.get("pattern_type") == "stix":
        try:
            comparisons = Pattern(obj["pattern"]).inspect().comparisons
        except Exception:
            return None  # the validator parsed it; routing holds back what it cannot read
        for path, _operator, _value in comparisons.get("user-account", []):
            if "credential" in path:
                return refused
    return None


def sco_id_problem(obj: dict[str, Any]) -> str | None:
    """An SCO whose UUIDv5 id is not the one its content gives (STIX 2.1 section 2.9) is refused:
    such ids are how observables are shared, so a forged one would swap one host for another.
    Other ids (UUIDv4: the spec's SHOULD for v5 is no MUST) are accepted; they belong to the
    source that sent them first, like any SDO's (connector.submission)."""
    cls = stix2.v21.OBJ_MAP_OBSERVABLE.get(obj["type"])
    if cls is None:
        return None
    try:
        # No custom properties: an SCO is shared by every notification about that value, so a
        # submitter must not be able to attach its own notes to other partners' notifications.
        rebuilt = cls(**{k: v for k, v in obj.items() if k != "id"}, allow_custom=False)
    except Exception as exc:
        return f"{obj['id']}: not a valid {obj['type']}: {exc}"
    if content_addressed(obj) and str(rebuilt.id) != obj["id"]:
        return f"{obj['id']}: id does not match the observable's content (expected {rebuilt.id})"
    return None


def content_addressed(obj: dict[str, Any]) -> bool:
    """An SCO with a UUIDv5 id: named by its content, the same for every source."""
    if obj.get("type") not in SCO_TYPES:
        return False
    try:
        return uuid.UUID(str(obj["id"]).split("--", 1)[1]).version == 5
    except (ValueError, IndexError):
        return False


def sco_id(obj: dict[str, Any]) -> str:
    """The UUIDv5 id of an SCO's content (stix2's own computation)."""
    cls = stix2.v21.OBJ_MAP_OBSERVABLE[obj["type"]]
    return str(cls(**{k: v for k, v in obj.items() if k != "id"}, allow_custom=False).id)


def references(obj: Any) -> Iterator[str]:
    """Every id the object refers to (`*_ref`, `*_refs`, nested), markings included, in the
    order they are written (recursive: objects here are at most MAX_DEPTH deep)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith("_ref") and isinstance(value, str):
                yield value
            elif key.endswith("_refs") and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            elif isinstance(value, dict | list):
                yield from references(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from references(item)


def rewrite_references(obj: Any, renamed: dict[str, str]) -> Any:
    """The object with references to renamed ids changed; the same object when none is."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        changed = False
        for key, value in obj.items():
            if key.endswith("_ref") and isinstance(value, str) and value in renamed:
                new: Any = renamed[value]
            elif key.endswith("_refs") and isinstance(value, list):
                new = [renamed.get(v, v) if isinstance(v, str) else v for v in value]
                new = value if new == value else new
            elif isinstance(value, dict | list):
                new = rewrite_references(value, renamed)
            else:
                new = value
            changed |= new is not value
            out[key] = new
        return out if changed else obj
    if isinstance(obj, list):
        items = [rewrite_references(v, renamed) for v in obj]
        return items if any(a is not b for a, b in zip(items, obj, strict=True)) else obj
    return obj


def official_marking(marking_id: str) -> dict[str, Any]:
    """The published definition of a TLP marking (2.0 from OASIS; 1.0 as stix2 ships it)."""
    level = TLP_BY_MARKING[marking_id]
    if marking_id in TLP2_MARKING_IDS.values():
        return marking_definition(level)
    tlp1 = {
        "clear": stix2.v21.TLP_WHITE,
        "green": stix2.v21.TLP_GREEN,
        "amber": stix2.v21.TLP_AMBER,
        "red": stix2.v21.TLP_RED,
    }[level]
    return dict(orjson.loads(tlp1.serialize()))


def tlp_of(obj: dict[str, Any], default: str) -> str:
    """The most restrictive TLP on the object, object-level or granular; else the default."""
    refs = list(obj.get("object_marking_refs", []))
    refs += [g.get("marking_ref") for g in obj.get("granular_markings", []) if isinstance(g, dict)]
    levels = [TLP_BY_MARKING[m] for m in refs if m in TLP_BY_MARKING]
    if not levels:
        return default
    return max(levels, key=lambda level: TLP_LEVELS[level])
