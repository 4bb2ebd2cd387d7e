"""Three Shadowserver gaps closed by generic mapping features, not feed-specific code:

- `reader_options: {pad_short_rows: true}`: scan_rdp's rows lack the header's last column;
- `classify:` rules: scan_exchange's `exchange;webshell` rows are a compromise, not a CVE;
- the `ip_or_network` converter: blocklist rows that list a network (CIDR), routed to the most
  specific recipient whose networks cover the whole network.

Synthetic rows use documentation addresses; the real samples are read in place where present.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import stix2
import yaml
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters import converters
from connector.adapters.engine import FileContext, MappedAdapter, RowRejected
from connector.adapters.mapping import DEFAULT_MAPPINGS_DIR, Mapping, MappingError, load_mapping
from connector.adapters.readers import READERS, RawRecord, RowError, read_csv, reader_with_options
from connector.config import Config, parse_config
from connector.explain import explain_target
from connector.notification import Classification, Notification
from connector.routing import Policy, Router
from connector.stix.build import NotificationState, notification_objects, pattern_of
from tests.conftest import SAMPLE_CONFIG
from tests.record_view import notification_rows
from tests.test_shadowserver import (
    SAMPLES,
    ext,
    ingest,
    needs_samples,
    open_store,
    quarantine,
    shadowserver_config,
    sightings,
    stored_objects,
)

SHADOWSERVER = DEFAULT_MAPPINGS_DIR / "shadowserver"


def validation_errors(objects: list[dict[str, Any]]) -> list[str]:
    bundle = {"type": "bundle", "id": "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e", "objects": objects}
    result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
    return [] if result.is_valid else [str(e) for e in result.errors]


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))


# --- mapping schema: errors name the file and the key ----------------------------------------


def exchange_raw() -> dict[str, Any]:
    raw = yaml.safe_load((SHADOWSERVER / "scan_exchange.yaml").read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def problems_of(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    assert info.value.source == str(path) and str(path) in str(info.value)
    return info.value.problems


def rule(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "field": "tag",
        "contains": "webshell",
        "classification": {"taxonomy": "intrusions", "type": "system-compromise"},
        "fields": {"identifier": {"value": "exchange-webshell"}, "vulnerability": None},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (
            lambda m: m.update(reader_options={"pad_short_row": True}),
            "reader_options.pad_short_row",
            "unknown key",
        ),
        (
            lambda m: m.update(reader_options={"pad_short_rows": "maybe"}),
            "reader_options.pad_short_rows",
            "bool",
        ),
        (lambda m: m.update(classify=[rule(equals=["x"])]), "classify.0", "exactly one of"),
        (lambda m: m.update(classify=[rule(contains=...)]), "classify.0", "exactly one of"),
        (
            lambda m: m.update(classify=[rule(contains=..., matches="(web")]),
            "classify.0.matches",
            "regular expr",
        ),
        (lambda m: m.update(classify=[rule(contains="")]), "classify.0", "must not be empty"),
        (
            lambda m: m.update(
                classify=[rule(classification={"taxonomy": "intrusions", "type": "webshell"})]
            ),
            "classify.0.classification",
            "unknown RSIT type 'webshell'",
        ),
        (lambda m: m.update(classify=[rule(fields={"colour": {"value": 1}})]), "classify.0.fields", "colour"),
        (lambda m: m.update(classify=[rule(fields={"identifier": None})]), "classify.0.fields", "identifier"),
        (
            lambda m: m.update(classify=[rule(fields={"identifier": {"value": "x", "convert": "eval"}})]),
            "classify.0.fields.identifier.convert",
            "unknown converter",
        ),
        (lambda m: m.update(classify=[rule(shade="red")]), "classify.0.shade", "unknown key"),
        (lambda m: m.update(classify=[rule(field=...)]), "classify.0.field", "required"),
    ],
)
def test_a_bad_rule_or_reader_option_is_refused_naming_file_and_key(
    tmp_path: Path, change: Any, key: str, fragment: str
) -> None:
    raw = exchange_raw()
    change(raw)
    problems = problems_of(tmp_path, raw)
    assert any(p.startswith(f"{key}:") and fragment in p for p in problems), problems


def test_a_reader_option_the_reader_does_not_take_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((DEFAULT_MAPPINGS_DIR / "divd-nuclei.yaml").read_text(encoding="utf-8"))
    raw["reader_options"] = {"pad_short_rows": True}
    problems = problems_of(tmp_path, raw)
    assert any("reader_options.pad_short_rows: the jsonl reader does not take it" in p for p in problems)
    raw["reader_options"] = {"pad_short_rows": False}  # the default: nothing asked of the reader
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_mapping(path).reader_options.given() == {}


def test_a_rule_field_using_context_needs_the_mappings_context(tmp_path: Path) -> None:
    raw = exchange_raw()
    raw["classify"] = [rule(fields={"identifier": {"context": "id"}})]
    assert any(
        p.endswith("classify.0.fields.identifier: uses `context` but the mapping declares none")
        for p in problems_of(tmp_path, raw)
    )


def test_a_secret_named_by_a_rule_is_guarded_like_a_mapping_field(tmp_path: Path) -> None:
    raw = exchange_raw()
    raw["classify"] = [rule(fields={"identifier": {"from": "servername", "secret": True}})]
    assert any("keep_raw_in_quarantine: false" in p for p in problems_of(tmp_path, raw))


def test_shipped_mappings_use_the_new_keys() -> None:
    rdp = load_mapping(SHADOWSERVER / "scan_rdp.yaml")
    assert rdp.reader_options.given() == {"pad_short_rows": True}
    common = load_mapping(SHADOWSERVER / "_common.yaml")
    # The fallback pads short rows too (issue #14 item 9): Shadowserver leaves trailing empty
    # cells out in any report type; a cut-off last line is still a fault.
    assert common.reader_options.given() == {"pad_short_rows": True}
    exchange = load_mapping(SHADOWSERVER / "scan_exchange.yaml")
    (webshell,) = exchange.classify
    assert (webshell.classification.taxonomy, webshell.classification.type) == (
        "intrusions",
        "system-compromise",
    )
    assert webshell.fields["vulnerability"] is None
    assert load_mapping(SHADOWSERVER / "blocklist.yaml").fields["ip"].convert == "ip_or_network"


# --- the CSV reader: short rows ----------------------------------------------------------------


HEADER = '"timestamp","ip","port","jarm"'


def rows_of(stream: io.BytesIO, **options: Any) -> list[RawRecord | RowError]:
    return list(reader_with_options("csv", options)(stream))


def test_short_and_long_rows_are_faults_by_default() -> None:
    for read in (READERS["csv"], read_csv, reader_with_options("csv", {})):
        rows = list(read(csv_bytes(HEADER, '"2024-06-01 00:00:00","192.0.2.1",3389', "a,b,c,d,e")))
        assert [(r.line, r.reason) for r in rows if isinstance(r, RowError)] == [
            (2, "3 fields where the header has 4"),
            (3, "5 fields where the header has 4"),
        ]


def test_pad_short_rows_reads_missing_trailing_cells_as_empty() -> None:
    rows = rows_of(
        csv_bytes(
            HEADER,
            '"2024-06-01 00:00:00","192.0.2.1",3389',  # one short
            '"2024-06-01 00:00:00"',  # three short
            '"2024-06-01 00:00:00","192.0.2.2",3389,"abc"',  # full
            '"2024-06-01 00:00:00","192.0.2.3",3389,"abc","extra"',  # one too many: still a fault
            "",  # blank: still skipped, not a record
        ),
        pad_short_rows=True,
    )
    assert [type(r).__name__ for r in rows] == ["RawRecord", "RawRecord", "RawRecord", "RowError", "RowError"]
    assert rows[0].data == {"timestamp": "2024-06-01 00:00:00", "ip": "192.0.2.1", "port": "3389", "jarm": ""}
    assert rows[1].data == {"timestamp": "2024-06-01 00:00:00", "ip": "", "port": "", "jarm": ""}
    assert rows[2].data["jarm"] == "abc"
    assert (rows[3].line, rows[3].reason, rows[3].skipped) == (5, "5 fields where the header has 4", False)
    assert rows[4].skipped
    assert rows[0].raw == "2024-06-01 00:00:00,192.0.2.1,3389"  # the row as read, not as padded


def test_reader_with_options_refuses_an_option_the_reader_does_not_take() -> None:
    with pytest.raises(ValueError, match="takes no option"):
        reader_with_options("jsonl", {"pad_short_rows": True})
    assert reader_with_options("jsonl", {}) is READERS["jsonl"]


# --- classify rules: precedence and relaxing required fields ---------------------------------


def adapter_for(raw: dict[str, Any]) -> MappedAdapter:
    return MappedAdapter(Mapping.model_validate(raw), "shadowserver", FileContext({}), "t.csv")


def exchange_row(tag: Any, line: int = 2) -> RawRecord:
    data = {
        "timestamp": "2021-05-14 00:11:37",
        "ip": "192.0.2.7",
        "port": "443",
        "tag": tag,
        "version": "15.0",
    }
    return RawRecord(line, data, "")


def classified(adapter: MappedAdapter, tag: Any) -> tuple[str, str, str | None]:
    n = adapter.notification(exchange_row(tag))
    c = n.classification
    return f"{c.taxonomy}/{c.type}", c.identifier, n.vulnerability


def test_the_shipped_exchange_rule() -> None:
    adapter = adapter_for(exchange_raw())
    assert classified(adapter, "exchange;cve-2021-26855") == (
        "vulnerable/vulnerable-system",
        "CVE-2021-26855",
        "CVE-2021-26855",
    )
    assert classified(adapter, "exchange;webshell") == (
        "intrusions/system-compromise",
        "exchange-webshell",
        None,
    )
    assert classified(adapter, "webshell;exchange") == (
        "intrusions/system-compromise",
        "exchange-webshell",
        None,
    )
    # A webshell tag that also names a CVE: the compromise is the finding.
    assert classified(adapter, "exchange;webshell;cve-2021-26855")[0] == "intrusions/system-compromise"
    # Neither a webshell nor a CVE: the mapping's own required CVE still applies.
    for tag in ("exchange;nowebshell", "exchange", ""):
        with pytest.raises(RowRejected, match="identifier: "):
            adapter.notification(exchange_row(tag))


def test_first_matching_rule_wins_else_the_default() -> None:
    raw = exchange_raw()
    raw["classify"] = [
        rule(
            contains=...,
            equals="exchange;webshell",
            fields={"identifier": {"value": "first"}, "vulnerability": None},
        ),
        rule(fields={"identifier": {"value": "second"}, "vulnerability": None}),
        rule(
            contains=...,
            matches="^EXCH",
            classification={"taxonomy": "other", "type": "other"},
            fields={"identifier": {"from": "tag", "convert": "lower"}, "vulnerability": None},
        ),
    ]
    adapter = adapter_for(raw)
    assert classified(adapter, "exchange;webshell")[1] == "first"
    assert classified(adapter, "webshell") == ("intrusions/system-compromise", "second", None)
    assert classified(adapter, "EXCHANGE;backdoor") == (
        "other/other",
        "exchange;backdoor",
        None,
    )  # case-sensitive
    assert classified(adapter, "exchange;cve-2021-26855")[0] == "vulnerable/vulnerable-system"


def test_equals_takes_one_value_or_several_and_reads_lists_element_by_element() -> None:
    raw = exchange_raw()
    raw["classify"] = [rule(contains=..., equals=["a", 7])]
    adapter = adapter_for(raw)
    assert classified(adapter, "a")[0] == "intrusions/system-compromise"
    assert classified(adapter, "7")[0] == "intrusions/system-compromise"  # compared as text
    assert classified(adapter, ["x", "a"])[0] == "intrusions/system-compromise"  # any element
    with pytest.raises(RowRejected):
        adapter.notification(exchange_row("ab"))


def test_a_rule_on_an_absent_column_matches_nothing() -> None:
    raw = exchange_raw()
    raw["classify"] = [rule(field="no.such.column", contains="x")]
    adapter = adapter_for(raw)
    assert classified(adapter, "exchange;cve-2021-26855")[0] == "vulnerable/vulnerable-system"


def test_a_rule_without_field_overrides_keeps_the_mappings_required_fields() -> None:
    """Relaxing a required field is explicit: a rule that only reclassifies still needs the CVE."""
    raw = exchange_raw()
    raw["classify"] = [rule(fields={})]
    with pytest.raises(RowRejected, match="identifier: no CVE id"):
        adapter_for(raw).notification(exchange_row("exchange;webshell"))


def test_columns_a_rule_reads_are_not_repeated_as_unmapped() -> None:
    raw = exchange_raw()
    raw["classify"] = [rule(fields={"identifier": {"from": "extra"}, "vulnerability": None})]
    row = exchange_row("exchange;webshell")
    row.data["extra"] = "found"
    n = adapter_for(raw).notification(row)
    assert n.classification.identifier == "found" and "extra" not in n.evidence.get("unmapped", {})


# --- networks: converter, STIX, routing --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("198.51.100.0/24", "198.51.100.0/24"),
        (" 198.51.100.0/24 ", "198.51.100.0/24"),
        ("198.51.100.9/32", "198.51.100.9"),
        ("2001:DB8:10::/48", "2001:db8:10::/48"),
        ("2001:db8::1/128", "2001:db8::1"),
    ],
)
def test_ip_or_network(value: str, expected: str) -> None:
    assert converters.ip_or_network(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("198.51.100.7/24", "host bits set (the network is 198.51.100.0/24)"),
        ("2001:db8::1/48", "host bits set"),
        ("198.51.100.0/33", "invalid IP network"),
        ("198.51.100.0/255.255.255.0", "expected address/prefix-length"),
        ("example.nl/24", "expected address/prefix-length"),
        ("198.51.100.300", "invalid IP address"),
    ],
)
def test_ip_or_network_refuses(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        converters.ip_or_network(value)


def note(ip: str, taxonomy: str = "other", type_: str = "undetermined") -> Notification:
    return Notification(
        partner="shadowserver",
        feed="shadowserver-blocklist",
        classification=Classification(taxonomy, type_, "blocklisted-ip"),
        observed_at=datetime(2024, 6, 1, 7, tzinfo=UTC),
        tlp="amber",
        ip=ip,
    )


STATE = NotificationState(
    "2024-06-01T07:00:00.000Z",
    "2024-06-01T07:00:00.000Z",
    1,
    "2024-06-15T12:00:00.000Z",
    "2024-06-15T12:00:00.000Z",
)


@pytest.mark.parametrize("network", ["198.51.100.0/24", "2001:db8:10::/48"])
def test_a_network_notification_is_valid_stix(network: str) -> None:
    objects = notification_objects(note(network), STATE)
    indicator, address, _observed, sighting = objects
    assert sighting["sighting_of_ref"] == indicator["id"]
    assert address["type"] == ("ipv6-addr" if ":" in network else "ipv4-addr")
    assert address["value"] == network
    assert indicator["pattern"] == f"[{address['type']}:value ISSUBSET '{network}']"
    assert pattern_of(note("198.51.100.7")) == "[ipv4-addr:value = '198.51.100.7']"
    assert validation_errors(objects) == []
    for obj in objects:
        assert stix2.parse(obj, allow_custom=False).id == obj["id"]
    library = stix2.IPv6Address if ":" in network else stix2.IPv4Address
    assert library(value=network).id == address["id"]  # the SCO id the spec gives a CIDR value


def routing_config() -> Config:
    """The example deployment (no catch-all) with the Shadowserver partner."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    raw["partners"].append(
        {"id": "shadowserver", "name": "Shadowserver Foundation", "formats": ["shadowserver"]}
    )
    return parse_config(raw, source="test")


