"""Ingest benchmark: a Shadowserver-style scan_http report of N rows, end to end on SQLite.

Generates the report over a generated constituency (recipients owning /16s, some rows outside
every claim), ingests it with the real pipeline (parse, mapping, STIX, routing, store) and
prints rows per second and peak memory. In the same run it builds the objects of a sample of
rows the naive way, with the stix2 library's classes, and prints the ratio.

Last, it says where the per-row time goes: the report's first rows (--stage-rows) go through the
pure-Python stages without the store, each stage a separate pass doing also the stages before it
(read; + mapping; + key and routing; + STIX). Set against the end-to-end figure, that gives the
share of the time the store part takes (batching, look-ups, SQLite writes), and what room the
20,000 rows/s target (50 µs/row) leaves once rows are read, mapped and routed: whether to look
for speed in Python or in the store.

    python bench/ingest.py [--rows 1000000] [--sample 2000] [--stage-rows 100000] [--batch-size N]
        [--commit-every N] [--commit-seconds S] [--database URL] [--keep DIR] [--compact]

--compact also times, on the same rows, a prototype of the redesign the README's design section
discusses (one compact row per notification, STIX rendered when read): the floor of that design.

--database runs the same ingest on another store, an empty PostgreSQL database for instance
(postgresql+psycopg://user@127.0.0.1:5432/bench); the default is a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import orjson
import stix2

from connector.adapters.engine import FileContext, MappedAdapter, RowRejected, RowSkipped
from connector.adapters.mapping import Mapping, family_mapping, load_mappings
from connector.adapters.readers import Row, RowError
from connector.adapters.registry import record_outcome
from connector.collections import collection_rows
from connector.config import Config, parse_config
from connector.ingest import BATCH_SIZE, COMMIT_EVERY, COMMIT_SECONDS, Ingestor, notification_key
from connector.notification import Notification
from connector.passwords import hash_password
from connector.routing import Router
from connector.stix.build import NotificationState, notification_objects, notification_objects_and_own_ids
from connector.stix.ids import timestamp
from connector.store import Store
from connector.store.store import Writer

COLUMNS = [
    "timestamp",
    "ip",
    "protocol",
    "port",
    "hostname",
    "tag",
    "asn",
    "geo",
    "region",
    "city",
    "naics",
    "sic",
    "http",
    "http_code",
    "http_reason",
    "content_type",
    "connection",
    "www_authenticate",
    "set_cookie",
    "server",
    "content_length",
    "transfer_encoding",
    "http_date",
]


def make_config(recipients: int):  # type: ignore[no-untyped-def]
    return parse_config(
        {
            "partners": [{"id": "shadowserver", "name": "Shadowserver", "default_tlp": "amber"}],
            "recipients": [
                {
                    "id": f"org-{i}",
                    "name": f"Org {i}",
                    "kind": "organisation",
                    "constituency": {"networks": [f"10.{i}.0.0/16"]},
                }
                for i in range(recipients)
            ],
            "users": [{"username": "bench", "password_hash": hash_password("bench"), "recipient": "org-0"}],
        }
    )


def write_report(path: Path, rows: int, recipients: int, rng: random.Random) -> None:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(rows):
            second = 10 + (i % 200) if rng.random() < 0.9 else 250  # ~10% outside every claim
            ip = f"10.{second if second < recipients else 250}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            moment = (start + timedelta(seconds=i % 86_000)).strftime("%Y-%m-%d %H:%M:%S")
            writer.writerow(
                [
                    moment,
                    ip,
                    "tcp",
                    rng.choice([80, 443, 8080, 8443]),
                    f"host{i}.example.nl",
                    "http",
                    64500 + i % 50,
                    "NL",
                    "Noord-Holland",
                    "Amsterdam",
                    "0",
                    "0",
                    "HTTP/1.1",
                    "200",
                    "OK",
                    "text/html",
                    "close",
                    "",
                    "",
                    "nginx",
                    "612",
                    "",
                    "",
                ]
            )


def naive_objects(record: dict[str, str]) -> list[str]:
    """One row's objects through the stix2 library's classes (validation and all)."""
    ip = stix2.IPv4Address(value=record["ip"])
    traffic = stix2.NetworkTraffic(dst_ref=ip.id, dst_port=int(record["port"]), protocols=["tcp"])
    seen = datetime.strptime(record["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    observed = stix2.ObservedData(
        first_observed=seen, last_observed=seen, number_observed=1, object_refs=[ip.id, traffic.id]
    )
    vuln = stix2.Vulnerability(name="open-http")
    sighting = stix2.Sighting(
        sighting_of_ref=vuln.id, observed_data_refs=[observed.id], first_seen=seen, last_seen=seen, count=1
    )
    return [o.serialize() for o in (ip, traffic, observed, vuln, sighting)]


def growth(marks: list[tuple[float, int]], size: int, rows: int) -> str:
    """Rows per second in each tenth of the input (by bytes read, rows being of one size); the
    tenth that ends with the last batch ends with the final commit. "-": the tenth ended inside
    the same batch as the one before (a small input), so it has no time of its own."""
    last = len(marks) - 1
    ends = [
        next((i for i, (_, done) in enumerate(marks) if done >= size * k / 10), last) for k in range(1, 11)
    ]
    rates, before, at = [], -1, 0.0
    for end in ends:
        if end == before:
            rates.append("-")
            continue
        moment = marks[last][0] if end == ends[-1] else marks[end][0]
        rates.append(f"{rows / 10 / (moment - at):,.0f}")
        before, at = end, moment
    return " | ".join(rates) + " rows/s"


TARGET_RATE = 20_000  # rows/s end to end


class StoreTimer:
    """Seconds an ingest spends inside the store's statements and commits, measured in the same
    run as the end-to-end figure: what is left is Python (reading, mapping, routing, STIX, the
    writer's own bookkeeping). It wraps the writer's statement helpers (the outermost call only:
    `_insert` calls `_many` on SQLite) and the dialect's commit; the few other statements an
    ingest makes (the run's own rows, the clock) are not counted, so the share is a floor."""

    def __init__(self, store: Store) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._undo: list[Callable[[], None]] = []
        for name in ("_insert", "_many", "_rows_in"):
            self._wrap(Writer, name, getattr(Writer, name))
        dialect = store._write_engine.dialect
        self._wrap(dialect, "do_commit", dialect.do_commit)

    def _wrap(self, owner: object, name: str, original: Callable[..., object]) -> None:
        materialise = name == "_rows_in"  # a generator: its statements run while it is iterated

        def timed(*args: object, **kwargs: object) -> object:
            self._depth += 1
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                return list(result) if materialise else result  # type: ignore[call-overload]
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - started

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original) if owner is Writer else delattr(owner, name))

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()


