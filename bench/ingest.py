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
        [--commit-every N] [--commit-seconds S] [--database URL] [--keep DIR] [--no-second-day]
        [--by-statement]

Then the store's size after the first ingest against the input's, and a second day's report of
the same hosts with new timestamps: the rate and how much the store grew for it.

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
from sqlalchemy import Connection

from connector.adapters.engine import FileContext, MappedAdapter, RowRejected, RowSkipped
from connector.adapters.mapping import Mapping, family_mapping, load_mappings
from connector.adapters.readers import Row, RowError
from connector.adapters.registry import record_outcome
from connector.collections import collection_rows
from connector.config import Config, parse_config
from connector.ingest import BATCH_SIZE, COMMIT_EVERY, COMMIT_SECONDS, Ingestor
from connector.notification import Notification
from connector.passwords import hash_password
from connector.recording import subject_digest, subject_key
from connector.render.stix import shape
from connector.routing import Router
from connector.stix.build import NotificationState, notification_objects
from connector.stix.ids import timestamp
from connector.store import Store, Writer, deliveries, notifications

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


# What varies from host to host in a real scan_http report (../shared/data/shadowserver/
# scan_http.csv has the layout): the pools are drawn from with a seed per host, so the same host
# answers alike on every day, except in what a real server changes between two scans (its
# clock in http_date, a session cookie, a dynamic page's length).
SERVERS = [
    *(f"nginx/1.{minor}.{patch}" for minor in range(10, 26) for patch in range(0, 4)),
    *(f"Apache/2.4.{patch} ({os})" for patch in range(29, 60) for os in ("Ubuntu", "Debian", "CentOS")),
    "nginx", "Apache", "Microsoft-IIS/10.0", "Microsoft-IIS/8.5", "lighttpd", "lighttpd/1.4.59",
    "Boa/0.94.14rc21", "mini_httpd/1.30 26Oct2018", "GoAhead-Webs", "Jetty(9.4.z-SNAPSHOT)", "",
]  # fmt: skip
ANSWERS = [("200", "OK")] * 14 + [
    ("301", "Moved Permanently"), ("302", "Found"), ("401", "Unauthorized"), ("403", "Forbidden"),
    ("404", "Not Found"), ("500", "Internal Server Error"),
]  # fmt: skip
CONTENT_TYPES = ["text/html", "text/html; charset=UTF-8", "text/html; charset=utf-8", "application/json", ""]
PLACES = [
    ("NOORD-HOLLAND", "AMSTERDAM"), ("ZUID-HOLLAND", "ROTTERDAM"), ("ZUID-HOLLAND", "DEN HAAG"),
    ("UTRECHT", "UTRECHT"), ("NOORD-BRABANT", "EINDHOVEN"), ("GRONINGEN", "GRONINGEN"),
    ("GELDERLAND", "NIJMEGEN"), ("LIMBURG", "MAASTRICHT"), ("OVERIJSSEL", "ENSCHEDE"),
]  # fmt: skip
SECTORS = [(518210, 737415), (517311, 481310), (611310, 821101), (622110, 806201), (921190, 911101)]
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def write_report(
    path: Path, rows: int, recipients: int, rng: random.Random, day: int = 1, *, uniform: bool = False
) -> None:
    """`rows` rows over the constituency; the same seed gives the same hosts on any `day`.

    Rows are written as Shadowserver writes them (text quoted, numbers not) with evidence that
    varies per host as in a real report. `uniform`: every row with the same evidence and no
    quoting, as this benchmark's reports were until 2026-12-03 (to compare with figures then).
    """
    start = datetime(2024, 6, day, tzinfo=UTC)
    volatile = random.Random(day)  # what changes between two scans of the same host
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL if uniform else csv.QUOTE_NONNUMERIC)
        writer.writerow(COLUMNS)
        for i in range(rows):
            second = 10 + (i % 200) if rng.random() < 0.9 else 250  # ~10% outside every claim
            ip = f"10.{second if second < recipients else 250}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            seen = start + timedelta(seconds=i % 86_000)
            moment = seen.strftime("%Y-%m-%d %H:%M:%S")
            port = rng.choice([80, 443, 8080, 8443])
            if uniform:
                writer.writerow(
                    [
                        moment, ip, "tcp", port, f"host{i}.example.nl", "http", 64500 + i % 50, "NL",
                        "Noord-Holland", "Amsterdam", "0", "0", "HTTP/1.1", "200", "OK", "text/html",
                        "close", "", "", "nginx", "612", "", "",
                    ]
                )  # fmt: skip
                continue
            host = random.Random(ip)  # this host's answers, the same on any day
            code, reason = host.choice(ANSWERS)
            region, city = host.choice(PLACES)
            naics, sic = host.choice(SECTORS)
            dynamic = host.random() < 0.3
            length = host.randrange(100, 60_000) + (volatile.randrange(-50, 50) if dynamic else 0)
            cookie = f"PHPSESSID={volatile.getrandbits(64):016x}; path=/" if host.random() < 0.2 else ""
            clock = seen + timedelta(seconds=host.randrange(-300, 300))
            date = (
                f"{WEEKDAYS[clock.weekday()]}, {clock.day:02d} {MONTHS[clock.month - 1]} {clock.year} "
                f"{clock:%H:%M:%S} GMT"
            )
            cells = (
                [
                    moment, ip, "tcp", port, f"host-{ip.replace('.', '-')}.dynamic.example.nl", "http",
                    64500 + i % 50, "NL", region, city, naics, sic, "HTTP/1.1", int(code), reason,
                    host.choice(CONTENT_TYPES), host.choice(["close", "keep-alive", ""]),
                    'Basic realm="Router"' if host.random() < 0.05 else "", cookie, host.choice(SERVERS),
                    "" if host.random() < 0.4 else length, "chunked" if host.random() < 0.3 else "", date,
                ]
            )  # fmt: skip
            writer.writerow([None if cell == "" else cell for cell in cells])  # empty: not even quotes


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
    writer's own bookkeeping). It wraps every statement an ingest sends through SQLAlchemy
    (Connection.exec_driver_sql: the writer's helpers), what speaks to the driver directly (the
    look-ups of tuples_in, their rows fetched; the shared-object claims) and the dialect's
    commit, counting the outermost call only."""

    def __init__(self, store: Store) -> None:
        self.seconds = 0.0
        # The same seconds by statement (its first words; a table's inserts as one) and by the
        # tenth of the input the ingest was in: which statements grow with the store.
        self.by_statement: dict[str, list[float]] = {}
        self.tenth = 0
        self._depth = 0
        self._undo: list[Callable[[], None]] = []
        for name in ("insert", "many", "rows_in"):
            self._wrap(Writer, name, getattr(Writer, name))
        self._wrap(Connection, "exec_driver_sql", Connection.exec_driver_sql)
        self._wrap(notifications, "tuples_in", notifications.tuples_in)
        self._wrap(deliveries, "claim_shared", deliveries.claim_shared)  # speaks to the driver
        dialect = store._write_engine.dialect
        self._wrap(dialect, "do_commit", dialect.do_commit, instance=True)

    def _wrap(
        self, owner: object, name: str, original: Callable[..., object], instance: bool = False
    ) -> None:
        materialise = name in ("rows_in", "tuples_in")  # generators: statements run while iterated

        def timed(*args: object, **kwargs: object) -> object:
            self._depth += 1
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                return list(result) if materialise else result  # type: ignore[call-overload]
            finally:
                self._depth -= 1
                if self._depth == 0:
                    spent = time.perf_counter() - started
                    self.seconds += spent
                    tenths = self.by_statement.setdefault(_statement_label(name, args), [0.0] * 10)
                    tenths[self.tenth] += spent

        setattr(owner, name, timed)
        # An instance's attribute is taken away again; a class's or module's put back.
        self._undo.append(lambda: delattr(owner, name) if instance else setattr(owner, name, original))

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()

    def print_by_statement(self, rows: int, top: int = 10) -> None:
        print(f"the store's time by statement, µs/row over the run | in each tenth of the input (top {top}):")
        ranked = sorted(self.by_statement.items(), key=lambda item: -sum(item[1]))
        for label, tenths in ranked[:top]:
            per_tenth = " ".join(f"{seconds / (rows / 10) * 1e6:5.1f}" for seconds in tenths)
            print(f"  {sum(tenths) / rows * 1e6:5.1f} | {per_tenth} | {label}")


def _statement_label(name: str, args: tuple[object, ...]) -> str:
    """What StoreTimer files a call under: a table's inserts together, other statements by
    their first words (the look-ups' IN lists differ in length only)."""
    if name in ("claim_shared", "do_commit") or len(args) < 2:
        return name
    if name == "insert":
        return f"INSERT INTO {args[1]}"
    return " ".join(str(args[1]).split()[:8])[:80]


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
        subject_digest(subject_key(n))
        router.route(n)


def with_ids(adapter: MappedAdapter, rows: Iterator[Row], router: Router, now: str) -> None:
    """What ingest works out per notification before the store: key, routing, the ids of the
    shared objects it will render to (no STIX is built at ingest; its own ids are located and
    not stored), its evidence as JSON."""
    for n in notifications_of(adapter, rows):
        subject_digest(subject_key(n))
        router.route(n)
        shape(n, with_own=False)
        orjson.dumps(n.evidence)


Stage = Callable[[MappedAdapter, Iterator[Row], Router, str], None]
STAGES: list[tuple[str, Stage]] = [
    ("read", read_only),
    ("+ mapping", mapped),
    ("+ key and routing", keyed_and_routed),
    ("+ ids and evidence", with_ids),
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
        f"room at the {TARGET_RATE:,} rows/s target: {budget:.1f} µs/row budget - {per_row[3]:.1f} µs/row "
        f"(stages 1-4) = at most {budget - per_row[3]:.1f} µs/row left for the store"
    )


def store_bytes(store: Store, work: Path) -> int:
    """What the store takes on disk now: the SQLite file (its WAL checkpointed into it first),
    or the PostgreSQL database's size."""
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    import sqlite3

    database = sqlite3.connect(work / "bench.db")
    database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    database.close()
    return sum(p.stat().st_size for p in work.glob("bench.db*"))


def ingest(store: Store, config: Config, mappings: dict, report: Path, args: argparse.Namespace):  # type: ignore[no-untyped-def,type-arg]
    """One timed ingest of the report: (summary, seconds, progress marks, seconds in the store,
    this process's CPU seconds). The CPU seconds are the steadier figure on a shared machine:
    other work's load stretches the wall-clock time, not them (PostgreSQL's own work is in
    other processes and not among them)."""
    marks: list[tuple[float, int]] = []  # (seconds, bytes read) after each batch
    store_time = StoreTimer(store)
    size = report.stat().st_size

    def progress(done: int) -> None:
        marks.append((time.perf_counter() - started, done))
        store_time.tenth = min(9, done * 10 // size)

    cpu = time.process_time()
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
        progress=progress,
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    store_time.close()
    return summary, elapsed, marks, store_time, cpu


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
    parser.add_argument("--keep", type=Path, help="keep the reports and database in this directory")
    parser.add_argument("--no-second-day", action="store_true", help="skip the second day's report")
    parser.add_argument(
        "--by-statement",
        action="store_true",
        help="after each ingest, the store's time by statement and by tenth of the input",
    )
    parser.add_argument(
        "--uniform-evidence",
        action="store_true",
        help="every row with the same evidence, unquoted (the reports of figures before 2026-12-03)",
    )
    args = parser.parse_args()
    if args.stage_rows < 1:
        parser.error("--stage-rows must be at least 1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="meldpunt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = work / "2024-06-01-scan_http-nl.csv"
    started = time.perf_counter()
    write_report(report, args.rows, args.recipients, random.Random(7), uniform=args.uniform_evidence)
    size = report.stat().st_size
    print(f"generated {args.rows:,} rows ({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")

    config = make_config(args.recipients)
    mappings = load_mappings()
    store = Store.open(args.database or f"sqlite:///{work / 'bench.db'}")
    print(f"store: {store.dialect}")
    store.sync_collections(collection_rows(config))
    empty = store_bytes(store, work)
    summary, elapsed, marks, timer, cpu = ingest(store, config, mappings, report, args)
    in_store_s = timer.seconds
    rate = args.rows / elapsed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first_size = store_bytes(store, work) - empty
    print(f"end to end: {args.rows:,} rows in {elapsed:.1f} s = {rate:,.0f} rows/s; peak RSS {peak:.0f} MiB")
    print(
        f"this process's CPU time: {cpu:.1f} s = {args.rows / cpu:,.0f} rows per CPU-second "
        "(steadier than the wall clock on a shared machine"
        + ("; PostgreSQL's own work is not in it)" if store.dialect == "postgresql" else ")")
    )
    print("counts:", json.dumps({k: summary.counts[k] for k in sorted(summary.counts)}))
    print("as the store grows:", growth(marks, size, args.rows))
    per_row, in_store = elapsed / args.rows * 1e6, in_store_s / args.rows * 1e6
    print(
        f"of the {per_row:.1f} µs/row: {in_store:.1f} in the store's statements and commits "
        f"({in_store_s / elapsed:.0%}), {per_row - in_store:.1f} in Python; the "
        f"{TARGET_RATE:,} rows/s target allows {1e6 / TARGET_RATE:.0f} µs/row for both together"
    )
    print(
        f"store size after the first ingest: {first_size / 2**20:.1f} MiB = {first_size / size:.2f}x "
        f"the input's {size / 2**20:.1f} MiB (target: at most 2x)"
    )
    if args.by_statement:
        timer.print_by_statement(args.rows)
    second_growth = None
    if not args.no_second_day:
        day2 = work / "2024-06-02-scan_http-nl.csv"
        # same hosts, next day
        write_report(day2, args.rows, args.recipients, random.Random(7), day=2, uniform=args.uniform_evidence)
        summary2, elapsed2, _marks, timer2, cpu2 = ingest(store, config, mappings, day2, args)
        second_growth = store_bytes(store, work) - empty - first_size
        size2 = day2.stat().st_size
        print(
            f"second day (same hosts, new timestamps): {args.rows / elapsed2:,.0f} rows/s "
            f"({args.rows / cpu2:,.0f} per CPU-second); "
            f"new {summary2.counts['new']:,}, updated {summary2.counts['updated']:,}; the store grew by "
            f"{second_growth / 2**20:.1f} MiB = {second_growth / size2:.2f}x its {size2 / 2**20:.1f} MiB "
            "(target: at most 0.3x)"
        )
        if args.by_statement:
            timer2.print_by_statement(args.rows)
        second_growth = second_growth / size2

    # STIX for the same rows: ours (rendered, as a TAXII read does) and the naive way.
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
            [orjson.dumps(o) for o in notification_objects(n, state)]
    ours = len(sample) / (time.perf_counter() - started)
    started = time.perf_counter()
    for record in sample:
        naive_objects(record.data)
    naive = len(sample) / (time.perf_counter() - started)
    print(
        f"STIX rendering on {len(sample):,} rows: ours {ours:,.0f} rows/s, stix2 classes {naive:,.0f} rows/s "
        f"= {ours / naive:.1f}x; end-to-end ingest vs naive building alone = {rate / naive:.1f}x"
    )
    target = 20_000 if store.dialect == "sqlite" else 10_000
    verdicts = [
        f">= {target:,} rows/s end to end: {'met' if rate >= target else 'NOT met'}",
        f">= 10x naive: {'met' if rate / naive >= 10 else 'NOT met'}",
        f"< 300 MB peak: {'met' if peak < 300 else 'NOT met'}",
        f"store <= 2x input: {'met' if first_size <= 2 * size else 'NOT met'}",
    ]
    if second_growth is not None:
        verdicts.append(f"second day <= 0.3x: {'met' if second_growth <= 0.3 else 'NOT met'}")
    print("targets: " + "; ".join(verdicts))
    stage_rows = min(args.stage_rows, args.rows)  # the report has exactly args.rows rows
    print_stages(report, stage_rows, mapping, config, elapsed / args.rows * 1e6)
    store.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
