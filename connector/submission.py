"""STIX 2.1 submissions: researchers' bundles and TAXII inbox POSTs, into the clearinghouse.

Each object is validated on its own with the OASIS stix2-validator; an invalid one is rejected
with the validator's message while the valid ones beside it are kept. Accepted objects are
routed like any notification, by the observables they carry (addresses, domains, URLs, e-mail
addresses; directly, through observed-data, sightings, or simple indicator patterns), and
delivered with the objects they reference from the same submission.

Deny by default, because a submission is input from outside:
- an object whose observables belong to two different recipients is refused (delivering it
  whole would show each recipient the other's hosts);
- an id that already exists under another source (a partner's, or the clearinghouse's own
  notifications) is refused, so nobody can publish a "newer version" of somebody else's object;
- referenced objects are taken only from the same submission, never from the store, so a
  reference cannot pull another recipient's data into a collection.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import stix2
from stix2patterns.v21.pattern import Pattern
from stix2validator import ValidationOptions, validate_instance
from stix2validator.errors import ValidationError as ValidatorInputError

from connector.collections import recipient_collection_id
from connector.config import Config
from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network, is_ip, url_host
from connector.routing import Match, Policy, Router
from connector.stix.ids import timestamp
from connector.store import Store, Writer
from connector.store import objects as stored
from connector.store import schema as t
from connector.store.notifications import notification_pks_by_id
from connector.store.objects import SCO_TYPES as _SCO_TYPES
from connector.store.objects import object_version_key
from connector.store.records import digest
from connector.tlp import TLP1_MARKING_IDS, TLP2_MARKING_IDS, TLP_LEVELS, marking_definition

_OPTIONS = ValidationOptions(version="2.1")
_TYPE_MAX = t.stix_objects.c.type.type.length or 0
_ID_MAX = t.stix_objects.c.stix_id.type.length or 0
_TLP_BY_MARKING = {v: k for k, v in TLP2_MARKING_IDS.items()} | TLP1_MARKING_IDS
_OFFICIAL_MARKINGS = set(_TLP_BY_MARKING)
_ROUTABLE_PATTERN_TYPES = {"ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr"}
_PATTERN_VALUE = re.compile(
    r"\b(ipv4-addr|ipv6-addr|domain-name|url|email-addr):value\s*=\s*'((?:[^'\\]|\\.)*)'"
)
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


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int  # position in the submission
    id: str | None
    version: str | None
    message: str | None = None  # None: accepted

    @property
    def ok(self) -> bool:
        return self.message is None


@dataclass
class SubmissionResult:
    outcomes: list[Outcome] = field(default_factory=list)
    per_recipient: Counter[str] = field(default_factory=Counter)
    suppressed_tlp: Counter[str] = field(default_factory=Counter)
    routed: int = 0
    unrouted: int = 0
    opted_out: int = 0
    # Versioning as for every feed: a version the store holds already is unchanged (and is
    # neither routed nor counted again); another version of a stored id is an update.
    new: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def object_version(obj: dict[str, Any]) -> str:
    return str(obj.get("modified") or obj.get("created") or "")


def validate(item: Any) -> str | None:
    """The validator's verdict on one object: None when valid, else its messages."""
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
    return sco_id_problem(item) or pattern_problem(item) or credential_problem(item)


def storage_problem(item: dict[str, Any]) -> str | None:
    """Why the store cannot write this object as JSON (None when it can): nesting deeper than
    MAX_DEPTH, or a value orjson cannot write (an integer beyond 64 bits). Found here, the one
    object is refused; found when the submission is written, it failed every object of it (a
    500 on the inbox, a failed run for `ingest --format stix`). Walked without recursion, so
    no depth makes this check itself fail."""
    stack: list[tuple[Any, int]] = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if value is TOO_DEEP or (depth > MAX_DEPTH and isinstance(value, dict | list)):
            return f"{item['id']}: nested more than {MAX_DEPTH} levels deep; such objects are not kept"
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    try:
        orjson.dumps(item)
    except orjson.JSONEncodeError as exc:
        return f"{item['id']}: cannot be stored as JSON ({exc})"
    return None


def pattern_problem(obj: dict[str, Any]) -> str | None:
    """Indicators are routed by their pattern, so it must say plainly what it is about: only
    `<type>:value = '...'` comparisons of routable types (anything else could carry another
    recipient's hosts past the routing)."""
    if obj.get("type") != "indicator" or obj.get("pattern_type") != "stix":
        return None
    try:
        comparisons = Pattern(obj["pattern"]).inspect().comparisons
    except Exception as exc:
        return f"{obj['id']}: pattern not parsed: {exc}"
    for kind, items in comparisons.items():
        for path, operator, _value in items:
            if kind not in _ROUTABLE_PATTERN_TYPES or path != ["value"] or operator != "=":
                return (
                    f"{obj['id']}: only [<type>:value = '...'] comparisons of "
                    f"{', '.join(sorted(_ROUTABLE_PATTERN_TYPES))} are accepted in patterns"
                )
    return None


