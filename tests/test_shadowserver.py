"""Shadowserver reports: one mapping per report type (mappings/shadowserver/), chosen per file
by the report type in the file's name, with `_common.yaml` as the family's fallback.

The real (anonymised) samples are AGPL and stay outside the repository: they are read in place
from the shared data directory, and those tests are skipped where it is absent. The golden
files are built from small synthetic reports in tests/data/shadowserver/ (documentation
addresses, the real column layout), so no sample data is stored here.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stix2
import yaml
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters.mapping import Mapping, family_mapping
from connector.collections import collection_rows
from connector.config import Config, parse_config
from connector.counts import RunSummary
from connector.ingest import Ingestor
from connector.stix.build import EXTENSION_ID
from connector.store import Store
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA
from tests.golden_files import assert_golden, recipient_bundle
from tests.record_view import all_objects

SAMPLES = SHARED_DATA / "shadowserver"
SYNTHETIC = Path(__file__).parent / "data" / "shadowserver"
FIXED_CLOCK = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
LATER_CLOCK = datetime(2024, 6, 16, 8, 30, tzinfo=UTC)
CATCH_ALL = "csirt-nl"  # the test recipient: every address nobody else claims

needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"Shadowserver samples (AGPL, not in the repository) not found at {SAMPLES}"
)


# --- per-sample expectations, derived by reading each file -----------------------------------


@dataclass(frozen=True)
class Expected:
    classification: str
    identifiers: set[str]
    read: int
    notifications: int
    new: int  # distinct natural keys: the same host seen twice on one day is one notification
    quarantined: dict[int, str] = field(default_factory=dict)  # line -> start of the reason
    by_rule: frozenset[str] = frozenset()  # further classifications of the mapping's classify rules


EXPECTED: dict[str, Expected] = {
    # Line 4 lists a network (198.123.245.0/24): its notification's address is the network.
    "blocklist": Expected("other/undetermined", {"blocklisted-ip"}, 3, 3, 3),
    "compromised_website": Expected(
        "intrusions/system-compromise", {"hacked-webserver-stealrat-t1", "phishing", "magecart"}, 3, 3, 3
    ),
    "device_id": Expected("other/undetermined", {"device-id"}, 3, 3, 3),
    "event4_sinkhole_http": Expected("malicious-code/infected-system", {"andromeda"}, 5, 5, 5),
    "phish_url": Expected("fraud/phishing", {"phishing-url"}, 3, 3, 3),
    # 100 rows of 83 resolvers: 17 rows repeat a resolver seen earlier that day.
    "scan_dns": Expected("vulnerable/ddos-amplifier", {"open-dns-resolver"}, 100, 100, 83),
    # Lines 3 and 4 are tagged `exchange;webshell`: a compromised server, by the mapping's
    # classify rule (intrusions/system-compromise, exchange-webshell, no CVE).
    "scan_exchange": Expected(
        "vulnerable/vulnerable-system",
        {"CVE-2021-26855", "exchange-webshell"},
        7,
        7,
        7,
        by_rule=frozenset({"intrusions/system-compromise"}),
    ),
    "scan_http": Expected("vulnerable/potentially-unwanted-accessible", {"open-http"}, 2, 2, 2),
    "scan_http_vulnerable": Expected(
        "vulnerable/vulnerable-system", {"basic-auth,http", "git-config-file"}, 3, 3, 3
    ),
    "scan_ntp": Expected("vulnerable/ddos-amplifier", {"open-ntp-version"}, 3, 3, 3),
    # Both rows lack the header's last column (jarm): read as empty (reader_options.pad_short_rows).
    "scan_rdp": Expected("vulnerable/potentially-unwanted-accessible", {"open-rdp"}, 2, 2, 2),
    "scan_smb": Expected("vulnerable/potentially-unwanted-accessible", {"open-smb"}, 3, 3, 3),
    "scan_ssl": Expected("vulnerable/potentially-unwanted-accessible", {"open-tls"}, 3, 3, 3),
    "special": Expected("malicious-code/infected-system", {"cyclops-blink"}, 3, 3, 3),
}


# --- helpers ---------------------------------------------------------------------------------


def shadowserver_config() -> Config:
    """The example deployment plus the Shadowserver partner and a recipient for the rest."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    raw["partners"].append(
        {"id": "shadowserver", "name": "Shadowserver Foundation", "formats": ["shadowserver"]}
    )
    raw["recipients"].append(
        {
            "id": CATCH_ALL,
            "name": "National CSIRT (test: everything nobody else claims)",
            "kind": "sector-cert",
            "max_tlp": "amber",
            "constituency": {"networks": ["0.0.0.0/0", "::/0"]},
        }
    )
    return parse_config(raw, source="test shadowserver config")


