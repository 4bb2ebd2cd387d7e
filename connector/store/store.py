"""The store: one interface over SQLite (embedded default) and PostgreSQL (production).

Every SQL statement of the product lives in this package, split by table group (notifications,
deliveries, objects, runs, outbox, audit); this class opens the databases, hands out write
transactions (Writer) and read snapshots (Reader), and keeps the few operations that are one
statement each.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from connector.store import (
    audit,
    audit_search,
    deliveries,
    feed,
    jobs,
    maintenance,
    notifications,
    objects,
    observe,
    outbox,
    runs,
    settings,
    states,
)
from connector.store import schema as t
from connector.store.engine import head_revision, lock_schema, make_engines, run_migrations
from connector.store.records import EvidenceKey, Kind, NotificationRecord, VersionRecord
from connector.store.times import now_us
from connector.store.writer import Writer


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: str
    kind: str
    owner: str
    title: str
    description: str


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self._write_engine = make_engines(url)
        self.dialect = self.engine.dialect.name
        self._numbers: dict[str, int] = {}
        self._numbers_lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> Store:
        store = cls(url)
        store.migrate()
        return store

    def close(self) -> None:
        self.engine.dispose()
        self._write_engine.dispose()

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._write_engine.connect() as conn:
            # One transaction for the whole upgrade, begun here: Alembic then runs every step
            # in it (on SQLite too, where it would otherwise commit each step on its own and
            # read the version before taking any lock), and the lock is held to the commit.
            conn.begin()  # SQLite: BEGIN IMMEDIATE, the write lock
            lock_schema(conn)
            run_migrations(conn)

    def revision(self) -> str | None:
        """The migration the database is at (None: not a store yet)."""
        with self.engine.connect() as conn:
            try:
                return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            except Exception:
                return None

    @staticmethod
    def head() -> str:
        return head_revision()

    def schema_state(self) -> maintenance.SchemaState:
        """Where the schema stands against this code's migrations, without migrating."""
        return maintenance.schema_state(self.engine)

    def readiness(self) -> str | None:
        """None when the store answers and needs no migration; else why not (for /readyz)."""
        return maintenance.readiness(self.engine)

    def backup(self, target: Path) -> int:
        """An online copy of a SQLite store (MaintenanceError for PostgreSQL: pg_dump)."""
        return maintenance.backup_sqlite(self.url, target)

    def checkpoint(self) -> None:
        """SQLite: the write-ahead log moved into the file and emptied (after removing personal
        data, so it does not linger in old log frames). Nothing to do on PostgreSQL."""
        if self.dialect == "sqlite":
            raw = self._write_engine.raw_connection()  # outside any transaction, as the pragma needs
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
            finally:
                raw.close()

    def refresh_statistics(self) -> None:
        """PostgreSQL: ANALYZE the tables an ingest grows. Autovacuum gets to them only minutes
        after a large ingest has started, and until it does the planner takes the grown tables
        for the small ones it last saw. SQLite's planner keeps no statistics: nothing to do."""
        if self.dialect != "postgresql":
            return
        with self._write_engine.connect() as conn:
            conn.exec_driver_sql(
                "ANALYZE notifications, notification_heads, version_blocks, notification_ids, "
                "collection_shared, delivery_blocks, evidence, observations"
            )
            conn.commit()

    # --- transactions --------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        with self._write_engine.begin() as conn:
            writer = Writer(conn)
            yield writer
            writer.finish()

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """A consistent snapshot for several reads (one TAXII page, one MISP event)."""
        with self.engine.connect() as conn, conn.begin():
            yield Reader(conn)

    # --- collections ---------------------------------------------------------------------------

    def sync_collections(self, rows: Iterable[CollectionRow]) -> None:
        """Make the collections table match the configuration (ids and numbers are stable)."""
        wanted = {r.id: r for r in rows}
        with self._write_engine.begin() as conn:
            lock_schema(conn)  # other processes starting now sync the same rows
            have = {
                row.id: row.number for row in conn.execute(select(t.collections.c.id, t.collections.c.number))
            }
            following = max(have.values(), default=0) + 1
            for row in wanted.values():
                values = {
                    "kind": row.kind,
                    "owner": row.owner,
                    "title": row.title,
                    "description": row.description,
                }
                if row.id in have:
                    conn.execute(t.collections.update().where(t.collections.c.id == row.id).values(**values))
                else:
                    conn.execute(t.collections.insert().values(id=row.id, number=following, **values))
                    following += 1
        self._numbers.clear()

    def collection_numbers(self) -> dict[str, int]:
        """Collection id -> its number (the short key of the delivery tables)."""
        with self._numbers_lock:
            if not self._numbers:
                with self.engine.connect() as conn:
                    self._numbers = dict(
                        conn.execute(select(t.collections.c.id, t.collections.c.number)).all()
                    )
            return self._numbers

    def collection_owners(self) -> dict[int, str]:
        """Collection number -> its owner (recipient or partner id)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(t.collections.c.number, t.collections.c.owner)).all())

    def collection_number(self, collection_id: str) -> int | None:
        found = self.collection_numbers().get(collection_id)
        if found is None:
            self._numbers.clear()  # another process may have synced it since
            found = self.collection_numbers().get(collection_id)
        return found

    # --- stored objects ---------------------------------------------------------------------------

    def store_objects(
        self, collection_id: str, items: list[dict[str, Any]], bodies: list[str] | None = None
    ) -> int:
        """Store STIX objects verbatim and add them to a collection (in this order); returns how
        many memberships are new. `bodies`: their JSON as it is to be served (default: as given)."""
        import orjson

        number = self.collection_number(collection_id)
        if number is None:
            raise KeyError(f"no collection {collection_id}")
        texts = bodies if bodies is not None else [orjson.dumps(o).decode() for o in items]
        with self.writing() as w:
            pks = objects.add_object_rows(
                w, [objects.object_row(o, b) for o, b in zip(items, texts, strict=True)]
            )
            entries = [
                (
                    pks[(o["id"], objects.object_version_key(o))],
                    o["id"],
                    o["type"],
                    objects.object_version_key(o),
                )
                for o in items
            ]
            return objects.add_members(w, collection_id, number, entries)

    # --- the record ------------------------------------------------------------------------------

    def iter_notifications(
        self, batch: int = 1000
    ) -> Iterator[tuple[NotificationRecord, VersionRecord, Kind]]:
        """Every notification with its latest version and that version's kind, in pk order."""
        after = 0
        while True:
            with self.reading() as reader:
                found = notifications.notifications_after(reader.conn, after, batch)
                versions = reader.versions([n.latest for n in found])
                kinds = reader.kinds({versions[n.latest].kind_of(n) for n in found})
            for n in found:
                version = versions[n.latest]
                yield n, version, kinds[version.kind_of(n)]
            if len(found) < batch:
                return
            after = found[-1].pk

    # --- runs ----------------------------------------------------------------------------------

    def start_run(self, partner: str, fmt: str, inputs: list[str]) -> int:
        with self._write_engine.begin() as conn:
            return runs.start(conn, partner, fmt, inputs)

    def finish_run(
        self,
        run_id: int,
        status: str,
        counts: dict[str, Any],
        error: str | None = None,
        stamps: tuple[int, int] | None = None,
    ) -> None:
        with self._write_engine.begin() as conn:
            runs.finish(conn, run_id, status, counts, error, stamps)

    def run(self, run_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return runs.one(conn, run_id)

    def runs(self, limit: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return runs.latest(conn, limit)

    def mark_run_failed(self, run_id: int, reason: str) -> bool:
        """A run left `running` by a process that is gone (killed, its host lost): failed, with
        `reason`. Only a running run changes: True when it did. What the process committed
        stays; ingesting the same input again completes it."""
        with self._write_engine.begin() as conn:
            return runs.mark_failed(conn, run_id, reason)

    def record_rows(
        self, rows: list[tuple[int, str, int, str, str, str | None]], writer: Writer | None = None
    ) -> None:
        if writer is not None:
            runs.add_rows(writer.conn, rows)
            return
        with self._write_engine.begin() as conn:
            runs.add_rows(conn, rows)

    def run_rows(self, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return runs.rows_of(conn, run_id, kind)

    def unrouted(self, run_id: int) -> list[dict[str, Any]]:
        """The notifications a run stored without a recipient (their version of that run), by
        observable."""
        with self.reading() as reader:
            return reader.unrouted(run_id)

    # --- observation: metrics and the scheduler's job states ---------------------------------------

    def ingest_totals(self) -> Counter[tuple[str, str, str]]:
        with self.engine.connect() as conn:
            return observe.ingest_totals(conn)

    def runs_by_status(self) -> Counter[str]:
        with self.engine.connect() as conn:
            return observe.runs_by_status(conn)

    def outbox_open(self) -> Counter[tuple[str, str]]:
        with self.engine.connect() as conn:
            return observe.outbox_open(conn)

    def record_job(self, job: str, state: dict[str, Any]) -> None:
        with self._write_engine.begin() as conn:
            jobs.record(conn, job, state)

    def job_state(self, job: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return jobs.state(conn, job)

    def job_states(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return jobs.states(conn)

    # --- settings ----------------------------------------------------------------------------------

    def setting(self, name: str, make: Callable[[], str]) -> str:
        """The value kept under `name`, made by `make()` and kept the first time it is asked for."""
        return settings.get_or_create(self._write_engine, self.engine, name, make)

    # --- audit and statuses ----------------------------------------------------------------------

    def audit(
        self, *, username: str, action: str, collection_id: str | None, objects: int, status: int
    ) -> None:
        with self._write_engine.begin() as conn:
            audit.record(
                conn,
                username=username,
                action=action,
                collection_id=collection_id,
                objects=objects,
                status=status,
            )

    def record_read(
        self,
        *,
        username: str,
        action: str,
        collection_id: str,
        objects: int,
        delivered: list[tuple[int, int]] = (),  # type: ignore[assignment]
        source: str = "taxii",
    ) -> list[int]:
        """One read of a collection: its audit row, and the notifications it delivered
        ((notification, stamp of the version served) of each sighting served) marked delivered
        to the collection's recipient, in one transaction. Returns those newly delivered."""
        number = self.collection_number(collection_id)
        at = now_us() // 1000
        with self.writing() as w:
            audit.record(
                w.conn,
                username=username,
                action=action,
                collection_id=collection_id,
                objects=objects,
                status=200,
            )
            if not delivered or number is None:
                return []
            pairs = [(pk, stamp // 1000) for pk, stamp in delivered]
            return states.mark_delivered(w, number, pairs, at, source, username)

    def mark_delivered(
        self, collection_id: str, delivered: list[tuple[int, int]], *, source: str, actor: str | None
    ) -> list[int]:
        """(notification, stamp of the version) a recipient received outside TAXII (its MISP took
        the event, it fetched its MISP feed): delivered, unless they were before."""
        number = self.collection_number(collection_id)
        if number is None or not delivered:
            return []
        with self.writing() as w:
            pairs = [(pk, stamp // 1000) for pk, stamp in delivered]
            return states.mark_delivered(w, number, pairs, now_us() // 1000, source, actor)

    def audit_entries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return audit.entries(conn)

    def audit_search(self, **query: Any) -> list[dict[str, Any]]:
        """Audit entries by user, collections, since (connector/store/audit_search.py)."""
        with self.engine.connect() as conn:
            return audit_search.search(conn, **query)

    def save_status(self, status: dict[str, Any], *, username: str, collection_id: str) -> None:
        with self._write_engine.begin() as conn:
            audit.save_status(conn, status, username=username, collection_id=collection_id)

    def status(self, status_id: str) -> tuple[str, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            return audit.status(conn, status_id)

    # --- MISP outbox ---------------------------------------------------------------------------

    def misp_due(self, recipient: str | None, include_later: bool) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return outbox.due(conn, recipient, include_later)

    def misp_claimed(self, entry: dict[str, Any], include_later: bool) -> Any:
        return outbox.claimed(self.engine, entry, include_later)

    def misp_mark(self, entry: dict[str, Any], values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            outbox.mark(conn, entry, values)

    def misp_retry_failed(self, recipient: str | None) -> int:
        with self.engine.begin() as conn:
            return outbox.retry_failed(conn, recipient)

    def misp_entries(self) -> list[tuple[str, str, int, str | None]]:
        with self.engine.connect() as conn:
            return outbox.entries(conn)

    def misp_events(self, recipient: str, only: str | None = None) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            return outbox.events(conn, recipient, only)

    # --- MISP feeds ------------------------------------------------------------------------------

    def misp_feed_stale(self, recipient: str, fingerprint: str, only: str | None = None) -> list[feed.Stale]:
        """The recipient's feed events to build (again), with what is stored of each."""
        with self.engine.connect() as conn:
            return feed.stale(conn, recipient, fingerprint, only)

    def misp_feed_save(self, recipient: str, rows: list[dict[str, Any]]) -> None:
        with self._write_engine.begin() as conn:
            feed.save(conn, recipient, rows)

    def misp_feed_entries(self, recipient: str) -> list[tuple[str, str, str]]:
        """(event uuid, manifest entry, hashes lines) of the recipient's stored feed events."""
        with self.engine.connect() as conn:
            return feed.entries(conn, recipient)

    def misp_feed_deliveries(self, recipient: str, event_uuid: str) -> list[tuple[int, int]]:
        with self.engine.connect() as conn:
            return feed.deliveries(conn, recipient, event_uuid)

    def misp_feed_body(self, recipient: str, event_uuid: str) -> str | None:
        with self.engine.connect() as conn:
            return feed.body(conn, recipient, event_uuid)


class Reader:
    """Reads of the record within one snapshot (Store.reading())."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def notifications(self, pks: Iterable[int]) -> dict[int, NotificationRecord]:
        return notifications.notifications_by_pk(self.conn, pks)

    def notification_pks_by_subject(self, subject: int) -> list[int]:
        return [n.pk for n in notifications.notifications_by_subject(self.conn, [subject])]

    def notification_pks_by_id(self, ids: Iterable[str]) -> dict[int, list[int]]:
        return notifications.notification_pks_by_id(self.conn, ids)

    def versions(self, stamps: Iterable[int]) -> dict[int, VersionRecord]:
        return notifications.versions_by_stamp(self.conn, stamps)

    def version_chain(
        self, latest: int, known: dict[int, VersionRecord] | None = None
    ) -> list[VersionRecord]:
        return notifications.version_chain(self.conn, latest, known)

    def version_chains(
        self, latest: Iterable[int], known: dict[int, VersionRecord] | None = None
    ) -> dict[int, list[VersionRecord]]:
        return notifications.version_chains(self.conn, latest, known)

    def kinds(self, pks: Iterable[int] | None = None) -> dict[int, Kind]:
        return notifications.kinds(self.conn, pks)

    def evidence(self, keys: Iterable[EvidenceKey]) -> dict[EvidenceKey, str]:
        return notifications.evidence_bodies(self.conn, keys)

    def evidence_objects(self, keys: Iterable[EvidenceKey]) -> dict[EvidenceKey, dict[str, Any]]:
        return notifications.evidence_objects(self.conn, keys)

    def partner_names(self) -> dict[str, str]:
        return notifications.partner_names(self.conn)

    def blocks_after(self, collection: int, after: int | None, limit: int) -> list[deliveries.Block]:
        return deliveries.blocks_after(self.conn, collection, after, limit)

    def entry_bits(self, collection: int, stamps: Iterable[int]) -> dict[int, int]:
        return deliveries.entry_bits(self.conn, collection, stamps)

    def shared(self, collection: int, digests: Iterable[int]) -> dict[int, tuple[int, bool]]:
        return deliveries.shared_rows(self.conn, collection, digests)

    def removed_between(self, collection: int, low: int, high: int) -> set[int]:
        return deliveries.removed_between(self.conn, collection, low, high)

    def removed_in(self, collection: int, values: Iterable[int]) -> set[int]:
        return deliveries.removed_in(self.conn, collection, values)

    def stored_page(self, collection_id: str, **query: Any) -> list[objects.Member]:
        return objects.page(self.conn, collection_id, **query)

    def misp_members(self, recipient: str, event_uuid: str) -> list[int]:
        return outbox.members(self.conn, recipient, event_uuid)

    def misp_events_of(self, recipient: str, pks: list[int]) -> dict[int, set[str]]:
        return outbox.events_of_members(self.conn, recipient, pks)

    def unrouted(self, run_id: int) -> list[dict[str, Any]]:
        run = runs.one(self.conn, run_id)
        if run is None or run.get("first_stamp") is None:
            return []
        stamps = notifications.run_versions_without_recipients(
            self.conn, run_id, run["first_stamp"], run["last_stamp"]
        )
        found = notifications.notifications_by_pk(self.conn, stamps.values())
        kinds = notifications.kinds(self.conn, {n.kind for n in found.values()})
        rows = [
            {
                "observable": n.observable,
                "classification": kinds[n.kind].classification,
                "identifier": n.identifier,
                "notification": n.pk,
            }
            for n in found.values()
        ]
        return sorted(rows, key=lambda r: (r["observable"], r["classification"], r["identifier"]))
