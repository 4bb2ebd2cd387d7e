"""A notification version's values packed into a few bytes, and versions into blocks (`version_blocks`).

Why: every re-observation of a notification adds a version, so its size is what a second day
of the same hosts costs the store (issue #12: at most 0.3x the input). Stored as columns, a
version took about 49 bytes in SQLite (a header byte per column, `previous` and `modified` as
6-byte absolute numbers). Its stamp, notification and evidence are kept beside the rest (in a
row each from migration 0011, in blocks from 0015); the rest is small numbers relative to the
stamp, written as varints (`packed`), about 15 bytes.

The encoding, in this order (varint: 7 bits a byte, low bits first, high bit set on every byte
but the last; zigzag: a signed number n as 2n, or -2n-1 when negative, then a varint):

1. flags, a varint: bit 0 first_seen is present, bit 1 kind is present, bit 2 last_seen is
   whole seconds (stored divided by 1000), bit 3 previous is stored exactly (see 2); the bits
   from 4 up are the renderer. One byte while the renderer is below 8.
2. previous: without bit 3 a varint of (stamp - previous) / SLOTS, 0 meaning "no previous"
   (stamps are multiples of SLOTS and a version's previous is an earlier one); with bit 3, for
   a pair that is not like that, zigzag(stamp - previous).
3. modified: zigzag(modified - stamp // 1000): a version's modified (ms) is the time its stamp
   was taken, or a little after its previous version's, so this is 0 or close to it.
4. first_seen when present: zigzag(first_seen - stamp // 1000).
5. last_seen (ms after first_seen): zigzag, of the seconds with bit 2, else of the ms.
6. count: varint.
7. kind when present: varint.
8. recipients: a varint of how many, then each collection number as a varint, in order.
9. run: varint.

count, kind, recipients, run and the renderer are never negative (encode_version refuses them).
A later change of this encoding needs a migration of its own, and migration 0011, which packs
the rows of the columns layout with encode_version, must then keep a copy of this one.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from connector.store.records import EvidenceKey, VersionRecord
from connector.store.writer import SLOTS

_FIRST_SEEN = 1
_KIND = 2
_SECONDS = 4
_EXACT_PREVIOUS = 8
_RENDERER_SHIFT = 4


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ~(n << 1)


def encode_version(
    stamp: int,
    previous: int | None,
    renderer: int,
    modified: int,
    first_seen: int | None,
    last_seen: int,
    count: int,
    kind: int | None,
    recipients: tuple[int, ...] | list[int],
    run: int,
) -> bytes:
    """The packed form of a version's values but stamp, notification and evidence (columns).

    Runs once for every version ingest writes: the numbers are gathered first (zigzag inline),
    then written out at once when each fits a byte (most first versions), else in one loop (a
    call per number would cost more than the loop)."""
    flags = renderer << _RENDERER_SHIFT
    if last_seen % 1000 == 0:
        flags |= _SECONDS
        last_seen //= 1000
    if previous is None:
        distance = 0
    else:
        distance = stamp - previous
        if distance <= 0 or distance % SLOTS:
            flags |= _EXACT_PREVIOUS
            distance = _zigzag(distance)
        else:
            distance //= SLOTS
    base = stamp // 1000
    modified -= base
    if first_seen is None and kind is None:
        numbers = [
            flags,
            distance,
            modified << 1 if modified >= 0 else ~(modified << 1),
            last_seen << 1 if last_seen >= 0 else ~(last_seen << 1),
            count,
            len(recipients),
            *recipients,
            run,
        ]
    else:
        numbers = [0, distance, _zigzag(modified)]
        if first_seen is not None:
            flags |= _FIRST_SEEN
            numbers.append(_zigzag(first_seen - base))
        numbers += (_zigzag(last_seen), count)
        if kind is not None:
            flags |= _KIND
            numbers.append(kind)
        numbers.append(len(recipients))
        numbers += recipients
        numbers.append(run)
        numbers[0] = flags
    if max(numbers) < 0x80:  # each number one byte, as in most first versions
        return bytes(numbers)  # a negative number (where none may be) raises ValueError here
    out = bytearray()
    for n in numbers:
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)  # a negative number (where none may be) raises ValueError here
    return bytes(out)


def decode_version(
    stamp: int, notification: int, evidence: EvidenceKey | None, packed: bytes
) -> VersionRecord:
    """The version whose columns are these (the inverse of encode_version).

    Runs for every stored version a re-observation looks up: the bytes are the numbers when
    none has its high bit set (most first versions), else one loop reads every varint, rather
    than a call per field."""
    n = shift = 0
    if not packed or max(packed) < 0x80:  # each number one byte, as in most first versions
        values = list(packed)
    else:
        values = []
        for byte in packed:
            if byte & 0x80:
                n |= (byte & 0x7F) << shift
                shift += 7
            else:
                values.append(n | (byte << shift))
                n = shift = 0
    flags = values[0] if values else 0
    # flags, previous, modified, [first_seen], last_seen, count, [kind], how many recipients
    at = 5 + (flags & _FIRST_SEEN) + ((flags & _KIND) >> 1)
    if shift or len(values) <= at or len(values) != at + values[at] + 2:
        raise ValueError(f"version {stamp}: its packed values do not add up")
    base = stamp // 1000
    raw = values[1]
    if flags & _EXACT_PREVIOUS:
        previous: int | None = stamp - ((raw >> 1) ^ -(raw & 1))
    else:
        previous = stamp - raw * SLOTS if raw else None
    raw = values[2]
    modified = base + ((raw >> 1) ^ -(raw & 1))
    at = 3
    first_seen: int | None = None
    if flags & _FIRST_SEEN:
        raw = values[3]
        first_seen = base + ((raw >> 1) ^ -(raw & 1))
        at = 4
    raw = values[at]
    last_seen = (raw >> 1) ^ -(raw & 1)
    if flags & _SECONDS:
        last_seen *= 1000
    count = values[at + 1]
    at += 2
    kind: int | None = None
    if flags & _KIND:
        kind = values[at]
        at += 1
    return VersionRecord(
        stamp,
        notification,
        previous,
        flags >> _RENDERER_SHIFT,
        modified,
        first_seen,
        last_seen,
        count,
        kind,
        evidence,
        tuple(values[at + 1 : -1]),
        values[-1],
    )


def pack(version: VersionRecord) -> bytes:
    """encode_version of a VersionRecord."""
    return encode_version(
        version.stamp,
        version.previous,
        version.renderer,
        version.modified,
        version.first_seen,
        version.last_seen,
        version.count,
        version.kind,
        version.recipients,
        version.run,
    )


# --- blocks of versions ------------------------------------------------------------------------
#
# Versions are kept in blocks (`version_blocks`, migration 0015), a row per batch and set of
# recipients, keyed by the last stamp as the delivery log is: on PostgreSQL a row's own header,
# line pointer and index entry (about 50 bytes) were more than the version it held, and a second
# day of the same hosts grew the store by 0.56x its input, 86 bytes a row for the versions alone.
# A batch's versions for one set of recipients have consecutive stamps
# (recording.py _stamps_by_recipients), so a page of a collection reads few blocks.
#
#   flags byte: bit 0 stamps of 4 bytes (else 2), bit 1 offsets of 4 bytes (else 2), bit 2
#     evidence is tagged (the block holds an inline change)
#   varint n, the versions in the block
#   n stamps: (stamp - first) // SLOTS, little-endian, 2 or 4 bytes each
#   n + 1 offsets of 2 (4) bytes into the payload: where each version's bytes start (and end)
#   payload: per version a varint notification, its evidence, its packed bytes; the evidence
#     without bit 2 a varint of the evidence pk + 1 (0: none); with bit 2 a varint e, 0: none,
#     odd: the evidence pk e >> 1, even: an inline change (connector/store/evidence.py) of
#     e >> 1 bytes of UTF-8 that follow
#
# Fixed-width stamps and offsets find one version without reading those before it: a
# re-observation reads one version of its notification's block. A block without an inline
# change is written as before bit 2 was (migration 0016), so migration 0015 writes what it did.
# A later change of this encoding needs a migration of its own, and migrations 0015 and 0016
# must then keep a copy of this one.

BLOCK_VERSIONS = 64  # at most, a block: what a look-up of one version reads
_WIDE = 1
_WIDE_OFFSETS = 2  # a payload above 65,535 bytes (a version to thousands of recipients)
_TAGGED = 4  # the evidence field tells a pk from an inline change
_NARROW_SPAN = 0xFFFF  # stamps of one block within this many slots: 2 bytes each
_WIDE_SPAN = 0xFFFFFFFF


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)  # a negative number raises ValueError here


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, at
        shift += 7


def encode_block(versions: Sequence[tuple[int, int, EvidenceKey | None, bytes]]) -> bytes:
    """(stamp, notification, evidence, packed) of versions in stamp order as one block; the
    first's stamp is the block's `first`."""
    first = versions[0][0]
    steps = [(stamp - first) // SLOTS for stamp, _n, _e, _p in versions]
    if any(stamp % SLOTS != first % SLOTS for stamp, _n, _e, _p in versions) or steps != sorted(set(steps)):
        raise ValueError("a block holds versions of distinct stamps a multiple of SLOTS apart, in order")
    wide = steps[-1] > _NARROW_SPAN
    out = bytearray(1)
    _varint(out, len(versions))
    out += struct.pack(f"<{len(steps)}{'I' if wide else 'H'}", *steps)
    payload = bytearray()
    offsets = [0]
    tagged = any(evidence.__class__ is str for _s, _n, evidence, _p in versions)
    for _stamp, notification, evidence, packed in versions:
        _varint(payload, notification)
        if evidence is None:
            payload.append(0)
        elif not tagged:
            _varint(payload, evidence + 1)  # type: ignore[operator]
        elif evidence.__class__ is str:
            text = evidence.encode()  # type: ignore[union-attr]
            if not text:
                raise ValueError("an inline change is never empty")
            _varint(payload, len(text) << 1)
            payload += text
        else:
            _varint(payload, (evidence << 1) | 1)  # type: ignore[operator]
        payload += packed
        offsets.append(len(payload))
    wide_offsets = offsets[-1] > 0xFFFF
    out[0] = (_WIDE if wide else 0) | (_WIDE_OFFSETS if wide_offsets else 0) | (_TAGGED if tagged else 0)
    out += struct.pack(f"<{len(offsets)}{'I' if wide_offsets else 'H'}", *offsets)
    out += payload
    return bytes(out)


def blocks_of(
    versions: Iterable[tuple[int, int, EvidenceKey | None, bytes, tuple[int, ...]]],
) -> list[tuple[int, int, bytes]]:
    """(last, first, entries) rows of these (stamp, notification, evidence, packed, recipients)
    versions, sorted by stamp: a block per run of one set of recipients, of at most
    BLOCK_VERSIONS, a span its stamps fit in and stamps a multiple of SLOTS apart."""
    rows: list[tuple[int, int, bytes]] = []
    part: list[tuple[int, int, EvidenceKey | None, bytes]] = []
    group: tuple[int, ...] | None = None
    for stamp, notification, evidence, packed, recipients in versions:
        if part and (
            recipients != group
            or len(part) == BLOCK_VERSIONS
            or (stamp - part[0][0]) // SLOTS > _WIDE_SPAN
            or (stamp - part[0][0]) % SLOTS  # every stamp ever given is a multiple of SLOTS
        ):
            rows.append((part[-1][0], part[0][0], encode_block(part)))
            part = []
        group = recipients
        part.append((stamp, notification, evidence, packed))
    if part:
        rows.append((part[-1][0], part[0][0], encode_block(part)))
    return rows


class VersionBlock:
    """A block's stamps, read at once (one C call); each version decoded when asked for."""

    __slots__ = ("_data", "_offsets", "_offsets_at", "_payload_at", "_tagged", "last", "stamps")

    def __init__(self, last: int, first: int, data: bytes) -> None:
        self.last = last
        self._data = data
        n, at = _read_varint(data, 1)
        width = 4 if data[0] & _WIDE else 2
        steps = struct.unpack_from(f"<{n}{'I' if width == 4 else 'H'}", data, at)
        self.stamps = [first + step * SLOTS for step in steps]
        self._offsets_at = at + n * width
        wide_offsets = data[0] & _WIDE_OFFSETS
        self._offsets = struct.Struct("<II" if wide_offsets else "<HH")
        self._payload_at = self._offsets_at + (n + 1) * (4 if wide_offsets else 2)
        self._tagged = bool(data[0] & _TAGGED)

    def _refs_at(self, index: int) -> tuple[int, EvidenceKey | None, int, int]:
        """(notification, evidence, where its packed bytes start, where they end)."""
        start, end = self._offsets.unpack_from(
            self._data, self._offsets_at + (self._offsets.size >> 1) * index
        )
        notification, at = _read_varint(self._data, self._payload_at + start)
        field, at = _read_varint(self._data, at)
        if not field:
            return notification, None, at, self._payload_at + end
        if not self._tagged:
            return notification, field - 1, at, self._payload_at + end
        if field & 1:
            return notification, field >> 1, at, self._payload_at + end
        text_end = at + (field >> 1)
        return notification, self._data[at:text_end].decode(), text_end, self._payload_at + end

    def version(self, index: int) -> VersionRecord:
        notification, evidence, start, end = self._refs_at(index)
        return decode_version(self.stamps[index], notification, evidence, self._data[start:end])

    def find(self, stamp: int) -> VersionRecord | None:
        index = bisect_left(self.stamps, stamp)
        if index == len(self.stamps) or self.stamps[index] != stamp:
            return None
        return self.version(index)

    def versions(self) -> list[VersionRecord]:
        return [self.version(i) for i in range(len(self.stamps))]

    def refs(self) -> list[tuple[int, int, EvidenceKey | None]]:
        """(stamp, notification, evidence) of each version, without decoding the rest: what
        retention asks of every version."""
        return [(stamp, *self._refs_at(i)[:2]) for i, stamp in enumerate(self.stamps)]

    def entries(self) -> list[tuple[int, int, EvidenceKey | None, bytes]]:
        """(stamp, notification, evidence, packed) of each version, as encode_block takes them."""
        out = []
        for i, stamp in enumerate(self.stamps):
            notification, evidence, start, end = self._refs_at(i)
            out.append((stamp, notification, evidence, self._data[start:end]))
        return out
