"""The store: one interface over SQLite (embedded default) and PostgreSQL (production).

Writes happen in exclusive transactions (`Store.writing()`): SQLite's BEGIN IMMEDIATE, and on
PostgreSQL a row lock on the single `clock` row. Holding that lock while assigning
`date_added` makes it strictly increase in commit order across any number of processes, which
is what lets TAXII pollers page with `added_after` without ever missing a row.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from connector.store import schema as t

_CHUNK = 500
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock key serialising schema migration and collection sync (Store._lock_schema).
_SCHEMA_LOCK = 0x6D656C64_70756E74 >> 1  # "meldpunt", as a positive bigint


def now_us() -> int:
    return time.time_ns() // 1000


def us_to_timestamp(value: int) -> str:
    """date_added as TAXII shows it: RFC 3339 UTC with microseconds."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")  # %Y does not pad year 1


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")


def timestamp_to_us(value: str) -> int:
    """Parse an RFC 3339 timestamp (any precision) to microseconds; ValueError if malformed."""
    match = _RFC3339.match(value.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp with a time zone: {value!r}")
    day, clock_time, fraction, zone = match.groups()
    # Python parses at most 6 fraction digits; RFC 3339 and TAXII allow more.
    micro = (fraction or "").ljust(6, "0")[:6]
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{day}T{clock_time}.{micro}{zone}")
    except ValueError:
        raise ValueError(f"not a valid RFC 3339 timestamp: {value!r}") from None
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def object_version_key(obj: dict[str, Any]) -> str:
    """An object's version as stored: `modified`, else `created` (TAXII 2.1), else '' (SCOs)."""
    return version_key(obj.get("modified") or obj.get("created"))


def object_row(obj: dict[str, Any], body: str) -> tuple[str, str, str, str, str]:
    """An object version as `Writer.add_object_rows` takes it: (id, version, type, spec_version,
    its JSON body)."""
    return (obj["id"], object_version_key(obj), obj["type"], obj.get("spec_version", "2.1"), body)


class _InCollection(ColumnElement[Any]):
    """`collection_id = value`, told to SQLite's planner to be true of most rows.

    SQLite's planner has no statistics: for "these ids in this collection" it would rather walk
    the collection's whole (collection_id, date_added) index than look the ids up. Wrapped in
    likely(), the comparison no longer looks selective, so that walk is never chosen, and it
    still serves as the second column of (object_pk, collection_id): a look-up reads one row per
    version, not one per collection that holds the object (the shared reference objects are in
    every collection). PostgreSQL, whose planner has statistics, gets the plain comparison.
    """

    inherit_cache = True
    _traverse_internals = [("comparison", InternalTraversal.dp_clauseelement)]  # cache key, binds

    def __init__(self, column: Any, value: Any) -> None:
        self.comparison = column == value


@compiles(_InCollection)
def _in_collection(element: _InCollection, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.comparison, **kw))


@compiles(_InCollection, "sqlite")
def _in_collection_sqlite(element: _InCollection, compiler: Any, **kw: Any) -> str:
    return f"likely({compiler.process(element.comparison, **kw)})"


def members_with_ids(collection_id: Any, ids: Sequence[Any], table: Any = None) -> Any:
    """Condition: rows of `table` (collection_objects or an alias of it) in the collection whose
    object is one of `ids`, any version.

    collection_objects has no stix_id index of its own (see schema.py): an id is looked up in
    stix_objects' (stix_id, modified) index, and its few pks in (object_pk, collection_id)
    (see _InCollection for how SQLite is kept from walking the collection instead).
    """
    co = t.collection_objects if table is None else table
    by_id = t.stix_objects.alias("by_id")
    # Correlated to whatever encloses it (the ids may be an outer query's column), never a
    # FROM of its own: SQLAlchemy would otherwise join collection_objects in at this level.
    pks = select(by_id.c.pk).where(by_id.c.stix_id.in_(list(ids))).correlate_except(by_id)
    return and_(co.c.object_pk.in_(pks), _InCollection(co.c.collection_id, collection_id))


