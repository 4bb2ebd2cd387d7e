"""Retention and a data subject's request: taking notifications out of the store everywhere
they live (GDPR: kept no longer than needed; erased on request).

`purge` removes the notifications whose latest version was received longer ago than their
classification's retention (`retention:` in the configuration); `forget` removes those about
one address, host name, URL or e-mail address, with the stored STIX objects, quarantined rows,
status resources and MISP errors that hold it. Both remove a notification whole: its row,
versions, ids, observation times, delivery entries, removals, MISP event memberships (and
the outbox entry of an event left empty), evidence nobody else shares, and for a notification
of the old layout its stored objects.

Delivery entries are cut out of the delivery log's blocks, not masked: a removed object is
then never served again (its version, which rendering needs, is gone), and every other
object keeps its date_added, so no page moves and a client's cursor stays valid. A shared
object (an observable, an identity, a marking, a vulnerability) that a removed entry brought
into a collection is another matter: other notifications there may still refer to it. It is
kept, at the same date_added, as a stored object when they do (and always when it holds no
personal data: identities, markings, vulnerabilities), and removed when nothing there refers
to it any more.

Work is done in batches of notifications, each in one write transaction that holds the write
lock for a moment (ingests and servers go on between batches). What needs a whole table read,
with no index to help (notifications by age or by observable, evidence by use), is read before,
without the lock; each batch then re-checks, under the lock, only what was written since.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from connector.collections import collection_rows
from connector.config import Config
from connector.render.stix import REFERENCES, notification_of, own_ids, render, shape
from connector.store import Reader, Store, Writer
from connector.store import retention as sql
from connector.store.evidence import row_of as evidence_row
from connector.store.objects import object_row
from connector.store.records import Kind, NotificationRecord, VersionRecord, digest
from connector.store.times import us_to_timestamp

BATCH = 500  # notifications removed per write transaction
SCAN = 20_000  # rows read per query when walking a table
SCO_SLOTS = REFERENCES + 1  # slots below hold identities, markings, what is sighted: no personal data
REDACTED = "[removed at a data subject's request]"


@dataclass
class Report:
    """What a purge or a forget removed (or, dry, would remove)."""

    counts: Counter[str] = field(default_factory=Counter)
    by_classification: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False


def _values(n: NotificationRecord) -> set[str]:
    return {v for v in (n.ip, n.hostname, n.url, n.email) if v}


# --- removing a set of notifications ----------------------------------------------------------


@dataclass
class _Candidate:
    digests: frozenset[int]  # its shared objects' digests
    collections: frozenset[int]  # where its versions were delivered


class Remover:
    """Takes notifications out of the store, batch by batch, and afterwards the evidence that
    none of what remains refers to."""

    def __init__(self, store: Store, targets: Iterable[int]) -> None:
        self.store = store
        self.targets = sorted(set(targets))
        self.report = Report()
        self.removed: set[int] = set()
        self.numbers = {number: cid for cid, number in store.collection_numbers().items()}
        self._holders: dict[str, set[int]] = {}  # observable value -> notifications that have it
        self._evidence_refs: dict[int, set[int]] = {}  # evidence pk -> notifications using it
        self._high = 0  # highest notification pk at the scan
        self._high_stamp = 0

    # --- before: what the whole tables say ---------------------------------------------------------

    def survey(self) -> None:
        """Without the lock: the observables and evidence of the targets, and which other
        notifications share them (holders), by reading notifications and versions once."""
        values: set[str] = set()
        evidence: set[int] = set()
        with self.store.reading() as reader:
            for chunk in _chunks(self.targets, BATCH):
                found = reader.notifications(chunk)
                chains = reader.version_chains({n.latest for n in found.values()})
                for n in found.values():
                    values |= _values(n)
                    evidence.add(n.evidence)
                    for v in chains[n.latest]:
                        if v.evidence is not None:
                            evidence.add(evidence_row(v.evidence))
            self._high = sql.highest_notification(reader.conn)
            self._high_stamp = sql.clock_stamp(reader.conn)
        self._evidence_refs = {e: set() for e in evidence}
        self._holders = {v: set() for v in values}
        after = 0
        while True:
            with self.store.reading() as reader:
                rows = sql.observables_after(reader.conn, after, SCAN)
                refs = sql.row_evidence(reader.conn, [r[0] for r in rows]) if rows else {}
            for pk, *observables in rows:
                for value in observables:
                    if value in self._holders:
                        self._holders[value].add(pk)
                used = refs.get(pk)
                if used in self._evidence_refs:
                    self._evidence_refs[used].add(pk)
            if len(rows) < SCAN:
                break
            after = rows[-1][0]
        with self.store.reading() as reader:  # the versions' evidence: one read of them all
            for used, users in sql.version_evidence_users(reader.conn, self._evidence_refs).items():
                self._evidence_refs[used] |= users

    # --- the batches -----------------------------------------------------------------------------

    def run(self, keep: Callable[[NotificationRecord, Reader], bool] | None = None) -> Report:
        """Remove the targets, BATCH at a time; `keep(n)` (asked under the lock) spares one
        that no longer qualifies (seen again since it was chosen)."""
        self.survey()
        for chunk in _chunks(self.targets, BATCH):
            with self.store.writing() as w:
                sql.secure_delete(w, True)
                self._batch(w, chunk, keep)
                sql.secure_delete(w, False)
        self._collect_evidence()
        return self.report

    def _batch(
        self, w: Writer, pks: list[int], keep: Callable[[NotificationRecord, Reader], bool] | None
    ) -> None:
        reader = Reader(w.conn)
        found = reader.notifications(pks)
        if keep is not None:
            found = {pk: n for pk, n in found.items() if not keep(n, reader)}
        if not found:
            return
        batch = set(found)
        versions: dict[int, VersionRecord] = {}
        by_latest = reader.version_chains({n.latest for n in found.values()}, versions)
        chains = {pk: by_latest[n.latest] for pk, n in found.items()}
        kinds = reader.kinds({v.kind_of(found[v.notification]) for v in versions.values()})
        context = _Rendering(reader, kinds)
        holders = _Holders(self, reader, w, batch)
        entries: dict[int, set[int]] = {}
        for chain in chains.values():
            for v in chain:
                if v.renderer != 0:
                    for number in v.recipients:
                        entries.setdefault(number, set()).add(v.stamp)
        for number, stamps in entries.items():
            self._shared_of_entries(w, reader, number, stamps, found, versions, context, holders)
        self._stored_shared(w, found, chains, context, holders)
        for number, stamps in sorted(entries.items()):
            removed, rewritten, deleted = sql.drop_entries(w, number, stamps)
            self.report.counts["delivery_entries"] += removed
            self.report.counts["delivery_blocks_rewritten"] += rewritten
            self.report.counts["delivery_blocks_deleted"] += deleted
            self.report.counts["removals"] += sql.drop_removals(w, number, stamps)
        self._legacy_objects(w, reader, found, context)
        self._misp(w, reader, found, chains)
        ids = [(d, pk) for pk, n in found.items() for d in context.own_digests(n) if not n.located_ids]
        self.report.counts["ids"] += sql.drop_ids(w, ids)
        self.report.counts["observations"] += sql.drop_observations(w, batch)
        self.report.counts["versions"] += sql.drop_versions(w, versions)
        states, events = sql.drop_delivery_states(w, batch)
        self.report.counts["delivery_states"] += states
        self.report.counts["delivery_events"] += events
        self.report.counts["notifications"] += sql.drop_notifications(w, batch)
        for n in found.values():
            self.report.by_classification[context.kind(n.kind).classification] += 1
        self.removed |= batch

    def _shared_of_entries(
        self,
        w: Writer,
        reader: Reader,
        number: int,
        stamps: set[int],
        found: dict[int, NotificationRecord],
        versions: dict[int, VersionRecord],
        context: _Rendering,
        holders: _Holders,
    ) -> None:
        """Shared objects these entries brought into the collection: kept as stored objects at
        their date_added when still needed there, else removed."""
        bits = reader.entry_bits(number, stamps)
        brought: list[tuple[int, dict[int, int]]] = []  # (stamp, slot -> digest) of each entry
        for stamp in sorted(stamps):
            slots_brought = bits.get(stamp, 0) & 0x0FFF
            if slots_brought:
                v = versions[stamp]
                shared = context.shared(found[v.notification], v)
                brought.append((stamp, {slot: d for slot, d in shared if slots_brought >> slot & 1}))
        # One look-up for all the entries' objects; those removed go in one statement (each is
        # a plain claim: a stored one is no entry's own, below).
        held = reader.shared(number, {d for _stamp, slots in brought for d in slots.values()})
        dropped: list[int] = []
        for stamp, slots in brought:
            v = versions[stamp]
            n = found[v.notification]
            rendered: dict[int, Any] | None = None
            for slot, key in slots.items():
                if held.get(key, (None, True)) != (stamp + slot, False):
                    continue  # not this entry's (already kept, or removed by an operator)
                if slot < SCO_SLOTS or holders.need(number, key, n):
                    if rendered is None:
                        rendered = {item.slot: item.obj for item in context.render(n, v)}
                    obj = rendered[slot]
                    body = orjson.dumps(obj).decode()
                    collection_id = self.numbers[number]
                    sql.keep_as_stored(w, collection_id, number, key, stamp + slot, object_row(obj, body))
                    held[key] = (stamp + slot, True)
                    self.report.counts["shared_objects_kept"] += 1
                else:
                    dropped.append(key)
                    held.pop(key)
        sql.drop_claims(w, number, dropped)
        self.report.counts["shared_objects_removed"] += len(set(dropped))

    def _stored_shared(
        self,
        w: Writer,
        found: dict[int, NotificationRecord],
        chains: dict[int, list[VersionRecord]],
        context: _Rendering,
        holders: _Holders,
    ) -> None:
        """Observables the collections hold as stored objects (kept by an earlier removal, of
        the old layout, or a partner's) that these notifications referred to: removed when
        nothing left refers to them, neither a notification nor a partner's stored object (a
        researcher's observed-data may refer to an SCO the researcher sent first)."""
        for pk, n in found.items():
            collections = {number for v in chains[pk] for number in v.recipients}
            digests = {d for v in chains[pk] for slot, d in context.shared(n, v) if slot >= SCO_SLOTS}
            for number in sorted(collections):
                for key, (date_added, stored) in w_shared(w, number, digests).items():
                    if not stored or holders.need(number, key, n) or _referred(w, number, date_added):
                        continue
                    self.report.counts["shared_objects_removed"] += sql.drop_shared(w, number, key)

    def _legacy_objects(
        self, w: Writer, reader: Reader, found: dict[int, NotificationRecord], context: _Rendering
    ) -> None:
        """A notification of the old layout: its sighting, observed-data and indicator were
        stored as objects; they go with it."""
        ids = [i for n in found.values() if n.legacy for i in context.own_ids(n)]
        if not ids:
            return
        rows = sql.stored_objects_with_ids(reader.conn, ids)
        members, objects, _where = sql.drop_stored_objects(w, [r[0] for r in rows])
        self.report.counts["stored_memberships"] += members
        self.report.counts["stored_objects"] += objects

    def _misp(
        self,
        w: Writer,
        reader: Reader,
        found: dict[int, NotificationRecord],
        chains: dict[int, list[VersionRecord]],
    ) -> None:
        owners = self.store.collection_owners()
        recipients = {
            owners[number]
            for chain in chains.values()
            for v in chain
            for number in v.recipients
            if number in owners
        }
        for recipient in sorted(recipients):
            rows = sql.misp_rows_of(reader.conn, recipient, list(found))
            if rows:
                self.report.counts["misp_event_members"] += sql.drop_misp_members(w, recipient, rows)
                self.report.counts["misp_outbox_entries"] += sql.drop_empty_events(
                    w, recipient, {u for u, _ in rows}
                )
                self.report.counts["misp_feed_events"] += sql.drop_feed_events(
                    w, recipient, {u for u, _ in rows}
                )

    # --- after: evidence nobody refers to any more ----------------------------------------------

    def _collect_evidence(self) -> None:
        unused = [e for e, users in self._evidence_refs.items() if users <= self.removed]
        if not unused:
            return
        with self.store.writing() as w:
            sql.secure_delete(w, True)
            # Written since the survey: new notifications and versions may share it (by content).
            used = sql.evidence_used_since(w.conn, self._high, self._high_stamp)
            self.report.counts["evidence"] += sql.drop_evidence(w, [e for e in unused if e not in used])
            sql.drop_unused_key_paths(w)  # the shapes only the dropped evidence had
            sql.secure_delete(w, False)


def _referred(w: Writer, number: int, date_added: int) -> bool:
    """Whether a partner's stored object in the collection refers to the stored object at
    date_added: that object then stays, or the partner's would be served with a dangling
    reference (`forget` removes both when the value is forgotten)."""
    stix_id = sql.stored_id(w, number, date_added)
    if stix_id is None:
        return False
    from connector.submission_checks import references  # *_ref and *_refs at any depth

    bodies = sql.submitted_bodies_naming(w, number, stix_id)
    return any(stix_id in set(references(orjson.loads(body))) for body in bodies)


def w_shared(w: Writer, number: int, digests: Iterable[int]) -> dict[int, tuple[int, bool]]:
    from connector.store.deliveries import shared_rows

    return shared_rows(w.conn, number, digests)


class _Rendering:
    """Kinds, partner names and evidence loaded as needed, to render what is removed."""

    def __init__(self, reader: Reader, kinds: dict[int, Kind]) -> None:
        self.reader = reader
        self.kinds = kinds
        self._partners: dict[str, str] | None = None
        self._shapes: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}

    def kind(self, pk: int) -> Kind:
        if pk not in self.kinds:
            self.kinds.update(self.reader.kinds([pk]))
        return self.kinds[pk]

    def shared(self, n: NotificationRecord, v: VersionRecord) -> tuple[tuple[int, int], ...]:
        """(slot, digest) of the shared objects version `v` renders."""
        key = (n.pk, v.kind_of(n))
        if key not in self._shapes:
            self._shapes[key] = shape(notification_of(n, self.kind(v.kind_of(n)), {}), with_own=False).shared
        return self._shapes[key]

    def own_digests(self, n: NotificationRecord) -> tuple[int, ...]:
        return shape(notification_of(n, self.kind(n.kind), {})).own

    def own_ids(self, n: NotificationRecord) -> tuple[str, ...]:
        return own_ids(notification_of(n, self.kind(n.kind), {}))

    def render(self, n: NotificationRecord, v: VersionRecord) -> list[Any]:
        if self._partners is None:
            self._partners = self.reader.partner_names()
        kind = self.kind(v.kind_of(n))
        evidence = orjson.loads(self.reader.evidence([v.evidence_of(n)])[v.evidence_of(n)])
        return render(n, v, kind, evidence, self._partners.get(kind.partner, kind.partner))


