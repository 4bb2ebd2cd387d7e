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

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from connector.notification import Classification, Notification
from connector.stix.build import (
    NotificationState,
    notification_ids,
    notification_objects_and_own_ids,
    partner_identity_id,
    reference_objects,
)
from connector.stix.build import _reference_id as reference_id
from connector.stix.ids import (
    PROJECT_NAMESPACE,
    SCO_NAMESPACE,
    located_uuid_bytes,
    type_key,
    uuid5_text_from_sha1,
)
from connector.store.records import Kind, NotificationRecord, VersionRecord, digest
from connector.store.times import ms_to_timestamp
from connector.tlp import TLP2_MARKING_IDS

if TYPE_CHECKING:
    from connector.store import Reader

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
    """What a version will render to, without rendering it: the digests of the notification's
    own ids, and of the shared objects' ids in their slots (what ingest records)."""

    own: tuple[int, ...]
    shared: tuple[tuple[int, int], ...]


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
        legacy_ids=not n.located_ids,
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


@lru_cache(maxsize=1024)
def _reference_digests(partner: str, tlp: str) -> tuple[tuple[int, int], ...]:
    return tuple((slot, digest(i)) for slot, i in enumerate(reference_ids(partner, tlp)))


@lru_cache(maxsize=4096)
def _sighted_digest(stix_type: str, name: str) -> int:
    return digest(reference_id(stix_type, name))


def _key(notification: Notification, day: str | None) -> tuple[str, ...]:
    c = notification.classification
    return (
        notification.partner,
        f"{c.taxonomy}/{c.type}",
        c.identifier,
        notification.observable,
        day or notification.day,
    )


def _sighted_kind(notification: Notification) -> tuple[str, str] | None:
    """What the sighting is of when it is a shared object: ("vulnerability" | "malware", name);
    None: an indicator of the notification's own."""
    c = notification.classification
    if c.taxonomy == "vulnerable":
        return "vulnerability", notification.vulnerability or c.identifier
    if c.taxonomy == "malicious-code" and c.type == "infected-system":
        return "malware", c.identifier.lower()
    return None


def own_ids(notification: Notification, day: str | None = None) -> tuple[str, ...]:
    """The ids of the objects the notification owns (indicator, observed-data, sighting)."""
    sighting_id, observed_id, indicator_id = notification_ids(
        _key(notification, day), notification.legacy_ids
    )
    if _sighted_kind(notification) is None:
        return (indicator_id, observed_id, sighting_id)
    return (observed_id, sighting_id)


def notifications_owning(reader: Reader, ident: str) -> list[NotificationRecord]:
    """The notifications that own this id (as their sighting, observed-data or indicator): the
    store's candidates (notification_pks_by_id: a digest, or a located id's subject, finds more
    than the owner) checked against the ids each owns."""
    records = reader.notifications(reader.notification_pks_by_id([ident]).get(digest(ident), []))
    if not records:
        return []
    kinds = reader.kinds({r.kind for r in records.values()})
    return [r for r in records.values() if ident in own_ids(notification_of(r, kinds[r.kind], {}))]


_PROJECT = PROJECT_NAMESPACE.bytes
_SCO = SCO_NAMESPACE.bytes
_VERSION_MASK = ~(0xF0 << 8)  # byte 6 of the UUID is the second-lowest of its first 64 bits
_VERSION_5 = 0x50 << 8


def _v5_digest(namespace: bytes, name: bytes, stix_type: str) -> tuple[int, bytes]:
    """(digest of the id `stix_type--uuid5(namespace, name)`, the UUID's first 8 bytes'
    hash before the version bits), as uuid_digest(uuid5_bytes(...)) gives it, with one hash
    and no id text: shape() makes six a row."""
    raw = hashlib.sha1(namespace + name, usedforsecurity=False).digest()
    value = ((int.from_bytes(raw[:8], "big") & _VERSION_MASK) | _VERSION_5) ^ type_key(stix_type)
    return (value - (1 << 64) if value >= 1 << 63 else value), raw


def _digest_of(raw: bytes, key: int) -> int:
    """_v5_digest's digest from the name's SHA-1 and the type's key (type_key)."""
    value = ((_FIRST_64(raw)[0] & _VERSION_MASK) | _VERSION_5) ^ key
    return value - (1 << 64) if value >= 1 << 63 else value


_FIRST_64 = struct.Struct(">Q").unpack_from  # the first 8 bytes as a number, without slicing


def _located_digest(raw: bytes, subject: int, key: int) -> int:
    """The digest (uuid_digest) of the located id of the name whose SHA-1 is `raw`."""
    value = int.from_bytes(located_uuid_bytes(raw, subject)[:8], "big") ^ key
    return value - (1 << 64) if value >= 1 << 63 else value


