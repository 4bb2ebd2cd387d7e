"""Routing: which recipients a notification concerns, by their constituencies, and why.

Network claims sit in radix trees (pytricia), one per address family, so a lookup costs the
prefix length, not the number of recipients: the most specific claim wins. A notification's
address may be a network (CIDR, a listed range): pytricia looks a prefix up as the most specific
claim covering all of it (a /24 inside a claimed /16 goes to the /16's owner; a /23 of which
two recipients hold one /24 each goes to neither by network). Without an address
claim, the AS number decides (the notification's own, or the configured IP-to-ASN table's),
then the host name: a domain claim covers the domain and its subdomains. The owner's parents
(link organisation, sector CERT) receive it too while each link has `deliver_to_parent`;
personal data (`direct_owner_only`) never goes beyond the owner. Policy then removes
recipients whose TLP ceiling is too low or who do not accept the category, and an opt-out of
the observable suppresses delivery altogether.

An IPv4-mapped IPv6 address (`::ffff:192.0.2.10`, how a dual-stack listener reports an IPv4
client) is the IPv4 host it maps: it is looked up, in every tree, as that IPv4 address (a
mapped network `::ffff:c000:200/120` as 192.0.2.0/24), so it reaches the IPv4 owner.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import pytricia

from connector.config import Config, RecipientConfig
from connector.normalize import canonical_domain, is_ip, mapped_ipv4_network, url_host
from connector.notification import Notification
from connector.tlp import allows


@dataclass(frozen=True, slots=True)
class Match:
    """The owner of an observable and the rule that made it so."""

    owner: str
    rule: str  # e.g. "network 192.0.2.0/25", "asn AS64500", "domain example.nl"


class RoutingKeys(TypedDict):
    """What a notification is routed by: the keyword arguments of `Router.match_keys`."""

    ip: str | None
    asn: int | None
    hostname: str | None


@dataclass(slots=True)
class Decision:
    match: Match | None
    recipients: list[str] = field(default_factory=list)
    suppressed_tlp: list[str] = field(default_factory=list)
    suppressed_category: list[str] = field(default_factory=list)
    opted_out: str | None = None  # the opt-out rule that suppressed delivery
    keys: RoutingKeys | None = None  # what the notification was routed by (Router.route)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a notification brings to the policy checks."""

    tlp: str
    taxonomy: str | None = None
    type: str | None = None
    direct_owner_only: bool = False


def load_asn_table(path: Path) -> tuple[pytricia.PyTricia, pytricia.PyTricia]:
    """pyasn's ipasn format: `prefix<TAB>asn` per line, `;` comments; (IPv4 tree, IPv6 tree)."""
    v4, v6 = pytricia.PyTricia(32), pytricia.PyTricia(128)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            try:
                prefix, asn = line.split()[:2]
                (v6 if ":" in prefix else v4)[prefix] = int(asn)
            except (ValueError, KeyError):
                raise ValueError(f"{path}:{number}: not 'prefix<TAB>asn': {line[:80]!r}") from None
    return v4, v6


