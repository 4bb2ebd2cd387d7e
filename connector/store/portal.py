"""SQL the web portal needs beyond what other channels ask (taxii_server/portal/).

Kept here because every SQL statement lives in the store package; the portal calls these
through the Store it is given and never writes SQL itself.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.store import schema as t


def notifications_per_day(conn: Connection, since_day: int) -> list[tuple[int, str, str, str, str, int]]:
    """(day, taxonomy, type, partner, feed, notifications first seen that day) from `since_day`
    (days since 1970-01-01) on: the operator's plot of notifications per day by classification
    or feed. One grouped query over the notifications table; kinds are few, so the join is
    cheap."""
    n, k = t.notifications, t.notification_kinds
    query = (
        select(n.c.day, k.c.taxonomy, k.c.type, k.c.partner, k.c.feed, func.count())
        .select_from(n.join(k, n.c.kind == k.c.pk))
        .where(n.c.day >= since_day)
        .group_by(n.c.day, k.c.taxonomy, k.c.type, k.c.partner, k.c.feed)
        .order_by(n.c.day)
    )
    return [
        (int(day), str(tax), str(typ), str(partner), str(feed), int(count))
        for day, tax, typ, partner, feed, count in conn.execute(query)
    ]


def latest_day(conn: Connection) -> int | None:
    """The latest day any notification was first seen (days since 1970-01-01), or None: where
    the operator's plot ends by default, so a store of old reports still shows them."""
    value = conn.execute(select(func.max(t.notifications.c.day))).scalar()
    return None if value is None else int(value)


def delivery_times(conn: Connection, since_ms: int) -> list[tuple[int, int | None, int | None]]:
    """(routed_at, delivered_at, acknowledged_at) in ms of every (notification, recipient) pair
    routed since `since_ms` that has a state row (a pair without one was never fetched): the
    operator's plot of delivery and acknowledgement times."""
    s = t.delivery_states
    query = select(s.c.routed_at, s.c.delivered_at, s.c.acknowledged_at).where(s.c.routed_at >= since_ms)
    return [(int(r), d, a) for r, d, a in conn.execute(query)]


def latest_routed(conn: Connection) -> int | None:
    """The latest routed_at (ms) of any state row: where the times plot ends by default."""
    value = conn.execute(select(func.max(t.delivery_states.c.routed_at))).scalar()
    return None if value is None else int(value)


LOGOUT_PREFIX = "portal.logout."


def record_logout(conn: Connection, username: str, at_ms: int) -> None:
    """The user logged out of the portal at `at_ms`: its sessions issued until then end, in
    every server process on this database (kept in `settings`, one row per user, no table)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(t.settings)
    conn.execute(
        insert.values(name=LOGOUT_PREFIX + username, value=str(at_ms)).on_conflict_do_update(
            index_elements=["name"], set_={"value": str(at_ms)}
        )
    )


def logged_out_at(conn: Connection, username: str) -> int | None:
    name = t.settings.c.name
    found = conn.execute(select(t.settings.c.value).where(name == LOGOUT_PREFIX + username)).scalar()
    return None if found is None else int(found)


def collection_fingerprint(conn: Connection, collection: int) -> tuple[int, int, int, int]:
    """What changes whenever what a collection holds does: its delivery blocks (count, last
    stamp, bytes of entries: a new delivery adds a block, retention rewrites one shorter) and
    its removals (TAXII DELETE). The portal keeps a recipient's list while this stays the same."""
    b, r = t.delivery_blocks, t.removed_objects
    blocks, last, size = conn.execute(
        select(func.count(), func.max(b.c.last), func.sum(func.length(b.c.entries))).where(
            b.c.collection == collection
        )
    ).one()
    removed = conn.execute(select(func.count()).select_from(r).where(r.c.collection == collection)).scalar()
    return int(blocks), int(last or 0), int(size or 0), int(removed or 0)
