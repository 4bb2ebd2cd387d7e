"""MISP push checks that hold for any MISP: against the strict test server by default, and
against a real instance when MISP_URL and MISP_KEY are set (`pytest -m live` selects them).

Against a real MISP these create (and on later runs edit) events with deterministic UUIDs in
the key's organisation; use a test instance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pymisp import PyMISP

from connector.adapters.mapping import load_mappings
from connector.channels.misp_sync import MispSync
from connector.collections import collection_rows
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG
from tests.misp_fake import MispFake


@pytest.fixture
def misp_target() -> Iterator[tuple[str, str, bool]]:
    url, key = os.environ.get("MISP_URL"), os.environ.get("MISP_KEY")
    if url and key:
        yield url, key, os.environ.get("MISP_VERIFY_TLS", "1") != "0"
        return
    fake = MispFake().start()
    try:
        yield fake.url, fake.key, False
    finally:
        fake.stop()


def deployment(tmp_path: Path, url: str, verify: bool, **channel: object):  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    for r in raw["recipients"]:
        if r["id"] == "ibd":
            r["misp"] = {"url": url, "key_env": "MELDPUNT_TEST_MISP_KEY", "verify_tls": verify, **channel}
    config = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 'live.db'}")
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    return config, store


@pytest.mark.live
def test_events_arrive_whole_and_a_second_sync_sends_nothing(tmp_path, misp_target, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, key, verify = misp_target
    monkeypatch.setenv("MELDPUNT_TEST_MISP_KEY", key)
    config, store = deployment(tmp_path, url, verify)
    first = MispSync(config, store).run()
    assert (
        not first.errors
        and (first.counts["added"] + first.counts["edited"] + first.counts["already-current"]) > 0
    )
    misp = PyMISP(url, key, ssl=verify)
    uuids = [r[0] for r in store.engine.connect().exec_driver_sql("SELECT event_uuid FROM misp_outbox").all()]
    values: set[str] = set()
    for uuid in uuids:
        event = misp.get_event(uuid, pythonify=True)
        assert "tlp:amber" in {t.name for t in event.tags}
        values |= {str(a.value) for o in event.objects for a in o.attributes}
    assert {"198.51.100.30", "198.51.100.31"} <= values  # the IBD's own hosts ...
    assert not values & {f"198.51.100.{i}" for i in range(32, 40)}  # ... not the municipality's
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE misp_outbox SET status = 'pending'")
    assert set(MispSync(config, store).run().counts) == {"unchanged"}


@pytest.mark.live
def test_a_sharing_group_is_found_by_name(tmp_path, misp_target, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, key, verify = misp_target
    name = os.environ.get("MISP_SHARING_GROUP", "meldpunt-test-sharing-group")
    monkeypatch.setenv("MELDPUNT_TEST_MISP_KEY", key)
    config, store = deployment(tmp_path, url, verify, distribution="sharing-group", sharing_group=name)
    summary = MispSync(config, store).run()
    assert not summary.errors
    uuid = store.engine.connect().exec_driver_sql("SELECT event_uuid FROM misp_outbox").first()[0]
    event = PyMISP(url, key, ssl=verify).get_event(uuid, pythonify=True)
    assert int(event.distribution) == 4 and event.sharing_group_id
