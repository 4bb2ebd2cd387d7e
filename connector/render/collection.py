"""A collection as TAXII serves it: delivered notification versions rendered to STIX, merged in
date_added order with the stored objects (researchers' STIX, and objects of the old layout).

Paging is a keyset on date_added: the delivery log is read in blocks from `added_after` on, so a
page costs the same on page 1 and page 10,000. A version's objects have date_added stamp + slot;
a page may end inside a version, and the next one starts after the last object it gave.

Which versions an object has in the collection comes from the entries' flags (superseded,
earlier); where objects were removed (TAXII DELETE) it is worked out from the notification's
versions instead, so match[version] keeps its meaning: `last` is the latest version the
collection holds, `first` its first, `all` every one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from connector.render.stix import Rendered, notification_of, notifications_owning, own_ids, render
from connector.store import Member, Reader, Store, VersionFilter
from connector.store.deliveries import EARLIER, RECHECK, SHARED_BITS, SUPERSEDED
from connector.store.records import EvidenceKey, Kind, NotificationRecord, VersionRecord, digest
from connector.store.times import timestamp_to_us, version_key
from connector.store.writer import SLOTS

ENTRIES_PER_ROUND = 256  # entries resolved together (their versions, notifications, evidence)


def object_version(obj: dict[str, Any]) -> str:
    """An object's version as stored and compared: modified, else created, else '' (SCOs)."""
    return version_key(obj.get("modified") or obj.get("created"))


@dataclass
class _Context:
    """What rendering a round of entries needs, loaded once per round."""

    reader: Reader
    kinds: dict[int, Kind] = field(default_factory=dict)
    partners: dict[str, str] = field(default_factory=dict)
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    notifications: dict[int, NotificationRecord] = field(default_factory=dict)
    evidence: dict[EvidenceKey, dict[str, Any]] = field(default_factory=dict)

    def load(self, stamps: Iterable[int]) -> None:
        wanted = [s for s in stamps if s not in self.versions]
        if wanted:
            self.versions.update(self.reader.versions(wanted))
        pks = {self.versions[s].notification for s in stamps if s in self.versions}
        missing = [pk for pk in pks if pk not in self.notifications]
        if missing:
            self.notifications.update(self.reader.notifications(missing))
        self._details([self.versions[s] for s in stamps if s in self.versions])

    def load_notifications(self, pks: Iterable[int]) -> None:
        missing = [pk for pk in pks if pk not in self.notifications]
        if missing:
            self.notifications.update(self.reader.notifications(missing))

    def _details(self, versions: Sequence[VersionRecord]) -> None:
        kinds, bodies = set(), set()
        for v in versions:
            n = self.notifications[v.notification]
            kinds.add(v.kind_of(n))
            bodies.add(v.evidence_of(n))
        missing_kinds = kinds - set(self.kinds)
        if missing_kinds:
            self.kinds.update(self.reader.kinds(missing_kinds))
        missing = bodies - set(self.evidence)
        if missing:
            self.evidence.update(self.reader.evidence_objects(missing))
        if not self.partners:
            self.partners = self.reader.partner_names()

    def render(self, stamp: int) -> tuple[NotificationRecord, VersionRecord, list[Rendered]]:
        v = self.versions[stamp]
        n = self.notifications[v.notification]
        kind = self.kinds[v.kind_of(n)]
        objects = render(
            n, v, kind, self.evidence[v.evidence_of(n)], self.partners.get(kind.partner, kind.partner)
        )
        return n, v, objects

    def chain(self, n: NotificationRecord) -> list[VersionRecord]:
        """The notification's rendered versions, newest first (stored ones of the old layout are
        not entries: the stored page serves them)."""
        return [v for v in self.reader.version_chain(n.latest, self.versions) if v.renderer != 0]


def _member(date_added: int, obj: dict[str, Any], v: VersionRecord | None = None) -> Member:
    """A served object; a sighting names its notification and version (serving it delivers)."""
    if v is not None and obj["type"] == "sighting":
        return Member(
            date_added, orjson.dumps(obj).decode(), obj["id"], object_version(obj), v.notification, v.stamp
        )
    return Member(date_added, orjson.dumps(obj).decode(), obj["id"], object_version(obj))