@pytest.mark.parametrize(
    ("network", "owner"),
    [
        # zcert claims 192.0.2.0/25; its hospital 192.0.2.16/28 inside it.
        ("192.0.2.16/28", "ziekenhuis-noord"),
        ("192.0.2.16/29", "ziekenhuis-noord"),  # inside the hospital's /28
        ("192.0.2.0/26", "zcert"),  # holds the hospital's /28 but is covered only by the /25
        ("192.0.2.0/25", "zcert"),  # exactly the claim
        ("192.0.2.0/24", None),  # larger than any claim: half of it is nobody's
        ("192.0.2.128/25", None),  # not claimed at all
        ("198.51.100.32/29", "gemeente-voorbeeld"),
        ("198.51.100.0/23", None),
        ("2001:db8:10:1::/64", "zcert"),
        ("2001:db8::/32", None),
    ],
)
def test_a_network_goes_to_the_most_specific_claim_covering_all_of_it(
    network: str, owner: str | None
) -> None:
    router = Router(routing_config())
    found = router.match_keys(ip=network)
    assert (found.owner if found else None) == owner
    assert router.lookup_owner(network) == owner
    assert router.lookup_owners([network, "192.0.2.17"]) == [owner, "ziekenhuis-noord"]


def test_explain_accepts_a_network() -> None:
    router = Router(routing_config())
    lines = explain_target(router, "192.0.2.0/26", Policy("amber"))
    assert "network 192.0.2.0/25: claimed by zcert <- chosen (most specific)" in lines
    assert lines[-1] == "result: delivered to zcert"
    assert explain_target(router, "192.0.2.0/24", Policy("amber"))[-1].startswith("result: unrouted")
    with pytest.raises(ValueError):
        explain_target(router, "192.0.2.1/24", Policy("amber"))  # host bits: not a network, not a domain