@pytest.fixture(scope="module")
def config() -> Config:
    return shadowserver_config()


def open_store(path: Path, config: Config) -> Store:
    store = Store.open(f"sqlite:///{path}")
    store.sync_collections(collection_rows(config))
    return store


def ingest(
    store: Store, config: Config, mappings: dict[str, Mapping], path: Path, clock: datetime | None = None
) -> RunSummary:
    ingestor = Ingestor(config, store, mappings, clock=(lambda: clock) if clock else None)
    return ingestor.run("shadowserver", "shadowserver", [path])


def stored_objects(store: Store) -> list[dict[str, Any]]:
    """Every object version the record renders, routed or not."""
    return all_objects(store)


def sightings(objects: list[dict[str, Any]], feed: str | None = None) -> list[dict[str, Any]]:
    out = [o for o in objects if o["type"] == "sighting"]
    return [s for s in out if feed is None or s["extensions"][EXTENSION_ID]["feed"] == feed]


def ext(sighting: dict[str, Any]) -> dict[str, Any]:
    return sighting["extensions"][EXTENSION_ID]  # type: ignore[no-any-return]


def quarantine(store: Store, run_id: int) -> dict[int, str]:
    return {r["line"]: r["reason"] for r in store.run_rows(run_id, "quarantined")}


def csv_rows(path: Path, pad_short_rows: bool = False) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line, row) pairs; rows whose width is wrong are left out, as the reader does
    (short rows are padded with empty cells where the mapping says so)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader)]
        rows = []
        for row in reader:
            line = reader.line_num
            if pad_short_rows and len(row) < len(header):
                row += [""] * (len(header) - len(row))
            if len(row) == len(header):
                rows.append((line, dict(zip(header, row, strict=True))))
    return header, rows


def named_columns(mapping: Mapping) -> set[str]:
    """Columns a mapping reads into a field or evidence (or drops): never in evidence.unmapped."""
    named = {p for spec in mapping.fields.values() for p in spec.paths()}
    named |= {spec if isinstance(spec, str) else spec.source for spec in mapping.evidence.values()}
    return named | set(mapping.drop)


def validation_errors(obj: dict[str, Any]) -> list[str]:
    bundle = {"type": "bundle", "id": "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e", "objects": [obj]}
    result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
    return [] if result.is_valid else [str(e) for e in result.errors]


# --- the mappings ----------------------------------------------------------------------------


def test_every_sample_report_type_has_a_mapping_and_there_is_a_fallback(mappings) -> None:
    family = {m.report_type: m for m in mappings.values() if m.family == "shadowserver"}
    assert set(family) == {*EXPECTED, "*"}
    for report_type, mapping in family.items():
        assert mapping.reader == "csv"
        assert mapping.keep_unmapped
        assert mapping.fields["observed_at"].convert == "timestamp"
        if report_type == "*":
            assert mapping.format == "shadowserver-common"
            assert f"{mapping.classification.taxonomy}/{mapping.classification.type}" == "other/undetermined"
            continue
        assert mapping.format == f"shadowserver-{report_type}"
        c = mapping.classification
        assert f"{c.taxonomy}/{c.type}" == EXPECTED[report_type].classification
        # Every row must have an address and a time, or it is quarantined, never half-notified.
        assert mapping.fields["observed_at"].required
        assert mapping.fields["ip"].required or mapping.fields["url"].required