class CollectionView:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- pages ---------------------------------------------------------------------------------

    def page(
        self,
        collection_id: str,
        *,
        after: int | None,
        limit: int,
        types: Sequence[str] = (),
        ids: Sequence[str] = (),
        versions: VersionFilter | None = None,
    ) -> list[Member]:
        """Up to `limit` objects with date_added > after, in date_added order (keyset)."""
        versions = versions or VersionFilter()
        number = self.store.collection_number(collection_id)
        with self.store.reading() as reader:
            stored = reader.stored_page(
                collection_id, after=after, limit=limit, types=types, ids=ids, versions=versions
            )
            if number is None:
                return stored
            if ids:
                rendered: Iterator[Member] = iter(self._by_ids(reader, number, ids, after, types, versions))
            else:
                rendered = self._walk(reader, number, after, types, versions)
            out = []
            for member in heapq.merge(stored, rendered, key=lambda m: m.date_added):
                out.append(member)
                if len(out) >= limit:
                    break
            return out

    def _walk(
        self, reader: Reader, number: int, after: int | None, types: Sequence[str], versions: VersionFilter
    ) -> Iterator[Member]:
        """The collection's delivered objects above `after` that pass the filters, in order."""
        context = _Context(reader)
        wanted_types = set(types)
        position = after
        while True:
            blocks = reader.blocks_after(number, position, 4)
            entries = [
                (stamp, bits)
                for block in blocks
                for stamp, bits in block.entries
                if after is None or stamp + SLOTS - 1 > after
            ]
            for start in range(0, len(entries), ENTRIES_PER_ROUND):
                chunk = entries[start : start + ENTRIES_PER_ROUND]
                yield from self._round(context, number, chunk, after, wanted_types, versions)
                if len(context.versions) > 50_000:  # a long walk must not hold everything it read
                    context = _Context(reader, kinds=context.kinds, partners=context.partners)
            if len(blocks) < 4:
                return
            position = blocks[-1].last

    def _round(
        self,
        context: _Context,
        number: int,
        entries: list[tuple[int, int]],
        after: int | None,
        types: set[str],
        versions: VersionFilter,
    ) -> Iterator[Member]:
        candidates = [(stamp, bits) for stamp, bits in entries if _may_give(bits, versions)]
        if not candidates:
            return
        context.load([stamp for stamp, _ in candidates])
        removed = context.reader.removed_between(number, candidates[0][0], candidates[-1][0] + SLOTS - 1)
        for stamp, bits in candidates:
            n, v, objects = context.render(stamp)
            own = _own_versions(context, number, n, v, objects, removed) if bits & RECHECK else None
            for item in objects:
                date_added = stamp + item.slot
                if (after is not None and date_added <= after) or date_added in removed:
                    continue
                if types and item.obj["type"] not in types:
                    continue
                if item.shared:
                    if bits >> item.slot & 1 and _shared_passes(item.obj, date_added, versions):
                        yield _member(date_added, item.obj)
                elif own is not None:
                    if _passes(date_added, own.get(item.slot, []), v.modified, item.obj, versions):
                        yield _member(date_added, item.obj, v)
                elif _own_passes(bits, item.obj, versions):
                    yield _member(date_added, item.obj, v)

    def _by_ids(
        self,
        reader: Reader,
        number: int,
        ids: Sequence[str],
        after: int | None,
        types: Sequence[str],
        versions: VersionFilter,
    ) -> list[Member]:
        """The delivered versions of these ids in the collection that pass the filters."""
        context = _Context(reader)
        wanted = set(ids)
        out: list[Member] = []
        owners = reader.notification_pks_by_id(wanted)
        context.load_notifications({pk for pks in owners.values() for pk in pks})
        candidates = list(context.notifications.values())
        missing_kinds = {n.kind for n in candidates} - set(context.kinds)
        if missing_kinds:
            context.kinds.update(reader.kinds(missing_kinds))
        for n in candidates:
            # A located id finds every notification of its subject: only its owner is walked.
            if wanted.isdisjoint(own_ids(notification_of(n, context.kinds[n.kind], {}))):
                continue
            chain = [v for v in context.chain(n) if number in v.recipients]
            context.load([v.stamp for v in chain])
            rendered = {v.stamp: context.render(v.stamp)[2] for v in chain}
            removed = reader.removed_in(number, [v.stamp + i.slot for v in chain for i in rendered[v.stamp]])
            for v in chain:
                objects = rendered[v.stamp]
                own = _own_versions(context, number, n, v, objects, removed)
                for item in objects:
                    date_added = v.stamp + item.slot
                    if item.shared or item.obj["id"] not in wanted or date_added in removed:
                        continue
                    if _passes(date_added, own.get(item.slot, []), v.modified, item.obj, versions):
                        out.append(_member(date_added, item.obj, v))
        held = reader.shared(number, [digest(i) for i in wanted])
        for _key, (date_added, stored) in held.items():
            if stored:
                continue  # a stored object: the stored page has it
            stamp = date_added - date_added % SLOTS
            context.load([stamp])
            if stamp not in context.versions:
                continue
            _n, _v, objects = context.render(stamp)
            item = next((i for i in objects if stamp + i.slot == date_added), None)
            if (
                item is not None
                and item.obj["id"] in wanted
                and _shared_passes(item.obj, date_added, versions)
            ):
                out.append(_member(date_added, item.obj))
        out = [
            m
            for m in out
            if (after is None or m.date_added > after)
            and (not types or orjson.loads(m.body)["type"] in types)
        ]
        return sorted(out, key=lambda m: m.date_added)

    # --- counting and removing -----------------------------------------------------------------

    def count(self, collection_id: str) -> int:
        """The number of objects the collection holds at their latest version."""
        total, after = 0, None
        while True:
            page = self.page(collection_id, after=after, limit=5000)
            total += len(page)
            if len(page) < 5000:
                return total
            after = page[-1].date_added

    def remove(self, collection_id: str, stix_id: str, versions: VersionFilter) -> int:
        """Take versions of an object out of a collection (TAXII DELETE); returns how many."""
        from connector.store import deliveries, objects, outbox

        number = self.store.collection_number(collection_id)
        with self.store.writing() as w:
            removed = objects.remove_members(w, collection_id, number or 0, stix_id, versions)
            if number is None:
                return removed
            from connector.store.store import Reader as _Reader

            reader = _Reader(w.conn)
            gone = [m.date_added for m in self._by_ids(reader, number, [stix_id], None, (), versions)]
            if not gone:
                return removed
            deliveries.remove(w, number, gone)
            held = reader.shared(number, [digest(stix_id)])
            if digest(stix_id) in held and held[digest(stix_id)][0] in gone:
                deliveries.drop_shared(w, number, [digest(stix_id)])
            # The flags of this notification's entries no longer tell its latest and first here.
            owners = [n.pk for n in notifications_owning(reader, stix_id)]
            # MISP events built from it are out of date (the stored feed events among them).
            recipient = self.store.collection_owners().get(number)
            if recipient is not None:
                outbox.changed(w, recipient, owners)
            for n in reader.notifications(owners).values():
                stamps = [
                    v.stamp
                    for v in reader.version_chain(n.latest)
                    if v.renderer != 0 and number in v.recipients
                ]
                deliveries.change_bits(w, {number: {s: (RECHECK, 0) for s in stamps}})
            return removed + len(gone)


