"""Canonical forms of observable values, so `Example.NL` and `example.nl` are one object."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import idna

# An IPv4 address already in canonical form (no leading zeros, each octet at most 255): the
# common case in every feed, answered without building an ipaddress object.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# Letters, digits, hyphens (and the underscore DNS allows in practice), 1 to 63 characters.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_ASCII_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address's RFC 5952 text; an IPv4-mapped one in its dotted form (`::ffff:192.0.2.10`,
    section 5) on every Python: str() gives `::ffff:c000:20a` before 3.13 and the dotted form
    from 3.13 (gh-87799), and this text is part of SCO ids and natural keys."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def mapped_ipv4_network(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 network an IPv4-mapped IPv6 network (within ::ffff:0:0/96) stands for, as
    routing looks it up: `::ffff:c000:200/120` -> 192.0.2.0/24. None for any other network."""
    mapped = network.network_address.ipv4_mapped
    if mapped is None or network.prefixlen < 96:
        return None
    return ipaddress.IPv4Network((mapped, network.prefixlen - 96))


def _unscoped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address without its IPv6 zone (RFC 4007: `fe80::1%eth0`; `%25eth0` in a URL).

    A zone names an interface of the host that wrote the address down (a scanner's `eth0`):
    it means nothing to anybody else, a STIX ipv6-addr value cannot hold it, and the address
    with it matched no recipient's claim. The address alone is what the report is about, so
    it is kept and routed; the zone is dropped, not the row (a global address with a zone is
    still that address; a link-local one is routed as such: nobody claims fe80::/10)."""
    if getattr(address, "scope_id", None) is None:
        return address
    return ipaddress.IPv6Address(int(address))


def canonical_ip(value: str) -> str:
    """Canonical text of an IPv4/IPv6 address, without an IPv6 zone (_unscoped); raises
    ValueError naming the bad value."""
    text = value.strip()
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    if not text:
        raise ValueError("empty IP address")
    try:
        return _address_text(_unscoped(ipaddress.ip_address(text)))
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


_NETWORK = re.compile(r"^[0-9A-Fa-f.:]+(%[^%/]+)?/[0-9]{1,3}$")


def canonical_ip_or_network(value: str) -> str:
    """An address (canonical_ip), or a network in CIDR notation as `address/length` with the
    canonical address; a /32 (IPv6 /128) is its address. Strict: a network with host bits set
    (`192.0.2.1/24`) is an error naming the network it may have meant. An IPv6 zone is dropped
    (_unscoped)."""
    text = value.strip()
    if "/" not in text:
        return canonical_ip(text)
    if not _NETWORK.match(text):
        raise ValueError(f"invalid IP network {value!r} (expected address/prefix-length)")
    address, _, length = text.partition("/")
    try:
        text = f"{_address_text(_unscoped(ipaddress.ip_address(address)))}/{length}"
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP network {value!r}") from None
    if network.network_address != ipaddress.ip_address(text.partition("/")[0]):
        raise ValueError(f"IP network {value!r} has host bits set (the network is {network.with_prefixlen})")
    if network.prefixlen == network.max_prefixlen:
        return _address_text(network.network_address)
    return f"{_address_text(network.network_address)}/{network.prefixlen}"


def canonical_domain(value: str) -> str:
    """Lower-case ASCII (punycode) form of a host name, without a trailing dot.

    Non-ASCII names are encoded by IDNA 2008 (UTS #46, non-transitional), as registries and
    browsers do: Python's own "idna" codec is IDNA 2003, which maps ß to ss (and drops ZWJ/ZWNJ,
    final sigma to sigma), so `straße.de` became `strasse.de`, another registered domain, and
    its notifications (leaked credentials among them) went to that domain's owner. A name IDNA
    2008 refuses (a symbol, an underscore label) is encoded as before.
    """
    text = value.strip().rstrip(".").lower()
    if len(text) <= 253 and _ASCII_NAME.fullmatch(text):
        return text  # ASCII labels: what the IDNA codec and the label check below give it back as
    if not text:
        raise ValueError("empty domain name")
    try:
        text = _idna_ascii(text)
    except UnicodeError:
        raise ValueError(f"invalid domain name {value!r}") from None
    if len(text) > 253 or not all(_LABEL.match(label) for label in text.split(".")):
        raise ValueError(f"invalid domain name {value!r}")
    return text


def _idna_ascii(text: str) -> str:
    if text.isascii():
        return text.encode("idna").decode("ascii")
    try:
        return idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        # Only names IDNA 2008 has no form for: IDNA 2003 cannot map them onto another's.
        return text.encode("idna").decode("ascii")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return False
    return True


def url_host(value: str) -> str | None:
    """Host part of a URL (or a bare host), lower-cased, an IPv6 literal without its zone
    (`[fe80::1%25eth0]`: see _unscoped); None when there is none."""
    text = value.strip()
    if not text:
        return None
    parts = urlsplit(text if "://" in text else f"//{text}")
    if not parts.hostname:
        return None
    host = parts.hostname.lower()
    return _without_zone(host) if "%" in host else host


def _without_zone(host: str) -> str:
    """An IPv6 literal host without its zone (as written in a URL: `%25eth0`); any other host
    as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return _address_text(_unscoped(address)) if address.version == 6 else host