def test_blocklist_networks_end_to_end(tmp_path: Path, mappings) -> None:
    config = routing_config()
    report = tmp_path / "2024-06-01-blocklist-nl.csv"
    report.write_text(
        '"timestamp","ip","hostname","source","reason","asn","geo","region","city","naics","sic","sector","tag"\n'
        '"2024-06-01 07:00:19","192.0.2.16/28",,"List","Spam",,"NL",,,,,,\n'
        '"2024-06-01 07:00:19","192.0.2.0/26",,"List","Spam",,"NL",,,,,,\n'
        '"2024-06-01 07:00:19","192.0.2.0/24",,"List","Spam",,"NL",,,,,,\n'
        '"2024-06-01 07:00:19","192.0.2.7/24",,"List","Spam",,"NL",,,,,,\n'
        '"2024-06-01 07:00:19","192.0.2.17",,"List","Spam",,"NL",,,,,,\n'
        '"2024-06-01 07:00:19","192.0.2.17/32",,"List","Spam",,"NL",,,,,,\n',
        encoding="utf-8",
    )
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, report)
    counts = summary.as_dict()
    # The /32 is the address of the row before it: one notification, two observations.
    assert (counts["read"], counts["notifications"], counts["new"], counts["quarantined"]) == (6, 5, 4, 1)
    assert (counts["routed"], counts["unrouted"]) == (3, 1)
    assert quarantine(store, summary.run_id) == {
        5: "ip: IP network '192.0.2.7/24' has host bits set (the network is 192.0.2.0/24) (from ip)"
    }
    objects = stored_objects(store)
    addresses = {o["value"] for o in objects if o["type"] == "ipv4-addr"}
    assert addresses == {"192.0.2.16/28", "192.0.2.0/26", "192.0.2.0/24", "192.0.2.17"}
    assert validation_errors(objects) == []
    got = {row["observable"]: row["recipients"] for row in notification_rows(store)}
    assert got == {
        "192.0.2.16/28": ["ziekenhuis-noord", "zcert"],
        "192.0.2.0/26": ["zcert"],
        "192.0.2.0/24": [],
        "192.0.2.17": ["ziekenhuis-noord", "zcert"],
    }