class _Holders:
    """Whether a collection still needs a shared object once a batch is gone: another
    notification delivered there renders it. Candidates come from the survey (same observable)
    and from notifications written since; each is checked as it is now, under the lock."""

    def __init__(self, remover: Remover, reader: Reader, w: Writer, batch: set[int]) -> None:
        self.remover = remover
        self.reader = reader
        self.gone = remover.removed | batch
        self.recent = [n for n in sql.notifications_above(w.conn, remover._high) if n.pk not in self.gone]
        self.cache: dict[int, _Candidate | None] = {}
        self.context = _Rendering(reader, {})

    def need(self, number: int, key: int, n: NotificationRecord) -> bool:
        values = _values(n)
        candidates = {pk for value in values for pk in self.remover._holders.get(value, ())} - self.gone
        candidates |= {m.pk for m in self.recent if _values(m) & values}
        return any(self._holds(pk, number, key) for pk in sorted(candidates))

    def _holds(self, pk: int, number: int, key: int) -> bool:
        if pk not in self.cache:
            found = self.reader.notifications([pk]).get(pk)
            if found is None:
                self.cache[pk] = None
            else:
                chain = self.reader.version_chain(found.latest)
                digests = {d for v in chain for _slot, d in self.context.shared(found, v)}
                collections = {c for v in chain for c in v.recipients}
                self.cache[pk] = _Candidate(frozenset(digests), frozenset(collections))
        candidate = self.cache[pk]
        return candidate is not None and number in candidate.collections and key in candidate.digests


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- purge ---------------------------------------------------------------------------------------


