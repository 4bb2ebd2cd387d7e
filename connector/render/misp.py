"""A recipient's MISP event, built with PyMISP's classes from the notification record.

Each member notification contributes the version the recipient's collection holds (its TLP
ceiling, routing at the time and deletions apply to MISP exactly as to TAXII), read from the
record's fields, never parsed back out of STIX. UUIDs are deterministic: the event's from the
recipient and group, each object's and attribute's from the event and the notification's key
(never the value alone: MISP requires attribute UUIDs to be unique across the whole instance,
and the same address appears in many events).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from pymisp import MISPEvent, MISPObject, MISPOrganisation

from connector.collections import recipient_collection_id
from connector.config import Config, MispChannel
from connector.notification import Notification
from connector.render.collection import _Context
from connector.render.stix import notification_of, render
from connector.stix.ids import project_uuid
from connector.store import Reader, Store
from connector.store.records import Kind, NotificationRecord, VersionRecord
from connector.store.times import ms_to_timestamp
from connector.tlp import TLP_LEVELS

_THREAT_LEVEL = {"critical": 1, "high": 1, "medium": 2, "low": 3}
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$")
CLEARINGHOUSE_ORG_UUID = str(project_uuid("misp-organisation", "clearinghouse"))


@dataclass(frozen=True)
class Note:
    """A notification as the recipient holds it: its record, and the version it was given."""

    record: NotificationRecord
    version: VersionRecord
    kind: Kind
    evidence: dict[str, Any]
    key: str  # sha256 of the natural key: what MISP UUIDs derive from
    sighting_id: str
    owner: str | None  # the recipient it was routed to first (its owner)

    @property
    def first_seen(self) -> str:
        return ms_to_timestamp(self.version.first_seen_of(self.record))

    @property
    def last_seen(self) -> str:
        return ms_to_timestamp(self.version.last_seen_of(self.record))

    @property
    def cve(self) -> str | None:
        if self.kind.taxonomy != "vulnerable":
            return None
        name = self.kind.vulnerability or self.record.identifier
        return name if _CVE.match(name) else None


@dataclass
class BuiltEvent:
    event: MISPEvent
    content_hash: str  # over everything but timestamps: decides whether an edit is needed
    attributes: int
    last_change: int  # epoch seconds of the newest notification version in it
    # Attribute UUID -> the notification it tells of (MISP sightings on it come back to that).
    notifications: dict[str, int] = field(default_factory=dict)
    # Notification -> its sighting's id (what feedback names it by).
    sightings: dict[int, str] = field(default_factory=dict)
    # Notification -> the stamp of the version of it the event holds (pushing it delivers that).
    versions: dict[int, int] = field(default_factory=dict)


def load_notes(store: Store, pks: list[int], recipient: str) -> list[Note]:
    """The member notifications the recipient holds, each at the latest version it was given
    (deleted from its collection, or never given: left out)."""
    collection_id = recipient_collection_id(recipient)
    number = store.collection_number(collection_id)
    if number is None:
        return []
    owners = store.collection_owners()
    with store.reading() as reader:
        context = _Context(reader)
        context.load_notifications(pks)
        notes = []
        for pk in sorted(pks):
            n = context.notifications.get(pk)
            if n is None:
                continue
            held = _held_version(context, reader, collection_id, number, n)
            if held is None:
                continue
            context.load([held.stamp])
            kind = context.kinds[held.kind_of(n)]
            evidence = context.evidence[held.evidence_of(n)]
            notification = notification_of(n, kind, evidence)
            natural = notification.natural_key()
            notes.append(
                Note(
                    record=n,
                    version=held,
                    kind=kind,
                    evidence=evidence,
                    key=hashlib.sha256("\x1f".join(natural).encode()).hexdigest(),
                    sighting_id=_sighting_id(notification),
                    owner=owners.get(held.recipients[0]) if held.recipients else None,
                )
            )
        return notes


def _sighting_id(n: Notification) -> str:
    from connector.stix.build import notification_ids

    return notification_ids(n.natural_key(), n.legacy_ids)[0]


def _held_version(
    context: _Context, reader: Reader, collection_id: str, number: int, n: NotificationRecord
) -> VersionRecord | None:
    """The newest version of the notification the collection holds, its sighting not removed."""
    for v in reader.version_chain(n.latest, context.versions):
        if number not in v.recipients:
            continue
        if v.renderer == 0:  # stored objects of the old layout: held while its sighting is
            sighting = _sighting_id(notification_of(n, reader.kinds([n.kind])[n.kind], {}))
            if reader.stored_page(collection_id, after=None, limit=1, ids=[sighting]):
                return v
            continue
        context.load([v.stamp])
        _n, _v, objects = context.render(v.stamp)
        slot = next(i.slot for i in objects if i.obj["type"] == "sighting")
        if not reader.removed_in(number, [v.stamp + slot]):
            return v
    return None


def _sent_on_an_earlier_day(reader: Reader, recipient: str, event_uuid: str, notes: list[Note]) -> set[int]:
    """Notifications from a MISP attribute whose subject has an earlier notification in another
    event of the recipient. That event holds the attribute under its original UUID, and MISP
    refuses one attribute UUID in two events."""
    from_misp = [n for n in notes if n.evidence.get("misp_attribute_uuid")]
    if not from_misp:
        return set()
    out = set()
    for note in from_misp:
        earlier = [
            pk for pk in reader.notification_pks_by_subject(note.record.subject) if pk < note.record.pk
        ]
        events = reader.misp_events_of(recipient, earlier)
        if any(uuids - {event_uuid} for uuids in events.values()):
            out.add(note.record.pk)
    return out


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
    with store.reading() as reader:
        members = reader.misp_members(recipient, event_uuid)
    notes = load_notes(store, members, recipient)
    event = MISPEvent()
    event.uuid = event_uuid
    first = notes[0] if notes else None
    partner_name = config.partner(first.kind.partner).name if first else "?"
    event.info = f"Security Meldpunt: {partner_name} {label}"
    if first is not None:  # else an event nothing is left of (all deleted from the collection)
        event.date = notification_of(first.record, first.kind, {}).day
    event.analysis = 2
    event.threat_level_id = min([_THREAT_LEVEL.get(n.kind.severity or "", 4) for n in notes] or [4])
    org = MISPOrganisation()
    org.name, org.uuid = "Security Meldpunt", CLEARINGHOUSE_ORG_UUID
    event.Orgc = org
    if channel.distribution == "sharing-group":
        event.distribution = 4
        event.sharing_group_id = sharing_group_id
    else:
        event.distribution = 0  # this organisation only
    with store.reading() as reader:
        repeated = _sent_on_an_earlier_day(reader, recipient, event_uuid, notes)
    tags: set[str] = set()
    levels: set[str] = set()
    count = 0
    owners: dict[str, int] = {}
    for note in notes:
        levels.add(note.kind.tlp)
        tags.add(f'rsit:{note.kind.taxonomy}="{note.kind.type}"')
        original = None if note.record.pk in repeated else _original_attribute(note, recipient)
        if original is not None:
            event.add_attribute(**original)
            owners[original["uuid"]] = note.record.pk
            count += 1
            continue
        for obj in _objects_for(note, event_uuid):
            count += len(obj.attributes)
            owners.update((a.uuid, note.record.pk) for a in obj.attributes)
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
    changes = [n.version.modified // 1000 for n in notes]
    return BuiltEvent(
        event,
        digest,
        count,
        max(changes, default=0),
        owners,
        {n.record.pk: n.sighting_id for n in notes},
        {n.record.pk: n.version.stamp for n in notes},
    )


def _original_attribute(note: Note, recipient: str) -> dict[str, Any] | None:
    """A notification that came from a MISP attribute goes back as that attribute: same UUID,
    type, category and value (MISP -> STIX -> MISP round trip). Only for the notification's
    owner: a parent on the same sector MISP gets derived UUIDs, since MISP refuses one
    attribute UUID in two events."""
    evidence = note.evidence
    uuid_, kind = evidence.get("misp_attribute_uuid"), evidence.get("misp_type")
    if not uuid_ or not kind or note.owner != recipient or evidence.get("misp_object_name"):
        return None
    n = note.record
    ip, host, port, email = n.ip, n.hostname, n.port, n.email
    value = {
        "ip-src": ip,
        "ip-dst": ip,
        "domain": host,
        "hostname": host,
        "url": n.url,
        "email": email,
        "email-src": email,
        "email-dst": email,
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


def _objects_for(note: Note, event_uuid: str) -> list[MISPObject]:
    n, key = note.record, note.key
    comment = f"{note.kind.partner} {note.kind.classification} {n.identifier} (notification {key[:12]})"
    objects: list[MISPObject] = []

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

    if n.url:
        add(new("url"), "url", n.url)
    masked = note.evidence.get("password_masked")
    if n.email:
        obj = new("credential")
        add(obj, "username", n.email)
        if masked:  # only ever the masked form: the raw password never reached the store
            add(obj, "password", masked)
    ips = [n.ip] if n.ip else []
    names = [n.hostname] if n.hostname else []
    relations: list[tuple[str, list[Any]]]
    if ips and n.port is not None:
        relations = [
            ("ip", ips),
            ("dst-port", [n.port]),
            ("hostname", names),
            ("first-seen", [note.first_seen]),
            ("last-seen", [note.last_seen]),
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
    if note.cve:
        add(new("vulnerability"), "id", note.cve)
    return objects


def _add_provenance(
    event: MISPEvent, event_uuid: str, notes: list[Note], config: Config, recipient: str
) -> None:
    """Who reported it and in which case, and (with server.public_url) a link back to the
    notification in the recipient's TAXII collection."""
    sources = sorted({(n.kind.partner, n.kind.case_id) for n in notes}, key=lambda s: (s[0], s[1] or ""))
    for partner, case in sources:
        text = f"Reported by {config.partner(partner).name}" + (f", case {case}" if case else "")
        attribute = event.add_attribute("text", text, category="Other", to_ids=False)
        attribute.uuid = _uuid(event_uuid, "source", partner, case or "")
    base = config.server.public_url
    if not base:
        return
    collection = recipient_collection_id(recipient)
    for note in notes:
        objects = f"{base.rstrip('/')}/{config.server.api_root}/collections/{collection}/objects"
        url = f"{objects}/{note.sighting_id}/"
        attribute = event.add_attribute("link", url, category="External analysis", to_ids=False)
        attribute.uuid = _uuid(event_uuid, "link", note.key)


__all__ = ["BuiltEvent", "Note", "build_event", "load_notes", "render"]
