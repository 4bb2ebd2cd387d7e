"""STIX 2.1 rendered from the record: a notification version's objects, in their slots.

A version's objects are always in this order, each in its slot (date_added = stamp + slot):

    0 clearinghouse identity   1 extension definition   2 partner identity   3 TLP marking
    4 what is sighted (vulnerability, malware: shared; an indicator: the notification's own)
    5... the observables (address, host name, URL, e-mail address, network-traffic)
    then the observed-data and the sighting (the notification's own)

Shared objects arrive in a collection once (the first version that brings them); the
notification's own objects (their ids derive from its natural key) come anew with every version.

Rendering depends only on stored fields and the renderer version stored with each version, so a
version's bytes never change once served: a renderer that writes something else is a new entry
in RENDERERS, used for new versions only (tests/golden pins each renderer's output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from connector.notification import Classification, Notification
from connector.stix.build import (
    NotificationState,
    notification_ids,
    notification_objects_and_own_ids,
    observables,
    partner_identity_id,
    reference_objects,
)
from connector.stix.build import _reference_id as reference_id
from connector.store.records import Kind, NotificationRecord, VersionRecord
from connector.store.times import ms_to_timestamp
from connector.tlp import TLP2_MARKING_IDS

CURRENT = 1  # the renderer new versions get
OWN_TYPES = frozenset({"sighting", "observed-data", "indicator"})
REFERENCES = 4  # slots 0-3


@dataclass(frozen=True, slots=True)
class Rendered:
    slot: int
    obj: dict[str, Any]
    shared: bool


@dataclass(frozen=True, slots=True)
class Shape:
    """What a version will render to, without rendering it: the notification's own ids, and
    the shared objects' ids in their slots (what ingest needs to record deliveries)."""

    own: tuple[str, ...]
    shared: tuple[tuple[int, str], ...]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def notification_of(n: NotificationRecord, kind: Kind, evidence: dict[str, Any]) -> Notification:
    """The record as the domain object (observed at the start of its key's day)."""
    return Notification(
        partner=kind.partner,
        feed=kind.feed,
        classification=Classification(kind.taxonomy, kind.type, n.identifier),
        observed_at=_EPOCH + timedelta(days=n.day),
        tlp=kind.tlp,
        ip=n.ip,
        port=n.port,
        protocol=n.protocol,
        hostname=n.hostname,
        url=n.url,
        email=n.email,
        asn=n.asn,
        vulnerability=kind.vulnerability,
        severity=kind.severity,
        case_id=kind.case_id,
        evidence=evidence,
        direct_owner_only=kind.direct_owner_only,
        discard_unrouted=kind.discard_unrouted,
    )


def state_of(n: NotificationRecord, v: VersionRecord) -> NotificationState:
    first = ms_to_timestamp(v.first_seen_of(n))
    last = first if v.last_seen == 0 else ms_to_timestamp(v.last_seen_of(n))
    return NotificationState(first, last, v.count, ms_to_timestamp(n.created), ms_to_timestamp(v.modified))


def _render_v1(notification: Notification, state: NotificationState, partner_name: str) -> list[Rendered]:
    objects, own = notification_objects_and_own_ids(notification, state)
    refs = reference_objects(notification.partner, partner_name, notification.tlp)
    return [Rendered(slot, obj, obj["id"] not in own) for slot, obj in enumerate([*refs, *objects])]


Renderer = Callable[[Notification, NotificationState, str], list[Rendered]]
RENDERERS: dict[int, Renderer] = {1: _render_v1}


def render(
    n: NotificationRecord, v: VersionRecord, kind: Kind, evidence: dict[str, Any], partner_name: str
) -> list[Rendered]:
    """Every object of version `v`, in slot order."""
    renderer = RENDERERS.get(v.renderer)
    if renderer is None:
        raise ValueError(f"version {v.stamp} was rendered by renderer {v.renderer}, which this code lacks")
    return renderer(notification_of(n, kind, evidence), state_of(n, v), partner_name)


@lru_cache(maxsize=1024)
def reference_ids(partner: str, tlp: str) -> tuple[str, ...]:
    """Slots 0-3, as reference_objects() renders them."""
    from connector.stix.build import CLEARINGHOUSE_IDENTITY_ID, EXTENSION_ID

    return (CLEARINGHOUSE_IDENTITY_ID, EXTENSION_ID, partner_identity_id(partner), TLP2_MARKING_IDS[tlp])


def shape(notification: Notification) -> Shape:
    """The ids render() will give this notification's versions, cheaply (no objects built but
    the observables): tests/test_render.py holds the two to each other."""
    sighting_id, observed_id, indicator_id = notification_ids(notification.natural_key())
    c = notification.classification
    shared: list[tuple[int, str]] = list(enumerate(reference_ids(notification.partner, notification.tlp)))
    if c.taxonomy == "vulnerable":
        shared.append((REFERENCES, reference_id("vulnerability", notification.vulnerability or c.identifier)))
        own: tuple[str, ...] = (observed_id, sighting_id)
    elif c.taxonomy == "malicious-code" and c.type == "infected-system":
        shared.append((REFERENCES, reference_id("malware", c.identifier.lower())))
        own = (observed_id, sighting_id)
    else:
        own = (indicator_id, observed_id, sighting_id)
    shared += [(REFERENCES + 1 + i, o["id"]) for i, o in enumerate(observables(notification))]
    return Shape(own, tuple(shared))
