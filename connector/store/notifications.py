"""SQL of the record: notifications, their versions, kinds, evidence, ids and observation times.

Reads take any connection; writes take the Writer of an exclusive transaction.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection

from connector.stix.ids import located_subject
from connector.store import blocks, evidence
from connector.store.packing import VersionBlock, blocks_of, encode_version
from connector.store.records import EvidenceKey, Kind, NotificationRecord, VersionRecord, digest
from connector.store.writer import Writer, pg_array, rows_in, tuples_in

NOTIFICATION_COLUMNS = (
    "pk",
    "subject",
    "kind",
    "identifier",
    "day",
    "ip",
    "port",
    "protocol",
    "hostname",
    "url",
    "email",
    "asn",
    "evidence",
    "first_seen",
    "created",
    "latest",
    "first_run",
    "legacy",
    "located_ids",
)
# A version's values in the order add_versions takes them (a VersionRecord's fields); stored
# in blocks are the first two, evidence and the rest packed (connector/store/packing.py).
VERSION_COLUMNS = (
    "stamp",
    "notification",
    "previous",
    "renderer",
    "modified",
    "first_seen",
    "last_seen",
    "count",
    "kind",
    "evidence",
    "recipients",
    "run",
)
# What the notifications table holds: the record's fields but `latest`, which is in
# notification_heads (migration 0014).
_LATEST = NOTIFICATION_COLUMNS.index("latest")
STORED_NOTIFICATION_COLUMNS = NOTIFICATION_COLUMNS[:_LATEST] + NOTIFICATION_COLUMNS[_LATEST + 1 :]
KIND_FIELDS = (
    "partner",
    "feed",
    "taxonomy",
    "type",
    "tlp",
    "vulnerability",
    "severity",
    "case_id",
    "direct_owner_only",
    "discard_unrouted",
)
# Notifications (`n`) with their heads (`h`).
WITH_HEADS = "notifications n JOIN notification_heads h ON h.notification = n.pk"
# Notification records: the record's columns, to be followed by a WHERE clause.
SELECT_RECORDS = "SELECT {} FROM {}".format(
    ", ".join("h.latest" if c == "latest" else f"n.{c}" for c in NOTIFICATION_COLUMNS), WITH_HEADS
)
# Notifications with a pk above a bound, given twice: PostgreSQL carries no inequality across
# the join's equality, and with the bound on `n` alone it read the heads' index from its start
# (a merge join, for each page of a walk) or all of the heads (a hash join).
PK_ABOVE = "n.pk > ? AND h.notification > ?"


def notification_record(row: Sequence[Any]) -> NotificationRecord:
    values = list(row)
    values[-2] = bool(values[-2])  # legacy: NULL for all but migrated notifications
    values[-1] = bool(values[-1])  # located_ids: NULL for those stored before 0013
    return NotificationRecord(*values)


def kind_digest(values: tuple[Any, ...]) -> str:
    return hashlib.sha256(orjson.dumps(list(values))).hexdigest()


# --- reading -------------------------------------------------------------------------------------


def notifications_by_pk(conn: Connection, pks: Iterable[int]) -> dict[int, NotificationRecord]:
    rows = rows_in(conn, f"{SELECT_RECORDS} WHERE n.pk IN ({{in}})", sorted(set(pks)))
    return {row[0]: notification_record(row) for row in rows}


def notifications_by_subject(conn: Connection, subjects: Iterable[int]) -> list[NotificationRecord]:
    statement = f"{SELECT_RECORDS} WHERE n.subject IN ({{in}})"
    rows = tuples_in(conn, statement, sorted(set(subjects)))
    return [notification_record(row) for row in rows]


def notification_pks_by_id(conn: Connection, ids: Iterable[str]) -> dict[int, list[int]]:
    """Digest of each id -> the notifications that may own it; the caller checks which does (a
    digest can be shared, and a located id finds every notification of its subject)."""
    wanted = set(ids)
    out: dict[int, list[int]] = {}
    statement = "SELECT digest, notification FROM notification_ids WHERE digest IN ({in})"
    for found, pk in rows_in(conn, statement, sorted({digest(i) for i in wanted})):
        out.setdefault(found, []).append(pk)
    by_subject: dict[int, set[int]] = {}
    for stix_id in wanted:
        subject = located_subject(stix_id)
        if subject is not None:
            by_subject.setdefault(subject, set()).add(digest(stix_id))
    if by_subject:
        statement = (
            "SELECT subject, pk FROM notifications WHERE subject IN ({in}) AND located_ids IS NOT NULL"
        )
        for subject, pk in rows_in(conn, statement, sorted(by_subject)):
            for found in by_subject[subject]:
                out.setdefault(found, []).append(pk)
    return out


VERSION_PROBES = 10_000  # PostgreSQL: stamps looked up per statement


def versions_by_stamp(conn: Connection, stamps: Iterable[int]) -> dict[int, VersionRecord]:
    """stamp -> its version, for those of these stamps that are stored, in stamp order: each
    block holding any is read once, and only the versions asked for are decoded."""
    wanted = sorted(set(stamps))
    out: dict[int, VersionRecord] = {}
    for block in version_blocks_holding(conn, wanted):
        found_at = block.stamps
        low = bisect_left(wanted, found_at[0])
        high = bisect_right(wanted, found_at[-1])
        for stamp in wanted[low:high]:
            version = block.find(stamp)
            if version is not None:
                out[stamp] = version
    return out


def _span(block: VersionBlock) -> tuple[int, int]:
    return block.stamps[0], block.last


def version_blocks_holding(conn: Connection, wanted: list[int]) -> Iterator[VersionBlock]:
    """The blocks holding these stamps (sorted), each once. A stamp's block is the first whose
    `last` is not below it, if its `first` is not above it (blocks do not overlap). On SQLite,
    in process, a look-up per block; on PostgreSQL one statement per VERSION_PROBES stamps,
    each probed on the server, a block sent once."""
    if not wanted:
        return
    if conn.dialect.name != "postgresql":
        if not conn.in_transaction():
            conn.begin()
        driver = conn.connection.driver_connection
        assert driver is not None
        sql = "SELECT last, first, entries FROM version_blocks WHERE last >= ? ORDER BY last LIMIT 1"

        def block_at(stamp: int) -> VersionBlock | None:
            row = driver.execute(sql, (stamp,)).fetchone()
            return None if row is None else VersionBlock(row[0], row[1], bytes(row[2]))

        yield from blocks.holding(wanted, block_at, _span)
        return
    statement = (
        "WITH holding AS (SELECT DISTINCT b.last FROM unnest(%s::bigint[]) AS s(stamp) "
        "CROSS JOIN LATERAL (SELECT v.last, v.first FROM version_blocks v "
        "WHERE v.last >= s.stamp ORDER BY v.last LIMIT 1) b WHERE b.first <= s.stamp) "
        "SELECT v.last, v.first, v.entries FROM holding h JOIN version_blocks v ON v.last = h.last "
        "ORDER BY v.last"  # in stamp order, as SQLite's look-ups give them (the join does not)
    )
    seen: set[int] = set()
    for start in range(0, len(wanted), VERSION_PROBES):
        for last, first, entries in conn.exec_driver_sql(
            statement, (pg_array(wanted[start : start + VERSION_PROBES]),)
        ):
            if last not in seen:
                seen.add(last)
                yield VersionBlock(last, first, bytes(entries))


def version_chain(
    conn: Connection, latest: int, known: dict[int, VersionRecord] | None = None
) -> list[VersionRecord]:
    """Every version of a notification, newest first, from its latest stamp down `previous`."""
    return version_chains(conn, [latest], known)[latest]


def version_chains(
    conn: Connection, latest: Iterable[int], known: dict[int, VersionRecord] | None = None
) -> dict[int, list[VersionRecord]]:
    """version_chain of each of these latest stamps, the chains walked side by side: one look-up
    of every stamp a step down asks for (retention removes 500 notifications at a time, and one
    look-up a version was most of its round trips to PostgreSQL)."""
    known = known if known is not None else {}
    chains: dict[int, list[VersionRecord]] = {stamp: [] for stamp in latest}
    ends = {stamp: stamp for stamp in chains}  # chain -> the stamp it needs next
    while ends:
        missing = [stamp for stamp in ends.values() if stamp not in known]
        if missing:
            known.update(versions_by_stamp(conn, missing))
        following: dict[int, int] = {}
        for chain, stamp in ends.items():
            version = known.get(stamp)
            if version is None:
                raise LookupError(f"notification version {stamp} is missing from the store")
            chains[chain].append(version)
            if version.previous is not None:
                following[chain] = version.previous
        ends = following
    return chains


def kinds(conn: Connection, pks: Iterable[int] | None = None) -> dict[int, Kind]:
    names = ", ".join(KIND_FIELDS)
    if pks is None:
        rows: Iterable[Any] = conn.exec_driver_sql(f"SELECT pk, {names} FROM notification_kinds")
    else:
        rows = rows_in(
            conn, f"SELECT pk, {names} FROM notification_kinds WHERE pk IN ({{in}})", sorted(set(pks))
        )
    return {row[0]: Kind(*row[:9], bool(row[9]), bool(row[10])) for row in rows}


def evidence_bodies(conn: Connection, keys: Iterable[EvidenceKey]) -> dict[EvidenceKey, str]:
    """Evidence key (a pk, or an inline change) -> the evidence (JSON) it stands for
    (connector/store/evidence.py)."""
    wanted, stored = _evidence_with_references(conn, keys)
    paths: dict[int, list[list[str]]] = {}
    return {key: evidence.resolved(body, stored, paths) for key, body in _bodies(wanted, stored)}


def evidence_objects(conn: Connection, keys: Iterable[EvidenceKey]) -> dict[EvidenceKey, dict[str, Any]]:
    """Evidence key -> the evidence it stands for, as an object (each a fresh one): what a
    renderer takes, without writing it out as JSON to read it back."""
    wanted, stored = _evidence_with_references(conn, keys)
    paths: dict[int, list[list[str]]] = {}
    return {key: evidence.resolved_object(body, stored, paths) for key, body in _bodies(wanted, stored)}


def _bodies(wanted: set[EvidenceKey], stored: dict[int, str]) -> Iterator[tuple[EvidenceKey, str]]:
    """(key, stored body) of the keys asked for that are there: an inline change is its own."""
    for key in wanted:
        if key.__class__ is str:
            yield key, key  # type: ignore[misc]
        elif key in stored:
            yield key, stored[key]  # type: ignore[index]


def _evidence_with_references(
    conn: Connection, keys: Iterable[EvidenceKey]
) -> tuple[set[EvidenceKey], dict[int, str]]:
    """(the keys asked for, pk -> stored body of them and of every body they refer to: a
    change's base, the key paths of evidence stored as values)."""
    statement = "SELECT pk, body FROM evidence WHERE pk IN ({in})"
    wanted = set(keys)
    pks = {evidence.row_of(key) for key in wanted}
    stored: dict[int, str] = dict(rows_in(conn, statement, sorted(pks)))  # type: ignore[type-var]
    fresh = list(stored.values())
    while fresh:
        needed = {r for body in fresh if (r := evidence.reference(body)) is not None} - stored.keys()
        found = dict(rows_in(conn, statement, sorted(needed))) if needed else {}
        stored.update(found)
        fresh = list(found.values())
    return wanted, stored


def partner_names(conn: Connection) -> dict[str, str]:
    return dict(conn.exec_driver_sql("SELECT partner, name FROM partner_names").all())


def listed_observations(conn: Connection, pks: Sequence[int]) -> set[tuple[int, int]]:
    statement = "SELECT notification, observed_at FROM observations WHERE notification IN ({in})"
    return {(int(a), int(b)) for a, b in tuples_in(conn, statement, pks)}


# --- writing -------------------------------------------------------------------------------------


def add_kind(w: Writer, values: tuple[Any, ...]) -> int:
    """The pk of the kind with these KIND_FIELDS values, inserted when new."""
    key = kind_digest(values)
    found = w.conn.exec_driver_sql(
        w.sql("SELECT pk FROM notification_kinds WHERE digest = ?"), (key,)
    ).scalar()
    if found is not None:
        return int(found)
    pk = w.allocate("notification_kinds", 1)
    names = ", ".join(KIND_FIELDS)
    w.many(
        f"INSERT INTO notification_kinds (pk, digest, {names}) VALUES (?, ?{', ?' * len(KIND_FIELDS)})",
        [(pk, key, *values)],
    )
    return pk


def evidence_by_digest(conn: Connection, digests: Iterable[int]) -> dict[int, list[tuple[int, str]]]:
    """Digest -> the (pk, body) of every stored evidence with it (almost always one)."""
    out: dict[int, list[tuple[int, str]]] = {}
    for pk, key, body in rows_in(
        conn, "SELECT pk, digest, body FROM evidence WHERE digest IN ({in})", sorted(set(digests))
    ):
        out.setdefault(int(key), []).append((int(pk), body))
    return out


def add_evidence(w: Writer, rows: list[tuple[int, int, str]]) -> None:
    """New evidence rows: (pk from w.allocate, digest, body)."""
    w.insert("evidence", ("pk", "digest", "body"), rows)


def add_partner_name(w: Writer, partner: str, name: str) -> None:
    w.insert("partner_names", ("partner", "name"), [(partner, name)], skip_present=True)


def add_notifications(w: Writer, rows: list[tuple[Any, ...]], heads: list[tuple[int, int]]) -> None:
    """New notification rows (STORED_NOTIFICATION_COLUMNS, pks from w.allocate) and their heads
    ((pk, stamp of the latest version), in the rows' order). Their ids are located
    (connector/stix/ids.py): notification_ids keeps only those of notifications stored before."""
    w.insert("notifications", STORED_NOTIFICATION_COLUMNS, rows)
    w.insert("notification_heads", ("notification", "latest"), heads)


def add_versions(w: Writer, rows: list[tuple[Any, ...]]) -> None:
    """New versions: tuples of VERSION_COLUMNS, recipients a tuple of collection numbers, as
    blocks (connector/store/packing.py). Each batch's go in as new blocks, never into a block
    written before: a block is only ever rewritten by retention."""
    w.insert(
        "version_blocks",
        ("last", "first", "entries"),
        blocks_of(
            (
                stamp,
                pk,
                evidence,
                encode_version(stamp, before, renderer, modified, first, last, n, kind, to, run),
                to,
            )
            for stamp, pk, before, renderer, modified, first, last, n, kind, evidence, to, run in sorted(rows)
        ),
    )


HEADS_PER_STATEMENT = 10_000  # PostgreSQL


def set_latest(w: Writer, latest: list[tuple[int, int]]) -> None:
    """(pk, stamp) pairs: the notifications' latest versions. On PostgreSQL one UPDATE per
    HEADS_PER_STATEMENT pairs, given as two arrays, where an executemany (pipelined by psycopg)
    was 6.6% of a second day's time."""
    pairs = sorted(latest)
    if w.dialect != "postgresql":
        w.many(
            "UPDATE notification_heads SET latest = ? WHERE notification = ?", [(s, pk) for pk, s in pairs]
        )
        return
    statement = (
        "UPDATE notification_heads h SET latest = v.latest "
        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(notification, latest) "
        "WHERE h.notification = v.notification"
    )
    for start in range(0, len(pairs), HEADS_PER_STATEMENT):
        pks, stamps = zip(*pairs[start : start + HEADS_PER_STATEMENT], strict=True)
        w.conn.exec_driver_sql(statement, (pg_array(pks), pg_array(stamps)))


def add_observations(w: Writer, rows: list[tuple[int, int]]) -> None:
    w.insert("observations", ("notification", "observed_at"), sorted(set(rows)), skip_present=True)


def run_versions_without_recipients(conn: Connection, run_id: int, first: int, last: int) -> dict[int, int]:
    """stamp -> notification of the run's versions that went to nobody (within its stamps).

    Run and recipients are packed, so the run's stamp range is read and filtered here: the
    range holds the run's versions (and those of runs that wrote between its first and last
    stamp, which the run number tells apart)."""
    out: dict[int, int] = {}
    for block in version_blocks_between(conn, first, last):
        for index, stamp in enumerate(block.stamps):
            if first <= stamp <= last:
                version = block.version(index)
                if version.run == run_id and not version.recipients:
                    out[stamp] = version.notification
    return out


def version_blocks_between(conn: Connection, low: int, high: int) -> Iterator[VersionBlock]:
    """The blocks holding any stamp from `low` to `high`, in order: those whose last is not
    below `low`, up to the first whose last is not below `high` (an index range: blocks do not
    overlap)."""
    sql = (
        "SELECT last, first, entries FROM version_blocks WHERE last >= ? AND "
        "last <= coalesce((SELECT min(last) FROM version_blocks WHERE last >= ?), ?) ORDER BY last"
    )
    if conn.dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    for last, first, entries in conn.exec_driver_sql(sql, (low, high, high)):
        if first <= high:
            yield VersionBlock(last, first, bytes(entries))


def version_blocks_after(conn: Connection, after: int | None, limit: int = 1000) -> Iterator[VersionBlock]:
    """Every block whose last stamp is above `after` (all: None), in order, `limit` a statement:
    retention's questions about every version (which use an evidence row)."""
    sql = "SELECT last, first, entries FROM version_blocks WHERE last > ? ORDER BY last LIMIT ?"
    if conn.dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    bound = -(1 << 63) if after is None else after
    while True:
        rows = conn.exec_driver_sql(sql, (bound, limit)).all()
        for last, first, entries in rows:
            yield VersionBlock(last, first, bytes(entries))
        if len(rows) < limit:
            return
        bound = rows[-1][0]


def notifications_after(conn: Connection, after: int, limit: int) -> list[NotificationRecord]:
    """Up to `limit` notifications with pk above `after`, in pk order."""
    sql = f"{SELECT_RECORDS} WHERE {PK_ABOVE} ORDER BY n.pk LIMIT ?"
    if conn.dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    return [notification_record(row) for row in conn.exec_driver_sql(sql, (after, after, limit))]