def cutoffs(config: Config, kinds: dict[int, Kind], now: float) -> dict[int, int]:
    """Kind -> the stamp (µs) before which its notifications' latest version expired."""
    out = {}
    for pk, kind in kinds.items():
        days = config.retention.days_for(kind.taxonomy, kind.type)
        out[pk] = int((now - days * 86400) * 1_000_000)
    return out


def expired(store: Store, config: Config, now: float) -> tuple[list[int], dict[int, int]]:
    """The notifications whose latest version is older than their classification's retention,
    and the cutoff of each kind."""
    with store.reading() as reader:
        kinds = reader.kinds()
    limits = cutoffs(config, kinds, now)
    if not limits:
        return [], limits
    latest_possible = max(limits.values())
    out: list[int] = []
    after = 0
    while True:
        with store.reading() as reader:
            rows = sql.received_before(reader.conn, latest_possible, after, SCAN)
        out += [pk for pk, kind, latest in rows if latest < limits.get(kind, 0)]
        if len(rows) < SCAN:
            return out, limits
        after = rows[-1][0]


def purge(store: Store, config: Config, *, dry_run: bool = False, now: float | None = None) -> Report:
    """Remove what is past its retention (notifications; quarantined rows of old runs)."""
    moment = time.time() if now is None else now
    store.sync_collections(collection_rows(config))
    targets, limits = expired(store, config, moment)
    run_rows_before = us_to_timestamp(int((moment - config.retention.quarantine_days * 86400) * 1_000_000))
    if dry_run:
        return _dry(store, targets, run_rows_before)

    def seen_since(n: NotificationRecord, _reader: Reader) -> bool:
        return n.latest >= limits.get(n.kind, 0)  # a new version arrived: not expired now

    report = Remover(store, targets).run(keep=seen_since)
    with store.writing() as w:
        sql.secure_delete(w, True)
        report.counts["run_rows"] += sql.drop_run_rows_before(w, run_rows_before)
        sql.secure_delete(w, False)
    _checkpoint(store)
    return report


