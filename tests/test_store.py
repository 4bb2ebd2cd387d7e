"""The store on SQLite and PostgreSQL: schema from migrations, date_added order, versions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from connector.render.collection import CollectionView
from connector.store import CollectionRow, Store, VersionFilter
from connector.store.schema import metadata
from connector.store.times import timestamp_to_us, us_to_timestamp, version_key

COLLECTION = "11111111-1111-4111-8111-111111111111"


def indicator(n: int, modified: str = "2024-01-01T00:00:00.000Z") -> dict:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{n:08d}-0000-4000-8000-000000000000",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": modified,
        "pattern_type": "stix",
        "pattern": "[ipv4-addr:value = '192.0.2.1']",
        "valid_from": "2024-01-01T00:00:00Z",
    }


def opened(url: str) -> Store:
    """A store with the one collection these tests write to."""
    store = Store.open(url)
    store.sync_collections([CollectionRow(COLLECTION, "recipient", "test", "Test", "")])
    return store


def add(store: Store, objects: list[dict]) -> int:
    return store.store_objects(COLLECTION, objects)


def test_migrations_create_exactly_the_declared_schema(store_url: str) -> None:
    store = Store.open(store_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    store.close()
    assert diff == []


def test_migrate_twice_is_harmless(store_url: str) -> None:
    store = Store.open(store_url)
    store.migrate()
    store.close()


_OPEN_STORE = """
import sys, time
from connector.store import CollectionRow, Store
store = Store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all processes begin together
store.migrate()
store.sync_collections(
    [CollectionRow(f"{n:08d}-0000-4000-8000-000000000000", "recipient", f"r{n}", "t", "") for n in range(50)]
)
store.close()
"""


def test_processes_opening_an_empty_store_at_once_all_succeed(store_url: str) -> None:
    """Ingest and server processes started together on a new (or older) database all migrate
    it and sync the collections at once: none may fail on another's CREATE TABLE or collection
    row (PostgreSQL: a duplicate key in pg_type, in collections_pkey). Processes, not threads:
    Alembic's `context` is one per process."""
    at = str(time.time() + 3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE, store_url, at], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    failures = [err for err in (p.communicate(timeout=120)[1] for p in procs) if "Error" in err]
    assert [p.returncode for p in procs] == [0, 0, 0], failures[0][-600:]
    store = Store(store_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM collections").scalar() == 50
    store.close()


def test_date_added_strictly_increases_across_concurrent_writers(store_url: str) -> None:
    store = opened(store_url)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(20):
                add(store, [indicator(offset * 1000 + i * 3 + k) for k in range(3)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    members = CollectionView(store).page(COLLECTION, after=None, limit=10_000)
    stamps = [m.date_added for m in members]
    assert len(stamps) == 4 * 20 * 3
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # Keyset paging from any point returns exactly the rest.
    middle = stamps[100]
    assert [
        m.date_added for m in CollectionView(store).page(COLLECTION, after=middle, limit=10_000)
    ] == stamps[101:]
    store.close()


def test_latest_version_wins_even_when_added_out_of_order(store_url: str) -> None:
    store = opened(store_url)
    add(store, [indicator(1, "2024-03-01T00:00:00.000Z")])
    add(store, [indicator(1, "2024-01-01T00:00:00.000Z")])  # an older version arrives later
    add(store, [indicator(1, "2024-02-01T00:00:00Z")])
    latest = CollectionView(store).page(COLLECTION, after=None, limit=10)
    assert [m.version for m in latest] == [version_key("2024-03-01T00:00:00Z")]
    every = CollectionView(store).page(COLLECTION, after=None, limit=10, versions=VersionFilter(all=True))
    assert len(every) == 3
    first = CollectionView(store).page(
        COLLECTION, after=None, limit=10, versions=VersionFilter(last=False, first=True)
    )
    assert [m.version for m in first] == [version_key("2024-01-01T00:00:00Z")]
    exact = CollectionView(store).page(
        COLLECTION,
        after=None,
        limit=10,
        versions=VersionFilter(last=False, exact=(version_key("2024-02-01T00:00:00.000Z"),)),
    )
    assert len(exact) == 1
    add(store, [indicator(1, "2024-03-01T00:00:00.000Z")])  # the same version again: no new member
    assert (
        len(CollectionView(store).page(COLLECTION, after=None, limit=10, versions=VersionFilter(all=True)))
        == 3
    )
    store.close()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2024-06-12T04:48:41Z", "2024-06-12T04:48:41.000000Z"),
        ("2024-06-12T04:48:41.5+02:00", "2024-06-12T02:48:41.500000Z"),
        ("2024-06-12T04:48:41.123456789Z", "2024-06-12T04:48:41.123456Z"),
    ],
)
def test_timestamps_round_trip(text: str, expected: str) -> None:
    assert us_to_timestamp(timestamp_to_us(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2024-06-12", "2024-06-12T04:48:41", "2024-13-01T00:00:00Z"]
)
def test_malformed_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        timestamp_to_us(text)


def test_rows_go_in_byte_for_byte_whatever_they_hold(store_url: str) -> None:
    """PostgreSQL takes ingest rows by COPY, whose text format gives tab, newline and backslash
    a meaning of their own: none of them, nor any other character, may change on the way."""
    awkward = "tab\there, newline\nthere, backslash \\ and \\N, quote \" ' , nul-free ü 中 \U0001f600 \r"
    objects = [indicator(n) for n in range(3)]
    bodies = [orjson.dumps({**o, "description": awkward}).decode() + awkward for o in objects]
    store = opened(store_url)
    assert store.store_objects(COLLECTION, objects, bodies) == 3
    assert store.store_objects(COLLECTION, objects, bodies) == 0  # every membership is there already
    members = CollectionView(store).page(COLLECTION, after=None, limit=10)
    store.close()
    assert [m.body for m in members] == bodies


def test_an_object_without_versions_given_twice_in_one_call_is_one_member(store_url: str) -> None:
    """SCO memberships skip what is present (on PostgreSQL through a staging table and one
    INSERT ... ON CONFLICT DO NOTHING): a duplicate inside the same call is present too."""
    sco = {
        "type": "ipv4-addr",
        "spec_version": "2.1",
        "id": "ipv4-addr--11111111-1111-5111-8111-111111111111",
    }
    store = opened(store_url)
    assert store.store_objects(COLLECTION, [sco, sco]) == 1
    assert store.store_objects(COLLECTION, [sco]) == 0
    assert [m.stix_id for m in CollectionView(store).page(COLLECTION, after=None, limit=10)] == [sco["id"]]
    store.close()
