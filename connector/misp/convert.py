"""A recipient's MISP event, built with PyMISP's classes from what its collection holds.

The event is made from the stored STIX objects of its notifications (the same content the
recipient's TAXII collection serves), so MISP and TAXII never disagree. UUIDs are
deterministic: the event's from the recipient and group, each object's and attribute's from
the event and the notification (never the value alone: MISP requires attribute UUIDs to be
unique across the whole instance, and the same address appears in many events).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from pymisp import MISPEvent, MISPObject, MISPOrganisation
from sqlalchemy import and_, select

from connector.collections import recipient_collection_id
from connector.config import Config, MispChannel
from connector.stix.ids import project_uuid
from connector.store import Store
from connector.store import schema as t
from connector.store.store import members_with_ids, timestamp_to_us
from connector.tlp import TLP2_MARKING_IDS, TLP_LEVELS

_TLP_BY_ID = {v: k for k, v in TLP2_MARKING_IDS.items()}
_THREAT_LEVEL = {"critical": 1, "high": 1, "medium": 2, "low": 3}
CLEARINGHOUSE_ORG_UUID = str(project_uuid("misp-organisation", "clearinghouse"))


@dataclass
class BuiltEvent:
    event: MISPEvent
    content_hash: str  # over everything but timestamps: decides whether an edit is needed
    attributes: int
    last_change: int  # epoch seconds of the newest notification version in it


def _member_keys(store: Store, recipient: str, event_uuid: str) -> list[str]:
    m = t.misp_event_members
    with store.engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                select(m.c.notification_key)
                .where(and_(m.c.recipient == recipient, m.c.event_uuid == event_uuid))
                .order_by(m.c.notification_key)
            )
        ]


def _latest(conn: Any, ids: list[str], collection_id: str) -> dict[str, dict[str, Any]]:
    """The current version of each object *in the recipient's collection*: what it was given
    (its TLP ceiling, routing at the time, deletions), never a newer one it was not."""
    so, co = t.stix_objects, t.collection_objects
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(co.c.stix_id, so.c.body)
            .select_from(co.join(so, so.c.pk == co.c.object_pk))
            .where(and_(members_with_ids(collection_id, ids[start : start + 500]), co.c.is_latest.is_(True)))
        )
        out.update({stix_id: json.loads(body) for stix_id, body in rows})
    return out


def load_notifications(store: Store, keys: list[str], recipient: str) -> list[dict[str, Any]]:
    """Per notification the recipient holds: its row, sighting, observed-data, SCOs, sighted object."""
    n = t.notifications
    collection_id = recipient_collection_id(recipient)
    with store.engine.connect() as conn:
        rows = [
            dict(r) for r in conn.execute(select(n).where(n.c.key.in_(keys)).order_by(n.c.key)).mappings()
        ]
        sightings = _latest(conn, [r["sighting_id"] for r in rows], collection_id)
        rows = [r for r in rows if r["sighting_id"] in sightings]  # deleted or never given: left out
        observed_ids = [ref for s in sightings.values() for ref in s["observed_data_refs"]]
        observed = _latest(conn, observed_ids, collection_id)
        refs = [ref for o in observed.values() for ref in o["object_refs"]]
        refs += [s["sighting_of_ref"] for s in sightings.values()]
        others = _latest(conn, refs, collection_id)
    out = []
    for row in rows:
        sighting = sightings[row["sighting_id"]]
        obs = observed[sighting["observed_data_refs"][0]]
        out.append(
            {
                "row": row,
                "sighting": sighting,
                "observed": obs,
                "scos": [others[r] for r in obs["object_refs"] if r in others],
                "sighted": others.get(sighting["sighting_of_ref"]),
            }
        )
    return out


def _sent_on_an_earlier_day(
    store: Store, recipient: str, event_uuid: str, notes: list[dict[str, Any]]
) -> set[str]:
    """Keys of the notes from a MISP attribute whose occurrence (the same partner,
    classification, identifier and observable) is in another, earlier day's event of the
    recipient. That event holds the attribute under its original UUID, and MISP refuses one
    attribute UUID in two events: a partner that edits an attribute moves its timestamp, and
    so its observation, to a later day, which is another notification in another event."""
    keys = [n["row"]["key"] for n in notes if _evidence(n).get("misp_attribute_uuid")]
    if not keys:
        return set()
    mine, other, m = t.notifications.alias("mine"), t.notifications.alias("other"), t.misp_event_members
    earlier = (
        select(other.c.key)
        .select_from(other.join(m, m.c.notification_key == other.c.key))
        .where(
            and_(
                m.c.recipient == recipient,
                m.c.event_uuid != event_uuid,
                other.c.partner == mine.c.partner,
                other.c.classification == mine.c.classification,
                other.c.identifier == mine.c.identifier,
                other.c.observable == mine.c.observable,
                other.c.day < mine.c.day,
            )
        )
        .exists()
    )
    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(select(mine.c.key).where(and_(mine.c.key.in_(keys), earlier)))}


def _evidence(note: dict[str, Any]) -> dict[str, Any]:
    return next(iter(note["sighting"].get("extensions", {}).values()), {}).get("evidence", {})


def _uuid(event_uuid: str, *parts: str) -> str:
    return str(uuid.uuid5(uuid.UUID(event_uuid), "\x1f".join(parts)))


def build_event(
    config: Config,
    store: Store,
    recipient: str,
    event_uuid: str,
    label: str,
    channel: MispChannel,
    sharing_group_id: int | None = None,
) -> BuiltEvent:
    notes = load_notifications(store, _member_keys(store, recipient, event_uuid), recipient)
    event = MISPEvent()
    event.uuid = event_uuid
    first = notes[0]["row"] if notes else None
    partner_name = config.partner(first["partner"]).name if first else "?"
    event.info = f"Security Meldpunt: {partner_name} {label}"
    event.date = first["day"] if first else None
    event.analysis = 2
    severities = [next(iter(n["sighting"].get("extensions", {}).values()), {}).get("severity") for n in notes]
    event.threat_level_id = min([_THREAT_LEVEL.get(s or "", 4) for s in severities] or [4])
    org = MISPOrganisation()
    org.name, org.uuid = "Security Meldpunt", CLEARINGHOUSE_ORG_UUID
    event.Orgc = org
    if channel.distribution == "sharing-group":
        event.distribution = 4
        event.sharing_group_id = sharing_group_id
    else:
        event.distribution = 0  # this organisation only
    repeated = _sent_on_an_earlier_day(store, recipient, event_uuid, notes)
    tags: set[str] = set()
    levels: set[str] = set()
    count = 0
    for note in notes:
        row, sighting = note["row"], note["sighting"]
        tlp = next(
            (_TLP_BY_ID[m] for m in sighting.get("object_marking_refs", []) if m in _TLP_BY_ID), row["tlp"]
        )
        levels.add(tlp)
        taxonomy, _, kind = row["classification"].partition("/")
        tags.add(f'rsit:{taxonomy}="{kind}"')
        original = None if row["key"] in repeated else _original_attribute(note, recipient)
        if original is not None:
            event.add_attribute(**original)
            count += 1
            continue
        for obj in _objects_for(note, event_uuid):
            count += len(obj.attributes)
            event.add_object(obj)
    _add_provenance(event, event_uuid, notes, config, recipient)
    if levels:
        # One TLP tag, the most restrictive of the event's notifications: TLP is an exclusive
        # taxonomy in MISP, and with `tlp:green` beside `tlp:amber` a MISP sharing by tag (push
        # rules, feed filters) would pass the amber notifications on as green.
        tags.add(f"tlp:{max(levels, key=TLP_LEVELS.__getitem__)}")
    for tag in sorted(tags):
        event.add_tag(tag)
    content = json.loads(event.to_json())  # to_dict is shallow: objects would hash as their names
    for volatile in ("timestamp", "publish_timestamp", "date"):
        content.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    changes = [timestamp_to_us(n["sighting"]["modified"]) // 1_000_000 for n in notes]
    return BuiltEvent(event, digest, count, max(changes, default=0))


def _original_attribute(note: dict[str, Any], recipient: str) -> dict[str, Any] | None:
    """A notification that came from a MISP attribute goes back as that attribute: same UUID,
    type, category and value (MISP -> STIX -> MISP round trip). Only for the notification's
    owner: a parent on the same sector MISP gets derived UUIDs, since MISP refuses one
    attribute UUID in two events."""
    row = note["row"]
    evidence = next(iter(note["sighting"].get("extensions", {}).values()), {}).get("evidence", {})
    uuid_, kind = evidence.get("misp_attribute_uuid"), evidence.get("misp_type")
    owners = json.loads(row["recipients"])
    if not uuid_ or not kind or not owners or owners[0] != recipient or evidence.get("misp_object_name"):
        return None
    values = {s["type"]: s for s in note["scos"]}
    ip = (values.get("ipv4-addr") or values.get("ipv6-addr") or {}).get("value")
    host = (values.get("domain-name") or {}).get("value")
    port = (values.get("network-traffic") or {}).get("dst_port")
    value = {
        "ip-src": ip,
        "ip-dst": ip,
        "domain": host,
        "hostname": host,
        "url": (values.get("url") or {}).get("value"),
        "email": (values.get("email-addr") or {}).get("value"),
        "email-src": (values.get("email-addr") or {}).get("value"),
        "email-dst": (values.get("email-addr") or {}).get("value"),
        "ip-dst|port": f"{ip}|{port}" if ip and port else None,
        "ip-src|port": f"{ip}|{port}" if ip and port else None,
        "domain|ip": f"{host}|{ip}" if host and ip else None,
    }.get(kind)
    if value is None:
        return None
    out = {"type": kind, "value": value, "uuid": uuid_, "to_ids": bool(evidence.get("misp_to_ids"))}
    if evidence.get("misp_category"):
        out["category"] = evidence["misp_category"]
    return out


def _objects_for(note: dict[str, Any], event_uuid: str) -> list[MISPObject]:
    row, sighting, scos, sighted = note["row"], note["sighting"], note["scos"], note["sighted"]
    key = row["key"]
    ext = next(iter(sighting.get("extensions", {}).values()), {})
    by_type: dict[str, list[dict[str, Any]]] = {}
    for sco in scos:
        by_type.setdefault(sco["type"], []).append(sco)
    comment = f"{row['partner']} {row['classification']} {row['identifier']} (notification {key[:12]})"
    objects: list[MISPObject] = []
    ips = [s["value"] for s in by_type.get("ipv4-addr", []) + by_type.get("ipv6-addr", [])]
    names = [s["value"] for s in by_type.get("domain-name", [])]
    ports = [s["dst_port"] for s in by_type.get("network-traffic", []) if "dst_port" in s]

    def new(name: str) -> MISPObject:
        obj = MISPObject(name, standalone=False)
        obj.uuid = _uuid(event_uuid, "object", key, name)
        obj.comment = comment
        objects.append(obj)
        return obj

    def add(obj: MISPObject, relation: str, value: Any) -> None:
        attribute = obj.add_attribute(relation, value=value)
        # A single-valued relation (last-seen) keeps its UUID when its value changes: MISP merges
        # an edit by UUID, and a new UUID would add a second last-seen to the object.
        multiple = obj._definition["attributes"].get(relation, {}).get("multiple", False)
        attribute.uuid = _uuid(
            event_uuid, "attribute", key, obj.name, relation, str(value) if multiple else ""
        )
        attribute.to_ids = False  # a victim's host is not an indicator of compromise

    for url in by_type.get("url", []):
        add(new("url"), "url", url["value"])
    masked = ext.get("evidence", {}).get("password_masked")
    for email in by_type.get("email-addr", []):
        obj = new("credential")
        add(obj, "username", email["value"])
        if masked:  # only ever the masked form: the raw password never reached the store
            add(obj, "password", masked)
    if ips and ports:
        relations = [
            ("ip", ips),
            ("dst-port", ports),
            ("hostname", names),
            ("first-seen", [sighting["first_seen"]]),
            ("last-seen", [sighting["last_seen"]]),
        ]
        obj = new("ip-port")
    elif ips or names:
        relations = [("ip", ips), ("hostname", names)]
        obj = new("domain-ip")
    else:
        relations = []
    for relation, values in relations:
        for value in values:
            add(obj, relation, value)
    cve = _cve_of(sighted)
    if cve:
        add(new("vulnerability"), "id", cve)
    return objects


def _cve_of(sighted: dict[str, Any] | None) -> str | None:
    if not sighted or sighted["type"] != "vulnerability":
        return None
    refs = sighted.get("external_references", [])
    return next((r["external_id"] for r in refs if r.get("source_name") == "cve"), None)


def _add_provenance(
    event: MISPEvent, event_uuid: str, notes: list[dict[str, Any]], config: Config, recipient: str
) -> None:
    """Who reported it and in which case, and (with server.public_url) a link back to the
    notification in the recipient's TAXII collection."""
    sources = sorted({(n["row"]["partner"], _case_of(n)) for n in notes})
    for partner, case in sources:
        text = f"Reported by {config.partner(partner).name}" + (f", case {case}" if case else "")
        attribute = event.add_attribute("text", text, category="Other", to_ids=False)
        attribute.uuid = _uuid(event_uuid, "source", partner, case or "")
    base = config.server.public_url
    if not base:
        return
    collection = recipient_collection_id(recipient)
    for note in notes:
        sighting = note["sighting"]["id"]
        url = f"{base.rstrip('/')}/{config.server.api_root}/collections/{collection}/objects/{sighting}/"
        attribute = event.add_attribute("link", url, category="External analysis", to_ids=False)
        attribute.uuid = _uuid(event_uuid, "link", note["row"]["key"])


def _case_of(note: dict[str, Any]) -> str | None:
    ext = next(iter(note["sighting"].get("extensions", {}).values()), {})
    return ext.get("case_id")
