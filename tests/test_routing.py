"""Routing: longest-prefix match against a brute-force reference, hierarchy and TLP ceilings."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import Config, parse_config
from connector.notification import Classification, Notification
from connector.routing import Router


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
networks_v6 = st.builds(
    lambda addr, plen: str(ipaddress.ip_network((addr, plen), strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(16, 128),
)


addresses = st.lists(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
        st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))),
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
