"""Recording a batch of notifications: versions of the record, routed, with their deliveries.

One batch, inside one write transaction:
1. the batch's notifications grouped by subject (partner, classification, identifier,
   observable); the stored notification of each subject looked up with its latest version;
2. per subject: the observation times it does not count yet. None: unchanged. Else a new
   version (a new notification when the subject is new), routed now;
3. per collection: one delivery entry per version, the shared objects it is first to bring
   there, and the previous version there marked superseded;
4. everything written in a few bulk statements, each sorted by its table's key.

Nothing is rendered here: a version is a row of a few numbers (what changed), and the STIX and
MISP renderings are made when they are read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from connector import feedback
from connector.collections import recipient_collection_id
from connector.notification import Notification
from connector.render.misp_grouping import misp_event_of
from connector.render.stix import CURRENT, Shape, notification_of, own_ids, shape
from connector.routing import Decision, Router
from connector.store import Writer, deliveries, notifications, outbox
from connector.store.deliveries import EARLIER, RECHECK, SUPERSEDED
from connector.store.evidence import CHANGE_DIGEST
from connector.store.evidence import change as evidence_change
from connector.store.evidence import shape_of as evidence_shape
from connector.store.evidence import values_body as evidence_values
from connector.store.records import EvidenceKey, Kind, NotificationRecord, VersionRecord, digest
from connector.store.times import day_text, moment_ms
from connector.store.writer import SLOTS

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from connector.config import Config
    from connector.counts import RunSummary
    from connector.store import Store

log = logging.getLogger("meldpunt.ingest")

# A notification's distinct observation times are its `count`. Each of its versions names two
# of them, its first_seen and last_seen; the observations table lists only the times no version
# names (a time between two others that came in one input, or late). A scan that sees a host
# again each day makes a version whose last_seen is the new time, so the table gets no row for
# it: listing every time from the third on added a row a notification a day. With up to two
# times nothing lies between them.
OBSERVATIONS_IMPLIED = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def subject_key(n: Notification) -> tuple[str, str, str, str]:
    """(partner, classification, identifier, observable): a notification without its day."""
    c = n.classification
    return (n.partner, f"{c.taxonomy}/{c.type}", c.identifier, n.observable)


def subject_digest(key: tuple[str, str, str, str]) -> int:
    return digest("\x1f".join(key))


def kind_values(n: Notification) -> tuple[Any, ...]:
    c = n.classification
    return (
        n.partner,
        n.feed,
        c.taxonomy,
        c.type,
        n.tlp,
        n.vulnerability,
        n.severity,
        n.case_id,
        n.direct_owner_only,
        n.discard_unrouted,
    )


class _Bounded(OrderedDict[Any, Any]):
    """A small LRU map: caches of an ingest must not grow with the input."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


@dataclass
class RecordingCache:
    """What an ingest keeps between batches (bounded): kinds, evidence bodies, partner names."""

    kinds: dict[tuple[Any, ...], int] = field(default_factory=dict)
    kind_records: dict[int, Kind] = field(default_factory=dict)
    evidence: _Bounded = field(default_factory=lambda: _Bounded(20_000))
    key_paths: _Bounded = field(default_factory=lambda: _Bounded(1_000))  # stored text -> pk
    partners: set[str] = field(default_factory=set)
    loaded: bool = False
    # The write transaction the evidence pks above were found or written in (see BatchRecorder).
    writer: Writer | None = None
    # What the input seen so far covers (for a scan that covers its case: connector/feedback.py
    # mark_gone): the kinds of its notifications, its earliest observation time (ms).
    kinds_seen: set[int] = field(default_factory=set)
    earliest: int | None = None

    def saw(self, kind: int, at: int) -> None:
        self.kinds_seen.add(kind)
        if self.earliest is None or at < self.earliest:
            self.earliest = at


@dataclass
class _Stored:
    """A subject's stored notification and its latest version."""

    record: NotificationRecord
    latest: VersionRecord


@dataclass(slots=True)  # one per delivery: hundreds of thousands in an ingest
class _Delivery:
    stamp: int
    notification: int
    shared: tuple[tuple[int, int], ...]  # (slot, digest of the id)
    bits: int = 0