@pytest.mark.parametrize(
    ("name", "report_type"),
    [
        ("2024-06-01-scan_http-nl.csv", "scan_http"),
        ("scan_http.csv", "scan_http"),
        ("scan_http-2024-06-01.csv", "scan_http"),
        ("2024-06-01-scan_http_vulnerable-nl-asn.csv", "scan_http_vulnerable"),
        ("2024-06-01-event4_sinkhole_http-123-nl.csv", "event4_sinkhole_http"),
    ],
)
def test_report_type_is_taken_from_the_file_name(mappings, name: str, report_type: str) -> None:
    mapping, fallback = family_mapping(mappings, "shadowserver", name)
    assert (mapping.report_type, fallback) == (report_type, False)


# --- (a) every sample ingests ----------------------------------------------------------------


@needs_samples
@pytest.mark.parametrize("report_type", sorted(EXPECTED))
def test_sample_ingests(tmp_path: Path, config: Config, mappings, report_type: str) -> None:
    expected = EXPECTED[report_type]
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, SAMPLES / f"{report_type}.csv")
    counts = summary.as_dict()
    assert summary.input_errors == []
    # Only the note that short rows were read with their missing trailing cells empty.
    assert [w for w in summary.warnings if "lacked trailing fields" not in w] == []
    assert bool(summary.warnings) == (counts["padded"] > 0)
    assert (counts["read"], counts["notifications"], counts["new"]) == (
        expected.read,
        expected.notifications,
        expected.new,
    )
    got = quarantine(store, summary.run_id)
    assert set(got) == set(expected.quarantined), got
    for line, start in expected.quarantined.items():
        assert got[line].startswith(start), (line, got[line])
    assert counts["quarantined"] == len(expected.quarantined)
    assert counts["skipped"] == 0
    assert counts["notifications"] > 0
    # Routed to somebody: the example's recipients where they claim the address, else ours.
    assert counts["unrouted"] == 0 and counts["routed"] == expected.new
    found = sightings(stored_objects(store), f"shadowserver-{report_type}")
    assert len(found) == expected.new
    assert {ext(s)["classification"]["identifier"] for s in found} == expected.identifiers
    assert {"{taxonomy}/{type}".format(**ext(s)["classification"]) for s in found} <= {
        expected.classification,
        *expected.by_rule,
    }


@needs_samples
def test_scan_rdp_rows_are_mapped_once_they_have_the_header_width(
    tmp_path: Path, config: Config, mappings
) -> None:
    """The sample's rows lack the trailing `jarm` column; with it (empty) they map as intended."""
    header, *rows = list(csv.reader((SAMPLES / "scan_rdp.csv").open(encoding="utf-8", newline="")))
    padded = tmp_path / "2024-06-01-scan_rdp-nl.csv"
    with padded.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(row + [""] * (len(header) - len(row)) for row in rows)
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, padded)
    assert (summary.counts["notifications"], summary.counts["quarantined"]) == (2, 0)
    found = sightings(stored_objects(store), "shadowserver-scan_rdp")
    assert {ext(s)["classification"]["identifier"] for s in found} == {"open-rdp"}
    assert all(ext(s)["evidence"]["bluekeep_vulnerable"] in ("Y", "N") for s in found)


@needs_samples
@pytest.mark.parametrize(
    ("name", "feed"),
    [
        ("2024-06-01-scan_http-nl.csv", "shadowserver-scan_http"),
        ("scan_http-2024-06-01.csv", "shadowserver-scan_http"),
        ("2024-06-01-scan_http_vulnerable-nl.csv", "shadowserver-scan_http_vulnerable"),
    ],
)
def test_sample_under_a_shadowserver_file_name(
    tmp_path: Path, config: Config, mappings, name: str, feed: str
) -> None:
    source = feed.removeprefix("shadowserver-")
    copy = tmp_path / name
    shutil.copyfile(SAMPLES / f"{source}.csv", copy)
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, copy)
    assert summary.ok and summary.warnings == []
    found = sightings(stored_objects(store))
    assert len(found) == EXPECTED[source].new
    assert {ext(s)["feed"] for s in found} == {feed}


