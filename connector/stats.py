"""Statistics of the loop: how many notifications of a case, a feed or for a recipient were
routed, fetched, acknowledged, resolved, and how long that took.

Counts of a case or feed are for its reporter: they never name a recipient. Units:
- notifications: in scope; routed: delivered to at least one recipient; unrouted: the rest;
- deliveries: (notification, recipient) pairs; delivered: pairs the recipient fetched;
  acknowledged: pairs the recipient acknowledged (also when it closed them since); resolved,
  false_positive, not_ours, gone: pairs in that state now; open: pairs not closed;
- median times in seconds: from routing to the first fetch, from the fetch to acknowledgement.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector.collections import recipient_collection_id
from connector.render.stix import notification_of, own_ids
from connector.store import Reader, Store
from connector.store import states as st
from connector.store.deliveries import iter_entries
from connector.store.records import Kind, NotificationRecord
from connector.store.times import ms_to_timestamp, now_us


@dataclass
class Figures:
    notifications: int = 0
    routed: int = 0
    unrouted: int = 0
    deliveries: int = 0
    delivered: int = 0
    acknowledged: int = 0
    resolved: int = 0
    false_positive: int = 0
    not_ours: int = 0
    gone: int = 0
    open: int = 0
    median_seconds_to_delivery: float | None = None
    median_seconds_to_acknowledgement: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def figures(reader: Reader, pks: list[int]) -> Figures:
    """The counts of these notifications, over every recipient they reached."""
    out = Figures(notifications=len(pks))
    records = reader.notifications(pks)
    known: dict[int, Any] = {}
    states = {(s.notification, s.collection): s for s in st.of_notifications(reader.conn, pks)}
    to_delivery: list[float] = []
    to_ack: list[float] = []
    for n in records.values():
        reached = {number for v in reader.version_chain(n.latest, known) for number in v.recipients}
        if not reached:
            out.unrouted += 1
            continue
        out.routed += 1
        for number in reached:
            out.deliveries += 1
            state = states.get((n.pk, number))
            if state is None:
                out.open += 1
                continue
            if state.delivered_at is not None:
                out.delivered += 1
                to_delivery.append((state.delivered_at - state.routed_at) / 1000)
            if state.acknowledged_at is not None:
                out.acknowledged += 1
                if state.delivered_at is not None:
                    to_ack.append((state.acknowledged_at - state.delivered_at) / 1000)
            name = state.state.replace("-", "_")
            if state.state in st.CLOSED:
                setattr(out, name, getattr(out, name) + 1)
            else:
                out.open += 1
    out.median_seconds_to_delivery = _median(to_delivery)
    out.median_seconds_to_acknowledgement = _median(to_ack)
    return out


def _kinds(reader: Reader) -> dict[int, Kind]:
    return reader.kinds()


def case(store: Store, case_id: str, partner: str | None = None) -> Figures:
    """A case's figures (over every feed that reported in it; one partner's only if given)."""
    with store.reading() as reader:
        kinds = [
            k.pk for k in _kinds(reader).values() if k.case_id == case_id and partner in (None, k.partner)
        ]
        return figures(reader, st.notification_pks_of_kinds(reader.conn, kinds))


def feeds(store: Store, partner: str, since: datetime | None = None) -> dict[str, Figures]:
    """A partner's figures per feed, of the notifications first seen since `since`."""
    floor = int(since.replace(tzinfo=since.tzinfo or UTC).timestamp() * 1000) if since else None
    out: dict[str, Figures] = {}
    with store.reading() as reader:
        by_feed: dict[str, list[int]] = {}
        for kind in _kinds(reader).values():
            if kind.partner == partner:
                by_feed.setdefault(kind.feed, []).append(kind.pk)
        for feed, kinds in sorted(by_feed.items()):
            pks = st.notification_pks_of_kinds(reader.conn, kinds)
            if floor is not None:
                records = reader.notifications(pks)
                pks = [pk for pk in pks if records[pk].first_seen >= floor]
            out[feed] = figures(reader, pks)
    return out


def cases(store: Store, partner: str) -> dict[str, Figures]:
    """A partner's figures per case."""
    with store.reading() as reader:
        by_case: dict[str, list[int]] = {}
        for kind in _kinds(reader).values():
            if kind.partner == partner and kind.case_id:
                by_case.setdefault(kind.case_id, []).append(kind.pk)
        return {
            c: figures(reader, st.notification_pks_of_kinds(reader.conn, k))
            for c, k in sorted(by_case.items())
        }