class BatchRecorder:
    """Writes one batch of notifications into the record (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        router: Router,
        writer: Writer,
        summary: RunSummary,
        cache: RecordingCache,
        now: datetime,
        misp_group_by: dict[str, str],
        on_unrouted: Callable[[Notification], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.w = writer
        self.summary = summary
        self.cache = cache
        self.now_ms = moment_ms(now)
        self.misp_group_by = misp_group_by
        if cache.writer is not writer:
            # A new transaction: evidence (and key paths) known by pk in an earlier one may have
            # been rolled back with it, or removed since by forget or purge (which take the write
            # lock in between). Within one transaction nothing else writes: known again here.
            cache.evidence.clear()
            cache.key_paths.clear()
            cache.writer = writer
        self.numbers = store.collection_numbers()
        self.new_rows: list[tuple[Any, ...]] = []  # STORED_NOTIFICATION_COLUMNS: without `latest`
        self.new_heads: list[tuple[int, int]] = []  # (pk, stamp of its first version)
        self.versions: list[tuple[Any, ...]] = []
        self.latest: list[tuple[int, int]] = []
        self.observations: list[tuple[int, int]] = []
        self.deliveries: dict[int, list[_Delivery]] = {}
        self.superseded: dict[int, dict[int, tuple[int, int]]] = {}
        # collection -> stamp of a superseded entry -> the entry of the version after it there
        self.following: dict[int, dict[int, _Delivery]] = {}
        self.legacy_supersede: dict[str, list[str]] = {}
        self.misp_members: list[tuple[str, str, int]] = []
        self.misp_events: dict[tuple[str, str], str] = {}
        self.known_versions: dict[int, VersionRecord] = {}
        self.seen_again: list[tuple[int, tuple[int, ...], int]] = []  # (pk, collections, stamp)
        self._numbers_of: dict[tuple[str, ...], tuple[int, ...]] = {}
        self.current_evidence: dict[EvidenceKey, str] = {}  # key -> body: _load_current_evidence
        # The batch's bodies not known beforehand: the text each is stored as, and its digest.
        self.stored_text: dict[str, str] = {}
        self.body_digests: dict[str, int] = {}
        self.evidence_rows: list[tuple[int, int, str]] = []  # (pk, digest, body) to insert

    # --- the batch ---------------------------------------------------------------------------

    def record(self, batch: list[tuple[Notification, str]]) -> None:
        """`batch`: the notifications, each with its evidence as JSON (ingest.storable)."""
        self._load_cache()
        groups: dict[tuple[str, str, str, str], list[Notification]] = {}
        bodies: dict[tuple[str, str, str, str], str] = {}
        for n, body in batch:
            key = subject_key(n)
            group = groups.get(key)
            if group is None:
                groups[key] = [n]
                bodies[key] = body
            else:
                group.append(n)
        self.summary.counts["repeated"] += len(batch) - len(groups)
        digests = {key: subject_digest(key) for key in groups}
        stored = self._stored(digests)
        known = self._times_between(stored, groups)
        evidence = self._evidence_pks({bodies[key]: group[0].evidence for key, group in groups.items()})
        self._load_current_evidence(stored, bodies, evidence)
        for key, group in groups.items():
            found = stored.get(key)
            if found is None:
                self._new(key, group, digests[key], self._evidence_pk(bodies[key], evidence))
            else:
                self._one(key, group, found, known, bodies[key], evidence)
        self._write()

    def _load_cache(self) -> None:
        if not self.cache.loaded:
            self.cache.kind_records = notifications.kinds(self.w.conn)
            self.cache.kinds = {dataclasses.astuple(k)[1:]: pk for pk, k in self.cache.kind_records.items()}
            self.cache.loaded = True

    def _stored(self, subjects: dict[tuple[str, str, str, str], int]) -> dict[Any, _Stored]:
        """The stored notification of each subject (the newest, if a digest finds several)."""
        digests = {digest: key for key, digest in subjects.items()}
        found: dict[Any, NotificationRecord] = {}
        for record in notifications.notifications_by_subject(self.w.conn, digests):
            key = digests.get(record.subject)
            kind = self._kind(record.kind)
            if (
                key is None
                or (kind.partner, kind.classification, record.identifier, record.observable) != key
            ):
                continue  # another subject with the same digest
            if key not in found or record.pk > found[key].pk:
                found[key] = record
        latest = notifications.versions_by_stamp(self.w.conn, [r.latest for r in found.values()])
        self.known_versions.update(latest)
        return {key: _Stored(record, latest[record.latest]) for key, record in found.items()}

    def _times_between(
        self, stored: dict[Any, _Stored], groups: dict[Any, list[Notification]]
    ) -> dict[int, set[int]]:
        """pk -> which of the times a stored notification is seen at now, strictly between its
        latest version's first and last, it counts already: those listed, and those an earlier
        version names (_named_down_the_chains). Rare: an input older than the latest one, or
        one ingested again."""
        asked: dict[int, set[int]] = {}  # pk -> times not found yet
        records: dict[int, NotificationRecord] = {}
        previous: dict[int, int] = {}  # pk -> the stamp of the version before its latest
        for key, found in stored.items():
            latest, record = found.latest, found.record
            if latest.count <= OBSERVATIONS_IMPLIED:
                continue
            first, last = latest.first_seen_of(record), latest.last_seen_of(record)
            inside = {at for n in groups[key] if first < (at := moment_ms(n.observed_at)) < last}
            if inside:
                asked[record.pk], records[record.pk] = inside, record
                if latest.previous is not None:
                    previous[record.pk] = latest.previous
        known: dict[int, set[int]] = {pk: set() for pk in asked}
        if asked:
            for pk, at in notifications.listed_observations(self.w.conn, sorted(asked)):
                if at in asked[pk]:
                    asked[pk].discard(at)
                    known[pk].add(at)
            step = {stamp: pk for pk, stamp in previous.items() if asked[pk]}
            _named_down_the_chains(self.w.conn, step, asked, known, records)
        return known

    def _kind(self, pk: int) -> Kind:
        kind = self.cache.kind_records.get(pk)
        if kind is None:
            kind = notifications.kinds(self.w.conn, [pk])[pk]
            self.cache.kind_records[pk] = kind
        return kind

    def _kind_pk(self, n: Notification) -> int:
        values = kind_values(n)
        pk = self.cache.kinds.get(values)
        if pk is None:
            pk = notifications.add_kind(self.w, values)
            self.cache.kinds[values] = pk
            self.cache.kind_records[pk] = Kind(pk, *values)
        return pk

    def _evidence_pks(self, bodies: dict[str, dict[str, Any]]) -> dict[str, int | None]:
        """Evidence body (JSON) -> its stored pk for every body of the batch (None: not stored
        yet; stored by _evidence_pk only when a notification that keeps it is recorded: evidence
        of a discarded notification must never reach the store). `bodies`: each with its
        evidence as an object."""
        out: dict[str, int | None] = {b: self.cache.evidence.get(b) for b in bodies}
        unknown = [b for b, pk in out.items() if pk is None]
        if unknown:
            self.stored_text = self._stored_texts(unknown, bodies)
            self.body_digests = {b: digest(self.stored_text[b]) for b in unknown}
            found = notifications.evidence_by_digest(self.w.conn, self.body_digests.values())
            for body in unknown:
                out[body] = _stored_pk(found, self.body_digests[body], self.stored_text[body])
        return out

    def _stored_texts(self, unknown: list[str], bodies: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Body -> the text it is stored as: its values against its key paths' pk
        (connector/store/evidence.py), or itself where that is not shorter."""
        shapes = {b: evidence_shape(bodies[b]) for b in unknown}
        key_pks = self._key_paths_pks({found[0] for found in shapes.values() if found is not None})
        texts: dict[str, str] = {}
        for body, found in shapes.items():
            encoded = None if found is None else evidence_values(key_pks[found[0]], found[1])
            texts[body] = encoded if encoded is not None and len(encoded) < len(body) else body
        return texts

    def _key_paths_pks(self, texts: set[str]) -> dict[str, int]:
        """The pk of each stored list of key paths, stored when new (a few per feed)."""
        out = {t: pk for t in texts if (pk := self.cache.key_paths.get(t)) is not None}
        unknown = {t: digest(t) for t in texts if t not in out}
        if unknown:
            found = notifications.evidence_by_digest(self.w.conn, unknown.values())
            for text, key in unknown.items():
                pk = _stored_pk(found, key, text)
                if pk is None:
                    pk = self.w.allocate("evidence", 1)
                    self.evidence_rows.append((pk, key, text))
                out[text] = pk
                self.cache.key_paths.put(text, pk)
        return out

    def _load_current_evidence(
        self, stored: dict[Any, _Stored], bodies: dict[Any, str], known: dict[str, int | None]
    ) -> None:
        """The evidence (as it stands, connector/store/evidence.py) of the latest version and of
        the row of every stored notification whose new evidence is not stored as it is: what
        _reobserved_evidence compares it with and makes a change from."""
        wanted: set[EvidenceKey] = set()
        for key, found in stored.items():
            if known.get(bodies[key]) is None:
                wanted |= {found.record.evidence, found.latest.evidence_of(found.record)}
        self.current_evidence = notifications.evidence_bodies(self.w.conn, wanted) if wanted else {}

    def _reobserved_evidence(
        self, found: _Stored, n: Notification, body: str, known: dict[str, int | None]
    ) -> EvidenceKey:
        """The evidence of a stored notification's next version: the same evidence as it has,
        else only what changed against the evidence of its own row, kept in the version (an
        inline change, connector/store/evidence.py), or the whole body's pk when a change would
        not be shorter."""
        pk = known.get(body)
        if pk is not None:
            return pk
        record, latest = found.record, found.latest
        current = latest.evidence_of(record)
        current_text = self.current_evidence.get(current)
        if current_text == body:
            return self._kept(current)
        if n.volatile and current_text is not None:
            names = frozenset(n.volatile)
            if _steady(orjson.loads(current_text), names) == _steady(n.evidence, names):
                return self._kept(current)  # only what changes with every observation changed
        base = self.current_evidence.get(record.evidence)
        if base is not None:
            stored_change = evidence_change(record.evidence, orjson.loads(base), body)
            if stored_change is not None:
                return stored_change
        return self._evidence_pk(body, known)()

    def _kept(self, current: EvidenceKey) -> int:
        """The pk of the evidence a version has again: an inline change (in the version before)
        stored as an evidence row now, which this version and any after refer to."""
        if current.__class__ is int:
            return current  # type: ignore[return-value]
        pk = self.w.allocate("evidence", 1)
        self.evidence_rows.append((pk, CHANGE_DIGEST, current))  # type: ignore[arg-type]
        return pk

    def _evidence_pk(self, body: str, known: dict[str, int | None]) -> Callable[[], int]:
        """The pk of this body, stored when first asked for (see _evidence_pks)."""

        def pk() -> int:
            found = known.get(body)
            if found is None:
                found = known[body] = self.w.allocate("evidence", 1)
                self.evidence_rows.append((found, self.body_digests[body], self.stored_text[body]))
                self.cache.evidence.put(body, found)
            return found

        return pk

    # --- one subject ---------------------------------------------------------------------------

    def _route(self, key: tuple[str, str, str, str], n: Notification) -> Decision | None:
        """The notification routed and counted; None when it is not to be stored (personal data
        nobody is entitled to)."""
        decision = self.router.route(n)
        self.summary.count_decision(decision)
        if n.discard_unrouted and not decision.recipients:
            self.summary.counts["discarded"] += 1
            return None  # counted, never stored
        if decision.match is None and log.isEnabledFor(logging.INFO):
            log.info("notification unrouted", extra={"observable": key[3], "classification": key[1]})
        return decision

    def _new(
        self,
        key: tuple[str, str, str, str],
        group: list[Notification],
        subject: int,
        evidence: Callable[[], int],
    ) -> None:
        """A new notification and its first version: the hot path of a first ingest, written with
        tuples, not records. Its key's day is the day it was first seen, whichever row of the
        group came first."""
        n = group[0]
        if len(group) == 1:
            first = last = moment_ms(n.observed_at)
            count = 1
        else:
            times = sorted({moment_ms(m.observed_at) for m in group})
            first, last, count = times[0], times[-1], len(times)
        decision = self._route(key, n)
        if decision is None:
            return
        stamp = self.w.next_stamp()
        self.summary.saw_stamp(stamp)
        self.summary.counts["new"] += 1
        day = first // 86_400_000
        kind = self._kind_pk(n)
        self.cache.saw(kind, first)
        pk = self.w.allocate("notifications", 1)
        run, now = self.summary.run_id, self.now_ms
        recipients = decision.recipients
        numbers = self._numbers(recipients)
        self.new_rows.append(
            (
                pk, subject, kind, n.classification.identifier, day, n.ip, n.port, n.protocol, n.hostname,
                n.url, n.email, n.asn, evidence(), first, now, run, None, True,
            )
        )  # fmt: skip
        self.new_heads.append((pk, stamp))
        self.versions.append(
            (stamp, pk, None, CURRENT, now, None, last - first, count, None, None, numbers, run)
        )
        if count > OBSERVATIONS_IMPLIED:
            self.observations += [(pk, at) for at in times[1:-1]]  # the version names the others
        if n.partner not in self.cache.partners:
            notifications.add_partner_name(self.w, n.partner, self.config.partner(n.partner).name)
            self.cache.partners.add(n.partner)
        version_shape = shape(n, day_text(day), key, with_own=False)
        shared = version_shape.shared
        per_recipient = self.summary.per_recipient
        deliveries = self.deliveries
        for rid, number in zip(recipients, numbers, strict=True):
            per_recipient[rid] += 1
            entries = deliveries.get(number)
            if entries is None:
                entries = deliveries[number] = []
            entries.append(_Delivery(stamp, pk, shared, 0))
        if self.misp_group_by:
            self._queue_misp(pk, n, day_text(day), recipients)

    def _one(
        self,
        key: tuple[str, str, str, str],
        group: list[Notification],
        stored: _Stored,
        known: dict[int, set[int]],
        body: str,
        evidence: dict[str, int | None],
    ) -> None:
        """A stored notification seen again: unchanged, or its next version."""
        times = sorted({moment_ms(n.observed_at) for n in group})
        self.cache.saw(stored.latest.kind_of(stored.record), times[0])
        fresh = [at for at in times if not _observed(stored, at, known)]
        if not fresh:
            self.summary.counts["unchanged"] += 1
            return
        n = group[0]
        decision = self._route(key, n)
        if decision is None:
            return
        stamp = self.w.next_stamp()
        self.summary.saw_stamp(stamp)
        evidence_pk = self._reobserved_evidence(stored, group[0], body, evidence)
        record, version = self._next(n, stored, fresh, stamp, evidence_pk, decision)
        # Rendered from what is stored, with this version's kind (its TLP marking, say).
        representative = notification_of(record, self._kind(version.kind_of(record)), {})
        self.summary.counts["updated"] += 1
        self.versions.append(
            (
                version.stamp, version.notification, version.previous, version.renderer, version.modified,
                version.first_seen, version.last_seen, version.count, version.kind, version.evidence,
                version.recipients, version.run,
            )
        )  # fmt: skip
        named = (version.first_seen_of(record), version.last_seen_of(record))
        self.observations += [(record.pk, at) for at in fresh if at not in named]
        self._deliver(
            record,
            version,
            shape(representative, day_text(record.day), key, with_own=False),
            decision.recipients,
        )
        self.seen_again.append((record.pk, version.recipients, stamp))
        self._queue_misp(record.pk, representative, representative.day, decision.recipients)

    def _next(
        self,
        n: Notification,
        stored: _Stored,
        fresh: list[int],
        stamp: int,
        evidence_pk: EvidenceKey,
        decision: Decision,
    ) -> tuple[NotificationRecord, VersionRecord]:
        record, previous = stored.record, stored.latest
        first_before = previous.first_seen_of(record)
        first = min(fresh[0], first_before)
        last = max(fresh[-1], previous.last_seen_of(record))
        kind = self._kind_pk(n)
        version = VersionRecord(
            stamp=stamp,
            notification=record.pk,
            previous=previous.stamp,
            renderer=CURRENT,
            modified=max(self.now_ms, previous.modified + 1),
            first_seen=None if first == record.first_seen else first,
            last_seen=last - first,
            count=previous.count + len(fresh),
            kind=None if kind == record.kind else kind,
            evidence=None if evidence_pk == record.evidence else evidence_pk,
            recipients=self._numbers(decision.recipients),
            run=self.summary.run_id,
        )
        self.latest.append((record.pk, stamp))
        self.known_versions[stamp] = version
        return record, version

    def _numbers(self, recipients: list[str]) -> tuple[int, ...]:
        """The recipients' collection numbers: the same few lists recur for every notification
        of a batch, so each list is worked out once."""
        wanted = tuple(recipients)
        found = self._numbers_of.get(wanted)
        if found is None:
            found = self._numbers_of[wanted] = tuple(
                self.numbers[recipient_collection_id(r)] for r in recipients
            )
        return found

    # --- deliveries ----------------------------------------------------------------------------

    def _deliver(
        self, record: NotificationRecord, version: VersionRecord, version_shape: Shape, recipients: list[str]
    ) -> None:
        """A next version's deliveries: each supersedes the version its collection held.

        EARLIER says an earlier version was delivered there, not that the collection still
        holds it (a TAXII DELETE may have taken it out); the entry it supersedes then carries
        RECHECK, which _write copies to this one, so readers work first and last out from the
        versions instead of trusting EARLIER."""
        for rid, number in zip(recipients, version.recipients, strict=True):
            self.summary.per_recipient[rid] += 1
            entry = _Delivery(version.stamp, record.pk, version_shape.shared, 0)
            if version.previous is not None:
                before, earlier = self._delivered_before(number, version.previous)
                if earlier:
                    entry.bits |= EARLIER
                if before is not None:
                    self.superseded.setdefault(number, {})[before] = (SUPERSEDED, 0)
                    self.following.setdefault(number, {})[before] = entry
                if record.legacy:
                    self.legacy_supersede.setdefault(recipient_collection_id(rid), []).extend(
                        own_ids(notification_of(record, self._kind(version.kind_of(record)), {}))
                    )
            self.deliveries.setdefault(number, []).append(entry)

    def _delivered_before(self, number: int, stamp: int | None) -> tuple[int | None, bool]:
        """(the stamp of the latest version at or before `stamp` delivered to the collection as
        an entry, whether any version was delivered there before), walking the versions down.
        The versions of a notification migrated from the old layout end in one of renderer 0:
        its objects are stored, not entries."""
        while stamp is not None:
            version = self.known_versions.get(stamp)
            if version is None:
                version = notifications.versions_by_stamp(self.w.conn, [stamp])[stamp]
                self.known_versions[stamp] = version
            if number in version.recipients:
                return (None if version.renderer == 0 else stamp), True
            stamp = version.previous
        return None, False

    def _queue_misp(self, pk: int, representative: Notification, day: str, recipients: list[str]) -> None:
        for rid in recipients:
            group_by = self.misp_group_by.get(rid)
            if group_by is None:
                continue
            uuid, label = misp_event_of(rid, representative, group_by, day)
            self.misp_members.append((rid, uuid, pk))
            self.misp_events[(rid, uuid)] = label

    # --- writing -------------------------------------------------------------------------------

    def _stamps_by_recipients(self) -> None:
        """The batch's stamps handed out again, the same stamps in another order: the versions
        for one set of recipients take consecutive stamps, each set's in the order recorded.

        Why: a collection is read in stamp order (date_added), and a page of it is a few of each
        batch's versions. Stamped as they arrived, those lay among all the batch's versions,
        spread over its pages of the store (and over any block of versions cut in stamp order);
        stamped by recipients, they lie side by side. The stamps are those the clock handed
        out, so the run's range, the clock and every other batch stay as they were, and a
        subject has one version a batch, so no version's `previous` is among them."""
        versions = self.versions
        if len(versions) < 2:
            return
        ordered = sorted(versions, key=_by_recipients)
        stamps = sorted(version[0] for version in versions)
        moved = {version[0]: stamp for version, stamp in zip(ordered, stamps, strict=True)}
        self.versions = [(stamp, *version[1:]) for version, stamp in zip(ordered, stamps, strict=True)]
        self.new_heads = [(pk, moved[stamp]) for pk, stamp in self.new_heads]
        self.latest = [(pk, moved[stamp]) for pk, stamp in self.latest]
        self.seen_again = [(pk, numbers, moved[stamp]) for pk, numbers, stamp in self.seen_again]
        for entries in self.deliveries.values():
            for entry in entries:
                entry.stamp = moved[entry.stamp]
            entries.sort(key=_stamp_of)
        # The versions read and made for this batch are keyed by the stamps handed out first;
        # nothing reads them from here on (dataclasses.replace of each was 4% of a second day).
        self.known_versions = {}

    def _carry_recheck(self, rechecked: dict[int, set[int]]) -> None:
        """RECHECK from the superseded entries that carry it (`rechecked`, per collection) to
        the entries of the versions after them: objects of the notification were removed from
        that collection, so the new entry's flags cannot say whether it is the first version
        held there (all earlier ones may be gone). Read from the blocks change_bits reads
        anyway, so the common case (nothing removed) costs no look-up."""
        for number, stamps in rechecked.items():
            following = self.following[number]
            for stamp in stamps:
                following[stamp].bits |= RECHECK

    def _write(self) -> None:
        w = self.w
        self._stamps_by_recipients()
        notifications.add_evidence(w, self.evidence_rows)
        notifications.add_notifications(w, self.new_rows, self.new_heads)
        notifications.add_versions(w, self.versions)
        notifications.set_latest(w, self.latest)
        notifications.add_observations(w, self.observations)
        # Each shared object a version brings is claimed for its collection at the date_added
        # it takes there (stamp + slot); the claims that went in (nobody held it there) are the
        # objects their entries bring: their bits. This runs for every shared object of every
        # delivery (six or so a notification), so per collection one dict comprehension keeps
        # the first claim of each object: entries in reverse stamp order, each later (earlier in
        # the batch) claim overwriting, and a claim that went in finds its entry by its stamp.
        claims: dict[int, dict[int, int]] = {
            number: {
                key: stamp + slot
                for entry in reversed(entries)
                for stamp in (entry.stamp,)
                for slot, key in reversed(entry.shared)
            }
            for number, entries in self.deliveries.items()
        }
        claimed = deliveries.claim_shared(w, claims)
        if claimed:
            by_stamp = {number: {e.stamp: e for e in es} for number, es in self.deliveries.items()}
            for number, at in claimed:
                by_stamp[number][at - at % SLOTS].bits |= 1 << at % SLOTS
        self._carry_recheck(deliveries.change_bits(w, self.superseded))
        deliveries.append(w, {n: [(e.stamp, e.bits) for e in es] for n, es in self.deliveries.items()})
        if self.legacy_supersede:
            from connector.store import objects

            for collection_id, ids in self.legacy_supersede.items():
                objects.supersede(w, collection_id, sorted(set(ids)))
        if self.misp_events:
            outbox.enqueue(w, self.misp_members, self.misp_events)
        if self.seen_again:
            feedback.reopen(w, self.seen_again, self.now_ms, self.summary.run_id)


