"""SQL of constituency claims (constituency_claims): recipients' proposals, operators' decisions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from connector.store import schema as t

PENDING, APPROVED, REFUSED = "pending", "approved", "refused"


@dataclass(frozen=True)
class ClaimRow:
    pk: int
    recipient: str
    kind: str
    value: str
    status: str
    proposed_by: str
    proposed_at: int
    decided_by: str | None
    decided_at: int | None
    reason: str | None


def add(
    conn: Connection,
    recipient: str,
    kind: str,
    value: str,
    status: str,
    by: str,
    at: int,
    reason: str | None = None,
) -> int:
    values = {
        "recipient": recipient,
        "kind": kind,
        "value": value,
        "status": status,
        "proposed_by": by,
        "proposed_at": at,
        "reason": reason,
    }
    if status != PENDING:
        values |= {"decided_by": by, "decided_at": at}
    return int(conn.execute(insert(t.constituency_claims).values(**values)).inserted_primary_key[0])


def rows(conn: Connection, status: str | None = None, recipient: str | None = None) -> list[ClaimRow]:
    c = t.constituency_claims
    query = select(c).order_by(c.c.pk)
    if status is not None:
        query = query.where(c.c.status == status)
    if recipient is not None:
        query = query.where(c.c.recipient == recipient)
    return [ClaimRow(**dict(r)) for r in conn.execute(query).mappings()]


def decide(conn: Connection, pk: int, status: str, by: str, at: int, reason: str | None) -> bool:
    """A pending claim approved or refused; False when it is not pending (decided already)."""
    c = t.constituency_claims
    result = conn.execute(
        update(c)
        .where(c.c.pk == pk, c.c.status == PENDING)
        .values(status=status, decided_by=by, decided_at=at, reason=reason)
    )
    return bool(result.rowcount)


def generation(conn: Connection) -> tuple[int, int]:
    """(approved claims, latest decision time): changes whenever the set of approved claims
    does, so a server can tell cheaply when to build its router again."""
    c = t.constituency_claims
    count, latest = conn.execute(
        select(func.count(), func.max(c.c.decided_at)).where(c.c.status == APPROVED)
    ).one()
    return int(count), int(latest or 0)
