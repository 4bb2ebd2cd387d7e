"""Migration 0007 (the notification record) on a store written by the code before it.

tests/data/legacy-store/legacy-0006.json holds every table of a SQLite store that the last code
of the old layout (commit 4cb141b) wrote from the sample feeds, and what each collection served
then (tests/data/legacy-store/make.py says how it was made). Loaded into a store at 0006 on
SQLite and on PostgreSQL and upgraded, nothing may be lost: every notification, every
collection member with its date_added and bytes, the order; and the store must go on from there
as if it had always been one (re-ingest changes nothing, a new sighting supersedes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Boolean, MetaData, Table, create_engine

from connector.adapters.mapping import load_mappings
from connector.channels.misp_feed import feed_files
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.explain import explain_target
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.routing import Policy, Router
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN, REPO, SHARED_DATA, divd_scan_as
from tests.record_view import notification_rows
from tests.test_membership_layout import alembic

LEGACY = json.loads((Path(__file__).parent / "data" / "legacy-store" / "legacy-0006.json").read_text())
# Tables in an order their foreign keys allow.
ORDER = ["stix_objects", "collection_objects", "ingest_runs", "run_rows"]
SERIAL = {"stix_objects": "pk", "ingest_runs": "id", "run_rows": "pk", "audit_log": "pk"}


def legacy_config() -> Config:
    """The configuration make.py wrote the store with."""
    raw = yaml.safe_load((REPO / "config" / "meldpunt.yaml").read_text())
    raw["partners"] += [
        {"id": "shadowserver", "name": "Shadowserver"},
        {"id": "connect2trust", "name": "Connect2Trust", "formats": ["misp-event"]},
    ]
    for r in raw["recipients"]:
        if r["id"] == "zcert":
            r["misp"] = {"feed": True}
    return parse_config(raw)


def load_legacy(url: str) -> None:
    """A store at migration 0006 holding the legacy store's rows."""
    alembic(url, "upgrade", "0006")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            names = [n for n in ORDER if n in LEGACY["tables"]]
            names += sorted(n for n in LEGACY["tables"] if n not in ORDER and n != "alembic_version")
            for name in names:
                rows = LEGACY["tables"][name]
                table = Table(name, MetaData(), autoload_with=conn)
                flags = [c.name for c in table.columns if isinstance(c.type, Boolean)]
                if name == "clock":
                    conn.execute(table.delete())
                if rows:
                    conn.execute(
                        table.insert(),
                        [r | {f: (None if r[f] is None else bool(r[f])) for f in flags} for r in rows],
                    )
            if conn.dialect.name == "postgresql":
                for name, column in SERIAL.items():
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "
                        f"(SELECT coalesce(max({column}), 0) + 1 FROM {name}), false)"
                    )
    finally:
        engine.dispose()


@pytest.fixture
def migrated(store_url: str) -> Any:
    load_legacy(store_url)
    store = Store.open(store_url)  # migrates to the head
    yield store
    store.close()


def test_every_notification_comes_through(migrated: Store) -> None:
    old = {
        (r["partner"], r["classification"], r["identifier"], r["observable"], r["day"]): r
        for r in LEGACY["tables"]["notifications"]
    }
    new = {
        (r["partner"], r["classification"], r["identifier"], r["observable"], r["day"]): r
        for r in notification_rows(migrated)
    }
    assert set(new) == set(old)
    for key, row in new.items():
        was = old[key]
        assert row["legacy"] is True
        assert (row["count"], row["first_seen"], row["last_seen"]) == (
            was["count"],
            was["first_seen"] // 1000,
            was["last_seen"] // 1000,
        )
        assert row["sighting_id"] == was["sighting_id"]
        assert row["recipients"] == json.loads(was["recipients"])


def served_by(view: CollectionView, collection_id: str) -> dict[str, list[list[Any]]]:
    """What a collection serves, as the fixtures' make scripts record it: every version of every
    object (date_added, id, version, bytes) in order, and the latest versions."""
    every = view.page(collection_id, after=None, limit=100_000, versions=VersionFilter(all=True))
    latest = view.page(collection_id, after=None, limit=100_000)
    return {
        "all": [[m.date_added, m.stix_id, m.version, m.body] for m in every],
        "latest": [[m.date_added, m.stix_id, m.version] for m in latest],
    }


def test_every_collection_serves_what_it_served(migrated: Store) -> None:
    """Every version of every object, at its date_added, byte for byte, in the same order; and
    the same latest versions."""
    view = CollectionView(migrated)
    for collection_id, served in LEGACY["served"].items():
        assert served_by(view, collection_id) == served, collection_id


def test_ingesting_the_same_inputs_again_changes_nothing(migrated: Store) -> None:
    config = legacy_config()
    ingest = Ingestor(config, migrated, load_mappings())
    again = ingest.run("divd", "divd-nuclei", [DIVD_SCAN])
    assert (again.counts["new"], again.counts["updated"]) == (0, 0)
    assert again.counts["unchanged"] > 0
    leaks = ingest.run(
        "divd", "divd-credentials", [SHARED_DATA / "credentials" / "DIVD-2024-00037.credentials.csv"]
    )
    assert (leaks.counts["new"], leaks.counts["updated"]) == (0, 0)
    for collection_id, served in LEGACY["served"].items():
        latest = CollectionView(migrated).page(collection_id, after=None, limit=100_000)
        assert [[m.date_added, m.stix_id, m.version] for m in latest] == served["latest"]


def test_a_new_sighting_of_a_legacy_notification_supersedes_its_stored_objects(
    migrated: Store, tmp_path: Path
) -> None:
    config = legacy_config()
    migrated.sync_collections(collection_rows(config))
    scan = divd_scan_as(tmp_path, DIVD_SCAN.read_text().replace("2024-06-12T04:48:41", "2024-06-14T04:48:41"))
    summary = Ingestor(config, migrated, load_mappings()).run("divd", "divd-nuclei", [scan])
    assert summary.counts["updated"] > 0 and summary.counts["new"] == 0
    zcert = recipient_collection_id("zcert")
    view = CollectionView(migrated)
    old_latest = {m[1]: m for m in LEGACY["served"][zcert]["latest"]}
    latest = {m.stix_id: m for m in view.page(zcert, after=None, limit=100_000)}
    assert set(latest) == set(old_latest)  # the same objects: new versions, no new objects
    moved = [i for i in latest if latest[i].date_added != old_latest[i][0]]
    assert moved and all(i.startswith(("sighting--", "observed-data--")) for i in moved)
    for ident in moved:
        body = json.loads(latest[ident].body)
        versions = view.page(zcert, after=None, limit=100, ids=(ident,), versions=VersionFilter(all=True))
        assert len(versions) >= 2 and versions[-1].body == latest[ident].body  # stored ones, then this
        if body["type"] == "sighting":
            assert body["last_seen"].startswith("2024-06-14")
            before = json.loads(versions[-2].body)
            assert body["count"] == before["count"] + 1 and body["id"] == before["id"]


def test_misp_events_and_explain_work_on_legacy_notifications(migrated: Store) -> None:
    config = legacy_config()
    files = feed_files(config, migrated, "zcert")
    events = [json.loads(v) for k, v in files.items() if k not in ("manifest.json", "hashes.csv")]
    assert events and all(e["Event"].get("Object") or e["Event"].get("Attribute") for e in events)
    sighting = next(r["sighting_id"] for r in LEGACY["tables"]["notifications"] if r["partner"] == "divd")
    lines = explain_target(Router(config), sighting, Policy("amber"), migrated)
    assert lines[0].startswith("notification ") and lines[-1].startswith("result: ")
