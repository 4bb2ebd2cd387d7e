"""SQL of retention and of a data subject's request: finding notifications by age or by value,
and taking them out of every table they live in (connector/retention.py decides what goes).

Removing a notification takes its row and its head, its versions (the chain through `previous`), its ids,
its observation times, its entries in the delivery log, the removals (TAXII DELETE) recorded
against those entries, its MISP event memberships, and, for a notification of the old layout,
its stored objects. The delivery log's blocks are rewritten without the entries: the entries
keep their date_added values and their blocks their `last`, so nothing else moves and no
cursor a client holds points anywhere else than before.

Reads take any connection; writes the Writer of an exclusive transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection

from connector.store import deliveries, evidence, notifications
from connector.store.notifications import PK_ABOVE, SELECT_RECORDS, WITH_HEADS, notification_record
from connector.store.packing import VersionBlock, encode_block
from connector.store.records import NotificationRecord
from connector.store.writer import SLOTS, Writer, rows_in


def _sql(conn: Connection, statement: str) -> str:
    return statement.replace("?", "%s") if conn.dialect.name == "postgresql" else statement


def _contains(conn: Connection, column: str) -> str:
    """`column` holds the parameter as a substring, in any case (the parameter given lower-case:
    a host name or e-mail address is the same in any case, and a partner's raw line or evidence
    keeps its own). No LIKE: a value's % and _ are literal."""
    if conn.dialect.name == "postgresql":
        return f"strpos(lower({column}), ?) > 0"
    return f"instr(lower({column}), ?) > 0"


# --- finding -------------------------------------------------------------------------------------


def received_before(conn: Connection, stamp: int, after_pk: int, limit: int) -> list[tuple[int, int, int]]:
    """(pk, kind, latest) of up to `limit` notifications with pk above `after_pk` whose latest
    version was written before `stamp` (µs), in pk order. No index serves `latest`: a purge
    walks the table once, a page at a time."""
    sql = f"SELECT n.pk, n.kind, h.latest FROM {WITH_HEADS} WHERE {PK_ABOVE} AND h.latest < ?"
    sql += " ORDER BY n.pk LIMIT ?"
    return [
        (int(a), int(b), int(c))
        for a, b, c in conn.exec_driver_sql(_sql(conn, sql), (after_pk, after_pk, stamp, limit))
    ]


def observables_after(
    conn: Connection, after_pk: int, limit: int
) -> list[tuple[int, str | None, str | None, str | None, str | None]]:
    """(pk, ip, hostname, url, email) of up to `limit` notifications above `after_pk`."""
    sql = "SELECT pk, ip, hostname, url, email FROM notifications WHERE pk > ? ORDER BY pk LIMIT ?"
    return [tuple(r) for r in conn.exec_driver_sql(_sql(conn, sql), (after_pk, limit))]  # type: ignore[misc]


