"""Routing: which recipients a notification concerns, by their constituencies.

Network claims sit in radix trees (pytricia), one per address family, so a lookup costs the
prefix length, not the number of recipients. The most specific claim wins; the owner's parents
(link organisation, sector CERT) receive it too while each link in the chain has
`deliver_to_parent` set. A domain claim covers the domain and all its subdomains; it is used
for notifications without an address, or whose address nobody claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytricia

from connector.config import Config, RecipientConfig
from connector.notification import Notification
from connector.tlp import allows


@dataclass(frozen=True, slots=True)
class Match:
    """The owner of an observable and the rule that made it so."""

    owner: str
    rule: str  # e.g. "network 192.0.2.0/25", "domain example.nl"


@dataclass(slots=True)
class Decision:
    match: Match | None
    recipients: list[str] = field(default_factory=list)
    suppressed_tlp: list[str] = field(default_factory=list)


class Router:
    def __init__(self, config: Config) -> None:
        self._v4 = pytricia.PyTricia(32)
        self._v6 = pytricia.PyTricia(128)
        self._asns: dict[int, str] = {}
        self._domains: dict[str, str] = {}
        self._recipients: dict[str, RecipientConfig] = {r.id: r for r in config.recipients}
        for r in config.recipients:
            for net in r.constituency.networks:
                tree = self._v4 if net.version == 4 else self._v6
                tree[net.with_prefixlen] = r.id
            for asn in r.constituency.asns:
                self._asns[asn] = r.id
            for dom in r.constituency.domains:
                self._domains[dom] = r.id

    def owner_of_ip(self, ip: str) -> Match | None:
        tree = self._v6 if ":" in ip else self._v4
        try:
            prefix = tree.get_key(ip)
        except ValueError:
            return None
        if prefix is None:
            return None
        return Match(tree[prefix], f"network {prefix}")

    def owner_of_domain(self, name: str) -> Match | None:
        labels = name.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            owner = self._domains.get(candidate)
            if owner is not None:
                return Match(owner, f"domain {candidate}")
        return None

    def owner_of_asn(self, asn: int) -> Match | None:
        owner = self._asns.get(asn)
        return Match(owner, f"asn AS{asn}") if owner else None

    def match(self, n: Notification) -> Match | None:
        return self.match_keys(ip=n.ip, asn=n.asn, hostname=n.hostname)

    def match_keys(
        self, *, ip: str | None = None, asn: int | None = None, hostname: str | None = None
    ) -> Match | None:
        """The owner: by address first, then AS number, then host name."""
        if ip:
            found = self.owner_of_ip(ip)
            if found:
                return found
        if asn is not None:
            found = self.owner_of_asn(asn)
            if found:
                return found
        if hostname:
            return self.owner_of_domain(hostname)
        return None

    def chain(self, owner: str) -> list[str]:
        """The owner followed by every ancestor that receives its notifications."""
        out = [owner]
        current = self._recipients[owner]
        while current.parent is not None and current.deliver_to_parent:
            parent = self._recipients[current.parent]
            if parent.id in out:  # config validation forbids cycles; never loop regardless
                break
            out.append(parent.id)
            current = parent
        return out

    def route(self, n: Notification) -> Decision:
        return self.decide(self.match(n), n.tlp)

    def decide(self, found: Match | None, tlp: str) -> Decision:
        """Who receives what the owner receives, within each recipient's TLP ceiling."""
        if found is None:
            return Decision(None)
        decision = Decision(found)
        for rid in self.chain(found.owner):
            if allows(self._recipients[rid].max_tlp, tlp):
                decision.recipients.append(rid)
            else:
                decision.suppressed_tlp.append(rid)
        return decision