class Router:
    def __init__(self, config: Config) -> None:
        self._v4 = pytricia.PyTricia(32)
        self._v6 = pytricia.PyTricia(128)
        self._asns: dict[int, str] = {}
        self._domains: dict[str, str] = {}
        self._recipients: dict[str, RecipientConfig] = {r.id: r for r in config.recipients}
        for r in config.recipients:
            for net in r.constituency.networks:
                (self._v4 if net.version == 4 else self._v6)[net.with_prefixlen] = r.id
            for asn in r.constituency.asns:
                self._asns[asn] = r.id
            for dom in r.constituency.domains:
                self._domains[dom] = r.id
        self._has_asn_table = config.asn_table is not None
        self._asn_v4, self._asn_v6 = (
            load_asn_table(config.asn_table)
            if config.asn_table
            else (pytricia.PyTricia(32), pytricia.PyTricia(128))
        )
        self._optout_v4 = pytricia.PyTricia(32)
        self._optout_v6 = pytricia.PyTricia(128)
        for net in config.opt_out.networks:
            (self._optout_v4 if net.version == 4 else self._optout_v6)[net.with_prefixlen] = True
        self._optout_domains = set(config.opt_out.domains)
        # Most deployments have no opt-outs: then a routed notification skips the look-ups.
        self._any_optout = bool(len(self._optout_v4) or len(self._optout_v6) or self._optout_domains)
        # decide() per (owner, policy): ingest asks the same few questions for every row.
        self._decided: dict[tuple[str, str, str | None, str | None, bool], tuple[list[str], ...]] = {}
        self._network_matches: dict[str, Match] = {}

    # --- claims ---------------------------------------------------------------------------

    def owner_of_ip(self, ip: str) -> Match | None:
        six, ip = family_key(ip)
        tree = self._v6 if six else self._v4
        try:
            prefix = tree.get_key(ip)
        except ValueError:
            return None
        if prefix is None:
            return None
        # One Match per claimed network (the trees do not change under a Router): ingest asks
        # for every row, and most rows fall in a few networks.
        found = self._network_matches.get(prefix)
        if found is None:
            found = self._network_matches[prefix] = Match(tree[prefix], f"network {prefix}")
        return found

    def lookup_owner(self, ip: str) -> str | None:
        """The hot path: owner id of an address (no rule text), for bulk routing."""
        six, ip = family_key(ip)
        try:
            return (self._v6 if six else self._v4).get(ip)  # type: ignore[no-any-return]
        except ValueError:
            return None

    def lookup_owners(self, ips: list[str]) -> list[str | None]:
        """Owners of many canonical addresses at once, in order (bulk lookups, `bench/routing.py`).

        The addresses must be valid (adapters canonicalise them before routing): skipping the
        per-call error handling and method dispatch is what makes this path fast.
        """
        get4, get6 = self._v4.get, self._v6.get
        # One family at a time through map (a C loop), then back into the callers' order.
        is_v6 = [":" in ip for ip in ips]
        if not any(is_v6):
            return list(map(get4, ips))
        # An IPv4-mapped address is looked up as its IPv4 address (rare: only IPv6 ones pay).
        keyed = list(map(family_key, ips))
        is_v6 = [six for six, _ in keyed]
        ips = [key for _, key in keyed]
        owners4 = iter(list(map(get4, [ip for ip, six in zip(ips, is_v6, strict=True) if not six])))
        owners6 = iter(list(map(get6, [ip for ip, six in zip(ips, is_v6, strict=True) if six])))
        return [next(owners6) if six else next(owners4) for six in is_v6]

    def asn_of_ip(self, ip: str) -> int | None:
        six, ip = family_key(ip)
        try:
            return (self._asn_v6 if six else self._asn_v4).get(ip)  # type: ignore[no-any-return]
        except ValueError:
            return None

    def owner_of_asn(self, asn: int) -> Match | None:
        owner = self._asns.get(asn)
        return Match(owner, f"asn AS{asn}") if owner else None

    def owner_of_domain(self, name: str) -> Match | None:
        for candidate in _suffixes(name):
            owner = self._domains.get(candidate)
            if owner is not None:
                return Match(owner, f"domain {candidate}")
        return None

    def match_keys(
        self, *, ip: str | None = None, asn: int | None = None, hostname: str | None = None
    ) -> Match | None:
        """The owner: by address first, then AS number (given or looked up), then host name."""
        if ip:
            found = self.owner_of_ip(ip)
            if found:
                return found
            if asn is None:
                asn = self.asn_of_ip(ip)
        if asn is not None:
            found = self.owner_of_asn(asn)
            if found:
                return found
        if hostname:
            return self.owner_of_domain(hostname)
        return None

    def opt_out_rule(self, ip: str | None, hostname: str | None) -> str | None:
        if ip:
            six, key = family_key(ip)
            tree = self._optout_v6 if six else self._optout_v4
            try:
                prefix = tree.get_key(key)
            except ValueError:
                prefix = None
            if prefix is not None:
                return f"opt-out network {prefix}"
        if hostname:
            for candidate in _suffixes(hostname):
                if candidate in self._optout_domains:
                    return f"opt-out domain {candidate}"
        return None

    # --- delivery ---------------------------------------------------------------------------

    def chain(self, owner: str, direct_only: bool = False) -> list[str]:
        """The owner followed by every ancestor that receives its notifications."""
        out = [owner]
        current = self._recipients[owner]
        while not direct_only and current.parent is not None and current.deliver_to_parent:
            parent = self._recipients[current.parent]
            if parent.id in out:  # config validation forbids cycles; never loop regardless
                break
            out.append(parent.id)
            current = parent
        return out

    def route(self, n: Notification) -> Decision:
        c = n.classification
        keys = routing_keys(n)  # once: the match, the opt-out and the store all use them
        found = self.match_keys(ip=keys["ip"], asn=keys["asn"], hostname=keys["hostname"])
        if found is None:
            decision = Decision(None)
        else:
            decision = self._decided_for(found, (n.tlp, c.taxonomy, c.type, n.direct_owner_only))
        decision.keys = keys
        if decision.recipients and self._any_optout:
            decision.opted_out = self.opt_out_rule(keys["ip"], keys["hostname"])
            if decision.opted_out:
                decision.recipients = []
        return decision

    def decide(self, found: Match | None, policy: Policy | str) -> Decision:
        """Who receives what the owner receives, within each recipient's policy."""
        if isinstance(policy, str):
            policy = Policy(policy)
        if found is None:
            return Decision(None)
        return self._decided_for(found, (policy.tlp, policy.taxonomy, policy.type, policy.direct_owner_only))

    def _decided_for(self, found: Match, policy: tuple[str, str | None, str | None, bool]) -> Decision:
        """decide() for (tlp, taxonomy, type, direct_owner_only), worked out once per owner and
        policy: the configuration does not change under a Router."""
        key = (found.owner, *policy)
        known = self._decided.get(key)
        if known is None:
            tlp, taxonomy, type_, direct_owner_only = policy
            recipients: list[str] = []
            suppressed_tlp: list[str] = []
            suppressed_category: list[str] = []
            for rid in self.chain(found.owner, direct_owner_only):
                recipient = self._recipients[rid]
                if not allows(recipient.max_tlp, tlp):
                    suppressed_tlp.append(rid)
                elif taxonomy and not recipient.accepts(taxonomy, type_ or ""):
                    suppressed_category.append(rid)
                else:
                    recipients.append(rid)
            known = self._decided[key] = (recipients, suppressed_tlp, suppressed_category)
        # Copies: a caller may change its decision's lists (an opt-out empties recipients).
        return Decision(found, known[0].copy(), known[1].copy(), known[2].copy())

    # --- explanation ------------------------------------------------------------------------

    def explain(
        self,
        *,
        ip: str | None = None,
        asn: int | None = None,
        hostname: str | None = None,
        policy: Policy | None = None,
    ) -> list[str]:
        """Every rule considered, in order, and what became of it: for `meldpunt route explain`."""
        policy = policy or Policy("clear")
        lines: list[str] = []
        found = self.match_keys(ip=ip, asn=asn, hostname=hostname)
        if ip:
            lines += self._explain_ip(ip, found)
            if asn is None and not self._has_asn_table:
                lines.append("asn table: none configured (asn_table)")
            elif asn is None:
                asn = self.asn_of_ip(ip)
                lines.append(f"asn table: {ip} -> AS{asn}" if asn else f"asn table: no entry for {ip}")
        if asn is not None:
            lines += self._explain_asn(asn, found)
        if hostname:
            lines += self._explain_domain(hostname, found)
        if found is None:
            lines.append("result: unrouted (no recipient claims this)")
            return lines
        decision = self.decide(found, policy)
        chain = self.chain(found.owner, policy.direct_owner_only)
        lines.append(f"owner: {found.owner} by {found.rule}")
        for rid in chain[1:]:
            lines.append(f"parent: {rid} receives it too (deliver_to_parent of the link below)")
        lines += _explain_parent_stop(self._recipients, chain, policy.direct_owner_only)
        for rid in decision.suppressed_tlp:
            lines.append(
                f"policy: {rid} not delivered: TLP {policy.tlp} above its max_tlp "
                f"{self._recipients[rid].max_tlp}"
            )
        for rid in decision.suppressed_category:
            lines.append(
                f"policy: {rid} not delivered: category {policy.taxonomy}/{policy.type} "
                "not among its categories"
            )
        opted = self.opt_out_rule(ip, hostname)
        if opted and decision.recipients:
            lines.append(f"policy: suppressed for everyone by {opted}")
            decision.recipients = []
        lines.append("result: delivered to " + (", ".join(decision.recipients) or "nobody"))
        return lines

    def _explain_asn(self, asn: int, found: Match | None) -> list[str]:
        owner = self._asns.get(asn)
        if owner is None:
            return [f"asn AS{asn}: claimed by nobody"]
        used = found is not None and found.rule == f"asn AS{asn}"
        return [
            f"asn AS{asn}: claimed by {owner}"
            + (" <- chosen" if used else " (not used: an address claim decided)")
        ]

    def _explain_domain(self, hostname: str, found: Match | None) -> list[str]:
        lines = []
        for candidate in _suffixes(hostname):
            owner = self._domains.get(candidate)
            if owner:
                used = found is not None and found.rule == f"domain {candidate}"
                lines.append(
                    f"domain {candidate}: claimed by {owner}"
                    + (" <- chosen" if used else " (not used: a stronger rule decided)")
                )
        return lines or [f"domain {hostname}: no claim on it or a parent domain"]

    def _explain_ip(self, ip: str, found: Match | None) -> list[str]:
        six, key = family_key(ip)
        tree = self._v6 if six else self._v4
        try:
            prefix = tree.get_key(key)
        except ValueError:
            return [f"address {ip}: not a valid IP address"]
        if prefix is None:
            return [f"address {ip}: no network claim contains it"]
        lines = []
        first = True
        while prefix is not None:
            owner = tree[prefix]
            note = (
                " <- chosen (most specific)"
                if first and found and found.rule == f"network {prefix}"
                else ("" if first else " (less specific: not used)")
            )
            lines.append(f"network {prefix}: claimed by {owner}{note}")
            prefix = tree.parent(prefix)
            first = False
        return lines


