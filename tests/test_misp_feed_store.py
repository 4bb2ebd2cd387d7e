"""MISP feeds served from what is stored (issue #14, item 3): each event is built when it
changes, not when a file is asked for. A manifest or hashes.csv request builds nothing; an
event file builds at most its own event, and only when it is out of date. What is served is
byte for byte what building the whole feed gives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import connector.channels.misp_feed as misp_feed
import connector.render.misp as render_misp
from connector.adapters.mapping import load_mappings
from connector.channels.misp_feed import Served, export_feed, feed_file, feed_files, refresh_feeds
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN, password_for, start_server
from tests.test_misp_feed import feed_config

DIVD_CASE = DIVD_SCAN.parent / "DIVD-2024-00012.yaml"


@pytest.fixture
def feed_store(store_url: str) -> Iterator[tuple[Config, Store]]:
    config = feed_config()
    store = Store.open(store_url)
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    try:
        yield config, store
    finally:
        store.close()


class Builds:
    """Counts the MISP events built (the expensive part: reading, rendering, PyMISP)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        original = render_misp.build_event

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.events.append(args[3])
            return original(*args, **kwargs)

        monkeypatch.setattr(misp_feed, "build_event", counting)


def whole_feed(config: Config, store: Store, recipient: str) -> dict[str, bytes]:
    """The feed as building every event now gives it (what every request used to do), each
    event built over the one stored, as a refresh builds it: the same content keeps the
    timestamp served (other content would be stamped after it)."""
    events = []
    for event_uuid, label in store.misp_events(recipient):
        body = store.misp_feed_body(recipient, event_uuid)
        served = None if body is None else Served(int(json.loads(body)["Event"]["timestamp"]), body)
        events.append(misp_feed.build_feed_event(config, store, recipient, event_uuid, label, served))
    files = {f"{e.event_uuid}.json": e.body.encode() for e in events}
    manifest = {e.event_uuid: json.loads(e.manifest) for e in events}
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    lines = "".join(e.hashes for e in sorted(events, key=lambda e: e.event_uuid))
    files["hashes.csv"] = lines.encode()
    return files


