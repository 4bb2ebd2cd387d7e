"""Versions in blocks (connector/store/packing.py, migration 0015), through the store's SQL, on
both engines: found by stamp whichever block holds them (and not when absent), read by range and
in order, and taken out of their blocks by retention without disturbing the others."""

from __future__ import annotations

import random
from typing import Any

import pytest

from connector.store import Store, notifications, retention
from connector.store.packing import BLOCK_VERSIONS
from connector.store.writer import SLOTS

START = 1_733_230_000_000_000 // SLOTS * SLOTS


def _versions(count: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """VERSION_COLUMNS rows: batches' worth of versions, stamps a few slots apart, recipients in
    runs (as a batch stamps them), some of the run 2 to nobody."""
    rows = []
    stamp = START
    for i in range(count):
        stamp += rng.choice([1, 1, 3, 1000]) * SLOTS
        recipients = () if i % 50 < 5 else ((i // 20) % 3 + 1,)
        rows.append(
            (
                stamp,
                100 + i,
                None,
                1,
                stamp // 1000,
                None,
                0,
                1,
                None,
                rng.choice([None, 7]),
                recipients,
                1 + i % 2,
            )
        )
    return rows


@pytest.fixture
def stored(store: Store) -> tuple[Store, dict[int, tuple[Any, ...]]]:
    rows = _versions(700, random.Random(5))
    with store.writing() as w:
        notifications.add_versions(w, rows[:400])
    with store.writing() as w:
        notifications.add_versions(w, rows[400:])
    return store, {row[0]: row for row in rows}


def test_every_version_is_found_by_its_stamp_and_no_other(
    stored: tuple[Store, dict[int, tuple[Any, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, rows = stored
    monkeypatch.setattr(notifications, "VERSION_PROBES", 7)  # PostgreSQL: many statements
    rng = random.Random(9)
    asked = rng.sample(sorted(rows), 300) + [s + 1 for s in rng.sample(sorted(rows), 20)] + [START, START * 2]
    with store.engine.connect() as conn:
        found = notifications.versions_by_stamp(conn, asked)
        blocks = list(notifications.version_blocks_after(conn, None, limit=5))
    assert set(found) == {s for s in asked if s in rows}
    for stamp, version in found.items():
        row = rows[stamp]
        assert (version.notification, version.evidence, version.recipients, version.run) == (
            row[1],
            row[9],
            row[10],
            row[11],
        )
    assert [v.stamp for b in blocks for v in b.versions()] == sorted(rows)
    assert max(len(b.stamps) for b in blocks) <= BLOCK_VERSIONS
    assert len(blocks) > 700 / BLOCK_VERSIONS


def test_a_range_of_stamps_reads_the_blocks_that_hold_it(
    stored: tuple[Store, dict[int, tuple[Any, ...]]],
) -> None:
    store, rows = stored
    stamps = sorted(rows)
    with store.engine.connect() as conn:
        for low, high in ((stamps[0], stamps[-1]), (stamps[3], stamps[3]), (stamps[10] + 1, stamps[390] - 1)):
            for run in (1, 2):
                expected = {
                    s: r[1] for s, r in rows.items() if low <= s <= high and r[11] == run and not r[10]
                }
                assert notifications.run_versions_without_recipients(conn, run, low, high) == expected
                assert expected or low == high


def test_retention_takes_versions_out_of_their_blocks_and_leaves_the_rest(
    stored: tuple[Store, dict[int, tuple[Any, ...]]],
) -> None:
    store, rows = stored
    stamps = sorted(rows)
    with store.engine.connect() as conn:
        first_block = next(notifications.version_blocks_after(conn, None))
    gone = set(first_block.stamps) | set(random.Random(3).sample(stamps, 100))
    with store.writing() as w:
        assert retention.drop_versions(w, gone | {START}) == len(gone)
    with store.engine.connect() as conn:
        found = notifications.versions_by_stamp(conn, stamps)
        lasts = [b.last for b in notifications.version_blocks_after(conn, None)]
        used = retention.evidence_used_since(conn, 10**9, stamps[0] - 1)
        owners = retention.notifications_with_evidence(conn, [7])
    assert set(found) == set(stamps) - gone
    assert first_block.last not in lasts, "an emptied block is deleted"
    assert used == {7}
    assert owners == {rows[s][1] for s in set(stamps) - gone if rows[s][9] == 7}


def test_chains_walked_side_by_side_are_the_chains_walked_one_by_one(store: Store) -> None:
    """notifications.version_chains (retention: 500 notifications at a time) against
    version_chain, on chains of one to six versions whose stamps interleave across blocks."""
    rng = random.Random(11)
    rows, previous = [], {}
    stamp = START
    for _ in range(400):
        stamp += rng.choice([1, 2, 900]) * SLOTS
        pk = rng.randrange(1, 80)
        if len([r for r in rows if r[1] == pk]) == 6:
            continue
        before = previous.get(pk)
        rows.append((stamp, pk, before, 1, stamp // 1000, None, 0, 1, None, None, (pk % 3 + 1,), 1))
        previous[pk] = stamp
    with store.writing() as w:
        notifications.add_versions(w, rows)
    with store.engine.connect() as conn:
        known: dict[int, Any] = {}
        chains = notifications.version_chains(conn, previous.values(), known)
        assert chains == {latest: notifications.version_chain(conn, latest) for latest in previous.values()}
        assert sorted(known) == sorted(row[0] for row in rows)
        assert sorted(len(chain) for chain in chains.values())[-1] == 6
        assert all(
            [v.stamp for v in chain]
            == sorted((r[0] for r in rows if r[1] == chain[0].notification), reverse=True)
            for chain in chains.values()
        )
        with pytest.raises(LookupError):
            notifications.version_chains(conn, [rows[-1][0] + SLOTS])
