"""A recipient's events as a MISP feed: `manifest.json`, `hashes.csv`, `<event-uuid>.json`.

The layout MISP expects when it adds a feed of type "MISP Feed": the manifest lists every
event with its metadata, `hashes.csv` has one line per attribute (md5 of the value, event
uuid) for correlation, and each event file holds {"Event": ...}.

Served from what is stored (store table `misp_feed_events`), built when it changes: every
request used to build the whole feed (25,600 notifications: 31 s and 650 MB per file
request, and MISP asks for the manifest, hashes.csv and each changed event in turn). Now
`refresh_feed` builds the events that changed since they were last built (an ingest re-queued
them, a notification in them was deleted, or the configuration they show changed), and stores
each event's file, manifest entry and hashes lines. A manifest or hashes.csv request only
reads those rows; an event file request builds that one event if it is out of date, so MISP
never fetches an event older than the record. An event built again with other content is
stamped after the one stored (MISP fetches only a newer timestamp); with the same content it
keeps its bytes. `meldpunt serve` refreshes in the background every
`server.misp_feed_refresh_seconds` (FeedRefresher); `meldpunt misp export-feed` refreshes
before it writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pymisp import MISPEvent

from connector.collections import recipient_collection_id
from connector.config import Config, MispChannel
from connector.render.misp import build_event
from connector.store import Store

log = logging.getLogger("meldpunt.misp.feed")

# Bump when the feed's rendering changes: every stored event is then built again.
FEED_FORMAT = 1
SAVE_EVERY = 50  # events built per write transaction


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event of a feed, as served."""

    event_uuid: str
    body: str  # the event file
    manifest: str  # its manifest entry (JSON, keys sorted)
    hashes: str  # its hashes.csv lines, each ending in a newline
    timestamp: int
    deliveries: str = "[]"  # JSON [[notification, version stamp], ...]: what fetching it delivers


