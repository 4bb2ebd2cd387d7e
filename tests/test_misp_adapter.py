"""The MISP event adapter (`misp-event`, Connect2Trust): mapping, routing, STIX, quarantine,
re-ingest, golden bundle, and `pull_events` against a fake MISP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pymisp.api
import pytest
import stix2
import yaml
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters.engine import RowRejected, RowSkipped
from connector.adapters.mapping import load_mappings
from connector.adapters.misp import MispAdapter, pull_events, read_events
from connector.adapters.readers import RawRecord
from connector.adapters.registry import AdapterContext
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.export import write_bundle
from connector.ingest import Ingestor
from connector.notification import Notification
from connector.render.collection import CollectionView
from connector.stix.ids import project_id
from connector.store import Store, VersionFilter
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA
from tests.golden_files import assert_golden

SAMPLE = SHARED_DATA / "misp" / "connect2trust-event.json"
GOLDEN = Path(__file__).parent / "golden" / "misp-connect2trust.bundle.json"
FIXED_CLOCK = datetime(2024, 10, 3, 9, 0, tzinfo=UTC)
PARTNER = "connect2trust"
FORMAT = "misp-event"

pytestmark = pytest.mark.skipif(not SAMPLE.exists(), reason=f"MISP sample not found at {SAMPLE}")

# Read independently of the adapter: the MISP types that name something a recipient owns.
ROUTABLE = {
    "ip-src",
    "ip-dst",
    "ip-src|port",
    "ip-dst|port",
    "domain",
    "hostname",
    "hostname|port",
    "domain|ip",
    "url",
    "email",
    "email-src",
    "email-dst",
    "email-reply-to",
}


def sample_event() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


def all_attributes(event: dict[str, Any]) -> list[dict[str, Any]]:
    body = event["Event"]
    return body.get("Attribute", []) + [a for o in body.get("Object", []) for a in o.get("Attribute", [])]


def routable_uuids(event: dict[str, Any]) -> set[str]:
    return {a["uuid"] for a in all_attributes(event) if a["type"] in ROUTABLE}


def attribute(prefix: str, number: int, misp_type: str, value: str, *tags: str) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": f"{prefix}0000000-0000-4000-8000-{number:012d}", "type": misp_type}
    out["value"] = value
    if tags:
        out["Tag"] = [{"name": t} for t in tags]
    return out


def find_attribute(event: dict[str, Any], uuid: str) -> dict[str, Any]:
    return next(a for a in all_attributes(event) if a["uuid"] == uuid)


@pytest.fixture(scope="module")
def config() -> Config:
    """The example deployment plus Connect2Trust. The sample's addresses and domain lie in the
    example constituencies (Z-CERT's 192.0.2.0/25 and 2001:db8:10::/48, the IBD's
    198.51.100.0/24 and example.nl), so no extra recipient is needed."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["partners"].append({"id": PARTNER, "name": "Connect2Trust", "formats": [FORMAT]})
    return parse_config(raw, source=str(SAMPLE_CONFIG))


def open_store(path: Path, config: Config) -> Store:
    store = Store.open(f"sqlite:///{path}")
    store.sync_collections(collection_rows(config))
    return store


@pytest.fixture
def store(tmp_path: Path, config: Config) -> Iterator[Store]:
    s = open_store(tmp_path / "misp.db", config)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ingestor(store: Store, config: Config) -> Ingestor:
    return Ingestor(config, store, load_mappings(), clock=lambda: FIXED_CLOCK)


def adapter_for(path: Path, default_tlp: str = "amber") -> MispAdapter:
    return MispAdapter(AdapterContext(PARTNER, default_tlp, path.name, path))


def notifications_of(event: dict[str, Any], default_tlp: str = "amber") -> list[Notification]:
    adapter = adapter_for(SAMPLE, default_tlp)
    return adapter.notifications(RawRecord(1, event, json.dumps(event)))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def collection_objects(store: Store, recipient: str) -> list[dict[str, Any]]:
    page = CollectionView(store).page(
        recipient_collection_id(recipient), after=None, limit=100_000, versions=VersionFilter(all=True)
    )
    return [json.loads(m.body) for m in page]


def sightings(store: Store, recipient: str) -> list[dict[str, Any]]:
    return [o for o in collection_objects(store, recipient) if o["type"] == "sighting"]


def evidence_of(sighting: dict[str, Any]) -> dict[str, Any]:
    (extension,) = sighting["extensions"].values()
    return extension["evidence"]  # type: ignore[no-any-return]


