"""SQL of accountability reports: the audit log searched by user, collection and time
(`meldpunt audit`). audit.py writes the log; this reads it, filtered in the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from connector.store import schema as t


def search(
    conn: Connection,
    *,
    username: str | None = None,
    collections: Sequence[str] | None = None,
    since: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Audit entries, oldest first: of this user, on these collections, at or after `since`
    (an RFC 3339 UTC timestamp as the log writes them, which sort as text)."""
    log = t.audit_log
    query = select(log)
    if username is not None:
        query = query.where(log.c.username == username)
    if collections is not None:
        query = query.where(log.c.collection_id.in_(list(collections)))
    if since is not None:
        query = query.where(log.c.at >= since)
    query = query.order_by(log.c.pk)
    if limit is not None:
        query = query.order_by(None).order_by(log.c.pk.desc()).limit(limit)
        return [dict(r) for r in reversed(conn.execute(query).mappings().all())]
    return [dict(r) for r in conn.execute(query).mappings()]
