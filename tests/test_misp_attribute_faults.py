"""Faulty attributes of a good MISP event: quarantined one by one beside the good ones, counted
(`attributes_quarantined`) and kept in `run_rows` with the event's line and a reason that names
the attribute but never its value; context attributes are counted as `attributes_skipped`.
An unusable object value a notification would take (dst-port, protocol, first-seen) withholds
that notification and is a fault of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.adapters.misp import MispAdapter
from connector.adapters.readers import RawRecord
from connector.adapters.registry import AdapterContext, RecordOutcome, record_outcome
from connector.adapters.xarf import XarfAdapter
from connector.cli import print_summary
from connector.config import Config, parse_config
from connector.counts import COUNT_NAMES
from connector.ingest import Ingestor
from connector.notification import Notification
from connector.store import Store
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA

SAMPLE = SHARED_DATA / "misp" / "connect2trust-event.json"
PARTNER = "connect2trust"
FORMAT = "misp-event"
EVENT_UUID = "5e1f0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"


def uuid(n: int) -> str:
    return f"f0000000-0000-4000-8000-{n:012d}"


def attr(n: int, misp_type: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid(n), "type": misp_type, "value": value, **extra}


GOOD = {
    uuid(1): attr(1, "ip-dst", "192.0.2.10"),
    uuid(2): attr(2, "domain", "Shop.Example.NL"),
    uuid(3): attr(3, "url", "https://login.example.nl/owa/"),
    uuid(4): attr(4, "ip-dst|port", "198.51.100.7|8443"),
    uuid(21): attr(21, "ip-dst", "198.51.100.42", object_relation="ip"),  # in the ip-port object
}
# Routable types with values the normaliser refuses (the e-mail one is personal data).
FAULTY = {
    uuid(11): attr(11, "ip-dst", "999.1.1.1"),
    uuid(12): attr(12, "ip-dst|port", "192.0.2.11|99999"),
    uuid(13): attr(13, "email-src", "jan.jansen@@example.nl"),
    uuid(14): attr(14, "domain", "not a domain!"),
    uuid(22): attr(22, "ip-dst", "198.51.100.300", object_relation="ip"),  # in the ip-port object
}
# Not notifications by design: context.
CONTEXT = [
    attr(31, "comment", "seen during the phishing wave"),
    attr(32, "md5", "d41d8cd98f00b204e9800998ecf8427e"),
    attr(33, "text", "operator note"),
    attr(23, "port", "3389", object_relation="dst-port"),  # in the ip-port object
]
# A faulty attribute whose uuid is not a UUID (free text): the reason must not quote it.
ODD_UUID = {"uuid": "jan.jansen@example.nl", "type": "hostname", "value": "bad host name!"}
DELETED = attr(41, "ip-dst", "also-not-an-address", deleted=True)  # ignored altogether
EMAIL_VALUE = "jan.jansen@@example.nl"


def synthetic_event() -> dict[str, Any]:
    top = [GOOD[uuid(n)] for n in (1, 2, 3, 4)] + [FAULTY[uuid(n)] for n in (11, 12, 13, 14)]
    return {
        "Event": {
            "uuid": EVENT_UUID,
            "info": "Phishing wave, Connect2Trust",
            "date": "2024-10-02",
            "Tag": [{"name": "tlp:amber"}, {"name": 'rsit:fraud="phishing"'}],
            "Attribute": top + CONTEXT[:3] + [ODD_UUID, DELETED],
            "Object": [
                {
                    "uuid": "f1000000-0000-4000-8000-000000000001",
                    "name": "ip-port",
                    "Attribute": [GOOD[uuid(21)], FAULTY[uuid(22)], CONTEXT[3]],
                }
            ],
        }
    }


def without_faults(event: dict[str, Any]) -> dict[str, Any]:
    """The same event with only its good and context attributes."""
    event = json.loads(json.dumps(event))
    body = event["Event"]
    body["Attribute"] = [a for a in body["Attribute"] if a["uuid"] not in {*FAULTY, ODD_UUID["uuid"]}]
    for obj in body["Object"]:
        obj["Attribute"] = [a for a in obj["Attribute"] if a["uuid"] not in FAULTY]
    return event


FAULT_COUNT = len(FAULTY) + 1  # and the attribute with the odd uuid
CONTEXT_COUNT = len(CONTEXT)
RAW_VALUES = [a["value"] for a in FAULTY.values()] + [ODD_UUID["value"], ODD_UUID["uuid"], "jan.jansen"]


@pytest.fixture(scope="module")
def sample_config() -> Config:
    """The example configuration with Connect2Trust as a partner: conftest's store and
    ingestor fixtures (SQLite and PostgreSQL) are built on it."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["partners"].append({"id": PARTNER, "name": "Connect2Trust", "formats": [FORMAT]})
    return parse_config(raw, source=str(SAMPLE_CONFIG))


