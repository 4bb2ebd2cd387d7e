"""`meldpunt route explain`: what a target is, and the router's account of where it goes."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import or_, select

from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network, is_ip, url_host
from connector.routing import Policy, Router
from connector.store import Store
from connector.store import schema as t

_ASN = re.compile(r"^(?:AS)?(\d{1,10})$", re.IGNORECASE)
_KEY = re.compile(r"^[0-9a-f]{64}$")


def explain_target(router: Router, target: str, policy: Policy, store: Store | None = None) -> list[str]:
    """Lines of explanation for an IP, AS number, domain, e-mail address, URL or notification."""
    text = target.strip()
    if text.startswith("sighting--") or _KEY.match(text):
        return _explain_notification(router, text, store)
    if (address := _address(text)) is not None:  # a network: the claim covering all of it
        return router.explain(ip=address, policy=policy)
    if match := _ASN.match(text):
        return router.explain(asn=int(match.group(1)), policy=policy)
    if "://" in text:
        host = url_host(text)
        if host is None:
            raise ValueError(f"no host in URL {target!r}")
        if is_ip(host):
            return [f"url: routes by its host {host}", *router.explain(ip=canonical_ip(host), policy=policy)]
        return [
            f"url: routes by its host {host}",
            *router.explain(hostname=canonical_domain(host), policy=policy),
        ]
    if "@" in text:
        domain = canonical_domain(text.rpartition("@")[2])
        return [
            f"e-mail address: routes by its domain {domain}",
            *router.explain(hostname=domain, policy=policy),
        ]
    return router.explain(hostname=canonical_domain(text), policy=policy)


def _address(text: str) -> str | None:
    """The canonical address or network (CIDR) the text names; None when it names neither."""
    try:
        return canonical_ip_or_network(text.strip("[]"))
    except ValueError:
        return None


def _explain_notification(router: Router, ident: str, store: Store | None) -> list[str]:
    if store is None:
        raise ValueError("explaining a notification needs the store")
    n = t.notifications
    with store.engine.connect() as conn:
        row = (
            conn.execute(select(n).where(or_(n.c.key == ident, n.c.sighting_id == ident))).mappings().first()
        )
    if row is None:
        raise ValueError(f"no notification {ident!r} in the store")
    taxonomy, _, type_ = row["classification"].partition("/")
    lines = [
        f"notification {row['key']} ({row['sighting_id']})",
        f"  {row['partner']} {row['classification']} {row['identifier']} on {row['observable']}, "
        f"day {row['day']}, TLP {row['tlp']}",
        f"  delivered at its last update to: {', '.join(json.loads(row['recipients'])) or 'nobody'}",
    ]
    if row["direct_owner_only"] is not None:  # what it was routed by (stored since migration 0006)
        direct = bool(row["direct_owner_only"])
        policy = Policy(row["tlp"], taxonomy, type_, direct)
        given = [f"{name} {value}" for name, value in _routed_by(row) if value is not None]
        lines.append(f"  routed by: {', '.join(given) or 'nothing routable'}")
        if direct:
            lines.append("  personal data: to its direct owner only, never to the owner's parents")
        lines.append("routing today:")
        asn = row["routed_asn"]
        return lines + router.explain(
            ip=row["routed_ip"],
            asn=int(asn) if asn is not None else None,
            hostname=row["routed_hostname"],
            policy=policy,
        )
    lines += [
        "  stored before its routing keys were kept (migration 0006): routed again by its "
        "observable only, not by an AS number or host name, nor as personal data",
        "routing today:",
    ]
    policy = Policy(row["tlp"], taxonomy, type_)
    host = observable_host(row["observable"])
    if (address := _address(host)) is not None:
        return lines + router.explain(ip=address, policy=policy)
    return lines + router.explain(hostname=canonical_domain(host), policy=policy)


def _routed_by(row: Any) -> list[tuple[str, Any]]:
    asn = row["routed_asn"]
    return [
        ("address", row["routed_ip"]),
        ("AS", f"AS{asn}" if asn is not None else None),
        ("host name", row["routed_hostname"]),
    ]


def observable_host(observable: str) -> str:
    """The host of a stored observable: `192.0.2.1:443`, `[2001:db8::1]:443`, `example.nl`."""
    if "://" in observable:
        return url_host(observable) or observable
    if "@" in observable:
        return observable.rpartition("@")[2]
    if observable.startswith("["):
        return observable[1:].partition("]")[0]
    if observable.count(":") == 1:
        return observable.partition(":")[0]
    return observable
