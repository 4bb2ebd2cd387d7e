"""Each notification's latest version in notification_heads (migration 0014).

A re-observation used to UPDATE the notification's row, which on PostgreSQL writes a whole new
copy of it and of its index entries: a second day of the same hosts grew the store by a
notification row per host. What must hold now: a re-observation leaves every notifications row
as it was (on PostgreSQL: the same tuple, not a copy), moves exactly the heads of the
notifications it updated, and on PostgreSQL does so without new index entries (HOT updates, as
the heads table keeps room on its pages); the migration carries every latest stamp over and the
downgrade carries them back, on both engines, on a store written by the code before.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store
from tests.conftest import DIVD_SCAN, divd_scan_as
from tests.test_membership_layout import alembic
from tests.test_migration_record import legacy_config, served_by
from tests.test_migration_versions import OLD, load_0010

HEADS = "notification_heads"


def _rows(url: str, statement: str) -> list[tuple]:  # type: ignore[type-arg]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(statement)]
    finally:
        engine.dispose()


def _ingest(store: Store, tmp_path: Path, month: str) -> dict[str, int]:
    config = legacy_config()
    store.sync_collections(collection_rows(config))
    scan = divd_scan_as(tmp_path, DIVD_SCAN.read_text().replace("2024-06-1", f"2024-{month}-1"))
    return dict(Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan]).counts)


def test_a_re_observation_moves_only_the_heads(store_url: str, tmp_path: Path) -> None:
    postgres = store_url.startswith("postgresql")
    # On PostgreSQL the tuple's place (ctid) tells a row left alone from a copy of it.
    place = "ctid::text, " if postgres else ""
    store = Store.open(store_url)
    try:
        first = _ingest(store, tmp_path, "06")
        notifications = _rows(store_url, f"SELECT {place}* FROM notifications ORDER BY pk")
        heads = dict(_rows(store_url, "SELECT notification, latest FROM notification_heads"))
        assert len(notifications) == len(heads) == first["new"] > 5
        again = _ingest(store, tmp_path, "08")
        assert again["updated"] == first["new"] and again.get("new", 0) == 0
        assert _rows(store_url, f"SELECT {place}* FROM notifications ORDER BY pk") == notifications
        moved = dict(_rows(store_url, "SELECT notification, latest FROM notification_heads"))
        assert moved.keys() == heads.keys()
        assert all(moved[pk] > heads[pk] for pk in heads)  # every one updated, to a later version
        # what the collection serves is the new versions (read through the heads)
        served = CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=1000)
        stamps = {m.date_added // 16 * 16 for m in served if m.stix_id.startswith("sighting--")}
        assert stamps and stamps <= set(moved.values())
    finally:
        store.close()  # its connections send their statistics as they end
    if postgres:
        (options,) = _rows(store_url, f"SELECT reloptions FROM pg_class WHERE relname = '{HEADS}'")[0]
        assert "fillfactor=50" in options
        updates = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '{}'"
        assert _rows(store_url, updates.format(HEADS)) == [(again["updated"], again["updated"])]  # all HOT
        assert _rows(store_url, updates.format("notifications")) == [(0, 0)]


def test_the_migration_carries_every_latest_stamp_and_the_downgrade_back(store_url: str) -> None:
    load_0010(store_url)  # written by 8a88171 (migration 0010)
    old = {r["pk"]: r["latest"] for r in OLD["tables"]["notifications"]}
    assert len(old) > 10
    alembic(store_url, "upgrade", "0014")
    assert dict(_rows(store_url, "SELECT notification, latest FROM notification_heads")) == old
    store = Store.open(store_url)  # at head: 0014 is the last migration
    try:
        view = CollectionView(store)
        for collection_id, served in OLD["served"].items():
            assert served_by(view, collection_id) == served, collection_id
    finally:
        store.close()
    engine = create_engine(store_url)
    try:
        assert "latest" not in {c["name"] for c in inspect(engine).get_columns("notifications")}
    finally:
        engine.dispose()
    alembic(store_url, "downgrade", "0013")
    assert dict(_rows(store_url, "SELECT pk, latest FROM notifications")) == old
    engine = create_engine(store_url)
    try:
        inspector = inspect(engine)
        (latest,) = [c for c in inspector.get_columns("notifications") if c["name"] == "latest"]
        assert latest["nullable"] is False
        assert "notification_heads" not in inspector.get_table_names()
        # the indexes of the table SQLite rebuilt for NOT NULL are back
        assert {i["name"] for i in inspector.get_indexes("notifications")} >= {
            "ix_notifications_subject",
            "ix_notifications_kind",
        }
    finally:
        engine.dispose()
    alembic(store_url, "upgrade", "head")
    assert dict(_rows(store_url, "SELECT notification, latest FROM notification_heads")) == old


def test_the_downgrade_lists_every_time_again_as_the_code_before_expects(
    store_url: str, tmp_path: Path
) -> None:
    """The code before 0014 listed every time of a notification seen three times or more and
    looked nowhere else; this code lists only what no version names. Going back lists them all."""
    config = legacy_config()
    store = Store.open(store_url)
    try:
        store.sync_collections(collection_rows(config))
        ingest = Ingestor(config, store, load_mappings())
        thrice = [("08", "192.0.2.1"), ("09", "192.0.2.1"), ("07", "192.0.2.1"), ("08", "192.0.2.2")]
        for month, hosts in thrice:  # hosts 192.0.2.1x seen in three months, 192.0.2.2x once
            scan = DIVD_SCAN.read_text().replace("2024-06-1", f"2024-{month}-1").replace("192.0.2.1", hosts)
            ingest.run("divd", "divd-nuclei", [divd_scan_as(tmp_path, scan)])
        counts = {
            pk: (v.count, {v.first_seen_of(n), v.last_seen_of(n)})
            for n, v, _kind in store.iter_notifications()
            for pk in [n.pk]
        }
    finally:
        store.close()
    three = {pk for pk, (count, _) in counts.items() if count == 3}
    assert three and len(three) < len(counts)
    assert _rows(store_url, "SELECT * FROM observations") == []  # each time named by a version
    alembic(store_url, "downgrade", "0013")
    listed: dict[int, set[int]] = {}
    for pk, at in _rows(store_url, "SELECT notification, observed_at FROM observations"):
        listed.setdefault(pk, set()).add(at)
    assert set(listed) == three
    for pk in three:
        assert len(listed[pk]) == 3 and counts[pk][1] <= listed[pk]
    alembic(store_url, "upgrade", "head")
