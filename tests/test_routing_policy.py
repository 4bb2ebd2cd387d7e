"""Routing policy at scale: ASN table, public suffixes, categories, opt-out, personal data,
CSV constituencies, explanations, changes over time, and the full matrix of the example."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from connector.adapters.mapping import load_mappings
from connector.collections import recipient_collection_id
from connector.config import ConfigError, load_config, parse_config
from connector.ingest import Ingestor
from connector.notification import Classification, Notification
from connector.render.collection import CollectionView
from connector.routing import Policy, Router
from connector.store import Store
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, divd_scan_as
from tests.record_view import notification_rows
from tests.test_routing import leaked_credential, scan_http_row

VULN = Classification("vulnerable", "vulnerable-system", "CVE-2024-4577")
LEAK = Classification("information-content-security", "data-leak", "leaked-credential")


def example() -> dict:
    return yaml.safe_load(SAMPLE_CONFIG.read_text())


def note(
    *,
    ip: str | None = None,
    hostname: str | None = None,
    asn: int | None = None,
    tlp: str = "amber",
    classification: Classification = VULN,
    direct: bool = False,
) -> Notification:
    return Notification(
        partner="divd",
        feed="test",
        classification=classification,
        observed_at=datetime(2024, 6, 12, tzinfo=UTC),
        tlp=tlp,
        ip=ip,
        hostname=hostname,
        asn=asn,
        vulnerability="CVE-2024-4577",
        direct_owner_only=direct,
    )


# --- the full matrix of the example deployment ------------------------------------------------

MATRIX = [
    # (observable, classification, tlp, personal data?) -> expected recipients
    ({"ip": "192.0.2.10"}, VULN, "amber", False, ["zcert"]),
    ({"ip": "192.0.2.17"}, VULN, "amber", False, ["ziekenhuis-noord", "zcert"]),
    ({"ip": "192.0.2.17"}, LEAK, "amber", True, ["ziekenhuis-noord"]),
    ({"ip": "192.0.2.200"}, VULN, "amber", False, []),  # outside 192.0.2.0/25
    ({"ip": "2001:db8:10::1"}, VULN, "amber", False, ["zcert"]),
    ({"ip": "2001:db8:11::1"}, VULN, "amber", False, []),
    ({"ip": "198.51.100.30"}, VULN, "amber", False, ["ibd"]),
    ({"ip": "198.51.100.33"}, VULN, "amber", False, ["gemeente-voorbeeld"]),
    ({"ip": "198.51.100.33"}, VULN, "red", False, []),
    ({"ip": "198.51.100.33"}, VULN, "clear", False, ["gemeente-voorbeeld"]),
    ({"hostname": "vpn.example.nl"}, VULN, "amber", False, ["ibd"]),
    ({"hostname": "owa.example.org"}, LEAK, "amber", True, ["zcert"]),
    ({"hostname": "example.com"}, VULN, "amber", False, []),
    ({"asn": 64500}, VULN, "amber", False, ["zcert"]),
    ({"ip": "203.0.113.5", "asn": 64500}, VULN, "amber", False, ["zcert"]),
    ({"ip": "192.0.2.17", "asn": 64500}, VULN, "amber", False, ["ziekenhuis-noord", "zcert"]),
    ({"ip": "203.0.113.5"}, VULN, "amber", False, []),
]


@pytest.mark.parametrize("keys,classification,tlp,direct,expected", MATRIX)
def test_full_matrix_of_the_example(sample_config, keys, classification, tlp, direct, expected) -> None:
    decision = Router(sample_config).route(
        note(**keys, tlp=tlp, classification=classification, direct=direct)
    )
    assert decision.recipients == expected


def test_every_recipient_of_the_example_is_reachable(sample_config) -> None:
    reached = {rid for keys, c, tlp, d, expected in MATRIX for rid in expected}
    assert reached == {r.id for r in sample_config.recipients}


# --- ASN ---------------------------------------------------------------------------------------


def test_ip_to_asn_table_routes_addresses_without_a_network_claim(tmp_path: Path) -> None:
    table = tmp_path / "ipasn.dat"
    table.write_text("; pyasn ipasn format\n203.0.113.0/24\t64500\n2001:db8:99::/48\t64500\n")
    raw = example()
    raw["asn_table"] = "ipasn.dat"
    path = tmp_path / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw))
    router = Router(load_config(path))
    assert router.route(note(ip="203.0.113.7")).recipients == ["zcert"]
    assert router.route(note(ip="2001:db8:99::5")).recipients == ["zcert"]
    assert router.route(note(ip="198.51.100.30")).recipients == ["ibd"]  # a network claim still wins
    assert any("AS64500" in line for line in router.explain(ip="203.0.113.7"))


def test_a_malformed_asn_table_is_refused_with_its_line(tmp_path: Path) -> None:
    table = tmp_path / "ipasn.dat"
    table.write_text("203.0.113.0/24\t64500\nnot a line\n")
    raw = example()
    raw["asn_table"] = str(table)
    with pytest.raises(ValueError, match=r"ipasn.dat:2"):
        Router(parse_config(raw))


# --- domains ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["nl", "co.uk", "github.io", "gov.uk"])
def test_nobody_can_claim_a_public_suffix(suffix: str) -> None:
    raw = example()
    raw["recipients"][0]["constituency"]["domains"] = [suffix]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert any("recipients[0](zcert).constituency.domains" in p for p in caught.value.problems)


def test_a_registered_domain_under_a_multi_label_suffix_can_be_claimed() -> None:
    raw = example()
    raw["recipients"][0]["constituency"]["domains"] = ["example.co.uk"]
    router = Router(parse_config(raw))
    assert router.route(note(hostname="mail.example.co.uk")).recipients == ["zcert"]
    assert router.route(note(hostname="other.co.uk")).recipients == []


# --- policy --------------------------------------------------------------------------------------


def test_categories_a_recipient_does_not_accept_are_not_delivered() -> None:
    raw = example()
    raw["recipients"][0]["categories"] = ["fraud/phishing", "malicious-code"]
    raw["recipients"][1]["categories"] = ["vulnerable"]
    router = Router(parse_config(raw))
    decision = router.route(note(ip="192.0.2.17"))
    assert decision.recipients == ["ziekenhuis-noord"]
    assert decision.suppressed_category == ["zcert"]


def test_unknown_categories_are_configuration_errors() -> None:
    raw = example()
    raw["recipients"][0]["categories"] = ["vulnerable/no-such-type"]
    with pytest.raises(ConfigError, match="unknown RSIT type"):
        parse_config(raw)


def test_opt_out_suppresses_delivery_and_is_counted(tmp_path: Path) -> None:
    raw = example()
    raw["opt_out"] = {"networks": ["192.0.2.16/30"], "domains": ["mail33.example.nl"]}
    config = parse_config(raw)
    router = Router(config)
    assert router.route(note(ip="192.0.2.17")).opted_out == "opt-out network 192.0.2.16/30"
    assert router.route(note(ip="192.0.2.17")).recipients == []
    assert router.route(note(ip="192.0.2.21")).recipients == ["ziekenhuis-noord", "zcert"]
    assert router.route(note(ip="198.51.100.33", hostname="mail33.example.nl")).recipients == []
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    summary = Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    # 192.0.2.16, .17, .18, .19 and mail33 (198.51.100.33) are opted out.
    assert summary.counts["opted_out"] == 5
    assert summary.counts["routed"] + summary.counts["unrouted"] + summary.counts["opted_out"] == 26


def test_personal_data_never_reaches_a_parent(sample_config) -> None:
    router = Router(sample_config)
    lines = router.explain(
        ip="192.0.2.17",
        policy=Policy("amber", "information-content-security", "data-leak", direct_owner_only=True),
    )
    assert lines[-1] == "result: delivered to ziekenhuis-noord"
    assert any("direct owner only" in line for line in lines)


# --- constituencies from CSV ------------------------------------------------------------------


def write_config_with_csv(tmp_path: Path, csv_text: str) -> Path:
    (tmp_path / "recipients.csv").write_text(csv_text)
    raw = example()
    raw["recipient_files"] = ["recipients.csv"]
    path = tmp_path / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_recipients_from_csv_are_loaded_and_routed(tmp_path: Path) -> None:
    rows = "\n".join(
        f"org-{i},Org {i},organisation,zcert,true,amber,vulnerable,192.0.2.{64 + i}/32,,org{i}.example.nl"
        for i in range(20)
    )
    path = write_config_with_csv(
        tmp_path,
        "id,name,kind,parent,deliver_to_parent,max_tlp,categories,networks,asns,domains\n" + rows + "\n",
    )
    config = load_config(path)
    assert len(config.recipients) == 24
    router = Router(config)
    assert router.route(note(ip="192.0.2.70")).recipients == ["org-6", "zcert"]
    assert router.route(note(hostname="www.org7.example.nl")).recipients == ["org-7", "zcert"]


def test_every_bad_csv_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_config_with_csv(
        tmp_path,
        (
            "id,name,kind,parent,networks,domains\n"
            "ok-1,Fine,organisation,zcert,192.0.2.64/28,\n"
            "bad-net,Bad,organisation,,192.0.2.300/28,\n"
            "bad-kind,Bad,club,,,\n"
            "dup-prefix,Dup,organisation,,192.0.2.64/28,\n"
            "bad-parent,Bad,organisation,nobody,,\n"
        ),
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    assert "recipients.csv:3" in text and "192.0.2.300/28" in text
    assert "recipients.csv:4" in text and "kind" in text


def test_recipients_import_cli_validates_and_appends(tmp_path: Path) -> None:
    config_path = write_config_with_csv(tmp_path, "id,name,kind\n")
    incoming = tmp_path / "incoming.csv"
    incoming.write_text(
        "id,name,kind,parent,networks\nnew-org,New,organisation,ibd,198.51.100.64/28\n"
        "clash,Clash,organisation,,198.51.100.32/29\n"
    )
    cli = [sys.executable, "-m", "connector.cli", "recipients", "import", "--config", str(config_path)]
    failed = subprocess.run([*cli, str(incoming)], capture_output=True, text=True, check=False)
    assert failed.returncode == 1
    assert "198.51.100.32/29 is already claimed by recipient 'gemeente-voorbeeld'" in failed.stderr
    assert (tmp_path / "recipients.csv").read_text() == "id,name,kind\n"  # nothing written
    incoming.write_text("id,name,kind,parent,networks\nnew-org,New,organisation,ibd,198.51.100.64/28\n")
    dry = subprocess.run([*cli, "--dry-run", str(incoming)], capture_output=True, text=True, check=False)
    assert dry.returncode == 0 and "1 recipient(s) valid" in dry.stdout
    done = subprocess.run([*cli, str(incoming)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    config = load_config(config_path)
    assert Router(config).route(note(ip="198.51.100.70")).recipients == ["new-org", "ibd"]


@pytest.mark.parametrize("start", ["missing", "empty"])
def test_recipients_import_creates_the_recipient_file_the_configuration_names(
    tmp_path: Path, start: str
) -> None:
    """The README's steps as a new operator took them (4 December 2026): name the file in
    `recipient_files`, then import. Every command failed on the file not existing (or, created
    empty, on its missing header); import now writes it. Other commands still refuse a missing
    one. A row clashing with a configured recipient is named by its id, not a list position."""
    config_path = write_config_with_csv(tmp_path, "")
    if start == "missing":
        (tmp_path / "recipients.csv").unlink()
    incoming = tmp_path / "incoming.csv"
    incoming.write_text("id,name,kind,parent,networks\nnew-org,New,organisation,ibd,198.51.100.64/28\n")
    cli = [sys.executable, "-m", "connector.cli", "recipients", "import", "--config", str(config_path)]
    done = subprocess.run([*cli, str(incoming)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert Router(load_config(config_path)).route(note(ip="198.51.100.70")).recipients == ["new-org", "ibd"]
    again = subprocess.run([*cli, str(incoming)], capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert "incoming.csv: recipient 'new-org'.id: duplicate id 'new-org'" in again.stderr, again.stderr
    assert "configured recipient 'new-org'" in again.stderr and "recipients[" not in again.stderr
    (tmp_path / "recipients.csv").unlink()
    with pytest.raises(ConfigError, match=r"recipients\.csv: cannot read"):
        load_config(config_path)


# --- explain ---------------------------------------------------------------------------------------


def test_route_explain_cli_names_the_rule_and_the_rules_not_used(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "route",
            "explain",
            "192.0.2.17",
            "--config",
            str(SAMPLE_CONFIG),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "network 192.0.2.16/28: claimed by ziekenhuis-noord <- chosen (most specific)" in out
    assert "network 192.0.2.0/25: claimed by zcert (less specific: not used)" in out
    assert out.strip().endswith("result: delivered to ziekenhuis-noord, zcert")
    email = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "route",
            "explain",
            "CISO@Example.NL",
            "--config",
            str(SAMPLE_CONFIG),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "routes by its domain example.nl" in email and "delivered to ibd" in email


def test_explain_a_stored_notification(tmp_path: Path, sample_config) -> None:
    from connector.explain import explain_target

    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    sighting = next(
        m.stix_id
        for m in CollectionView(store).page(
            recipient_collection_id("gemeente-voorbeeld"), after=None, limit=100, types=("sighting",)
        )
    )
    lines = explain_target(Router(sample_config), sighting, Policy("amber"), store)
    assert "delivered at its last update to: gemeente-voorbeeld" in "\n".join(lines)
    assert lines[-1] == "result: delivered to gemeente-voorbeeld"


# --- routing changes over time ---------------------------------------------------------------------


def test_a_moved_network_routes_new_notifications_to_the_new_owner_only(
    tmp_path: Path, sample_config
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    before = {
        m.stix_id
        for m in CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=10_000)
    }
    raw = copy.deepcopy(sample_config.model_dump(mode="json"))
    raw["recipients"].append(
        {
            "id": "nieuw",
            "name": "Nieuw",
            "kind": "organisation",
            "constituency": {"networks": ["192.0.2.10/32"]},
        }
    )
    moved = parse_config(raw)
    from connector.collections import collection_rows

    store.sync_collections(collection_rows(moved))
    line = DIVD_SCAN.read_text().splitlines()[0].replace("2024-06-12T04:48:41", "2024-06-20T04:48:41")
    later = divd_scan_as(tmp_path, line + "\n")
    summary = Ingestor(moved, store, load_mappings()).run("divd", "divd-nuclei", [later])
    assert summary.per_recipient == {"nieuw": 1}
    after = {
        m.stix_id
        for m in CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=10_000)
    }
    assert after == before  # what Z-CERT had stays; the new day went to the new owner only
    assert CollectionView(store).count(recipient_collection_id("nieuw")) > 0


def test_explaining_a_stored_leaked_credential_names_the_direct_owner_only(tmp_path: Path) -> None:
    from connector.explain import explain_target

    raw = example()
    noord = next(r for r in raw["recipients"] if r["id"] == "ziekenhuis-noord")
    noord["constituency"]["domains"] = ["noord.example.org"]  # inside Z-CERT's example.org
    cfg = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    leaks = leaked_credential(tmp_path / "leak.credentials.csv", "arts@noord.example.org")
    summary = Ingestor(cfg, store, load_mappings()).run("divd", "divd-credentials", [leaks])
    assert dict(summary.per_recipient) == {"ziekenhuis-noord": 1}  # personal data: not to zcert
    [row] = notification_rows(store)
    lines = explain_target(Router(cfg), row["sighting_id"], Policy("amber"), store)
    assert lines[-1] == "result: delivered to ziekenhuis-noord"


@pytest.mark.parametrize("hostname,asn,owner", [("vpn.example.nl", "", "ibd"), ("", "64500", "zcert")])
def test_explaining_a_stored_notification_routed_by_host_name_or_as(
    tmp_path: Path, hostname: str, asn: str, owner: str
) -> None:
    from connector.explain import explain_target

    raw = example()
    raw["partners"].append({"id": "shadowserver", "name": "Shadowserver"})
    cfg = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    report = scan_http_row(tmp_path / "scan_http.csv", "203.0.113.5", hostname=hostname, asn=asn)
    summary = Ingestor(cfg, store, load_mappings()).run("shadowserver", "shadowserver", [report])
    assert dict(summary.per_recipient) == {owner: 1}
    [row] = notification_rows(store)
    lines = explain_target(Router(cfg), row["sighting_id"], Policy("amber"), store)
    assert lines[-1] == f"result: delivered to {owner}"


def test_a_url_with_a_unicode_host_routes_to_the_punycode_claim() -> None:
    """A URL's host was matched as written: `bücher.example` never met the claim on its
    canonical (punycode) form `xn--bcher-kva.example`."""
    raw = example()
    zcert = next(r for r in raw["recipients"] if r["id"] == "zcert")
    zcert["constituency"]["domains"] = [*zcert["constituency"].get("domains", []), "xn--bcher-kva.example"]
    router = Router(parse_config(raw))
    n = Notification(
        partner="divd",
        feed="test",
        classification=Classification("fraud", "phishing", "phishing-url"),
        observed_at=datetime(2024, 6, 12, tzinfo=UTC),
        tlp="amber",
        url="https://BÜCHER.example/login",
    )
    assert router.route(n).recipients == ["zcert"]