def _dry(store: Store, targets: list[int], run_rows_before: str) -> Report:
    report = Report(dry_run=True)
    with store.reading() as reader:
        kinds = reader.kinds()
        for chunk in _chunks(targets, BATCH):
            found = reader.notifications(chunk)
            chains = reader.version_chains({n.latest for n in found.values()})
            for n in found.values():
                chain = chains[n.latest]
                report.counts["notifications"] += 1
                report.counts["versions"] += len(chain)
                report.counts["delivery_entries"] += sum(len(v.recipients) for v in chain if v.renderer)
                report.by_classification[kinds[n.kind].classification] += 1
        report.counts["run_rows"] = sql.run_rows_before(reader.conn, run_rows_before)
    return report


def _checkpoint(store: Store) -> None:
    store.checkpoint()


# --- forget --------------------------------------------------------------------------------------


def normalised(value: str) -> list[str]:
    """The forms `value` is stored in: an address canonical, a host name or e-mail address
    lower-case (as ingest normalises them), and as given."""
    from connector.normalize import canonical_domain, canonical_ip_or_network

    text = value.strip()
    forms = [text]
    try:
        forms.append(canonical_ip_or_network(text))
    except ValueError:
        forms.append(text.lower())
        if "@" not in text and "/" not in text:
            with contextlib.suppress(ValueError):  # a host name as ingest stores it: no trailing dot, IDNA
                forms.append(canonical_domain(text))
        elif "@" in text and "/" not in text:  # an e-mail address: its domain likewise
            local, _, domain = text.rpartition("@")
            with contextlib.suppress(ValueError):
                forms.append(f"{local.lower()}@{canonical_domain(domain)}")
    return list(dict.fromkeys(f for f in forms if f))