@dataclass
class RecipientFigures:
    recipient: str
    reached: int = 0  # notifications delivered to its collection
    fetched: int = 0
    acknowledged: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    open: int = 0
    oldest_open: dict[str, Any] | None = None  # its sighting id and when it was routed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collection_notifications(reader: Reader, number: int) -> dict[int, int]:
    """Notification -> the stamp of the first version of it the collection got (µs)."""
    first: dict[int, int] = {}
    stamps = [stamp for stamp, _bits in iter_entries(reader.conn, number, None)]
    for start in range(0, len(stamps), 5000):
        for stamp, version in reader.versions(stamps[start : start + 5000]).items():
            known = first.get(version.notification)
            if known is None or stamp < known:
                first[version.notification] = stamp
    return first


def recipient(store: Store, rid: str) -> RecipientFigures:
    number = store.collection_number(recipient_collection_id(rid))
    out = RecipientFigures(rid)
    if number is None:
        return out
    with store.reading() as reader:
        reached = collection_notifications(reader, number)
        states = st.of(reader.conn, number, reached)
        out.reached = len(reached)
        oldest: tuple[int, int] | None = None
        for pk, stamp in reached.items():
            state = states.get(pk)
            if state is not None and state.delivered_at is not None:
                out.fetched += 1
            if state is not None and state.acknowledged_at is not None:
                out.acknowledged += 1
            if state is not None and state.state in st.CLOSED:
                out.closed[state.state] = out.closed.get(state.state, 0) + 1
                continue
            out.open += 1
            routed = state.routed_at if state else stamp // 1000
            if oldest is None or routed < oldest[1]:
                oldest = (pk, routed)
        if oldest is not None:
            out.oldest_open = {
                "sighting": _sighting_of(reader, oldest[0]),
                "routed": ms_to_timestamp(oldest[1]),
            }
    return out


def _sighting_of(reader: Reader, pk: int) -> str:
    record: NotificationRecord = reader.notifications([pk])[pk]
    kind = reader.kinds([record.kind])[record.kind]
    return own_ids(notification_of(record, kind, {}))[-1]


@dataclass(frozen=True)
class Overdue:
    recipient: str
    sighting: str
    state: str  # routed (never fetched) or delivered (not acknowledged)
    since: str  # when it was routed, or fetched


def escalations(store: Store, recipients: list[str], older_than_seconds: float) -> list[Overdue]:
    """Per recipient, what it has not fetched, or fetched but not acknowledged, for longer than
    `older_than_seconds`: the input to a reminder."""
    limit = now_us() // 1000 - int(older_than_seconds * 1000)
    out: list[Overdue] = []
    for rid in recipients:
        number = store.collection_number(recipient_collection_id(rid))
        if number is None:
            continue
        with store.reading() as reader:
            reached = collection_notifications(reader, number)
            states = st.of(reader.conn, number, reached)
            for pk, stamp in sorted(reached.items(), key=lambda item: item[1]):
                state = states.get(pk)
                if state is None or state.state == st.ROUTED:
                    routed = state.routed_at if state else stamp // 1000
                    if routed < limit:
                        out.append(Overdue(rid, _sighting_of(reader, pk), st.ROUTED, ms_to_timestamp(routed)))
                elif (
                    state.state == st.DELIVERED
                    and state.delivered_at is not None
                    and state.delivered_at < limit
                ):
                    out.append(
                        Overdue(
                            rid, _sighting_of(reader, pk), st.DELIVERED, ms_to_timestamp(state.delivered_at)
                        )
                    )
    return out


@dataclass(frozen=True)
class Misrouted:
    recipient: str
    sighting: str
    at: str
    note: str | None
    record: NotificationRecord
    kind: Kind


def misrouted(store: Store) -> list[Misrouted]:
    """Every notification a recipient said is not its own, with what it said."""
    owners = store.collection_owners()
    out = []
    with store.reading() as reader:
        found = st.in_state(reader.conn, st.NOT_OURS)
        notes = {
            (e.notification, e.collection): e
            for e in st.events(reader.conn, [s.notification for s in found])
            if e.state == st.NOT_OURS
        }
        for state in found:
            record = reader.notifications([state.notification])[state.notification]
            kind = reader.kinds([record.kind])[record.kind]
            event = notes.get((state.notification, state.collection))
            out.append(
                Misrouted(
                    owners.get(state.collection, "?"),
                    own_ids(notification_of(record, kind, {}))[-1],
                    ms_to_timestamp(state.closed_at or state.routed_at),
                    event.note if event else None,
                    record,
                    kind,
                )
            )
    return out