def highest_notification(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT max(pk) FROM notifications").scalar() or 0)


def notifications_above(conn: Connection, pk: int) -> list[NotificationRecord]:
    """Notifications written after `pk` was the highest (new since a scan)."""
    sql = f"{SELECT_RECORDS} WHERE {PK_ABOVE} ORDER BY n.pk"
    return [notification_record(r) for r in conn.exec_driver_sql(_sql(conn, sql), (pk, pk))]


def notifications_matching(conn: Connection, value: str) -> list[tuple[int, str | None]]:
    """(pk, url) of notifications whose address, host name, e-mail address or URL is `value`,
    or whose URL holds it as text (the caller checks it is the URL's host or a part of it). A
    whole-table scan: none of these columns is indexed."""
    url = _contains(conn, "url")
    sql = f"SELECT pk, url FROM notifications WHERE ip = ? OR hostname = ? OR email = ? OR url = ? OR {url}"
    return [(int(r[0]), r[1]) for r in conn.exec_driver_sql(_sql(conn, sql), (value,) * 4 + (value.lower(),))]


def evidence_containing(conn: Connection, text: str) -> list[tuple[int, str]]:
    """(pk, body) of evidence whose JSON holds `text` anywhere."""
    sql = f"SELECT pk, body FROM evidence WHERE {_contains(conn, 'body')}"
    return [(int(pk), body) for pk, body in conn.exec_driver_sql(_sql(conn, sql), (text.lower(),))]


def notifications_with_evidence(conn: Connection, evidence: Sequence[int]) -> set[int]:
    """Notifications whose row or any version points at one of these evidence rows."""
    found = {
        int(r[0]) for r in rows_in(conn, "SELECT pk FROM notifications WHERE evidence IN ({in})", evidence)
    }
    for users in version_evidence_users(conn, evidence).values():
        found |= users
    return found


def version_evidence_users(conn: Connection, rows: Iterable[int]) -> dict[int, set[int]]:
    """Evidence pk -> the notifications any of whose versions point at it (an inline change:
    at its base), for these evidence rows. Versions are not indexed by evidence: one read of
    every block, whatever the number of evidence rows asked about (ask for them all at once)."""
    wanted = set(rows)
    users: dict[int, set[int]] = {pk: set() for pk in wanted}
    for block in notifications.version_blocks_after(conn, None):
        for _stamp, pk, used in block.refs():
            if used is not None and (row := evidence.row_of(used)) in wanted:
                users[row].add(pk)
    return users


def changes_containing(conn: Connection, text: str) -> list[tuple[int, str]]:
    """(notification, change) of every inline change (connector/store/evidence.py) that holds
    `text`: the blocks whose bytes hold it, each read in Python."""
    # In any case as _contains (ASCII letters lower-cased in the block's bytes read as text),
    # and the bytes as given for a value the lower-casing of the text cannot reach.
    statement = "SELECT last, first, entries FROM version_blocks WHERE " + (
        "position(%s::bytea in entries) > 0 OR strpos(lower(encode(entries, 'escape')), %s) > 0"
        if conn.dialect.name == "postgresql"
        else "instr(entries, ?) > 0 OR instr(lower(entries), ?) > 0"
    )
    lowered = text.lower()
    found = []
    for last, first, entries in conn.exec_driver_sql(statement, (text.encode(), lowered)):
        for _stamp, pk, used in VersionBlock(last, first, bytes(entries)).refs():
            if used.__class__ is str and lowered in used.lower():  # type: ignore[attr-defined]
                found.append((pk, used))
    return found  # type: ignore[return-value]


def stored_objects_containing(conn: Connection, text: str) -> list[tuple[int, str, str, str]]:
    """(pk, stix_id, type, body) of stored STIX objects whose JSON holds `text`."""
    sql = f"SELECT pk, stix_id, type, body FROM stix_objects WHERE {_contains(conn, 'body')}"
    return [(int(a), b, c, d) for a, b, c, d in conn.exec_driver_sql(_sql(conn, sql), (text.lower(),))]


def stored_pks(conn: Connection, pks: Sequence[int]) -> set[int]:
    """Those of these stix_objects rows that are still there."""
    return {int(r[0]) for r in rows_in(conn, "SELECT pk FROM stix_objects WHERE pk IN ({in})", list(pks))}


def stored_objects_with_ids(conn: Connection, ids: Sequence[str]) -> list[tuple[int, str, str, str]]:
    statement = "SELECT pk, stix_id, type, body FROM stix_objects WHERE stix_id IN ({in})"
    return [(int(a), b, c, d) for a, b, c, d in rows_in(conn, statement, ids)]


def texts_containing(
    conn: Connection, table: str, key: str, columns: Sequence[str], text: str
) -> list[tuple[Any, str]]:
    """(key, the columns' texts joined by a line break) of rows of `table` any of whose `columns`
    holds `text` in any case (run_rows, statuses, ...): the caller checks it is a whole token."""
    condition = " OR ".join(f"({c} IS NOT NULL AND {_contains(conn, c)})" for c in columns)
    joined = ", ".join(f"coalesce({c}, '')" for c in columns)
    sql = f"SELECT {key}, {joined} FROM {table} WHERE {condition}"
    rows = conn.exec_driver_sql(_sql(conn, sql), (text.lower(),) * len(columns))
    return [(r[0], "\n".join(str(cell) for cell in r[1:])) for r in rows]


def misp_rows_of(conn: Connection, recipient: str, pks: Sequence[int]) -> list[tuple[str, int]]:
    """(event uuid, notification) memberships of these notifications in the recipient's events."""
    statement = (
        "SELECT event_uuid, notification FROM misp_event_members "
        "WHERE recipient = ? AND notification IN ({in})"
    )
    return [(r[0], int(r[1])) for r in rows_in(conn, statement, sorted(set(pks)), recipient)]


def run_rows_before(conn: Connection, started_before: str) -> int:
    sql = "SELECT count(*) FROM run_rows WHERE run_id IN (SELECT id FROM ingest_runs WHERE started_at < ?)"
    return int(conn.exec_driver_sql(_sql(conn, sql), (started_before,)).scalar() or 0)


def blocks_holding(conn: Connection, collection: int, stamps: Sequence[int]) -> Iterator[deliveries.Block]:
    yield from deliveries._blocks_holding(conn, {collection: sorted(set(stamps))})


# --- removing ------------------------------------------------------------------------------------


def secure_delete(w: Writer, on: bool) -> None:
    """SQLite: overwrite what is deleted with zeros (freed pages included), so that removed
    personal data does not stay readable in the file's free space. PostgreSQL keeps dead rows
    until VACUUM, which autovacuum runs (docs/deploy.md)."""
    if w.dialect == "sqlite":
        w.conn.exec_driver_sql(f"PRAGMA secure_delete = {'ON' if on else 'OFF'}")


def drop_entries(w: Writer, collection: int, stamps: Iterable[int]) -> tuple[int, int, int]:
    """The entries of these stamps out of the collection's delivery log: each block holding one
    is rewritten without it (deleted when nothing is left), keeping its `last`; one statement
    for the rewrites and one for the deletions, as drop_versions. (entries removed, blocks
    rewritten, blocks deleted)."""
    gone = set(stamps)
    removed = 0
    emptied: list[tuple[int, int]] = []
    rewritten: list[tuple[int, bytes, int, int]] = []
    for block in list(blocks_holding(w.conn, collection, sorted(gone))):
        keep = [(stamp, bits) for stamp, bits in block.entries if stamp not in gone]
        removed += len(block.entries) - len(keep)
        if not keep:
            emptied.append((collection, block.last))
        elif len(keep) < len(block.entries):
            rewritten.append((keep[0][0], deliveries.encode(keep), collection, block.last))
    w.many("DELETE FROM delivery_blocks WHERE collection = ? AND last = ?", sorted(emptied))
    w.many(
        "UPDATE delivery_blocks SET first = ?, entries = ? WHERE collection = ? AND last = ?",
        sorted(rewritten, key=lambda row: row[3]),
    )
    return removed, len(rewritten), len(emptied)


def drop_removals(w: Writer, collection: int, stamps: Iterable[int]) -> int:
    """removed_objects rows of the objects of these entries (they name date_added values that
    will never be served again)."""
    return w.many(
        "DELETE FROM removed_objects WHERE collection = ? AND date_added BETWEEN ? AND ?",
        [(collection, stamp, stamp + SLOTS - 1) for stamp in sorted(set(stamps))],
    )


def drop_versions(w: Writer, stamps: Iterable[int]) -> int:
    """These versions out of their blocks: each block holding one rewritten without it under
    its own `last` (so that no other block's range changes), deleted when nothing is left; one
    statement for the rewrites and one for the deletions."""
    gone = set(stamps)
    dropped = 0
    emptied: list[tuple[int]] = []
    rewritten: list[tuple[int, bytes, int]] = []
    for block in list(notifications.version_blocks_holding(w.conn, sorted(gone))):
        kept = [entry for entry in block.entries() if entry[0] not in gone]
        dropped += len(block.stamps) - len(kept)
        if not kept:
            emptied.append((block.last,))
        else:
            rewritten.append((kept[0][0], encode_block(kept), block.last))
    w.many("DELETE FROM version_blocks WHERE last = ?", sorted(emptied))
    w.many(
        "UPDATE version_blocks SET first = ?, entries = ? WHERE last = ?",
        sorted(rewritten, key=lambda row: row[2]),
    )
    return dropped


def drop_notifications(w: Writer, pks: Iterable[int]) -> int:
    keys = [(pk,) for pk in sorted(set(pks))]
    w.many("DELETE FROM notification_heads WHERE notification = ?", keys)
    return w.many("DELETE FROM notifications WHERE pk = ?", keys)


def drop_ids(w: Writer, pairs: Iterable[tuple[int, int]]) -> int:
    """(digest, notification) rows of notification_ids."""
    return w.many("DELETE FROM notification_ids WHERE digest = ? AND notification = ?", sorted(set(pairs)))


def drop_observations(w: Writer, pks: Iterable[int]) -> int:
    return w.many("DELETE FROM observations WHERE notification = ?", [(pk,) for pk in sorted(set(pks))])


def drop_misp_members(w: Writer, recipient: str, rows: Iterable[tuple[str, int]]) -> int:
    return w.many(
        "DELETE FROM misp_event_members WHERE recipient = ? AND event_uuid = ? AND notification = ?",
        [(recipient, uuid, pk) for uuid, pk in sorted(set(rows))],
    )


def drop_empty_events(w: Writer, recipient: str, uuids: Iterable[str]) -> int:
    """Outbox entries of the recipient's events that no longer have a member: deleted (the
    event as the recipient's MISP holds it is the recipient's)."""
    empty = []
    for uuid in sorted(set(uuids)):
        found = w.conn.exec_driver_sql(
            w.sql("SELECT 1 FROM misp_event_members WHERE recipient = ? AND event_uuid = ? LIMIT 1"),
            (recipient, uuid),
        ).first()
        if found is None:
            empty.append((recipient, uuid))
    return w.many("DELETE FROM misp_outbox WHERE recipient = ? AND event_uuid = ?", empty)


_FEED_EVENT_LIVES = (
    "EXISTS (SELECT 1 FROM misp_outbox o WHERE o.recipient = misp_feed_events.recipient"
    " AND o.event_uuid = misp_feed_events.event_uuid)"
)


def drop_feed_events(w: Writer, recipient: str, uuids: Iterable[str]) -> int:
    """Stored MISP feed files of these events: they show what was removed. An event that still
    has an outbox entry keeps only its row's timestamp, out of date (no `built_from` is ''): it
    is built again without what was removed when next asked for, stamped after the timestamp
    MISP holds, or MISP would never fetch it again. One without an entry is gone from the feed."""
    keys = [(recipient, uuid) for uuid in sorted(set(uuids))]
    emptied = w.many(
        "UPDATE misp_feed_events SET body = '', manifest = '', hashes = '', deliveries = '[]',"
        f" built_from = '' WHERE recipient = ? AND event_uuid = ? AND {_FEED_EVENT_LIVES}",
        keys,
    )
    dropped = w.many(
        f"DELETE FROM misp_feed_events WHERE recipient = ? AND event_uuid = ? AND NOT {_FEED_EVENT_LIVES}",
        keys,
    )
    return emptied + dropped


def drop_delivery_states(w: Writer, pks: Iterable[int]) -> tuple[int, int]:
    """Where the notifications stood with their recipients, and the history of it (feedback
    notes may quote the notification): (states, events) removed."""
    keys = [(pk,) for pk in sorted(set(pks))]
    states = w.many("DELETE FROM delivery_states WHERE notification = ?", keys)
    events = w.many("DELETE FROM delivery_events WHERE notification = ?", keys)
    return states, events


def redact_notes(w: Writer, pks: Iterable[Any], text: str) -> int:
    """Feedback notes (delivery_events) that quote a forgotten value lose their text."""
    return w.many("UPDATE delivery_events SET note = ? WHERE pk = ?", [(text, pk) for pk in sorted(set(pks))])


def shared_row(w: Writer, collection: int, digest: int) -> tuple[int, bool] | None:
    found = deliveries.shared_rows(w.conn, collection, [digest]).get(digest)
    return found


def keep_as_stored(
    w: Writer,
    collection_id: str,
    number: int,
    digest: int,
    date_added: int,
    row: tuple[str, str, str, str, str],
) -> None:
    """A shared object a removed entry brought, which the collection still needs: kept at its
    date_added as a stored object (`row`: id, version, type, spec_version, body), so that it is
    served where it always was, neither again nor elsewhere."""
    from connector.store.objects import add_object_rows

    pk = add_object_rows(w, [row])[(row[0], row[1])]
    w.insert(
        "collection_objects",
        ("date_added", "collection_id", "object_pk", "stix_id", "type", "version", "is_latest"),
        [(date_added, collection_id, pk, row[0], row[2], row[1], True)],
    )
    w.many(
        "UPDATE collection_shared SET stored = ? WHERE collection = ? AND digest = ?",
        [(True, number, digest)],
    )


def stored_id(w: Writer, number: int, date_added: int) -> str | None:
    """The id of the stored object the collection holds at date_added (a shared object's)."""
    of = "collection_id = (SELECT id FROM collections WHERE number = ?) AND date_added = ?"
    row = w.conn.exec_driver_sql(
        w.sql(f"SELECT stix_id FROM collection_objects WHERE {of}"), (number, date_added)
    ).first()
    return None if row is None else str(row[0])


def submitted_bodies_naming(w: Writer, number: int, stix_id: str) -> list[str]:
    """Bodies of the partner-submitted objects (object_sources) the collection serves as their
    latest version whose JSON holds `stix_id`: what may refer to it. Only submitted ones: an
    old-layout notification's own objects are removed with it (later in the same batch)."""
    statement = (
        "SELECT s.body FROM collection_objects co JOIN stix_objects s ON s.pk = co.object_pk "
        "JOIN object_sources os ON os.stix_id = co.stix_id "
        "WHERE co.collection_id = (SELECT id FROM collections WHERE number = ?) AND co.is_latest = ? "
        f"AND co.stix_id <> ? AND {_contains(w.conn, 's.body')}"
    )
    return [r[0] for r in w.conn.exec_driver_sql(w.sql(statement), (number, True, stix_id, stix_id.lower()))]


def drop_shared(w: Writer, number: int, digest: int) -> int:
    """A shared object out of the collection: its collection_shared row, and when it is stored
    there, its membership (and the object row when no collection holds it any more)."""
    held = shared_row(w, number, digest)
    if held is None:
        return 0
    date_added, stored = held
    if stored:
        of = "collection_id = (SELECT id FROM collections WHERE number = ?) AND date_added = ?"
        member = w.conn.exec_driver_sql(
            w.sql(f"SELECT object_pk FROM collection_objects WHERE {of}"), (number, date_added)
        ).first()
        w.many(f"DELETE FROM collection_objects WHERE {of}", [(number, date_added)])
        if member is not None:
            drop_unheld_objects(w, [int(member[0])])
    w.many("DELETE FROM collection_shared WHERE collection = ? AND digest = ?", [(number, digest)])
    return 1


def drop_claims(w: Writer, number: int, digests: Iterable[int]) -> None:
    """Shared objects out of the collection that it holds as claims only (not stored)."""
    deliveries.drop_shared(w, number, digests)


def drop_unheld_objects(w: Writer, pks: Iterable[int]) -> int:
    """stix_objects rows no collection holds any more: deleted."""
    gone = 0
    for pk in sorted(set(pks)):
        held = w.conn.exec_driver_sql(
            w.sql("SELECT 1 FROM collection_objects WHERE object_pk = ? LIMIT 1"), (pk,)
        ).first()
        if held is None:
            gone += w.many("DELETE FROM stix_objects WHERE pk = ?", [(pk,)])
    return gone


def drop_stored_objects(w: Writer, pks: Iterable[int]) -> tuple[int, int, list[tuple[str, str]]]:
    """Stored objects (every version given) out of every collection and the store.
    (memberships, objects, (collection_id, stix_id) of the memberships removed)."""
    wanted = sorted(set(pks))
    statement = "SELECT date_added, collection_id, stix_id FROM collection_objects WHERE object_pk IN ({in})"
    members = [(int(d), c, s) for d, c, s in w.rows_in(statement, wanted)]
    w.many(
        "DELETE FROM collection_objects WHERE collection_id = ? AND date_added = ?",
        [(c, d) for d, c, _s in members],
    )
    objects = w.many("DELETE FROM stix_objects WHERE pk = ?", [(pk,) for pk in wanted])
    return len(members), objects, [(c, s) for _d, c, s in members]


def relatest(w: Writer, collection_id: str, stix_id: str) -> None:
    """After versions of an object left a collection: the highest one left is the latest."""
    rows = w.conn.exec_driver_sql(
        w.sql(
            "SELECT date_added, version FROM collection_objects WHERE collection_id = ? AND stix_id = ? "
            "ORDER BY version DESC, date_added DESC"
        ),
        (collection_id, stix_id),
    ).all()
    if rows and rows:
        w.many(
            "UPDATE collection_objects SET is_latest = ? WHERE collection_id = ? AND date_added = ?",
            [(True, collection_id, int(rows[0][0]))],
        )


def drop_sources(w: Writer, ids: Iterable[str]) -> int:
    return w.many("DELETE FROM object_sources WHERE stix_id = ?", [(i,) for i in sorted(set(ids))])


def drop_shared_digest_everywhere(w: Writer, digests: Iterable[int]) -> int:
    """collection_shared rows of these digests in every collection (objects forgotten)."""
    return w.many("DELETE FROM collection_shared WHERE digest = ?", [(d,) for d in sorted(set(digests))])


def drop_evidence(w: Writer, pks: Iterable[int]) -> int:
    return w.many("DELETE FROM evidence WHERE pk = ?", [(pk,) for pk in sorted(set(pks))])


def drop_unused_key_paths(w: Writer) -> int:
    """Stored key paths (connector/store/evidence.py) that no evidence refers to any more.
    There are a few per feed, and evidence is not indexed by them: one read of the bodies."""
    first = "SELECT pk, substr(body, 1, 24) FROM evidence WHERE substr(body, 1, 1) = ?"
    keys = {int(pk) for pk, _head in w.conn.exec_driver_sql(w.sql(first), (evidence.KEYS,))}
    if not keys:
        return 0
    used = {
        int(head[1 : head.index("[")])
        for _pk, head in w.conn.exec_driver_sql(w.sql(first), (evidence.VALUES,))
        if "[" in head
    }
    return drop_evidence(w, keys - used)


def bodies_with_key_paths(conn: Connection, key_paths: Iterable[int]) -> set[int]:
    """Evidence stored as its values against one of these key paths (forget: a key that holds
    the value forgotten)."""
    statement = _sql(conn, "SELECT pk FROM evidence WHERE body LIKE ?")
    return {
        int(r[0])
        for pk in sorted(set(key_paths))
        for r in conn.exec_driver_sql(statement, (f"{evidence.VALUES}{pk}[%",))
    }


def drop_run_rows_before(w: Writer, started_before: str) -> int:
    """Quarantined and skipped rows (raw lines) of runs that started before the timestamp; the
    runs and their counts stay."""
    statement = "DELETE FROM run_rows WHERE run_id IN (SELECT id FROM ingest_runs WHERE started_at < ?)"
    result = w.conn.exec_driver_sql(w.sql(statement), (started_before,))
    return int(result.rowcount or 0)


def drop_rows(w: Writer, table: str, key: str, keys: Iterable[Any]) -> int:
    return w.many(f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k in sorted(set(keys))])


