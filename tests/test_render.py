"""STIX rendered when read: the rules that make it the same as storing it.

- ingest's shape (the ids it records without rendering) is what rendering gives;
- a version's bytes never change once served: each version keeps the renderer it was made
  with, and a new renderer gives new versions only;
- date_added strictly increases in a collection, and pages that end inside a notification's
  objects neither skip nor repeat one, whatever the page size;
- objects versions share (observables, identities, markings, vulnerabilities) are in a
  collection once;
- every look-up a page makes is an index search, never a walk of a table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.mapping import load_mappings
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.ingest import Ingestor
from connector.notification import Classification, Notification
from connector.render import stix as render_stix
from connector.render.collection import CollectionView
from connector.render.stix import notification_of, render, shape
from connector.stix.build import NotificationState, notification_objects
from connector.store import Store, VersionFilter
from connector.store.records import digest
from tests.conftest import DIVD_SCAN, SHARED_DATA, divd_scan_as
from tests.record_view import notification_rows
from tests.test_membership_layout import statements

SHADOWSERVER = SHARED_DATA / "shadowserver"


def _ingest_samples(store: Store, config: Config, tmp_path: Path) -> None:
    raw = config.model_dump(mode="json")
    assert any(p["id"] == "divd" for p in raw["partners"])
    ingest = Ingestor(config, store, load_mappings())
    ingest.run("divd", "divd-nuclei", [DIVD_SCAN])
    ingest.run("divd", "divd-credentials", [SHARED_DATA / "credentials" / "DIVD-2024-00037.credentials.csv"])


def test_shape_is_what_rendering_gives(store: Store, sample_config: Config, tmp_path: Path) -> None:
    """The digests ingest records (own ids, shared objects in their slots) for every stored
    notification equal those of the objects its versions render to."""
    _ingest_samples(store, sample_config, tmp_path)
    view = CollectionView(store)
    checked = 0
    with store.reading() as reader:
        partners = reader.partner_names()
        for n, v, kind in store.iter_notifications():
            evidence = json.loads(reader.evidence([v.evidence_of(n)])[v.evidence_of(n)])
            objects = render(n, v, kind, evidence, partners[kind.partner])
            expected = shape(notification_of(n, kind, evidence))
            assert expected.own == tuple(digest(o.obj["id"]) for o in objects if not o.shared)
            assert expected.shared == tuple((o.slot, digest(o.obj["id"])) for o in objects if o.shared)
            checked += 1
    assert checked > 20 and view is not None


def test_a_served_version_never_changes_and_a_new_renderer_makes_new_versions(
    store: Store, sample_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = Ingestor(sample_config, store, load_mappings())
    first_line = DIVD_SCAN.read_text().splitlines()[0]
    scan = divd_scan_as(tmp_path, first_line + "\n")
    ingest.run("divd", "divd-nuclei", [scan])
    [row] = notification_rows(store)
    collection = recipient_collection_id(row["recipients"][0])
    view = CollectionView(store)
    before = view.page(collection, after=None, limit=100, versions=VersionFilter(all=True))

    def renderer_2(notification, state, partner_name):  # type: ignore[no-untyped-def]
        out = render_stix.RENDERERS[1](notification, state, partner_name)
        for item in out:
            if item.obj["type"] == "sighting":
                item.obj["description"] = "rendered by renderer 2"
        return out

    monkeypatch.setitem(render_stix.RENDERERS, 2, renderer_2)
    monkeypatch.setattr(render_stix, "CURRENT", 2)
    monkeypatch.setattr("connector.recording.CURRENT", 2)
    # The old version reads exactly as it was served, although renderer 2 is current.
    assert view.page(collection, after=None, limit=100, versions=VersionFilter(all=True)) == before
    scan.write_text(first_line.replace("2024-06-12T04:48:41", "2024-06-13T04:48:41") + "\n")
    ingest.run("divd", "divd-nuclei", [scan])
    after = view.page(collection, after=None, limit=100, versions=VersionFilter(all=True))
    assert after[: len(before)] == before
    sightings = [json.loads(m.body) for m in after if m.stix_id == row["sighting_id"]]
    assert [s.get("description") for s in sightings] == [None, "rendered by renderer 2"]
    assert sightings[0]["modified"] < sightings[1]["modified"]
    monkeypatch.delitem(render_stix.RENDERERS, 2)
    with pytest.raises(ValueError, match="renderer 2, which this code lacks"):
        view.page(collection, after=None, limit=100, versions=VersionFilter(all=True))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_pages_ending_inside_a_notification_skip_and_repeat_nothing(
    store: Store, sample_config: Config, tmp_path: Path, size: int
) -> None:
    _ingest_samples(store, sample_config, tmp_path)
    view = CollectionView(store)
    for rid in ("zcert", "ibd", "gemeente-voorbeeld"):
        collection = recipient_collection_id(rid)
        for versions in (VersionFilter(), VersionFilter(all=True)):
            whole = view.page(collection, after=None, limit=100_000, versions=versions)
            stamps = [m.date_added for m in whole]
            assert stamps == sorted(set(stamps))  # strictly increasing
            paged: list[Any] = []
            after = None
            while True:
                page = view.page(collection, after=after, limit=size, versions=versions)
                paged += page
                if len(page) < size:
                    break
                after = page[-1].date_added
            assert paged == whole


def test_objects_versions_share_are_in_a_collection_once(
    store: Store, sample_config: Config, tmp_path: Path
) -> None:
    """Two findings on one address (different ports and classifications): one ipv4-addr, one
    identity of the partner, one marking, in the collection, whatever the versions."""
    _ingest_samples(store, sample_config, tmp_path)
    scan = divd_scan_as(tmp_path, DIVD_SCAN.read_text().replace("2024-06-12T", "2024-06-13T"))
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [scan])
    view = CollectionView(store)
    for rid in ("zcert", "ibd"):
        every = view.page(
            recipient_collection_id(rid), after=None, limit=100_000, versions=VersionFilter(all=True)
        )
        shared = [
            m.stix_id
            for m in every
            if m.stix_id.split("--")[0] not in ("sighting", "observed-data", "indicator")
        ]
        assert len(shared) == len(set(shared)), rid
        own = [m for m in every if m.stix_id.startswith("sighting--")]
        assert len(own) > len({m.stix_id for m in own})  # sightings do have several versions


def test_every_lookup_of_a_page_is_an_index_search(tmp_path: Path, sample_config: Config) -> None:
    """SQLite: no statement a page, a look-up by id, or an ingest makes walks a table."""
    store = Store.open(f"sqlite:///{tmp_path / 'plans.db'}")
    _ingest_samples(store, sample_config, tmp_path)
    [row, *_] = notification_rows(store)
    view = CollectionView(store)
    collection = recipient_collection_id(row["recipients"][0])
    with statements(store) as seen:
        page = view.page(collection, after=None, limit=5)
        view.page(collection, after=page[-1].date_added, limit=5)
        view.page(collection, after=None, limit=5, ids=(row["sighting_id"], page[0].stix_id))
        view.page(
            collection, after=None, limit=5, ids=(row["sighting_id"],), versions=VersionFilter(all=True)
        )
        later = DIVD_SCAN.read_text().replace("2024-06-12T04:48:41", "2024-06-14T04:48:41")
        scan = divd_scan_as(tmp_path, later)
        Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [scan])
    raw = store.engine.raw_connection()
    try:
        checked = 0
        for statement, parameters in seen:
            if not statement.lstrip().upper().startswith("SELECT") or "FROM" not in statement.upper():
                continue
            if any(t in statement for t in ("notification_kinds", "partner_names", "collections", "alembic")):
                continue  # a few rows each, read whole on purpose
            if "max(pk)" in statement:
                continue  # the last row of a b-tree
            plan = [r[3] for r in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert not [line for line in plan if line.startswith("SCAN")], f"{statement}\n{plan}"
            checked += 1
        assert checked > 10
    finally:
        raw.close()
        store.close()


_OBSERVABLE_TYPES = ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr", "network-traffic")


@pytest.mark.parametrize(
    "fields",
    [
        {"ip": "192.0.2.10", "port": 443, "protocol": "tcp", "hostname": "www.voorbeeld.nl"},
        {"ip": "2001:db8::10", "port": 8443, "protocol": "udp"},
        {"ip": "192.0.2.11"},
        {"hostname": "mail.voorbeeld.nl", "email": "jan@voorbeeld.nl"},
        {"url": 'https://voorbeeld.nl/login?x="1"', "hostname": "voorbeeld.nl"},
        {"ip": "192.0.2.12", "port": 80, "url": "http://192.0.2.12/", "email": "zoë@voorbeeld.nl"},
    ],
)
def test_shape_gives_the_observables_ids_the_builder_gives(fields: dict[str, Any]) -> None:
    """shape()'s digests of the observables (worked out from hashes, without building objects:
    ingest's hot path) are those of the ids of the objects the STIX builder makes, in their
    slots' order, for every kind of observable and their combinations."""
    n = Notification(
        partner="shadowserver",
        feed="scan_http",
        classification=Classification("vulnerable", "vulnerable-system", "open-http"),
        observed_at=datetime(2024, 6, 1, 12, tzinfo=UTC),
        tlp="amber",
        **fields,
    )
    moment = "2024-06-01T12:00:00.000Z"
    built = notification_objects(n, NotificationState(moment, moment, 1, moment, moment))
    observables = [digest(o["id"]) for o in built if o["type"] in _OBSERVABLE_TYPES]
    assert [key for slot, key in shape(n).shared if slot > render_stix.REFERENCES] == observables
    addresses = [name for name in ("ip", "hostname", "url", "email") if name in fields]
    assert len(observables) == len(addresses) + ("port" in fields)  # network-traffic with a port
