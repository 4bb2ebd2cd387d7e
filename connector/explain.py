"""`meldpunt route explain`: what a target is, and the router's account of where it goes."""

from __future__ import annotations

import re
from typing import Any

from connector.normalize import canonical_domain, canonical_ip, canonical_ip_or_network, is_ip, url_host
from connector.render.stix import notification_of, notifications_owning
from connector.routing import Policy, Router, RoutingKeys, routing_keys
from connector.stix.build import notification_ids
from connector.store import Store
from connector.store.records import Kind, NotificationRecord

_ASN = re.compile(r"^(?:AS)?(\d{1,10})$", re.IGNORECASE)
_OWN_ID = re.compile(r"^(sighting|observed-data|indicator)--[0-9a-f-]{36}$")


def explain_target(router: Router, target: str, policy: Policy, store: Store | None = None) -> list[str]:
    """Lines of explanation for an IP, AS number, domain, e-mail address, URL or notification."""
    text = target.strip()
    if _OWN_ID.match(text):
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
    found = _notification_owning(store, ident)
    if found is None:
        raise ValueError(f"no notification {ident!r} in the store")
    record, kind, recipients = found
    n = notification_of(record, kind, {})
    lines = [
        f"notification {record.pk} ({notification_ids(n.natural_key(), n.legacy_ids)[0]})",
        f"  {kind.partner} {kind.classification} {record.identifier} on {record.observable}, "
        f"day {n.day}, TLP {kind.tlp}",
        f"  delivered at its last update to: {', '.join(recipients) or 'nobody'}",
    ]
    policy = Policy(kind.tlp, kind.taxonomy, kind.type, kind.direct_owner_only)
    keys = routing_keys(n)
    given = [f"{name} {value}" for name, value in _routed_by(keys) if value is not None]
    lines.append(f"  routed by: {', '.join(given) or 'nothing routable'}")
    if kind.direct_owner_only:
        lines.append("  personal data: to its direct owner only, never to the owner's parents")
    lines.append("routing today:")
    return lines + router.explain(ip=keys["ip"], asn=keys["asn"], hostname=keys["hostname"], policy=policy)


def _notification_owning(store: Store, ident: str) -> tuple[NotificationRecord, Kind, list[str]] | None:
    """The notification owning this object id (its sighting, observed-data or indicator), with
    its latest version's kind and recipients."""
    owners = store.collection_owners()
    with store.reading() as reader:
        for record in notifications_owning(reader, ident):
            latest = reader.versions([record.latest])[record.latest]
            kind = reader.kinds([latest.kind_of(record)])[latest.kind_of(record)]
            return record, kind, [owners[number] for number in latest.recipients]
    return None


def _routed_by(keys: RoutingKeys) -> list[tuple[str, Any]]:
    asn = keys["asn"]
    return [
        ("address", keys["ip"]),
        ("AS", f"AS{asn}" if asn is not None else None),
        ("host name", keys["hostname"]),
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
