"""STIX 2.1 submissions: researchers' bundles and TAXII inbox POSTs, into the clearinghouse.

Each object is checked on its own (connector/submission_checks.py: valid STIX 2.1, writable,
its SCO id its own); a refused one is reported with why, the others beside it are kept.
Accepted objects are stored in the submitter's inbox and routed like any notification, by what
they are about (connector/observables.py: addresses, networks, host names, URLs and e-mail
addresses, as objects, embedded in observed-data, or compared in STIX patterns in any literal
form), and delivered with the objects they reference.

Deny by default, because a submission is input from outside:
- an object goes to a recipient only when everything that would travel with it (the object,
  what it references, every string in them) names no host of another recipient and no address
  it cannot route (a LIKE pattern on a domain); otherwise it is withheld: stored in the inbox,
  delivered to nobody, logged and counted for the operators. The submitter is told it was
  accepted, as for any other object: a refusal that depended on who owns an address would let
  a partner pair a known address with a probe and learn whether, and by whom, it is claimed;
- personal data (e-mail addresses, accounts, URLs with user info) goes to the direct owner only,
  and user info in URLs is masked before anything is stored;
- ids belong to the source that first sent them: nobody can publish a version of somebody
  else's object (or of the clearinghouse's own notifications), nor change the content of a
  version already stored;
- no object may name the Meldpunt, another partner, or an identity another source sent, as its
  author or anywhere else: it is refused (provenance is the submitter's own, or a third
  party's it quotes, never a colleague's);
- references resolve within the submission and, for what is not in it, among the objects this
  same source sent before (its inbox collection), never among another source's objects or the
  clearinghouse's: a reference cannot pull somebody else's data into a collection.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from connector.claims import with_claims
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.observables import Content, Observable, content_of, masked_copy
from connector.routing import Match, Policy, Router
from connector.stix.build import CLEARINGHOUSE_IDENTITY_ID, partner_identity_id
from connector.stix.ids import located_subject, timestamp
from connector.store import Store, Writer
from connector.store import objects as stored
from connector.store.notifications import notification_pks_by_id
from connector.store.objects import SCO_TYPES, object_version_key
from connector.store.records import digest
from connector.submission_checks import (
    MAX_DEPTH,
    OFFICIAL_MARKINGS,
    STIX_ID,
    TOO_DEEP,
    content_addressed,
    object_version,
    official_marking,
    references,
    rewrite_references,
    sco_id,
    tlp_of,
    validate,
)
from connector.tlp import TLP_LEVELS

__all__ = [
    "MAX_DEPTH",
    "TOO_DEEP",
    "Outcome",
    "SubmissionResult",
    "Submissions",
    "object_version",
    "validate",
]

log = logging.getLogger("meldpunt.submission")

LINK_DEPTH = 3  # links (observed-data, sighting, relationship ...) followed to route an object
STORED_REFERENCES_MAX = 10_000  # objects of the source's earlier submissions one submission pulls in
_PROVENANCE = (
    "it names an identity that is not the submitter's own (the Meldpunt's, another partner's, or "
    "one another source sent) as its author or in a reference; send objects in your own name"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int  # position in the submission
    id: str | None  # as submitted
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
    # Accepted, and delivered to nobody: what it carries concerns more than one recipient, or
    # names an address that cannot be routed. For operators only (run rows, the log).
    withheld: int = 0
    withheld_objects: list[tuple[int, str, str]] = field(default_factory=list)  # (index, id, why)
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


@dataclass(slots=True)
class _Item:
    """A valid object of the submission: where it was, what it was called, what is kept."""

    index: int
    id: str  # as submitted: the status and run rows name it so
    version: str
    obj: dict[str, Any]  # as kept: official markings replaced, user info masked, ids renamed


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
        self.router = router or Router(with_claims(config, store))
        self.clock = clock or (lambda: datetime.now(UTC))
        self._matches: dict[Observable, Match | None] = {}

    def submit(
        self,
        *,
        partner: str,
        objects: Iterable[Any],
        username: str | None = None,
        inbox_collection: str | None = None,
    ) -> SubmissionResult:
        """Check, store and deliver `objects` (any iterable: it is read once, each object
        checked as it comes, so only the valid ones are held)."""
        result = SubmissionResult()
        default_tlp = self.config.partner(partner).default_tlp
        items = self._validated(objects, result)
        with self.store.writing() as writer:
            accepted, versions, existing, owners = self._checked(writer, items, partner, result)
            objs = [i.obj for i in accepted]
            unchanged = {o["id"] for o in objs if (o["id"], object_version_key(o)) in versions}
            context = self._stored_references(writer, objs, inbox_collection)
            deliveries = self._route(objs, context, default_tlp, result, unchanged)
            index_of = {i.obj["id"]: (i.index, i.id) for i in accepted}
            result.withheld_objects = [
                (*index_of[kept_id], why) for _, kept_id, why in result.withheld_objects
            ]
            result.outcomes += [Outcome(i.index, i.id, i.version) for i in accepted]
            result.outcomes.sort(key=lambda o: o.index)
            for obj in objs:
                if obj["id"] in unchanged:
                    result.unchanged += 1
                elif obj["id"] in existing:
                    result.updated += 1
                else:
                    result.new += 1
            if objs:
                self._persist(writer, objs, deliveries, inbox_collection)
                now = timestamp(self.clock())
                stored.add_owners(
                    writer,
                    [
                        {"stix_id": o["id"], "source": partner, "username": username, "first_seen": now}
                        for o in {o["id"]: o for o in objs}.values()
                        if _owned(o) and o["id"] not in owners
                    ],
                )
        for index, stix_id, why in result.withheld_objects:
            log.info("submitted object withheld", extra={"object": stix_id, "index": index, "reason": why})
        return result

    # --- one object at a time ------------------------------------------------------------------

    @staticmethod
    def _validated(objects: Iterable[Any], result: SubmissionResult) -> list[_Item]:
        """The objects that pass the checks, as they are kept; the others become failures."""
        items: list[_Item] = []
        seen: set[tuple[str, str]] = set()
        renamed: dict[str, str] = {}
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
            seen.add((str(ident), object_version_key(item)))
            if ident in OFFICIAL_MARKINGS:
                kept = official_marking(str(ident))  # never store a look-alike of an official marking
            else:
                kept = masked_copy(item)  # user info in URLs: never stored unmasked
                if kept is not item and content_addressed(item):
                    new_id = sco_id(kept)  # its content changed, so its id does
                    if new_id != ident:
                        renamed[str(ident)] = new_id
                        kept = {**kept, "id": new_id}
            items.append(_Item(index, str(ident), version or "", kept))
        if renamed:
            for item_ in items:
                item_.obj = rewrite_references(item_.obj, renamed)
        return items

    def _checked(
        self, writer: Writer, items: list[_Item], partner: str, result: SubmissionResult
    ) -> tuple[list[_Item], set[tuple[str, str]], set[str], dict[str, str]]:
        """The items their source may send (ids, content, provenance), with the stored versions
        of their ids, the ids that exist, and the owners of ids and identities they name."""
        conn = writer.conn
        ids = sorted({i.obj["id"] for i in items})
        named = {r for i in items for r in references(i.obj) if r.startswith("identity--")}
        named = {r for r in named if STIX_ID.match(r)} - set(ids)
        owners = stored.owners(conn, ids + sorted(named))
        versions = stored.stored_versions(conn, ids)
        existing = {i for i, _ in versions}
        owned = notification_pks_by_id(conn, ids)  # the clearinghouse's own objects
        existing |= {i for i in ids if digest(i) in owned}
        again = [
            i.obj["id"]
            for i in items
            if _owned(i.obj) and (i.obj["id"], object_version_key(i.obj)) in versions
        ]
        bodies = stored.bodies(conn, sorted(set(again))) if again else {}
        foreign = {CLEARINGHOUSE_IDENTITY_ID} | {
            partner_identity_id(p.id) for p in self.config.partners if p.id != partner
        }
        accepted = []
        for item in items:
            problem = (
                self._ownership_problem(item.obj, partner, owners, existing)
                or _content_problem(item.obj, bodies)
                or _provenance_problem(item.obj, partner, owners, foreign)
            )
            if problem:
                result.outcomes.append(Outcome(item.index, item.id, item.version, problem))
            else:
                accepted.append(item)
        return accepted, versions, existing, owners

    @staticmethod
    def _ownership_problem(
        obj: dict[str, Any], partner: str, owners: dict[str, str], existing: set[str]
    ) -> str | None:
        if not _owned(obj):
            return None  # content-addressed and custom-free (sco_id_problem): the stored one stays
        ident = obj["id"]
        # Deterministic ids (UUIDv5, and located ids: connector/stix/ids.py) are how the
        # clearinghouse names its own objects; taking one would let a submitter pre-empt a
        # future notification. One message whether or not the id exists, so nothing about the
        # store can be probed.
        refused = f"{ident}: this id cannot be accepted from this source (use a random UUIDv4 id of your own)"
        if obj["type"] not in SCO_TYPES and (
            uuid.UUID(ident.split("--", 1)[1]).version == 5 or located_subject(ident) is not None
        ):
            return refused
        owner = owners.get(ident)
        if (owner is not None and owner != partner) or (owner is None and ident in existing):
            return refused
        return None

    def _stored_references(
        self, writer: Writer, objects: list[dict[str, Any]], inbox_collection: str | None
    ) -> dict[str, dict[str, Any]]:
        """What the objects reference (and that references ...) that is not in the submission,
        from the objects this source sent before: the latest version its inbox holds. stix2's
        TAXIICollectionSink posts one object per request, so a sighting's observed-data and
        SCOs arrive in requests of their own before it."""
        if not inbox_collection:
            return {}
        known = {o["id"] for o in objects}
        found: dict[str, dict[str, Any]] = {}
        wanted = {r for o in objects for r in references(o)}
        while wanted and len(found) < STORED_REFERENCES_MAX:
            ids = sorted(r for r in wanted - known - found.keys() - OFFICIAL_MARKINGS if STIX_ID.match(r))
            ids = ids[: STORED_REFERENCES_MAX - len(found)]
            if not ids:
                break
            wanted = set()
            for member in stored.page(writer.conn, inbox_collection, after=None, limit=len(ids), ids=ids):
                obj = orjson.loads(member.body)
                found[obj["id"]] = obj
                wanted |= set(references(obj))
        return found

    # --- routing -------------------------------------------------------------------------------

    def _route(
        self,
        objects: list[dict[str, Any]],
        context: dict[str, dict[str, Any]],
        default_tlp: str,
        result: SubmissionResult,
        unchanged: set[str],
    ) -> dict[str, list[dict[str, Any]]]:
        """Per recipient, the objects it receives. Objects the store holds at this version
        already are delivered again (a no-op, or a recipient that now owns them) but not
        counted again."""
        by_id = {**context, **{o["id"]: o for o in objects}}
        contents: dict[tuple[str, str], Content] = {}

        def content(obj: dict[str, Any]) -> Content:
            key = (obj["id"], object_version(obj))
            if key not in contents:
                contents[key] = content_of(obj)
            return contents[key]

        deliveries: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        delivered_ids: set[str] = set()
        held: set[str] = set()
        opted_out: set[str] = set()
        for obj in objects:
            counted = obj["id"] not in unchanged
            routing = list(self._routing_observables(obj, by_id, content))
            owners = {m.owner: m for m in map(self._match, routing) if m is not None}
            if not owners:
                continue  # unrouted: routed by what it is about, never by what it mentions
            closure = self._closure(obj, by_id)
            why = self._withholding(set(owners), closure, content)
            if why:
                held.add(obj["id"])
                result.withheld += int(counted)
                if counted:
                    result.withheld_objects.append((-1, obj["id"], why))  # its index: submit()
                continue
            match = next(iter(owners.values()))
            if self._opted_out(routing):
                opted_out.add(obj["id"])
                result.opted_out += int(counted)
                continue
            # Accounts, e-mail addresses, URLs with user info: to the direct owner only.
            personal = any(content(m).personal for m in closure)
            decision = self.router.decide(match, Policy(tlp_of(obj, default_tlp), direct_owner_only=personal))
            if counted:
                result.suppressed_tlp.update(decision.suppressed_tlp)
                result.per_recipient.update(decision.recipients)
                result.routed += bool(decision.recipients)
            for rid in decision.recipients:
                bucket = deliveries.setdefault(rid, {})
                ceiling = self.config.recipient(rid).max_tlp
                for member in closure:
                    official = member["id"] in OFFICIAL_MARKINGS  # a marking is not marked itself
                    if official or TLP_LEVELS[tlp_of(member, default_tlp)] <= TLP_LEVELS[ceiling]:
                        bucket[(member["id"], object_version(member))] = member
                        delivered_ids.add(member["id"])
        accounted = delivered_ids | held | opted_out | unchanged
        result.unrouted = sum(1 for o in objects if o["id"] not in accounted)
        return {rid: list(objs.values()) for rid, objs in deliveries.items()}

    def _routing_observables(
        self,
        obj: dict[str, Any],
        by_id: dict[str, dict[str, Any]],
        content: Callable[[dict[str, Any]], Content],
        depth: int = 0,
    ) -> Iterator[Observable]:
        """What the object is about: its own observables, and those of what it links to."""
        yield from content(obj).observables
        if depth >= LINK_DEPTH:
            return
        for ref in _linked_refs(obj):
            target = by_id.get(ref)
            if target is not None:
                yield from self._routing_observables(target, by_id, content, depth + 1)

    def _withholding(
        self, owners: set[str], closure: list[dict[str, Any]], content: Callable[[dict[str, Any]], Content]
    ) -> str | None:
        """Why what would be delivered must go to nobody (None: it may go to its owner). The
        reason is for operators; the submitter is told nothing of it."""
        if len(owners) > 1:
            return "its observables belong to more than one recipient"
        owner = next(iter(owners))
        for member in closure:
            found = content(member)
            if found.unroutable:
                return f"{member['id']}: {found.unroutable}"
            for observable in (*found.observables, *found.mentions):
                match = self._match(observable)
                if match is not None and match.owner != owner:
                    return f"{member['id']}: names a host of another recipient than the one it is about"
        return None

    def _opted_out(self, observed: list[Observable]) -> bool:
        return any(
            self.router.opt_out_rule(value if kind == "ip" else None, value if kind == "domain" else None)
            for kind, value in observed
        )

    def _match(self, observable: Observable) -> Match | None:
        if observable not in self._matches:
            kind, value = observable
            self._matches[observable] = (
                self.router.match_keys(ip=value) if kind == "ip" else self.router.match_keys(hostname=value)
            )
        return self._matches[observable]

    @staticmethod
    def _closure(root: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The root and what it references (this submission, the source's earlier objects),
        plus official TLP markings."""
        out, stack, seen = [], [root], {root["id"]}
        while stack:
            obj = stack.pop()
            out.append(obj)
            for ref in references(obj):
                target = by_id.get(ref) or (official_marking(ref) if ref in OFFICIAL_MARKINGS else None)
                if target is not None and ref not in seen:
                    seen.add(ref)
                    stack.append(target)
        return out

    # --- storing -------------------------------------------------------------------------------

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