def test_manifest_and_hashes_requests_build_no_event(
    feed_store: tuple[Config, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store = feed_store
    feed_files(config, store, "zcert")  # everything built once (stored, from here on)
    builds = Builds(monkeypatch)
    for _ in range(3):
        assert json.loads(feed_file(config, store, "zcert", "manifest.json") or b"")
        assert feed_file(config, store, "zcert", "hashes.csv")
    assert builds.events == []
    some = next(iter(json.loads(feed_file(config, store, "zcert", "manifest.json") or b"")))
    assert feed_file(config, store, "zcert", f"{some}.json")
    assert builds.events == []  # stored and up to date: served as it is


def test_what_is_served_is_what_building_the_whole_feed_gives(feed_store: tuple[Config, Store]) -> None:
    config, store = feed_store
    refresh_feeds(config, store)
    for recipient in ("zcert", "gemeente-voorbeeld"):
        want = whole_feed(config, store, recipient)
        assert feed_files(config, store, recipient) == want
        for name, content in want.items():
            assert feed_file(config, store, recipient, name) == content, name


def test_an_ingest_rebuilds_only_the_events_it_changed(
    feed_store: tuple[Config, Store], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, store = feed_store
    before = feed_files(config, store, "zcert")
    builds = Builds(monkeypatch)
    assert feed_files(config, store, "zcert") == before
    assert builds.events == []  # nothing changed: nothing built
    # One finding of Z-CERT's seen again later the same day: its event changes, no other.
    line = json.loads(DIVD_SCAN.read_text().splitlines()[0])
    line["timestamp"] = line["timestamp"].replace("04:48:41", "23:00:00")
    scan = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    scan.write_text(json.dumps(line) + "\n")
    (tmp_path / "DIVD-2024-00012.yaml").write_text(DIVD_CASE.read_text())
    assert Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan]).counts["updated"] == 1
    after = feed_files(config, store, "zcert")
    assert len(builds.events) == 1
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed <= {f"{e}.json" for e in builds.events} | {"manifest.json", "hashes.csv"}
    assert after == whole_feed(config, store, "zcert")


def test_an_event_file_out_of_date_is_built_on_its_own(
    feed_store: tuple[Config, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the refresher gets to it, a stale event file is built when asked for (only that
    one), so what MISP fetches is never older than the record."""
    config, store = feed_store
    builds = Builds(monkeypatch)
    uuids = [u for u, _ in store.misp_events("zcert")]
    assert feed_file(config, store, "zcert", "manifest.json") == b"{}"  # nothing built yet
    assert builds.events == []
    body = feed_file(config, store, "zcert", f"{uuids[0]}.json")
    assert body and json.loads(body)["Event"]["uuid"] == uuids[0]
    assert builds.events == [uuids[0]]
    assert list(json.loads(feed_file(config, store, "zcert", "manifest.json") or b"")) == [uuids[0]]
    assert feed_file(config, store, "zcert", "00000000-0000-0000-0000-000000000000.json") is None


def test_a_deletion_reaches_the_feed(feed_store: tuple[Config, Store]) -> None:
    config, store = feed_store
    refresh_feeds(config, store)
    zcert = recipient_collection_id("zcert")
    view = CollectionView(store)
    sighting = next(m.stix_id for m in view.page(zcert, after=None, limit=100, types=("sighting",)))
    hosts_before = feed_files(config, store, "zcert")["hashes.csv"].count(b"\n")
    view.remove(zcert, sighting, VersionFilter(all=True))
    built = refresh_feeds(config, store)
    assert built["zcert"] >= 1 and built["gemeente-voorbeeld"] == 0
    after = feed_files(config, store, "zcert")
    assert after["hashes.csv"].count(b"\n") < hosts_before
    assert after == whole_feed(config, store, "zcert")


def test_a_configuration_change_the_events_show_rebuilds_them(feed_store: tuple[Config, Store]) -> None:
    config, store = feed_store
    refresh_feeds(config, store)
    raw = config.model_dump(mode="json")
    raw["partners"][0]["name"] = "DIVD, renamed"
    renamed = parse_config(raw)
    built = refresh_feeds(renamed, store)
    assert built["zcert"] == len(store.misp_events("zcert"))
    assert b"DIVD, renamed" in feed_files(renamed, store, "zcert")["manifest.json"]


def test_export_feed_writes_the_stored_feed(feed_store: tuple[Config, Store], tmp_path: Path) -> None:
    config, store = feed_store
    count = export_feed(config, store, "zcert", tmp_path / "feed")
    want = whole_feed(config, store, "zcert")
    assert count == len(want) - 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "feed").iterdir()} == want


def test_the_server_builds_the_feed_in_the_background(tmp_path: Path) -> None:
    """Started, the server builds what is out of date on its own; a manifest request only ever
    reads what is stored."""
    config = feed_config(misp_feed_refresh_seconds=0.5)
    store = Store.open(f"sqlite:///{tmp_path / 'f.db'}")
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    running, server, thread = start_server(config, store)
    try:
        auth = ("zcert-poller", password_for("zcert-poller"))
        url = f"{running.url}/misp-feed/zcert/manifest.json"
        deadline = time.monotonic() + 30
        manifest: dict[str, object] = {}
        while time.monotonic() < deadline and len(manifest) < len(store.misp_events("zcert")):
            resp = requests.get(url, auth=auth, timeout=10)
            assert resp.status_code == 200
            manifest = resp.json()
            time.sleep(0.2)
        assert len(manifest) == len(store.misp_events("zcert")) > 0
        hashes = requests.get(f"{running.url}/misp-feed/zcert/hashes.csv", auth=auth, timeout=10)
        assert hashes.content == whole_feed(config, store, "zcert")["hashes.csv"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        store.close()


def test_an_event_with_nothing_left_is_not_served(feed_store: tuple[Config, Store]) -> None:
    """Every notification of the recipient's events deleted from its collection: the events
    leave the feed (no empty event, no file), instead of failing to build (an event needs a
    date, which only its notifications give)."""
    config, store = feed_store
    refresh_feeds(config, store)
    events = [uuid for uuid, _label in store.misp_events("zcert")]
    assert events
    zcert = recipient_collection_id("zcert")
    view = CollectionView(store)
    for m in view.page(zcert, after=None, limit=10_000, types=("sighting",)):
        view.remove(zcert, m.stix_id, VersionFilter(all=True))
    assert refresh_feeds(config, store)["zcert"] == len(events)
    files = feed_files(config, store, "zcert")
    assert files == {"manifest.json": b"{}", "hashes.csv": b""}
    assert all(feed_file(config, store, "zcert", f"{uuid}.json") is None for uuid in events)
    assert refresh_feeds(config, store)["zcert"] == 0, "an empty event is built again and again"