def forget(store: Store, config: Config, value: str, *, dry_run: bool = False) -> Report:
    """Remove everything the store holds about `value` (an address, host name, URL or e-mail
    address): notifications whose observable it is or whose URL or evidence holds it, stored
    objects holding it (and the observed-data, sightings and relationships that refer to those),
    and the quarantined rows, status resources and MISP errors that quote it."""
    store.sync_collections(collection_rows(config))
    forms = normalised(value)
    report = Report(dry_run=dry_run)
    with store.reading() as reader:
        targets: set[int] = set()
        for form in forms:
            for pk, url in sql.notifications_matching(reader.conn, form):
                # Exact in ip, hostname, email or url; in a URL as a whole token only.
                if url is None or url == form or _mentions(url, form) or not _in_url_only(reader, pk, form):
                    targets.add(pk)
            found = [
                (pk, body) for pk, body in sql.evidence_containing(reader.conn, form) if _mentions(body, form)
            ]
            bodies = [pk for pk, _body in found]
            # A key that holds the value (JSON input's own keys): every evidence of that shape.
            bodies += sql.bodies_with_key_paths(
                reader.conn, [pk for pk, body in found if body.startswith("%")]
            )
            if bodies:
                targets |= sql.notifications_with_evidence(reader.conn, bodies)
            # Changes kept in versions (connector/store/evidence.py), with the keys they name.
            changes = sql.changes_containing(reader.conn, form)
            targets |= {pk for pk, change in changes if _mentions(change, form)}
        objects = _stored_about(reader, forms)

        # Texts that quote it as a whole token (not 192.0.2.10 for 192.0.2.1), in any case.
        def quoting(table: str, key: str, columns: list[str], values: Iterable[str]) -> set[Any]:
            return {
                k
                for f in values
                for k, text in sql.texts_containing(reader.conn, table, key, columns, f)
                if _mentions(text, f)
            }

        run_rows = quoting("run_rows", "pk", ["raw", "reason"], forms)
        named_inputs = quoting("run_rows", "pk", ["input"], forms) - run_rows
        statuses = quoting("statuses", "id", ["body"], [*forms, *objects.values()])
        errors = {
            key
            for f in forms
            for key, text in sql.outbox_errors_containing(reader.conn, f)
            if _mentions(text, f)
        }
        runs = quoting("ingest_runs", "id", ["error", "inputs"], forms)
        notes = quoting("delivery_events", "pk", ["note"], forms)
    if dry_run:
        report.counts.update(
            notifications=len(targets),
            stored_objects=len(objects),
            run_rows=len(run_rows),
            statuses=len(statuses),
            misp_errors=len(errors),
            run_texts=len(runs) + len(named_inputs),
            feedback_notes=len(notes),
        )
        return report
    report = Remover(store, targets).run()
    redact = _redactor(forms)
    with store.writing() as w:
        sql.secure_delete(w, True)
        # A stored observable no notification left needs went with the notifications (as a
        # shared object); counted here too, as the dry run counts it.
        report.counts["stored_objects"] += len(objects) - len(sql.stored_pks(w.conn, list(objects)))
        members, removed, where = sql.drop_stored_objects(w, list(objects))
        report.counts["stored_memberships"] += members
        report.counts["stored_objects"] += removed
        for collection_id, stix_id in sorted(set(where)):
            sql.relatest(w, collection_id, stix_id)
        sql.drop_sources(w, objects.values())
        sql.drop_shared_digest_everywhere(w, [digest(i) for i in objects.values()])
        report.counts["run_rows"] += sql.drop_rows(w, "run_rows", "pk", run_rows)
        report.counts["run_texts"] += sql.redact_run_row_inputs(w, named_inputs, redact)
        report.counts["statuses"] += sql.drop_rows(w, "statuses", "id", statuses)
        report.counts["misp_errors"] += sql.replace_outbox_errors(w, errors, REDACTED)
        for run_id in sorted(runs):
            sql.replace_in_run(w, run_id, redact)
        report.counts["run_texts"] += len(runs)
        report.counts["feedback_notes"] += sql.redact_notes(w, notes, REDACTED)
        sql.secure_delete(w, False)
    _checkpoint(store)
    return report


