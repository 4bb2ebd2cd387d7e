"""X-ARF v4 abuse reports (NBIP CleanNetworks), format `xarf`: schemas, the classification
table, quarantine, STIX validity, routing and a golden bundle."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stix2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters import xarf
from connector.adapters.engine import RowRejected
from connector.adapters.mapping import load_mappings
from connector.adapters.readers import RawRecord, RowError
from connector.adapters.registry import CODE_ADAPTERS, AdapterContext, load_code_adapters
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.counts import RunSummary
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.rsit import RSIT
from connector.stix.build import EXTENSION_ID
from connector.store import Store
from connector.tlp import TLP2_MARKING_IDS
from connector.yamlfile import load_yaml
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA
from tests.golden_files import assert_golden, recipient_bundle
from tests.record_view import all_objects

SAMPLES = SHARED_DATA / "xarf" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))
REPO_SCHEMAS = Path(__file__).resolve().parents[1] / "mappings" / "tables" / "xarf-schemas" / "v4"
FIXED_CLOCK = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
BUNDLE_ID = "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e"

needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"X-ARF samples not found at {SAMPLES}")


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def adapter(default_tlp: str = "amber") -> xarf.XarfAdapter:
    return xarf.XarfAdapter(AdapterContext("nbip", default_tlp, "test.json", Path("test.json")))


def records(data: bytes) -> list[RawRecord | RowError]:
    return list(adapter().rows(io.BytesIO(data)))


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


# --- the schemas, parsed here independently of the adapter ---------------------------------------


def load_repo_schemas() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(REPO_SCHEMAS.rglob("*.json"))}


def master_pairs(master: dict[str, Any]) -> set[tuple[str, str]]:
    """Category/type combinations of the master schema's anyOf."""
    pairs = set()
    for part in master["allOf"]:
        for option in part.get("anyOf", []):
            props = option["properties"]
            pairs |= {(props["category"]["const"], t) for t in props["type"]["enum"]}
    return pairs


def consts(path: Path, schemas: dict[Path, dict[str, Any]], key: str) -> set[str]:
    """The `const` of a property in a type schema and the local schemas it refers to."""
    found: set[str] = set()

    def walk(node: Any, base: Path) -> None:
        if isinstance(node, dict):
            prop = node.get("properties", {}).get(key)
            if isinstance(prop, dict) and "const" in prop:
                found.add(prop["const"])
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#") and "xarf-core" not in ref:
                target = (base.parent / ref).resolve()
                walk(schemas[target], target)
            for k, v in node.items():
                if k not in ("if", "then", "examples"):
                    walk(v, base)
        elif isinstance(node, list):
            for item in node:
                walk(item, base)

    walk(schemas[path], path)
    return found