def clock_stamp(conn: Connection) -> int:
    """The highest date_added handed out so far (the clock row)."""
    return int(conn.exec_driver_sql("SELECT last_date_added FROM clock").scalar() or 0)


def row_evidence(conn: Connection, pks: Sequence[int]) -> dict[int, int]:
    """Notification -> the evidence row its own row points at (its versions':
    version_evidence_users)."""
    statement = "SELECT pk, evidence FROM notifications WHERE pk IN ({in})"
    return {int(pk): int(used) for pk, used in rows_in(conn, statement, pks)}


def evidence_used_since(conn: Connection, pk: int, stamp: int) -> set[int]:
    """Evidence that notifications above `pk` and versions above `stamp` point at."""
    used = {
        int(r[0])
        for r in conn.exec_driver_sql(_sql(conn, "SELECT evidence FROM notifications WHERE pk > ?"), (pk,))
    }
    for block in notifications.version_blocks_after(conn, stamp):
        used.update(evidence.row_of(key) for at, _pk, key in block.refs() if at > stamp and key is not None)
    return used


def outbox_errors_containing(conn: Connection, text: str) -> list[tuple[tuple[str, str], str]]:
    """((recipient, event uuid), last error) of outbox entries whose last error quotes `text`
    in any case (the caller checks it is a whole token)."""
    condition = _contains(conn, "last_error")
    sql = "SELECT recipient, event_uuid, last_error FROM misp_outbox WHERE last_error IS NOT NULL"
    sql += f" AND {condition}"
    return [((r[0], r[1]), r[2]) for r in conn.exec_driver_sql(_sql(conn, sql), (text.lower(),))]


