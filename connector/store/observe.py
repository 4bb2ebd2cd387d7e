"""SQL behind the metrics that describe the store rather than one process: ingest rows by
outcome, quarantined rows, the MISP outbox. Every server process answers them alike, so they
hold across processes without any shared memory (taxii_server/metrics.py, StoreCollector).

Each is cheap enough for every scrape: the runs table has a row per ingest run, and the outbox
is read through its (status, next_attempt) index for the entries that are not done.
"""

from __future__ import annotations

import json
from collections import Counter

from sqlalchemy import Connection, func, select

from connector.store import schema as t


def ingest_totals(conn: Connection) -> Counter[tuple[str, str, str]]:
    """(partner, format, outcome) -> rows, summed over every finished or failed run's counts."""
    out: Counter[tuple[str, str, str]] = Counter()
    ir = t.ingest_runs
    for partner, fmt, counts in conn.execute(select(ir.c.partner, ir.c.format, ir.c.counts)):
        for outcome, value in json.loads(counts).items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[(partner, fmt, outcome)] += value
    return out


def runs_by_status(conn: Connection) -> Counter[str]:
    ir = t.ingest_runs
    query = select(ir.c.status, func.count()).group_by(ir.c.status)
    return Counter({status: int(n) for status, n in conn.execute(query)})


def outbox_open(conn: Connection) -> Counter[tuple[str, str]]:
    """(recipient, status) -> entries, for the pending and failed ones."""
    ob = t.misp_outbox
    query = (
        select(ob.c.recipient, ob.c.status, func.count())
        .where(ob.c.status.in_(["pending", "failed"]))
        .group_by(ob.c.recipient, ob.c.status)
    )
    return Counter({(rid, status): int(n) for rid, status, n in conn.execute(query)})