# --- (b), (c), (e): the STIX of every sample ---------------------------------------------------


@pytest.fixture(scope="module")
def all_samples(tmp_path_factory: pytest.TempPathFactory, config: Config, mappings) -> list[dict[str, Any]]:
    if not SAMPLES.is_dir():
        pytest.skip(f"Shadowserver samples not found at {SAMPLES}")
    store = open_store(tmp_path_factory.mktemp("all") / "s.db", config)
    for report_type in sorted(EXPECTED):
        assert ingest(store, config, mappings, SAMPLES / f"{report_type}.csv").ok
    objects = stored_objects(store)
    store.close()
    return objects


def test_every_object_of_every_sample_is_valid_stix(all_samples) -> None:
    assert len(sightings(all_samples)) == sum(e.new for e in EXPECTED.values())
    problems = {o["id"]: errors for o in all_samples if (errors := validation_errors(o))}
    assert problems == {}
    for obj in all_samples:
        assert stix2.parse(obj, allow_custom=False).id == obj["id"]


def test_every_reference_resolves(all_samples) -> None:
    ids = {o["id"] for o in all_samples}
    for s in sightings(all_samples):
        assert s["sighting_of_ref"] in ids
        assert set(s["observed_data_refs"]) <= ids
    for o in all_samples:
        if o["type"] == "observed-data":
            assert o["object_refs"] and set(o["object_refs"]) <= ids


@needs_samples
@pytest.mark.parametrize("report_type", sorted(r for r, e in EXPECTED.items() if e.notifications))
def test_unmapped_columns_are_kept_in_the_evidence(all_samples, mappings, report_type: str) -> None:
    mapping = mappings[f"shadowserver-{report_type}"]
    header, rows = csv_rows(SAMPLES / f"{report_type}.csv", mapping.reader_options.pad_short_rows)
    quarantined = set(EXPECTED[report_type].quarantined)
    unnamed = set(header) - named_columns(mapping)
    present = {col for line, row in rows if line not in quarantined for col in unnamed if row[col].strip()}
    found = sightings(all_samples, mapping.format)
    kept: set[str] = set()
    for s in found:
        unmapped = ext(s)["evidence"]["unmapped"]
        assert set(unmapped) <= unnamed  # nothing a field or evidence already holds
        assert all(isinstance(v, str) and v for v in unmapped.values())
        kept |= set(unmapped)
    assert present and kept == present
    assert "geo" in kept or "src_geo" in kept


def test_a_cve_in_the_tag_is_the_sighted_vulnerability(all_samples) -> None:
    by_id = {o["id"]: o for o in all_samples}
    exchange = [
        s
        for s in sightings(all_samples, "shadowserver-scan_exchange")
        if ext(s)["classification"]["taxonomy"] == "vulnerable"
    ]
    assert len(exchange) == 5
    for s in exchange:
        vulnerability = by_id[s["sighting_of_ref"]]
        assert vulnerability["type"] == "vulnerability"
        assert vulnerability["name"] == "CVE-2021-26855"
        assert vulnerability["external_references"] == [
            {"source_name": "cve", "external_id": "CVE-2021-26855"}
        ]
        assert ext(s)["evidence"]["tag"].endswith("cve-2021-26855")


def test_cve_column_of_scan_http_vulnerable_is_the_sighted_vulnerability(
    tmp_path: Path, config: Config, mappings
) -> None:
    """Newer scan_http_vulnerable reports carry a `cve` column; where it is set, it is sighted."""
    report = tmp_path / "2024-06-01-scan_http_vulnerable-nl.csv"
    report.write_text(
        '"timestamp","ip","protocol","port","hostname","tag","asn","cve"\n'
        '"2024-06-01 01:00:00","192.0.2.210","tcp",443,,"ivanti-connect-secure","64496","CVE-2023-46805"\n'
        '"2024-06-01 01:00:01","192.0.2.211","tcp",80,,"git-config-file","64496",\n',
        encoding="utf-8",
    )
    store = open_store(tmp_path / "s.db", config)
    assert ingest(store, config, mappings, report).counts["notifications"] == 2
    objects = stored_objects(store)
    by_id = {o["id"]: o for o in objects}
    sighted = {
        ext(s)["classification"]["identifier"]: by_id[s["sighting_of_ref"]] for s in sightings(objects)
    }
    assert sighted["ivanti-connect-secure"]["external_references"] == [
        {"source_name": "cve", "external_id": "CVE-2023-46805"}
    ]
    assert sighted["git-config-file"]["name"] == "git-config-file"
    assert "external_references" not in sighted["git-config-file"]


