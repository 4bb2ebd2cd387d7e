"""Input hardening (issue #14): faults of the partners' files that aborted a run or slipped
through. Each test plants one fault beside good rows of a real (or realistic) sample and checks
that the fault is quarantined with its line and reason, or read as the issue says, while the
rows beside it become notifications as before.

Real samples are read in place from the shared data directory (or written, changed, to a
temporary directory); synthetic rows use documentation addresses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.mapping import load_mappings
from connector.config import Config, parse_config
from connector.counts import RunSummary
from connector.ingest import Ingestor
from connector.store import Store
from connector.yamlfile import load_yaml
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA

SHADOWSERVER = SHARED_DATA / "shadowserver"
DIVD = SHARED_DATA / "divd"
CREDENTIALS = SHARED_DATA / "credentials" / "DIVD-2024-00037.credentials.csv"
XARF_SAMPLES = SHARED_DATA / "xarf" / "samples"
MISP_EVENT = SHARED_DATA / "misp" / "connect2trust-event.json"


@pytest.fixture(scope="module")
def config() -> Config:
    """The example deployment plus the partners of every format, and a recipient for the
    addresses nobody else claims (so that routing is visible in every test)."""
    raw = load_yaml(SAMPLE_CONFIG)
    raw["partners"] += [
        {"id": "shadowserver", "name": "Shadowserver Foundation", "formats": ["shadowserver"]},
        {"id": "connect2trust", "name": "Connect2Trust", "formats": ["misp-event"]},
        {"id": "nbip", "name": "NBIP CleanNetworks", "formats": ["xarf"]},
    ]
    return parse_config(raw, source="example config + shadowserver, connect2trust, nbip")


def ingest(store: Store, config: Config, partner: str, fmt: str, path: Path) -> RunSummary:
    return Ingestor(config, store, load_mappings()).run(partner, fmt, [path])


def quarantined(store: Store, summary: RunSummary) -> list[dict[str, Any]]:
    return [r for r in store.run_rows(summary.run_id) if r["kind"] == "quarantined"]


# --- 7: out-of-range timestamps ----------------------------------------------------------------

# Two that have no UTC form (datetime overflows converting them), and the placeholders feeds
# write for "no time": Go's zero time (nuclei is written in Go), the Unix epoch, the last second.
OVERFLOWING = ["0001-01-01 00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
PLACEHOLDERS = ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]


def shadowserver_with_time(tmp_path: Path, moment: str) -> tuple[Path, int]:
    """scan_http with its first row's timestamp replaced; the number of good rows."""
    lines = (SHADOWSERVER / "scan_http.csv").read_text(encoding="utf-8").splitlines()
    assert '"2018-04-19 00:02:26"' in lines[1]
    lines[1] = lines[1].replace('"2018-04-19 00:02:26"', f'"{moment}"')
    path = tmp_path / "2024-06-01-scan_http-nl.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines) - 2


def credentials_with_time(tmp_path: Path, moment: str) -> tuple[Path, int]:
    lines = CREDENTIALS.read_text(encoding="utf-8").splitlines()
    assert "2024-09-17T10:00:00Z" in lines[1]
    lines[1] = lines[1].replace("2024-09-17T10:00:00Z", moment)
    path = tmp_path / CREDENTIALS.name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines) - 2


def nuclei_with_time(tmp_path: Path, moment: str) -> Path:
    lines = (DIVD / "DIVD-2024-00012.nuclei.jsonl").read_text(encoding="utf-8").splitlines()
    finding = json.loads(lines[0])
    finding["timestamp"] = moment
    lines[0] = json.dumps(finding)
    path = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(DIVD / "DIVD-2024-00012.yaml", tmp_path)
    return path


def xarf_with_time(tmp_path: Path, moment: str) -> Path:
    """Two reports as JSON lines: the first with the timestamp, the second unchanged."""
    report = json.loads((XARF_SAMPLES / "connection-port-scan.json").read_text(encoding="utf-8"))
    bad = {**report, "timestamp": moment, "report_id": "5d1c0a4e-9d1b-4c1e-8f0a-2b3c4d5e6f70"}
    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(report) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("moment", OVERFLOWING + PLACEHOLDERS)
def test_a_timestamp_out_of_range_quarantines_its_shadowserver_row(
    tmp_path: Path, store: Store, config: Config, moment: str
) -> None:
    """One such timestamp aborted the whole file with an OverflowError (and again when run
    again); a placeholder time was stored as an observation of the year 1 or 9999."""
    path, good = shadowserver_with_time(tmp_path, moment)
    for _ in range(2):  # a run again quarantines it again; nothing else changes
        summary = ingest(store, config, "shadowserver", "shadowserver", path)
        assert summary.counts["quarantined"] == 1
        assert summary.counts["notifications"] == good
        [row] = quarantined(store, summary)
        assert row["line"] == 2
        assert row["reason"].startswith("observed_at: timestamp ")
        assert "out of range" in row["reason"] or "not an observation time" in row["reason"]