def fingerprint(config: Config) -> str:
    """What an event shows besides the record: partner names (its info and provenance), where
    its links point. Stored with each built event; another one means building it again."""
    shown = [
        FEED_FORMAT,
        config.server.public_url or "",
        config.server.api_root,
        sorted((p.id, p.name) for p in config.partners),
    ]
    return hashlib.sha256(json.dumps(shown).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Served:
    """What the feed stored of an event before building it again: its timestamp and file
    ("" when it served nothing: every notification deleted, or retention dropped the file)."""

    timestamp: int
    body: str


def build_feed_event(
    config: Config, store: Store, recipient: str, event_uuid: str, label: str, served: Served | None = None
) -> FeedEvent:
    """One event as the feed serves it (PyMISP's own feed rendering).

    Its timestamp is the newest notification version it holds, so the bytes change, and MISP
    fetches again, only when something changed. But MISP fetches an event only when the
    manifest's timestamp is greater than the one it holds (Feed::getNewEventUuids), and an event
    can change without a newer version: a notification deleted from it, the configuration it
    shows. So a build that differs from the one `served` is never stamped at or before it, and
    one that does not keeps its timestamp (and bytes)."""
    channel = config.recipient(recipient).misp or MispChannel(feed=True)
    built = build_event(config, store, recipient, event_uuid, label, channel, None)
    if not built.versions:  # every notification of it deleted from the collection: not served
        kept = 0 if served is None else served.timestamp  # a later build must still pass it
        return FeedEvent(event_uuid=event_uuid, body="", manifest="", hashes="", timestamp=kept)
    stamp = built.last_change if served is None else max(built.last_change, served.timestamp)
    event = _rendered(built.event, stamp)
    if served is not None and stamp == served.timestamp and event.body != served.body:
        event = _rendered(built.event, stamp + 1)
    return replace(event, deliveries=json.dumps(sorted(built.versions.items())))


def _rendered(event: MISPEvent, stamp: int) -> FeedEvent:
    """The feed's file, manifest entry and hashes of `event` with every timestamp in it (the
    event's, its objects' and attributes') set to `stamp`: MISP compares each of them with
    what it holds, and keeps an attribute whose timestamp is not newer as it was."""
    event.timestamp = stamp
    # Unset, PyMISP fills in the time of export: the bytes would change every second.
    event.publish_timestamp = stamp
    for obj in event.objects:
        obj.timestamp = stamp
        for attribute in obj.attributes:
            attribute.timestamp = stamp
    for attribute in event.attributes:
        attribute.timestamp = stamp
    event.distribution = 0
    event.sharing_group_id = None
    document = event.to_feed(with_meta=True)
    body = document["Event"]
    manifest = body.pop("_manifest")
    hashes = "".join(f"{h},{body['uuid']}\n" for h in body.pop("_hashes"))
    return FeedEvent(
        event_uuid=body["uuid"],
        body=json.dumps(document, sort_keys=True),
        manifest=json.dumps(manifest[body["uuid"]], sort_keys=True),
        hashes=hashes,
        timestamp=stamp,
    )


def refresh_feed(
    config: Config,
    store: Store,
    recipient: str,
    only: str | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Build and store the recipient's events that are out of date (or just event `only`);
    returns how many were built."""
    mark = fingerprint(config)
    pending: list[dict[str, object]] = []
    built = 0
    for row in store.misp_feed_stale(recipient, mark, only):
        if stop():
            break
        served = None if row.timestamp is None else Served(row.timestamp, row.body or "")
        event = build_feed_event(config, store, recipient, row.event_uuid, row.label, served)
        pending.append(
            {
                "event_uuid": row.event_uuid,
                "built_from": row.changed,  # read before building: a change meanwhile stays visible
                "fingerprint": mark,
                "timestamp": event.timestamp,
                "manifest": event.manifest,
                "hashes": event.hashes,
                "body": event.body,
                "deliveries": event.deliveries,
            }
        )
        built += 1
        if len(pending) >= SAVE_EVERY:
            store.misp_feed_save(recipient, pending)
            pending = []
    store.misp_feed_save(recipient, pending)
    return built


def feed_recipients(config: Config) -> list[str]:
    return [r.id for r in config.recipients if r.misp is not None and r.misp.feed]


def refresh_feeds(config: Config, store: Store, stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Every feed recipient's out-of-date events built; how many per recipient."""
    return {rid: refresh_feed(config, store, rid, stop=stop) for rid in feed_recipients(config)}


def feed_file(config: Config, store: Store, recipient: str, name: str) -> bytes | None:
    """One file of the feed, from what is stored. The manifest and hashes.csv build nothing (an
    event not built yet is missing from them until it is); an event file out of date is built
    first, on its own. None: the recipient has no such event."""
    if name == "manifest.json":
        return _manifest(store.misp_feed_entries(recipient))
    if name == "hashes.csv":
        return _hashes(store.misp_feed_entries(recipient))
    event_uuid = name.removesuffix(".json")
    refresh_feed(config, store, recipient, only=event_uuid)  # one indexed look-up when up to date
    body = store.misp_feed_body(recipient, event_uuid)
    return None if body is None else body.encode()


def feed_files(config: Config, store: Store, recipient: str) -> dict[str, bytes]:
    """File name -> content of the recipient's whole feed, brought up to date first."""
    refresh_feed(config, store, recipient)
    entries = store.misp_feed_entries(recipient)
    files: dict[str, bytes] = {}
    for event_uuid, _manifest_entry, _hashes_lines in entries:
        body = store.misp_feed_body(recipient, event_uuid)
        if body is not None:
            files[f"{event_uuid}.json"] = body.encode()
    files["manifest.json"] = _manifest(entries)
    files["hashes.csv"] = _hashes(entries)
    return files


def export_feed(config: Config, store: Store, recipient: str, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    files = feed_files(config, store, recipient)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return len(files) - 2


def deliver_feed_file(config: Config, store: Store, recipient: str, name: str, actor: str) -> bytes | None:
    """A feed file as the server answers it: an event file also marks the notifications it
    holds delivered to the recipient (read from the stored event, so a fetch costs no build)."""
    content = feed_file(config, store, recipient, name)
    if content is not None and name.endswith(".json") and name != "manifest.json":
        delivered = store.misp_feed_deliveries(recipient, name.removesuffix(".json"))
        store.mark_delivered(recipient_collection_id(recipient), delivered, source="misp-feed", actor=actor)
    return content


def _manifest(entries: list[tuple[str, str, str]]) -> bytes:
    """`json.dumps(manifest, sort_keys=True)` of the whole manifest, put together from the
    stored entries without parsing them (each is stored in that form)."""
    parts = [f"{json.dumps(uuid)}: {entry}" for uuid, entry, _ in sorted(entries)]
    return ("{" + ", ".join(parts) + "}").encode()


def _hashes(entries: list[tuple[str, str, str]]) -> bytes:
    return "".join(lines for _, _, lines in sorted(entries)).encode()


class FeedRefresher:
    """Builds out-of-date feed events in the background of the server, every `interval`
    seconds, so feed requests find them stored. A thread of its own: building an event reads
    and renders (CPU and database), which must not hold up the event loop."""

    def __init__(self, config: Config, store: Store, interval: float) -> None:
        self.config, self.store, self.interval = config, store, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="misp-feed-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                built = refresh_feeds(self.config, self.store, stop=self._stop.is_set)
                if any(built.values()):
                    log.info("misp feed events built", extra={"built": built})
            except Exception:  # a database hiccup: log it, try again next round
                log.exception("misp feed refresh failed")
            self._stop.wait(self.interval)
