"""A MISP feed event's timestamp goes up whenever its content changes, on SQLite and PostgreSQL.

MISP's feed fetch (Feed::getNewEventUuids) fetches an event again only when the manifest's
timestamp is greater than the one it holds. The timestamp used to be the newest notification
version the event holds, so an event that lost a notification (TAXII DELETE, forget) kept its
timestamp or went back, and one rebuilt for the configuration it shows (public_url, partner
names) kept it: the recipient's MISP kept the deleted host and the stale links for good.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.adapters.mapping import load_mappings
from connector.channels.misp_feed import feed_files
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.retention import forget
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN, divd_scan_as
from tests.test_misp_feed import feed_config


@pytest.fixture
def feed_store(store_url: str) -> Iterator[tuple[Config, Store]]:
    """The feed deployment on an empty store (both engines)."""
    config = feed_config()
    store = Store.open(store_url)
    store.sync_collections(collection_rows(config))
    try:
        yield config, store
    finally:
        store.close()


def two_versions_apart(config: Config, store: Store, tmp_path: Path) -> None:
    """192.0.2.10 and, over a second later, 192.0.2.12: one case, one UTC day, so one event of
    Z-CERT's whose timestamp is the second notification's."""
    lines = DIVD_SCAN.read_text().splitlines()
    ingestor = Ingestor(config, store, load_mappings())
    ingestor.run("divd", "divd-nuclei", [divd_scan_as(tmp_path, lines[0] + "\n")])
    time.sleep(1.2)
    ingestor.run("divd", "divd-nuclei", [divd_scan_as(tmp_path, lines[2] + "\n")])


def timestamps(files: dict[str, bytes]) -> dict[str, int]:
    """Event uuid -> its manifest timestamp, checked against every timestamp in its file."""
    out = {}
    for uuid, entry in json.loads(files["manifest.json"]).items():
        event = json.loads(files[f"{uuid}.json"])["Event"]
        stamps = {event["timestamp"], event["publish_timestamp"]}
        stamps |= {a["timestamp"] for a in event.get("Attribute", [])}
        for obj in event.get("Object", []):
            stamps |= {obj["timestamp"]} | {a["timestamp"] for a in obj["Attribute"]}
        assert stamps == {str(entry["timestamp"])}, (uuid, stamps, entry["timestamp"])
        out[uuid] = int(entry["timestamp"])
    return out


def only_event(files: dict[str, bytes]) -> str:
    (uuid,) = json.loads(files["manifest.json"])
    return str(uuid)


def test_deleting_the_newest_notification_of_an_event_moves_its_timestamp_forward(
    feed_store: tuple[Config, Store], tmp_path: Path
) -> None:
    config, store = feed_store
    two_versions_apart(config, store, tmp_path)
    before = feed_files(config, store, "zcert")
    uuid = only_event(before)
    zcert = recipient_collection_id("zcert")
    view = CollectionView(store)
    newest = max(view.page(zcert, after=None, limit=100, types=("sighting",)), key=lambda m: m.date_added)
    view.remove(zcert, newest.stix_id, VersionFilter(all=True))
    after = feed_files(config, store, "zcert")
    assert after[f"{uuid}.json"] != before[f"{uuid}.json"]
    assert timestamps(after)[uuid] > timestamps(before)[uuid]
    assert feed_files(config, store, "zcert") == after, "unchanged since: the same bytes"


def test_an_event_rebuilt_for_a_configuration_change_moves_its_timestamp_forward(
    feed_store: tuple[Config, Store],
) -> None:
    config, store = feed_store
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    before = feed_files(config, store, "zcert")
    moved = feed_config(public_url="https://meldpunt.example/new/")
    after = feed_files(moved, store, "zcert")
    old, new = timestamps(before), timestamps(after)
    changed = [u for u in new if after[f"{u}.json"] != before[f"{u}.json"]]
    assert changed
    stale = [u for u in changed if new[u] <= old[u]]
    assert not stale, f"{len(stale)} of {len(changed)} changed events keep their timestamp"


def test_a_rebuild_that_changes_nothing_keeps_the_bytes(feed_store: tuple[Config, Store]) -> None:
    """A configuration change no event shows (FEED_FORMAT, api_root, a partner without events
    here) builds the events again: each keeps its timestamp, so MISP fetches nothing."""
    config, store = feed_store
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    before = feed_files(config, store, "zcert")
    raw = config.model_dump(mode="json")
    raw["partners"][-1]["name"] += ", renamed"
    assert raw["partners"][-1]["id"] != "divd"
    renamed = parse_config(raw)
    assert feed_files(renamed, store, "zcert") == before


def test_forgetting_a_host_moves_its_events_timestamp_forward(
    feed_store: tuple[Config, Store], tmp_path: Path
) -> None:
    """Retention drops the stored file of an event it cut a notification out of (it shows
    what was removed) but keeps the timestamp served, so the rebuilt event passes it."""
    config, store = feed_store
    two_versions_apart(config, store, tmp_path)
    before = feed_files(config, store, "zcert")
    uuid = only_event(before)
    forget(store, config, "192.0.2.12")
    after = feed_files(config, store, "zcert")
    assert b"192.0.2.12" not in after[f"{uuid}.json"] and b"192.0.2.10" in after[f"{uuid}.json"]
    assert timestamps(after)[uuid] > timestamps(before)[uuid]