def _in_url_only(reader: Reader, pk: int, form: str) -> bool:
    """Whether the notification matched only because its URL holds `form` as text."""
    n = reader.notifications([pk])[pk]
    return form not in (n.ip, n.hostname, n.email)


_TOKEN = r"[A-Za-z0-9_\-]"  # of a host name or e-mail address: a-b.example is one name
_TOKEN_IP = r"[A-Za-z0-9]"  # of an address: a - or _ beside it (a file name) is no part of it
_TOKEN_IP6 = r"[A-Za-z0-9:]"  # and in IPv6 a colon: 2001:db8::1 is not in 2001:db8::1:5


def _token_of(value: str) -> tuple[str, str]:
    """The characters that continue a token like `value` (what must not touch a mention), and
    those that continue it after a dot: a.nl is not in a.nl.example, 192.0.2.1 not in
    192.0.2.1.5, but an address is in the file name DIVD-2024-00012-192.0.2.1.jsonl."""
    try:
        address = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return _TOKEN, "[A-Za-z0-9]"
    return (_TOKEN_IP6 if address.version == 6 else _TOKEN_IP), "[0-9]"


# A JSON escape right before a match: "\n", "\t" ... or "\u001f" (a control character). Its
# last character is a letter or digit of the JSON text, not of the value's neighbour.
_ESCAPE_BEFORE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:[nrtbf]|u[0-9a-fA-F]{4})\Z")