def version_key(modified: str | None) -> str:
    """Versions normalised to one fixed-width form, so they order correctly as text."""
    if not modified:
        return ""
    if len(modified) == 24 and modified[19] == "." and modified[23] == "Z" and modified[10] == "T":
        return modified[:23] + "000Z"  # the millisecond form this project writes: no parsing
    return us_to_timestamp(timestamp_to_us(modified))


@dataclass(frozen=True, slots=True)
class Member:
    date_added: int
    body: str
    stix_id: str
    version: str


@dataclass(frozen=True, slots=True)
class VersionFilter:
    """TAXII match[version]: any of last, first, all, and exact versions (normalised)."""

    last: bool = True
    first: bool = False
    all: bool = False
    exact: tuple[str, ...] = ()

    def condition(self) -> Any:
        if self.all:
            return None
        co = t.collection_objects
        alias = co.alias("earlier")
        parts = []
        if self.last:
            parts.append(co.c.is_latest.is_(True))
        if self.first:
            earliest = (
                select(func.min(alias.c.version))
                .where(members_with_ids(co.c.collection_id, [co.c.stix_id], alias))
                .scalar_subquery()
            )
            parts.append(co.c.version == earliest)
        if self.exact:
            parts.append(co.c.version.in_(list(self.exact)))
            # Objects without modified/created (SCOs) are versioned by when they were added.
            stamps = [timestamp_to_us(v) for v in self.exact]
            parts.append(and_(co.c.version == "", co.c.date_added.in_(stamps)))
        return or_(*parts) if parts else co.c.is_latest.is_(True)


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: str
    kind: str
    owner: str
    title: str
    description: str


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _make_engine(url: str) -> tuple[Engine, Engine]:
    """(reader, writer) engines; on SQLite the writer begins IMMEDIATE, the reader deferred."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        return engine, engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)

    def sqlite_engine(begin: str) -> Engine:
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, explicitly
            cursor = dbapi_conn.cursor()
            _set_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            if begin != "BEGIN":
                # The writer's batches touch pages all over the id indexes: a 64 MiB cache and
                # checkpoints every 40 MiB of WAL rather than 4 write each page fewer times.
                cursor.execute("PRAGMA cache_size=-65536")
                cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    return sqlite_engine("BEGIN"), sqlite_engine("BEGIN IMMEDIATE")


def _set_wal(cursor: Any, timeout: float = 60.0) -> None:
    """PRAGMA journal_mode=WAL, retried while the database is locked.

    Switching a new database file to WAL takes an exclusive lock, and SQLite answers "database
    is locked" at once instead of waiting the busy timeout: processes started together on a new
    store (an ingest and the server) would otherwise fail. Once the file is in WAL mode (it
    stays so) the pragma takes no lock and this returns at the first try."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _run(row: Any) -> dict[str, Any]:
    """An ingest_runs row with its JSON columns (counts, inputs) decoded."""
    return dict(row) | {"counts": json.loads(row["counts"]), "inputs": json.loads(row["inputs"])}


