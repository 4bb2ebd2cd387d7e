"""The bulk write path of ingest, on SQLite and PostgreSQL: batches in one transaction, rows
inserted without a look-up where the notification owns them, commits by count and by time.

Whatever the batching, the store must keep its invariants: in each collection exactly one
latest version per object and it is the highest, date_added unique, and a failed run records
only what was committed.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from connector.store import notifications as notifications_sql
from tests.conftest import SAMPLE_CONFIG, _drop_pg_database, _fresh_pg_database
from tests.record_view import every_version, notification_rows

PARTNER = "shadowserver"
HEADER = ["timestamp", "ip", "protocol", "port", "hostname", "tag", "asn", "geo"]


@pytest.fixture(scope="module")
def sample_config() -> Config:
    """The example deployment plus a partner that may deliver Shadowserver reports."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["partners"].append({"id": PARTNER, "name": "Shadowserver", "default_tlp": "amber"})
    return parse_config(raw, source=str(SAMPLE_CONFIG))


def report(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    """A scan_http report of (timestamp, ip, port) rows."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for moment, ip, port in rows:
            writer.writerow([moment, ip, "tcp", port, "", "http", "64500", "NL"])
    return path


def invariants(store: Store) -> list[str]:
    """Every way a collection can be wrong as TAXII serves it, as readable lines (none: fine):
    a date_added given twice, an object without exactly one latest version, or whose latest is
    not its highest."""
    problems = []
    view = CollectionView(store)
    for collection in store.collection_numbers():
        every = view.page(collection, after=None, limit=1_000_000, versions=VersionFilter(all=True))
        latest = view.page(collection, after=None, limit=1_000_000)
        stamps = Counter(m.date_added for m in every)
        problems += [f"date_added {d} used {n} times" for d, n in stamps.items() if n > 1]
        if [m.date_added for m in every] != sorted(stamps):
            problems.append(f"{collection}: not in date_added order")
        versions: dict[str, list[str]] = {}
        for m in every:
            versions.setdefault(m.stix_id, []).append(m.version)
        current: dict[str, list[str]] = {}
        for m in latest:
            current.setdefault(m.stix_id, []).append(m.version)
        for stix_id, held in versions.items():
            if len(current.get(stix_id, [])) != 1:
                problems.append(f"{collection} {stix_id}: {len(current.get(stix_id, []))} latest versions")
            elif current[stix_id][0] != max(held):
                problems.append(f"{collection} {stix_id}: latest is not the highest version")
    return problems


def fixed_clock() -> datetime:
    """Every batch at the same instant: each new version must still get a later `modified`."""
    return datetime(2024, 7, 1, tzinfo=UTC)


def ingestor(store: Store, config: Config, mappings: Any, **sizes: Any) -> Ingestor:
    return Ingestor(config, store, mappings, fixed_clock, **sizes)


def test_batches_in_one_transaction_keep_the_invariants(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path
) -> None:
    """The same occurrence in several batches of one open transaction, seen again later with a
    fixed clock, a version deleted through TAXII and then a newer observation: one latest each."""
    rows = [(f"2024-06-01 10:00:{i:02d}", f"192.0.2.{16 + i % 8}", 443) for i in range(40)]
    first = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    bulk = ingestor(store, sample_config, mappings, batch_size=3, commit_every=10**6, commit_seconds=10**6)
    summary = bulk.run(PARTNER, "shadowserver", [first])
    assert summary.counts["new"] == 8 and summary.counts["updated"] > 0
    assert invariants(store) == []

    # The hospital's sightings go to it and to Z-CERT: delete one's latest version from Z-CERT.
    zcert = recipient_collection_id("zcert")
    sighting = next(
        m.stix_id
        for m in CollectionView(store).page(zcert, after=None, limit=1000)
        if m.stix_id.startswith("sighting--")
    )
    assert CollectionView(store).remove(zcert, sighting, VersionFilter()) == 1
    assert invariants(store) == []

    later = report(tmp_path / "2024-06-01-scan_http-later.csv", [("2024-06-01 23:00:00", "192.0.2.16", 443)])
    ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [later])
    assert invariants(store) == []
    versions = [
        m for m in CollectionView(store).page(zcert, after=None, limit=1000, versions=VersionFilter(all=True))
    ]
    assert len({m.version for m in versions if m.stix_id == sighting}) >= 2


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per write transaction the store opens from here on."""
    opened: list[None] = []
    writing = Store.writing

    @contextmanager
    def counted(self: Store) -> Iterator[Any]:
        opened.append(None)
        with writing(self) as writer:
            yield writer

    monkeypatch.setattr(Store, "writing", counted)
    return opened


def test_a_file_of_faults_does_not_hold_the_write_lock_for_its_whole_length(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, transactions: list[None]
) -> None:
    rows = [("not a time", "192.0.2.10", 443)] * 3000
    faulty = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    summary = ingestor(store, sample_config, mappings, batch_size=100, commit_every=200).run(
        PARTNER, "shadowserver", [faulty]
    )
    assert summary.counts["quarantined"] == 3000
    assert len(transactions) >= 3000 // 200
    assert len(store.run_rows(summary.run_id, "quarantined")) == 3000


def test_a_transaction_open_too_long_is_committed(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, transactions: list[None]
) -> None:
    rows = [(f"2024-06-01 10:00:{i % 60:02d}", f"192.0.2.{i % 120}", 1000 + i) for i in range(600)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    ingestor(store, sample_config, mappings, batch_size=100, commit_every=10**6, commit_seconds=0).run(
        PARTNER, "shadowserver", [path]
    )
    assert len(transactions) >= 6  # one per batch: each found the transaction open long enough


def break_routing_at(monkeypatch: pytest.MonkeyPatch, ing: Ingestor, call: int, error: BaseException) -> None:
    """Routing raises `error` at its `call`-th notification: a fault, or Ctrl-C, mid-run."""
    route, calls = ing.router.route, 0

    def breaking(n: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise error
        return route(n)

    monkeypatch.setattr(ing.router, "route", breaking)


def test_a_failed_run_records_what_was_committed(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(f"2024-06-01 10:00:{i % 60:02d}", f"192.0.2.{i % 120}", 1000 + i) for i in range(700)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    failing = ingestor(store, sample_config, mappings, batch_size=100, commit_every=300, commit_seconds=10**6)
    break_routing_at(monkeypatch, failing, 550, RuntimeError("routing broke"))
    with pytest.raises(RuntimeError):
        failing.run(PARTNER, "shadowserver", [path])
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM notifications")).scalar_one()
        run_id = conn.execute(text("SELECT max(id) FROM ingest_runs")).scalar_one()
    run = store.run(run_id)
    assert run is not None and run["status"] == "failed"
    assert stored == 300  # the first commit; batches 4 to 6 were rolled back
    assert run["counts"]["new"] == stored and run["counts"]["read"] == 300
    assert "rolled back" in run["error"]

    again = ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [path])
    assert (again.counts["new"], again.counts["unchanged"]) == (400, 300)
    assert invariants(store) == []


def test_an_interrupted_run_records_what_was_committed(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) mid-run: the run stayed `running` with no counts forever,
    though its first commits were in the store."""
    rows = [(f"2024-06-01 10:00:{i % 60:02d}", f"192.0.2.{i % 120}", 1000 + i) for i in range(700)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    interrupted = ingestor(
        store, sample_config, mappings, batch_size=100, commit_every=300, commit_seconds=10**6
    )
    break_routing_at(monkeypatch, interrupted, 550, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(PARTNER, "shadowserver", [path])
    with store.engine.connect() as conn:
        run_id = conn.execute(text("SELECT max(id) FROM ingest_runs")).scalar_one()
    run = store.run(run_id)
    assert run is not None and run["status"] == "failed"
    assert run["counts"]["new"] == 300 and "KeyboardInterrupt" in run["error"]
    again = ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [path])
    assert (again.counts["new"], again.counts["unchanged"]) == (400, 300)
    assert invariants(store) == []


def test_the_collector_thresholds_are_raised_during_an_ingest_and_put_back_after(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest collects the youngest generation less often while it runs (connector/ingest.py
    INGEST_GC_THRESHOLD), and gives the process its thresholds back when it ends, whether it
    succeeded or failed."""
    import gc

    from connector.ingest import INGEST_GC_THRESHOLD

    before = gc.get_threshold()
    rows = [(f"2024-06-01 10:00:{i % 60:02d}", f"192.0.2.{i % 120}", 1000 + i) for i in range(50)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    seen: list[tuple[int, int, int]] = []
    ing = ingestor(store, sample_config, mappings)
    route = ing.router.route

    def watching(n: Any) -> Any:
        seen.append(gc.get_threshold())
        return route(n)

    monkeypatch.setattr(ing.router, "route", watching)
    ing.run(PARTNER, "shadowserver", [path])
    assert seen and all(t[0] >= INGEST_GC_THRESHOLD and t[1:] == before[1:] for t in seen)
    assert gc.get_threshold() == before
    failing = ingestor(store, sample_config, mappings)
    break_routing_at(monkeypatch, failing, 3, RuntimeError("routing broke"))
    with pytest.raises(RuntimeError):
        others = [(moment, ip.replace("192.0.2.", "198.51.100."), port) for moment, ip, port in rows]
        failing.run(PARTNER, "shadowserver", [report(tmp_path / "2024-06-02-scan_http.csv", others)])
    assert gc.get_threshold() == before


def test_store_fixture_is_synced(store: Store, sample_config: Config) -> None:
    """The conftest store fixture builds on this module's configuration."""
    ids = {row.id for row in collection_rows(sample_config)}
    with store.engine.connect() as conn:
        have = {r[0] for r in conn.execute(text("SELECT id FROM collections"))}
    assert ids == have


def notification_state(store: Store) -> tuple[int, int, int, list[int]]:
    """(count, first_seen, last_seen, listed observation times), in microseconds, of the store's
    one notification."""
    [row] = notification_rows(store)
    with store.engine.connect() as conn:
        listed = conn.execute(
            text("SELECT observed_at FROM observations WHERE notification = :k ORDER BY observed_at"),
            {"k": row["pk"]},
        )
        times = [int(r[0]) * 1000 for r in listed]
    return row["count"], row["first_seen"] * 1000, row["last_seen"] * 1000, times


def seen_at(ingest: Ingestor, ip: str, hours: Iterable[int], folder: Path) -> bool:
    """Whether a report of `ip` (port 443) seen at these hours of 1 June 2024 changed its
    notification (new or a new version)."""
    hours = list(hours)
    rows = [(f"2024-06-01 {h:02d}:00:00", ip, 443) for h in hours]
    path = report(folder / f"2024-06-01-scan_http-{ip}-{'-'.join(map(str, hours))}.csv", rows)
    counts = ingest.run(PARTNER, "shadowserver", [path]).counts
    return counts["new"] + counts["updated"] > 0


@pytest.mark.parametrize("batch_size", [1, 5000])
def test_observation_times_count_once_whether_implied_or_listed(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, batch_size: int
) -> None:
    """Each version names two distinct times, its first_seen and last_seen; only the times no
    version names are listed: every step of the way, a time seen before changes nothing, and a
    new one counts exactly once."""
    us = [int(datetime(2024, 6, 1, h, tzinfo=UTC).timestamp() * 1_000_000) for h in range(24)]

    def changed(*hours: int) -> bool:
        return seen_at(
            ingestor(store, sample_config, mappings, batch_size=batch_size), "192.0.2.10", hours, tmp_path
        )

    assert changed(10)
    assert notification_state(store) == (1, us[10], us[10], [])
    assert not changed(10)
    assert changed(8, 10)  # an earlier time
    assert notification_state(store) == (2, us[8], us[10], [])
    assert not changed(10, 8)
    assert changed(9)  # between the two: listed, as no version names it
    assert notification_state(store) == (3, us[8], us[10], [us[9]])
    assert not changed(8, 9, 10)
    assert changed(9, 12, 12)  # a later time: the new version names it
    assert notification_state(store) == (4, us[8], us[12], [us[9]])
    assert not changed(10)  # between first and last, named by an earlier version
    assert changed(11, 13, 14)
    # In one batch, 13 is between the version's first and last; a row at a time, each of 13
    # and 14 is a version's last_seen.
    listed = [us[9], us[11], us[13]] if batch_size > 1 else [us[9], us[11]]
    assert notification_state(store) == (7, us[8], us[14], listed)
    assert not changed(8, 9, 10, 11, 12, 13, 14)
    assert changed(7, 11, 15)
    assert notification_state(store) == (9, us[7], us[15], listed)
    assert invariants(store) == []


_ADDRESSES = iter(range(1, 1_000_000))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=4), min_size=1, max_size=6),
    batch_size=st.sampled_from([1, 2, 5000]),
)
@example(inputs=[[0, 1, 2], [1]], batch_size=5000)  # listed in the first input
@example(inputs=[[0, 2], [1], [3], [2, 1]], batch_size=1)  # named by an earlier version
@example(inputs=[[5], [3, 9, 4], [4, 3, 9, 5]], batch_size=2)
def test_any_order_of_observation_times_counts_each_time_once(
    store: Store,
    sample_config: Config,
    mappings: Any,
    tmp_path: Path,
    inputs: list[list[int]],
    batch_size: int,
) -> None:
    """Inputs of any times in any order, each time in any number of inputs: an input changes
    the notification exactly when it brings a time not seen before, and its count is the number
    of distinct times seen, whether a time was named by a version or listed."""
    number = next(_ADDRESSES)
    ip = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"
    seen: set[int] = set()

    def ingest(hours: list[int]) -> bool:
        return seen_at(ingestor(store, sample_config, mappings, batch_size=batch_size), ip, hours, tmp_path)

    for hours in inputs:
        assert ingest(hours) == bool(set(hours) - seen), (hours, sorted(seen))
        seen |= set(hours)
        [row] = [r for r in notification_rows(store) if r["observable"].startswith(f"{ip}:")]
        assert row["count"] == len(seen)
        assert (row["first_seen"], row["last_seen"]) == (
            int(datetime(2024, 6, 1, min(seen), tzinfo=UTC).timestamp() * 1000),
            int(datetime(2024, 6, 1, max(seen), tzinfo=UTC).timestamp() * 1000),
        )
    assert not ingest(sorted(seen))


def test_a_time_ingested_again_is_looked_for_only_as_far_down_as_it_can_be(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version's first and last enclose those of the versions before it: a time is looked
    for down the chain only while a version still has it strictly inside, found or not."""
    for hour in range(0, 20, 2):  # ten versions: hours 0..0, 0..2, ..., 0..18
        assert seen_at(ingestor(store, sample_config, mappings), "192.0.2.10", [hour], tmp_path)
    read: list[int] = []
    by_stamp = notifications_sql.versions_by_stamp

    def counted(conn: Any, stamps: Any) -> Any:
        read.extend(stamps)
        return by_stamp(conn, stamps)

    monkeypatch.setattr(notifications_sql, "versions_by_stamp", counted)

    def reads(hour: int) -> tuple[bool, int]:
        """(whether the hour changed the notification, versions read)"""
        read.clear()
        return seen_at(ingestor(store, sample_config, mappings), "192.0.2.10", [hour], tmp_path), len(read)

    assert reads(16) == (False, 2)  # the latest, and the one before it, which names hour 16
    assert reads(17) == (True, 2)  # the one before it ends at 16: no earlier version names 17
    assert reads(3) == (True, 1 + 9)  # inside every range down to 0..4; 0..2 ends it
    assert reads(3) == (False, 1)  # listed now
    assert notification_state(store)[0] == 12


def test_three_times_in_one_input_are_listed_at_once(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path
) -> None:
    rows = [(f"2024-06-01 {h:02d}:00:00", "192.0.2.10", 443) for h in (3, 1, 2, 1)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [path])
    us = [int(datetime(2024, 6, 1, h, tzinfo=UTC).timestamp() * 1_000_000) for h in (1, 2, 3)]
    assert notification_state(store) == (3, us[0], us[2], [us[1]])  # the version names the others
    again = ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [path])
    assert again.counts["unchanged"] == 1 and notification_state(store)[0] == 3


def test_a_large_ingest_refreshes_postgresql_statistics(
    postgres_url: str, sample_config: Config, mappings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner must not take the tables an ingest grows for the small ones it last saw: once
    the first rows are in, and then every so many, the ingest has them analysed."""
    monkeypatch.setattr("connector.ingest.ANALYSE_FIRST", 30)
    monkeypatch.setattr("connector.ingest.ANALYSE_EVERY", 60)
    url, name = _fresh_pg_database(postgres_url)
    store = Store.open(url)
    analysed: list[None] = []
    refresh = store.refresh_statistics
    monkeypatch.setattr(store, "refresh_statistics", lambda: (analysed.append(None), refresh()))
    try:
        store.sync_collections(collection_rows(sample_config))
        rows = [("2024-06-01 10:00:00", f"192.0.2.{i}", 443) for i in range(1, 151)]
        path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
        ingestor(store, sample_config, mappings, batch_size=10, commit_every=10).run(
            PARTNER, "shadowserver", [path]
        )
        with store.engine.connect() as conn:
            # reltuples: -1 until a table is first analysed (or vacuumed), then what was counted
            seen = dict(
                conn.exec_driver_sql(
                    "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND reltuples >= 0"
                ).all()
            )
    finally:
        store.close()
        _drop_pg_database(postgres_url, name)
    assert len(analysed) == 3  # after 30, then 90 and 150 notifications
    assert {"notifications", "version_blocks", "notification_ids", "collection_shared"} <= set(seen)
    assert seen["notifications"] == 150  # analysed after the last commit, all rows in


def test_every_notification_is_counted_once_as_new_updated_unchanged_repeated_or_discarded(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path
) -> None:
    """A host twice in one report (and once more in a later batch of it) is one notification:
    the counts add up to the notifications read, whatever was merged where."""
    rows = [("2024-06-01 10:00:00", "192.0.2.10", 443), ("2024-06-01 11:00:00", "192.0.2.10", 443)]
    rows += [("2024-06-01 10:00:00", f"192.0.2.{i}", 443) for i in range(20, 30)]
    rows += [("2024-06-01 12:00:00", "192.0.2.10", 443), ("2024-06-01 10:00:00", "192.0.2.20", 443)]
    path = report(tmp_path / "2024-06-01-scan_http.csv", rows)
    for _ in range(2):
        counts = (
            ingestor(store, sample_config, mappings, batch_size=5).run(PARTNER, "shadowserver", [path]).counts
        )
        parts = ("new", "updated", "unchanged", "repeated", "discarded")
        assert sum(counts[k] for k in parts) == counts["notifications"] == len(rows), dict(counts)
    assert counts["unchanged"] + counts["repeated"] == len(rows)  # the second time: nothing new


def _versions_in_stamp_order(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return every_version(conn)


def test_a_batch_stamps_the_versions_of_one_set_of_recipients_side_by_side(
    store: Store, sample_config: Config, mappings: Any, tmp_path: Path
) -> None:
    """Hosts of four recipient sets (the hospital with Z-CERT; Z-CERT, by network and by its
    ASN; the IBD; the municipality) interleaved in the input: in stamp order each set's
    versions of a batch are one run, the first day's and a later day's, and every collection
    stays as TAXII must serve it. Stamped in input order they alternate at almost every row."""
    hosts = ["192.0.2.20", "192.0.2.100", "198.51.100.10", "198.51.100.33", "203.0.113.5"]
    for day in ("2024-06-01", "2024-06-02"):
        rows = [(f"{day} 10:{i:02d}:00", f"{hosts[i % 5][:-1]}{i // 5}", 443) for i in range(40)]
        path = report(tmp_path / f"{day}-scan_http.csv", rows)
        ingestor(store, sample_config, mappings).run(PARTNER, "shadowserver", [path])

    versions = _versions_in_stamp_order(store)
    assert len(versions) == 80
    for first_day, day in ((True, versions[:40]), (False, versions[40:])):
        assert {v.previous is None for v in day} == {first_day}
        runs = [v.recipients for i, v in enumerate(day) if i == 0 or v.recipients != day[i - 1].recipients]
        assert len(runs) == len(set(runs)) == 4, runs
    assert invariants(store) == []
