"""Routing: longest-prefix match against a brute-force reference, hierarchy and TLP ceilings."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, ConfigError, parse_config
from connector.ingest import Ingestor
from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network
from connector.notification import Classification, Notification
from connector.render.collection import CollectionView
from connector.routing import Router
from connector.store import Store


def config(recipients: list[dict]) -> Config:
    return parse_config({"partners": [{"id": "divd", "name": "DIVD"}], "recipients": recipients})


def notification(ip: str | None = None, hostname: str | None = None, tlp: str = "amber") -> Notification:
    return Notification(
        partner="divd",
        feed="divd-nuclei",
        classification=Classification("vulnerable", "vulnerable-system", "CVE-2024-4577"),
        observed_at=datetime(2024, 6, 12, tzinfo=UTC),
        tlp=tlp,
        ip=ip,
        hostname=hostname,
        vulnerability="CVE-2024-4577",
    )


def brute_force_owner(recipients: list[dict], ip: str) -> str | None:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host a.b.c.d
    best: tuple[int, str] | None = None
    for r in recipients:
        for net in r["constituency"]["networks"]:
            network = ipaddress.ip_network(net)
            if (
                network.version == address.version
                and address in network
                and (best is None or network.prefixlen > best[0])
            ):
                best = (network.prefixlen, r["id"])
    return best[1] if best else None


def test_sample_config_routing(sample_config: Config) -> None:
    router = Router(sample_config)
    assert router.route(notification("192.0.2.10")).recipients == ["zcert"]
    # More specific hospital prefix wins, and its parent receives it too.
    assert router.route(notification("192.0.2.17")).recipients == ["ziekenhuis-noord", "zcert"]
    # deliver_to_parent false: the IBD does not receive the municipality's notifications.
    assert router.route(notification("198.51.100.33")).recipients == ["gemeente-voorbeeld"]
    assert router.route(notification("198.51.100.30")).recipients == ["ibd"]
    assert router.route(notification("2001:db8:10::1")).recipients == ["zcert"]
    assert router.route(notification("203.0.113.5")).match is None
    found = router.route(notification("192.0.2.17")).match
    assert found is not None and found.rule == "network 192.0.2.16/28"


def test_domain_claims_cover_subdomains_and_serve_as_fallback(sample_config: Config) -> None:
    router = Router(sample_config)
    decision = router.route(notification(None, hostname="vpn.example.nl"))
    assert decision.recipients == ["ibd"] and decision.match is not None
    assert decision.match.rule == "domain example.nl"
    assert router.route(notification(None, hostname="example.nl.evil.test")).match is None
    assert router.route(notification(None, hostname="notexample.nl")).match is None
    # An address claim beats a domain claim.
    assert router.route(notification("192.0.2.10", hostname="www.example.nl")).recipients == ["zcert"]


def test_tlp_ceiling_suppresses_per_recipient() -> None:
    cfg = config(
        [
            {
                "id": "sector",
                "name": "S",
                "kind": "sector-cert",
                "max_tlp": "green",
                "constituency": {"networks": ["10.0.0.0/8"]},
            },
            {
                "id": "org",
                "name": "O",
                "kind": "organisation",
                "parent": "sector",
                "max_tlp": "amber+strict",
                "constituency": {"networks": ["10.1.0.0/16"]},
            },
        ]
    )
    router = Router(cfg)
    decision = router.route(notification("10.1.2.3", tlp="amber"))
    assert decision.recipients == ["org"]
    assert decision.suppressed_tlp == ["sector"]
    assert router.route(notification("10.1.2.3", tlp="red")).recipients == []
    assert router.route(notification("10.1.2.3", tlp="clear")).recipients == ["org", "sector"]


def test_delivery_chain_stops_where_a_link_does_not_deliver_up() -> None:
    cfg = config(
        [
            {"id": "top", "name": "T", "kind": "sector-cert", "constituency": {"networks": ["10.0.0.0/8"]}},
            {
                "id": "mid",
                "name": "M",
                "kind": "link-organisation",
                "parent": "top",
                "deliver_to_parent": False,
                "constituency": {"networks": ["10.1.0.0/16"]},
            },
            {
                "id": "leaf",
                "name": "L",
                "kind": "organisation",
                "parent": "mid",
                "constituency": {"networks": ["10.1.1.0/24"]},
            },
        ]
    )
    assert Router(cfg).route(notification("10.1.1.1")).recipients == ["leaf", "mid"]
    assert Router(cfg).route(notification("10.2.0.1")).recipients == ["top"]


networks_v4 = st.builds(
    lambda addr, plen: str(ipaddress.ip_network((addr, plen), strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)


def _unmapped(text: str) -> bool:
    """Not within ::ffff:0:0/96: those route as the IPv4 address they map (tested on their own
    below), and configuration refuses claims on them."""
    return ipaddress.ip_network(text, strict=False)[0].ipv4_mapped is None if ":" in text else True


networks_v6 = st.builds(
    lambda addr, plen: str(ipaddress.ip_network((addr, plen), strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(16, 128),
).filter(lambda net: _unmapped(net) or ipaddress.ip_network(net).prefixlen < 96)


addresses = st.lists(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
        st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))).filter(_unmapped),
    ),
    max_size=40,
)
network_lists = st.lists(st.one_of(networks_v4, networks_v6), min_size=1, max_size=40, unique=True)


def one_recipient_per_network(nets: list[str]) -> list[dict]:
    return [
        {"id": f"r{i}", "name": f"R{i}", "kind": "organisation", "constituency": {"networks": [net]}}
        for i, net in enumerate(nets)
    ]


@settings(max_examples=60, deadline=None)
@given(nets=network_lists, probes=addresses)
def test_router_agrees_with_brute_force(nets: list[str], probes: list[str]) -> None:
    recipients = one_recipient_per_network(nets)
    router = Router(config(recipients))
    # Probe inside every network as well as at random.
    inside = [str(ipaddress.ip_network(n).network_address) for n in nets]
    for ip in probes + inside:
        found = router.route(notification(ip)).match
        assert (found.owner if found else None) == brute_force_owner(recipients, ip), ip


@settings(max_examples=30, deadline=None)
@given(nets=network_lists, probes=addresses)
def test_bulk_lookup_agrees_with_single_lookups(nets: list[str], probes: list[str]) -> None:
    router = Router(config(one_recipient_per_network(nets)))
    addresses = probes + [str(ipaddress.ip_network(n).network_address) for n in nets]
    assert router.lookup_owners(addresses) == [router.lookup_owner(ip) for ip in addresses]


# --- IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) ------------------------------------------------


@pytest.mark.parametrize(
    "address,owners",
    [
        ("::ffff:192.0.2.10", ["zcert"]),
        ("::ffff:c000:211", ["ziekenhuis-noord", "zcert"]),  # 192.0.2.17, as Python < 3.13 prints it
        ("::ffff:198.51.100.33", ["gemeente-voorbeeld"]),
        ("::ffff:c000:210/124", ["ziekenhuis-noord", "zcert"]),  # the network 192.0.2.16/28
        ("::ffff:203.0.113.5", []),
    ],
)
def test_an_ipv4_mapped_ipv6_address_routes_by_its_ipv4_address(
    sample_config: Config, address: str, owners: list[str]
) -> None:
    # A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d: it is the IPv4 host,
    # and must reach the owner of that IPv4 address, not be left unrouted.
    router = Router(sample_config)
    ip = canonical_ip_or_network(address)
    assert router.route(notification(ip)).recipients == owners
    owner = owners[0] if owners else None
    assert router.lookup_owner(ip) == owner
    assert router.lookup_owners([ip, "2001:db8:10::1"]) == [owner, "zcert"]


def scan_http_row(path: Path, ip: str, *, port: int = 443, hostname: str = "", asn: str = "") -> Path:
    """A one-row Shadowserver scan_http report: an address, and what else routes it."""
    host = f'"{hostname}"' if hostname else ""
    path.write_text(
        '"timestamp","ip","protocol","port","hostname","tag","asn"\n'
        f'"2024-06-12 01:00:00","{ip}","tcp",{port},{host},"http",{asn}\n',
        encoding="utf-8",
    )
    return path


def leaked_credential(path: Path, username: str) -> Path:
    """A one-row DIVD leaked-credentials file for `username` (an e-mail address)."""
    path.write_text(
        "username,password,url,ts_found,ts_leaked,has_name,has_dob,has_addr,has_phone,has_cc,"
        "has_bankacc,has_ssn,has_ip,extra_data\n"
        f"{username},Zq7!wxyz0123,https://portal.example/,2024-09-17T10:00:00Z,2024-08-26,0,0,0,0,0,0,0,0,\n",
        encoding="utf-8",
    )
    return path


def test_an_ipv4_mapped_address_is_delivered_end_to_end(tmp_path: Path, sample_config: Config) -> None:
    raw = sample_config.model_dump(mode="json")
    raw["partners"].append({"id": "shadowserver", "name": "Shadowserver"})
    cfg = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.sync_collections(collection_rows(cfg))
    report = scan_http_row(tmp_path / "scan_http.csv", "::ffff:192.0.2.17", port=80)
    summary = Ingestor(cfg, store, load_mappings()).run("shadowserver", "shadowserver", [report])
    assert summary.counts["routed"] == 1 and summary.counts["unrouted"] == 0
    assert dict(summary.per_recipient) == {"ziekenhuis-noord": 1, "zcert": 1}
    for rid in ("ziekenhuis-noord", "zcert"):
        assert CollectionView(store).count(recipient_collection_id(rid)) > 0
    for rid in ("ibd", "gemeente-voorbeeld"):
        assert CollectionView(store).count(recipient_collection_id(rid)) == 0


def test_an_opt_out_covers_the_ipv4_mapped_form_of_its_addresses(sample_config: Config) -> None:
    raw = sample_config.model_dump(mode="json")
    raw["opt_out"] = {"networks": ["192.0.2.16/28"]}
    decision = Router(parse_config(raw)).route(notification(canonical_ip("::ffff:192.0.2.17")))
    assert decision.recipients == [] and decision.opted_out == "opt-out network 192.0.2.16/28"


def test_a_claim_on_ipv4_mapped_ipv6_addresses_is_refused() -> None:
    # The addresses are routed by their IPv4 form: claim that. Accepting both would let two
    # recipients claim the same addresses (192.0.2.0/24 and ::ffff:192.0.2.0/120) unnoticed.
    with pytest.raises(ConfigError, match="IPv4-mapped"):
        config(
            [
                {"id": "x", "name": "X", "kind": "organisation"}
                | {"constituency": {"networks": ["::ffff:192.0.2.0/120"]}},
            ]
        )


# --- internationalised domain names -------------------------------------------------------------


IDN_CONFIG = {
    "partners": [{"id": "divd", "name": "DIVD"}],
    "recipients": [
        # Two different registered domains: strasse.de and straße.de (xn--strae-oqa.de, IDNA 2008,
        # as DENIC has registered it since 2010).
        {"id": "strasse", "name": "S", "kind": "organisation", "constituency": {"domains": ["strasse.de"]}},
        {"id": "strasze", "name": "SZ", "kind": "organisation"}
        | {"constituency": {"domains": ["xn--strae-oqa.de"]}},
        {"id": "buecher", "name": "B", "kind": "organisation"}
        | {"constituency": {"domains": ["xn--bcher-kva.example"]}},
    ],
}


@pytest.mark.parametrize(
    "host,owner",
    [
        ("www.straße.de", "strasze"),
        ("WWW.STRASSE.DE.", "strasse"),
        ("www.xn--strae-oqa.de", "strasze"),
        ("BÜCHER.example.", "buecher"),
        ("mail.bücher.example", "buecher"),
    ],
)
def test_an_idn_host_name_goes_to_the_owner_of_that_domain(host: str, owner: str) -> None:
    # IDNA 2003 (Python's "idna" codec) maps ß to ss: www.straße.de would become www.strasse.de
    # and go to another organisation. Registries use IDNA 2008, which keeps ß.
    router = Router(parse_config(IDN_CONFIG))
    decision = router.route(notification(None, hostname=canonical_domain(host)))
    assert decision.recipients == [owner]


def test_a_leaked_credential_at_an_idn_domain_reaches_only_its_owner(tmp_path: Path) -> None:
    cfg = parse_config(IDN_CONFIG)
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.sync_collections(collection_rows(cfg))
    leaks = leaked_credential(tmp_path / "leak.credentials.csv", "Jan@Straße.DE")
    summary = Ingestor(cfg, store, load_mappings()).run("divd", "divd-credentials", [leaks])
    assert dict(summary.per_recipient) == {"strasze": 1}
    assert CollectionView(store).count(recipient_collection_id("strasse")) == 0
