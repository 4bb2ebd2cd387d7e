"""SQL of delivery states: where each notification stands with each recipient, and the history
of how it got there (delivery_states, delivery_events).

No row means routed and not fetched yet: the delivery log says it was routed, and a row for
every delivery would cost an ingest as much again as the notification itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from connector.store.writer import Writer, rows_in

ROUTED = "routed"
DELIVERED = "delivered"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
FALSE_POSITIVE = "false-positive"
NOT_OURS = "not-ours"
GONE = "gone"
CLOSED = frozenset({RESOLVED, FALSE_POSITIVE, NOT_OURS, GONE})
STATES = (ROUTED, DELIVERED, ACKNOWLEDGED, RESOLVED, FALSE_POSITIVE, NOT_OURS, GONE)
_COLUMNS = "notification, collection, state, routed_at, delivered_at, acknowledged_at, closed_at"


@dataclass(frozen=True, slots=True)
class State:
    notification: int
    collection: int
    state: str
    routed_at: int  # ms
    delivered_at: int | None
    acknowledged_at: int | None
    closed_at: int | None


@dataclass(frozen=True, slots=True)
class Event:
    notification: int
    collection: int
    state: str
    at: int
    source: str
    actor: str | None
    note: str | None


def _state(row: Sequence[object]) -> State:
    return State(*row)  # type: ignore[arg-type]


def _sql(conn: Connection, statement: str) -> str:
    return statement.replace("?", "%s") if conn.dialect.name == "postgresql" else statement


# --- reading -------------------------------------------------------------------------------------


def of(conn: Connection, collection: int, pks: Iterable[int]) -> dict[int, State]:
    statement = f"SELECT {_COLUMNS} FROM delivery_states WHERE collection = ? AND notification IN ({{in}})"
    return {row[0]: _state(row) for row in rows_in(conn, statement, sorted(set(pks)), collection)}


def of_notifications(conn: Connection, pks: Iterable[int]) -> list[State]:
    """Every collection's state of these notifications."""
    statement = f"SELECT {_COLUMNS} FROM delivery_states WHERE notification IN ({{in}})"
    return [_state(row) for row in rows_in(conn, statement, sorted(set(pks)))]


def of_collection(conn: Connection, collection: int) -> list[State]:
    sql = _sql(conn, f"SELECT {_COLUMNS} FROM delivery_states WHERE collection = ?")
    return [_state(row) for row in conn.exec_driver_sql(sql, (collection,))]


def in_state(conn: Connection, state: str) -> list[State]:
    sql = _sql(conn, f"SELECT {_COLUMNS} FROM delivery_states WHERE state = ?")
    return [_state(row) for row in conn.exec_driver_sql(sql, (state,))]


def events(conn: Connection, pks: Iterable[int]) -> list[Event]:
    statement = (
        "SELECT notification, collection, state, at, source, actor, note FROM delivery_events "
        "WHERE notification IN ({in}) ORDER BY pk"
    )
    return [Event(*row) for row in rows_in(conn, statement, sorted(set(pks)))]


def notification_pks_of_kinds(conn: Connection, kinds: Iterable[int]) -> list[int]:
    statement = "SELECT pk FROM notifications WHERE kind IN ({in}) ORDER BY pk"
    return [int(r[0]) for r in rows_in(conn, statement, sorted(set(kinds)))]


# --- writing -------------------------------------------------------------------------------------


def _event_rows(w: Writer, rows: list[tuple[int, int, str, int, str, str | None, str | None]]) -> None:
    w.insert(
        "delivery_events", ("notification", "collection", "state", "at", "source", "actor", "note"), rows
    )


def mark_delivered(
    w: Writer, collection: int, notifications: list[tuple[int, int]], at: int, source: str, actor: str | None
) -> list[int]:
    """(notification, routed_at) pairs the recipient just received: delivered, unless they were
    delivered before (their state stays, acknowledged say). Returns the notifications that
    changed (events recorded for them)."""
    changed: list[int] = []
    for start in range(0, len(notifications), 200):
        part = sorted(dict(notifications[start : start + 200]).items())
        values = ", ".join(["(?, ?, ?, ?, ?, NULL, NULL)"] * len(part))
        statement = w.sql(
            f"INSERT INTO delivery_states ({_COLUMNS}) VALUES {values} "
            "ON CONFLICT (notification, collection) DO UPDATE SET state = excluded.state, "
            "delivered_at = excluded.delivered_at WHERE delivery_states.state = 'routed' "
            "RETURNING notification"
        )
        params = tuple(v for pk, routed in part for v in (pk, collection, DELIVERED, routed, at))
        changed += [int(r[0]) for r in w.conn.exec_driver_sql(statement, params)]
    _event_rows(w, [(pk, collection, DELIVERED, at, source, actor, None) for pk in changed])
    return changed


def change(
    w: Writer,
    state: State | None,
    *,
    notification: int,
    collection: int,
    new: str,
    at: int,
    routed_at: int,
    source: str,
    actor: str | None,
    note: str | None,
) -> None:
    """Set a notification's state with a recipient (`state`: its current row, None if none)."""
    delivered = state.delivered_at if state else None
    acknowledged = state.acknowledged_at if state else None
    closed = state.closed_at if state else None
    if new == ROUTED:  # seen again after it was closed: open again, not fetched yet
        acknowledged = closed = None
    elif new == DELIVERED:
        delivered = delivered or at
    elif new == ACKNOWLEDGED:
        acknowledged = acknowledged or at
        closed = None
    elif new in CLOSED:
        closed = at
        if new != GONE:
            acknowledged = acknowledged or at  # the recipient's word on it is its acknowledgement
    row = (
        notification,
        collection,
        new,
        state.routed_at if state else routed_at,
        delivered,
        acknowledged,
        closed,
    )
    if state is None:
        w.insert("delivery_states", _COLUMNS.split(", "), [row])
    else:
        w.many(
            "UPDATE delivery_states SET state = ?, delivered_at = ?, acknowledged_at = ?, closed_at = ? "
            "WHERE notification = ? AND collection = ?",
            [(new, delivered, acknowledged, closed, notification, collection)],
        )
    _event_rows(w, [(notification, collection, new, at, source, actor, note)])
