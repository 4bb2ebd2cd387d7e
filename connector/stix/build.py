"""Notification -> STIX 2.1 objects, as plain dicts.

The model (see docs/stix-model.md): a `sighting` of a `vulnerability`, with `observed_data_refs`
to an `observed-data` holding the host's SCOs (address, host name, network-traffic for the
port) and `where_sighted_refs` to the partner's identity. Notification metadata that STIX has
no property for sits in the project's property extension on the sighting.

Objects are built as dicts, not stix2 classes: the library's validation costs far more than
the ingest budget allows at millions of rows a day; instead, tests run every object produced
from the samples through stix2-validator and stix2.parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from connector.notification import Notification
from connector.stix.ids import digest, located_id, project_id, sco_id, timestamp
from connector.tlp import TLP2_MARKING_IDS, marking_definition

# Reference objects (identities, the extension definition, vulnerabilities) never change, so
# they carry a fixed creation time and a single version.
REFERENCE_TIME = "2024-01-01T00:00:00.000Z"
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")

CLEARINGHOUSE_IDENTITY_ID = project_id("identity", "clearinghouse")
EXTENSION_ID = project_id("extension-definition", "notification", "1.0")

EXTENSION_SCHEMA = (
    "Security Meldpunt notification extension, version 1.0 (property-extension on sighting). "
    "Properties: partner (string, partner id), feed (string, mapping/format name), "
    "classification (object: taxonomy, type, identifier; RSIT taxonomy), case_id (string), "
    "severity (string), evidence (object: feed-specific fields kept from the input). "
    "Documented in docs/stix-model.md of the meldpunt-connector project."
)


@lru_cache(maxsize=4096)
def _reference_id(stix_type: str, name: str) -> str:
    """Ids of shared reference objects: a few names, asked for once per notification."""
    return project_id(stix_type, name)


def clearinghouse_identity() -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": CLEARINGHOUSE_IDENTITY_ID,
        "created": REFERENCE_TIME,
        "modified": REFERENCE_TIME,
        "name": "Security Meldpunt",
        "identity_class": "organization",
        "sectors": ["government-national"],
        "description": "National clearinghouse for security notifications.",
    }


def extension_definition() -> dict[str, Any]:
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": EXTENSION_ID,
        "created_by_ref": CLEARINGHOUSE_IDENTITY_ID,
        "created": REFERENCE_TIME,
        "modified": REFERENCE_TIME,
        "name": "Security Meldpunt notification",
        "description": "Clearinghouse metadata of a notification: source feed, RSIT "
        "classification, case, severity and feed-specific evidence.",
        "schema": EXTENSION_SCHEMA,
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }


@lru_cache(maxsize=1024)
def partner_identity_id(partner: str) -> str:
    return project_id("identity", "partner", partner)


def partner_identity(partner: str, name: str) -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": partner_identity_id(partner),
        "created_by_ref": CLEARINGHOUSE_IDENTITY_ID,
        "created": REFERENCE_TIME,
        "modified": REFERENCE_TIME,
        "name": name,
        "identity_class": "organization",
    }


def vulnerability(name: str) -> dict[str, Any]:
    """A CVE, or a named weakness without one (`open-rdp`, `ssl-poodle`): shared reference objects."""
    out = {
        "type": "vulnerability",
        "spec_version": "2.1",
        "id": _reference_id("vulnerability", name),
        "created_by_ref": CLEARINGHOUSE_IDENTITY_ID,
        "created": REFERENCE_TIME,
        "modified": REFERENCE_TIME,
        "name": name,
    }
    if _CVE.match(name):
        # No URL: the validator rightly asks for a hash with one, and the id is what tools use.
        out["external_references"] = [{"source_name": "cve", "external_id": name}]
    return out


def malware_family(name: str) -> dict[str, Any]:
    return {
        "type": "malware",
        "spec_version": "2.1",
        "id": _reference_id("malware", name.lower()),
        "created_by_ref": CLEARINGHOUSE_IDENTITY_ID,
        "created": REFERENCE_TIME,
        "modified": REFERENCE_TIME,
        "name": name,
        "is_family": True,
    }


# Indicator types by RSIT taxonomy, for classifications sighted as indicators.
INDICATOR_TYPES = {
    "fraud": ["malicious-activity"],
    "abusive-content": ["malicious-activity"],
    "malicious-code": ["malicious-activity"],
    "intrusions": ["compromised"],
    "information-content-security": ["compromised"],
    "intrusion-attempts": ["anomalous-activity"],
    "information-gathering": ["anomalous-activity"],
    "availability": ["anomalous-activity"],
}


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pattern_of(n: Notification) -> str:
    """A STIX pattern matching the notification's observable."""
    if n.url:
        return f"[url:value = {_quoted(n.url)}]"
    if n.email:
        return f"[email-addr:value = {_quoted(n.email)}]"
    if n.ip:
        # A network (CIDR, a listed range) matches every address in it: ISSUBSET, not `=`.
        operator = "ISSUBSET" if "/" in n.ip else "="
        return f"[{'ipv6-addr' if ':' in n.ip else 'ipv4-addr'}:value {operator} {_quoted(n.ip)}]"
    if n.hostname:
        return f"[domain-name:value = {_quoted(n.hostname)}]"
    raise ValueError("a notification needs an address, host name, URL or e-mail address")


@dataclass(frozen=True, slots=True)
class NotificationState:
    """The aggregate the store keeps for a natural key: when seen, how often, which version."""

    first_seen: str
    last_seen: str
    count: int
    created: str
    modified: str


