"""SQL of stored STIX objects: researchers' submissions (which have no notification form) and
the objects of stores written before the record existed, with their collection membership.

Objects both kinds of delivery can bring (SCOs and marking definitions) are registered in
`collection_shared` too, so a collection holds each once, however it arrived.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from connector.store import deliveries
from connector.store import schema as t
from connector.store.records import digest
from connector.store.times import timestamp_to_us, version_key
from connector.store.writer import Writer, rows_in

SCO_TYPES = frozenset(
    {
        "artifact",
        "autonomous-system",
        "directory",
        "domain-name",
        "email-addr",
        "email-message",
        "file",
        "ipv4-addr",
        "ipv6-addr",
        "mac-addr",
        "mutex",
        "network-traffic",
        "process",
        "software",
        "url",
        "user-account",
        "windows-registry-key",
        "x509-certificate",
    }
)


def is_shared_type(stix_type: str) -> bool:
    """Objects a notification version can render too: a collection holds them once."""
    return stix_type in SCO_TYPES or stix_type == "marking-definition"


def object_version_key(obj: dict[str, Any]) -> str:
    """An object's version as stored: `modified`, else `created` (TAXII 2.1), else '' (SCOs)."""
    return version_key(obj.get("modified") or obj.get("created"))


def object_row(obj: dict[str, Any], body: str) -> tuple[str, str, str, str, str]:
    """An object version as `add_object_rows` takes it: (id, version, type, spec_version, body)."""
    return (obj["id"], object_version_key(obj), obj["type"], obj.get("spec_version", "2.1"), body)


@dataclass(frozen=True, slots=True)
class Member:
    """An object version in a collection, as TAXII serves it; for a notification's sighting,
    the notification and the version's stamp too (serving it delivers the notification)."""

    date_added: int
    body: str
    stix_id: str
    version: str
    notification: int | None = None
    stamp: int | None = None


@dataclass(frozen=True, slots=True)
class VersionFilter:
    """TAXII match[version]: any of last, first, all, and exact versions (normalised)."""

    last: bool = True
    first: bool = False
    all: bool = False
    exact: tuple[str, ...] = ()

    def condition(self) -> Any:
        """The filter on collection_objects (stored objects)."""
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


class _InCollection(ColumnElement[Any]):
    """`collection_id = value`, told to SQLite's planner to be true of most rows.

    SQLite's planner has no statistics: for "these ids in this collection" it would rather walk
    the collection's whole (collection_id, date_added) index than look the ids up. Wrapped in
    likely(), the comparison no longer looks selective, so that walk is never chosen, and it
    still serves as the second column of (object_pk, collection_id): a look-up reads one row per
    version, not one per collection that holds the object. PostgreSQL, whose planner has
    statistics, gets the plain comparison.
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
    object is one of `ids`, any version: through stix_objects' (stix_id, modified) index to the
    pks, then (object_pk, collection_id) (see _InCollection for why SQLite needs telling)."""
    co = t.collection_objects if table is None else table
    by_id = t.stix_objects.alias("by_id")
    # Correlated to whatever encloses it (the ids may be an outer query's column), never a
    # FROM of its own: SQLAlchemy would otherwise join collection_objects in at this level.
    pks = select(by_id.c.pk).where(by_id.c.stix_id.in_(list(ids))).correlate_except(by_id)
    return and_(co.c.object_pk.in_(pks), _InCollection(co.c.collection_id, collection_id))


# --- reading -------------------------------------------------------------------------------------


def page(
    conn: Connection,
    collection_id: str,
    *,
    after: int | None,
    limit: int,
    types: Sequence[str] = (),
    ids: Sequence[str] = (),
    versions: VersionFilter | None = None,
) -> list[Member]:
    """Up to `limit` stored members with date_added > after, in date_added order (keyset)."""
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
    return [Member(*row) for row in conn.execute(query)]