def notifications_of(adapter: MappedAdapter, rows: Iterable[Row]) -> Iterator[Notification]:
    """Stage 2, mapping: each row's notifications, as the pipeline takes them (rows it would
    skip or quarantine give none)."""
    for row in rows:
        if isinstance(row, RowError):
            continue
        try:
            outcome = record_outcome(adapter, row)
        except (RowSkipped, RowRejected):
            continue
        yield from outcome.notifications


def read_only(adapter: MappedAdapter, rows: Iterator[Row], router: Router, now: str) -> None:
    deque(rows, maxlen=0)  # the reader alone: nothing done per row


def mapped(adapter: MappedAdapter, rows: Iterator[Row], router: Router, now: str) -> None:
    deque(notifications_of(adapter, rows), maxlen=0)


def keyed_and_routed(adapter: MappedAdapter, rows: Iterator[Row], router: Router, now: str) -> None:
    for n in notifications_of(adapter, rows):
        notification_key(n)
        router.route(n)


def with_stix(adapter: MappedAdapter, rows: Iterator[Row], router: Router, now: str) -> None:
    for n in notifications_of(adapter, rows):
        notification_key(n)
        router.route(n)
        first = timestamp(n.observed_at)
        objects, _ = notification_objects_and_own_ids(n, NotificationState(first, first, 1, now, now))
        for obj in objects:
            orjson.dumps(obj)  # as the pipeline does


Stage = Callable[[MappedAdapter, Iterator[Row], Router, str], None]
STAGES: list[tuple[str, Stage]] = [
    ("read", read_only),
    ("+ mapping", mapped),
    ("+ key and routing", keyed_and_routed),
    ("+ STIX", with_stix),
]


def stage_seconds(stage: Stage, report: Path, rows: int, mapping: Mapping, config: Config) -> float:
    """One full pass of `stage` over the report's first `rows` rows, with a fresh adapter as the
    pipeline makes one per file; setting up (adapter, router, opening the file) is not timed."""
    partner = config.partner("shadowserver")
    adapter = MappedAdapter(mapping, partner.id, FileContext({}), report.name, partner.default_tlp)
    router = Router(config)
    now = timestamp(datetime.now(UTC))
    with report.open("rb") as stream:
        started = time.perf_counter()
        stage(adapter, islice(adapter.rows(stream), rows), router, now)
        return time.perf_counter() - started