def family_key(ip: str) -> tuple[bool, str]:
    """(whether to look in the IPv6 trees, the key to look up) for an address or network.

    An IPv4-mapped IPv6 address or network (within ::ffff:0:0/96) is the IPv4 one it maps:
    looked up in the IPv6 tree it would match no IPv4 claim and go unrouted, or to the owner of
    some IPv6 range covering ::ffff:0:0/96 instead of the IPv4 address's owner.
    """
    if ":" not in ip:
        return False, ip
    if "ffff" in ip.lower():  # cheap test first: most IPv6 addresses are not mapped
        mapped = ipv4_of_mapped(ip)
        if mapped is not None:
            return False, mapped
    return True, ip


def ipv4_of_mapped(ip: str) -> str | None:
    """`::ffff:192.0.2.1` -> `192.0.2.1`, `::ffff:c000:200/120` -> `192.0.2.0/24`; else None."""
    try:
        network = mapped_ipv4_network(ipaddress.IPv6Network(ip, strict=False))
    except ValueError:
        return None
    if network is None:
        return None
    return str(network.network_address) if "/" not in ip else network.with_prefixlen


def _explain_parent_stop(
    recipients: dict[str, RecipientConfig], chain: list[str], direct_only: bool
) -> list[str]:
    last = recipients[chain[-1]]
    if last.parent is None:
        return []
    if direct_only:
        return [f"parent: {last.parent} not delivered: personal data goes to the direct owner only"]
    return [f"parent: {last.parent} not delivered: {last.id} has deliver_to_parent false"]


def _suffixes(name: str) -> list[str]:
    """`a.b.example.nl` -> [a.b.example.nl, b.example.nl, example.nl] (not the bare TLD)."""
    labels = name.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def routing_keys(n: Notification) -> RoutingKeys:
    """What a notification is routed by. The store keeps them with the notification (from
    Decision.keys), so that `route explain` routes it the same way."""
    return {"ip": n.ip, "asn": n.asn, "hostname": n.hostname or _host_of(n)}


def _host_of(n: Notification) -> str | None:
    """E-mail addresses route by their domain, URLs by their host (when not an address), in
    the form claims are kept in (lower-case punycode): a URL's host was taken as written, so a
    Unicode host name matched no claim."""
    if n.email:
        host: str | None = n.email.rpartition("@")[2]
    elif n.url:
        host = url_host(n.url)
        if host is None or is_ip(host):
            return None
    else:
        return None
    try:
        return canonical_domain(host) if host else None
    except ValueError:
        return host
