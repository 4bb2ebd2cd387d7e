"""Migration 0011 (versions packed) on a store written by the code before it.

tests/data/versions-0010/versions-0010.json holds every table of a SQLite store that the last
code with a column per version value (commit 8a88171, migration 0010) wrote from the sample
feeds, the versions as that code read them, what each collection served then and each run's
unrouted notifications (tests/data/versions-0010/make.py says how it was made). Loaded into a
store at 0010 on SQLite and on PostgreSQL and upgraded, every version must read back as it was,
every collection serve the same bytes, and the store go on from there (a new sighting
supersedes); downgraded again, the rows must be the ones loaded.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Boolean, Connection, MetaData, create_engine, inspect

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from connector.store.engine import MIGRATIONS
from connector.store.notifications import version_chain, versions_by_stamp
from connector.store.packing import BLOCK_VERSIONS, decode_version
from tests.conftest import DIVD_SCAN, divd_scan_as
from tests.test_membership_layout import alembic
from tests.test_migration_record import legacy_config, served_by

OLD = json.loads((Path(__file__).parent / "data" / "versions-0010" / "versions-0010.json").read_text())
OLD_VERSIONS = OLD["tables"]["notification_versions"]


def stored(value: Any) -> Any:
    return base64.b64decode(value["b64"]) if isinstance(value, dict) else value


def load_0010(url: str) -> None:
    """A store at migration 0010 holding the dumped rows (tables in foreign-key order)."""
    alembic(url, "upgrade", "0010")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            metadata = MetaData()
            metadata.reflect(conn)
            for table in metadata.sorted_tables:
                if table.name == "alembic_version":
                    continue
                conn.execute(table.delete())
                rows = OLD["tables"][table.name]
                flags = [c.name for c in table.columns if isinstance(c.type, Boolean)]
                if rows:
                    conn.execute(
                        table.insert(),
                        [
                            {k: stored(v) for k, v in r.items()}
                            | {f: (None if r[f] is None else bool(r[f])) for f in flags}
                            for r in rows
                        ],
                    )
            if conn.dialect.name == "postgresql":
                move_sequences(conn, metadata)
    finally:
        engine.dispose()


def move_sequences(conn: Connection, metadata: MetaData) -> None:
    """Every serial column's sequence past the rows loaded with their keys."""
    for table in metadata.sorted_tables:
        for column in table.primary_key.columns:
            sequence = conn.exec_driver_sql(
                f"SELECT pg_get_serial_sequence('{table.name}', '{column.name}')"
            ).scalar()
            if sequence:
                conn.exec_driver_sql(
                    f"SELECT setval('{sequence}', "
                    f"(SELECT coalesce(max({column.name}), 0) + 1 FROM {table.name}), false)"
                )


def as_read(row: dict[str, Any]) -> dict[str, Any]:
    """A version row of the column layout as a VersionRecord's fields."""
    return row | {"recipients": tuple(int(p) for p in row["recipients"].split())}


@pytest.fixture
def migrated(store_url: str) -> Any:
    load_0010(store_url)
    store = Store.open(store_url)  # migrates to the head
    yield store
    store.close()


def test_the_fixture_covers_what_the_packing_must_carry() -> None:
    versions = OLD["versions"]
    read = [v | {"recipients": tuple(v["recipients"])} for v in versions]
    assert [as_read(r) for r in OLD_VERSIONS] == read
    for field in ("previous", "first_seen", "kind", "evidence"):
        assert any(v[field] is None for v in versions) and any(v[field] is not None for v in versions)
    assert {len(v["recipients"]) for v in versions} >= {0, 1, 2}
    assert max(v["count"] for v in versions) > 2 and OLD["tables"]["observations"]
    assert any(OLD["unrouted"].values())


def test_every_version_reads_back_as_it_was(migrated: Store) -> None:
    with migrated.engine.connect() as conn:
        found = versions_by_stamp(conn, [r["stamp"] for r in OLD_VERSIONS])
        columns = conn.exec_driver_sql("SELECT * FROM version_blocks LIMIT 1").keys()
    assert list(columns) == ["last", "first", "entries"]
    assert len(found) == len(OLD_VERSIONS)
    for row in OLD_VERSIONS:
        version = asdict(found[row["stamp"]])
        assert version == as_read(row), row["stamp"]


def test_every_collection_serves_what_it_served(migrated: Store) -> None:
    view = CollectionView(migrated)
    for collection_id, served in OLD["served"].items():
        assert served_by(view, collection_id) == served, collection_id


def test_each_run_lists_the_same_unrouted_notifications(migrated: Store) -> None:
    for run, rows in OLD["unrouted"].items():
        assert migrated.unrouted(int(run)) == rows, run