def print_stages(report: Path, rows: int, mapping: Mapping, config: Config, end_to_end_us: float) -> None:
    """Per-row time of the Python stages (cumulative, each a separate pass), the store's share of
    the end-to-end time, and the room the target leaves after reading, mapping and routing."""
    print(
        f"Python stages without the store, first {rows:,} rows, each stage one pass "
        "(cumulative; in brackets, what the stage adds):"
    )
    per_row: list[float] = []
    for number, (name, stage) in enumerate(STAGES, start=1):
        seconds = stage_seconds(stage, report, rows, mapping, config)
        per_row.append(seconds / rows * 1e6)
        own = f" (+{per_row[-1] - per_row[-2]:.1f})" if number > 1 else ""
        print(f"  {number}. {name:<18} {rows / seconds:>11,.0f} rows/s {per_row[-1]:>7.1f} µs/row{own}")
    python_us = per_row[-1]
    print(
        f"store share of end-to-end time: 1 - {python_us:.1f} µs/row (stages 1-4, "
        f"{1e6 / python_us:,.0f} rows/s) / {end_to_end_us:.1f} µs/row (end to end, "
        f"{1e6 / end_to_end_us:,.0f} rows/s) = {1 - python_us / end_to_end_us:.0%} "
        "(batching, look-ups, the store's writes)"
    )
    budget = 1e6 / TARGET_RATE
    print(
        f"room at the {TARGET_RATE:,} rows/s target: {budget:.1f} µs/row budget - {per_row[2]:.1f} µs/row "
        f"(stages 1-3) = at most {budget - per_row[2]:.1f} µs/row left for STIX and the store"
    )


# Rows appended in arrival order (rowid), looked up by a 16-byte binary key: with the natural
# key's 64-character hex as a WITHOUT ROWID primary key the same prototype ran at 12-13,000
# rows/s at 1,000,000 rows, the wide rows going in at random places.
COMPACT_SCHEMA = """
CREATE TABLE notifications (pk INTEGER PRIMARY KEY, key BLOB NOT NULL, partner TEXT, feed TEXT,
    classification TEXT, identifier TEXT, observable TEXT, day TEXT, tlp TEXT, first_seen INTEGER,
    last_seen INTEGER, count INTEGER, evidence TEXT, recipients TEXT);
CREATE UNIQUE INDEX notifications_key ON notifications (key);
CREATE TABLE members (date_added INTEGER PRIMARY KEY, collection_id TEXT, notification_pk INTEGER);
CREATE INDEX members_page ON members (collection_id, date_added);
"""


