"""SQL of MISP feeds: each recipient's feed events as last built, and which are out of date.

An event is out of date when it was never built, was built from another `changed_at` of its
outbox entry (an ingest re-queued it, a notification in it was deleted), or under another
configuration fingerprint (partner names, the public URL: what the event shows besides the
record). Finding those is one indexed query over the recipient's outbox entries: what a feed
request may afford, where building events is not.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.store import schema as t

_BUILT = ("built_from", "fingerprint", "timestamp", "manifest", "hashes", "body", "deliveries")


class Stale(NamedTuple):
    """An event to build (again), with what was stored of it: the new build must not show
    other content under the timestamp served before (MISP would never fetch it)."""

    event_uuid: str
    label: str
    changed: str  # misp_outbox.changed_at now: what the build is from
    timestamp: int | None  # the stored event's; None: never built
    body: str | None  # the stored event file ("": nothing served, or dropped by retention)


def stale(conn: Connection, recipient: str, fingerprint: str, only: str | None = None) -> list[Stale]:
    """The recipient's events to build (again)."""
    ob, fe = t.misp_outbox, t.misp_feed_events
    changed = func.coalesce(ob.c.changed_at, ob.c.updated_at)
    joined = ob.outerjoin(fe, and_(fe.c.recipient == ob.c.recipient, fe.c.event_uuid == ob.c.event_uuid))
    query = (
        select(ob.c.event_uuid, ob.c.group_label, changed, fe.c.timestamp, fe.c.body)
        .select_from(joined)
        .where(ob.c.recipient == recipient)
        .where(or_(fe.c.event_uuid.is_(None), fe.c.built_from != changed, fe.c.fingerprint != fingerprint))
    )
    if only is not None:
        query = query.where(ob.c.event_uuid == only)
    rows = conn.execute(query.order_by(ob.c.event_uuid))
    return [Stale(r[0], r[1], r[2], None if r[3] is None else int(r[3]), r[4]) for r in rows]


def save(conn: Connection, recipient: str, rows: list[dict[str, Any]]) -> None:
    """Store built events (event_uuid and the _BUILT columns each), replacing what was there.
    An upsert: two processes building the same event store one of them, and a build from an
    older `changed_at` that lands last is found out of date and built again."""
    if not rows:
        return
    fe = t.misp_feed_events
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(fe).values([{"recipient": recipient, **row} for row in rows])
    statement = statement.on_conflict_do_update(
        index_elements=[fe.c.recipient, fe.c.event_uuid],
        set_={name: statement.excluded[name] for name in _BUILT},
    )
    conn.execute(statement)


def entries(conn: Connection, recipient: str) -> list[tuple[str, str, str]]:
    """(event uuid, manifest entry, hashes lines) of every stored event of the recipient that is
    still one of its events."""
    ob, fe = t.misp_outbox, t.misp_feed_events
    query = (
        select(fe.c.event_uuid, fe.c.manifest, fe.c.hashes)
        .select_from(fe.join(ob, and_(ob.c.recipient == fe.c.recipient, ob.c.event_uuid == fe.c.event_uuid)))
        .where(fe.c.recipient == recipient)
        .where(fe.c.manifest != "")  # an event with nothing left to show is kept out of the feed
    )
    return [(r[0], r[1], r[2]) for r in conn.execute(query)]


def body(conn: Connection, recipient: str, event_uuid: str) -> str | None:
    fe = t.misp_feed_events
    query = select(fe.c.body).where(and_(fe.c.recipient == recipient, fe.c.event_uuid == event_uuid))
    found = conn.execute(query).scalar()
    return None if not found else str(found)  # "": an event with nothing left to show


def deliveries(conn: Connection, recipient: str, event_uuid: str) -> list[tuple[int, int]]:
    """(notification, version stamp) the stored event file shows."""
    fe = t.misp_feed_events
    query = select(fe.c.deliveries).where(and_(fe.c.recipient == recipient, fe.c.event_uuid == event_uuid))
    found = conn.execute(query).scalar()
    return [(int(pk), int(stamp)) for pk, stamp in json.loads(found or "[]")]