# --- mapping ------------------------------------------------------------------------------------


def test_sample_gives_one_notification_per_routable_attribute() -> None:
    event = sample_event()
    expected = routable_uuids(event)
    assert len(expected) == 5  # url, domain, two ip-dst, the ip-port object's ip (counted by hand)
    found = notifications_of(event)
    assert len(found) == len(expected)
    assert {n.evidence["misp_attribute_uuid"] for n in found} == expected
    for n in found:
        attribute = find_attribute(event, n.evidence["misp_attribute_uuid"])
        assert n.tlp == "amber" and n.evidence["misp_tlp_from"] == "event tag"
        assert n.evidence["misp_event_uuid"] == event["Event"]["uuid"]
        assert n.evidence["misp_type"] == attribute["type"]
        assert n.evidence["misp_category"] == attribute["category"]
        assert n.classification.identifier == event["Event"]["info"]
        assert n.partner == PARTNER and n.feed == FORMAT
    by_uuid = {n.evidence["misp_attribute_uuid"]: n for n in found}
    c2 = by_uuid["11111111-2222-4333-8444-555555555504"]
    assert (c2.classification.taxonomy, c2.classification.type) == ("malicious-code", "c2-server")
    assert c2.evidence["misp_rsit_from"] == "attribute tag"
    others = [n for u, n in by_uuid.items() if u != c2.evidence["misp_attribute_uuid"]]
    assert {(n.classification.taxonomy, n.classification.type) for n in others} == {("fraud", "phishing")}
    url = by_uuid["11111111-2222-4333-8444-555555555501"]
    assert (url.url, url.hostname) == (
        "https://login-update.example.nl/secure/owa/",
        "login-update.example.nl",
    )
    assert url.observed_at == datetime(2024, 10, 2, tzinfo=UTC)  # the event date: no attribute time
    member = by_uuid["c61e49dc-f11d-41b0-b112-794e3d6a409d"]
    assert (member.ip, member.port) == ("198.51.100.42", 3389)  # port from the ip-port object
    assert member.observed_at == datetime(2024, 10, 1, 22, 14, tzinfo=UTC)  # the object's first-seen
    assert member.evidence["misp_object_name"] == "ip-port"
    assert member.evidence["misp_object_uuid"] == "11111111-2222-4333-8444-555555555505"
    # The attributes that gave no notification are counted on every notification of the event.
    assert member.evidence["misp_attributes_without_notification"] == {
        "datetime": 1,
        "port": 1,
        "text": 1,
        "vulnerability": 1,
    }


def test_attribute_tlp_overrides_the_event_and_the_partner_default_fills_in() -> None:
    event = sample_event()
    find_attribute(event, "11111111-2222-4333-8444-555555555502")["Tag"] = [{"name": "tlp:green"}]
    levels = {n.evidence["misp_attribute_uuid"]: n.tlp for n in notifications_of(event)}
    assert levels["11111111-2222-4333-8444-555555555502"] == "green"
    assert levels["11111111-2222-4333-8444-555555555501"] == "amber"
    event["Event"]["Tag"] = [t for t in event["Event"]["Tag"] if not t["name"].startswith("tlp:")]
    untagged = notifications_of(event, default_tlp="clear")
    assert {n.tlp for n in untagged if n.evidence["misp_tlp_from"] == "partner default"} == {"clear"}


def test_event_without_rsit_tag_is_other_undetermined() -> None:
    event = sample_event()
    event["Event"]["Tag"] = [{"name": "tlp:amber"}]
    for a in all_attributes(event):
        a.pop("Tag", None)
    found = notifications_of(event)
    assert {(n.classification.taxonomy, n.classification.type) for n in found} == {("other", "undetermined")}
    assert {n.evidence["misp_rsit_from"] for n in found} == {"default: no rsit tag"}


def test_unknown_tags_and_events_without_routable_attributes() -> None:
    event = sample_event()
    event["Event"]["Tag"].append({"name": "tlp:ex:chr"})
    with pytest.raises(RowRejected, match="tlp:ex:chr"):
        notifications_of(event)
    event = sample_event()
    find_attribute(event, "11111111-2222-4333-8444-555555555502")["Tag"] = [{"name": 'rsit:fraud="nope"'}]
    with pytest.raises(RowRejected, match="not an RSIT category"):
        notifications_of(event)
    event = sample_event()
    event["Event"]["Attribute"] = [{"type": "comment", "value": "just a note", "uuid": "1" * 8}]
    event["Event"]["Object"] = []
    with pytest.raises(RowSkipped, match="no routable attribute"):
        notifications_of(event)