def adapter() -> MispAdapter:
    return MispAdapter(AdapterContext(PARTNER, "amber", "event.json", Path("event.json")))


def outcome_of(event: dict[str, Any]) -> RecordOutcome:
    return adapter().outcome(RawRecord(1, event, json.dumps(event)))


def comparable(n: Notification) -> Notification:
    """A notification without the evidence that counts the event's other attributes."""
    others = (
        "misp_attributes_without_notification",
        "misp_unusable_attributes",
        "misp_unusable_attribute_count",
    )
    return replace(n, evidence={k: v for k, v in n.evidence.items() if k not in others})


def write_jsonl(path: Path, events: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


# --- the adapter ----------------------------------------------------------------------------------


def test_outcome_lists_each_faulty_attribute_and_keeps_the_good_ones() -> None:
    event = synthetic_event()
    outcome = outcome_of(event)
    # The good attributes' notifications: exactly those of the event without its faulty attributes.
    clean = outcome_of(without_faults(event))
    assert clean.faults == [] and clean.skipped == CONTEXT_COUNT
    assert [comparable(n) for n in outcome.notifications] == [comparable(n) for n in clean.notifications]
    assert {n.evidence["misp_attribute_uuid"] for n in outcome.notifications} == set(GOOD)
    # notifications() is unchanged: the same list, faults still listed in evidence.
    plain = adapter().notifications(RawRecord(1, event, json.dumps(event)))
    assert plain == outcome.notifications
    by_uuid = {n.evidence["misp_attribute_uuid"]: n for n in plain}
    assert by_uuid[uuid(1)].ip == "192.0.2.10"
    assert by_uuid[uuid(2)].hostname == "shop.example.nl"
    assert (by_uuid[uuid(4)].ip, by_uuid[uuid(4)].port) == ("198.51.100.7", 8443)
    assert (by_uuid[uuid(21)].ip, by_uuid[uuid(21)].port) == ("198.51.100.42", 3389)
    assert by_uuid[uuid(1)].evidence["misp_unusable_attribute_count"] == FAULT_COUNT

    assert len(outcome.faults) == FAULT_COUNT
    assert outcome.skipped == CONTEXT_COUNT
    for n, fault in zip((11, 12, 13, 14, 22), outcome.faults[:4] + outcome.faults[5:], strict=True):
        misp_type = FAULTY[uuid(n)]["type"]
        assert fault.startswith(f"MISP event {EVENT_UUID} attribute {uuid(n)} ({misp_type}")
        assert f"not a usable {misp_type} value (value withheld)" in fault
    assert "in object ip-port" in outcome.faults[5]
    assert outcome.faults[4].startswith(f"MISP event {EVENT_UUID} attribute without a valid uuid (hostname)")
    for fault in outcome.faults:
        for value in RAW_VALUES:
            assert value not in fault


def test_adapters_without_outcome_are_unchanged() -> None:
    """record_outcome wraps an adapter that only has notifications() (X-ARF, mapping files)."""
    produced = [object()]

    class Plain:
        def rows(self, stream: Any) -> Iterator[Any]:
            return iter(())

        def notifications(self, record: RawRecord) -> list[Any]:
            return produced

    got = record_outcome(Plain(), RawRecord(1, {}, ""))  # type: ignore[arg-type]
    assert got == RecordOutcome(produced)  # type: ignore[arg-type]
    assert not hasattr(XarfAdapter, "outcome")


# --- the ingest -----------------------------------------------------------------------------------


def test_ingest_quarantines_faulty_attributes_beside_the_good_ones(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    only_faulty = {
        "Event": {
            "uuid": "5e1f0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5c",
            "info": "nothing usable",
            "date": "2024-10-02",
            "Attribute": [attr(51, "ip-dst", "256.0.0.1"), attr(52, "text", "context")],
        }
    }
    path = write_jsonl(
        tmp_path / "events.jsonl", [json.loads(SAMPLE.read_text()), synthetic_event(), only_faulty]
    )
    summary = ingestor.run(PARTNER, FORMAT, [path])
    assert summary.ok, summary.input_errors
    counts = summary.counts
    assert counts["read"] == 3
    assert counts["notifications"] == counts["new"] == 5 + len(GOOD)  # the sample's five and the good ones
    assert counts["quarantined"] == 1  # the event with no usable routable attribute, whole
    assert counts["skipped"] == 0
    assert counts["attributes_quarantined"] == FAULT_COUNT  # only attributes of ingested events
    assert counts["attributes_skipped"] == 4 + CONTEXT_COUNT  # the sample's four and the synthetic's
    run = store.run(summary.run_id)
    assert run is not None
    stored = run["counts"] if isinstance(run["counts"], dict) else json.loads(run["counts"])
    assert {k: stored[k] for k in ("attributes_quarantined", "attributes_skipped")} == {
        "attributes_quarantined": FAULT_COUNT,
        "attributes_skipped": 4 + CONTEXT_COUNT,
    }

    rows = store.run_rows(summary.run_id, "quarantined")
    assert [r["line"] for r in rows].count(2) == FAULT_COUNT  # each faulty attribute: the event's line
    assert [r["line"] for r in rows].count(3) == 1
    assert {r["line"] for r in rows} == {2, 3}
    line2 = [r for r in rows if r["line"] == 2]
    for n in (11, 12, 13, 14, 22):
        (row,) = [r for r in line2 if uuid(n) in r["reason"]]
        assert f"({FAULTY[uuid(n)]['type']}" in row["reason"] and "value withheld" in row["reason"]
    assert any("attribute without a valid uuid (hostname)" in r["reason"] for r in line2)
    for r in rows:
        assert r["input"] == "events.jsonl" and r["raw"] is None  # never the raw event
        for value in [*RAW_VALUES, "256.0.0.1"]:
            assert value not in r["reason"]
    (whole,) = [r for r in rows if r["line"] == 3]
    assert "no usable routable attribute" in whole["reason"] and uuid(51) in whole["reason"]
    assert not store.run_rows(summary.run_id, "skipped")


def test_the_sample_has_no_faulty_attributes(ingestor: Ingestor, store: Store) -> None:
    """connect2trust-event.json: five notifications; its port, datetime, vulnerability and text
    attributes are context (skipped by design); nothing is quarantined."""
    summary = ingestor.run(PARTNER, FORMAT, [SAMPLE])
    counts = {k: summary.counts.get(k, 0) for k in COUNT_NAMES}
    assert {k: counts[k] for k in ("read", "notifications", "new", "quarantined", "skipped")} == {
        "read": 1,
        "notifications": 5,
        "new": 5,
        "quarantined": 0,
        "skipped": 0,
    }
    assert counts["attributes_quarantined"] == 0 and counts["attributes_skipped"] == 4
    assert store.run_rows(summary.run_id) == []


def test_summary_prints_the_attribute_counts_and_rows(
    ingestor: Ingestor, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = ingestor.run(PARTNER, FORMAT, [write_jsonl(tmp_path / "one.jsonl", [synthetic_event()])])
    capsys.readouterr()
    print_summary(store, summary)
    printed = capsys.readouterr().out
    assert "attributes_quarantined" in printed and "attributes_skipped" in printed
    assert "not ingested" in printed and "quarantined" in printed
    assert EMAIL_VALUE not in printed and "999.1.1.1" not in printed


# --- unusable values inside MISP objects -----------------------------------------------------------
# An object value a notification takes (the object's single dst-port and protocol, its first-seen
# when that decides the time) that is present but unusable withholds that notification (never a
# port-less or otherwise dated one) and is one fault of its own; notifications that do not take it
# keep theirs.

OBJECT_EVENT_UUID = "5e1f0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5d"


def obj(n: int, name: str, *attributes: dict[str, Any]) -> dict[str, Any]:
    return {"uuid": f"f1000000-0000-4000-8000-{n:012d}", "name": name, "Attribute": list(attributes)}


def rel(n: int, misp_type: str, value: str, relation: str, **extra: Any) -> dict[str, Any]:
    return attr(n, misp_type, value, object_relation=relation, **extra)


GOOD_OBJECT = obj(
    13,
    "ip-port",
    rel(68, "ip-dst", "198.51.100.68", "ip"),
    rel(69, "port", "3389", "dst-port"),
    rel(70, "datetime", "2024-10-01T22:14:00+00:00", "first-seen"),
)
OBJECTS = [
    # a dst-port that is not a port: the address's notification is withheld
    obj(
        11,
        "ip-port",
        rel(61, "ip-dst", "198.51.100.61", "ip"),
        rel(62, "port", "99999", "dst-port"),
        rel(63, "datetime", "2024-10-01T08:00:00+00:00", "first-seen"),
    ),
    # a first-seen that is not a time (PyMISP refuses a bad `datetime`; a `text` one reaches us):
    # withheld where it decides the day; the host name with its own first_seen keeps its notification
    obj(
        12,
        "ip-port",
        rel(64, "ip-dst", "198.51.100.64", "ip"),
        rel(65, "port", "443", "dst-port"),
        rel(66, "text", "yesterday evening", "first-seen"),
        rel(67, "hostname", "vpn.example.nl", "hostname", first_seen="2024-09-30T12:00:00+00:00"),
    ),
    GOOD_OBJECT,
    # the client (ip-src) does not take the dst-port: only the server's notification is withheld
    obj(
        14,
        "network-connection",
        rel(71, "ip-src", "192.0.2.71", "ip-src"),
        rel(72, "ip-dst", "192.0.2.72", "ip-dst"),
        rel(73, "port", "port-eighty", "dst-port"),
    ),
    # one unusable port taken by two notifications: one fault, both withheld
    obj(
        15,
        "ip-port",
        rel(74, "ip-dst", "198.51.100.74", "ip"),
        rel(75, "hostname", "mail.example.nl", "hostname"),
        rel(76, "port", "65536", "dst-port"),
    ),
    # a protocol that is no protocol name beside a good port
    obj(
        16,
        "ip-port",
        rel(77, "ip-dst", "198.51.100.77", "ip"),
        rel(78, "port", "25", "dst-port"),
        rel(79, "text", "smtp over tls!", "protocol"),
    ),
]
# The unusable object value -> the attributes whose notifications it withholds.
OBJECT_FAULTS = {62: [61], 66: [64], 73: [72], 76: [74, 75], 79: [77]}
OBJECT_KEPT = {uuid(n) for n in (67, 68, 71, 80)}
OBJECT_CONTEXT = 5  # 63, 65, 69, 70, 78: valid and not notifications
OBJECT_RAW_VALUES = ["99999", "yesterday evening", "port-eighty", "65536", "smtp over tls!"]


def object_event(
    objects: list[dict[str, Any]] | None = None, uuid_: str = OBJECT_EVENT_UUID
) -> dict[str, Any]:
    return {
        "Event": {
            "uuid": uuid_,
            "info": "Open services, Connect2Trust",
            "date": "2024-10-02",
            "Tag": [{"name": "tlp:amber"}, {"name": 'rsit:vulnerable="vulnerable-system"'}],
            "Attribute": [attr(80, "ip-dst", "192.0.2.80")],
            "Object": json.loads(json.dumps(OBJECTS if objects is None else objects)),
        }
    }


def test_unusable_object_values_withhold_the_notifications_that_take_them() -> None:
    outcome = outcome_of(object_event())
    by_uuid = {n.evidence["misp_attribute_uuid"]: n for n in outcome.notifications}
    assert set(by_uuid) == OBJECT_KEPT
    withheld = {uuid(n) for held in OBJECT_FAULTS.values() for n in held}
    assert not withheld & set(by_uuid)  # never made without the port or with another time
    assert (by_uuid[uuid(68)].port, by_uuid[uuid(68)].observed_at.isoformat()) == (
        3389,
        "2024-10-01T22:14:00+00:00",
    )
    assert by_uuid[uuid(67)].observed_at.isoformat() == "2024-09-30T12:00:00+00:00"  # its own first_seen
    assert (by_uuid[uuid(67)].hostname, by_uuid[uuid(67)].port) == ("vpn.example.nl", 443)
    assert (by_uuid[uuid(71)].ip, by_uuid[uuid(71)].port) == ("192.0.2.71", None)  # the client

    # One fault per unusable value, naming event, object, attribute UUID and type, and what it withheld.
    assert len(outcome.faults) == len(OBJECT_FAULTS)
    assert outcome.skipped == OBJECT_CONTEXT
    relations = {62: "dst-port", 66: "first-seen", 73: "dst-port", 76: "dst-port", 79: "protocol"}
    objects = {62: (11, "ip-port"), 66: (12, "ip-port"), 73: (14, "network-connection"), 76: (15, "ip-port")}
    objects[79] = (16, "ip-port")
    for (n, held), fault in zip(OBJECT_FAULTS.items(), outcome.faults, strict=True):
        bad = next(a for o in OBJECTS for a in o["Attribute"] if a["uuid"] == uuid(n))
        number, name = objects[n]
        assert fault.startswith(
            f"MISP event {OBJECT_EVENT_UUID} attribute {uuid(n)} "
            f"({bad['type']}, in object {name} f1000000-0000-4000-8000-{number:012d}): "
            f"not a usable {relations[n]} of its object (value withheld)"
        ), fault
        for h in held:
            assert uuid(h) in fault.split("withheld the notification of", 1)[1]
        for value in OBJECT_RAW_VALUES:
            assert value not in fault
    # Listed in the evidence of the event's notifications, as unusable attributes are.
    listed = by_uuid[uuid(80)].evidence["misp_unusable_attributes"]
    assert [u["uuid"] for u in listed] == [uuid(n) for n in OBJECT_FAULTS]
    assert by_uuid[uuid(80)].evidence["misp_unusable_attribute_count"] == len(OBJECT_FAULTS)
    assert not any(value in json.dumps(listed) for value in OBJECT_RAW_VALUES)


def test_a_good_object_beside_faulty_ones_is_unchanged() -> None:
    """The good object's notification is the one it gets in an event of its own."""
    mixed = {n.evidence["misp_attribute_uuid"]: n for n in outcome_of(object_event()).notifications}
    alone = outcome_of(object_event([GOOD_OBJECT]))
    assert alone.faults == [] and alone.skipped == 2
    assert {n.evidence["misp_attribute_uuid"] for n in alone.notifications} == {uuid(68), uuid(80)}
    for n in alone.notifications:
        assert comparable(mixed[n.evidence["misp_attribute_uuid"]]) == comparable(n)


def test_ingest_quarantines_unusable_object_values(ingestor: Ingestor, store: Store, tmp_path: Path) -> None:
    # An event whose only routable attribute is withheld by its object's dst-port: quarantined whole.
    withheld_only = object_event([OBJECTS[0]], uuid_="5e1f0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5e")
    withheld_only["Event"]["Attribute"] = []
    path = write_jsonl(tmp_path / "objects.jsonl", [object_event(), withheld_only])
    summary = ingestor.run(PARTNER, FORMAT, [path])
    assert summary.ok, summary.input_errors
    counts = summary.counts
    assert counts["read"] == 2
    assert counts["notifications"] == counts["new"] == len(OBJECT_KEPT)
    assert counts["quarantined"] == 1 and counts["skipped"] == 0
    assert counts["attributes_quarantined"] == len(OBJECT_FAULTS)
    assert counts["attributes_skipped"] == OBJECT_CONTEXT
    rows = store.run_rows(summary.run_id, "quarantined")
    line1 = [r for r in rows if r["line"] == 1]
    assert len(line1) == len(OBJECT_FAULTS)
    for n in OBJECT_FAULTS:
        (row,) = [r for r in line1 if f"attribute {uuid(n)} (" in r["reason"]]
        assert OBJECT_EVENT_UUID in row["reason"] and "in object" in row["reason"]
    (whole,) = [r for r in rows if r["line"] == 2]
    assert "no usable routable attribute" in whole["reason"] and uuid(62) in whole["reason"]
    for r in rows:
        assert r["raw"] is None
        for value in OBJECT_RAW_VALUES:
            assert value not in r["reason"]