def credential_problem(obj: dict[str, Any]) -> str | None:
    """A raw credential (user-account.credential) is personal data the clearinghouse never takes."""
    if "credential" in obj or "credential_last_changed" in obj:
        return f"{obj['id']}: raw credentials are not accepted; send the account without them"
    return None


def sco_id_problem(obj: dict[str, Any]) -> str | None:
    """An SCO whose id is not the one its content gives (STIX 2.1 section 2.9) is refused:
    ids are how observables are shared, so a forged one would swap one host for another."""
    cls = stix2.v21.OBJ_MAP_OBSERVABLE.get(obj["type"])
    if cls is None:
        return None
    try:
        # No custom properties: an SCO is shared by every notification about that value, so a
        # submitter must not be able to attach its own notes to other partners' notifications.
        rebuilt = cls(**{k: v for k, v in obj.items() if k != "id"}, allow_custom=False)
    except Exception as exc:
        return f"{obj['id']}: not a valid {obj['type']}: {exc}"
    expected = str(rebuilt.id)
    if expected != obj["id"] and uuid.UUID(expected.split("--", 1)[1]).version == 5:
        return f"{obj['id']}: id does not match the observable's content (expected {expected})"
    return None


def observables_of(
    obj: dict[str, Any], by_id: dict[str, dict[str, Any]], depth: int = 0
) -> Iterator[tuple[str, str]]:
    """(kind, value) pairs the object is about: 'ip' or 'domain', own or through its links."""
    yield from _own_observables(obj)
    if depth >= 3:
        return
    for ref in _linked_refs(obj):
        target = by_id.get(ref)
        if target is not None:
            yield from observables_of(target, by_id, depth + 1)