def run_migrations(conn: Connection, action: str = "upgrade", revision: str = "head") -> None:
    """Alembic `upgrade` or `downgrade` to `revision` on this connection, committed (the
    store's own migrations; env.py takes the connection handed over here)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    getattr(command, action)(cfg, revision)
    conn.commit()


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self._write_engine = _make_engine(url)
        self.dialect = self.engine.dialect.name

    @classmethod
    def open(cls, url: str) -> Store:
        store = cls(url)
        store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()
        self._write_engine.dispose()

    # --- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._write_engine.connect() as conn:
            # One transaction for the whole upgrade, begun here: Alembic then runs every step
            # in it (on SQLite too, where it would otherwise commit each step on its own and
            # read the version before taking any lock), and the lock is held to the commit.
            conn.begin()  # SQLite: BEGIN IMMEDIATE, the write lock
            self._lock_schema(conn)
            run_migrations(conn)

    def _lock_schema(self, conn: Connection) -> None:
        """PostgreSQL: take the store's schema lock for the rest of this transaction.

        Every ingest and server process migrates the store and syncs the collections when it
        opens it. Processes started together on a new (or older) database would otherwise run
        the same CREATE TABLE or insert the same collection at once, and all but one fail on a
        duplicate key (pg_type's for a table, collections_pkey for a collection). Holding this
        lock, one does the work and the others then find it done. On SQLite the writer's
        BEGIN IMMEDIATE already serialises them."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))

    # --- writing --------------------------------------------------------------------------

    def refresh_statistics(self) -> None:
        """PostgreSQL: ANALYZE the tables an ingest grows. Autovacuum gets to them only minutes
        after a large ingest has started, and until it does the planner takes the grown tables
        for the small ones it last saw: a membership check that takes 0.1 ms then walks a whole
        collection. SQLite's planner keeps no statistics (see _InCollection): nothing to do."""
        if self.dialect != "postgresql":
            return
        with self._write_engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE stix_objects, collection_objects, notifications, observations")
            conn.commit()

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        with self._write_engine.begin() as conn:
            writer = Writer(conn, self.dialect)
            yield writer
            writer.finish()

    def sync_collections(self, rows: Iterable[CollectionRow]) -> None:
        """Make the collections table match the configuration (ids are stable)."""
        wanted = {r.id: r for r in rows}
        with self._write_engine.begin() as conn:
            self._lock_schema(conn)  # other processes starting now sync the same rows
            have = {row.id for row in conn.execute(select(t.collections.c.id))}
            for row in wanted.values():
                values = {
                    "kind": row.kind,
                    "owner": row.owner,
                    "title": row.title,
                    "description": row.description,
                }
                if row.id in have:
                    conn.execute(update(t.collections).where(t.collections.c.id == row.id).values(**values))
                else:
                    conn.execute(insert(t.collections).values(id=row.id, **values))

    # --- runs -----------------------------------------------------------------------------

    def start_run(self, partner: str, fmt: str, inputs: list[str]) -> int:
        with self._write_engine.begin() as conn:
            result = conn.execute(
                insert(t.ingest_runs).values(
                    partner=partner,
                    format=fmt,
                    inputs=json.dumps(inputs),
                    started_at=us_to_timestamp(now_us()),
                    status="running",
                    counts="{}",
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
        with self._write_engine.begin() as conn:
            conn.execute(
                update(t.ingest_runs)
                .where(t.ingest_runs.c.id == run_id)
                .values(
                    finished_at=us_to_timestamp(now_us()),
                    status=status,
                    counts=json.dumps(counts, sort_keys=True),
                    error=error,
                )
            )

    def run(self, run_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.ingest_runs).where(t.ingest_runs.c.id == run_id)).mappings().first()
        return None if row is None else _run(row)

    def runs(self, limit: int) -> list[dict[str, Any]]:
        """The latest `limit` runs, newest first (counts and inputs decoded)."""
        query = select(t.ingest_runs).order_by(t.ingest_runs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_run(row) for row in conn.execute(query).mappings()]

    def mark_run_failed(self, run_id: int, reason: str) -> bool:
        """A run left `running` by a process that is gone (killed, its host lost): failed, with
        `reason`. Only a running run changes: True when it did. What the process committed
        stays; ingesting the same input again completes it."""
        ir = t.ingest_runs
        with self._write_engine.begin() as conn:
            result = conn.execute(
                update(ir)
                .where(and_(ir.c.id == run_id, ir.c.status == "running"))
                .values(finished_at=us_to_timestamp(now_us()), status="failed", error=reason)
            )
        return bool(result.rowcount)

    def run_rows(self, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(t.run_rows).where(t.run_rows.c.run_id == run_id)
        if kind:
            query = query.where(t.run_rows.c.kind == kind)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.order_by(t.run_rows.c.pk)).mappings()]

    def unrouted(self, run_id: int) -> list[dict[str, Any]]:
        query = (
            select(t.notifications)
            .where(and_(t.notifications.c.last_run == run_id, t.notifications.c.recipients == "[]"))
            .order_by(t.notifications.c.observable)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # --- reading --------------------------------------------------------------------------

    def page(
        self,
        collection_id: str,
        *,
        after: int | None,
        limit: int,
        types: Sequence[str] = (),
        ids: Sequence[str] = (),
        versions: VersionFilter | None = None,
    ) -> list[Member]:
        """Up to `limit` members with date_added > after, in date_added order (keyset)."""
        co, so = t.collection_objects, t.stix_objects
        query = select(co.c.date_added, so.c.body, co.c.stix_id, co.c.version).select_from(
            co.join(so, so.c.pk == co.c.object_pk)
        )
        if ids:
            query = query.where(members_with_ids(collection_id, ids))
        else:
            query = query.where(co.c.collection_id == collection_id)
        condition = (versions or VersionFilter()).condition()
        if condition is not None:
            query = query.where(condition)
        if after is not None:
            query = query.where(co.c.date_added > after)
        if types:
            query = query.where(co.c.type.in_(list(types)))
        query = query.order_by(co.c.date_added).limit(limit)
        with self.engine.connect() as conn:
            return [Member(*row) for row in conn.execute(query)]

    def count_members(self, collection_id: str) -> int:
        co = t.collection_objects
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(co)
                    .where(and_(co.c.collection_id == collection_id, co.c.is_latest.is_(True)))
                ).scalar_one()
            )

    def save_status(self, status: dict[str, Any], *, username: str, collection_id: str) -> None:
        with self._write_engine.begin() as conn:
            conn.execute(
                insert(t.statuses).values(
                    id=status["id"],
                    username=username,
                    collection_id=collection_id,
                    request_timestamp=status["request_timestamp"],
                    status=status["status"],
                    body=json.dumps(status),
                )
            )

    def status(self, status_id: str) -> tuple[str, dict[str, Any]] | None:
        """(username who posted, status resource) or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.statuses.c.username, t.statuses.c.body).where(t.statuses.c.id == status_id)
            ).first()
        return (row[0], json.loads(row[1])) if row else None

    def remove_members(self, collection_id: str, stix_id: str, versions: VersionFilter) -> int:
        """Take versions of an object out of a collection (the object rows stay for audit)."""
        co = t.collection_objects
        condition = versions.condition()
        member = members_with_ids(collection_id, [stix_id])
        with self.writing() as writer:  # the same lock as every writer: is_latest stays exact
            conn = writer.conn
            query = select(co.c.date_added).where(member)
            if condition is not None:
                query = query.where(condition)
            stamps = [r[0] for r in conn.execute(query)]
            if stamps:
                conn.execute(co.delete().where(co.c.date_added.in_(stamps)))
                # The highest remaining version becomes the latest again.
                rest = conn.execute(
                    select(co.c.date_added, co.c.version).where(member).order_by(co.c.version.desc())
                ).all()
                if rest:
                    conn.execute(update(co).where(co.c.date_added == rest[0][0]).values(is_latest=True))
        return len(stamps)

    def audit(
        self, *, username: str, action: str, collection_id: str | None, objects: int, status: int
    ) -> None:
        with self._write_engine.begin() as conn:
            conn.execute(
                insert(t.audit_log).values(
                    at=us_to_timestamp(now_us()),
                    username=username,
                    action=action,
                    collection_id=collection_id,
                    objects=objects,
                    status=status,
                )
            )

    def audit_entries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(t.audit_log).order_by(t.audit_log.c.pk)).mappings()]


_NOTIFICATION_COLUMNS = [c.name for c in t.notifications.columns]  # "key" first


class Writer:
    """One exclusive write transaction: the only code that assigns date_added and object pks.

    The hot paths speak SQL to the driver directly (executemany of tuples): at millions of
    rows a day SQLAlchemy's per-row parameter processing was most of the cost of an ingest.
    Holding the lock also makes it safe to number new object rows here instead of asking the
    database for each one back.
    """

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        query = select(t.clock.c.last_date_added).where(t.clock.c.id == 1)
        if dialect == "postgresql":
            query = query.with_for_update()
            # Every look-up a writer makes is by key. Within one long ingest transaction a table
            # can grow from nothing to millions of rows that no ANALYZE has seen yet, and the
            # planner, still taking it for tiny, reads all of it for each batch of keys.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        self._last = int(conn.execute(query).scalar_one())
        self._touched_clock = False
        self._last_pk: int | None = None
        self._assigned_pks = False

    def _next_date_added(self) -> int:
        self._last = max(now_us(), self._last + 1)
        self._touched_clock = True
        return self._last

    def finish(self) -> None:
        if self._touched_clock:
            self.conn.execute(update(t.clock).where(t.clock.c.id == 1).values(last_date_added=self._last))
        if self._assigned_pks and self.dialect == "postgresql":
            # Rows numbered here bypassed the sequence: move it past them for any other insert.
            self.conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('stix_objects', 'pk'), %s)", (self._last_pk,)
            )

    def _sql(self, statement: str) -> str:
        """`?` placeholders in the driver's own style (psycopg's `%s`, with a literal `%` doubled)."""
        if self.dialect == "postgresql":
            return statement.replace("%", "%%").replace("?", "%s")
        return statement

    def _many(self, statement: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """executemany. Callers hand rows sorted by the key of the table's busiest index: a
        batch then walks each b-tree once, front to back, instead of jumping about in it."""
        if not rows:
            return 0
        result = self.conn.exec_driver_sql(self._sql(statement), list(rows))
        return int(result.rowcount or 0)

    def _insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        skip_present: bool = False,
    ) -> int:
        """Insert rows; returns how many went in. `skip_present`: rows conflicting with a unique
        index are left out (they are there already) instead of failing the transaction.

        On PostgreSQL the rows go in by COPY, one stream instead of a statement per row (several
        times faster at an ingest's hundreds of thousands of rows); COPY knows no ON CONFLICT,
        so rows that may be present are copied into a temporary table of the same shape first.
        """
        if not rows:
            return 0
        names = ", ".join(columns)
        if self.dialect != "postgresql":
            conflict = " ON CONFLICT DO NOTHING" if skip_present else ""
            marks = ", ".join("?" * len(columns))
            return self._many(f"INSERT INTO {table} ({names}) VALUES ({marks}){conflict}", rows)
        target = table
        if skip_present:
            target = f"staged_{table}"
            self.conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {target} "
                f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
        driver = self.conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if not skip_present:
            return len(rows)
        result = self.conn.exec_driver_sql(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {target} ORDER BY 1 ON CONFLICT DO NOTHING"
        )
        self.conn.exec_driver_sql(f"TRUNCATE {target}")
        return int(result.rowcount or 0)

    def _rows_in(self, statement: str, values: Sequence[Any], *params: Any) -> Iterator[Any]:
        """Rows of `statement` whose `{in}` placeholder takes the values, a chunk at a time."""
        for chunk in _chunks(list(values)):
            marks = ",".join("?" * len(chunk))
            sql = self._sql(statement.replace("{in}", marks))
            yield from self.conn.exec_driver_sql(sql, (*params, *chunk))

    # notifications

    def notification_states(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        names = _NOTIFICATION_COLUMNS
        statement = f"SELECT {', '.join(names)} FROM notifications WHERE key IN ({{in}})"
        return {row[0]: dict(zip(names, row, strict=True)) for row in self._rows_in(statement, keys)}

    def known_observations(self, keys: Sequence[str]) -> set[tuple[str, int]]:
        statement = "SELECT notification_key, observed_at FROM observations WHERE notification_key IN ({in})"
        return {(row[0], int(row[1])) for row in self._rows_in(statement, keys)}

    def add_observations(self, rows: list[tuple[str, int]]) -> None:
        self._insert("observations", ("notification_key", "observed_at"), sorted(rows), skip_present=True)

    def save_notifications(self, new: list[dict[str, Any]], changed: list[dict[str, Any]]) -> None:
        names = _NOTIFICATION_COLUMNS
        if new:
            values = itemgetter(*names)
            self._insert("notifications", names, sorted((values(r) for r in new), key=itemgetter(0)))
        if changed:
            rest = [n for n in names if n != "key"]
            assignments = ", ".join(f"{n} = ?" for n in rest)
            values = itemgetter(*rest, "key")
            self._many(f"UPDATE notifications SET {assignments} WHERE key = ?", [values(r) for r in changed])

    # objects and membership

    def _allocate_pks(self, count: int) -> int:
        """The first of `count` new stix_objects pks (safe: every inserter holds the lock)."""
        if self._last_pk is None:
            found = self.conn.exec_driver_sql("SELECT max(pk) FROM stix_objects").scalar()
            self._last_pk = int(found or 0)
        first = self._last_pk + 1
        self._last_pk += count
        self._assigned_pks = True
        return first

    def add_objects(
        self,
        objects: list[dict[str, Any]],
        bodies: list[str],
        *,
        new_versions: Collection[tuple[str, str]] = (),
    ) -> dict[tuple[str, str], int]:
        """Insert object versions not yet stored; return the pk of every given version."""
        rows = [object_row(obj, body) for obj, body in zip(objects, bodies, strict=True)]
        return self.add_object_rows(rows, new_versions=new_versions)

    def add_object_rows(
        self,
        rows: Iterable[tuple[str, str, str, str, str]],
        *,
        new_versions: Collection[tuple[str, str]] = (),
    ) -> dict[tuple[str, str], int]:
        """`add_objects` for (id, version, type, spec_version, body) rows: no dicts kept around.

        `new_versions` are versions the caller knows cannot be stored yet (a notification's
        next version): they are inserted without looking them up first. Were one stored after
        all, the unique constraint refuses the insert and the whole transaction fails, loudly.
        """
        wanted: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
        for row in rows:
            wanted.setdefault((row[0], row[1]), row)
        pks: dict[tuple[str, str], int] = {}
        unknown = sorted({key[0] for key in wanted if key not in new_versions})
        statement = "SELECT pk, stix_id, modified FROM stix_objects WHERE stix_id IN ({in})"
        for pk, stix_id, modified in self._rows_in(statement, unknown):
            if (stix_id, modified) in wanted:
                pks[(stix_id, modified)] = int(pk)
        missing = [key for key in wanted if key not in pks]
        if missing:
            first = self._allocate_pks(len(missing))
            for offset, key in enumerate(missing):
                pks[key] = first + offset
            self._insert(
                "stix_objects",
                ("pk", "stix_id", "modified", "type", "spec_version", "body"),
                [(pks[key], *wanted[key]) for key in sorted(missing)],
            )
        return pks

    _MEMBER_COLUMNS = ("date_added", "collection_id", "object_pk", "stix_id", "type", "version", "is_latest")

    def add_members(
        self,
        collection_id: str,
        entries: list[tuple[int, str, str, str]],
        *,
        first_ids: Collection[str] = (),
    ) -> int:
        """Add (object_pk, stix_id, type, version) to a collection; returns how many were new.

        Keeps `is_latest` true on exactly the highest version of each object in the collection,
        and date_added in the order of `entries` (what is referenced before what refers to it).
        Two kinds of entry need no look-up first: objects without versions (SCOs: one row per
        id, so adding one again is simply ignored), and `first_ids`, objects the caller knows
        have no version in any collection yet (a new notification's sighting).
        """
        present: set[int] = set()
        latest: dict[str, str] = {}
        stored_latest: dict[str, int] = {}  # stix_id -> object_pk of its latest row in the store
        look_up = sorted({e[1] for e in entries if e[3] != "" and e[1] not in first_ids})
        # Through stix_objects' id index to the pks, then (object_pk, collection_id) for both
        # columns; SQLite is told the index (INDEXED BY; _InCollection says why it must be).
        forced = " INDEXED BY uq_collection_objects_member" if self.dialect == "sqlite" else ""
        statement = (
            f"SELECT object_pk, stix_id, version, is_latest FROM collection_objects{forced} "
            "WHERE collection_id = ? AND object_pk IN (SELECT pk FROM stix_objects WHERE stix_id IN ({in}))"
        )
        for object_pk, stix_id, version, is_latest in self._rows_in(statement, look_up, collection_id):
            present.add(int(object_pk))
            if is_latest:
                latest[stix_id] = version
                stored_latest[stix_id] = int(object_pk)
        unversioned: list[tuple[Any, ...]] = []
        rows: list[list[Any]] = []
        superseded: list[int] = []
        for pk, stix_id, stix_type, version in entries:
            if version == "":
                unversioned.append(
                    (self._next_date_added(), collection_id, pk, stix_id, stix_type, version, True)
                )
                continue
            if pk in present:
                continue
            present.add(pk)
            current = latest.get(stix_id)
            is_latest = current is None or version > current
            if is_latest:
                if stix_id in stored_latest:
                    superseded.append(stored_latest.pop(stix_id))
                elif current is not None:
                    for row in rows:  # an older version added earlier in this call
                        if row[3] == stix_id:
                            row[6] = False
                latest[stix_id] = version
            rows.append([self._next_date_added(), collection_id, pk, stix_id, stix_type, version, is_latest])
        if superseded:
            self._many(
                "UPDATE collection_objects SET is_latest = ? WHERE object_pk = ? AND collection_id = ?",
                [(False, object_pk, collection_id) for object_pk in sorted(superseded)],
            )
        # In date_added order: each of the table's indexes then grows at its end.
        added = self._insert("collection_objects", self._MEMBER_COLUMNS, unversioned, skip_present=True)
        return added + self._insert("collection_objects", self._MEMBER_COLUMNS, [tuple(r) for r in rows])


def enqueue_misp(
    writer: Writer, members: list[tuple[str, str, str]], events: dict[tuple[str, str], str]
) -> None:
    """Record MISP deliveries in the outbox (inside the ingest transaction): nothing is lost.
    `members` are (recipient, event_uuid, notification_key)."""
    member_columns = ("recipient", "event_uuid", "notification_key")
    writer._insert("misp_event_members", member_columns, sorted(members), skip_present=True)
    now = now_us()
    stamp = us_to_timestamp(now)
    columns = (
        "recipient",
        "event_uuid",
        "group_label",
        "status",
        "attempts",
        "next_attempt",
        "last_error",
        "pushed_hash",
        "updated_at",
    )
    rows = [
        (rid, uuid, label, "pending", 0, now, None, None, stamp)
        for (rid, uuid), label in sorted(events.items())
    ]
    writer._insert("misp_outbox", columns, rows, skip_present=True)
    ob = t.misp_outbox
    for rid, uuid in sorted(events):  # one lock order for every writer of the outbox: no deadlock
        writer.conn.execute(
            update(ob)
            .where(and_(ob.c.recipient == rid, ob.c.event_uuid == uuid))
            .values(status="pending", attempts=0, next_attempt=now, updated_at=stamp)
        )