@pytest.mark.parametrize("moment", OVERFLOWING + PLACEHOLDERS[:1])
def test_a_timestamp_out_of_range_quarantines_its_row_in_every_mapped_format(
    tmp_path: Path, store: Store, config: Config, moment: str
) -> None:
    """divd-credentials (CSV, personal data: the reason quotes no value) and divd-nuclei
    (JSON lines): the row is quarantined, the rest of the file goes in."""
    path, good = credentials_with_time(tmp_path, moment)
    summary = ingest(store, config, "divd", "divd-credentials", path)
    assert summary.counts["notifications"] == good - 1  # the sample has one faulty row already
    row = next(r for r in quarantined(store, summary) if r["line"] == 2)
    assert row["reason"] == "observed_at: not usable (value withheld: personal data) (from ts_found)"

    path = nuclei_with_time(tmp_path, moment)
    baseline = ingest(store, config, "divd", "divd-nuclei", DIVD / "DIVD-2024-00012.nuclei.jsonl")
    summary = ingest(store, config, "divd", "divd-nuclei", path)
    assert summary.counts["quarantined"] == baseline.counts["quarantined"] + 1
    assert summary.counts["notifications"] == baseline.counts["notifications"] - 1
    row = next(r for r in quarantined(store, summary) if r["line"] == 1)
    assert row["reason"].startswith("observed_at: timestamp ")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_out_of_range_quarantines_its_xarf_report(
    tmp_path: Path, store: Store, config: Config, moment: str
) -> None:
    """X-ARF's schema takes both as RFC 3339 date-times; converting them aborted the file."""
    path = xarf_with_time(tmp_path, moment)
    for _ in range(2):
        summary = ingest(store, config, "nbip", "xarf", path)
        assert (summary.counts["quarantined"], summary.counts["notifications"]) == (1, 1)
        [row] = quarantined(store, summary)
        assert row["line"] == 1
        assert row["reason"].startswith("observed_at: timestamp ") and "(from timestamp)" in row["reason"]


# MISP: PyMISP reads these times into datetimes (or, for an epoch number it cannot convert,
# drops the value with a log line): the adapter's conversion to UTC then aborted the file, or
# the notification silently took the next time (the attribute's timestamp, the event's date).
MISP_ATTRIBUTE = "11111111-2222-4333-8444-555555555503"  # the sample's ip-dst 192.0.2.77
MISP_OBJECT = "11111111-2222-4333-8444-555555555505"  # its ip-port object (198.51.100.42:3389)
MISP_FIRST_SEEN = "f56d545e-303e-4d8c-80eb-e14f4fa58eba"  # that object's first-seen attribute
MISP_OBJECT_IP = "c61e49dc-f11d-41b0-b112-794e3d6a409d"


def misp_event(change: Any = None) -> dict[str, Any]:
    """The Connect2Trust sample event, changed in place by `change(event body)`."""
    event = json.loads(MISP_EVENT.read_text(encoding="utf-8"))
    if change is not None:
        change(event["Event"])
    return event


def misp_outcome(event: dict[str, Any]) -> Any:
    from connector.adapters.misp import MispAdapter
    from connector.adapters.readers import RawRecord
    from connector.adapters.registry import AdapterContext

    adapter = MispAdapter(AdapterContext("connect2trust", "amber", "event.json", Path("event.json")))
    return adapter.outcome(RawRecord(1, event, json.dumps(event)))


def attribute(body: dict[str, Any], uuid: str) -> dict[str, Any]:
    everything = body["Attribute"] + [a for o in body["Object"] for a in o["Attribute"]]
    return next(a for a in everything if a["uuid"] == uuid)


def made_for(outcome: Any) -> set[str]:
    return {n.evidence["misp_attribute_uuid"] for n in outcome.notifications}


SAMPLE_ATTRIBUTES = {
    "11111111-2222-4333-8444-555555555501",
    "11111111-2222-4333-8444-555555555502",
    MISP_ATTRIBUTE,
    "11111111-2222-4333-8444-555555555504",
    MISP_OBJECT_IP,
}


@pytest.mark.parametrize(
    "first_seen",
    [*OVERFLOWING, "0001-01-01T00:00:00Z", 99999999999999, -99999999999999, 1e20],
)
def test_a_misp_attribute_first_seen_out_of_range_is_a_fault_of_that_attribute(first_seen: Any) -> None:
    """Its own notification is withheld (it would be dated by another time); the event's other
    attributes keep theirs. The reason names the attribute, never the value."""
    event = misp_event(lambda body: attribute(body, MISP_ATTRIBUTE).update(first_seen=first_seen))
    outcome = misp_outcome(event)
    assert made_for(outcome) == SAMPLE_ATTRIBUTES - {MISP_ATTRIBUTE}
    [fault] = outcome.faults
    assert fault == (
        "MISP event 5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e01 attribute "
        f"{MISP_ATTRIBUTE} (ip-dst): not a usable first_seen (value withheld)"
    )


@pytest.mark.parametrize("first_seen", OVERFLOWING)
def test_a_misp_object_time_out_of_range_withholds_the_notifications_that_take_it(first_seen: str) -> None:
    # The object's first-seen attribute (a `datetime`, which PyMISP parses).
    event = misp_event(lambda body: attribute(body, MISP_FIRST_SEEN).update(value=first_seen))
    outcome = misp_outcome(event)
    assert made_for(outcome) == SAMPLE_ATTRIBUTES - {MISP_OBJECT_IP}
    [fault] = outcome.faults
    assert f"attribute {MISP_FIRST_SEEN} (datetime, in object ip-port {MISP_OBJECT})" in fault
    assert "not a usable first-seen of its object (value withheld)" in fault
    assert fault.endswith(f"withheld the notification of attribute {MISP_OBJECT_IP} (ip-dst)")

    # The object's own first_seen field, which decides before its first-seen attribute.
    event = misp_event(lambda body: body["Object"][0].update(first_seen=first_seen))
    outcome = misp_outcome(event)
    assert made_for(outcome) == SAMPLE_ATTRIBUTES - {MISP_OBJECT_IP}
    [fault] = outcome.faults
    assert fault == (
        f"MISP event 5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e01 object ip-port {MISP_OBJECT}: "
        "not a usable first_seen (value withheld); "
        f"withheld the notification of attribute {MISP_OBJECT_IP} (ip-dst)"
    )


