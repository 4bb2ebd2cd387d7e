"""A recipient's events as a MISP feed: `manifest.json`, `hashes.csv`, `<event-uuid>.json`.

The layout MISP expects when it adds a feed of type "MISP Feed": the manifest lists every
event with its metadata, `hashes.csv` has one line per attribute (md5 of the value, event
uuid) for correlation, and each event file holds {"Event": ...}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connector.config import Config, MispChannel
from connector.render.misp import build_event
from connector.store import Store


def feed_events(
    config: Config, store: Store, recipient: str, only: str | None = None
) -> list[dict[str, Any]]:
    """Every event of the recipient (or just the one with UUID `only`) as MISP JSON, in uuid order."""
    channel = config.recipient(recipient).misp or MispChannel(feed=True)
    out = []
    for event_uuid, label in store.misp_events(recipient, only):
        built = build_event(config, store, recipient, event_uuid, label, channel, None)
        event = built.event
        # Stable timestamps (the newest notification version), so the feed's bytes change, and
        # MISP pulls again, only when something changed.
        event.timestamp = built.last_change
        # Unset, PyMISP fills in the time of export: the bytes would change every second.
        event.publish_timestamp = built.last_change
        for obj in event.objects:
            obj.timestamp = built.last_change
            for attribute in obj.attributes:
                attribute.timestamp = built.last_change
        for attribute in event.attributes:
            attribute.timestamp = built.last_change
        event.distribution = 0
        event.sharing_group_id = None
        out.append(event.to_feed(with_meta=True))
    return out


def feed_file(config: Config, store: Store, recipient: str, name: str) -> bytes | None:
    """One file of the feed; an event file builds only its own event (MISP fetches them one by one)."""
    if name.endswith(".json") and name != "manifest.json":
        files = feed_files(config, store, recipient, only=name.removesuffix(".json"))
    else:
        files = feed_files(config, store, recipient)
    return files.get(name)


def feed_files(config: Config, store: Store, recipient: str, only: str | None = None) -> dict[str, bytes]:
    """File name -> content of the recipient's feed (PyMISP's own feed rendering)."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}
    hashes: list[str] = []
    for document in feed_events(config, store, recipient, only):
        event = document["Event"]
        manifest.update(event.pop("_manifest"))
        hashes += [f"{h},{event['uuid']}" for h in event.pop("_hashes")]
        files[f"{event['uuid']}.json"] = json.dumps(document, sort_keys=True).encode()
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    files["hashes.csv"] = ("\n".join(hashes) + ("\n" if hashes else "")).encode()
    return files


def export_feed(config: Config, store: Store, recipient: str, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    files = feed_files(config, store, recipient)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return len(files) - 2


def event_deliveries(store: Store, recipient: str, event_uuid: str) -> list[tuple[int, int]]:
    """(notification, version stamp) the recipient's feed event holds: fetching the event file
    delivers them."""
    from connector.render.misp import load_notes

    with store.reading() as reader:
        members = reader.misp_members(recipient, event_uuid)
    return [(n.record.pk, n.version.stamp) for n in load_notes(store, members, recipient)]