def replace_outbox_errors(w: Writer, rows: Iterable[tuple[str, str]], text: str) -> int:
    return w.many(
        "UPDATE misp_outbox SET last_error = ? WHERE recipient = ? AND event_uuid = ?",
        [(text, recipient, uuid) for recipient, uuid in sorted(set(rows))],
    )


def replace_in_run(w: Writer, run_id: int, redact: Callable[[str], str]) -> None:
    """A run's error and input names with a value's every mention redacted (`redact`)."""
    row = w.conn.exec_driver_sql(
        w.sql("SELECT inputs, error FROM ingest_runs WHERE id = ?"), (run_id,)
    ).first()
    if row is None:
        return
    inputs, error = row
    w.many(
        "UPDATE ingest_runs SET inputs = ?, error = ? WHERE id = ?",
        [(redact(inputs), redact(error) if error else error, run_id)],
    )


def redact_run_row_inputs(w: Writer, pks: Iterable[int], redact: Callable[[str], str]) -> int:
    """The input (file) names of these run rows with a value's every mention redacted: a row
    quoting another value stays, its file's name named the forgotten one."""
    wanted = sorted(set(pks))
    found = rows_in(w.conn, "SELECT pk, input FROM run_rows WHERE pk IN ({in})", wanted)
    changed = [(redact(name), pk) for pk, name in found if redact(name) != name]
    return w.many("UPDATE run_rows SET input = ? WHERE pk = ?", changed)
