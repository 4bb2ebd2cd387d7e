"""Engines for the two databases the store runs on, and its migrations.

SQLite is a file in WAL mode with two engines: readers begin deferred transactions, the writer
begins IMMEDIATE ones (the database's write lock, taken at the start so that two writers never
deadlock on upgrading a read lock). PostgreSQL has one pooled engine; writers serialise on a
row lock of the `clock` table (connector/store/writer.py).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock key serialising schema migration and collection sync (lock_schema).
SCHEMA_LOCK = 0x6D656C64_70756E74 >> 1  # "meldpunt", as a positive bigint
PAGE_SIZE = 16_384  # bytes, of a new SQLite store's pages


def make_engines(url: str) -> tuple[Engine, Engine]:
    """(reader, writer) engines; on SQLite the writer begins IMMEDIATE, the reader deferred."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        return engine, engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)

    def sqlite_engine(begin: str) -> Engine:
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, explicitly
            cursor = dbapi_conn.cursor()
            # A new store's pages are 16 KiB (SQLite's default 4 KiB): an ingest inserts into
            # the digest indexes at random, and with four times the keys a page, fewer pages
            # are split and written (bench/ingest.py --rows 1000000: the store's statements
            # 29.9 -> 23.6 µs/row, the last tenth 9,339 -> 10,826 rows/s, the second day
            # 7,513 -> 8,090 rows/s and 0.24x -> 0.21x). A store made before keeps its page
            # size: the pragma only applies to a database not written yet.
            cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")
            _set_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            if begin != "BEGIN":
                # An ingest's batches touch pages all over the digest indexes: a 128 MiB cache
                # and checkpoints every 40 MiB of WAL rather than 4 write each page fewer times.
                # (bench/ingest.py --rows 1000000: 64 MiB gave 11,900 rows/s, falling to 9,900 in
                # the last tenth as the indexes outgrew it; 128 MiB 13,600, 11,300 at the end,
                # peak RSS 258 MiB; 192 MiB passed the 300 MB the issue allows an ingest.)
                cursor.execute("PRAGMA cache_size=-131072")
                cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    return sqlite_engine("BEGIN"), sqlite_engine("BEGIN IMMEDIATE")


def _set_wal(cursor: Any, timeout: float = 60.0) -> None:
    """PRAGMA journal_mode=WAL, retried while the database is locked.

    Switching a new database file to WAL takes an exclusive lock, and SQLite answers "database
    is locked" at once instead of waiting the busy timeout: processes started together on a new
    store (an ingest and the server) would otherwise fail. Once the file is in WAL mode (it
    stays so) the pragma takes no lock and this returns at the first try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_migrations(conn: Connection, action: str = "upgrade", revision: str = "head") -> None:
    """Alembic `upgrade` or `downgrade` to `revision` on this connection, committed (the
    store's own migrations; env.py takes the connection handed over here)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    getattr(command, action)(cfg, revision)
    conn.commit()


def head_revision() -> str:
    """The revision this code's migrations end at."""
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def lock_schema(conn: Connection) -> None:
    """PostgreSQL: take the store's schema lock for the rest of this transaction.

    Every ingest and server process migrates the store and syncs the collections when it
    opens it. Processes started together on a new (or older) database would otherwise run
    the same CREATE TABLE or insert the same collection at once, and all but one fail on a
    duplicate key (pg_type's for a table, collections_pkey for a collection). Holding this
    lock, one does the work and the others then find it done. On SQLite the writer's
    BEGIN IMMEDIATE already serialises them."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