def _mentions(text: str, value: str) -> bool:
    """`value` in `text` as a whole token, in any case: 192.0.2.1 is not in 192.0.2.10, nor a.nl
    in data.nl, nor 2001:db8::1 in 2001:db8::1:5. `text` may be JSON: a value right after an
    escaped line break ("...\\nzoe.nl") is a token."""
    return next(_spans(text, value), None) is not None


def _spans(text: str, value: str) -> Iterator[tuple[int, int]]:
    """Where `value` is in `text` as a whole token (see _mentions), in any case: a host name or
    e-mail address is the same in any case, and raw lines and evidence keep the partner's."""
    token, dotted = _token_of(value)
    pattern = rf"(?<!\.){re.escape(value)}(?!{token})(?!\.{dotted})"
    # In a look-ahead, so that every start is tried: finditer's matches do not overlap, and a
    # match refused for what precedes it would hide a whole token starting inside it
    # ("a.nl/a.nl" in "xa.nl/a.nl/a.nl"). So the spans may overlap.
    for match in re.finditer(f"(?={pattern})", text, re.IGNORECASE):
        start = match.start()
        if (
            start == 0
            or not re.match(token, text[start - 1])
            or _ESCAPE_BEFORE.search(text, max(0, start - 64), start)
        ):
            yield start, start + len(value)


def _redactor(forms: list[str]) -> Callable[[str], str]:
    """A function that writes REDACTED over every whole-token mention of these forms."""

    def redact(text: str) -> str:
        for form in forms:
            spans: list[tuple[int, int]] = []
            for start, end in _spans(text, form):
                if spans and start < spans[-1][1]:  # overlapping the one before: one stretch
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((start, end))
            for start, end in reversed(spans):
                text = text[:start] + REDACTED + text[end:]
        return text

    return redact


_REFERRING = ("observed-data", "sighting", "relationship", "indicator", "note", "opinion")


def _stored_about(reader: Reader, forms: list[str]) -> dict[int, str]:
    """pk -> id of stored objects that hold the value, and of those that refer to them
    (observed-data, sightings, relationships ...: what they say is about it)."""
    found: dict[int, str] = {}
    for form in forms:
        for pk, stix_id, _type, body in sql.stored_objects_containing(reader.conn, form):
            if _mentions(body, form):
                found[pk] = stix_id
    frontier = set(found.values())
    while frontier:
        referring: set[str] = set()
        for stix_id in sorted(frontier):
            for pk, other, stix_type, _body in sql.stored_objects_containing(reader.conn, stix_id):
                if pk not in found and stix_type in _REFERRING:
                    found[pk] = other
                    referring.add(other)
        frontier = referring
    return found
