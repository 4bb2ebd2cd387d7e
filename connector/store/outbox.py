"""SQL of MISP delivery: which notifications make up which event, and the durable outbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, select, update

from connector.store import schema as t
from connector.store.times import now_us, us_to_timestamp
from connector.store.writer import Writer

_COLUMNS = (
    "recipient",
    "event_uuid",
    "group_label",
    "status",
    "attempts",
    "next_attempt",
    "last_error",
    "pushed_hash",
    "updated_at",
    "changed_at",
)


def enqueue(w: Writer, members: list[tuple[str, str, int]], events: dict[tuple[str, str], str]) -> None:
    """Record MISP deliveries in the outbox, inside the ingest's transaction: nothing is lost.
    `members` are (recipient, event_uuid, notification pk); `events` (recipient, uuid) -> label."""
    w.insert(
        "misp_event_members", ("recipient", "event_uuid", "notification"), sorted(members), skip_present=True
    )
    now = now_us()
    stamp = us_to_timestamp(now)
    rows = [
        (rid, uuid, label, "pending", 0, now, None, None, stamp, stamp)
        for (rid, uuid), label in sorted(events.items())
    ]
    w.insert("misp_outbox", _COLUMNS, rows, skip_present=True)
    ob = t.misp_outbox
    for rid, uuid in sorted(events):  # one lock order for every writer of the outbox: no deadlock
        w.conn.execute(
            update(ob)
            .where(and_(ob.c.recipient == rid, ob.c.event_uuid == uuid))
            .values(status="pending", attempts=0, next_attempt=now, updated_at=stamp, changed_at=stamp)
        )


def changed(w: Writer, recipient: str, notifications: list[int]) -> None:
    """The recipient's events holding these notifications changed without an ingest (a
    notification was deleted from its collection): stored MISP feed events of them are out of
    date. The push is not queued again (a deletion never was)."""
    if not notifications:
        return
    m, ob = t.misp_event_members, t.misp_outbox
    events = select(m.c.event_uuid).where(
        and_(m.c.recipient == recipient, m.c.notification.in_(notifications))
    )
    w.conn.execute(
        update(ob)
        .where(and_(ob.c.recipient == recipient, ob.c.event_uuid.in_(events)))
        .values(changed_at=us_to_timestamp(now_us()))
    )


def members(conn: Connection, recipient: str, event_uuid: str) -> list[int]:
    m = t.misp_event_members
    query = (
        select(m.c.notification)
        .where(and_(m.c.recipient == recipient, m.c.event_uuid == event_uuid))
        .order_by(m.c.notification)
    )
    return [int(r[0]) for r in conn.execute(query)]


def events_of_members(conn: Connection, recipient: str, pks: list[int]) -> dict[int, set[str]]:
    """Notification pk -> the recipient's events it is in."""
    m = t.misp_event_members
    out: dict[int, set[str]] = {}
    for start in range(0, len(pks), 500):
        query = select(m.c.notification, m.c.event_uuid).where(
            and_(m.c.recipient == recipient, m.c.notification.in_(pks[start : start + 500]))
        )
        for pk, uuid in conn.execute(query):
            out.setdefault(int(pk), set()).add(uuid)
    return out


def _due(include_later: bool) -> Select[Any]:
    """Outbox entries a sync delivers: pending, and their next attempt come (any pending one
    with `include_later`)."""
    ob = t.misp_outbox
    query = select(ob).where(ob.c.status == "pending")
    return query if include_later else query.where(ob.c.next_attempt <= now_us())


def due(conn: Connection, recipient: str | None, include_later: bool) -> list[dict[str, Any]]:
    ob = t.misp_outbox
    query = _due(include_later)
    if recipient:
        query = query.where(ob.c.recipient == recipient)
    return [dict(r) for r in conn.execute(query.order_by(ob.c.recipient, ob.c.event_uuid)).mappings()]


@contextmanager
def claimed(engine: Engine, entry: dict[str, Any], include_later: bool) -> Iterator[dict[str, Any] | None]:
    """The entry as it is now, while this process alone delivers it; None: leave it alone.

    Syncs in several processes (a cron run overlapping a manual one, two hosts) read the same
    due entries: each would push every event, adding or editing it twice at once (and
    publishing it twice). On PostgreSQL a session advisory lock on the entry, held while it is
    delivered, lets one of them through; the others skip it, or find it delivered once they get
    the lock (it is read again). SQLite stores serve one host: not locked there."""
    if engine.dialect.name != "postgresql":
        yield entry
        return
    ob = t.misp_outbox
    key = f"misp-outbox\x1f{entry['recipient']}\x1f{entry['event_uuid']}"
    with engine.connect() as conn:
        got = conn.exec_driver_sql("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).scalar()
        conn.commit()
        if not got:
            yield None
            return
        try:
            this = and_(ob.c.recipient == entry["recipient"], ob.c.event_uuid == entry["event_uuid"])
            row = conn.execute(_due(include_later).where(this)).mappings().first()
            conn.commit()
            yield dict(row) if row is not None else None
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
            conn.commit()


def mark(conn: Connection, entry: dict[str, Any], values: dict[str, Any]) -> None:
    """Update the entry, only if nothing changed it meanwhile (an ingest may have re-queued it)."""
    ob = t.misp_outbox
    conn.execute(
        update(ob)
        .where(
            and_(
                ob.c.recipient == entry["recipient"],
                ob.c.event_uuid == entry["event_uuid"],
                ob.c.updated_at == entry["updated_at"],
            )
        )
        .values(**values, updated_at=us_to_timestamp(now_us()))
    )


def retry_failed(conn: Connection, recipient: str | None) -> int:
    ob = t.misp_outbox
    query = update(ob).where(ob.c.status == "failed")
    if recipient:
        query = query.where(ob.c.recipient == recipient)
    result = conn.execute(
        query.values(
            status="pending", attempts=0, next_attempt=now_us(), updated_at=us_to_timestamp(now_us())
        )
    )
    return int(result.rowcount or 0)


def entries(conn: Connection) -> list[tuple[str, str, int, str | None]]:
    """(recipient, status, next_attempt, last_error) of every entry."""
    ob = t.misp_outbox
    return [
        tuple(r)
        for r in conn.execute(select(ob.c.recipient, ob.c.status, ob.c.next_attempt, ob.c.last_error))
    ]  # type: ignore[misc]


def events(conn: Connection, recipient: str, only: str | None = None) -> list[tuple[str, str]]:
    """(event uuid, label) of the recipient's events, in uuid order."""
    ob = t.misp_outbox
    query = select(ob.c.event_uuid, ob.c.group_label).where(ob.c.recipient == recipient)
    if only is not None:
        query = query.where(ob.c.event_uuid == only)
    return [(r[0], r[1]) for r in conn.execute(query.order_by(ob.c.event_uuid))]
