"""SQL of delivery: which notification version reached which collection when, what a collection
holds of the objects versions share, and what was taken out of it again.

The delivery log is kept in blocks (`delivery_blocks`), one row per collection and write batch
of up to BLOCK entries, because a row per delivery was most of a re-observation's cost in
storage. An entry is a version stamp and 16 bits:

    bits 0-11   the shared objects (by slot) this entry brought into the collection
    SUPERSEDED  a later version of the notification was delivered to this collection
    EARLIER     an earlier version of the notification had been delivered to this collection
    RECHECK     objects of the notification were removed from this collection (TAXII DELETE):
                the flags above no longer say which version is the latest or the first there;
                the reader works it out from the versions. Set on every entry of the
                notification there, and carried to the entries of its later versions there

Encoded as the stamp's distance from the entry before it (in SLOTS, a varint) and the bits as
two bytes, so changing flags never changes a block's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from connector.store import blocks
from connector.store.writer import SLOTS, Writer, pg_array, rows_in

BLOCK = 256
SHARED_BITS = 0x0FFF
SUPERSEDED = 1 << 12
EARLIER = 1 << 13
RECHECK = 1 << 14
_SHIFT = SLOTS.bit_length() - 1  # stamps are multiples of SLOTS


@dataclass(frozen=True, slots=True)
class Block:
    collection: int
    last: int
    first: int
    entries: list[tuple[int, int]]  # (stamp, bits)


def encode(entries: Sequence[tuple[int, int]]) -> bytes:
    out = bytearray()
    previous = entries[0][0] if entries else 0
    for stamp, bits in entries:
        step = (stamp - previous) >> _SHIFT
        previous = stamp
        while step >= 0x80:
            out.append((step & 0x7F) | 0x80)
            step >>= 7
        out.append(step)
        out += bits.to_bytes(2, "little")
    return bytes(out)


def decode(first: int, data: bytes) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    stamp, i, size = first, 0, len(data)
    while i < size:
        step = shift = 0
        while True:
            byte = data[i]
            i += 1
            step |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        stamp += step << _SHIFT
        out.append((stamp, data[i] | data[i + 1] << 8))
        i += 2
    return out


def _block(row: Sequence[object]) -> Block:
    collection, last, first, data = row
    return Block(int(collection), int(last), int(first), decode(int(first), bytes(data)))  # type: ignore[call-overload,arg-type]


# --- reading -------------------------------------------------------------------------------------


def blocks_after(conn: Connection, collection: int, after: int | None, limit: int) -> list[Block]:
    """Up to `limit` blocks of the collection holding a date_added above `after`, in order."""
    statement = "SELECT collection, last, first, entries FROM delivery_blocks WHERE collection = ?"
    params: tuple[int, ...] = (collection,)
    if after is not None:
        statement += " AND last > ?"
        params += (after,)
    statement += " ORDER BY last LIMIT ?"
    sql = statement.replace("?", "%s") if conn.dialect.name == "postgresql" else statement
    return [_block(row) for row in conn.exec_driver_sql(sql, (*params, limit))]


def iter_entries(
    conn: Connection, collection: int, after: int | None, batch: int = 8
) -> Iterator[tuple[int, int]]:
    """Every entry of the collection whose objects may lie above `after`, in order."""
    while True:
        blocks = blocks_after(conn, collection, after, batch)
        for block in blocks:
            for stamp, bits in block.entries:
                if after is None or stamp + SLOTS - 1 > after:
                    yield stamp, bits
        if len(blocks) < batch:
            return
        after = blocks[-1].last


def entry_bits(conn: Connection, collection: int, stamps: Iterable[int]) -> dict[int, int]:
    """The bits of the entries of these stamps in the collection (absent: not delivered there)."""
    wanted = set(stamps)
    out: dict[int, int] = {}
    for block in _blocks_holding(conn, {collection: sorted(wanted)}):
        out.update((stamp, bits) for stamp, bits in block.entries if stamp in wanted)
    return out


def shared_rows(conn: Connection, collection: int, digests: Iterable[int]) -> dict[int, tuple[int, bool]]:
    """digest -> (date_added, stored) of the shared objects the collection holds among these."""
    statement = (
        "SELECT digest, date_added, stored FROM collection_shared WHERE collection = ? AND digest IN ({in})"
    )
    return {
        int(d): (int(at), bool(stored))
        for d, at, stored in rows_in(conn, statement, sorted(set(digests)), collection)
    }


def removed_between(conn: Connection, collection: int, low: int, high: int) -> set[int]:
    """date_added values taken out of the collection within [low, high]."""
    sql = "SELECT date_added FROM removed_objects WHERE collection = ? AND date_added BETWEEN ? AND ?"
    if conn.dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    return {int(r[0]) for r in conn.exec_driver_sql(sql, (collection, low, high))}


def removed_in(conn: Connection, collection: int, values: Iterable[int]) -> set[int]:
    statement = "SELECT date_added FROM removed_objects WHERE collection = ? AND date_added IN ({in})"
    return {int(r[0]) for r in rows_in(conn, statement, sorted(set(values)), collection)}


# --- writing -------------------------------------------------------------------------------------


def append(w: Writer, entries: dict[int, list[tuple[int, int]]]) -> None:
    """Entries (stamp, bits) per collection, each collection's in stamp order, as new blocks,
    in one statement (a batch reaches a few hundred collections: on PostgreSQL a COPY each
    was a tenth of an ingest)."""
    rows = []
    for collection, theirs in sorted(entries.items()):
        for start in range(0, len(theirs), BLOCK):
            part = theirs[start : start + BLOCK]
            rows.append((collection, part[-1][0] + SLOTS - 1, part[0][0], encode(part)))
    w.insert("delivery_blocks", ("collection", "last", "first", "entries"), rows)


def change_bits(w: Writer, changes: dict[int, dict[int, tuple[int, int]]]) -> dict[int, set[int]]:
    """collection -> stamp -> (bits to set, bits to clear), for entries already stored there;
    returns the stamps (per collection) of the changed entries that carry RECHECK.

    All collections at once: a re-observation supersedes a version in every collection it went
    to, a few hundred per batch, and a look-up and an UPDATE per collection were a round trip
    each on PostgreSQL. The blocks' new entries go in one executemany (pipelined by psycopg).
    RECHECK comes back because the blocks are read here anyway: the entry of a next version must
    carry it too (recording.BatchRecorder._write), and asking again would be a look-up more."""
    wanted = {collection: sorted(theirs) for collection, theirs in changes.items() if theirs}
    rechecked: dict[int, set[int]] = {}
    if not wanted:
        return rechecked
    updates = []
    for block in _blocks_holding(w.conn, wanted):
        theirs = changes[block.collection]
        # Rare (an operator's DELETE): the test on the bits first, the look-up only then.
        marked = [stamp for stamp, bits in block.entries if bits & RECHECK and stamp in theirs]
        if marked:
            rechecked.setdefault(block.collection, set()).update(marked)
        entries = [
            (stamp, (bits | theirs[stamp][0]) & ~theirs[stamp][1]) if stamp in theirs else (stamp, bits)
            for stamp, bits in block.entries
        ]
        if entries != block.entries:
            updates.append((encode(entries), block.collection, block.last))
    updates.sort(key=lambda update: (update[1], update[2]))
    w.many("UPDATE delivery_blocks SET entries = ? WHERE collection = ? AND last = ?", updates)
    return rechecked


BLOCK_PROBES = 10_000  # PostgreSQL: (collection, stamp) pairs looked up per statement


def _span(block: Block) -> tuple[int, int]:
    return block.first, block.last


def _blocks_holding(conn: Connection, stamps: dict[int, list[int]]) -> Iterator[Block]:
    """The blocks holding these stamps (collection -> its stamps, sorted), each once. On
    PostgreSQL one statement per BLOCK_PROBES stamps, each probed on the server (an index
    range of one row); on SQLite, in process, one look-up per block."""
    if conn.dialect.name != "postgresql":
        sql = (
            "SELECT collection, last, first, entries FROM delivery_blocks "
            "WHERE collection = ? AND last >= ? ORDER BY last LIMIT 1"
        )
        for collection, theirs in sorted(stamps.items()):

            def block_at(stamp: int, collection: int = collection) -> Block | None:
                row = conn.exec_driver_sql(sql, (collection, stamp)).first()
                return None if row is None else _block(row)

            yield from blocks.holding(theirs, block_at, _span)
        return
    # Each stamp's block is the first whose `last` is not below it (if its `first` is not
    # above it); a block holding many of the stamps is sent once.
    statement = (
        "WITH holding AS (SELECT DISTINCT b.collection, b.last "
        "FROM unnest(%s::integer[], %s::bigint[]) AS s(collection, stamp) "
        "CROSS JOIN LATERAL (SELECT d.collection, d.last, d.first FROM delivery_blocks d "
        "WHERE d.collection = s.collection AND d.last >= s.stamp ORDER BY d.last LIMIT 1) b "
        "WHERE b.first <= s.stamp) "
        "SELECT d.collection, d.last, d.first, d.entries FROM holding h "
        "JOIN delivery_blocks d ON d.collection = h.collection AND d.last = h.last"
    )
    pairs = [(collection, stamp) for collection, theirs in sorted(stamps.items()) for stamp in theirs]
    seen: set[tuple[int, int]] = set()
    for start in range(0, len(pairs), BLOCK_PROBES):
        collections, probes = zip(*pairs[start : start + BLOCK_PROBES], strict=True)
        for row in conn.exec_driver_sql(statement, (pg_array(collections), pg_array(probes))):
            block = _block(row)
            if (block.collection, block.last) not in seen:  # a block may span two statements
                seen.add((block.collection, block.last))
                yield block


CLAIMS_PER_STATEMENT = 200
CLAIMS_PER_ARRAY = 10_000  # PostgreSQL


def claim_shared(w: Writer, claims: dict[int, dict[int, int]]) -> list[tuple[int, int]]:
    """Shared objects that may be new to their collections (collection -> digest -> the
    date_added it would take there): those that are go in (`stored` NULL: rendered with a
    notification version), and their (collection, date_added) come back. One statement per 200
    (INSERT ... ON CONFLICT DO NOTHING RETURNING) rather than a look-up and an insert; on
    PostgreSQL one per 10,000, the rows passed as arrays.

    The rows go in sorted by key, made as one flat list of parameters (collection, digest,
    date_added, ...) that each statement takes a slice of: a tuple per row, and sorting the
    tuples, cost more than the statements' own work in Python."""
    flat: list[int] = []
    for collection in sorted(claims):
        theirs = claims[collection]
        for key in sorted(theirs):
            flat += (collection, key, theirs[key])
    if not flat:
        return []
    if w.dialect == "postgresql":
        # One statement of three arrays per CLAIMS_PER_ARRAY rows: psycopg parses a statement
        # of 800 placeholders in Python every time (too long for its cache), and that parsing
        # was a third of an ingest's time on PostgreSQL.
        statement = (
            "INSERT INTO collection_shared (collection, digest, date_added) "
            "SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::bigint[]) "
            "ON CONFLICT DO NOTHING RETURNING collection, date_added"
        )
        step = 3 * CLAIMS_PER_ARRAY
        claimed: list[tuple[int, int]] = []
        for start in range(0, len(flat), step):
            part = flat[start : start + step]
            # Each array in PostgreSQL's text form, made by join: psycopg's dumper of a Python
            # list took three times as long.
            arrays = (pg_array(part[0::3]), pg_array(part[1::3]), pg_array(part[2::3]))
            claimed += map(tuple, w.conn.exec_driver_sql(statement, arrays))
        return claimed
    # Straight to the driver, inside the writer's transaction: its RETURNING rows come back as
    # plain tuples (on a first ingest most claims go in, and SQLAlchemy made a Row of each).
    driver = w.conn.connection.driver_connection
    assert driver is not None
    step = 3 * CLAIMS_PER_STATEMENT
    full = _claims_statement(CLAIMS_PER_STATEMENT)  # most statements are of a whole chunk
    claimed = []
    for start in range(0, len(flat), step):
        part = flat[start : start + step]
        statement = full if len(part) == step else _claims_statement(len(part) // 3)
        claimed += driver.execute(statement, part).fetchall()
    return claimed


def _claims_statement(rows: int) -> str:
    return (
        "INSERT INTO collection_shared (collection, digest, date_added) VALUES "
        + ", ".join(["(?, ?, ?)"] * rows)
        + " ON CONFLICT DO NOTHING RETURNING collection, date_added"
    )


def add_shared(w: Writer, rows: list[tuple[int, int, int, bool | None]]) -> None:
    """(collection, digest, date_added, stored) of shared objects new to their collections."""
    w.insert("collection_shared", ("collection", "digest", "date_added", "stored"), sorted(rows))


def remove(w: Writer, collection: int, date_added: Iterable[int]) -> None:
    w.insert(
        "removed_objects",
        ("collection", "date_added"),
        [(collection, d) for d in sorted(set(date_added))],
        skip_present=True,
    )


def drop_shared(w: Writer, collection: int, digests: Iterable[int]) -> None:
    w.many(
        "DELETE FROM collection_shared WHERE collection = ? AND digest = ?",
        [(collection, d) for d in sorted(set(digests))],
    )
