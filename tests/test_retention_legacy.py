"""Retention on a store of the old layout (migrated by 0007): its notifications' objects were
stored, not rendered, and go with them; on SQLite and PostgreSQL.

The legacy store (tests/data/legacy-store) holds the sample feeds as the last code of the old
layout wrote them, researchers' STIX among them. Purged far in the future, every notification
goes; what the collections still serve is what researchers sent (stored objects, not the
record's) and objects without personal data.
"""

from __future__ import annotations

import time
from typing import Any

from connector.render.collection import CollectionView
from connector.retention import purge
from connector.store import Store, VersionFilter
from tests.record_view import notification_rows
from tests.test_migration_record import LEGACY, legacy_config, migrated  # noqa: F401 (fixture)

DAY = 86400


def served(store: Store) -> dict[str, list[Any]]:
    view = CollectionView(store)
    return {
        cid: view.page(cid, after=None, limit=100_000, versions=VersionFilter(all=True))
        for cid in LEGACY["served"]
    }


def test_purging_legacy_notifications_takes_their_stored_objects(migrated: Store) -> None:  # noqa: F811
    store = migrated
    config = legacy_config()
    rows = notification_rows(store)
    assert rows and all(r["legacy"] for r in rows)
    own = {r["sighting_id"] for r in rows}
    before = served(store)
    assert any(m.stix_id in own for members in before.values() for m in members)

    report = purge(store, config, now=time.time() + 5000 * DAY)
    assert report.counts["notifications"] == len(rows)
    assert report.counts["stored_objects"] > 0
    assert notification_rows(store) == []
    after = served(store)
    for cid, members in after.items():
        kept = {(m.date_added, m.stix_id) for m in members}
        assert kept <= {(m.date_added, m.stix_id) for m in before[cid]}, "something moved or came anew"
        assert not {m.stix_id for m in members} & own, "a purged notification's sighting is still served"
        kinds = {m.stix_id.split("--")[0] for m in members}
        assert not kinds & {"sighting", "observed-data"} or _researchers(store, members), kinds
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM version_blocks").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM notification_ids").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM misp_event_members").scalar() == 0
        # Every stored shared object the collections still list is a member they serve.
        dangling = conn.exec_driver_sql(
            "SELECT count(*) FROM collection_shared s WHERE s.stored = true AND NOT EXISTS "
            "(SELECT 1 FROM collection_objects c WHERE c.date_added = s.date_added)"
        ).scalar()
        assert dangling == 0


def _researchers(store: Store, members: list[Any]) -> bool:
    """Whether the sightings and observed-data left are researchers' (object_sources)."""
    ids = [m.stix_id for m in members if m.stix_id.split("--")[0] in ("sighting", "observed-data")]
    with store.engine.connect() as conn:
        owned = {r[0] for r in conn.exec_driver_sql("SELECT stix_id FROM object_sources")}
    return set(ids) <= owned
