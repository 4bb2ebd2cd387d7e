"""SQL of settings the deployment generates once and keeps in its database (the key that signs
TAXII `next` tokens).

Race-safe when processes start together: the value is inserted with ON CONFLICT DO NOTHING and
read back, so whoever inserted first wins and every process reads the winner's value.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.store import schema as t


def get_or_create(writer: Engine, reader: Engine, name: str, make: Callable[[], str]) -> str:
    """The value stored under `name`; when there is none, `make()` stored first. Never logs the
    value (it is a secret for some names)."""
    dialect = writer.dialect.name
    with writer.begin() as conn:
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t.settings)
        conn.execute(insert.values(name=name, value=make()).on_conflict_do_nothing(index_elements=["name"]))
    with reader.connect() as conn:
        return str(conn.execute(select(t.settings.c.value).where(t.settings.c.name == name)).scalar_one())