def test_a_new_sighting_supersedes_after_the_migration(migrated: Store, tmp_path: Path) -> None:
    config = legacy_config()
    migrated.sync_collections(collection_rows(config))
    scan = divd_scan_as(tmp_path, DIVD_SCAN.read_text().replace("2024-06-1", "2024-08-1"))
    summary = Ingestor(config, migrated, load_mappings()).run("divd", "divd-nuclei", [scan])
    assert summary.counts["updated"] > 0 and summary.counts["new"] == 0
    latest_before = {r["pk"]: r["latest"] for r in OLD["tables"]["notifications"]}
    old_by_stamp = {r["stamp"]: as_read(r) for r in OLD_VERSIONS}
    with migrated.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT notification, latest FROM notification_heads").all()
        moved = {int(pk): int(latest) for pk, latest in rows if latest != latest_before[pk]}
        assert len(moved) == summary.counts["updated"]
        for pk, latest in moved.items():
            chain = version_chain(conn, latest)
            # the new version on top of the migrated chain, which reads as it was stored
            assert chain[0].previous == latest_before[pk] and chain[0].count == chain[1].count + 1
            assert [asdict(v) for v in chain[1:]] == [old_by_stamp[v.stamp] for v in chain[1:]]
    zcert = recipient_collection_id("zcert")
    before = {m[1]: m for m in OLD["served"][zcert]["latest"]}
    view = CollectionView(migrated)
    latest = {m.stix_id: m for m in view.page(zcert, after=None, limit=100_000)}
    assert set(latest) == set(before)  # new versions of the same objects
    renewed = [i for i in latest if latest[i].date_added != before[i][0]]
    assert renewed and all(i.startswith(("sighting--", "observed-data--")) for i in renewed)
    for ident in renewed:
        body = json.loads(latest[ident].body)
        if body["type"] == "sighting":
            assert body["last_seen"].startswith("2024-08")
            versions = view.page(zcert, after=None, limit=100, ids=(ident,), versions=VersionFilter(all=True))
            assert json.loads(versions[-2].body)["count"] + 1 == body["count"]


def test_downgrade_gives_back_the_rows_it_had(store_url: str) -> None:
    load_0010(store_url)
    alembic(store_url, "upgrade", "0011")
    alembic(store_url, "downgrade", "0010")
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT * FROM notification_versions ORDER BY stamp").mappings().all()
    finally:
        engine.dispose()
    assert [dict(r) for r in rows] == sorted(OLD_VERSIONS, key=lambda r: r["stamp"])


def test_the_rows_come_through_in_many_batches(store_url: str) -> None:
    """The migration with batches of 7 rows: every batch boundary is crossed, none repeated."""
    load_0010(store_url)
    path = next((MIGRATIONS / "versions").glob("0011_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    migration.BATCH = 7
    assert len(OLD_VERSIONS) > 10 * migration.BATCH
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
            migration.upgrade()
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT stamp, notification, evidence, packed FROM notification_versions"
            )
            found = {row[0]: decode_version(row[0], row[1], row[2], bytes(row[3])) for row in rows}
    finally:
        engine.dispose()
    assert len(found) == len(OLD_VERSIONS)
    assert [asdict(found[r["stamp"]]) for r in OLD_VERSIONS] == [as_read(r) for r in OLD_VERSIONS]


def _migration(number: str) -> Any:
    path = next((MIGRATIONS / "versions").glob(f"{number}_*.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{number}", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    return migration


def _version_rows(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT stamp, notification, evidence, packed FROM notification_versions ORDER BY stamp"
            ).all()
    finally:
        engine.dispose()
    return [(int(s), int(n), None if e is None else int(e), bytes(p)) for s, n, e, p in rows]


@pytest.mark.parametrize("batch", [7, 20_000])
def test_versions_go_into_blocks_and_come_back_as_rows(store_url: str, batch: int) -> None:
    """Migration 0015 on the versions of a store at 0014 (the fixture's, upgraded): in batches
    of 7 rows (every boundary crossed) and of the default, every version reads back as it was
    from its block, no block holds more than BLOCK_VERSIONS or overlaps another, and the
    downgrade gives back the very rows."""
    load_0010(store_url)
    alembic(store_url, "upgrade", "0014")
    before = _version_rows(store_url)
    assert len(before) == len(OLD_VERSIONS) > 10 * 7
    migration = _migration("0015")
    migration.BATCH = batch
    engine = create_engine(store_url)
    try:
        with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
            migration.upgrade()
        with engine.connect() as conn:
            found = versions_by_stamp(conn, [row[0] for row in before])
            blocks = conn.exec_driver_sql("SELECT last, first FROM version_blocks ORDER BY last").all()
            assert not inspect(conn).has_table("notification_versions")
        assert {stamp: asdict(v) for stamp, v in found.items()} == {
            row[0]: asdict(decode_version(*row)) for row in before
        }
        spans = [(int(first), int(last)) for last, first in blocks]
        assert all(first <= last for first, last in spans)
        assert all(span[1] < following[0] for span, following in pairwise(spans))
        assert len(blocks) >= len(before) / BLOCK_VERSIONS
        with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
            migration.downgrade()
    finally:
        engine.dispose()
    assert _version_rows(store_url) == before