def test_other_routable_types_vulnerability_and_malware() -> None:
    event = {
        "Event": {
            "uuid": "6d0c1e2a-7b3f-4c5d-8e9f-0a1b2c3d4e5f",
            "info": "mixed",
            "date": "2024-10-02",
            "Tag": [{"name": 'rsit:vulnerable="vulnerable-system"'}],
            "Attribute": [
                attribute("a", 1, "ip-dst|port", "192.0.2.10|8443"),
                attribute("a", 2, "domain|ip", "shop.example.nl|198.51.100.33"),
                attribute("a", 3, "email-src", "Phisher@Example.NL"),
                attribute("a", 4, "ip-dst", "999.1.1.1"),
                attribute("a", 5, "vulnerability", "CVE-2023-4966"),
                attribute(
                    "a",
                    6,
                    "ip-src",
                    "198.51.100.34",
                    'rsit:malicious-code="infected-system"',
                    'misp-galaxy:malpedia="Emotet"',
                ),
            ],
        }
    }
    found = {n.evidence["misp_attribute_uuid"]: n for n in notifications_of(event)}
    assert len(found) == 4  # the bad address is left out, listed in evidence
    port = found["a0000000-0000-4000-8000-000000000001"]
    assert (port.ip, port.port, port.vulnerability) == ("192.0.2.10", 8443, "CVE-2023-4966")
    assert port.classification.identifier == "CVE-2023-4966"
    both = found["a0000000-0000-4000-8000-000000000002"]
    assert (both.hostname, both.ip) == ("shop.example.nl", "198.51.100.33")
    mail = found["a0000000-0000-4000-8000-000000000003"]
    assert (mail.email, mail.hostname) == ("phisher@example.nl", None)  # routed by its domain
    assert mail.direct_owner_only and mail.discard_unrouted  # personal data
    infected = found["a0000000-0000-4000-8000-000000000006"]
    assert infected.classification.identifier == "Emotet"
    (bad,) = port.evidence["misp_unusable_attributes"]
    assert (
        bad["uuid"] == "a0000000-0000-4000-8000-000000000004" and "999.1.1.1" not in bad["reason"]
    )  # never the value
    event["Event"]["Attribute"] = [event["Event"]["Attribute"][3]]
    with pytest.raises(RowRejected, match="no usable routable attribute"):
        notifications_of(event)


def test_file_shapes_single_bare_list_response_and_json_lines(tmp_path: Path) -> None:
    event = sample_event()
    shapes = {
        "pretty.json": SAMPLE.read_bytes(),
        "bare.json": json.dumps(event["Event"], indent=1).encode(),
        "list.json": json.dumps([event, event["Event"]], indent=1).encode(),
        "response.json": json.dumps({"response": [event, event]}).encode(),
        "lines.jsonl": (json.dumps(event) + "\n\n" + json.dumps(event["Event"]) + "\n").encode(),
    }
    expected = {"pretty.json": 1, "bare.json": 1, "list.json": 2, "response.json": 2, "lines.jsonl": 2}
    for name, content in shapes.items():
        rows = [r for r in read_events(io.BytesIO(content)) if isinstance(r, RawRecord)]
        assert len(rows) == expected[name], name
        for row in rows:
            assert len(adapter_for(tmp_path / name).notifications(row)) == 5, name


# --- ingest, routing, quarantine ---------------------------------------------------------------


def test_sample_ingests_and_routes_to_the_owners(ingestor: Ingestor, store: Store) -> None:
    summary = ingestor.run(PARTNER, FORMAT, [SAMPLE])
    assert summary.ok, summary.input_errors
    counts = summary.counts
    assert counts["read"] == 1 and counts["quarantined"] == counts["skipped"] == 0
    assert counts["notifications"] == counts["new"] == counts["routed"] == 5
    # 192.0.2.77 and 2001:db8:10::99: Z-CERT's networks; login-update.example.nl, its URL and
    # 198.51.100.42 (outside Gemeente Voorbeeld's /29): the IBD's.
    assert dict(summary.per_recipient) == {"zcert": 2, "ibd": 3}
    got = {r: {evidence_of(s)["misp_attribute_uuid"] for s in sightings(store, r)} for r in ("zcert", "ibd")}
    assert got["zcert"] == {"11111111-2222-4333-8444-555555555503", "11111111-2222-4333-8444-555555555504"}
    assert got["ibd"] == {
        "11111111-2222-4333-8444-555555555501",
        "11111111-2222-4333-8444-555555555502",
        "c61e49dc-f11d-41b0-b112-794e3d6a409d",
    }
    assert not sightings(store, "ziekenhuis-noord") and not sightings(store, "gemeente-voorbeeld")
    markings = {m for r in ("zcert", "ibd") for s in sightings(store, r) for m in s["object_marking_refs"]}
    assert markings == {"marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"}  # TLP:AMBER
    phishing = [s for s in sightings(store, "ibd") if evidence_of(s)["misp_type"] == "url"]
    (extension,) = phishing[0]["extensions"].values()
    assert extension["classification"]["taxonomy"] == "fraud"
    assert extension["classification"]["type"] == "phishing"