# --- (d) a report type without a mapping -----------------------------------------------------


def test_unknown_report_type_goes_through_common_with_a_warning(
    tmp_path: Path, config: Config, mappings
) -> None:
    """Never refused: the common columns make a notification, the rest stays as evidence."""
    source = SAMPLES / "scan_http.csv" if SAMPLES.is_dir() else SYNTHETIC / "scan_http.csv"
    unknown = tmp_path / "2024-06-01-scan_unknownthing-nl.csv"
    shutil.copyfile(source, unknown)
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, unknown)
    assert summary.ok and summary.input_errors == []
    assert len(summary.warnings) == 1
    assert unknown.name in summary.warnings[0] and "shadowserver-common" in summary.warnings[0]
    assert summary.counts["notifications"] > 0
    found = sightings(stored_objects(store))
    assert found and {ext(s)["feed"] for s in found} == {"shadowserver-common"}
    for s in found:
        assert ext(s)["classification"] == {
            "taxonomy": "other",
            "type": "undetermined",
            "identifier": "scan_unknownthing",  # the report type, from the file name (issue #14)
        }
        evidence = ext(s)["evidence"]
        assert evidence["tag"] == "http"
        assert {"http_code", "geo"} <= set(evidence["unmapped"])


# --- (f) the same row twice ------------------------------------------------------------------


@needs_samples
def test_every_sample_ingested_twice_is_unchanged(tmp_path: Path, config: Config, mappings) -> None:
    store = open_store(tmp_path / "s.db", config)
    first = {r: ingest(store, config, mappings, SAMPLES / f"{r}.csv", FIXED_CLOCK) for r in EXPECTED}
    before = sorted(json.dumps(o, sort_keys=True) for o in stored_objects(store))
    for report_type, earlier in first.items():
        again = ingest(store, config, mappings, SAMPLES / f"{report_type}.csv", LATER_CLOCK)
        counts = again.as_dict()
        assert (counts["new"], counts["updated"]) == (0, 0), report_type
        assert counts["unchanged"] == earlier.counts["new"] == EXPECTED[report_type].new
        assert counts["quarantined"] == earlier.counts["quarantined"]
    after = sorted(json.dumps(o, sort_keys=True) for o in stored_objects(store))
    assert after == before  # not a new version, not a new object: nothing for recipients


def test_a_row_repeated_in_one_report_is_one_observation(tmp_path: Path, config: Config, mappings) -> None:
    lines = (SYNTHETIC / "scan_http.csv").read_text(encoding="utf-8").splitlines()
    doubled = tmp_path / "2024-06-01-scan_http-nl.csv"
    doubled.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n", encoding="utf-8")
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, doubled)
    assert (summary.counts["notifications"], summary.counts["new"]) == (2, 1)
    (only,) = sightings(stored_objects(store))
    assert only["count"] == 1


# --- (g) golden files from synthetic reports -------------------------------------------------


@pytest.mark.parametrize("report_type", ["scan_http", "event4_sinkhole_http"])
def test_golden_bundle(tmp_path: Path, config: Config, mappings, report_type: str) -> None:
    store = open_store(tmp_path / "g.db", config)
    summary = ingest(store, config, mappings, SYNTHETIC / f"{report_type}.csv", FIXED_CLOCK)
    assert summary.ok and summary.warnings == []
    assert summary.counts["quarantined"] == 2  # the synthetic reports each hold two faulty rows
    actual = recipient_bundle(store, CATCH_ALL)
    assert_golden(actual, f"shadowserver-{report_type}.bundle.json")
    assert not [o["id"] for o in actual["objects"] if validation_errors(o)]
