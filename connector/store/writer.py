"""One exclusive write transaction: the only code that assigns date_added stamps and row keys.

Writes happen in exclusive transactions: SQLite's BEGIN IMMEDIATE, and on PostgreSQL a row lock
on the single `clock` row. Holding that lock while assigning stamps makes date_added strictly
increase in commit order across any number of processes, which is what lets TAXII pollers page
with `added_after` without ever missing a row. Holding it also makes it safe to number new rows
here instead of asking the database for each one back.

The hot paths speak SQL to the driver directly (executemany of tuples; COPY on PostgreSQL): at
millions of rows a day SQLAlchemy's per-row parameter processing was most of an ingest's cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from connector.store import schema as t
from connector.store.times import now_us

CHUNK = 500  # values per IN (...) list
SLOTS = 16  # date_added values a stamp reserves: one per object of a notification version


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Writer:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        query = select(t.clock.c.last_date_added).where(t.clock.c.id == 1)
        if self.dialect == "postgresql":
            query = query.with_for_update()
            # Every look-up a writer makes is by key. Within one long ingest transaction a table
            # can grow from nothing to millions of rows that no ANALYZE has seen yet, and the
            # planner, still taking it for tiny, reads all of it for each batch of keys.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        self._last = int(conn.execute(query).scalar_one())
        self._touched_clock = False
        self._next_pk: dict[str, int] = {}

    # --- the clock -------------------------------------------------------------------------

    def next_stamp(self) -> int:
        """A new stamp: a multiple of SLOTS above every date_added handed out so far, with its
        SLOTS values reserved (a notification version's objects take stamp + slot)."""
        stamp = max(now_us(), self._last + 1)
        stamp += -stamp % SLOTS
        self._last = stamp + SLOTS - 1
        self._touched_clock = True
        return stamp

    def finish(self) -> None:
        if self._touched_clock:
            self.conn.execute(update(t.clock).where(t.clock.c.id == 1).values(last_date_added=self._last))
        if self.dialect == "postgresql":
            for table, following in self._next_pk.items():
                if following > 1:
                    # Rows numbered here bypassed the sequence: move it past them for any other insert.
                    self.conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), %s)", (following - 1,)
                    )

    def allocate(self, table: str, count: int) -> int:
        """The first of `count` new pks of `table` (safe: every inserter holds the lock)."""
        first = self._next_pk.get(table)
        if first is None:
            found = self.conn.exec_driver_sql(f"SELECT max(pk) FROM {table}").scalar()
            first = int(found or 0) + 1
        self._next_pk[table] = first + count
        return first

    # --- SQL to the driver ---------------------------------------------------------------------

    def sql(self, statement: str) -> str:
        """`?` placeholders in the driver's own style (psycopg's `%s`, with a literal `%` doubled)."""
        if self.dialect == "postgresql":
            return statement.replace("%", "%%").replace("?", "%s")
        return statement

    def many(self, statement: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """executemany. Callers hand rows sorted by the key of the table's busiest index: a
        batch then walks each b-tree once, front to back, instead of jumping about in it."""
        if not rows:
            return 0
        result = self.conn.exec_driver_sql(self.sql(statement), list(rows))
        return int(result.rowcount or 0)

    def insert(
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
            return self.many(f"INSERT INTO {table} ({names}) VALUES ({marks}){conflict}", rows)
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

    def rows_in(self, statement: str, values: Sequence[Any], *params: Any) -> Iterator[Any]:
        """Rows of `statement` whose `{in}` placeholder takes the values, a chunk at a time."""
        yield from rows_in(self.conn, statement, values, *params)


def rows_in(conn: Connection, statement: str, values: Sequence[Any], *params: Any) -> Iterator[Any]:
    """Rows of `statement` (`?` placeholders) whose `{in}` placeholder takes the values, a chunk
    at a time; on any connection, reading or writing."""
    for sql, chunk_params in _in_statements(conn, statement, values, params):
        yield from conn.exec_driver_sql(sql, chunk_params)


def tuples_in(conn: Connection, statement: str, values: Sequence[Any], *params: Any) -> Iterator[Any]:
    """rows_in, read straight from the driver inside the connection's transaction: plain
    tuples, not SQLAlchemy rows (and no SQLAlchemy events). For the look-ups an ingest makes
    per batch (a stored notification and its latest version for every subject), where building
    SQLAlchemy rows was a large part of re-observing a notification."""
    if not conn.in_transaction():
        # What a statement through SQLAlchemy would do first (autobegin): begin the transaction,
        # with the engine's own BEGIN (connector/store/engine.py), so these reads are in it.
        conn.begin()
    driver = conn.connection.driver_connection
    assert driver is not None
    for sql, chunk_params in _in_statements(conn, statement, values, params):
        yield from driver.execute(sql, chunk_params).fetchall()


def _in_statements(
    conn: Connection, statement: str, values: Sequence[Any], params: tuple[Any, ...]
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(SQL in the driver's placeholder style, its parameters) per chunk of the values."""
    postgres = conn.dialect.name == "postgresql"
    if postgres and "IN ({in})" in statement:
        # On PostgreSQL the values go as one array (`= ANY(%s)`, an index look-up all the same):
        # psycopg parses a statement in Python, and one of 500 placeholders is too long for
        # its cache, so it parsed each one again.
        sql = statement.replace("IN ({in})", "= ANY(?)").replace("%", "%%").replace("?", "%s")
        for chunk in chunks(list(values)):
            yield sql, (*params, pg_array(chunk))
        return
    for chunk in chunks(list(values)):
        marks = ",".join("?" * len(chunk))
        sql = statement.replace("{in}", marks)
        if postgres:
            sql = sql.replace("%", "%%").replace("?", "%s")
        yield sql, (*params, *chunk)


def pg_array(values: Sequence[Any]) -> str | list[Any]:
    """Whole numbers, or flags (True, False, None), as the text form of a PostgreSQL array,
    made by join, which PostgreSQL casts to the array type the statement needs (psycopg's
    dumper of a Python list took three times as long); other values as a list, for psycopg."""
    if all(value.__class__ is int for value in values):
        return "{" + ",".join(map(str, values)) + "}"
    if all(value is None or value.__class__ is bool for value in values):
        return "{" + ",".join("NULL" if flag is None else "t" if flag else "f" for flag in values) + "}"
    return list(values)