def test_attribute_tagged_red_is_withheld_from_amber_recipients(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    event = sample_event()
    red = find_attribute(event, "11111111-2222-4333-8444-555555555503")  # 192.0.2.77, Z-CERT's
    red["Tag"].append({"name": "tlp:red"})
    summary = ingestor.run(PARTNER, FORMAT, [write_jsonl(tmp_path / "red.jsonl", [event])])
    assert summary.counts["new"] == 5
    assert summary.counts["suppressed_tlp"] == 1 and summary.counts["routed"] == 4
    assert dict(summary.suppressed_tlp) == {"zcert": 1}  # Z-CERT's max_tlp is amber
    assert {evidence_of(s)["misp_attribute_uuid"] for s in sightings(store, "zcert")} == {
        "11111111-2222-4333-8444-555555555504"
    }


def test_malformed_event_in_json_lines_is_quarantined_beside_a_good_one(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    bad = sample_event()
    bad["Event"]["threat_level_id"] = "9"  # PyMISP: threat_level_id has to be in 1, 2, 3, 4
    lines = [
        bad,
        sample_event(),
        '{"Event": {"uuid": "truncated',
        {"Event": {"uuid": "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b", "info": "note only", "Attribute": []}},
        {"Event": {"info": "no uuid", "Attribute": [{"type": "ip-dst", "value": "192.0.2.1"}]}},
    ]
    summary = ingestor.run(PARTNER, FORMAT, [write_jsonl(tmp_path / "mixed.jsonl", lines)])
    counts = summary.counts
    assert counts["read"] == 5
    assert counts["notifications"] == counts["new"] == 5  # the good event went in whole
    assert counts["quarantined"] == 3 and counts["skipped"] == 1
    reasons = {r["line"]: r["reason"] for r in store.run_rows(summary.run_id, "quarantined")}
    assert set(reasons) == {1, 3, 5}
    assert "PyMISP" in reasons[1] and "threat_level_id has to be in 1, 2, 3, 4" in reasons[1]
    assert "not valid JSON" in reasons[3]
    assert "without a uuid" in reasons[5]
    (skipped,) = store.run_rows(summary.run_id, "skipped")
    assert skipped["line"] == 4 and "no routable attribute" in skipped["reason"]


def test_reingesting_the_sample_changes_nothing(ingestor: Ingestor, store: Store) -> None:
    ingestor.run(PARTNER, FORMAT, [SAMPLE])
    before = {r: collection_objects(store, r) for r in ("zcert", "ibd")}
    again = ingestor.run(PARTNER, FORMAT, [SAMPLE])
    assert again.counts["new"] == again.counts["updated"] == 0
    assert again.counts["unchanged"] == again.counts["notifications"] == 5
    assert {r: collection_objects(store, r) for r in ("zcert", "ibd")} == before


# --- STIX ---------------------------------------------------------------------------------------


def test_every_object_passes_the_validator_and_parses(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    extra = {
        "Event": {
            "uuid": "8f2e3d4c-5b6a-4798-8a1b-2c3d4e5f6a7b",
            "info": "more types",
            "date": "2024-10-02",
            "Tag": [{"name": "tlp:green"}, {"name": 'rsit:vulnerable="vulnerable-system"'}],
            "Attribute": [
                attribute("b", 1, "ip-dst|port", "192.0.2.10|8443"),
                attribute("b", 2, "vulnerability", "CVE-2023-4966"),
                attribute("b", 3, "email-src", "a@example.org", 'rsit:fraud="phishing"'),
                attribute(
                    "b",
                    4,
                    "url",
                    "http://198.51.100.40/kit.zip",
                    'rsit:malicious-code="malware-distribution"',
                ),
                attribute(
                    "b",
                    5,
                    "hostname|port",
                    "www.example.org|443",
                    'rsit:malicious-code="infected-system"',
                    'misp-galaxy:malpedia="Emotet"',
                ),
            ],
        }
    }
    summary = ingestor.run(PARTNER, FORMAT, [SAMPLE, write_jsonl(tmp_path / "extra.jsonl", [extra])])
    assert summary.counts["routed"] == 9 and summary.counts["quarantined"] == 0
    objects = {
        (o["id"], o.get("modified", "")): o for r in ("zcert", "ibd") for o in collection_objects(store, r)
    }
    types = {o["type"] for o in objects.values()}
    assert types >= {
        "sighting",
        "indicator",
        "vulnerability",
        "malware",
        "url",
        "email-addr",
        "network-traffic",
    }
    for obj in objects.values():
        bundle = {"type": "bundle", "id": "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e", "objects": [obj]}
        result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
        assert stix2.parse(obj, allow_custom=False).id == obj["id"]


def golden_bundle(store: Store) -> dict[str, Any]:
    """Every object delivered to any recipient, once, in a stable order."""
    objects: dict[str, dict[str, Any]] = {}
    for recipient in ("zcert", "ziekenhuis-noord", "ibd", "gemeente-voorbeeld"):
        buffer = io.BytesIO()
        write_bundle(store, recipient, buffer)
        for obj in json.loads(buffer.getvalue())["objects"]:
            objects[obj["id"]] = obj
    return {
        "type": "bundle",
        "id": project_id("bundle", "golden", "misp-connect2trust"),
        "objects": sorted(objects.values(), key=lambda o: (o["type"], o["id"])),
    }


def test_golden_bundle(ingestor: Ingestor, store: Store) -> None:
    """Regenerate with MELDPUNT_UPDATE_GOLDEN=1, then review the diff."""
    ingestor.run(PARTNER, FORMAT, [SAMPLE])
    assert_golden(golden_bundle(store), GOLDEN.name)


# --- pull_events against a fake MISP ------------------------------------------------------------


class FakeMisp(BaseHTTPRequestHandler):
    """Just enough of MISP's API for PyMISP's constructor and events/restSearch."""

    requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
    events: list[dict[str, Any]] = []

    def _send(self, status: int, body: Any) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, None, self.headers.get("Authorization")))
        if self.path.startswith("/servers/getVersion"):
            self._send(200, {"version": "2.5.0", "pymisp_recommended_version": "2.5.0"})
        elif self.path.startswith("/users/view/me"):
            self._send(
                200,
                {
                    "User": {"id": "1", "email": "poller@example.org", "org_id": "1", "role_id": "6"},
                    "Role": {"id": "6", "name": "read only"},
                    "UserSetting": {},
                },
            )
        elif self.path.startswith("/attributes/describeTypes.json"):
            self._send(200, {"result": pymisp.api.describe_types})  # PyMISP's own copy
        else:
            self._send(404, {"name": "Not Found", "message": "Not Found", "url": self.path})

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        self.requests.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path.startswith("/events/restSearch"):
            self._send(200, self.events)
        else:
            self._send(404, {"message": "Not Found"})

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def fake_misp(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    FakeMisp.requests = []
    FakeMisp.events = [sample_event()]
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMisp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_pull_events_yields_events_the_adapter_reads(fake_misp: str) -> None:
    pulled = list(pull_events(fake_misp, "test-api-key", verify=False, tags=["rsit:%"], published=True))
    assert len(pulled) == 1 and set(pulled[0]) == {"Event"}
    (search,) = [r for r in FakeMisp.requests if r[0] == "POST"]
    assert search[1] == "/events/restSearch" and search[3] == "test-api-key"
    assert search[2] is not None and search[2]["tags"] == ["rsit:%"] and search[2]["published"] in (1, True)
    # Pulled and read from the file: the same notifications.
    from_api = notifications_of(pulled[0])
    from_file = notifications_of(sample_event())
    assert [(n.natural_key(), n.tlp, n.evidence) for n in from_api] == [
        (n.natural_key(), n.tlp, n.evidence) for n in from_file
    ]
    line = orjson.dumps(pulled[0]) + b"\n"  # the documented way to ingest pulled events
    assert len([r for r in read_events(io.BytesIO(line)) if isinstance(r, RawRecord)]) == 1


def test_pull_events_reports_misp_errors(fake_misp: str) -> None:
    from pymisp.exceptions import PyMISPError

    FakeMisp.events = {"errors": ["search failed"]}  # type: ignore[assignment]
    with pytest.raises(PyMISPError, match="search failed"):
        list(pull_events(fake_misp, "test-api-key"))
