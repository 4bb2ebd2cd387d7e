"""MISP feeds per recipient: files that load back with PyMISP, served with the recipient's
credentials only, with manifest and hashes that match the events."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import requests
import yaml
from pymisp import MISPEvent

from connector import stats
from connector.adapters.mapping import load_mappings
from connector.channels.misp_feed import export_feed, feed_files
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.passwords import hash_password
from connector.store import Store
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, password_for, start_server


def feed_config(**server: object) -> Config:
    """The example deployment with MISP feeds for zcert and gemeente-voorbeeld, known
    passwords, and `server` settings over the example's."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    for r in raw["recipients"]:
        if r["id"] in ("zcert", "gemeente-voorbeeld"):
            r["misp"] = {"feed": True}
    for u in raw["users"]:
        u["password_hash"] = hash_password(password_for(u["username"]))
    raw["server"]["public_url"] = "https://meldpunt.example"
    raw["server"].update(server)
    return parse_config(raw)


def ingested(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = feed_config()
    store = Store.open(f"sqlite:///{tmp_path / 'f.db'}")
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    return config, store


def test_feed_files_load_back_and_match_manifest_and_hashes(tmp_path: Path) -> None:
    config, store = ingested(tmp_path)
    count = export_feed(config, store, "zcert", tmp_path / "feed")
    manifest = json.loads((tmp_path / "feed" / "manifest.json").read_text())
    assert count == len(manifest) > 0
    hashes = {tuple(line.split(",")) for line in (tmp_path / "feed" / "hashes.csv").read_text().splitlines()}
    seen_hashes = set()
    hosts = set()
    for uuid, meta in manifest.items():
        event = MISPEvent()
        event.load_file(str(tmp_path / "feed" / f"{uuid}.json"))
        assert event.uuid == uuid
        assert event.info == meta["info"]
        assert {t.name for t in event.tags} == {t["name"] for t in meta["Tag"]} >= {"tlp:amber"}
        for attribute in event.attributes:  # provenance: who reported it, in which case
            seen_hashes.add((hashlib.md5(str(attribute.value).encode()).hexdigest(), uuid))
        for obj in event.objects:
            for attribute in obj.attributes:
                seen_hashes.add((hashlib.md5(str(attribute.value).encode()).hexdigest(), uuid))
                if attribute.object_relation == "ip":
                    hosts.add(attribute.value)
    assert seen_hashes == hashes
    # Exactly Z-CERT's hosts: its own network claims and those of the hospital it serves.
    assert hosts and all(h.startswith("192.0.2.") or h.startswith("2001:db8:10:") for h in hosts)


def test_attribute_uuids_are_unique_and_stable(tmp_path: Path) -> None:
    config, store = ingested(tmp_path)
    first = feed_files(config, store, "zcert")
    again = feed_files(config, store, "zcert")
    assert first == again  # nothing changed: byte-identical feed, so MISP pulls nothing new
    uuids = [
        a["uuid"]
        for name, body in first.items()
        if name.endswith(".json") and name != "manifest.json"
        for o in json.loads(body)["Event"].get("Object", [])
        for a in o["Attribute"]
    ]
    assert len(uuids) == len(set(uuids))


def test_feed_is_served_only_to_the_recipients_users(tmp_path: Path) -> None:
    config, store = ingested(tmp_path)
    running, server, thread = start_server(config, store)
    try:
        base = f"{running.url}/misp-feed"
        auth = ("zcert-poller", password_for("zcert-poller"))
        # The server builds the feed in the background once started: the manifest fills up.
        deadline = time.monotonic() + 30
        while True:
            manifest = requests.get(f"{base}/zcert/manifest.json", auth=auth, timeout=10)
            assert manifest.status_code == 200
            if manifest.json() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        some = next(iter(manifest.json()))
        assert stats.recipient(store, "zcert").fetched == 0
        event = requests.get(f"{base}/zcert/{some}.json", auth=auth, timeout=10)
        assert event.status_code == 200 and event.json()["Event"]["uuid"] == some
        # Fetching the event delivered exactly its notifications (issue #13), once.
        with store.reading() as reader:
            members = reader.misp_members("zcert", some)
        assert members and stats.recipient(store, "zcert").fetched == len(members)
        assert requests.get(f"{base}/zcert/{some}.json", auth=auth, timeout=10).status_code == 200
        assert stats.recipient(store, "zcert").fetched == len(members)
        assert requests.get(f"{base}/zcert/hashes.csv", auth=auth, timeout=10).status_code == 200
        other = ("gemeente-poller", password_for("gemeente-poller"))
        assert requests.get(f"{base}/zcert/manifest.json", auth=other, timeout=10).status_code == 404
        # ibd has no feed configured: not found even for its own user.
        ibd = ("ibd-poller", password_for("ibd-poller"))
        assert requests.get(f"{base}/ibd/manifest.json", auth=ibd, timeout=10).status_code == 404
        assert requests.get(f"{base}/zcert/../etc/passwd", auth=auth, timeout=10).status_code == 404
        assert requests.get(f"{base}/zcert/manifest.json", timeout=10).status_code == 401
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_events_name_the_source_and_case_and_link_back_to_the_collection(tmp_path: Path) -> None:
    config, store = ingested(tmp_path)
    files = feed_files(config, store, "gemeente-voorbeeld")
    events = [
        json.loads(b)["Event"] for n, b in files.items() if n.endswith(".json") and n != "manifest.json"
    ]
    assert events
    collection = recipient_collection_id("gemeente-voorbeeld")
    for event in events:
        texts = [a["value"] for a in event["Attribute"] if a["type"] == "text"]
        assert texts == [
            "Reported by DIVD (Dutch Institute for Vulnerability Disclosure), case DIVD-2024-00012"
        ]
        links = [a["value"] for a in event["Attribute"] if a["type"] == "link"]
        assert links and all(
            link.startswith(f"https://meldpunt.example/meldpunt/collections/{collection}/objects/sighting--")
            for link in links
        )


def test_feed_bytes_do_not_depend_on_the_time_of_export(tmp_path: Path) -> None:
    """PyMISP fills an unset publish_timestamp with the current time, so every event file (and
    its ETag) changed every second though nothing changed, and told when it was fetched."""
    config, store = ingested(tmp_path)
    first = feed_files(config, store, "zcert")
    time.sleep(1.1)
    assert feed_files(config, store, "zcert") == first
    for name, body in first.items():
        if name.endswith(".json") and name != "manifest.json":
            event = json.loads(body)["Event"]
            assert event["publish_timestamp"] == event["timestamp"]
