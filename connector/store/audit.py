"""SQL of accountability: the audit log of who read and wrote what, and TAXII status resources."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert, select

from connector.store import schema as t
from connector.store.times import now_us, us_to_timestamp


def record(
    conn: Connection, *, username: str, action: str, collection_id: str | None, objects: int, status: int
) -> None:
    conn.execute(
        insert(t.audit_log).values(
            at=us_to_timestamp(now_us()),
            username=username,
            action=action,
            collection_id=collection_id,
            objects=objects,
            status=status,
        )
    )


def entries(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(t.audit_log).order_by(t.audit_log.c.pk)).mappings()]


def save_status(conn: Connection, status: dict[str, Any], *, username: str, collection_id: str) -> None:
    conn.execute(
        insert(t.statuses).values(
            id=status["id"],
            username=username,
            collection_id=collection_id,
            request_timestamp=status["request_timestamp"],
            status=status["status"],
            body=json.dumps(status),
        )
    )


def status(conn: Connection, status_id: str) -> tuple[str, dict[str, Any]] | None:
    """(username who posted, status resource) or None."""
    row = conn.execute(
        select(t.statuses.c.username, t.statuses.c.body).where(t.statuses.c.id == status_id)
    ).first()
    return (row[0], json.loads(row[1])) if row else None
