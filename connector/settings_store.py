"""Settings the deployment generates once and keeps in its database: the `next` token key.

Without `MELDPUNT_TOKEN_SECRET` each server process used a random key, so a restart (or a
second process) refused every cursor a client held. The key is now generated on first start
and kept in the store, where every process that shares the database finds the same one.

Self-contained on purpose, with its own table `settings(name, value)` created when missing:
it is to move into the store package and its migrations later. Race-safe when processes
start together: the table is created under a lock (PostgreSQL: an advisory lock; SQLite:
the writer's BEGIN IMMEDIATE), the value inserted with ON CONFLICT DO NOTHING and then read
back, so whoever inserted first wins and everybody reads the winner's value.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Column, MetaData, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from connector.store import Store

TOKEN_SECRET = "taxii.token_secret"
# pg_advisory_xact_lock key for creating the table: "meldpunt settings" in a few bytes.
_LOCK_KEY = 0x6D656C64_73657474

_metadata = MetaData()
settings = Table(
    "settings",
    _metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text),
)


def get_or_create(store: Store, name: str, make: Callable[[], str]) -> str:
    """The value stored under `name`; when there is none, `make()` stored first. Never logs
    the value (it is a secret for some names)."""
    with store._write_engine.begin() as conn:
        _ensure_table(conn, store.dialect)
        insert = (postgresql.insert if store.dialect == "postgresql" else sqlite.insert)(settings)
        conn.execute(insert.values(name=name, value=make()).on_conflict_do_nothing(index_elements=["name"]))
    with store.engine.connect() as conn:
        value = conn.execute(select(settings.c.value).where(settings.c.name == name)).scalar_one()
    return str(value)


def token_secret(store: Store) -> bytes:
    """The key that signs `next` tokens: generated (256 bits) on first use, then the same for
    every process on this database and after every restart."""
    return get_or_create(store, TOKEN_SECRET, lambda: secrets.token_urlsafe(32)).encode()


def _ensure_table(conn: Connection, dialect: str) -> None:
    if dialect == "postgresql":
        # CREATE TABLE IF NOT EXISTS can still fail when two sessions run it at once (both
        # find no table, one then meets the other's catalogue row); the lock serialises them.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    _metadata.create_all(conn, checkfirst=True)