def notification_ids(key: tuple[str, ...], legacy: bool = False) -> tuple[str, str, str]:
    """(sighting id, observed-data id, indicator id), all derived from the natural key: the
    objects a notification owns (its indicator only where it is sighted as one). Located ids
    (connector/stix/ids.py) of the subject `key[:4]`; `legacy`: the UUIDv5 ids a notification
    stored before migration 0013 has (Notification.legacy_ids)."""
    if legacy:
        return project_id("sighting", *key), project_id("observed-data", *key), project_id("indicator", *key)
    subject = digest("\x1f".join(key[:4]))
    return (
        located_id("sighting", subject, *key),
        located_id("observed-data", subject, *key),
        located_id("indicator", subject, *key),
    )


def observables(n: Notification) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    address_id = None
    if n.ip:
        ip_type = "ipv6-addr" if ":" in n.ip else "ipv4-addr"
        address_id = sco_id(ip_type, {"value": n.ip})
        out.append({"type": ip_type, "spec_version": "2.1", "id": address_id, "value": n.ip})
    if n.hostname:
        out.append(
            {
                "type": "domain-name",
                "spec_version": "2.1",
                "id": sco_id("domain-name", {"value": n.hostname}),
                "value": n.hostname,
            }
        )
    if n.url:
        out.append(
            {"type": "url", "spec_version": "2.1", "id": sco_id("url", {"value": n.url}), "value": n.url}
        )
    if n.email:
        out.append(
            {
                "type": "email-addr",
                "spec_version": "2.1",
                "id": sco_id("email-addr", {"value": n.email}),
                "value": n.email,
            }
        )
    if address_id and n.port is not None:
        protocols = [n.protocol or "tcp"]
        traffic = {"dst_ref": address_id, "dst_port": n.port, "protocols": protocols}
        out.append(
            {
                "type": "network-traffic",
                "spec_version": "2.1",
                "id": sco_id("network-traffic", traffic),
                **traffic,
            }
        )
    return out


def sighted_object(
    n: Notification, state: NotificationState, partner_ref: str, marking: list[str], indicator_id: str
) -> dict[str, Any]:
    """What the sighting is a sighting of, by classification (docs/stix-model.md):
    a vulnerability (CVE or named weakness), a malware family, or else an indicator of the
    observable itself (a phishing URL, a compromised site, a scanning host, a leaked account)."""
    c = n.classification
    if c.taxonomy == "vulnerable":
        return vulnerability(n.vulnerability or c.identifier)
    if c.taxonomy == "malicious-code" and c.type == "infected-system":
        return malware_family(c.identifier)
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": indicator_id,
        "created_by_ref": partner_ref,
        "created": state.created,
        "modified": state.modified,
        "name": f"{c.taxonomy}/{c.type}: {c.identifier}",
        "indicator_types": INDICATOR_TYPES.get(c.taxonomy, ["unknown"]),
        "pattern": pattern_of(n),
        "pattern_type": "stix",
        "valid_from": state.first_seen,
        "object_marking_refs": marking,
    }


def notification_objects(n: Notification, state: NotificationState) -> list[dict[str, Any]]:
    """The objects of one notification version; reference objects are added by the caller."""
    return notification_objects_and_own_ids(n, state)[0]


def notification_objects_and_own_ids(
    n: Notification, state: NotificationState
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """The objects of one notification version, and the ids among them that derive from its
    natural key (sighting, observed-data, an indicator of its own). Each version of those is
    new, and a new notification's are in no collection yet: the store skips looking them up."""
    sighting_id, observed_id, indicator_id = notification_ids(n.natural_key(), n.legacy_ids)
    partner_ref = partner_identity_id(n.partner)
    marking = [TLP2_MARKING_IDS[n.tlp]]
    scos = observables(n)
    observed = {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": observed_id,
        "created_by_ref": partner_ref,
        "created": state.created,
        "modified": state.modified,
        "first_observed": state.first_seen,
        "last_observed": state.last_seen,
        "number_observed": state.count,
        "object_refs": [o["id"] for o in scos],
        "object_marking_refs": marking,
    }
    c = n.classification
    extension: dict[str, Any] = {
        "extension_type": "property-extension",
        "partner": n.partner,
        "feed": n.feed,
        "classification": {"taxonomy": c.taxonomy, "type": c.type, "identifier": c.identifier},
    }
    if n.case_id:
        extension["case_id"] = n.case_id
    if n.severity:
        extension["severity"] = n.severity
    if n.evidence:
        extension["evidence"] = n.evidence
    sighted = sighted_object(n, state, partner_ref, marking, indicator_id)
    sighting = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": sighting_id,
        "created_by_ref": partner_ref,
        "created": state.created,
        "modified": state.modified,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "count": state.count,
        "sighting_of_ref": sighted["id"],
        "observed_data_refs": [observed_id],
        "where_sighted_refs": [partner_ref],
        "object_marking_refs": marking,
        "extensions": {EXTENSION_ID: extension},
    }
    return [sighted, *scos, observed, sighting], frozenset((sighting_id, observed_id, indicator_id))


def reference_objects(partner: str, partner_name: str, tlp: str) -> list[dict[str, Any]]:
    """What a collection needs so every reference in a notification resolves."""
    return [
        clearinghouse_identity(),
        extension_definition(),
        partner_identity(partner, partner_name),
        marking_definition(tlp),
    ]


__all__ = [
    "NotificationState",
    "notification_objects",
    "notification_objects_and_own_ids",
    "reference_objects",
    "timestamp",
]