def owners(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """STIX id -> the partner that first submitted it."""
    statement = "SELECT stix_id, source FROM object_sources WHERE stix_id IN ({in})"
    return {r[0]: r[1] for r in rows_in(conn, statement, list(ids))}


def stored_versions(conn: Connection, ids: Sequence[str]) -> set[tuple[str, str]]:
    """(id, version) of the stored versions of these ids."""
    statement = "SELECT stix_id, modified FROM stix_objects WHERE stix_id IN ({in})"
    return {(r[0], r[1]) for r in rows_in(conn, statement, list(ids))}


def bodies(conn: Connection, ids: Sequence[str]) -> dict[tuple[str, str], str]:
    """(id, version) -> the stored body, of every stored version of these ids."""
    statement = "SELECT stix_id, modified, body FROM stix_objects WHERE stix_id IN ({in})"
    return {(r[0], r[1]): r[2] for r in rows_in(conn, statement, list(ids))}


def status(conn: Connection, status_id: str) -> tuple[str, str] | None:
    """(username who posted, status resource as JSON) or None."""
    row = conn.execute(
        select(t.statuses.c.username, t.statuses.c.body).where(t.statuses.c.id == status_id)
    ).first()
    return (row[0], row[1]) if row else None


# --- writing -------------------------------------------------------------------------------------


def add_object_rows(
    w: Writer,
    rows: Iterable[tuple[str, str, str, str, str]],
    *,
    new_versions: Collection[tuple[str, str]] = (),
) -> dict[tuple[str, str], int]:
    """Insert (id, version, type, spec_version, body) rows not yet stored; return the pk of
    every given version. `new_versions` are known not to be stored yet: no look-up first (were
    one stored after all, the unique constraint fails the transaction, loudly)."""
    wanted: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
    for row in rows:
        wanted.setdefault((row[0], row[1]), row)
    pks: dict[tuple[str, str], int] = {}
    unknown = sorted({key[0] for key in wanted if key not in new_versions})
    statement = "SELECT pk, stix_id, modified FROM stix_objects WHERE stix_id IN ({in})"
    for pk, stix_id, modified in w.rows_in(statement, unknown):
        if (stix_id, modified) in wanted:
            pks[(stix_id, modified)] = int(pk)
    missing = [key for key in wanted if key not in pks]
    if missing:
        first = w.allocate("stix_objects", len(missing))
        for offset, key in enumerate(missing):
            pks[key] = first + offset
        w.insert(
            "stix_objects",
            ("pk", "stix_id", "modified", "type", "spec_version", "body"),
            [(pks[key], *wanted[key]) for key in sorted(missing)],
        )
    return pks


def _members_of(
    w: Writer, collection_id: str, ids: list[str]
) -> tuple[set[int], dict[str, str], dict[str, int]]:
    """(object pks the collection holds of these ids, id -> its latest version there, id -> the
    pk of that latest version)."""
    present: set[int] = set()
    latest: dict[str, str] = {}
    stored_latest: dict[str, int] = {}
    # Through stix_objects' id index to the pks, then (object_pk, collection_id) for both
    # columns; SQLite is told the index (INDEXED BY; _InCollection says why it must be).
    forced = " INDEXED BY uq_collection_objects_member" if w.dialect == "sqlite" else ""
    statement = (
        f"SELECT object_pk, stix_id, version, is_latest FROM collection_objects{forced} "
        "WHERE collection_id = ? AND object_pk IN (SELECT pk FROM stix_objects WHERE stix_id IN ({in}))"
    )
    for object_pk, stix_id, version, is_latest in w.rows_in(statement, ids, collection_id):
        present.add(int(object_pk))
        if is_latest:
            latest[stix_id] = version
            stored_latest[stix_id] = int(object_pk)
    return present, latest, stored_latest


_MEMBER_COLUMNS = ("date_added", "collection_id", "object_pk", "stix_id", "type", "version", "is_latest")


def add_members(
    w: Writer,
    collection_id: str,
    number: int,
    entries: list[tuple[int, str, str, str]],
) -> int:
    """Add stored (object_pk, stix_id, type, version) to a collection; returns how many were new.

    Keeps `is_latest` true on exactly the highest version of each object in the collection, and
    date_added in the order of `entries` (what is referenced before what refers to it). Shared
    objects (is_shared_type) the collection holds already, stored or rendered, are left out.
    """
    present, latest, stored_latest = _members_of(w, collection_id, sorted({e[1] for e in entries}))
    shared_ids = {e[1] for e in entries if is_shared_type(e[2])}
    held = deliveries.shared_rows(w.conn, number, [digest(i) for i in shared_ids])
    rows: list[list[Any]] = []
    shared_new: list[tuple[int, int, int, bool | None]] = []
    superseded: list[int] = []
    for pk, stix_id, stix_type, version in entries:
        if pk in present:
            continue
        present.add(pk)
        if stix_id in shared_ids:
            key = digest(stix_id)
            if key in held:
                continue  # the collection holds it: rendered with a notification, or stored
            stamp = w.next_stamp()
            held[key] = (stamp, True)
            shared_new.append((number, key, stamp, True))
            rows.append([stamp, collection_id, pk, stix_id, stix_type, version, True])
            continue
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
        rows.append([w.next_stamp(), collection_id, pk, stix_id, stix_type, version, is_latest])
    if superseded:
        w.many(
            "UPDATE collection_objects SET is_latest = ? WHERE object_pk = ? AND collection_id = ?",
            [(False, object_pk, collection_id) for object_pk in sorted(superseded)],
        )
    deliveries.add_shared(w, shared_new)
    return w.insert("collection_objects", _MEMBER_COLUMNS, [tuple(r) for r in rows])


def add_owners(w: Writer, rows: list[dict[str, Any]]) -> None:
    """Sources of newly submitted ids (object_sources rows)."""
    w.insert(
        "object_sources",
        ("stix_id", "source", "username", "first_seen"),
        [(r["stix_id"], r["source"], r["username"], r["first_seen"]) for r in rows],
    )


def supersede(w: Writer, collection_id: str, ids: Sequence[str]) -> None:
    """Stored versions of these ids in the collection are no longer the latest there (a legacy
    notification's next version was delivered)."""
    co = t.collection_objects
    w.conn.execute(
        update(co)
        .where(and_(members_with_ids(collection_id, list(ids)), co.c.is_latest.is_(True)))
        .values(is_latest=False)
    )


def remove_members(w: Writer, collection_id: str, number: int, stix_id: str, versions: VersionFilter) -> int:
    """Take stored versions of an object out of a collection (the object rows stay for audit);
    the highest remaining version becomes the latest again."""
    co = t.collection_objects
    conn = w.conn
    condition = versions.condition()
    member = members_with_ids(collection_id, [stix_id])
    query = select(co.c.date_added, co.c.type).where(member)
    if condition is not None:
        query = query.where(condition)
    found = conn.execute(query).all()
    stamps = [r[0] for r in found]
    if stamps:
        conn.execute(co.delete().where(co.c.collection_id == collection_id, co.c.date_added.in_(stamps)))
        if is_shared_type(found[0][1]):
            deliveries.drop_shared(w, number, [digest(stix_id)])
        rest = conn.execute(
            select(co.c.date_added, co.c.version).where(member).order_by(co.c.version.desc())
        ).all()
        if rest:
            latest = (co.c.collection_id == collection_id) & (co.c.date_added == rest[0][0])
            conn.execute(update(co).where(latest).values(is_latest=True))
    return len(stamps)
