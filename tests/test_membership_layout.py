"""Collection membership keyed by date_added (migration 0004): what the old layout held comes
through the upgrade (and back through the downgrade) unchanged, and look-ups by STIX id never
walk a whole collection, although the table has no stix_id index any more."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, text

from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter, objects
from connector.store.engine import run_migrations
from connector.store.schema import metadata
from tests.conftest import _drop_pg_database, _fresh_pg_database
from tests.test_store import COLLECTION, add, indicator, opened

OTHER = "22222222-2222-4222-8222-222222222222"
MEMBER_COLUMNS = "collection_id, object_pk, stix_id, type, version, date_added, is_latest"


def alembic(url: str, action: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            run_migrations(conn, action, revision)
    finally:
        engine.dispose()


def members(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {MEMBER_COLUMNS} FROM collection_objects ORDER BY date_added"))
            return [(c, int(pk), s, ty, v, int(d), bool(latest)) for c, pk, s, ty, v, d, latest in rows]
    finally:
        engine.dispose()


def test_upgrade_and_downgrade_keep_every_membership(store_url: str) -> None:
    alembic(store_url, "upgrade", "0003")
    old = [
        (COLLECTION, 1, "indicator--a", "indicator", "2024-01-01T00:00:00.000000Z", 1_000, False),
        (COLLECTION, 2, "indicator--a", "indicator", "2024-02-01T00:00:00.000000Z", 1_001, True),
        (COLLECTION, 3, "ipv4-addr--b", "ipv4-addr", "", 1_002, True),
        (OTHER, 2, "indicator--a", "indicator", "2024-02-01T00:00:00.000000Z", 1_003, True),
    ]
    engine = create_engine(store_url)
    with engine.begin() as conn:
        for pk, stix_id, version in [
            (1, "indicator--a", old[0][4]),
            (2, "indicator--a", old[1][4]),
            (3, "ipv4-addr--b", ""),
        ]:
            conn.execute(
                text("INSERT INTO stix_objects VALUES (:pk, :id, :v, :t, '2.1', '{}')"),
                {"pk": pk, "id": stix_id, "v": version, "t": stix_id.split("--")[0]},
            )
        for row in old:
            conn.execute(
                text(
                    f"INSERT INTO collection_objects ({MEMBER_COLUMNS}) VALUES (:c, :o, :s, :t, :v, :d, :l)"
                ),
                dict(zip("costvdl", row, strict=True)),
            )
    engine.dispose()

    alembic(store_url, "upgrade", "0006")
    assert members(store_url) == old
    alembic(store_url, "downgrade", "0003")
    assert members(store_url) == old

    store = Store.open(store_url)  # migrates to the head, through 0007's record
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    latest = CollectionView(store).page(COLLECTION, after=None, limit=10)
    store.close()
    assert members(store_url) == old
    assert [(m.stix_id, m.version) for m in latest] == [("indicator--a", old[1][4]), ("ipv4-addr--b", "")]


def test_two_collections_may_hold_one_date_added_from_0012_and_a_downgrade_says_why_not(
    store_url: str,
) -> None:
    """A shared object kept where a removed notification had brought it has that entry's
    date_added in each collection that got it (connector/retention.py): 0012 keys memberships
    per collection. Down at 0011 (date_added alone) such a store cannot go, and says so; once
    the two are apart it goes down and up again with every membership."""
    Store.open(store_url).close()  # the head
    shared = [
        (COLLECTION, 1, "identity--a", "identity", "2024-01-01T00:00:00.000000Z", 5_000, True),
        (OTHER, 1, "identity--a", "identity", "2024-01-01T00:00:00.000000Z", 5_000, True),
    ]
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO stix_objects VALUES (1, 'identity--a', :v, 'identity', '2.1', '{}')"),
            {"v": shared[0][4]},
        )
        for row in shared:
            conn.execute(
                text(
                    f"INSERT INTO collection_objects ({MEMBER_COLUMNS}) VALUES (:c, :o, :s, :t, :v, :d, :l)"
                ),
                dict(zip("costvdl", row, strict=True)),
            )
    with pytest.raises(RuntimeError, match="held by more than one collection"):
        alembic(store_url, "downgrade", "0011")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE collection_objects SET date_added = 5001 WHERE collection_id = :c"), {"c": OTHER}
        )
    engine.dispose()
    apart = [shared[0], (*shared[1][:5], 5_001, True)]
    alembic(store_url, "downgrade", "0011")
    assert members(store_url) == apart
    alembic(store_url, "upgrade", "0012")
    assert members(store_url) == apart


def test_the_record_cannot_be_migrated_down_and_says_so(store_url: str) -> None:
    """0007 keeps everything of the old layout, but the old layout has no room for what was
    rendered since: going down is refused with what to do instead, nothing changed."""
    Store.open(store_url).close()
    with pytest.raises(NotImplementedError, match="restore the backup"):
        alembic(store_url, "downgrade", "0006")
    store = Store.open(store_url)
    assert store.revision() == Store.head()
    store.close()


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the store runs on SQLite meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not many:
            seen.append((statement, parameters))

    engines = {store.engine, store._write_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def test_lookups_by_id_go_through_the_id_not_the_collection(tmp_path: Any) -> None:
    """SQLite's planner, without statistics, would answer "this id in this collection" by
    walking the collection's (collection_id, date_added) index: fast on a test's ten objects,
    seconds on a recipient's million. Every statement that looks members up by id must search
    stix_objects by id and the membership by (object_pk, collection_id), whatever the data."""
    store = opened(f"sqlite:///{tmp_path / 'plans.db'}")
    add(store, [indicator(n) for n in range(50)])
    add(store, [indicator(7, "2024-02-01T00:00:00.000Z")])
    wanted = [indicator(7)["id"], indicator(9)["id"]]
    with statements(store) as seen:
        CollectionView(store).page(COLLECTION, after=None, limit=10, ids=wanted)
        CollectionView(store).page(
            COLLECTION, after=None, limit=10, ids=wanted, versions=VersionFilter(last=False, first=True)
        )
        add(store, [indicator(9, "2024-03-01T00:00:00.000Z")])  # looks the stored versions up
        CollectionView(store).remove(COLLECTION, wanted[0], VersionFilter(last=False, all=True))
    by_id = [
        (s, p) for s, p in seen if "collection_objects" in s and "stix_id IN" in s.replace("in (", "IN (")
    ]
    assert len(by_id) >= 5
    raw = store.engine.raw_connection()
    try:
        for statement, parameters in by_id:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            walks = [line for line in plan if "autoindex_collection_obj" in line or line.startswith("SCAN")]
            assert not walks, f"{statement}\n{plan}"
            # Both columns of (object_pk, collection_id): one row per version, not one per
            # collection that holds the object (reference objects are in every collection).
            assert any(
                "uq_collection_objects_member (object_pk=? AND collection_id=?" in line for line in plan
            ), f"{statement}\n{plan}"
        # The writer's check runs once per collection and batch: it uses both index columns, not
        # every membership of a reference object that all collections hold.
        writer_checks = [(s, p) for s, p in by_id if "INDEXED BY" in s]
        assert writer_checks
        for statement, parameters in writer_checks:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert any("(object_pk=? AND collection_id=?)" in line for line in plan), plan
    finally:
        raw.close()
        store.close()


@pytest.mark.parametrize(
    "versions",
    [VersionFilter(), VersionFilter(last=False, all=True), VersionFilter(last=False, first=True)],
    ids=["last", "all", "first"],
)
def test_a_collection_page_walks_its_own_index(tmp_path: Any, versions: VersionFilter) -> None:
    """The other way round: a page of a collection (no ids) reads that collection's
    (collection_id, date_added) index from the cursor on, never the whole table; `first`
    finds each object's earliest version by its id."""
    store = opened(f"sqlite:///{tmp_path / 'plans.db'}")
    add(store, [indicator(n) for n in range(20)])
    with statements(store) as seen:
        CollectionView(store).page(COLLECTION, after=5, limit=10, versions=versions)
    raw = store.engine.raw_connection()
    try:
        plans = {
            statement: [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            for statement, parameters in seen
            if statement.lstrip().upper().startswith("SELECT")
        }
    finally:
        raw.close()
        store.close()
    for plan in plans.values():
        assert not [line for line in plan if line.startswith("SCAN")], plan
    stored = next(plan for statement, plan in plans.items() if "collection_objects" in statement)
    # the table's key, (collection_id, date_added) since migration 0012
    assert any(
        "USING INDEX sqlite_autoindex_collection_objects_1 (collection_id=? AND date_added>?)" in line
        for line in stored
    ), stored
    if versions.first:
        assert any("SEARCH earlier USING INDEX uq_collection_objects_member" in line for line in stored), (
            stored
        )
    delivered = next(plan for statement, plan in plans.items() if "delivery_blocks" in statement)
    assert any("(collection=? AND last>?)" in line for line in delivered), delivered


def test_first_versions_are_each_objects_own(store_url: str) -> None:
    """match[version]=first over a whole collection: every object's own earliest version, not
    the collection's earliest version (objects here have different ones)."""
    store = opened(store_url)
    add(store, [indicator(1, "2024-01-01T00:00:00.000Z"), indicator(2, "2024-03-01T00:00:00.000Z")])
    add(store, [indicator(1, "2024-02-01T00:00:00.000Z"), indicator(2, "2024-04-01T00:00:00.000Z")])
    add(store, [indicator(3, "2024-05-01T00:00:00.000Z")])
    first = CollectionView(store).page(
        COLLECTION, after=None, limit=10, versions=VersionFilter(last=False, first=True)
    )
    store.close()
    assert sorted((m.stix_id, m.version[:7]) for m in first) == [
        (indicator(1)["id"], "2024-01"),
        (indicator(2)["id"], "2024-03"),
        (indicator(3)["id"], "2024-05"),
    ]


def test_postgresql_writers_look_keys_up_through_indexes(postgres_url: str) -> None:
    """Inside one ingest transaction a table grows from nothing to millions of rows that no
    ANALYZE has seen; PostgreSQL's planner then prefers reading the whole table for each batch
    of 500 keys (an empty store's first large ingest ran at a tenth of its later speed)."""
    url, name = _fresh_pg_database(postgres_url)
    store = Store.open(url)
    items = [indicator(n) for n in range(20_000)]
    wanted = [o["id"] for o in items[::40]]
    try:
        with store.writing() as writer:
            objects.add_object_rows(writer, [objects.object_row(o, "{}") for o in items])
            marks = ", ".join(["%s"] * len(wanted))
            plan = [
                row[0]
                for row in writer.conn.exec_driver_sql(
                    f"EXPLAIN SELECT pk, stix_id, modified FROM stix_objects WHERE stix_id IN ({marks})",
                    tuple(wanted),
                )
            ]
    finally:
        store.close()
        _drop_pg_database(postgres_url, name)
    assert not [line for line in plan if "Seq Scan" in line], plan