def _owned(obj: dict[str, Any]) -> bool:
    """Whether the id belongs to the source that sends it first: everything but content-addressed
    SCOs (the same for every source) and the official TLP markings."""
    return not content_addressed(obj) and obj["id"] not in OFFICIAL_MARKINGS


def _content_problem(obj: dict[str, Any], bodies: dict[tuple[str, str], str]) -> str | None:
    """A version of an owned id that is stored with other content cannot change it: the stored
    body is what every collection serves, so the new one would be routed and the old delivered."""
    body = bodies.get((obj["id"], object_version_key(obj)))
    if body is None:
        return None
    before = orjson.loads(body)
    spelling = ("created", "modified")  # `...00Z` and `...00.000Z` are one version
    if {k: v for k, v in before.items() if k not in spelling} == {
        k: v for k, v in obj.items() if k not in spelling
    }:
        return None
    return (
        f"{obj['id']}: this version is stored with other content; a change needs a new version "
        "(a later `modified`; for an observable, a new id)"
    )


def _provenance_problem(
    obj: dict[str, Any], partner: str, owners: dict[str, str], foreign: set[str]
) -> str | None:
    for ref in references(obj):
        if ref in foreign or (ref.startswith("identity--") and owners.get(ref, partner) != partner):
            return f"{obj['id']}: {_PROVENANCE}"
    return None


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