# What shape() hashes for the objects a notification owns, and the key of each type: worked out
# once, not per row (prefix: namespace and type name, in order of the ids' tuple).
_OWN_INDICATOR = tuple(
    (_PROJECT + t.encode(), type_key(t)) for t in ("indicator", "observed-data", "sighting")
)
_OWN_SIGHTED = _OWN_INDICATOR[1:]
_SCO_KEYS = {t: type_key(t) for t in ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr")}
_PROTOCOLS: dict[str | None, bytes] = {}  # protocol -> its `protocols` list as canonical JSON
_TRAFFIC_KEY = type_key("network-traffic")
_DOMAIN_KEY, _URL_KEY, _EMAIL_KEY = (_SCO_KEYS[t] for t in ("domain-name", "url", "email-addr"))


def _value_digest(value: str, key: int) -> int:
    """The digest of the id of an SCO with only a value, of the type whose key is `key`."""
    return _digest_of(hashlib.sha1(_SCO + _value_name(value), usedforsecurity=False).digest(), key)


def _value_name(value: str) -> bytes:
    """The canonical JSON of {"value": value}: what the id of an SCO with only a value hashes."""
    return b'{"value":' + orjson.dumps(value) + b"}"


def shape(
    notification: Notification,
    day: str | None = None,
    subject: tuple[str, str, str, str] | None = None,
    with_own: bool = True,
) -> Shape:
    """The digests of the ids render() will give this notification's versions, worked out
    without building any object (ingest's hot path), `day` the key's day if not that of its
    observation: tests/test_render.py holds the two to each other. `subject`: the first four
    parts of the key when the caller has them already (connector/recording.py subject_key),
    which spares working the observable out again. `with_own` False: without the own ids'
    digests (ingest stores none: connector/stix/ids.py, located ids)."""
    sighted = _sighted_kind(notification)
    own: tuple[int, ...] = ()
    if with_own:
        if subject is None:
            name = ("\x1f" + "\x1f".join(_key(notification, day))).encode()
        else:
            name = ("\x1f" + "\x1f".join(subject) + "\x1f" + (day or notification.day)).encode()
        sha1 = hashlib.sha1
        own_types = _OWN_INDICATOR if sighted is None else _OWN_SIGHTED
        hashes = [(sha1(prefix + name, usedforsecurity=False).digest(), key) for prefix, key in own_types]
        if notification.legacy_ids:
            own = tuple(_digest_of(raw, key) for raw, key in hashes)
        else:
            subject_digest = digest(name[1 : name.rindex(b"\x1f")].decode())
            own = tuple(_located_digest(raw, subject_digest, key) for raw, key in hashes)
    shared = [*_reference_digests(notification.partner, notification.tlp)]
    if sighted is not None:
        shared.append((REFERENCES, _sighted_digest(*sighted)))
    _add_observables(notification, shared)
    return Shape(own, tuple(shared))


def _add_observables(n: Notification, shared: list[tuple[int, int]]) -> None:
    """shape()'s (slot, digest) of each observable (address, host name, URL, e-mail address,
    network-traffic), appended to `shared` in their slots."""
    sha1 = hashlib.sha1
    slot = REFERENCES + 1
    ip = n.ip
    address = None
    if ip:
        ip_type = "ipv6-addr" if ":" in ip else "ipv4-addr"
        raw = sha1(_SCO + _value_name(ip), usedforsecurity=False).digest()
        shared.append((slot, _digest_of(raw, _SCO_KEYS[ip_type])))
        slot += 1
        if n.port is not None:
            address = f"{ip_type}--{uuid5_text_from_sha1(raw)}"
    # Written out rather than a loop over (type, value) pairs: building those pairs for every
    # row cost more than hashing the one value most rows have.
    hostname, url, email = n.hostname, n.url, n.email
    if hostname:
        shared.append((slot, _value_digest(hostname, _DOMAIN_KEY)))
        slot += 1
    if url:
        shared.append((slot, _value_digest(url, _URL_KEY)))
        slot += 1
    if email:
        shared.append((slot, _value_digest(email, _EMAIL_KEY)))
        slot += 1
    if address is None:
        return
    if n.port.__class__ is int:
        # The canonical JSON of {"dst_ref", "dst_port", "protocols"} written out (keys sorted,
        # no spaces, as orjson's OPT_SORT_KEYS gives it): one dict and a sort less per row.
        protocols = _PROTOCOLS.get(n.protocol)
        if protocols is None:
            if len(_PROTOCOLS) > 1000:
                _PROTOCOLS.clear()
            protocols = _PROTOCOLS[n.protocol] = orjson.dumps([n.protocol or "tcp"])
        name = b'{"dst_port":%d,"dst_ref":"%s","protocols":%s}' % (n.port, address.encode(), protocols)
        raw = sha1(_SCO + name, usedforsecurity=False).digest()
        shared.append((slot, _digest_of(raw, _TRAFFIC_KEY)))
    else:
        traffic = {"dst_ref": address, "dst_port": n.port, "protocols": [n.protocol or "tcp"]}
        name = orjson.dumps(traffic, option=orjson.OPT_SORT_KEYS)
        shared.append((slot, _v5_digest(_SCO, name, "network-traffic")[0]))
