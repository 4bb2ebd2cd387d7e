"""MISP push through PyMISP against the strict MISP test server (tests/misp_fake.py).

Two sector instances with different constituents; an outage mid-sync then recovery delivers
everything exactly once; a second sync changes nothing; the Connect2Trust event survives the
round trip MISP -> STIX -> MISP with its attribute UUIDs, types, values and TLP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from connector.adapters.mapping import load_mappings
from connector.channels.misp_sync import MispSync
from connector.collections import collection_rows, recipient_collection_id
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, SHARED_DATA, divd_scan_as
from tests.misp_fake import MispFake

C2T_EVENT = SHARED_DATA / "misp" / "connect2trust-event.json"


def deployment(tmp_path: Path, fakes: list[MispFake], monkeypatch: pytest.MonkeyPatch, **zcert_extra):  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["partners"].append({"id": "connect2trust", "name": "Connect2Trust", "formats": ["misp-event"]})
    channels = {
        "zcert": {"url": fakes[0].url, "key_env": "MISP_KEY_ZCERT", "verify_tls": False, **zcert_extra},
        "ibd": {
            "url": fakes[1].url,
            "key_env": "MISP_KEY_IBD",
            "verify_tls": False,
            "distribution": "sharing-group",
            "sharing_group": "1",
            "publish": True,
        },
    }
    for r in raw["recipients"]:
        if r["id"] in channels:
            r["misp"] = channels[r["id"]]
    monkeypatch.setenv("MISP_KEY_ZCERT", fakes[0].key)
    monkeypatch.setenv("MISP_KEY_IBD", fakes[1].key)
    config = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    store.sync_collections(collection_rows(config))
    return config, store


def values_in(fake: MispFake) -> set[str]:
    out = set()
    for event in fake.events.values():
        for attribute in event.get("Attribute", []):
            out.add(attribute["value"])
        for obj in event.get("Object", []):
            out.update(a["value"] for a in obj.get("Attribute", []))
    return out


def test_push_to_two_sector_instances_keeps_constituents_apart(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    summary = MispSync(config, store).run()
    assert summary.counts["added"] == len(fakes[0].events) + len(fakes[1].events) > 0
    assert not summary.errors
    zcert, ibd = values_in(fakes[0]), values_in(fakes[1])
    assert any(v.startswith("192.0.2.") for v in zcert) and not any(
        v.startswith("198.51.100.") for v in zcert
    )
    assert any(v.startswith("198.51.100.3") for v in ibd) and not any(v.startswith("192.0.2.") for v in ibd)
    # gemeente-voorbeeld (198.51.100.32/29) has no channel and its parent does not receive it.
    assert not any(v in ibd for v in (f"198.51.100.{i}" for i in range(32, 40)))
    for event in fakes[0].events.values():
        assert event["distribution"] == "0"
        assert {"tlp:amber", 'rsit:vulnerable="vulnerable-system"'} <= {t["name"] for t in event["Tag"]}
    for event in fakes[1].events.values():
        assert event["distribution"] == "4" and event["sharing_group_id"] == "1"
        assert event["published"] is True


def test_a_second_sync_changes_nothing(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    MispSync(config, store).run()
    before = [len(f.mutations) for f in fakes]
    assert MispSync(config, store).run().counts == {}
    # Even when the same content is queued again (a re-ingest of a day), nothing is sent.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE misp_outbox SET status = 'pending'")
    again = MispSync(config, store).run()
    assert again.counts["unchanged"] > 0 and set(again.counts) == {"unchanged"}
    assert [len(f.mutations) for f in fakes] == before


def test_an_event_emptied_before_its_first_push_is_not_pushed(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every notification of zcert's events deleted from its collection before any sync: no
    empty event reaches its MISP (and the sync does not fail building one), ibd's still do."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    zcert = recipient_collection_id("zcert")
    view = CollectionView(store)
    for m in view.page(zcert, after=None, limit=10_000, types=("sighting",)):
        view.remove(zcert, m.stix_id, VersionFilter(all=True))
    summary = MispSync(config, store).run()
    assert not summary.errors
    assert summary.per_recipient["zcert"] == {"empty": len(store.misp_events("zcert"))}
    assert fakes[0].events == {} and fakes[1].events
    assert MispSync(config, store).run().counts == {}


def test_an_outage_mid_sync_delays_and_then_delivers_everything_once(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    fakes[0].fail_next(6, "500")
    first = MispSync(config, store).run()
    assert first.counts["retry-later"] >= 1
    pending = [r for r in MispSync(config, store).status() if r["pending"]]
    assert pending and pending[0]["last_error"]
    fakes[1].fail_next(2, "429", seconds=1)
    second = MispSync(config, store).run(include_later=True)  # recovery: the back-off has passed
    third = MispSync(config, store).run(include_later=True)
    assert not third.errors
    status = {r["recipient"]: r for r in MispSync(config, store).status()}
    assert status["zcert"]["pending"] == status["zcert"]["failed"] == 0
    assert status["ibd"]["pending"] == status["ibd"]["failed"] == 0
    for fake in fakes:
        adds = [
            m
            for m in fake.mutations
            if "add" in m.path or (m.method == "POST" and m.path.rstrip("/") == "/events")
        ]
        assert len({e["uuid"] for e in fake.events.values()}) == len(fake.events)
        assert len([m for m in adds if m.status == 200]) == len(fake.events)  # each event added once
    assert second.counts["added"] + first.counts["added"] + third.counts["added"] == sum(
        len(f.events) for f in fakes
    )


def test_a_refusing_instance_ends_failed_with_its_error_after_max_attempts(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch, max_attempts=2)
    Ingestor(config, store, load_mappings()).run(
        "divd",
        "divd-nuclei",
        [DIVD_SCAN],
    )
    fakes[0].fail_next(1000, "500")
    MispSync(config, store).run("zcert")
    MispSync(config, store).run("zcert", include_later=True)
    status = {r["recipient"]: r for r in MispSync(config, store).status()}
    assert status["zcert"]["failed"] > 0 and status["zcert"]["pending"] == 0
    assert "500" in status["zcert"]["last_error"]  # MISP's own error, kept


def test_a_new_observation_edits_the_event_once(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch)
    first = DIVD_SCAN.read_text().splitlines()[0]
    scan = divd_scan_as(tmp_path, first + "\n")
    ingestor = Ingestor(config, store, load_mappings())
    ingestor.run("divd", "divd-nuclei", [scan])
    MispSync(config, store).run()
    scan.write_text(first.replace("04:48:41", "09:00:00") + "\n")
    ingestor.run("divd", "divd-nuclei", [scan])
    summary = MispSync(config, store).run()
    assert summary.counts == {"edited": 1}
    (event,) = fakes[0].events.values()
    ports = [o for o in event["Object"] if o["name"] == "ip-port"]
    last_seen = [a["value"] for o in ports for a in o["Attribute"] if a["object_relation"] == "last-seen"]
    assert any("07:00:00" in v for v in last_seen)


def test_connect2trust_event_round_trip_keeps_attribute_uuids_types_values_and_tlp(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("connect2trust", "misp-event", [C2T_EVENT])
    MispSync(config, store).run()
    source = json.loads(C2T_EVENT.read_text())["Event"]
    originals = {a["uuid"]: a for a in source["Attribute"]}
    pushed = {a["uuid"]: a for f in fakes for e in f.events.values() for a in e.get("Attribute", [])}
    kept = set(originals) & set(pushed)
    assert kept, "no attribute came back with its UUID"
    for uuid in kept:
        assert pushed[uuid]["type"] == originals[uuid]["type"]
        assert pushed[uuid]["value"] == originals[uuid]["value"]
    for f in fakes:
        for e in f.events.values():
            assert "tlp:amber" in {t["name"] for t in e["Tag"]}


@pytest.fixture
def json_logs(monkeypatch):  # type: ignore[no-untyped-def]
    """The CLI's JSON logging at debug level into a buffer; the root logger restored after."""
    import io
    import logging
    import sys

    from connector.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    setup_logging("debug")
    yield buffer.getvalue
    root.handlers[:], level = saved
    root.setLevel(level)


