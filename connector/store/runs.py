"""SQL of ingest runs and their run rows (quarantined and skipped records)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from connector.store import schema as t
from connector.store.times import now_us, us_to_timestamp


def _run(row: Any) -> dict[str, Any]:
    """An ingest_runs row with its JSON columns (counts, inputs) decoded."""
    return dict(row) | {"counts": json.loads(row["counts"]), "inputs": json.loads(row["inputs"])}


def start(conn: Connection, partner: str, fmt: str, inputs: list[str]) -> int:
    result = conn.execute(
        insert(t.ingest_runs).values(
            partner=partner,
            format=fmt,
            inputs=json.dumps(inputs),
            started_at=us_to_timestamp(now_us()),
            status="running",
            counts="{}",
        )
    )
    return int(result.inserted_primary_key[0])


def finish(
    conn: Connection,
    run_id: int,
    status: str,
    counts: dict[str, Any],
    error: str | None,
    stamps: tuple[int, int] | None = None,
) -> None:
    """The run's end; `stamps`: the first and last stamp of the versions it committed."""
    values: dict[str, Any] = {
        "finished_at": us_to_timestamp(now_us()),
        "status": status,
        "counts": json.dumps(counts, sort_keys=True),
        "error": error,
    }
    if stamps is not None:
        values["first_stamp"], values["last_stamp"] = stamps
    conn.execute(update(t.ingest_runs).where(t.ingest_runs.c.id == run_id).values(**values))


def one(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(t.ingest_runs).where(t.ingest_runs.c.id == run_id)).mappings().first()
    return None if row is None else _run(row)


def latest(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` runs, newest first (counts and inputs decoded)."""
    query = select(t.ingest_runs).order_by(t.ingest_runs.c.id.desc()).limit(limit)
    return [_run(row) for row in conn.execute(query).mappings()]


def mark_failed(conn: Connection, run_id: int, reason: str) -> bool:
    ir = t.ingest_runs
    result = conn.execute(
        update(ir)
        .where(and_(ir.c.id == run_id, ir.c.status == "running"))
        .values(finished_at=us_to_timestamp(now_us()), status="failed", error=reason)
    )
    return bool(result.rowcount)


ROW_COLUMNS = ("run_id", "input", "line", "kind", "reason", "raw")


def add_rows(conn: Connection, rows: list[tuple[int, str, int, str, str, str | None]]) -> None:
    """(run_id, input, line, kind, reason, raw) rows."""
    if rows:
        conn.execute(insert(t.run_rows), [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows])


def rows_of(conn: Connection, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    query = select(t.run_rows).where(t.run_rows.c.run_id == run_id)
    if kind:
        query = query.where(t.run_rows.c.kind == kind)
    return [dict(r) for r in conn.execute(query.order_by(t.run_rows.c.pk)).mappings()]
