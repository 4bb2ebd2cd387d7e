"""Closing the loop: what became of a notification once it was delivered.

A notification stands with each recipient in one state (connector/store/states.py):

    routed -> delivered -> acknowledged -> resolved | false-positive | not-ours
                                       \\-> gone (a later scan of the same case no longer saw it)

Recipients say so through the channels they have (TAXII opinions and notes, MISP sightings, the
portal), operators with `meldpunt feedback`, scans by no longer reporting the host. A
notification seen again after it was resolved or gone is open again (routed: its new version
is not fetched yet). Whatever a recipient refers to must be a notification in its own
collection; anything else is "not found", whether it exists or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.collections import recipient_collection_id
from connector.render.stix import notifications_owning
from connector.store import Store, Writer
from connector.store import states as st
from connector.store.records import NotificationRecord
from connector.store.times import now_us

# What a recipient (or an operator for it) may say.
GIVEN = (st.ACKNOWLEDGED, st.RESOLVED, st.FALSE_POSITIVE, st.NOT_OURS)
REOPENED_FROM = frozenset({st.RESOLVED, st.GONE})  # seen again: open again


class NotFound(LookupError):
    """No such notification in this recipient's collection (or it does not exist at all: the
    two are never told apart)."""


@dataclass(frozen=True)
class Target:
    record: NotificationRecord
    collection: int
    routed_at: int  # ms: the first version of it the collection got


def target(store: Store, recipient: str, ident: str) -> Target:
    """The notification owning `ident` (its sighting, observed-data or indicator id) as
    delivered to the recipient's collection; NotFound otherwise."""
    number = store.collection_number(recipient_collection_id(recipient))
    if number is None:
        raise NotFound(ident)
    with store.reading() as reader:
        for record in notifications_owning(reader, ident):
            held = [v.stamp for v in reader.version_chain(record.latest) if number in v.recipients]
            if held:
                return Target(record, number, min(held) // 1000)
    raise NotFound(ident)


def give(
    store: Store,
    recipient: str,
    ident: str,
    state: str,
    *,
    source: str,
    actor: str | None,
    note: str | None = None,
    at: int | None = None,
) -> str:
    """Record what the recipient says of the notification; returns the state it is now in."""
    if state not in GIVEN:
        raise ValueError(f"unknown state {state!r} (one of {', '.join(GIVEN)})")
    found = target(store, recipient, ident)
    when = at if at is not None else now_us() // 1000
    with store.writing() as w:
        current = st.of(w.conn, found.collection, [found.record.pk]).get(found.record.pk)
        st.change(
            w,
            current,
            notification=found.record.pk,
            collection=found.collection,
            new=state,
            at=when,
            routed_at=found.routed_at,
            source=source,
            actor=actor,
            note=note,
        )
    return state


def mark_gone(store: Store, *, kinds: set[int], run_id: int, since: int) -> int:
    """A scan of a feed that covers its case (its mapping's `coverage`) ran: the notifications
    of the same kinds (partner, feed, case) it did not see, and that were last seen before its
    earliest observation (`since`, ms), are gone with every recipient that holds them and has
    not closed them. A re-read of the same scan changes nothing (its times are not earlier).
    Returns how many (notification, recipient) pairs became gone."""
    at = now_us() // 1000
    with store.reading() as reader:
        records = reader.notifications(st.notification_pks_of_kinds(reader.conn, kinds))
        latest = reader.versions([n.latest for n in records.values()])
        candidates = [
            (n, latest[n.latest])
            for n in records.values()
            if latest[n.latest].last_seen_of(n) < since and latest[n.latest].recipients
        ]
        held = {
            (s.notification, s.collection): s
            for s in st.of_notifications(reader.conn, [n.pk for n, _ in candidates])
        }
    changed = 0
    with store.writing() as w:
        for n, version in candidates:
            for number in version.recipients:
                current = held.get((n.pk, number))
                if current is not None and current.state in st.CLOSED:
                    continue
                st.change(
                    w,
                    current,
                    notification=n.pk,
                    collection=number,
                    new=st.GONE,
                    at=at,
                    routed_at=version.stamp // 1000,
                    source="scan",
                    actor=f"run {run_id}",
                    note=None,
                )
                changed += 1
    return changed


def reopen(w: Writer, seen_again: list[tuple[int, tuple[int, ...], int]], at: int, run_id: int) -> int:
    """(notification, collections of its new version, the version's stamp) seen again: where a
    recipient had it resolved, or a scan had it gone, it is open again. Inside the ingest's
    write transaction `w`."""
    current = {
        (s.notification, s.collection): s
        for s in st.of_notifications(w.conn, [pk for pk, _, _ in seen_again])
    }
    changed = 0
    for pk, numbers, stamp in seen_again:
        for number in numbers:
            state = current.get((pk, number))
            if state is None or state.state not in REOPENED_FROM:
                continue
            st.change(
                w,
                state,
                notification=pk,
                collection=number,
                new=st.ROUTED,
                at=at,
                routed_at=stamp // 1000,
                source="ingest",
                actor=f"run {run_id}",
                note=f"seen again after it was {state.state}",
            )
            changed += 1
    return changed


# MISP sighting types: 0 seen (the analyst saw it: acknowledged), 1 false positive.
_SIGHTING_STATES = {"0": st.ACKNOWLEDGED, "1": st.FALSE_POSITIVE}


def from_misp_sighting(store: Store, recipient: str, built: Any, sighting: dict[str, Any]) -> str | None:
    """A MISP sighting (getSightingsByEventId) on an attribute of `built` (the recipient's event
    as pushed): recorded once, by its UUID, as feedback on the attribute's notification.
    Returns the state given, or None (another type, an attribute not ours, seen before)."""
    state = _SIGHTING_STATES.get(str(sighting.get("type", "")))
    pk = built.notifications.get(str(sighting.get("attribute_uuid", "")))
    if state is None or pk is None:
        return None
    note = f"MISP sighting {sighting.get('uuid')}"
    with store.reading() as reader:
        if any(e.note == note for e in st.events(reader.conn, [pk])):
            return None
    stamp = str(sighting.get("date_sighting", ""))
    at = int(stamp) * 1000 if stamp.isdigit() else None
    org = (sighting.get("Organisation") or {}).get("name") or sighting.get("org_id")
    try:
        return give(
            store, recipient, built.sightings[pk], state, source="misp", actor=f"MISP {org}", note=note, at=at
        )
    except NotFound:
        return None  # taken out of the collection since: nothing to say it of


# What a recipient may post to its own collection, and what it says.
_OPINIONS = {
    "strongly-agree": st.ACKNOWLEDGED,
    "agree": st.ACKNOWLEDGED,
    "strongly-disagree": st.FALSE_POSITIVE,
}
_NOTE_LABELS = {state: state for state in GIVEN}
REFUSED_TYPE = (
    "only opinion and note objects may be posted to a recipient's collection: feedback on its "
    "notifications (see docs/feedback.md)"
)
NOT_HERE = "refers to an object that is not a notification in this collection"


@dataclass(frozen=True)
class Said:
    """One posted feedback object's outcome (as submission.Outcome: for the status resource)."""

    index: int
    id: str | None
    version: str | None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.message is None


def _statement(obj: dict[str, Any]) -> tuple[str, str | None] | str:
    """(state, note) an opinion or note says, or why it says nothing usable."""
    if obj["type"] == "opinion":
        state = _OPINIONS.get(str(obj.get("opinion")))
        if state is None:
            return (
                f"opinion {obj.get('opinion')!r} says nothing the clearinghouse records: agree or "
                "strongly-agree (acknowledged), strongly-disagree (a false positive)"
            )
        return state, obj.get("explanation")
    labels = [label for label in obj.get("labels", []) if label in _NOTE_LABELS]
    if len(labels) > 1:
        return f"a note may carry one state label, not {labels}"
    text = "\n".join(str(part) for part in (obj.get("abstract"), obj.get("content")) if part)
    return (labels[0] if labels else st.ACKNOWLEDGED), text or None


def apply_objects(store: Store, recipient: str, username: str, objects: list[Any]) -> list[Said]:
    """A recipient's POST to its own collection: each opinion or note (validated as STIX 2.1)
    whose object_refs all name notifications of its collection is recorded, the state it says
    given to each of them; anything else is refused on its own, with a reason that never tells
    whether a referenced object exists elsewhere."""
    from connector.submission import validate

    out: list[Said] = []
    for index, obj in enumerate(objects):
        ident = obj.get("id") if isinstance(obj, dict) else None
        version = obj.get("modified") or obj.get("created") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or obj.get("type") not in ("opinion", "note"):
            out.append(Said(index, ident, version, REFUSED_TYPE))
            continue
        problem = validate(obj)
        statement = _statement(obj) if problem is None else problem
        if isinstance(statement, str):
            out.append(Said(index, ident, version, statement))
            continue
        state, note = statement
        refs = [r for r in obj.get("object_refs", []) if isinstance(r, str)]
        try:
            for ref in refs:
                target(store, recipient, ref)  # every reference first: all or nothing
        except NotFound:
            out.append(Said(index, ident, version, NOT_HERE))
            continue
        for ref in refs:
            give(store, recipient, ref, state, source="taxii", actor=username, note=note)
        out.append(Said(index, ident, version))
    return out