def compact_floor(report: Path, rows: int, mapping: Mapping, config: Config, work: Path) -> float:
    """Seconds for the redesign the README's design section discusses, as a prototype: rows
    read, mapped, keyed and routed as now (stages 1-3), then stored as one compact row per
    notification plus one membership row per recipient, with no STIX built or stored at
    ingest (TAXII would render it when read). Same SQLite settings and batching as the store.
    A floor for that design on this machine, not a product path: no look-up of what is
    stored already (a notification seen again only counts up, and its new membership rows
    point at a number it did not get), no versions, no observation times."""
    import sqlite3

    path = work / "compact.db"
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536", "wal_autocheckpoint=10000"):
        db.execute(f"PRAGMA {pragma}")
    db.executescript(COMPACT_SCHEMA)
    partner = config.partner("shadowserver")
    adapter = MappedAdapter(mapping, partner.id, FileContext({}), report.name, partner.default_tlp)
    router = Router(config)
    batch: list[tuple[object, ...]] = []
    members: list[tuple[object, ...]] = []
    clock = 0
    insert = (
        "INSERT INTO notifications VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE "
        "SET count = count + 1, last_seen = max(last_seen, excluded.last_seen)"  # seen again
    )
    with report.open("rb") as stream:
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for done, n in enumerate(notifications_of(adapter, islice(adapter.rows(stream), rows)), start=1):
            key = bytes.fromhex(notification_key(n))[:16]
            recipients = router.route(n).recipients
            seen = int(n.observed_at.timestamp() * 1e6)
            c = n.classification
            evidence, routed = orjson.dumps(n.evidence).decode(), orjson.dumps(recipients).decode()
            kind = f"{c.taxonomy}/{c.type}"
            batch.append(
                (done, key, n.partner, n.feed, kind, c.identifier, n.observable, n.day, n.tlp,
                 seen, seen, 1, evidence, routed)
            )  # fmt: skip
            for rid in recipients:
                clock += 1
                members.append((clock, rid, done))
            if len(batch) >= BATCH_SIZE:
                db.executemany(insert, batch)
                db.executemany("INSERT INTO members VALUES (?,?,?)", members)
                batch, members = [], []
                if done % COMMIT_EVERY == 0:
                    db.execute("COMMIT")
                    db.execute("BEGIN IMMEDIATE")
        db.executemany(insert, batch)
        db.executemany("INSERT INTO members VALUES (?,?,?)", members)
        db.execute("COMMIT")
        seconds = time.perf_counter() - started
    db.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=200)
    parser.add_argument("--sample", type=int, default=2000, help="rows built the naive way")
    parser.add_argument(
        "--stage-rows", type=int, default=100_000, help="rows timed stage by stage (all if fewer)"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="notifications per transaction")
    parser.add_argument("--commit-every", type=int, default=COMMIT_EVERY, help="notifications per commit")
    parser.add_argument(
        "--commit-seconds", type=float, default=COMMIT_SECONDS, help="longest a transaction stays open"
    )
    parser.add_argument("--database", help="store URL (an empty database); default: a fresh SQLite file")
    parser.add_argument("--keep", type=Path, help="keep the report and database in this directory")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="also time the compact-row redesign's floor on the same rows (a prototype, see compact_floor)",
    )
    args = parser.parse_args()
    if args.stage_rows < 1:
        parser.error("--stage-rows must be at least 1")
    rng = random.Random(7)
    work = args.keep or Path(tempfile.mkdtemp(prefix="meldpunt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = work / "2024-06-01-scan_http-nl.csv"
    started = time.perf_counter()
    write_report(report, args.rows, args.recipients, rng)
    print(
        f"generated {args.rows:,} rows ({report.stat().st_size / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - started:.1f} s"
    )

    config = make_config(args.recipients)
    mappings = load_mappings()
    store = Store.open(args.database or f"sqlite:///{work / 'bench.db'}")
    print(f"store: {store.dialect}")
    store.sync_collections(collection_rows(config))
    size = report.stat().st_size
    marks: list[tuple[float, int]] = []  # (seconds, bytes read) after each batch
    store_time = StoreTimer(store)
    started = time.perf_counter()
    summary = Ingestor(
        config,
        store,
        mappings,
        batch_size=args.batch_size,
        commit_every=args.commit_every,
        commit_seconds=args.commit_seconds,
    ).run(
        "shadowserver",
        "shadowserver",
        [report],
        progress=lambda done: marks.append((time.perf_counter() - started, done)),
    )
    elapsed = time.perf_counter() - started
    store_time.close()
    rate = args.rows / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"end to end: {args.rows:,} rows in {elapsed:.1f} s = {rate:,.0f} rows/s; peak RSS {peak:.0f} MiB")
    print("counts:", json.dumps({k: summary.counts[k] for k in sorted(summary.counts)}))
    print("as the store grows:", growth(marks, size, args.rows))
    per_row, in_store = elapsed / args.rows * 1e6, store_time.seconds / args.rows * 1e6
    print(
        f"of the {per_row:.1f} µs/row: {in_store:.1f} in the store's statements and commits "
        f"({store_time.seconds / elapsed:.0%}), {per_row - in_store:.1f} in Python; the "
        f"{TARGET_RATE:,} rows/s target allows {1e6 / TARGET_RATE:.0f} µs/row for both together"
    )

    # The same rows' STIX objects, our way (mapping + dict building + serialising) and naively.
    mapping, _ = family_mapping(mappings, "shadowserver", report.name)
    adapter = MappedAdapter(mapping, "shadowserver", FileContext({}), report.name)
    with report.open("rb") as stream:
        sample = [row for _, row in zip(range(args.sample), adapter.rows(stream), strict=False)]
    now = timestamp(datetime.now(UTC))
    started = time.perf_counter()
    for record in sample:
        for n in adapter.notifications(record):
            first = timestamp(n.observed_at)
            state = NotificationState(first, first, 1, now, now)
            [orjson.dumps(o) for o in notification_objects(n, state)]  # as the pipeline does
    ours = len(sample) / (time.perf_counter() - started)
    started = time.perf_counter()
    for record in sample:
        naive_objects(record.data)
    naive = len(sample) / (time.perf_counter() - started)
    print(
        f"STIX building on {len(sample):,} rows: ours {ours:,.0f} rows/s, stix2 classes {naive:,.0f} rows/s "
        f"= {ours / naive:.1f}x; end to end vs naive building alone = {rate / naive:.1f}x"
    )
    print(
        f"targets: >= 20,000 rows/s end to end: {'met' if rate >= 20_000 else 'NOT met'}; "
        f">= 10x naive: {'met' if rate / naive >= 10 else 'NOT met'}; "
        f"< 300 MB peak: {'met' if peak < 300 else 'NOT met'}"
    )
    stage_rows = min(args.stage_rows, args.rows)  # the report has exactly args.rows rows
    print_stages(report, stage_rows, mapping, config, elapsed / args.rows * 1e6)
    if args.compact:
        seconds = compact_floor(report, args.rows, mapping, config, work)
        print(
            f"redesign floor (prototype: stages 1-3, then one compact row per notification and one "
            f"membership row per recipient, no STIX at ingest), {args.rows:,} rows: "
            f"{args.rows / seconds:,.0f} rows/s, {seconds / args.rows * 1e6:.1f} µs/row"
        )
    store.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
