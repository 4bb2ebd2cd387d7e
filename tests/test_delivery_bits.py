"""Changing the flags of delivered entries in many collections at once (deliveries.change_bits).

A re-observation supersedes its notification's previous version in every collection that
version went to; the batch's changes are applied together. These tests hold the result to a
model of the entries, on both engines, with blocks that span statements, entries left alone
beside changed ones, and stamps no block holds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from connector.store import Store, deliveries
from connector.store.deliveries import EARLIER, RECHECK, SUPERSEDED
from connector.store.writer import SLOTS


def _entries(rng: random.Random, start: int, count: int) -> list[tuple[int, int]]:
    """`count` entries in stamp order from `start` on, with gaps, some with shared-object bits."""
    out, stamp = [], start
    for _ in range(count):
        stamp += SLOTS * rng.choice([1, 1, 2, 5])
        out.append((stamp, rng.choice([0, 0, 0b1, 0b110, EARLIER])))
    return out


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL the store's writer sends meanwhile (an executemany counted once)."""
    seen: list[str] = []
    engine = store._write_engine

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("seed", [1, 2])
def test_change_bits_matches_a_model_across_collections(
    store: Store, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    numbers = sorted(store.collection_numbers().values())[:3]
    model: dict[int, dict[int, int]] = {}
    with store.writing() as w:
        for number in numbers:
            # write batches of many sizes: blocks of one entry, of a few, of BLOCK and a short
            # one after it; gaps of stamps between the batches that no block holds
            entries = []
            for batch in range(8):
                size = rng.choice([1, 1, 3, 40, deliveries.BLOCK + 40])
                theirs = _entries(rng, 10_000_000 * (batch + 1), size)
                deliveries.append(w, {number: theirs})
                entries += theirs
            model[number] = dict(entries)
    # a change for about one entry in five: set SUPERSEDED, some clear EARLIER, some RECHECK
    changes: dict[int, dict[int, tuple[int, int]]] = {}
    for number, held in model.items():
        for stamp in sorted(held):
            if rng.random() < 0.2:
                change = rng.choice([(SUPERSEDED, 0), (SUPERSEDED, EARLIER), (RECHECK, 0)])
                changes.setdefault(number, {})[stamp] = change
                held[stamp] = (held[stamp] | change[0]) & ~change[1]
    monkeypatch.setattr(deliveries, "BLOCK_PROBES", 7)  # blocks span statements on PostgreSQL
    with store.writing() as w:
        deliveries.change_bits(w, changes)
    with store.writing() as w:
        for number, held in model.items():
            assert deliveries.entry_bits(w.conn, number, held) == held
            # nothing else appeared (stamps in the gaps are held by no block)
            gaps = [s + SLOTS for s in held if s + SLOTS not in held]
            assert set(deliveries.entry_bits(w.conn, number, gaps)) == set()
            # and asked together with stamps below a block's first, between two batches
            between = [10_000_000 * (batch + 1) for batch in range(8)]
            assert deliveries.entry_bits(w.conn, number, [*held, *gaps, *between]) == held


def test_change_bits_statements(store: Store) -> None:
    """On PostgreSQL the look-up of the blocks and their UPDATE are a statement each, whatever
    the number of collections; SQLite looks each block up in process, then one executemany."""
    rng = random.Random(3)
    numbers = sorted(store.collection_numbers().values())
    changes: dict[int, dict[int, tuple[int, int]]] = {}
    with store.writing() as w:
        for number in numbers:
            entries = _entries(rng, 1_000_000, 20)
            deliveries.append(w, {number: entries})
            changes[number] = {stamp: (SUPERSEDED, 0) for stamp, _bits in entries[::3]}
    with store.writing() as w, statements(store) as seen:
        deliveries.change_bits(w, changes)
    touching = [s for s in seen if "delivery_blocks" in s]
    assert len(numbers) > 2
    if store.dialect == "postgresql":
        assert len(touching) == 2, touching
    else:
        assert len(touching) == len(numbers) + 1, touching  # a block per collection here
    assert "UPDATE" in touching[-1]
    with store.writing() as w:
        for number, theirs in changes.items():
            assert all(bits & SUPERSEDED for bits in deliveries.entry_bits(w.conn, number, theirs).values())


def test_change_bits_reaches_every_block_of_one_entry(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block per entry, every entry changed: each stamp is the only way to its block, so a
    look-up that lost a stamp (at the end of a statement's share, say) leaves its entry as it was."""
    rng = random.Random(4)
    numbers = sorted(store.collection_numbers().values())[:3]
    changes: dict[int, dict[int, tuple[int, int]]] = {}
    with store.writing() as w:
        for number in numbers:
            for batch in range(5):
                entries = _entries(rng, 1_000_000 * (batch + 1), 1)
                deliveries.append(w, {number: entries})
                changes.setdefault(number, {})[entries[0][0]] = (SUPERSEDED, 0)
    monkeypatch.setattr(deliveries, "BLOCK_PROBES", 2)
    with store.writing() as w:
        deliveries.change_bits(w, changes)
    with store.writing() as w:
        for number, theirs in changes.items():
            found = deliveries.entry_bits(w.conn, number, theirs)
            assert sorted(found) == sorted(theirs)
            assert all(bits & SUPERSEDED for bits in found.values()), found


def test_change_bits_returns_the_changed_entries_that_carry_recheck(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a DELETE marked comes back for the entries changed (the recorder copies RECHECK to
    the next version's entry), not for those left alone, whatever the other bits."""
    rng = random.Random(5)
    numbers = sorted(store.collection_numbers().values())[:3]
    changes: dict[int, dict[int, tuple[int, int]]] = {}
    expected: dict[int, set[int]] = {}
    with store.writing() as w:
        for number in numbers[:2]:  # the third has no entries: nothing of it comes back
            entries = [
                (stamp, bits | rng.choice([0, RECHECK])) for stamp, bits in _entries(rng, 1_000_000, 600)
            ]
            deliveries.append(w, {number: entries})
            changed = {stamp: bits for stamp, bits in entries if rng.random() < 0.3}
            changes[number] = {stamp: (SUPERSEDED, 0) for stamp in changed}
            expected[number] = {stamp for stamp, bits in changed.items() if bits & RECHECK}
    changes[numbers[2]] = {SLOTS: (SUPERSEDED, 0)}
    monkeypatch.setattr(deliveries, "BLOCK_PROBES", 7)
    with store.writing() as w:
        assert deliveries.change_bits(w, changes) == expected
        assert deliveries.change_bits(w, {}) == {}
