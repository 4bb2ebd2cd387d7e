"""The packed form of a notification version (connector/store/packing.py) gives back every value.

Edge cases one by one, then many random versions: the values a store holds (stamps a multiple
of SLOTS, a previous version earlier), and the ones it should never hold but a codec must not
garble if they occur (a previous that is not a multiple of SLOTS away or lies ahead, negative
deltas, huge numbers).
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import orjson
import pytest

from connector.store.packing import (
    BLOCK_VERSIONS,
    VersionBlock,
    blocks_of,
    decode_version,
    encode_block,
    pack,
)
from connector.store.records import VersionRecord
from connector.store.writer import SLOTS

STAMP = 1_733_230_000_123_456 // SLOTS * SLOTS
BASE = VersionRecord(
    stamp=STAMP,
    notification=4_711,
    previous=None,
    renderer=1,
    modified=STAMP // 1000,
    first_seen=None,
    last_seen=0,
    count=1,
    kind=None,
    evidence=None,
    recipients=(2,),
    run=7,
)

CASES = {
    "a first version": BASE,
    "a day later": replace(BASE, previous=STAMP - 86_400_000_000, modified=STAMP // 1000 + 1, count=2),
    "previous one slot back": replace(BASE, previous=STAMP - SLOTS),
    "previous not a slot apart": replace(BASE, previous=STAMP - 17),
    "previous at the stamp": replace(BASE, previous=STAMP),
    "previous ahead": replace(BASE, previous=STAMP + 5 * SLOTS),
    "previous zero": replace(BASE, previous=0),
    "modified far ahead": replace(BASE, modified=STAMP // 1000 + 10**15),
    "modified far before": replace(BASE, modified=-(10**15)),
    "modified at zero": replace(BASE, modified=0),
    "first_seen set": replace(BASE, first_seen=STAMP // 1000 - 3 * 86_400_000),
    "first_seen after the stamp": replace(BASE, first_seen=STAMP // 1000 + 1),
    "last_seen ms": replace(BASE, last_seen=86_400_001),
    "last_seen whole seconds": replace(BASE, last_seen=86_400_000),
    "last_seen negative": replace(BASE, last_seen=-1_000),
    "last_seen negative ms": replace(BASE, last_seen=-1),
    "kind set": replace(BASE, kind=3),
    "kind zero": replace(BASE, kind=0),
    "evidence set": replace(BASE, evidence=2**40),
    "no recipients": replace(BASE, recipients=()),
    "many recipients": replace(BASE, recipients=tuple(range(300, 0, -1))),
    "recipient zero and big": replace(BASE, recipients=(0, 2**31, 127, 128)),
    "big run": replace(BASE, run=2**62),
    "run zero": replace(BASE, run=0),
    "big count": replace(BASE, count=2**40),
    "count zero": replace(BASE, count=0),
    "legacy renderer 0": replace(BASE, renderer=0, previous=None),
    "a later renderer": replace(BASE, renderer=9),
    "renderer far on": replace(BASE, renderer=70_000),
    "stamp zero": replace(BASE, stamp=0, modified=0),
    "stamp not a slot multiple": replace(BASE, stamp=STAMP + 3, previous=STAMP - SLOTS),
    "everything set": replace(
        BASE,
        previous=STAMP - 160,
        renderer=2,
        modified=STAMP // 1000 + 5,
        first_seen=1_600_000_000_123,
        last_seen=123_456_789,
        count=77,
        kind=12_345,
        evidence=99,
        recipients=(5, 1, 3),
        run=123_456,
    ),
}


def round_trip(version: VersionRecord) -> VersionRecord:
    return decode_version(version.stamp, version.notification, version.evidence, pack(version))


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_edge_case_comes_back(name: str) -> None:
    assert round_trip(CASES[name]) == CASES[name]


def test_random_versions_come_back() -> None:
    rng = random.Random(12)
    for _ in range(20_000):
        stamp = rng.randrange(0, 2**52) * (SLOTS if rng.random() < 0.9 else 1)
        version = VersionRecord(
            stamp=stamp,
            notification=rng.randrange(1, 2**40),
            previous=rng.choice([None, stamp - rng.randrange(-(2**20), 2**45)]),
            renderer=rng.choice([0, 1, 2, rng.randrange(2**20)]),
            modified=stamp // 1000 + rng.randrange(-(2**42), 2**42) // rng.choice([1, 2**30, 2**42]),
            first_seen=rng.choice([None, rng.randrange(-(2**44), 2**44)]),
            last_seen=rng.randrange(-(2**20), 2**40) * rng.choice([1, 1000]),
            count=rng.randrange(2 ** rng.randrange(1, 40)),
            kind=rng.choice([None, rng.randrange(2**31)]),
            evidence=rng.choice([None, rng.randrange(2**50)]),
            recipients=tuple(rng.randrange(2 ** rng.randrange(1, 32)) for _ in range(rng.choice([0, 1, 40]))),
            run=rng.randrange(2 ** rng.randrange(1, 63)),
        )
        assert round_trip(version) == version


def test_a_usual_re_observation_is_small() -> None:
    """What the store's second-day size rests on: a version a day after the previous one, seen
    again once, to one recipient, takes at most 15 bytes."""
    version = replace(
        BASE, previous=STAMP - 86_400_000_000, modified=STAMP // 1000 + 1, last_seen=86_400_000, count=2
    )
    assert len(pack(version)) <= 15
    assert len(pack(BASE)) <= 8


@pytest.mark.parametrize("field", ["count", "run", "kind", "renderer"])
def test_negative_where_none_may_be_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        pack(replace(BASE, **{field: -1}))
    with pytest.raises(ValueError):
        pack(replace(BASE, recipients=(1, -2)))


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_cut_short_bytes_are_refused(cut: int) -> None:
    packed = pack(CASES["everything set"])
    with pytest.raises(ValueError):
        decode_version(STAMP, 1, None, packed[:-cut])
    with pytest.raises(ValueError):
        decode_version(STAMP, 1, None, packed + b"\x01")


def test_the_encoding_is_as_documented() -> None:
    """The bytes of one version, worked out by hand from the module docstring: the format is
    stored data, so a change to it shows here (and needs a migration)."""
    version = replace(
        BASE,
        previous=STAMP - 2 * SLOTS,
        modified=STAMP // 1000 - 1,
        first_seen=STAMP // 1000 + 2,
        last_seen=3_000,
        count=200,
        kind=5,
        recipients=(1, 300),
        run=9,
    )
    flags = 1 << 4 | 0b0111  # renderer 1, first_seen, kind, seconds
    assert pack(version) == bytes([flags, 2, 1, 4, 6, 0xC8, 0x01, 5, 2, 1, 0xAC, 0x02, 9])


# --- blocks of versions -------------------------------------------------------------------------


def _random_change(rng: random.Random) -> str:
    """An inline change (connector/store/evidence.py), some with characters of several bytes."""
    value = "".join(rng.choice('aZ9 é€"😀') for _ in range(rng.randrange(0, 300)))
    return orjson.dumps([rng.randrange(1, 2**40), [[rng.randrange(30), value]]]).decode()


def _random_block(
    rng: random.Random, n: int, step: int, inline: bool = False
) -> list[tuple[int, int, int | str | None, bytes]]:
    stamp = rng.randrange(0, 2**52) * SLOTS
    versions = []
    for _ in range(n):
        evidence = [None, 0, rng.randrange(2**50)] + ([_random_change(rng)] * 3 if inline else [])
        version = replace(
            BASE,
            stamp=stamp,
            notification=rng.randrange(1, 2 ** rng.randrange(1, 50)),
            evidence=rng.choice(evidence),
            previous=rng.choice([None, stamp - rng.randrange(1, 2**40) * SLOTS]),
            recipients=tuple(range(rng.randrange(0, 5))),
        )
        versions.append((stamp, version.notification, version.evidence, pack(version)))
        stamp += rng.randrange(1, step) * SLOTS
    return versions


@pytest.mark.parametrize("inline", [False, True], ids=["pks", "inline changes"])
@pytest.mark.parametrize("step", [2, 2**12, 2**20])  # stamps 2 bytes apart in a block, or 4
def test_a_block_gives_back_every_version_and_finds_each_by_its_stamp(step: int, inline: bool) -> None:
    rng = random.Random(step)
    for n in (1, 2, 63, BLOCK_VERSIONS):
        versions = _random_block(rng, n, step, inline)
        block = VersionBlock(versions[-1][0], versions[0][0], encode_block(versions))
        assert block.entries() == versions
        assert block.stamps == [v[0] for v in versions]
        assert block.refs() == [(s, pk, evidence) for s, pk, evidence, _p in versions]
        for stamp, pk, evidence, packed in versions:
            assert block.find(stamp) == decode_version(stamp, pk, evidence, packed)
            assert block.find(stamp + 1) is None and block.find(stamp - SLOTS // 2) is None
        assert block.find(versions[-1][0] + SLOTS) is None and block.find(versions[0][0] - SLOTS) is None


@pytest.mark.parametrize("recipients,count", [(40_000, 1), (1_200, BLOCK_VERSIONS)])
def test_a_block_of_more_than_65535_bytes_is_written_and_read(recipients: int, count: int) -> None:
    """A version to thousands of recipients (no routing gives that today): the block's offsets
    take 4 bytes instead of 2, rather than failing the batch."""
    versions = []
    for i in range(count):
        stamp = STAMP + i * SLOTS
        version = replace(BASE, stamp=stamp, recipients=tuple(range(1000, 1000 + recipients)))
        versions.append((stamp, 7, None, pack(version)))
    block = VersionBlock(versions[-1][0], STAMP, encode_block(versions))
    assert block.entries() == versions
    assert block.find(versions[-1][0]) == decode_version(*versions[-1])


@pytest.mark.parametrize(
    "stamps",
    [[STAMP, STAMP], [STAMP, STAMP - SLOTS], [STAMP, STAMP + 1], [STAMP, STAMP + SLOTS * (2**32)]],
    ids=["twice", "out of order", "not a slot apart", "too far apart"],
)
def test_a_block_refuses_stamps_it_could_not_give_back(stamps: list[int]) -> None:
    with pytest.raises((ValueError, struct.error)):
        encode_block([(stamp, 1, None, pack(replace(BASE, stamp=stamp))) for stamp in stamps])


def test_blocks_are_cut_at_a_new_set_of_recipients_at_the_most_a_block_holds_and_at_a_wide_gap() -> None:
    """And where stamps stop being a multiple of SLOTS apart (no code gives such stamps; a
    store's data must still migrate if one has them)."""

    def version(stamp: int, recipients: tuple[int, ...]) -> tuple[int, int, None, bytes, tuple[int, ...]]:
        return stamp, 9, None, pack(replace(BASE, stamp=stamp, recipients=recipients)), recipients

    ones = [version(STAMP + i * SLOTS, (1,)) for i in range(BLOCK_VERSIONS + 3)]
    twos = [version(STAMP + (100 + i) * SLOTS, (1, 2)) for i in range(3)]
    far = [version(STAMP + (2**32 + 200) * SLOTS, (1, 2))]
    odd = [version(STAMP + (2**32 + 200 + i) * SLOTS + 3, (1, 2)) for i in (1, 2)]
    rows = blocks_of(ones + twos + far + odd)
    sizes = [len(VersionBlock(last, first, data).stamps) for last, first, data in rows]
    assert sizes == [BLOCK_VERSIONS, 3, 3, 1, 2]
    assert all(VersionBlock(last, first, data).stamps[-1] == last for last, first, data in rows)
    held = [v for last, first, data in rows for v in VersionBlock(last, first, data).entries()]
    assert held == [v[:4] for v in ones + twos + far + odd]


def test_a_block_without_an_inline_change_is_written_as_before_them() -> None:
    """Migration 0016: the code before it reads these blocks, and migration 0015 writes what it
    did. The evidence field is pk + 1 then; with an inline change in the block it is tagged."""
    stamps = [STAMP, STAMP + SLOTS]
    packed = [pack(replace(BASE, stamp=stamp)) for stamp in stamps]
    plain = encode_block([(stamps[0], 5, None, packed[0]), (stamps[1], 5, 3, packed[1])])
    assert plain[0] == 0
    payload = plain[len(plain) - len(packed[0]) - len(packed[1]) - 4 :]
    assert payload == bytes([5, 0]) + packed[0] + bytes([5, 4]) + packed[1]
    tagged = encode_block([(stamps[0], 5, "[3,[]]", packed[0]), (stamps[1], 5, 3, packed[1])])
    assert tagged[0] == 4
    payload = tagged[len(tagged) - len(packed[0]) - len(packed[1]) - 10 :]
    assert payload == bytes([5, 12]) + b"[3,[]]" + packed[0] + bytes([5, 7]) + packed[1]
    with pytest.raises(ValueError):
        encode_block([(stamps[0], 5, "", packed[0])])
