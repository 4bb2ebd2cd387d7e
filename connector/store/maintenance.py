"""Operating a store: where its schema stands against this code's migrations, whether it can
serve (readiness), and an online copy of a SQLite store.

Migrations run whenever a process opens a store (Store.open); these answer the questions an
operator asks before and around that: is an upgrade pending (`meldpunt store upgrade --check`),
can this process serve (`/readyz`), and how to copy a live SQLite file without stopping it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from connector.store.engine import MIGRATIONS, head_revision


class MaintenanceError(Exception):
    """The operation cannot be done on this store; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a store's schema stands. `current` None: no store there yet (no tables)."""

    current: str | None
    head: str
    known: bool  # whether this code knows `current` (False: newer code migrated the store)

    @property
    def pending(self) -> bool:
        return self.current != self.head

    def describe(self) -> str:
        if self.current is None:
            return f"not a store yet (no tables); upgrading creates it at revision {self.head}"
        if not self.known:
            return (
                f"at revision {self.current}, which this code does not know: a newer version of the "
                f"connector migrated it (this code's head is {self.head}); run that version"
            )
        if self.pending:
            return f"at revision {self.current}; this code's head is {self.head}: an upgrade is pending"
        return f"at revision {self.current}, this code's head: up to date"


def _known_revisions() -> set[str]:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The revision in alembic_version; None when the table is not there (an empty database).
    Errors reaching the database are raised: "unreachable" is not "empty"."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        return None if found is None else str(found)


def schema_state(engine: Engine) -> SchemaState:
    current = current_revision(engine)
    return SchemaState(current, head_revision(), current is None or current in _known_revisions())


def readiness(engine: Engine) -> str | None:
    """None when the store answers and its schema is this code's; else why not (no secrets,
    no driver details: it is shown to whoever asks /readyz)."""
    try:
        state = schema_state(engine)
    except Exception:
        return "store unreachable"
    if state.current is None:
        return "schema missing"
    if state.pending:
        return f"schema at {state.current}, code at {state.head}"
    return None


def backup_sqlite(url: str, target: Path) -> int:
    """Copy a SQLite store to `target` with SQLite's online backup API, while other processes
    read and write it; returns the copy's size in bytes.

    The copy is one consistent snapshot (the backup reads in one transaction), written beside
    the target as `<target>.part`, checked (`PRAGMA quick_check`) and only then renamed to
    `target`, so a target that exists is always a whole backup. An existing target is refused:
    a backup never overwrites the last good one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise MaintenanceError(
            "this store is PostgreSQL: back it up with pg_dump (pg_dump -Fc -f meldpunt.dump DBNAME; "
            "docs/deploy.md, Backups); `store backup` copies SQLite stores"
        )
    source = parsed.database
    if not source or source == ":memory:" or source.startswith("file:"):
        raise MaintenanceError("this SQLite store is not a file that can be copied")
    if target.exists():
        raise MaintenanceError(f"{target} exists; a backup never overwrites one: name a new file")
    if not target.parent.is_dir():
        raise MaintenanceError(f"{target.parent} is not a directory")
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    if not Path(source).is_file():
        raise MaintenanceError(f"the store {source} does not exist")
    src = sqlite3.connect(source, timeout=60)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a single file, no -wal beside it
            verdict = dst.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise MaintenanceError(f"the copy failed its check ({verdict}); nothing was written")
    os.replace(partial, target)
    return target.stat().st_size