# --- the real samples ------------------------------------------------------------------------

# report type -> (read, notifications, quarantined); before these changes (2, 0, 2), (7, 5, 2)
# and (3, 2, 1): short rows, webshell tags without a CVE and a listed network were quarantined.
SAMPLE_COUNTS = {"scan_rdp": (2, 2, 0), "scan_exchange": (7, 7, 0), "blocklist": (3, 3, 0)}


@needs_samples
@pytest.mark.parametrize("report_type", sorted(SAMPLE_COUNTS))
def test_real_sample_rows_now_ingested(tmp_path: Path, mappings, report_type: str) -> None:
    config = shadowserver_config()
    store = open_store(tmp_path / "s.db", config)
    summary = ingest(store, config, mappings, SAMPLES / f"{report_type}.csv")
    counts = summary.as_dict()
    assert (counts["read"], counts["notifications"], counts["quarantined"]) == SAMPLE_COUNTS[report_type]
    objects = stored_objects(store)
    assert validation_errors(objects) == []
    for obj in objects:
        stix2.parse(obj, allow_custom=False)


def sample_objects(tmp_path: Path, mappings: Any, report_type: str) -> list[dict[str, Any]]:
    """Every object stored from the real sample of this report type, in a fresh store."""
    config = shadowserver_config()
    store = open_store(tmp_path / "s.db", config)
    ingest(store, config, mappings, SAMPLES / f"{report_type}.csv")
    return stored_objects(store)


