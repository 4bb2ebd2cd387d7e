"""Deterministic STIX identifiers.

Cyber-observables follow the specification (section 2.9): UUIDv5 in the SCO namespace over the
canonical JSON of the id-contributing properties, so our ids equal every other conformant
producer's. Everything else uses the project's own namespace over a natural key, so the same
occurrence always gets the same id; the SCO namespace is reserved for SCOs by the spec.

The objects a notification owns (sighting, observed-data, indicator) are "located": their UUID
carries the 64-bit digest of the notification's subject (partner, classification, identifier,
observable), a 16-bit marker and 42 bits of the UUIDv5 hash of its natural key, in the UUIDv4
layout the specification asks of SDOs and SROs. The store finds the notification of such an id through the
subject index it keeps anyway, so it needs no index of the ids themselves: an index of random
keys that was a tenth of the store and its slowest write at a million notifications
(bench/ingest.py). Notifications stored before (migration 0013) keep their UUIDv5 ids.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# The project's namespace: uuid5(NAMESPACE_URL, "https://meldpunt.example/stix").
PROJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://meldpunt.example/stix")


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) for the value shapes SCO id contributors take: strings, ints, lists.

    orjson writes sorted keys, no whitespace and unescaped non-ASCII, as JCS asks (a test holds
    it to the standard library's `json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` on every code point), at a fraction of the cost.
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def uuid5_bytes_from_sha1(sha1: bytes) -> bytes:
    """The UUIDv5 whose name hashed to `sha1` (its first 16 bytes, version and variant set)."""
    digest = bytearray(sha1[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(digest)


def uuid5_bytes(namespace: uuid.UUID, name: str) -> bytes:
    """`uuid.uuid5(namespace, name).bytes` without building UUID objects: ingest makes several
    ids per row, and the standard library's objects were a large part of the cost."""
    return uuid5_bytes_from_sha1(
        hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    )


# Bytes 11-12 of every located UUID: what tells a located id from a submitter's random UUIDv4
# (one in 65,536 of those has it too, and is refused with a request for another UUID), so a
# located id can neither be probed for nor taken before the notification it names exists.
LOCATED_MARKER = b"\x6d\x70"


def located_uuid_bytes(sha1: bytes, subject: int) -> bytes:
    """The located UUID of a name whose project-namespace SHA-1 is `sha1`, for the subject
    digest `subject`: bytes 0-5 and 9-10 the digest, 11-12 LOCATED_MARKER, the rest (42 bits)
    the hash, version 4, RFC 4122 variant."""
    s = (subject & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")
    return (
        s[:6]
        + bytes((0x40 | sha1[6] & 0x0F, sha1[7], 0x80 | sha1[8] & 0x3F))
        + s[6:]
        + LOCATED_MARKER
        + sha1[13:16]
    )


def located_id(stix_type: str, subject: int, *key: str) -> str:
    """`stix_type--<located UUID>` of the natural key `key` of a notification of this subject."""
    name = "\x1f".join((stix_type, *key)).encode()
    h = located_uuid_bytes(
        hashlib.sha1(PROJECT_NAMESPACE.bytes + name, usedforsecurity=False).digest(), subject
    )
    text = h.hex()
    return f"{stix_type}--{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def located_subject(stix_id: str) -> int | None:
    """The subject digest a located id carries; None for an id that is not one (another UUID
    version, no marker, not a UUID). The caller checks the notifications of the subject for the
    id itself: anyone can write a UUID of this layout."""
    _, separator, rest = stix_id.partition("--")
    if not separator or len(rest) != 36:
        return None
    try:
        b = uuid.UUID(rest).bytes
    except ValueError:
        return None
    if b[6] >> 4 != 4 or b[8] >> 6 != 2 or b[11:13] != LOCATED_MARKER:
        return None
    value = int.from_bytes(b[:6] + b[9:11], "big")
    return value - (1 << 64) if value >= 1 << 63 else value


_HEX = frozenset("0123456789abcdefABCDEF")


def digest(text: str) -> int:
    """A 64-bit signed digest of a key or STIX id (what the store's look-up indexes hold): half
    the size of a UUID in every index entry. Two texts with one digest are possible and are
    told apart by the rows the digest finds. A notification's subject is the digest of its
    subject key, here as in the store, so a located id carries the subject the store keeps.

    A STIX id's digest is its UUID's first 64 bits mixed with its type (uuid_digest): ingest
    makes it from the UUID's bytes without writing the id out. Any other text is hashed."""
    stix_type, separator, rest = text.partition("--")
    if separator and len(rest) == 36 and rest[8] == rest[13] == rest[18] == rest[23] == "-":
        head = rest[:8] + rest[9:13] + rest[14:18]
        if _HEX.issuperset(head):
            return uuid_digest(stix_type, bytes.fromhex(head))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, as fast as it goes."""
    return uuid5_text_from_sha1(hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest())


def uuid5_text_from_sha1(sha1: bytes) -> str:
    """The text of the UUIDv5 whose name hashed to `sha1` (uuid5_bytes_from_sha1's UUID),
    written from the hash's hex: version 5 in the third group, the RFC 4122 variant in the
    first digit of the fourth, without making the bytes first."""
    h = sha1.hex()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{'89ab'[sha1[8] >> 4 & 3]}{h[17:20]}-{h[20:32]}"


_TYPE_KEYS: dict[str, int] = {}


def type_key(stix_type: str) -> int:
    """A 64-bit number per STIX type, mixed into id digests: two ids of different types with one
    UUID (a submitter may choose its UUIDs) must not share a digest."""
    found = _TYPE_KEYS.get(stix_type)
    if found is None:
        if len(_TYPE_KEYS) > 10_000:
            _TYPE_KEYS.clear()
        found = int.from_bytes(hashlib.blake2b(stix_type.encode(), digest_size=8).digest(), "big")
        _TYPE_KEYS[stix_type] = found
    return found


def uuid_digest(stix_type: str, uuid_bytes: bytes) -> int:
    """The 64-bit signed digest of the id `stix_type--<uuid>` (see digest()): the UUID's first
    64 bits, which for the UUIDv5 ids made here are hash bits already. A located id's are its
    subject and 12 hash bits: the ids of one subject's notifications of different days may
    share a digest, which every look-up tells apart by the id itself."""
    value = int.from_bytes(uuid_bytes[:8], "big") ^ type_key(stix_type)
    return value - (1 << 64) if value >= 1 << 63 else value


def sco_id(sco_type: str, contributing: dict[str, Any]) -> str:
    present = {k: v for k, v in contributing.items() if v is not None}
    return f"{sco_type}--{uuid5_text(SCO_NAMESPACE, canonical_json(present))}"


def project_id(stix_type: str, *key: str | int | None) -> str:
    name = "\x1f".join("" if part is None else str(part) for part in (stix_type, *key))
    return f"{stix_type}--{uuid5_text(PROJECT_NAMESPACE, name)}"


def project_uuid(*key: str | int | None) -> uuid.UUID:
    name = "\x1f".join("" if part is None else str(part) for part in key)
    return uuid.uuid5(PROJECT_NAMESPACE, name)


_SECONDS: dict[tuple[int, ...], str] = {}


def timestamp(moment: datetime) -> str:
    """STIX timestamp in UTC with millisecond precision, the form every consumer parses."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    second = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    text = _SECONDS.get(second)
    if text is None:  # a feed's rows share their seconds: format each second once
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        year, month, day, hour, minute, sec = second
        text = _SECONDS[second] = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{sec:02d}."
    return f"{text}{moment.microsecond // 1000:03d}Z"