def all_errors(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """Errors with those nested in anyOf/oneOf alternatives (where a wrong type is told)."""
    for error in errors:
        yield error
        yield from all_errors(error.context or [])


def repo_validator() -> Draft202012Validator:
    schemas = load_repo_schemas()
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    master = schemas[REPO_SCHEMAS / "xarf-v4-master.json"]
    return Draft202012Validator(master, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_table_covers_every_category_and_type_the_schemas_define() -> None:
    schemas = load_repo_schemas()
    core = schemas[REPO_SCHEMAS / "xarf-core.json"]
    pairs = master_pairs(schemas[REPO_SCHEMAS / "xarf-v4-master.json"])
    # The type schemas agree with the master's list, and the core's categories with both.
    type_files = [p for p in schemas if p.parent.name == "types" and p.name != "content-base.json"]
    from_files = set()
    for path in type_files:
        (category,), (type_,) = consts(path, schemas, "category"), consts(path, schemas, "type")
        from_files.add((category, type_))
    assert from_files == pairs
    assert {c for c, _ in pairs} == set(core["properties"]["category"]["enum"])
    assert len(pairs) == 32  # a schema update changes this: review the table with it

    assert set(xarf.TABLE.rules) == pairs
    for (category, type_), rule in xarf.TABLE.rules.items():
        assert rule.rsit_type in RSIT[rule.taxonomy], (category, type_)
        assert all(v[1] in RSIT[v[0]] for v in rule.refine.values()), (category, type_)
        assert set(rule.fields) & set(xarf.OBSERVABLES), (category, type_)


def test_the_adapter_loads_the_schemas_from_the_repository() -> None:
    assert xarf.SCHEMA_DIR.resolve() == REPO_SCHEMAS
    assert (REPO_SCHEMAS.parent / "LICENSE").read_text().startswith("MIT License")
    shared = SHARED_DATA / "xarf" / "schemas" / "v4"
    if not shared.is_dir():
        pytest.skip("no shared copy to compare with")
    for path in sorted(shared.rglob("*.json")):
        assert json.loads(path.read_text()) == json.loads(
            (REPO_SCHEMAS / path.relative_to(shared)).read_text()
        )


def test_a_broken_table_is_refused_naming_every_problem(tmp_path: Path) -> None:
    table = tmp_path / "xarf.yaml"
    table.write_text(
        "common: {observed_at: [timestamp], fields: {ip: [source_identifier], colour: [x]}}\n"
        "categories:\n"
        "  vulnerability:\n"
        "    types:\n"
        "      cve: {rsit: vulnerable/no-such-type, identifier: {from: cve_id, convert: shout}}\n"
        "      zero_day: {rsit: vulnerable/vulnerable-system, identifier: zero-day}\n"
    )
    with pytest.raises(xarf.XarfTableError) as raised:
        xarf.load_table(table, xarf.SCHEMA_PAIRS)
    message = str(raised.value)
    assert "unknown key 'colour'" in message
    assert "'vulnerable/no-such-type' is not an RSIT taxonomy/type" in message
    assert "unknown convert 'shout'" in message
    assert "types.zero_day: not a category/type the X-ARF schemas define" in message


# --- samples ------------------------------------------------------------------------------------


@needs_samples
def test_there_are_samples() -> None:
    assert SAMPLE_FILES, f"no *.json in {SAMPLES}"


@needs_samples
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_every_sample_validates_and_becomes_a_notification(path: Path) -> None:
    report = json.loads(path.read_text())
    assert list(repo_validator().iter_errors(report)) == []
    rows = records(path.read_bytes())
    assert len(rows) == 1 and isinstance(rows[0], RawRecord)
    (n,) = adapter().notifications(rows[0])
    rule = xarf.TABLE.rules[(report["category"], report["type"])]
    assert path.stem.startswith(report["category"])
    assert (n.partner, n.feed, n.tlp) == ("nbip", "xarf", "amber")
    assert n.classification.type in RSIT[n.classification.taxonomy]
    assert (n.classification.taxonomy, n.classification.type) in {
        (rule.taxonomy, rule.rsit_type),
        *rule.refine.values(),
    }
    assert n.classification.identifier
    assert n.observable
    assert n.observed_at == datetime.fromisoformat(report["timestamp"].replace("Z", "+00:00"))
    assert n.evidence["report_id"] == report["report_id"]
    assert n.evidence["reporter"] == {k: report["reporter"][k] for k in ("org", "domain")}
    # Evidence payloads and personal data never travel on.
    text = json.dumps(n.evidence)
    assert all(item["payload"] not in text for item in report.get("evidence", []))
    assert report["reporter"]["contact"] not in text


@needs_samples
def test_samples_map_to_the_expected_rsit_classes() -> None:
    expected = {
        "connection-port-scan.json": ("information-gathering", "scanner", "port-scan", "198.51.100.150"),
        "connection-infected-host.json": ("malicious-code", "infected-system", "zeus", "203.0.113.85"),
        "content-phishing.json": (
            "fraud",
            "phishing",
            "phishing",
            "http://secure-banking-login.example.com/auth",  # the URL, not its hosting address
        ),
        "vulnerability-cve.json": ("vulnerable", "vulnerable-system", "CVE-2023-12345", "172.16.1.200:8080"),
        "vulnerability-open-service.json": (
            "vulnerable",
            "potentially-unwanted-accessible",
            "open-rdp",
            "192.0.2.50:3389",
        ),
        "reputation-blocklist.json": ("malicious-code", "c2-server", "command-and-control", "203.0.113.200"),
        "messaging-bulk-messaging.json": (
            "abusive-content",
            "spam",
            "bulk-messaging",
            "promotions@bulk-sender.example",
        ),
        "copyright-usenet.json": ("fraud", "copyright", "usenet", "news.usenet-provider.example.com"),
    }
    for name, (taxonomy, type_, identifier, observable) in expected.items():
        (row,) = records((SAMPLES / name).read_bytes())
        (n,) = adapter().notifications(row)  # type: ignore[arg-type]
        c = n.classification
        assert (c.taxonomy, c.type, c.identifier, n.observable) == (
            taxonomy,
            type_,
            identifier,
            observable,
        ), name
    (row,) = records((SAMPLES / "content-phishing.json").read_bytes())
    (n,) = adapter().notifications(row)  # type: ignore[arg-type]
    assert (n.url, n.hostname) == (
        "http://secure-banking-login.example.com/auth",
        "secure-banking-login.example.com",
    )
    # A connection report's source port is an ephemeral client port: evidence, not the service.
    (row,) = records((SAMPLES / "connection-port-scan.json").read_bytes())
    (n,) = adapter().notifications(row)  # type: ignore[arg-type]
    assert n.port is None and n.evidence["source_port"] == 54321


@needs_samples
def test_one_report_an_array_and_json_lines_read_alike(tmp_path: Path) -> None:
    reports = [json.loads(p.read_text()) for p in SAMPLE_FILES]
    pretty = b"[\n" + b",\n".join(p.read_bytes() for p in SAMPLE_FILES) + b"\n]\n"
    lines = "".join(json.dumps(r) + "\n" for r in reports).encode()
    concatenated = b"\n".join(p.read_bytes() for p in SAMPLE_FILES)
    for data in (pretty, lines, concatenated):
        rows = records(data)
        assert [r.data for r in rows if isinstance(r, RawRecord)] == reports
    assert [r.line for r in records(lines)] == list(range(1, len(reports) + 1))
    first = SAMPLE_FILES[0].read_bytes()
    assert [r.line for r in records(b"[\n" + first + b",\n" + first + b"]")] == [
        2,
        2 + first.count(b"\n") + 1,
    ]
    assert [type(r) for r in records(b'[{"a": 1}, 2]')] == [RawRecord, RowError]
    assert records(b"[]") == [] and records(b"") == []


@needs_samples
def test_all_samples_ingest(tmp_path: Path, nbip_config: Config) -> None:
    store = sqlite_store(tmp_path, nbip_config)
    path = tmp_path / "reports.json"
    path.write_bytes(b"[" + b",".join(p.read_bytes() for p in SAMPLE_FILES) + b"]")
    summary = ingest(nbip_config, store, path)
    assert summary.ok
    assert summary.counts["read"] == summary.counts["notifications"] == len(SAMPLE_FILES)
    assert summary.counts["new"] == len(SAMPLE_FILES)  # no two samples share a natural key
    assert summary.counts["quarantined"] == 0


# --- quarantine ---------------------------------------------------------------------------------


def invalid_reports() -> dict[str, dict[str, Any]]:
    base = sample("vulnerability-open-service.json")

    def changed(**updates: Any) -> dict[str, Any]:
        report = copy.deepcopy(base)
        for key, value in updates.items():
            if value is None:
                report.pop(key)
            else:
                report[key] = value
        return report

    phishing = sample("content-phishing.json")
    phishing["dns_records"] = {"a": ["198.51.100.300"]}
    return {
        "missing required field": changed(report_id=None),
        "wrong type": changed(source_port="3389"),
        "bad IP (schema format)": phishing,
        "unknown category": changed(category="telepathy"),
        "unknown type": changed(type="zero_day"),
        "bad timestamp": changed(timestamp="yesterday"),
    }


@needs_samples
def test_invalid_reports_are_quarantined_with_the_schemas_message_beside_valid_ones(
    tmp_path: Path, nbip_config: Config
) -> None:
    valid = [sample("connection-port-scan.json"), sample("infrastructure-botnet.json")]
    invalid = invalid_reports()
    bad_ip = copy.deepcopy(valid[0]) | {"source_identifier": "198.51.100.256"}
    lines: list[dict[str, Any] | str] = [
        valid[0],
        *invalid.values(),
        bad_ip,
        '{"xarf_version": "4.2',
        valid[1],
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    store = sqlite_store(tmp_path, nbip_config)
    summary = ingest(nbip_config, store, path)

    assert summary.ok
    assert summary.counts["read"] == len(lines)
    assert summary.counts["notifications"] == summary.counts["new"] == 2
    assert summary.counts["quarantined"] == len(lines) - 2
    reasons = {r["line"]: r["reason"] for r in store.run_rows(summary.run_id, "quarantined")}
    assert set(reasons) == set(range(2, len(lines)))
    checker = repo_validator()
    for line, (label, report) in enumerate(invalid.items(), start=2):
        errors = list(all_errors(checker.iter_errors(report)))
        assert errors, label
        # The schema's own message, prefixed with the JSON path of what is wrong.
        assert any(reasons[line].startswith(f"{e.json_path}: {e.message}") for e in errors), (
            label,
            reasons[line],
        )
    assert reasons[2].startswith("$: 'report_id' is a required property")
    assert reasons[3].startswith("$.source_port: '3389' is not of type 'integer'")
    assert reasons[4].startswith("$.dns_records.a[0]: '198.51.100.300' is not a 'ipv4'")
    assert reasons[5].startswith("$.category: 'telepathy' is not one of ['messaging'")
    assert reasons[6].startswith(
        "$.type: 'zero_day' is not one of ['cve', 'open_service', 'misconfiguration']"
    )
    assert reasons[7].startswith("$.timestamp: 'yesterday' is not a 'date-time'")
    # source_identifier has no format in the schema ("IP address, domain, or other identifier"):
    # a malformed address passes it and is refused by the adapter, not taken for a host name.
    assert list(checker.iter_errors(bad_ip)) == []
    assert reasons[8] == "ip: invalid IP address '198.51.100.256' (from source_identifier)"
    assert "not valid JSON" in reasons[9]
    raw = {r["line"]: r["raw"] for r in store.run_rows(summary.run_id, "quarantined")}
    # Reports can hold contacts, evidence payloads, CSEM details: never kept raw, the reason is.
    assert set(raw.values()) == {None}


@needs_samples
def test_a_valid_report_of_a_type_missing_from_the_table_is_quarantined_not_a_crash() -> None:
    rules = {k: v for k, v in xarf.TABLE.rules.items() if k != ("vulnerability", "open_service")}
    partial = xarf.XarfAdapter(adapter().context, dataclasses.replace(xarf.TABLE, rules=rules))
    (row,) = records((SAMPLES / "vulnerability-open-service.json").read_bytes())
    with pytest.raises(
        RowRejected, match=r"vulnerability/open_service is valid but has no entry in mappings/tables"
    ):
        partial.notifications(row)  # type: ignore[arg-type]


@needs_samples
def test_a_report_without_an_observable_or_with_a_bad_tlp_is_quarantined() -> None:
    report = sample("vulnerability-open-service.json") | {"source_identifier": "AS64500"}
    with pytest.raises(RowRejected, match="no observable: source_identifier 'AS64500'"):
        adapter().notifications(RawRecord(1, report, ""))
    report = sample("vulnerability-open-service.json") | {"tlp": "purple"}
    with pytest.raises(RowRejected, match="tlp: unknown TLP level 'purple'"):
        adapter().notifications(RawRecord(1, report, ""))


@needs_samples
def test_tlp_comes_from_the_report_else_the_partner_default() -> None:
    base = sample("vulnerability-open-service.json")
    cases = [
        (base, "green", "green"),
        (base | {"tlp": "TLP:AMBER+STRICT"}, "green", "amber+strict"),
        (base | {"tags": [*base["tags"], "tlp:clear"]}, "amber", "clear"),
    ]
    for report, default, expected in cases:
        (n,) = adapter(default).notifications(RawRecord(1, report, ""))
        assert n.tlp == expected


# --- the store: STIX validity, routing, golden --------------------------------------------------


@pytest.fixture(scope="module")
def nbip_config() -> Config:
    """The example deployment with NBIP CleanNetworks as a partner delivering X-ARF."""
    raw = load_yaml(SAMPLE_CONFIG)
    raw["partners"].append({"id": "nbip", "name": "NBIP CleanNetworks", "formats": ["xarf"]})
    return parse_config(raw, source="example config + nbip")


def sqlite_store(tmp_path: Path, config: Config) -> Store:
    store = Store.open(f"sqlite:///{tmp_path / 'xarf.db'}")
    store.sync_collections(collection_rows(config))
    return store


def ingest(config: Config, store: Store, path: Path) -> RunSummary:
    return Ingestor(config, store, load_mappings(), clock=lambda: FIXED_CLOCK).run("nbip", "xarf", [path])


def test_the_format_is_registered() -> None:
    load_code_adapters()
    assert CODE_ADAPTERS["xarf"] is xarf.xarf_adapter


@needs_samples
def test_every_produced_object_passes_the_validator_and_parses(tmp_path: Path, nbip_config: Config) -> None:
    store = sqlite_store(tmp_path, nbip_config)
    path = write_jsonl(tmp_path / "all.jsonl", [json.loads(p.read_text()) for p in SAMPLE_FILES])
    ingest(nbip_config, store, path)
    objects = all_objects(store)
    types = {o["type"] for o in objects}
    assert {
        "sighting",
        "observed-data",
        "indicator",
        "vulnerability",
        "malware",
        "url",
        "email-addr",
    } <= types
    for obj in objects:
        bundle = {"type": "bundle", "id": BUNDLE_ID, "objects": [obj]}
        result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
        assert stix2.parse(obj, allow_custom=False).id == obj["id"]


def routed_report(template: str, source: str, **extra: Any) -> dict[str, Any]:
    report = sample(template) | {"source_identifier": source} | extra
    report["report_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{template} {source}"))
    return report


@needs_samples
def test_reports_reach_the_recipient_of_their_address(tmp_path: Path, nbip_config: Config) -> None:
    reports = {
        "zcert": [
            routed_report("vulnerability-open-service.json", "192.0.2.10"),
            routed_report("messaging-bulk-messaging.json", "2001:db8:10::25"),
        ],
        "ziekenhuis-noord": [routed_report("connection-port-scan.json", "192.0.2.20")],  # Z-CERT too
        "ibd": [
            routed_report("infrastructure-botnet.json", "198.51.100.10"),
            routed_report(  # no address: the domain claim on example.nl decides
                "content-phishing.json", "shop.example.nl", url="https://shop.example.nl/login"
            ),
        ],
        "gemeente-voorbeeld": [routed_report("vulnerability-cve.json", "198.51.100.33")],  # not the IBD
        "nobody": [routed_report("reputation-blocklist.json", "203.0.113.200")],
    }
    red = routed_report("vulnerability-open-service.json", "192.0.2.11", tlp="red")
    path = write_jsonl(tmp_path / "routing.jsonl", [r for group in reports.values() for r in group] + [red])
    store = sqlite_store(tmp_path, nbip_config)
    summary = ingest(nbip_config, store, path)

    assert summary.counts["notifications"] == 8 and summary.counts["quarantined"] == 0
    assert summary.counts["unrouted"] == 1 and summary.counts["suppressed_tlp"] == 1
    assert dict(summary.per_recipient) == {
        "zcert": 3,
        "ziekenhuis-noord": 1,
        "ibd": 2,
        "gemeente-voorbeeld": 1,
    }
    expected = {
        "zcert": {r["report_id"] for r in reports["zcert"] + reports["ziekenhuis-noord"]},
        "ziekenhuis-noord": {r["report_id"] for r in reports["ziekenhuis-noord"]},
        "ibd": {r["report_id"] for r in reports["ibd"]},
        "gemeente-voorbeeld": {r["report_id"] for r in reports["gemeente-voorbeeld"]},
    }
    for recipient, report_ids in expected.items():
        page = CollectionView(store).page(
            recipient_collection_id(recipient), after=None, limit=1000, types=("sighting",)
        )
        sightings = [json.loads(m.body) for m in page]
        got = {s["extensions"][EXTENSION_ID]["evidence"]["report_id"] for s in sightings}
        assert got == report_ids, recipient
        assert all(s["object_marking_refs"] == [TLP2_MARKING_IDS["amber"]] for s in sightings)


GOLDEN_REPORT = {
    "xarf_version": "4.2.0",
    "report_id": "6f0b7c2e-3d4a-4b8e-9c1d-2e3f4a5b6c7d",
    "timestamp": "2024-06-14T09:30:00Z",
    "reporter": {"org": "Voorbeeld Bank", "contact": "security@bank.example", "domain": "bank.example"},
    "sender": {
        "org": "NBIP CleanNetworks",
        "contact": "reports@cleannetworks.example",
        "domain": "cleannetworks.example",
    },
    "source_identifier": "198.51.100.45",
    "category": "content",
    "type": "phishing",
    "evidence_source": "user_report",
    "url": "https://login.example.nl/secure/verify?session=1",
    "domain": "login.example.nl",
    "target_brand": "Voorbeeld Bank",
    "lure_type": "security_alert",
    "credential_fields": ["username", "password"],
    "evidence": [
        {
            "content_type": "image/png",
            "description": "Screenshot of the phishing page",
            "payload": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDw"
            "ADhgGAWjR9awAAAABJRU5ErkJggg==",
            "hash": "sha256:6b7fa434f92a8b80aab02d9bf1a12e49ffcae424e4013a1c4f68b67e3d2bbcd0",
        }
    ],
    "tags": ["tlp:green", "target:banking"],
}


def test_golden_bundle_of_a_phishing_report(tmp_path: Path, nbip_config: Config) -> None:
    """One report, clock fixed: exactly the bundle the IBD (198.51.100.0/24) receives."""
    store = sqlite_store(tmp_path, nbip_config)
    path = tmp_path / "phishing.json"
    path.write_text(json.dumps(GOLDEN_REPORT, indent=2))
    summary = ingest(nbip_config, store, path)
    assert summary.counts["new"] == 1 and dict(summary.per_recipient) == {"ibd": 1}
    actual = recipient_bundle(store, "ibd")
    assert_golden(actual, "xarf-phishing.bundle.json")
    sighting = next(o for o in actual["objects"] if o["type"] == "sighting")
    assert sighting["object_marking_refs"] == [TLP2_MARKING_IDS["green"]]
    assert "payload" not in json.dumps(actual) and "security@bank.example" not in json.dumps(actual)