def test_a_misp_event_date_out_of_range_withholds_the_notifications_dated_by_it() -> None:
    """The sample's top-level attributes have no time of their own: the event's date dates
    them. The object's attribute is dated by the object's first-seen and is kept."""
    outcome = misp_outcome(misp_event(lambda body: body.update(date="0001-01-01")))
    assert made_for(outcome) == {MISP_OBJECT_IP}
    [fault] = outcome.faults
    assert fault.startswith(
        "MISP event 5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e01: not a usable date (value withheld); "
        "withheld the notification of attribute 11111111-2222-4333-8444-555555555501 (url), "
    )


def test_a_misp_file_with_times_out_of_range_is_ingested_and_again(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """End to end: no OverflowError, one run row per fault on the event's line, twice."""

    def change(body: dict[str, Any]) -> None:
        attribute(body, MISP_ATTRIBUTE)["first_seen"] = OVERFLOWING[0]
        attribute(body, MISP_FIRST_SEEN)["value"] = OVERFLOWING[1]

    path = tmp_path / "event.json"
    path.write_text(json.dumps(misp_event(change)), encoding="utf-8")
    for _ in range(2):
        summary = ingest(store, config, "connect2trust", "misp-event", path)
        assert summary.counts["attributes_quarantined"] == 2
        assert summary.counts["notifications"] == len(SAMPLE_ATTRIBUTES) - 2
        rows = quarantined(store, summary)
        assert [r["line"] for r in rows] == [1, 1]
        assert not any(value in r["reason"] for r in rows for value in OVERFLOWING)


# --- 25 (second part): a MISP first_seen PyMISP cannot read -----------------------------------


@pytest.mark.parametrize("first_seen", ["yesterday evening", "2024-13-45", "1718000000"])
def test_an_invalid_misp_first_seen_is_a_fault_not_replaced_by_another_time(first_seen: str) -> None:
    """PyMISP drops a first_seen it cannot parse with a log line; the notification was then
    dated by the event's date instead, silently. It is the attribute's fault now (README: a
    present but invalid value is a fault), as for the object's first_seen."""
    event = misp_event(lambda body: attribute(body, MISP_ATTRIBUTE).update(first_seen=first_seen))
    outcome = misp_outcome(event)
    assert made_for(outcome) == SAMPLE_ATTRIBUTES - {MISP_ATTRIBUTE}
    assert outcome.faults == [
        "MISP event 5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e01 attribute "
        f"{MISP_ATTRIBUTE} (ip-dst): not a usable first_seen (value withheld)"
    ]

    event = misp_event(lambda body: body["Object"][0].update(first_seen=first_seen))
    outcome = misp_outcome(event)
    assert made_for(outcome) == SAMPLE_ATTRIBUTES - {MISP_OBJECT_IP}
    [fault] = outcome.faults
    assert f"object ip-port {MISP_OBJECT}: not a usable first_seen (value withheld)" in fault


# --- 8: scoped IPv6 addresses -------------------------------------------------------------------

# A zone (RFC 4007: `%eth0`, in a URL `%25eth0`) names an interface of the host that wrote the
# address: it means nothing to anybody else, is not part of a STIX ipv6-addr value, and made
# the address match no claim. Every normaliser drops it; the address routes as itself.
ZONED = "2001:db8:10::5%eth0"  # in zcert's 2001:db8:10::/48


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        (ZONED, "2001:db8:10::5"),
        ("2001:DB8:10:0:0:0:0:5%25eth0", "2001:db8:10::5"),
        ("fe80::1%3", "fe80::1"),
        ("::ffff:192.0.2.17%eth0", "::ffff:192.0.2.17"),
    ],
)
def test_every_normaliser_drops_an_ipv6_zone(given: str, canonical: str) -> None:
    from connector.adapters import converters
    from connector.adapters.xarf import ip_or_none
    from connector.normalize import canonical_ip, canonical_ip_or_network, url_host

    assert canonical_ip(given) == canonical
    assert canonical_ip_or_network(given) == canonical
    assert converters.ip_address(given) == canonical
    assert ip_or_none(given) == canonical
    # In a URL the zone is written %25<zone> (RFC 6874).
    zone = given.partition("%")[2].removeprefix("25")
    url = f"http://[{given.partition('%')[0]}%25{zone}]:8080/login?x=1"
    assert url_host(url) == canonical
    assert converters.url(url) == f"http://[{canonical}]:8080/login?x=1"


def test_a_zone_on_a_network_is_dropped_and_the_network_kept() -> None:
    from connector.normalize import canonical_ip_or_network

    assert canonical_ip_or_network("2001:db8:10::%eth0/64") == "2001:db8:10::/64"
    with pytest.raises(ValueError, match="host bits set"):
        canonical_ip_or_network("2001:db8:10::5%eth0/64")


@pytest.mark.parametrize("bad", ["2001:db8:10::5%", "192.0.2.1%eth0", "2001:db8:10::5%eth0%1"])
def test_a_malformed_zone_or_a_zone_on_ipv4_is_still_refused(bad: str) -> None:
    from connector.normalize import canonical_ip

    with pytest.raises(ValueError, match="invalid IP address"):
        canonical_ip(bad)