def _may_give(bits: int, versions: VersionFilter) -> bool:
    """Whether an entry can give any object under this filter, without loading it."""
    if bits & SHARED_BITS or bits & RECHECK or versions.all or versions.exact:
        return True
    if versions.last and not bits & SUPERSEDED:
        return True
    return bool(versions.first and not bits & EARLIER)


def _own_passes(bits: int, obj: dict[str, Any], versions: VersionFilter) -> bool:
    """A notification's own object, by the entry's flags."""
    if versions.all:
        return True
    if versions.last and not bits & SUPERSEDED:
        return True
    if versions.first and not bits & EARLIER:
        return True
    return bool(versions.exact) and object_version(obj) in versions.exact


def _shared_passes(obj: dict[str, Any], date_added: int, versions: VersionFilter) -> bool:
    """A shared object has one version in a collection: its modified (created), or, without
    either (SCOs), when it was added."""
    if versions.all or versions.last or versions.first:
        return True
    version = object_version(obj)
    if version:
        return version in versions.exact
    return any(timestamp_to_us(v) == date_added for v in versions.exact)


def _own_versions(
    context: _Context,
    number: int,
    n: NotificationRecord,
    v: VersionRecord,
    objects: list[Rendered],
    removed: set[int],
) -> dict[int, list[int]]:
    """Slot -> the date_added values of that own object's versions the collection still holds
    (worked out from the notification's versions, where flags cannot be trusted)."""
    chain = [c for c in context.chain(n) if number in c.recipients]
    out: dict[int, list[int]] = {}
    for item in objects:
        if item.shared:
            continue
        held = [c.stamp + item.slot for c in chain]
        out[item.slot] = [
            d for d in held if d not in removed and d not in _removed_elsewhere(context, number, d, removed)
        ]
    return out


def _removed_elsewhere(context: _Context, number: int, date_added: int, known: set[int]) -> set[int]:
    """Removal of a version outside the set already read (another round's range)."""
    if date_added in known:
        return {date_added}
    return context.reader.removed_in(number, [date_added])


def _passes(
    date_added: int, held: list[int], modified: int, obj: dict[str, Any], versions: VersionFilter
) -> bool:
    """An own object's version, by the versions of it the collection holds."""
    if versions.all:
        return True
    if versions.last and held and date_added == max(held):
        return True
    if versions.first and held and date_added == min(held):
        return True
    return bool(versions.exact) and object_version(obj) in versions.exact
