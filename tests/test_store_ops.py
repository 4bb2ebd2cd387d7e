"""`meldpunt store upgrade [--check]` and `meldpunt store backup` (issue #15, item 1).

--check reports the store's revision and this code's head without migrating, and exits 3 when
an upgrade is pending; `store upgrade` migrates. Both on SQLite and PostgreSQL (the CLI run as a
process, the database given by MELDPUNT_DATABASE_URL). `store backup` copies a live SQLite
store with the online backup API (while another connection writes), refuses to overwrite, and
refuses PostgreSQL naming pg_dump.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from connector.store import Store
from connector.store.engine import make_engines, run_migrations
from tests.conftest import DIVD_SCAN
from tests.test_cli import INGEST_DIVD, cli_env, explain, run_cli, write_config


def _store_at(url: str, revision: str) -> None:
    """A store migrated only up to `revision` (as an older version of the code left it)."""
    _reader, writer = make_engines(url)
    with writer.connect() as conn:
        conn.begin()
        run_migrations(conn, "upgrade", revision)
    writer.dispose()


def _revision(url: str) -> str | None:
    store = Store(url)
    try:
        return store.revision()
    finally:
        store.close()


def test_upgrade_check_reports_a_pending_upgrade_without_migrating(tmp_path: Path, store_url: str) -> None:
    config = write_config(tmp_path)
    env = cli_env(config) | {"MELDPUNT_DATABASE_URL": store_url}
    _store_at(store_url, "0006")
    head = Store.head()
    assert head != "0006"

    check = run_cli("store", "upgrade", "--check", cwd=tmp_path, env=env)
    assert check.returncode == 3, explain(check)
    assert "current 0006" in check.stdout and f"head {head}" in check.stdout, explain(check)
    assert "upgrade is pending" in check.stdout
    assert _revision(store_url) == "0006", "--check migrated the store"

    done = run_cli("store", "upgrade", cwd=tmp_path, env=env)
    assert done.returncode == 0, explain(done)
    assert f"upgraded from 0006 to {head}" in done.stdout
    assert _revision(store_url) == head

    again = run_cli("store", "upgrade", "--check", cwd=tmp_path, env=env)
    assert again.returncode == 0, explain(again)
    assert f"current {head}" in again.stdout and "up to date" in again.stdout


def test_upgrade_check_on_an_empty_database_is_pending(tmp_path: Path, store_url: str) -> None:
    """A database created for the connector but never opened (docs/deploy.md: create the
    database, then `meldpunt store upgrade`); on SQLite that file must exist for --check."""
    if store_url.startswith("sqlite"):
        sqlite3.connect(store_url.removeprefix("sqlite:///")).close()
    env = cli_env(write_config(tmp_path)) | {"MELDPUNT_DATABASE_URL": store_url}
    check = run_cli("store", "upgrade", "--check", cwd=tmp_path, env=env)
    assert check.returncode == 3, explain(check)
    assert "current none" in check.stdout and "not a store yet" in check.stdout
    assert _revision(store_url) is None


def test_a_store_of_newer_code_is_named_not_downgraded(tmp_path: Path, store_url: str) -> None:
    store = Store.open(store_url)
    with store._write_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    store.close()
    env = cli_env(write_config(tmp_path)) | {"MELDPUNT_DATABASE_URL": store_url}
    for args in (["store", "upgrade", "--check"], ["store", "upgrade"]):
        result = run_cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 1, explain(result)
        assert "9999, which this code does not know" in result.stderr, explain(result)


def test_upgrade_check_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("store", "upgrade", "--check", cwd=tmp_path, config=write_config(tmp_path))
    assert result.returncode == 1, explain(result)
    assert "does not exist" in result.stderr
    assert not (tmp_path / "meldpunt.db").exists()


def test_backup_copies_a_sqlite_store_in_use(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ingest = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=tmp_path, config=config)
    assert ingest.returncode == 0, explain(ingest)
    database = tmp_path / "meldpunt.db"
    # Another connection keeps writing while the backup runs (the backup needs no pause).
    stop = threading.Event()

    def write() -> None:
        conn = sqlite3.connect(database, timeout=30)
        conn.execute("CREATE TABLE IF NOT EXISTS scratch (n INTEGER)")
        while not stop.is_set():
            conn.execute("INSERT INTO scratch VALUES (1)")
            conn.commit()
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = run_cli("store", "backup", str(tmp_path / "copy.db"), cwd=tmp_path, config=config)
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 0, explain(result)
    copy = tmp_path / "copy.db"
    assert copy.is_file() and not (tmp_path / "copy.db.part").exists()
    assert not Path(f"{copy}-wal").exists(), "the backup is one file"
    original = Store(f"sqlite:///{database}")
    backup = Store(f"sqlite:///{copy}")
    try:
        assert backup.revision() == original.revision() == Store.head()
        with original.engine.connect() as a, backup.engine.connect() as b:
            for table in ("notifications", "version_blocks", "delivery_blocks", "ingest_runs"):
                query = f"SELECT * FROM {table} ORDER BY 1"
                assert a.exec_driver_sql(query).all() == b.exec_driver_sql(query).all(), table
    finally:
        original.close()
        backup.close()

    again = run_cli("store", "backup", str(copy), cwd=tmp_path, config=config)
    assert again.returncode == 1 and "never overwrites" in again.stderr, explain(again)


def test_backup_refuses_postgresql_naming_pg_dump(tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path)) | {
        "MELDPUNT_DATABASE_URL": "postgresql+psycopg://meldpunt@127.0.0.1:1/meldpunt"
    }
    result = run_cli("store", "backup", str(tmp_path / "x.db"), cwd=tmp_path, env=env)
    assert result.returncode == 2, explain(result)
    assert "pg_dump" in result.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", [["store", "backup", "copy.db"], ["store", "upgrade", "--check"]])
def test_store_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, cwd=tmp_path, config=write_config(tmp_path))
    assert result.returncode == 1, explain(result)
    assert not (tmp_path / "meldpunt.db").exists()