def test_the_api_key_never_appears_in_the_logs_even_at_debug(tmp_path, fakes, monkeypatch, json_logs) -> None:  # type: ignore[no-untyped-def]
    """PyMISP logs every request's headers at debug level, the Authorization key among them."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    fakes[0].fail_next(1, "500")
    MispSync(config, store).run()
    logged = json_logs()
    assert '"logger":"pymisp"' in logged  # the debug lines were there to leak it
    for fake in fakes:
        assert fake.key not in logged


def test_a_deferred_push_is_logged_as_what_happened_with_the_event_beside_it(
    tmp_path, fakes, monkeypatch, json_logs
) -> None:  # type: ignore[no-untyped-def]
    """The log line's `event` says what happened; the MISP event's UUID must not replace it."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    fakes[0].fail_next(1000, "500")
    MispSync(config, store).run("zcert")
    lines = [json.loads(line) for line in json_logs().splitlines()]
    ours = [e for e in lines if e["logger"] == "meldpunt.misp"]
    assert ours and {e["event"] for e in ours} == {"misp push deferred"}
    assert all(e["recipient"] == "zcert" and e["misp_event"] for e in ours)


def test_entries_of_a_recipient_removed_from_the_configuration_do_not_stop_the_others(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """An operator removes a recipient with entries still queued: the rest is still delivered."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    with store.engine.begin() as conn:  # 'a-removed-cert' sorts before ibd: it comes first
        conn.exec_driver_sql("UPDATE misp_outbox SET recipient = 'a-removed-cert' WHERE recipient = 'zcert'")
    summary = MispSync(config, store).run()
    assert summary.per_recipient["ibd"]["added"] == len(fakes[1].events) > 0
    assert summary.per_recipient["a-removed-cert"]["failed"] > 0
    status = {r["recipient"]: r for r in MispSync(config, store).status()}
    assert "no longer in the configuration" in status["a-removed-cert"]["last_error"]


def test_an_unreachable_instance_is_tried_once_per_sync_not_once_per_entry(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Each try at an instance that does not answer costs the connect timeout (10 s), or the
    read timeout (120 s) when it hangs: a backlog of thousands must not cost that thousands of
    times. The rest of that recipient's entries wait for the next sync, with the same error."""
    import requests

    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    tries: list[str] = []

    def unreachable(recipient: str, channel):  # type: ignore[no-untyped-def]
        tries.append(recipient)
        raise requests.ConnectTimeout(f"connect to {channel.url} timed out")

    summary = MispSync(config, store, client_factory=unreachable).run()
    assert summary.per_recipient["zcert"]["retry-later"] > 1
    assert sorted(tries) == ["ibd", "zcert"]
    status = {r["recipient"]: r for r in MispSync(config, store).status()}
    assert status["zcert"]["failed"] == 0 and "timed out" in status["zcert"]["last_error"]


def test_an_instance_that_stops_answering_mid_sync_is_not_tried_again_in_that_sync(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import requests
    from pymisp import PyMISP

    config, store = deployment(tmp_path, fakes, monkeypatch)
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    calls: list[str] = []

    class Hanging:
        def event_exists(self, uuid: str) -> bool:
            calls.append(uuid)
            raise requests.ReadTimeout("read timed out (120 s)")

    def factory(recipient: str, channel):  # type: ignore[no-untyped-def]
        return Hanging() if recipient == "zcert" else PyMISP(channel.url, fakes[1].key, ssl=False)

    summary = MispSync(config, store, client_factory=factory).run()
    assert summary.per_recipient["zcert"]["retry-later"] > 1
    assert len(calls) == 1
    assert summary.per_recipient["ibd"]["added"] > 0


@pytest.mark.parametrize(
    ("key_env", "named"),
    [("MISP_KEY_MISSING", True), ("aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7d", False)],
)
def test_a_missing_key_names_the_variable_but_never_a_pasted_key(key_env: str, named: bool) -> None:
    """An API key pasted into key_env instead of a variable's name went on into last_error,
    the output and the logs through "environment variable <key> is not set"."""
    from connector.channels.misp_sync import Refused, default_client
    from connector.config import MispChannel

    channel = MispChannel(url="https://127.0.0.1:9/", key_env=key_env)
    with pytest.raises(Refused) as refused:
        default_client("zcert", channel)
    assert (key_env in str(refused.value)) is named
    assert "is not set" in str(refused.value)


def test_an_event_holding_notifications_of_two_tlp_levels_carries_only_the_most_restrictive(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """One Connect2Trust event whose attributes carry their own TLP (an attribute `tlp:green`
    tag beside the event's `tlp:amber`) becomes one event for Z-CERT. It was tagged both
    `tlp:amber` and `tlp:green`: TLP is an exclusive taxonomy in MISP, and a MISP sharing by tag
    (a push rule or feed filter allowing `tlp:green`) would pass the amber data on."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    source = json.loads(C2T_EVENT.read_text())
    for attribute in source["Event"]["Attribute"]:
        if attribute["value"] == "2001:db8:10::99":
            attribute["Tag"] = [*attribute.get("Tag", []), {"name": "tlp:green"}]
    path = tmp_path / "connect2trust-event.json"
    path.write_text(json.dumps(source), encoding="utf-8")
    Ingestor(config, store, load_mappings()).run("connect2trust", "misp-event", [path])
    MispSync(config, store).run()
    events = list(fakes[0].events.values())
    values = {a["value"] for e in events for a in e.get("Attribute", [])}
    assert {"192.0.2.77", "2001:db8:10::99"} <= values  # both in Z-CERT's instance
    for event in events:
        assert [t["name"] for t in event["Tag"] if t["name"].startswith("tlp:")] == ["tlp:amber"]


def test_a_misp_attribute_seen_again_on_a_later_day_updates_its_first_event(
    tmp_path, fakes, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Connect2Trust exports its event again after editing its attributes (MISP bumps an
    attribute's timestamp, which dates the observation). A later day's sighting of the same
    occurrence is a new version of its notification, so it goes to the MISP in the event it is
    already in: no second event holding the same attribute UUID (which MISP refuses, or drops
    the attribute from silently)."""
    config, store = deployment(tmp_path, fakes, monkeypatch)
    source = json.loads(C2T_EVENT.read_text())
    for day, stamp in (("2024-10-02", 1727863200), ("2024-10-05", 1728122400)):
        for attribute in source["Event"]["Attribute"]:
            attribute["timestamp"] = str(stamp)
        path = tmp_path / f"connect2trust-{day}.json"
        path.write_text(json.dumps(source), encoding="utf-8")
        summary = Ingestor(config, store, load_mappings()).run("connect2trust", "misp-event", [path])
        if day == "2024-10-05":
            assert summary.counts["new"] == 0 and summary.counts["updated"] > 0
        sync = MispSync(config, store).run()
        assert not sync.errors, sync.errors
    uuids = [a["uuid"] for f in fakes for e in f.events.values() for a in e.get("Attribute", [])]
    assert len(uuids) == len(set(uuids))
    days = {}
    for event in fakes[0].events.values():
        values = {a["value"] for a in event.get("Attribute", [])}
        values |= {a["value"] for o in event.get("Object", []) for a in o["Attribute"]}
        days[event["date"]] = values
    assert set(days) == {"2024-10-02"}
    assert "192.0.2.77" in days["2024-10-02"]


def test_two_syncs_at_once_push_each_event_once(tmp_path, fakes, monkeypatch, postgres_url) -> None:  # type: ignore[no-untyped-def]
    """Two `misp sync` processes sharing one PostgreSQL store (a cron overlapping a manual
    run, two hosts): each event goes to its MISP once, not once per sync (both read the same
    due entries; the second add, or an edit, and with `publish` a second publication)."""
    import threading

    from tests.conftest import _drop_pg_database, _fresh_pg_database

    url, name = _fresh_pg_database(postgres_url)
    try:
        config, sqlite_store = deployment(tmp_path, fakes, monkeypatch)
        sqlite_store.close()
        store = Store.open(url)
        store.sync_collections(collection_rows(config))
        Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
        for fake in fakes:
            fake.fail_next(4, "slow", seconds=0.5)  # both syncs are then mid-push together
        barrier = threading.Barrier(2)
        summaries = []

        def sync() -> None:
            syncer = MispSync(config, store)
            barrier.wait()
            summaries.append(syncer.run())

        threads = [threading.Thread(target=sync) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(not s.errors for s in summaries)
        for fake in fakes:
            pushes = [r.path for r in fake.mutations if "publish" not in r.path]
            assert len(pushes) == len(fake.events) > 0, pushes
        with store.engine.connect() as conn:
            assert (
                conn.exec_driver_sql("SELECT count(*) FROM misp_outbox WHERE status <> 'done'").scalar() == 0
            )
        store.close()
    finally:
        _drop_pg_database(postgres_url, name)


def test_a_registered_secret_is_scrubbed_raw_and_as_json_escapes_it() -> None:
    """A key holding a quote or backslash appears escaped inside the JSON line's strings."""
    import logging

    from connector.logs import REDACTED, JsonFormatter, redact

    secret = 'k3y"with\\odd-chars'
    redact(secret)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "sent %s", (secret,), None)
    record.header = {"Authorization": secret}
    line = JsonFormatter().format(record)
    assert secret not in line and json.dumps(secret)[1:-1] not in line
    assert line.count(REDACTED) == 2


def test_the_sync_command_reads_sightings_back_when_nothing_is_due(
    tmp_path: Path, fakes, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Found by a review (4 December 2026): `meldpunt misp sync` (what a timer runs) read
    sightings only from the MISPs it had just pushed to, so in the steady state, nothing due,
    an analyst's false positive never came back as feedback."""
    from typer.testing import CliRunner

    from connector import stats
    from connector.cli import app
    from connector.config import load_config

    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["database"] = f"sqlite:///{tmp_path / 'm.db'}"
    for r in raw["recipients"]:
        if r["id"] == "zcert":
            r["misp"] = {"url": fakes[0].url, "key_env": "MISP_KEY_ZCERT", "verify_tls": False}
    monkeypatch.setenv("MISP_KEY_ZCERT", fakes[0].key)
    config_path = tmp_path / "meldpunt.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    store = Store.open(raw["database"])
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    runner = CliRunner()
    first = runner.invoke(app, ["misp", "sync", "--config", str(config_path)])
    assert first.exit_code == 0, first.output
    event = next(iter(fakes[0].events.values()))
    attribute = next(a for o in event["Object"] if o["name"] == "ip-port" for a in o["Attribute"])
    fakes[0].add_sighting(attribute["uuid"], "1")  # a Z-CERT analyst: a false positive

    second = runner.invoke(app, ["misp", "sync", "--config", str(config_path)])
    assert second.exit_code == 0, second.output
    assert "nothing due" in second.output and "feedback from MISP sightings" in second.output
    assert stats.recipient(store, "zcert").closed == {"false-positive": 1}, second.output
    store.close()
