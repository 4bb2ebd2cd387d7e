"""SQL of the scheduler's job states: when each recurring job of `meldpunt run` last ran,
succeeded and failed, kept in the settings table under `scheduler.<job>` (JSON).

In the database rather than in the worker's memory so that `meldpunt run --status`, and every
server process's /metrics, report the same, after restarts too. One row per job, written with
an upsert at the end of each run of it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.store import schema as t

PREFIX = "scheduler."


def record(conn: Connection, job: str, state: dict[str, Any]) -> None:
    """Replace the job's state."""
    dialect = conn.dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t.settings)
    value = json.dumps(state, sort_keys=True)
    conn.execute(
        insert.values(name=PREFIX + job, value=value).on_conflict_do_update(
            index_elements=["name"], set_={"value": value}
        )
    )


def state(conn: Connection, job: str) -> dict[str, Any] | None:
    found = conn.execute(select(t.settings.c.value).where(t.settings.c.name == PREFIX + job)).scalar()
    return None if found is None else dict(json.loads(found))


def states(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every job's state, by job name."""
    rows = conn.execute(
        select(t.settings.c.name, t.settings.c.value).where(t.settings.c.name.startswith(PREFIX))
    )
    return {name.removeprefix(PREFIX): dict(json.loads(value)) for name, value in rows}