def _own_observables(obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
    kind = obj.get("type")
    if kind in ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr"):
        yield from _observable(str(kind), obj.get("value"))
    elif kind == "indicator" and obj.get("pattern_type") == "stix":
        for match in _PATTERN_VALUE.finditer(obj.get("pattern", "")):
            yield from _observable(match.group(1), match.group(2).replace("\\'", "'"))


def _linked_refs(obj: dict[str, Any]) -> list[str]:
    """The references through which an object is about a host (not, say, its author)."""
    kind = obj.get("type")
    if kind == "observed-data":
        return list(obj.get("object_refs", []))
    if kind == "sighting":
        return [*obj.get("observed_data_refs", []), obj.get("sighting_of_ref", "")]
    if kind == "relationship":
        return [obj.get("source_ref", ""), obj.get("target_ref", "")]
    if kind == "network-traffic":
        return [obj.get("src_ref", ""), obj.get("dst_ref", "")]
    return []


def _observable(kind: str, value: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(value, str) or not value.strip():
        return
    try:
        if kind in ("ipv4-addr", "ipv6-addr"):
            # An address or a network: a network goes to the claim holding all of it, never
            # to the owner of its first address.
            yield ("ip", canonical_ip_or_network(value))
        elif kind == "domain-name":
            yield ("domain", canonical_domain(value))
        elif kind == "email-addr":
            yield ("domain", canonical_domain(value.rpartition("@")[2]))
        elif kind == "url":
            host = url_host(value)
            if host:
                yield ("ip", canonical_ip(host)) if is_ip(host) else ("domain", canonical_domain(host))
    except ValueError:
        return


def references(obj: Any) -> Iterator[str]:
    """Every id the object refers to (`*_ref`, `*_refs`, nested), markings included."""
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


def official_marking(marking_id: str) -> dict[str, Any]:
    """The published definition of a TLP marking (2.0 from OASIS; 1.0 as stix2 ships it)."""
    level = _TLP_BY_MARKING[marking_id]
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
    levels = [_TLP_BY_MARKING[m] for m in refs if m in _TLP_BY_MARKING]
    if not levels:
        return default
    return max(levels, key=lambda level: TLP_LEVELS[level])


class Submissions:
    def __init__(
        self,
        config: Config,
        store: Store,
        router: Router | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.router = router or Router(config)
        self.clock = clock or (lambda: datetime.now(UTC))

    def submit(
        self,
        *,
        partner: str,
        objects: Iterable[Any],
        username: str | None = None,
        inbox_collection: str | None = None,
    ) -> SubmissionResult:
        result = SubmissionResult()
        default_tlp = self.config.partner(partner).default_tlp
        valid, positions = self._validated(objects, result)

        def outcome(obj: dict[str, Any], message: str | None) -> Outcome:
            return Outcome(
                positions[(obj["id"], object_version_key(obj))], obj["id"], object_version(obj), message
            )

        with self.store.writing() as writer:
            ids = [o["id"] for o in valid]
            owners = stored.owners(writer.conn, ids)
            versions = stored.stored_versions(writer.conn, ids)
            existing = {i for i, _ in versions}
            owned = notification_pks_by_id(writer.conn, ids)  # the clearinghouse's own objects
            existing |= {i for i in ids if digest(i) in owned}
            accepted: list[dict[str, Any]] = []
            for obj in valid:
                problem = self._ownership_problem(obj, partner, owners, existing)
                if problem:
                    result.outcomes.append(outcome(obj, problem))
                else:
                    accepted.append(obj)
            unchanged = {o["id"] for o in accepted if (o["id"], object_version_key(o)) in versions}
            deliveries, refused = self._route(accepted, default_tlp, result, unchanged)
            for obj in accepted:
                result.outcomes.append(outcome(obj, refused.get(obj["id"])))
            accepted = [o for o in accepted if o["id"] not in refused]
            result.outcomes.sort(key=lambda o: o.index)
            for obj in accepted:
                if obj["id"] in unchanged:
                    result.unchanged += 1
                elif obj["id"] in existing:
                    result.updated += 1
                else:
                    result.new += 1
            if accepted:
                self._persist(writer, accepted, deliveries, inbox_collection)
                now = timestamp(self.clock())
                stored.add_owners(
                    writer,
                    [
                        {"stix_id": o["id"], "source": partner, "username": username, "first_seen": now}
                        for o in {o["id"]: o for o in accepted}.values()
                        if o["type"] not in _SCO_TYPES and o["id"] not in owners
                    ],
                )
        return result

    @staticmethod
    def _validated(
        objects: Iterable[Any], result: SubmissionResult
    ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
        """The objects the validator accepts, with their positions; the others become failures."""
        valid: list[dict[str, Any]] = []
        seen: dict[tuple[str, str], int] = {}
        for index, item in enumerate(objects):
            problem = validate(item)
            ident = item.get("id") if isinstance(item, dict) else None
            version = object_version(item) if isinstance(item, dict) else None
            # Versions compare as the store keys them: `...00Z` and `...00.000Z` are one version.
            if problem is None and (str(ident), object_version_key(item)) in seen:
                problem = "the same object version appears twice in this submission"
            if problem is not None:
                result.outcomes.append(Outcome(index, ident, version, problem))
                continue
            seen[(str(ident), object_version_key(item))] = index
            if ident in _OFFICIAL_MARKINGS:
                item = official_marking(str(ident))  # never store a look-alike of an official marking
                seen[(str(ident), object_version_key(item))] = index
            valid.append(item)
        return valid, seen

    def _persist(
        self,
        writer: Writer,
        accepted: list[dict[str, Any]],
        deliveries: dict[str, list[dict[str, Any]]],
        inbox_collection: str | None,
    ) -> None:
        every = {(o["id"], object_version(o)): o for o in accepted}
        for objs in deliveries.values():
            every.update({(o["id"], object_version(o)): o for o in objs})
        to_store = list(every.values())
        pks = stored.add_object_rows(
            writer, [stored.object_row(o, orjson.dumps(o).decode()) for o in to_store]
        )

        def entries(objs: Iterable[dict[str, Any]]) -> list[tuple[int, str, str, str]]:
            out = []
            for o in objs:
                key = (o["id"], object_version_key(o))
                out.append((pks[key], o["id"], o["type"], key[1]))
            return out

        numbers = self.store.collection_numbers()
        if inbox_collection:
            stored.add_members(writer, inbox_collection, numbers[inbox_collection], entries(accepted))
        for rid, objs in deliveries.items():
            collection_id = recipient_collection_id(rid)
            stored.add_members(writer, collection_id, numbers[collection_id], entries(objs))

    @staticmethod
    def _ownership_problem(
        obj: dict[str, Any],
        partner: str,
        owners: dict[str, str],
        existing: set[str],
    ) -> str | None:
        ident = obj["id"]
        if obj["type"] in _SCO_TYPES:
            return None  # content-addressed and custom-free (see sco_id_problem): the stored one stays
        if ident in _OFFICIAL_MARKINGS:
            return None
        # Deterministic (UUIDv5) ids are how the clearinghouse names its own objects; taking one
        # would let a submitter pre-empt a future notification. One message whether or not the
        # id exists, so nothing about the store can be probed.
        refused = f"{ident}: this id cannot be accepted from this source (use a random UUIDv4 id of your own)"
        if uuid.UUID(ident.split("--", 1)[1]).version == 5:
            return refused
        owner = owners.get(ident)
        if (owner is not None and owner != partner) or (owner is None and ident in existing):
            return refused
        return None

    def _route(
        self,
        objects: list[dict[str, Any]],
        default_tlp: str,
        result: SubmissionResult,
        unchanged: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
        """Per recipient, the objects it receives; and the objects refused, with why. Objects
        the store holds at this version already are delivered again (a no-op, or a recipient
        that now owns them) but not counted again."""
        by_id = {o["id"]: o for o in objects}
        deliveries: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        refused: dict[str, str] = {}
        delivered_ids: set[str] = set()
        opted_out: set[str] = set()
        for obj in objects:
            counted = obj["id"] not in unchanged
            observed = list(observables_of(obj, by_id))
            match, closure, problem = self._owner_and_closure(obj, by_id, observed)
            if problem:
                refused[obj["id"]] = problem
                continue
            if match is None:
                continue
            if self._opted_out(observed):
                opted_out.add(obj["id"])
                result.opted_out += int(counted)
                continue
            # Accounts and e-mail addresses are personal data: to the direct owner only.
            personal = any(m["type"] in ("email-addr", "user-account") for m in closure)
            decision = self.router.decide(match, Policy(tlp_of(obj, default_tlp), direct_owner_only=personal))
            if counted:
                result.suppressed_tlp.update(decision.suppressed_tlp)
                result.per_recipient.update(decision.recipients)
                result.routed += bool(decision.recipients)
            for rid in decision.recipients:
                bucket = deliveries.setdefault(rid, {})
                ceiling = self.config.recipient(rid).max_tlp
                for member in closure:
                    official = member["id"] in _OFFICIAL_MARKINGS  # a marking is not marked itself
                    if official or TLP_LEVELS[tlp_of(member, default_tlp)] <= TLP_LEVELS[ceiling]:
                        bucket[(member["id"], object_version(member))] = member
                        delivered_ids.add(member["id"])
        accounted = delivered_ids | refused.keys() | opted_out | unchanged
        result.unrouted = sum(1 for o in objects if o["id"] not in accounted)
        return {rid: list(objs.values()) for rid, objs in deliveries.items()}, refused

    def _owner_and_closure(
        self, obj: dict[str, Any], by_id: dict[str, dict[str, Any]], observed: list[tuple[str, str]]
    ) -> tuple[Match | None, list[dict[str, Any]], str | None]:
        """(the owner's match, what would be delivered, why it is refused): one owner or none."""
        found = {}
        for kind, value in observed:
            match = self._match(kind, value)
            if match is not None:
                found[match.owner] = match
        # The refusals name no recipient: partners never learn who the recipients are, and
        # with names an address paired with a known one would tell whose it is.
        if len(found) > 1:
            return (
                None,
                [],
                "its observables belong to different recipients; submit one object per organisation",
            )
        if not found:
            return None, [], None
        owner = next(iter(found))
        closure = self._closure(obj, by_id)
        foreign = self._foreign_owners(closure, owner)
        if foreign:
            return (
                None,
                [],
                "it references observables of more than one recipient; submit one object per organisation",
            )
        return found[owner], closure, None

    def _opted_out(self, observed: list[tuple[str, str]]) -> bool:
        return any(
            self.router.opt_out_rule(value if kind == "ip" else None, value if kind == "domain" else None)
            for kind, value in observed
        )

    def _match(self, kind: str, value: str) -> Match | None:
        return self.router.match_keys(ip=value) if kind == "ip" else self.router.match_keys(hostname=value)

    def _foreign_owners(self, closure: list[dict[str, Any]], owner: str) -> set[str]:
        """Owners other than `owner` of any observable anywhere in what would be delivered."""
        out = set()
        for member in closure:
            for kind, value in _own_observables(member):
                match = self._match(kind, value)
                if match is not None and match.owner != owner:
                    out.add(match.owner)
        return out

    @staticmethod
    def _closure(root: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The root and what it references in this submission, plus official TLP markings."""
        out, stack, seen = [], [root], {root["id"]}
        while stack:
            obj = stack.pop()
            out.append(obj)
            for ref in references(obj):
                target = by_id.get(ref) or (official_marking(ref) if ref in _OFFICIAL_MARKINGS else None)
                if target is not None and ref not in seen:
                    seen.add(ref)
                    stack.append(target)
        return out