@needs_samples
def test_real_scan_rdp_rows_map_as_if_padded_by_hand(tmp_path: Path, mappings) -> None:
    found = sightings(sample_objects(tmp_path, mappings, "scan_rdp"), "shadowserver-scan_rdp")
    assert len(found) == 2
    for s in found:
        assert ext(s)["classification"]["identifier"] == "open-rdp"
        assert ext(s)["evidence"]["bluekeep_vulnerable"] == "N"
        assert "jarm" not in ext(s)["evidence"].get("unmapped", {})  # padded empty, so not kept


@needs_samples
def test_real_scan_exchange_webshells_are_compromised_hosts(tmp_path: Path, mappings) -> None:
    objects = sample_objects(tmp_path, mappings, "scan_exchange")
    by_id = {o["id"]: o for o in objects}
    webshells = [
        s for s in sightings(objects) if ext(s)["classification"]["identifier"] == "exchange-webshell"
    ]
    assert len(webshells) == 2
    for s in webshells:
        assert ext(s)["classification"] == {
            "taxonomy": "intrusions",
            "type": "system-compromise",
            "identifier": "exchange-webshell",
        }
        assert ext(s)["evidence"]["tag"] == "exchange;webshell"
        indicator = by_id[s["sighting_of_ref"]]
        assert indicator["type"] == "indicator" and indicator["indicator_types"] == ["compromised"]
        assert indicator["pattern"].startswith("[ipv4-addr:value = ")
    assert {by_id[s["sighting_of_ref"]]["type"] for s in sightings(objects)} == {"indicator", "vulnerability"}


@needs_samples
def test_real_blocklist_network_row(tmp_path: Path, mappings) -> None:
    objects = sample_objects(tmp_path, mappings, "blocklist")
    assert "198.123.245.0/24" in {o["value"] for o in objects if o["type"] == "ipv4-addr"}
    patterns = {o["pattern"] for o in objects if o["type"] == "indicator"}
    assert "[ipv4-addr:value ISSUBSET '198.123.245.0/24']" in patterns