def test_a_scoped_address_is_routed_by_the_address(tmp_path: Path, store: Store, config: Config) -> None:
    """End to end, as a Shadowserver row, a MISP attribute and an X-ARF report deliver it."""
    report = tmp_path / "2024-06-12-scan_http-nl.csv"
    report.write_text(
        '"timestamp","ip","protocol","port","hostname","tag","asn"\n'
        f'"2024-06-12 01:00:00","{ZONED}","tcp",443,,"http",\n',
        encoding="utf-8",
    )
    summary = ingest(store, config, "shadowserver", "shadowserver", report)
    assert (summary.counts["routed"], summary.counts["unrouted"]) == (1, 0)
    assert dict(summary.per_recipient) == {"zcert": 1}

    event = misp_event(lambda body: attribute(body, MISP_ATTRIBUTE).update(value=ZONED))
    [n] = [
        n for n in misp_outcome(event).notifications if n.evidence["misp_attribute_uuid"] == MISP_ATTRIBUTE
    ]
    assert n.ip == "2001:db8:10::5"

    path = tmp_path / "reports.jsonl"
    xarf = json.loads((XARF_SAMPLES / "connection-port-scan.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps({**xarf, "source_identifier": ZONED}) + "\n", encoding="utf-8")
    summary = ingest(store, config, "nbip", "xarf", path)
    assert (summary.counts["routed"], summary.counts["quarantined"]) == (1, 0)
    assert dict(summary.per_recipient) == {"zcert": 1}


# --- 9: rows that lack only trailing empty cells ------------------------------------------------

# Shadowserver omits trailing empty cells now and then: IntelMQ's own test files have such rows
# (event4_microsoft_sinkhole, event4_honeypot_ddos, scan_rdp, scan_synfulknock). These rows
# have the column layout of event4_microsoft_sinkhole; the third lacks its last, empty, cell.
SINKHOLE_HEADER = (
    '"timestamp","protocol","src_ip","src_port","src_asn","src_geo","src_region","src_city",'
    '"src_hostname","src_naics","src_sector","device_vendor","device_type","device_model","dst_ip",'
    '"dst_port","dst_asn","dst_geo","dst_region","dst_city","dst_hostname","dst_naics","dst_sector",'
    '"public_source","infection","family","tag","application","version","event_id"'
)
SINKHOLE_ROWS = [
    '"2024-06-07 00:00:00","tcp","192.0.2.21",52955,64500,"NL","UTRECHT","UTRECHT",,517311,,,,,'
    '"198.51.100.179",16464,64501,"NL","UTRECHT","UTRECHT",,334111,"Information","MSDCU",'
    '"b68-zeroaccess-2-32bit","zeroaccess","b68-zeroaccess-2-32bit",,,',
    '"2024-06-07 00:00:01","tcp","192.0.2.22",60373,64500,"NL","UTRECHT","UTRECHT",,517311,,,,,'
    '"198.51.100.5",16464,64501,"NL","UTRECHT","UTRECHT",,334111,"Information","MSDCU",'
    '"b68-zeroaccess-2-32bit","zeroaccess","b68-zeroaccess-2-32bit",,,',
    '"2024-06-07 00:00:02","tcp","192.0.2.23",50386,64500,"NL","UTRECHT","UTRECHT",,517311,,,,,'
    '"198.51.100.165",16465,64501,"NL","UTRECHT","UTRECHT",,334111,"Information","MSDCU",'
    '"b68-zeroaccess-2-64bit","zeroaccess","b68-zeroaccess-2-64bit",,',
]


def mapped_adapter(mapping_format: str, file_name: str) -> Any:
    from connector.adapters.engine import FileContext, MappedAdapter, load_context
    from connector.adapters.mapping import family_mapping

    mappings = load_mappings()
    if mapping_format in mappings:
        return MappedAdapter(mappings[mapping_format], "shadowserver", FileContext({}), file_name)
    mapping = family_mapping(mappings, mapping_format, file_name)[0]
    return MappedAdapter(mapping, "shadowserver", load_context(mapping, Path(file_name)), file_name)


def read_all(adapter: Any, content: str) -> tuple[list[Any], list[Any]]:
    """(records' notifications, row errors) of the content read through the adapter."""
    import io

    from connector.adapters.engine import RowRejected
    from connector.adapters.readers import RowError

    made, faults = [], []
    for row in adapter.rows(io.BytesIO(content.encode("utf-8"))):
        if isinstance(row, RowError):
            faults.append(row)
            continue
        try:
            made += adapter.notifications(row)
        except RowRejected as exc:
            faults.append((row.line, str(exc)))
    return made, faults


def test_a_row_lacking_trailing_empty_cells_is_read_and_counted() -> None:
    """The report type has no mapping: the fallback reads it. The short row was quarantined."""
    from connector.adapters.registry import read_warnings

    adapter = mapped_adapter("shadowserver", "2024-06-07-event4_microsoft_sinkhole-nl.csv")
    made, faults = read_all(adapter, "\n".join([SINKHOLE_HEADER, *SINKHOLE_ROWS]) + "\n")
    assert faults == []
    assert [n.ip for n in made] == ["192.0.2.21", "192.0.2.22", "192.0.2.23"]
    assert adapter.padded_rows == 1
    assert read_warnings(adapter) == [
        "1 row(s) lacked trailing fields (first at line 4): read with those cells empty"
    ]
    made, faults = read_all(adapter, "\n".join([SINKHOLE_HEADER, *SINKHOLE_ROWS[:2]]) + "\n")
    assert (len(made), adapter.padded_rows, read_warnings(adapter)) == (2, 0, [])  # per input


def test_every_shadowserver_mapping_reads_short_rows_and_other_csv_feeds_do_not() -> None:
    """Shadowserver mappings, the fallback among them, pad short rows; DIVD's leaked-credential
    CSV (personal data, one known layout) still quarantines them."""
    mappings = load_mappings()
    family = [m for m in mappings.values() if m.family == "shadowserver"]
    assert len(family) > 10
    assert {m.format: m.reader_options.pad_short_rows for m in family} == {m.format: True for m in family}
    assert mappings["divd-credentials"].reader_options.pad_short_rows is False


def test_a_short_last_line_without_a_line_break_is_a_cut_off_file_not_a_short_row() -> None:
    """Padding is safe for a row that ends where the producer ended it; the last line of a file
    that stops in mid-line is a truncated row whose last cell may be cut too."""
    adapter = mapped_adapter("shadowserver", "2024-06-07-event4_microsoft_sinkhole-nl.csv")
    cut = SINKHOLE_ROWS[0][: SINKHOLE_ROWS[0].index('"b68-zeroaccess') + 8]
    made, faults = read_all(adapter, "\n".join([SINKHOLE_HEADER, SINKHOLE_ROWS[1], cut]))
    assert [n.ip for n in made] == ["192.0.2.22"]
    [fault] = faults
    assert (fault.line, fault.reason) == (
        3,
        "25 fields where the header has 30, on the last line, which ends without a line break: "
        "the file looks cut off",
    )
    assert adapter.padded_rows == 0
    # The same short row ending with its line break is a short row, and padded.
    made, faults = read_all(adapter, "\n".join([SINKHOLE_HEADER, SINKHOLE_ROWS[1], cut]) + "\n")
    assert (len(made), faults, adapter.padded_rows) == (2, [], 1)


# --- 21: the fallback's notifications keep report types and protocols apart --------------------

# Two reports of types without a mapping, in Shadowserver's column layout (scan_ldap_tcp and
# scan_ldap_udp, shortened): the same LDAP server, port 389, on one day, over TCP and UDP (an
# amplifier). The UDP finding was merged into the TCP notification as a second observation.
LDAP_HEADER = '"timestamp","ip","protocol","port","hostname","tag","asn","geo","region","city","size"'


def ldap_report(tmp_path: Path, protocol: str) -> Path:
    path = tmp_path / f"2024-06-12-scan_ldap_{protocol}-nl.csv"
    path.write_text(
        f"{LDAP_HEADER}\n"
        f'"2024-06-12 08:04:41","192.0.2.40","{protocol}",389,"dc1.example.org","ldap-{protocol}",'
        '64500,"NL","UTRECHT","UTRECHT",3038\n',
        encoding="utf-8",
    )
    return path


def test_fallback_reports_of_two_types_are_two_notifications(
    tmp_path: Path, store: Store, config: Config
) -> None:
    tcp = ingest(store, config, "shadowserver", "shadowserver", ldap_report(tmp_path, "tcp"))
    udp = ingest(store, config, "shadowserver", "shadowserver", ldap_report(tmp_path, "udp"))
    assert (tcp.counts["new"], udp.counts["new"], udp.counts["updated"]) == (1, 1, 0)
    assert udp.counts["routed"] == 1
    adapter = mapped_adapter("shadowserver", "2024-06-12-scan_ldap_udp-nl.csv")
    made, _ = read_all(adapter, ldap_report(tmp_path, "udp").read_text(encoding="utf-8"))
    [n] = made
    assert n.classification.identifier == "scan_ldap_udp"
    assert n.natural_key()[3] == "192.0.2.40:389/udp"
    # Within one report, too, the same port over TCP and UDP is two findings.
    rows = [ldap_report(tmp_path, p).read_text(encoding="utf-8").splitlines()[1] for p in ("tcp", "udp")]
    made, _ = read_all(adapter, "\n".join([LDAP_HEADER, *rows]) + "\n")
    assert len({n.natural_key() for n in made}) == 2


@pytest.mark.parametrize(
    ("name", "report_type"),
    [
        ("2024-06-12-scan_ldap_udp-nl.csv", "scan_ldap_udp"),
        ("scan_ldap_udp.csv", "scan_ldap_udp"),
        ("event4_honeypot_brute_force-2024-06-12.csv", "event4_honeypot_brute_force"),
        ("2024-06-12-Blocklist-NL-geo.csv", "blocklist"),
    ],
)
def test_the_report_type_is_read_from_the_file_name(name: str, report_type: str) -> None:
    from connector.adapters.mapping import report_type_of

    assert report_type_of(name) == report_type


def test_a_fallback_file_whose_name_names_no_report_type_is_an_input_error(tmp_path: Path) -> None:
    from connector.adapters.engine import InputError, load_context
    from connector.adapters.mapping import family_mapping

    mapping, fallback = family_mapping(load_mappings(), "shadowserver", "2024-06-12.csv")
    assert fallback
    with pytest.raises(InputError, match="report type"):
        load_context(mapping, tmp_path / "2024-06-12.csv")


def test_a_refused_fallback_file_is_not_also_said_to_be_ingested(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """A new operator's review: the run said both "ingested through the columns common to all
    shadowserver reports" and "input not ingested" for the same file."""
    path = tmp_path / "2024-06-12.csv"
    shutil.copy(SHADOWSERVER / "scan_http.csv", path)
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert not summary.ok and summary.counts["read"] == 0
    assert [e for e in summary.input_errors if "gives no report type" in e]
    assert summary.warnings == []


def test_the_protocol_is_part_of_the_observable_where_a_port_is_given() -> None:
    """Backwards compatible: without a protocol, or with tcp, the observable (and every id
    derived from the natural key) is what it was; another protocol is written after the port."""
    from datetime import UTC, datetime

    from connector.notification import Classification, Notification

    def observable(ip: str, port: int | None, protocol: str | None) -> str:
        n = Notification(
            partner="shadowserver",
            feed="shadowserver-common",
            classification=Classification("other", "undetermined", "x"),
            observed_at=datetime(2024, 6, 12, tzinfo=UTC),
            tlp="amber",
            ip=ip,
            port=port,
            protocol=protocol,
        )
        return n.natural_key()[3]

    assert observable("192.0.2.40", 389, None) == "192.0.2.40:389"
    assert observable("192.0.2.40", 389, "tcp") == "192.0.2.40:389"
    assert observable("192.0.2.40", 389, "udp") == "192.0.2.40:389/udp"
    assert observable("2001:db8:10::40", 389, "udp") == "[2001:db8:10::40]:389/udp"
    assert observable("192.0.2.40", None, "udp") == "192.0.2.40"  # no port: the host itself


# --- 11: credentials in a report type without a mapping ----------------------------------------

# The layout of Shadowserver's event4_honeypot_brute_force report (no mapping here): the
# username and password an attacker tried on a honeypot. The fallback kept every column in
# evidence.unmapped, so the password was stored and served verbatim, to parents too.
BRUTE_FORCE_HEADER = (
    '"timestamp","protocol","src_ip","src_port","src_asn","src_geo","src_region","src_city",'
    '"src_hostname","src_naics","src_sector","device_vendor","device_type","device_model","dst_ip",'
    '"dst_port","dst_asn","dst_geo","dst_region","dst_city","dst_hostname","dst_naics","dst_sector",'
    '"public_source","infection","family","tag","application","version","event_id","service",'
    '"start_time","end_time","client_version","username","password","payload_url","payload_md5"'
)
PASSWORDS = ["Winter2024!secret", "hunter2-Example-Pw", "Qx9#unrouted-pass", "s3cr3t-fault-row"]


def brute_force_row(src_ip: str, password: str, timestamp: str = "2024-06-12 00:00:00") -> str:
    return (
        f'"{timestamp}","tcp","{src_ip}",30123,64510,"NL","UTRECHT","UTRECHT",,,,,,,'
        '"198.51.100.250",22,64501,"NL","UTRECHT","UTRECHT",,,,"CAPRICA-EU","ssh-brute-force",,,'
        '"ssh",,,,"2024-06-12T00:00:00.52Z","2024-06-12T00:00:01.71Z","SSH-2.0-Go",'
        f'"admin","{password}",,'
    )


def brute_force_report(tmp_path: Path) -> Path:
    path = tmp_path / "2024-06-12-event4_honeypot_brute_force-nl.csv"
    rows = [
        brute_force_row("192.0.2.20", PASSWORDS[0]),  # ziekenhuis-noord, whose parent is zcert
        brute_force_row("198.51.100.10", PASSWORDS[1]),  # ibd
        brute_force_row("203.0.113.5", PASSWORDS[2]),  # nobody's
        brute_force_row("192.0.2.21", PASSWORDS[3], timestamp="yesterday"),  # faulty
        brute_force_row("192.0.2.22", PASSWORDS[3]) + ",an extra cell",  # one field too many
    ]
    path.write_text("\n".join([BRUTE_FORCE_HEADER, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("column", "secret"),
    [
        ("password", True),
        ("Password", True),
        ("user_pass", True),
        ("passwd", True),
        ("PWD", True),
        ("api_key", True),
        ("apiKey", True),
        ("API-KEY", True),
        ("auth_token", True),
        ("client_secret", True),
        ("password_hash", True),
        ("ntlm_hash", True),
        ("private_key", True),
        ("credentials", True),
        ("session_id", True),
        ("bypass", False),
        ("passed_checks", False),
        ("set_cookie", False),
        ("payload_md5", False),
        ("key_size", False),
        ("sha256_fingerprint", False),
        ("www_authenticate", False),
        ("username", False),
        ("tag", False),
    ],
)
def test_the_fallback_knows_credential_columns_by_name(column: str, secret: bool) -> None:
    from connector.adapters.mapping import secret_column

    words = load_mappings()["shadowserver-common"].secret_columns
    assert secret_column(column, words) is secret


def test_a_fallback_report_with_a_password_column_keeps_no_password_and_is_personal_data(
    tmp_path: Path, store: Store, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_credentials import dump_text, found, log_text

    caplog.set_level("DEBUG")
    summary = ingest(store, config, "shadowserver", "shadowserver", brute_force_report(tmp_path))
    # Personal data: to the direct owner only (not zcert, ziekenhuis-noord's parent), and
    # discarded when nobody owns it.
    assert dict(summary.per_recipient) == {"ziekenhuis-noord": 1, "ibd": 1}
    assert (summary.counts["routed"], summary.counts["unrouted"], summary.counts["discarded"]) == (2, 1, 1)
    rows = quarantined(store, summary)
    assert [(r["line"], r["raw"] or "") for r in rows] == [(5, ""), (6, "")]  # no raw line kept
    assert rows[0]["reason"] == "observed_at: not usable (value withheld: personal data) (from timestamp)"
    # The passwords are nowhere: not in any table, quarantine reason or log line.
    assert found(PASSWORDS, dump_text(store)) == []
    assert found(PASSWORDS, " ".join(r["reason"] for r in rows)) == []
    assert found(PASSWORDS, log_text(caplog.records) + caplog.text) == []
    # What a recipient gets: the other columns, and which were withheld (by name).
    from tests.test_credentials import collection

    [sighting] = [o for o in collection(store, "ibd") if o["type"] == "sighting"]
    (extension,) = sighting["extensions"].values()
    assert extension["evidence"]["columns_withheld"] == ["password"]
    assert extension["evidence"]["unmapped"]["username"] == "admin"
    assert "password" not in extension["evidence"]["unmapped"]
    assert [o for o in collection(store, "zcert") if o["type"] == "sighting"] == []


def test_a_fallback_report_without_credential_columns_is_unchanged(tmp_path: Path) -> None:
    """No credential column: not personal data, every column kept (the sinkhole report)."""
    adapter = mapped_adapter("shadowserver", "2024-06-07-event4_microsoft_sinkhole-nl.csv")
    made, _ = read_all(adapter, "\n".join([SINKHOLE_HEADER, *SINKHOLE_ROWS]) + "\n")
    for n in made:
        assert (n.direct_owner_only, n.discard_unrouted) == (False, False)
        assert "columns_withheld" not in n.evidence
        assert n.evidence["unmapped"]["family"] == "zeroaccess"


def test_a_mapping_may_not_read_a_secret_column_unmasked(tmp_path: Path) -> None:
    import yaml

    from connector.adapters.mapping import DEFAULT_MAPPINGS_DIR, MappingError, load_mapping

    raw = yaml.safe_load((DEFAULT_MAPPINGS_DIR / "shadowserver" / "_common.yaml").read_text(encoding="utf-8"))
    raw["evidence"]["login_password"] = "login_password"
    path = tmp_path / "common.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(
        MappingError, match=r"evidence\.login_password: column 'login_password' holds credentials"
    ):
        load_mapping(path)


# --- 22: X-ARF source identifiers that are URLs or host:port -----------------------------------


def xarf_report(sample: str, **changes: Any) -> dict[str, Any]:
    report = json.loads((XARF_SAMPLES / sample).read_text(encoding="utf-8"))
    return {**report, **changes}


def xarf_notification(report: dict[str, Any]) -> Any:
    from connector.adapters.readers import RawRecord
    from connector.adapters.registry import AdapterContext
    from connector.adapters.xarf import XarfAdapter

    adapter = XarfAdapter(AdapterContext("nbip", "amber", "reports.json", Path("reports.json")))
    [n] = adapter.notifications(RawRecord(1, report, json.dumps(report)))
    return n


@pytest.mark.parametrize(
    ("source", "ip"),
    [
        # xarf-python's v3 converter copies Report.Source.URL of a v3 content report here.
        ("https://login-update.example.nl:8443/secure/", None),
        ("http://login-update.example.nl/secure/", None),
        ("login-update.example.nl:8080", None),
        ("192.0.2.50:8080", "192.0.2.50"),
        ("[2001:db8:10::7]:443", "2001:db8:10::7"),
        ("http://[2001:db8:10::7]:8080/x", "2001:db8:10::7"),
    ],
)
def test_a_content_report_whose_source_is_a_url_or_host_port_is_read(source: str, ip: str | None) -> None:
    """Valid by the schema (a string), and what converters produce: it was quarantined as
    an invalid IP address. The host routes it; the identifier as given, port and all, is kept."""
    url = "https://login-update.example.nl/secure/owa/"
    report = xarf_report("content-phishing.json", source_identifier=source, url=url)
    n = xarf_notification(report)
    assert (n.ip, n.hostname, n.url) == (ip, "login-update.example.nl", url)
    assert n.port is None  # the content's URL is the observable; the port stays evidence
    assert n.evidence["source_identifier"] == source


def test_a_source_port_is_the_service_port_only_where_the_category_says_so() -> None:
    # An open service: the port in the identifier is the service's (no service_port given).
    report = xarf_report("vulnerability-open-service.json", source_identifier="192.0.2.60:11211")
    del report["service_port"], report["source_port"]
    n = xarf_notification(report)
    assert (n.ip, n.port) == ("192.0.2.60", 11211)
    # A scanning host: the port is its client port, evidence only (as source_port is).
    n = xarf_notification(xarf_report("connection-port-scan.json", source_identifier="192.0.2.61:51234"))
    assert (n.ip, n.port, n.evidence["source_identifier"]) == ("192.0.2.61", None, "192.0.2.61:51234")
    # A plain address is kept as before: no extra evidence.
    n = xarf_notification(xarf_report("connection-port-scan.json"))
    assert "source_identifier" not in n.evidence


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("999.1.1.1:80", "ip: invalid IP address '999.1.1.1:80' (from source_identifier)"),
        ("login-update.example.nl:99999", "ip: invalid port '99999' (from source_identifier)"),
        (
            "https://login-update.example.nl:0/",
            "ip: invalid port in URL 'https://login-update.example.nl:0/' (from source_identifier)",
        ),
    ],
)
def test_a_malformed_source_identifier_is_still_quarantined(source: str, reason: str) -> None:
    from connector.adapters.engine import RowRejected

    with pytest.raises(RowRejected) as info:
        xarf_notification(xarf_report("connection-port-scan.json", source_identifier=source))
    assert str(info.value) == reason


def test_content_reports_with_url_sources_are_ingested_and_routed(
    tmp_path: Path, store: Store, config: Config
) -> None:
    reports = [
        xarf_report(
            "content-phishing.json",
            source_identifier=source,
            url="https://login-update.example.nl/secure/owa/",
            report_id=f"1a5ec293-0849-40a4-9eba-d5926262ff0{i}",
        )
        for i, source in enumerate(
            ["https://login-update.example.nl/secure/owa/", "login-update.example.nl:443"]
        )
    ]
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reports), encoding="utf-8")
    summary = ingest(store, config, "nbip", "xarf", path)
    assert (summary.counts["quarantined"], summary.counts["notifications"]) == (0, 2)
    assert dict(summary.per_recipient) == {"ibd": 1}  # one notification: the same URL, twice


# --- 23: DIVD's public case files -------------------------------------------------------------

# A public DIVD case file, unchanged (DIVD-NL/web-csirt, MIT: see its .license file). Like every
# one of them, its front matter has neither `id` nor `tlp`.
CASE_FILE = Path(__file__).parent / "data" / "divd" / "DIVD-2023-00033.md"


def case_scan(directory: Path, case: str = "DIVD-2023-00033") -> Path:
    """Three findings of the DIVD sample as that case's scan output (CVE-2023-3519)."""
    lines = (DIVD / "DIVD-2024-00012.nuclei.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    findings = [json.loads(line) for line in lines]
    for finding in findings:
        finding["template-id"] = "CVE-2023-3519"
        finding["info"]["classification"]["cve-id"] = ["cve-2023-3519"]
    path = directory / f"{case}.nuclei.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in findings), encoding="utf-8")
    return path


def front_matter(text: str) -> str:
    return text.split("---\n")[1]


@pytest.mark.parametrize("form", ["case file", "front matter as yaml", "explicit case file"])
def test_a_public_divd_case_file_gives_the_case_id_by_its_name_and_the_partner_tlp(
    tmp_path: Path, store: Store, config: Config, form: str
) -> None:
    scan = case_scan(tmp_path)
    context_file = None
    if form == "case file":
        shutil.copy(CASE_FILE, tmp_path)
    elif form == "front matter as yaml":
        text = front_matter(CASE_FILE.read_text(encoding="utf-8"))
        (tmp_path / "DIVD-2023-00033.yaml").write_text(text, encoding="utf-8")
    else:
        elsewhere = tmp_path / "cases"
        elsewhere.mkdir()
        context_file = Path(shutil.copy(CASE_FILE, elsewhere))
    summary = Ingestor(config, store, load_mappings()).run(
        "divd", "divd-nuclei", [scan], context_file=context_file
    )
    assert summary.input_errors == []
    assert (summary.counts["notifications"], summary.counts["quarantined"]) == (3, 0)

    from connector.adapters.engine import MappedAdapter, load_context

    mapping = load_mappings()["divd-nuclei"]
    context = load_context(mapping, scan, context_file)
    assert context.values["id"] == "DIVD-2023-00033"
    assert context.values["cves"] == ["CVE-2023-3519"]
    adapter = MappedAdapter(mapping, "divd", context, scan.name, default_tlp="green")
    made, faults = read_all_jsonl(adapter, scan)
    assert faults == []
    assert {(n.case_id, n.tlp, n.vulnerability) for n in made} == {
        ("DIVD-2023-00033", "green", "CVE-2023-3519")
    }


def read_all_jsonl(adapter: Any, path: Path) -> tuple[list[Any], list[Any]]:
    return read_all(adapter, path.read_text(encoding="utf-8"))


def test_a_case_file_that_names_its_id_and_tlp_still_decides(tmp_path: Path) -> None:
    """The shared sample names both: they win over the file name and the partner default."""
    from connector.adapters.engine import load_context

    scan = case_scan(tmp_path, "DIVD-2024-00099")
    sample = (DIVD / "DIVD-2024-00012.yaml").read_text(encoding="utf-8").replace("tlp: amber", "tlp: red")
    (tmp_path / "DIVD-2024-00099.yaml").write_text(sample, encoding="utf-8")
    context = load_context(load_mappings()["divd-nuclei"], scan)
    assert (context.values["id"], context.values["tlp"]) == ("DIVD-2024-00012", "red")


def test_a_case_file_without_an_id_whose_name_is_no_case_id_is_an_input_error(tmp_path: Path) -> None:
    from connector.adapters.engine import InputError, load_context

    scan = case_scan(tmp_path)
    case = tmp_path / "case.md"
    shutil.copy(CASE_FILE, case)
    with pytest.raises(InputError, match=r"case\.md: required key\(s\) missing: id \(not in the file"):
        load_context(load_mappings()["divd-nuclei"], scan, case)


# --- 25 (first part): MISP url values without a scheme ---------------------------------------

MISP_URL = "11111111-2222-4333-8444-555555555501"  # the sample's url attribute


@pytest.mark.parametrize(
    ("value", "url", "host", "ip"),
    [
        ("www.example.nl/login/owa", "http://www.example.nl/login/owa", "www.example.nl", None),
        (
            "Login.Example.NL:8443/secure?x=1",
            "http://login.example.nl:8443/secure?x=1",
            "login.example.nl",
            None,
        ),
        ("www.example.nl", "http://www.example.nl", "www.example.nl", None),
        ("192.0.2.30/admin/", "http://192.0.2.30/admin/", None, "192.0.2.30"),
        ("[2001:db8:10::30]:8080/x", "http://[2001:db8:10::30]:8080/x", None, "2001:db8:10::30"),
    ],
)
def test_a_misp_url_without_a_scheme_is_routed_by_its_host(
    value: str, url: str, host: str | None, ip: str | None
) -> None:
    """MISP takes `www.example.com/path` as a url; it was an unusable value (a fault). It is
    read as http:// (what a browser assumes), so that the url is a URI as STIX requires, and
    the value as given is kept beside it."""
    outcome = misp_outcome(misp_event(lambda body: attribute(body, MISP_URL).update(value=value)))
    assert outcome.faults == []
    [n] = [n for n in outcome.notifications if n.evidence["misp_attribute_uuid"] == MISP_URL]
    assert (n.url, n.hostname, n.ip) == (url, host, ip)
    assert n.evidence["misp_url_as_given"] == value


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "/relative/path",
        "mailto:abuse@example.nl",
        "javascript:alert(1)",
        "user:pw@www.example.nl/x",
    ],
)
def test_a_misp_url_that_is_neither_a_url_nor_host_and_path_is_still_a_fault(value: str) -> None:
    outcome = misp_outcome(misp_event(lambda body: attribute(body, MISP_URL).update(value=value)))
    assert outcome.faults == [
        f"MISP event 5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e01 attribute {MISP_URL} (url): "
        "not a usable url value (value withheld)"
    ]


def test_a_misp_url_with_a_scheme_is_unchanged() -> None:
    outcome = misp_outcome(misp_event())
    [n] = [n for n in outcome.notifications if n.evidence["misp_attribute_uuid"] == MISP_URL]
    assert n.url == "https://login-update.example.nl/secure/owa/"
    assert "misp_url_as_given" not in n.evidence


def test_a_schemeless_misp_url_is_delivered_to_the_owner_of_its_host(
    tmp_path: Path, store: Store, config: Config
) -> None:
    event = misp_event(lambda body: attribute(body, MISP_URL).update(value="www.example.nl/login/owa"))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event), encoding="utf-8")
    summary = ingest(store, config, "connect2trust", "misp-event", path)
    assert summary.counts["attributes_quarantined"] == 0
    assert summary.counts["notifications"] == len(SAMPLE_ATTRIBUTES)
    from tests.test_credentials import collection

    urls = [o["value"] for o in collection(store, "ibd") if o["type"] == "url"]
    assert "http://www.example.nl/login/owa" in urls
