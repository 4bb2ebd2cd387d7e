"""The STIX produced from the DIVD sample: valid, parseable, spec-conformant ids, consistent."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import stix2
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters import converters
from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config
from connector.export import iter_collection
from connector.ingest import Ingestor
from connector.notification import Classification, Notification
from connector.render.collection import CollectionView
from connector.stix.build import EXTENSION_ID, observables, partner_identity_id
from connector.store import Store, VersionFilter
from connector.tlp import TLP2_MARKING_IDS
from tests.conftest import DIVD_SCAN

SCO_TYPES = {"ipv4-addr", "ipv6-addr", "domain-name", "network-traffic"}


def all_objects(store: Store, config: Config) -> list[dict]:
    """Every object version in every recipient collection."""
    seen: dict[tuple[str, str], dict] = {}
    for r in config.recipients:
        for m in CollectionView(store).page(
            recipient_collection_id(r.id), after=None, limit=100_000, versions=VersionFilter(all=True)
        ):
            seen[(m.stix_id, m.version)] = json.loads(m.body)
    return list(seen.values())


def sqlite_store(path: Path, config: Config) -> Store:
    s = Store.open(f"sqlite:///{path}")
    s.sync_collections(collection_rows(config))
    return s


@pytest.fixture
def ingested(tmp_path: Path, sample_config: Config) -> tuple[Store, list[dict]]:
    store = sqlite_store(tmp_path / "s.db", sample_config)
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    return store, all_objects(store, sample_config)


def test_every_object_passes_the_validator_without_errors(ingested) -> None:
    _, objects = ingested
    assert objects
    for obj in objects:
        bundle = {"type": "bundle", "id": "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e", "objects": [obj]}
        result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])


def test_every_object_parses_with_the_stix2_library(ingested) -> None:
    _, objects = ingested
    for obj in objects:
        parsed = stix2.parse(obj, allow_custom=False)
        assert parsed.id == obj["id"]


def test_sco_ids_equal_the_stix2_librarys_deterministic_ids(ingested) -> None:
    _, objects = ingested
    scos = [o for o in objects if o["type"] in SCO_TYPES]
    assert {o["type"] for o in scos} >= {"ipv4-addr", "ipv6-addr", "domain-name", "network-traffic"}
    for obj in scos:
        cls = stix2.v21.OBJ_MAP_OBSERVABLE[obj["type"]]
        rebuilt = cls(**{k: v for k, v in obj.items() if k != "id"})
        assert rebuilt.id == obj["id"]


def test_ids_are_deterministic_across_fresh_stores(tmp_path: Path, sample_config: Config) -> None:
    ids = []
    for name in ("a.db", "b.db"):
        store = sqlite_store(tmp_path / name, sample_config)
        Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
        ids.append(sorted(o["id"] for o in all_objects(store, sample_config)))
    assert ids[0] == ids[1]


def test_sighting_model_partner_marking_cve_and_extension(ingested) -> None:
    _, objects = ingested
    by_id = {o["id"]: o for o in objects}
    sightings = [o for o in objects if o["type"] == "sighting"]
    assert len(sightings) == 23  # routed notifications; the 3 unrouted are in no collection
    divd = partner_identity_id("divd")
    assert by_id[divd]["type"] == "identity"
    for s in sightings:
        assert s["created_by_ref"] == divd
        assert s["where_sighted_refs"] == [divd]
        assert s["object_marking_refs"] == [TLP2_MARKING_IDS["amber"]]  # the case says tlp: amber
        vuln = by_id[s["sighting_of_ref"]]
        assert vuln["external_references"] == [{"source_name": "cve", "external_id": "CVE-2024-4577"}]
        ext = s["extensions"][EXTENSION_ID]
        assert ext["case_id"] == "DIVD-2024-00012"
        assert ext["classification"] == {
            "taxonomy": "vulnerable",
            "type": "vulnerable-system",
            "identifier": "CVE-2024-4577",
        }
        assert ext["severity"] == "critical"
        observed = by_id[s["observed_data_refs"][0]]
        assert observed["object_marking_refs"] == s["object_marking_refs"]
        refs = [by_id[r] for r in observed["object_refs"]]
        assert any(r["type"] in ("ipv4-addr", "ipv6-addr") for r in refs)
    assert by_id[EXTENSION_ID]["type"] == "extension-definition"
    assert by_id[TLP2_MARKING_IDS["amber"]]["name"] == "TLP:AMBER"


def test_port_and_hostname_are_kept(ingested) -> None:
    _, objects = ingested
    traffic = {(o["dst_ref"], o["dst_port"]) for o in objects if o["type"] == "network-traffic"}
    ips = {o["id"]: o["value"] for o in objects if o["type"] in ("ipv4-addr", "ipv6-addr")}
    assert ("192.0.2.20", 8443) in {(ips[ref], port) for ref, port in traffic}
    names = {o["value"] for o in objects if o["type"] == "domain-name"}
    assert "mail32.example.nl" in names and "owa1.example.org" in names
    assert not any(n[0].isdigit() and n.replace(".", "").isdigit() for n in names)  # no IP as name


def test_tlp_comes_from_the_case_file(tmp_path: Path, sample_config: Config) -> None:
    scan = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    scan.write_bytes(DIVD_SCAN.read_bytes())
    case = (DIVD_SCAN.parent / "DIVD-2024-00012.yaml").read_text()
    (tmp_path / "DIVD-2024-00012.yaml").write_text(case.replace("tlp: amber", "tlp: green"))
    store = sqlite_store(tmp_path / "s.db", sample_config)
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [scan])
    sightings = [o for o in all_objects(store, sample_config) if o["type"] == "sighting"]
    assert sightings
    assert {tuple(s["object_marking_refs"]) for s in sightings} == {(TLP2_MARKING_IDS["green"],)}


def test_export_bundle_is_what_the_collection_holds(ingested, sample_config: Config) -> None:
    store, _ = ingested
    bodies = list(iter_collection(store, recipient_collection_id("zcert")))
    bundle = stix2.parse(
        {
            "type": "bundle",
            "id": "bundle--6f6b6a3b-1b0f-4bb4-9c88-2d1e2f0a1c11",
            "objects": [json.loads(b) for b in bodies],
        },
        allow_custom=False,
    )
    assert len(bundle.objects) == len(bodies) == CollectionView(store).count(recipient_collection_id("zcert"))


# --- SCO ids against the stix2 library, over many generated values -----------------------------


def _generated_values() -> list[dict[str, object]]:
    """Notification observables as the converters make them: IPv4, IPv6 (compressed, mapped,
    networks), IDN host names, odd URLs (ports, IPv6 literals, queries, fragments, non-ASCII
    paths), e-mail addresses; with and without ports and protocols."""
    rng = random.Random(20240615)
    out: list[dict[str, object]] = []
    ips = ["192.0.2.1", "2001:DB8::0:1", "2001:db8:0:0:1:0:0:1", "::1", "::", "fe80::1", "198.51.100.0/24"]
    ips += ["2001:db8:10::/48", "::ffff:192.0.2.10", "0:0:0:0:0:ffff:c000:20a"]
    ips += [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        for _ in range(40)
    ]
    ips += [":".join(f"{rng.randrange(0x10000):x}" for _ in range(8)) for _ in range(40)]
    hosts = ["Example.NL", "straße.de", "bücher.example", "xn--bcher-kva.example", "пример.рф", "例え.テスト"]
    hosts += ["a_b.example.org", "Mail30.EXAMPLE.nl.", "ümlaut-ß.example"]
    urls = [
        "HTTPS://Mail30.Example.NL:8443/owa?x=1&y='2'#frag",
        "http://[2001:DB8::1]:8080/a\\b",
        "http://example.nl/%7Efoo/ä?q=ü",
        "ftp://user:secret@example.org/pub/",
        "http://bücher.example/pfad",
        "https://example.com/path with space",
        "https://example.com/" + "x" * 3000,
        "http://192.0.2.1/\u2028",
    ]
    emails = ["User@Example.NL", "first.last+tag@bücher.example", "o'brien@example.org"]
    for ip in ips:
        out.append({"ip": converters.ip_or_network(ip)})
        if "/" not in ip:
            out.append({"ip": converters.ip_address(ip), "port": rng.randrange(1, 65536), "protocol": "udp"})
    for host in hosts:
        out.append({"hostname": converters.domain(host)})
    for url in urls:
        out.append({"url": converters.url(url)})
    for address in emails:
        out.append({"email": converters.email(address)})
    return out


def test_sco_ids_of_generated_values_equal_the_stix2_librarys() -> None:
    """Every SCO `observables` makes (ipv4-addr, ipv6-addr, domain-name, url, email-addr,
    network-traffic over dst_ref, dst_port and protocols) has the id the stix2 library
    computes for the same content (STIX 2.1 section 2.9), and validates."""
    classification = Classification("vulnerable", "vulnerable-system", "CVE-2024-4577")
    seen = 0
    for fields in _generated_values():
        n = Notification(
            partner="divd",
            feed="divd-nuclei",
            classification=classification,
            observed_at=datetime(2024, 6, 15, tzinfo=UTC),
            tlp="amber",
            **fields,  # type: ignore[arg-type]
        )
        for obj in observables(n):
            cls = stix2.v21.OBJ_MAP_OBSERVABLE[obj["type"]]
            rebuilt = cls(**{k: v for k, v in obj.items() if k != "id"}, allow_custom=False)
            assert rebuilt.id == obj["id"], obj
            seen += 1
    assert seen > 200
