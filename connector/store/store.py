"""The store: one interface over SQLite (embedded default) and PostgreSQL (production).

Writes happen in exclusive transactions (`Store.writing()`): SQLite's BEGIN IMMEDIATE, and on
PostgreSQL a row lock on the single `clock` row. Holding that lock while assigning
`date_added` makes it strictly increase in commit order across any number of processes, which
is what lets TAXII pollers page with `added_after` without ever missing a row.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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

from connector.store import schema as t

_CHUNK = 500
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
                .where(and_(alias.c.collection_id == co.c.collection_id, alias.c.stix_id == co.c.stix_id))
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
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    return sqlite_engine("BEGIN"), sqlite_engine("BEGIN IMMEDIATE")


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
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self._write_engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()

    # --- writing --------------------------------------------------------------------------

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
        if row is None:
            return None
        out = dict(row)
        out["counts"] = json.loads(out["counts"])
        out["inputs"] = json.loads(out["inputs"])
        return out

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
        query = (
            select(co.c.date_added, so.c.body, co.c.stix_id, co.c.version)
            .select_from(co.join(so, so.c.pk == co.c.object_pk))
            .where(co.c.collection_id == collection_id)
        )
        condition = (versions or VersionFilter()).condition()
        if condition is not None:
            query = query.where(condition)
        if after is not None:
            query = query.where(co.c.date_added > after)
        if types:
            query = query.where(co.c.type.in_(list(types)))
        if ids:
            query = query.where(co.c.stix_id.in_(list(ids)))
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
        with self.writing() as writer:  # the same lock as every writer: is_latest stays exact
            conn = writer.conn
            query = select(co.c.pk).where(and_(co.c.collection_id == collection_id, co.c.stix_id == stix_id))
            if condition is not None:
                query = query.where(condition)
            pks = [r[0] for r in conn.execute(query)]
            if pks:
                conn.execute(co.delete().where(co.c.pk.in_(pks)))
                # The highest remaining version becomes the latest again.
                rest = conn.execute(
                    select(co.c.pk, co.c.version)
                    .where(and_(co.c.collection_id == collection_id, co.c.stix_id == stix_id))
                    .order_by(co.c.version.desc())
                ).all()
                if rest:
                    conn.execute(update(co).where(co.c.pk == rest[0][0]).values(is_latest=True))
        return len(pks)

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


class Writer:
    """One exclusive write transaction: the only code that assigns date_added."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        query = select(t.clock.c.last_date_added).where(t.clock.c.id == 1)
        if dialect == "postgresql":
            query = query.with_for_update()
        self._last = int(conn.execute(query).scalar_one())
        self._touched_clock = False

    def _next_date_added(self) -> int:
        self._last = max(now_us(), self._last + 1)
        self._touched_clock = True
        return self._last

    def finish(self) -> None:
        if self._touched_clock:
            self.conn.execute(update(t.clock).where(t.clock.c.id == 1).values(last_date_added=self._last))

    def _insert_ignore(self, table: Any, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self.conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)
        else:
            self.conn.execute(insert(table).prefix_with("OR IGNORE"), rows)

    # notifications

    def notification_states(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(keys)):
            rows = self.conn.execute(select(t.notifications).where(t.notifications.c.key.in_(chunk)))
            out.update({r.key: dict(r._mapping) for r in rows})
        return out

    def known_observations(self, keys: Sequence[str]) -> set[tuple[str, int]]:
        ob = t.observations
        out: set[tuple[str, int]] = set()
        for chunk in _chunks(list(keys)):
            rows = self.conn.execute(
                select(ob.c.notification_key, ob.c.observed_at).where(ob.c.notification_key.in_(chunk))
            )
            out.update((r[0], int(r[1])) for r in rows)
        return out

    def add_observations(self, rows: list[tuple[str, int]]) -> None:
        self._insert_ignore(t.observations, [{"notification_key": k, "observed_at": at} for k, at in rows])

    def save_notifications(self, new: list[dict[str, Any]], changed: list[dict[str, Any]]) -> None:
        if new:
            self.conn.execute(insert(t.notifications), new)
        for row in changed:
            key = row["key"]
            values = {k: v for k, v in row.items() if k != "key"}
            self.conn.execute(update(t.notifications).where(t.notifications.c.key == key).values(**values))

    # objects and membership

    def add_objects(self, objects: list[dict[str, Any]], bodies: list[str]) -> dict[tuple[str, str], int]:
        """Insert object versions not yet stored; return the pk of every given version."""
        keys = [(o["id"], object_version_key(o)) for o in objects]
        rows = [
            {
                "stix_id": key[0],
                "modified": key[1],
                "type": o["type"],
                "spec_version": o.get("spec_version", "2.1"),
                "body": body,
            }
            for key, o, body in zip(keys, objects, bodies, strict=True)
        ]
        self._insert_ignore(t.stix_objects, rows)
        pks: dict[tuple[str, str], int] = {}
        so = t.stix_objects
        wanted = set(keys)
        for chunk in _chunks(sorted({k[0] for k in keys})):
            for row in self.conn.execute(
                select(so.c.pk, so.c.stix_id, so.c.modified).where(so.c.stix_id.in_(chunk))
            ):
                if (row.stix_id, row.modified) in wanted:
                    pks[(row.stix_id, row.modified)] = int(row.pk)
        return pks

    def add_members(self, collection_id: str, entries: list[tuple[int, str, str, str]]) -> int:
        """Add (object_pk, stix_id, type, version) to a collection; returns how many were new.

        Keeps `is_latest` true on exactly the highest version of each object in the collection.
        """
        co = t.collection_objects
        present: set[int] = set()
        latest: dict[str, str] = {}
        ids = sorted({e[1] for e in entries})
        for chunk in _chunks(ids):
            for row in self.conn.execute(
                select(co.c.object_pk, co.c.stix_id, co.c.version, co.c.is_latest).where(
                    and_(co.c.collection_id == collection_id, co.c.stix_id.in_(chunk))
                )
            ):
                present.add(int(row.object_pk))
                if row.is_latest:
                    latest[row.stix_id] = row.version
        rows = []
        superseded: set[str] = set()
        for pk, stix_id, stix_type, version in entries:
            if pk in present:
                continue
            present.add(pk)
            current = latest.get(stix_id)
            is_latest = current is None or version > current
            if is_latest:
                if current is not None:
                    superseded.add(stix_id)
                    for row in rows:  # an older version added earlier in this batch
                        if row["stix_id"] == stix_id:
                            row["is_latest"] = False
                latest[stix_id] = version
            rows.append(
                {
                    "collection_id": collection_id,
                    "object_pk": pk,
                    "stix_id": stix_id,
                    "type": stix_type,
                    "version": version,
                    "date_added": self._next_date_added(),
                    "is_latest": is_latest,
                }
            )
        for chunk in _chunks(sorted(superseded)):
            self.conn.execute(
                update(co)
                .where(
                    and_(
                        co.c.collection_id == collection_id, co.c.stix_id.in_(chunk), co.c.is_latest.is_(True)
                    )
                )
                .values(is_latest=False)
            )
        if rows:
            self.conn.execute(insert(co), rows)
        return len(rows)


def enqueue_misp(writer: Writer, members: list[dict[str, Any]], events: dict[tuple[str, str], str]) -> None:
    """Record MISP deliveries in the outbox (inside the ingest transaction): nothing is lost."""
    writer._insert_ignore(t.misp_event_members, members)
    now = now_us()
    stamp = us_to_timestamp(now)
    rows = [
        {
            "recipient": rid,
            "event_uuid": uuid,
            "group_label": label,
            "status": "pending",
            "attempts": 0,
            "next_attempt": now,
            "last_error": None,
            "pushed_hash": None,
            "updated_at": stamp,
        }
        for (rid, uuid), label in events.items()
    ]
    writer._insert_ignore(t.misp_outbox, rows)
    ob = t.misp_outbox
    for rid, uuid in events:
        writer.conn.execute(
            update(ob)
            .where(and_(ob.c.recipient == rid, ob.c.event_uuid == uuid))
            .values(status="pending", attempts=0, next_attempt=now, updated_at=stamp)
        )
