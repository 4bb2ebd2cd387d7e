"""`meldpunt store`: the store's schema (upgrade, check) and its backup.

Every process migrates the store when it opens it; `store upgrade` does it on its own, as an
upgrade step before the new code's processes start (docs/deploy.md), and `--check` says
whether one is pending without changing anything.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from connector.cli_common import (
    ConfigOption,
    fail,
    load,
    open_store,
    refuse_missing_store,
    store_errors,
    store_failure,
)
from connector.console import out

store_app = typer.Typer(help="The store: schema upgrades and backups.", no_args_is_help=True)

UPGRADE_PENDING = 3  # `store upgrade --check`: an upgrade is pending (README, exit codes)


@store_app.command("upgrade")
def upgrade(
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only report the store's revision and this code's; exit 3 when an upgrade is "
            "pending. Changes nothing.",
        ),
    ] = False,
    config_path: ConfigOption = None,
) -> None:
    """Migrate the store to this code's schema (every process also does so when it opens it).

    With --check: print the store's revision and the head of this code's migrations and exit 3
    when they differ (1 when the store was migrated by a newer version of the connector)."""
    config = load(config_path)
    if check:
        refuse_missing_store(config, config_path)
    store = open_store(config, config_path, create=True, migrate=False)
    try:
        before = store.schema_state()
    except store_errors() as exc:
        raise store_failure(config, exc) from None
    finally:
        store.close()
    if not before.known:
        raise fail("the store is " + before.describe(), code=1)
    if check:
        out.print(f"current {before.current or 'none'}", markup=False)
        out.print(f"head {before.head}", markup=False)
        out.print("the store is " + before.describe(), markup=False)
        if before.pending:
            raise typer.Exit(UPGRADE_PENDING)
        return
    store = open_store(config, config_path, create=True)  # migrates, under the schema lock
    store.close()
    if before.pending:
        out.print(f"upgraded from {before.current or 'nothing'} to {before.head}", markup=False)
    else:
        out.print(f"already at {before.head}; nothing to do", markup=False)


@store_app.command("backup")
def backup(
    target: Annotated[Path, typer.Argument(help="The backup file to write (must not exist).")],
    config_path: ConfigOption = None,
) -> None:
    """Copy a SQLite store to TARGET while it is in use (SQLite's online backup API).

    PostgreSQL stores are backed up with pg_dump (docs/deploy.md); this refuses them."""
    from connector.store.maintenance import MaintenanceError, backup_sqlite

    config = load(config_path)
    if not config.database.startswith("sqlite"):
        raise fail(
            "this store is PostgreSQL: back it up with pg_dump (pg_dump -Fc -f meldpunt.dump DBNAME; "
            "docs/deploy.md, Backups); `store backup` copies SQLite stores"
        )
    refuse_missing_store(config, config_path)
    try:
        size = backup_sqlite(config.database, target)
    except (MaintenanceError, sqlite3.Error) as exc:
        raise fail(str(exc), code=1) from None
    except OSError as exc:
        raise fail(f"cannot write {target}: {exc.strerror or exc}", code=1) from None
    out.print(f"backed up to {target} ({size} bytes)", markup=False)
