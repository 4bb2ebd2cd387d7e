"""Offering overdue notifications to the parent (issue #13, item 5).

A recipient that neither fetches nor acknowledges a notification leaves its organisation
exposed; its link organisation or sector CERT (the `parent`) is who can get it moving. The
offer is a STIX 2.1 `note` by the clearinghouse in the parent's own collection, referring to the
notification's sighting: the parent's analysts see it where they already read, over TAXII.

Only where the routing let the parent have the notification in the first place: the parent's
collection holds it, which it does exactly when the child delivers up (`deliver_to_parent`), the
data is not for the direct owner only (personal data) and the parent's categories and TLP
ceiling take it. The offer never carries more than the parent already holds: the note names the
child (the parent's own constituent), the state and since when, and bears the notification's
TLP marking. Its id is derived from child, notification and state, so offering again is
idempotent, and a later state (fetched but still not acknowledged) is a new note.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.collections import recipient_collection_id
from connector.config import Config
from connector.feedback import NotFound, target
from connector.stats import Overdue, collection_notifications
from connector.stix.build import CLEARINGHOUSE_IDENTITY_ID
from connector.stix.ids import project_id
from connector.store import Store
from connector.store.times import now_us, us_to_timestamp
from connector.tlp import TLP2_MARKING_IDS

OFFERED, ALREADY, NOT_OFFERED = "offered", "already offered", "not offered"


@dataclass(frozen=True)
class Offer:
    recipient: str
    sighting: str
    parent: str | None
    outcome: str  # offered | already offered | not offered
    reason: str | None = None  # why not offered
    note: str | None = None  # the note's id in the parent's collection


def offer_to_parents(config: Config, store: Store, overdue: list[Overdue]) -> list[Offer]:
    holdings: dict[str, dict[int, int]] = {}
    out: list[Offer] = []
    for item in overdue:
        child = config.recipient(item.recipient)
        parent = child.parent
        if parent is None:
            out.append(Offer(item.recipient, item.sighting, None, NOT_OFFERED, "it has no parent"))
            continue
        try:
            found = target(store, item.recipient, item.sighting)
        except NotFound:  # deleted from the collection since it was listed
            out.append(Offer(item.recipient, item.sighting, parent, NOT_OFFERED, "no longer delivered"))
            continue
        if parent not in holdings:
            holdings[parent] = _held_by(store, parent)
        if found.record.pk not in holdings[parent]:
            reason = _why_not_held(config, store, item.recipient, found.record.kind)
            out.append(Offer(item.recipient, item.sighting, parent, NOT_OFFERED, reason))
            continue
        note = _note(config, store, item, found.record.kind)
        collection = recipient_collection_id(parent)
        with store.reading() as reader:
            known = reader.stored_page(collection, after=None, limit=1, ids=[note["id"]])
        if known:
            out.append(Offer(item.recipient, item.sighting, parent, ALREADY, note=str(note["id"])))
            continue
        new = store.store_objects(collection, [note])
        store.audit(
            username="meldpunt",
            action="escalation",
            collection_id=collection,
            objects=new,
            status=200,
        )
        out.append(Offer(item.recipient, item.sighting, parent, OFFERED, note=str(note["id"])))
    return out


def _held_by(store: Store, rid: str) -> dict[int, int]:
    number = store.collection_number(recipient_collection_id(rid))
    if number is None:
        return {}
    with store.reading() as reader:
        return collection_notifications(reader, number)


def _why_not_held(config: Config, store: Store, child: str, kind_pk: int) -> str:
    with store.reading() as reader:
        kind = reader.kinds([kind_pk])[kind_pk]
    if not config.recipient(child).deliver_to_parent:
        return f"{child} has deliver_to_parent false"
    if kind.direct_owner_only:
        return "personal data goes to the direct owner only"
    return "the parent's categories or TLP ceiling do not take it"


def _note(config: Config, store: Store, item: Overdue, kind_pk: int) -> dict[str, object]:
    with store.reading() as reader:
        kind = reader.kinds([kind_pk])[kind_pk]
    child = config.recipient(item.recipient)
    waiting = "has not fetched it" if item.state == "routed" else "fetched it but has not acknowledged it"
    since = "routed to it" if item.state == "routed" else "fetched"
    now = us_to_timestamp(now_us())
    return {
        "type": "note",
        "spec_version": "2.1",
        "id": project_id("note", "escalation", item.recipient, item.sighting, item.state),
        "created": now,
        "modified": now,
        "created_by_ref": CLEARINGHOUSE_IDENTITY_ID,
        "abstract": f"Escalation: {child.name} {waiting}",
        "content": (
            f"{child.name} ({child.id}) {waiting}; {since} {item.since}. "
            "Offered to you as its parent organisation so that it can be followed up."
        ),
        "authors": ["Security Meldpunt"],
        "object_refs": [item.sighting],
        "labels": ["escalation"],
        "object_marking_refs": [TLP2_MARKING_IDS[kind.tlp]],
    }