_RECIPIENTS = notifications.VERSION_COLUMNS.index("recipients")


def _by_recipients(version: tuple[Any, ...]) -> tuple[tuple[int, ...], int]:
    return version[_RECIPIENTS], version[0]


def _stamp_of(entry: _Delivery) -> int:
    return entry.stamp


def _stored_pk(found: dict[int, list[tuple[int, str]]], key: int, text: str) -> int | None:
    """The pk of the stored evidence row with this text, among those of its digest
    (notifications.evidence_by_digest); None when none has it."""
    return next((pk for pk, stored in found.get(key, ()) if stored == text), None)


def _steady(evidence: dict[str, Any], volatile: frozenset[str]) -> dict[str, Any]:
    """The evidence without its volatile keys, at any depth (an input column kept among the
    unmapped is a key of `unmapped`)."""
    return {
        key: _steady(value, volatile) if value.__class__ is dict else value
        for key, value in evidence.items()
        if key not in volatile
    }


def _named_down_the_chains(
    conn: Connection,
    step: dict[int, int],
    asked: dict[int, set[int]],
    known: dict[int, set[int]],
    records: dict[int, NotificationRecord],
) -> None:
    """Moves the `asked` times that an earlier version names into `known`, reading the chains
    from `step` (stamp of a version to read -> its notification's pk) a step for all at a time.

    A version's first and last enclose those of every version before it (a new time only widens
    them), so a time is looked for further down only while the version just read still has it
    strictly inside: a day ingested again after the next one is found one version down,
    whatever the chain's length."""
    while step:
        versions = notifications.versions_by_stamp(conn, step)
        following: dict[int, int] = {}
        for stamp, pk in step.items():
            version = versions.get(stamp)
            if version is None:
                raise LookupError(f"notification version {stamp} is missing from the store")
            first, last = version.first_seen_of(records[pk]), version.last_seen_of(records[pk])
            known[pk] |= asked[pk] & {first, last}
            asked[pk] = {at for at in asked[pk] if first < at < last}
            if asked[pk] and version.previous is not None:
                following[version.previous] = pk
        step = following


def _observed(stored: _Stored, at: int, known: dict[int, set[int]]) -> bool:
    """Whether the stored notification already counts an observation at `at` (ms). A time
    outside its first and last is new; one between them is known when a version names it or it
    is listed (`known`, read by BatchRecorder._times_between)."""
    latest, record = stored.latest, stored.record
    first, last = latest.first_seen_of(record), latest.last_seen_of(record)
    if at in (first, last):
        return True
    if at < first or at > last or latest.count <= OBSERVATIONS_IMPLIED:
        return False
    return at in known[record.pk]
