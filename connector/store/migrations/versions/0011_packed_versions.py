"""A notification version in four columns: stamp, notification, evidence, and the rest packed.

Every re-observation adds a version row, so its size is what a later day of the same hosts
costs the store (issue #12: a second day at most 0.3x the input). With a column per value a
version took about 49 bytes in SQLite; `packed` holds previous, renderer, modified, first_seen,
last_seen, count, kind, recipients and run as varints relative to the stamp
(connector/store/packing.py), about 15 bytes, and stamp, notification and evidence stay
columns because SQL selects by them (retention).

Every row is rewritten into a new table in batches of BATCH rows in stamp order (a store may
hold millions of versions, none of them all in memory), the old table dropped and the new one
renamed to it; the same on both engines. Downgrade unpacks the rows back into the columns.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

# The packing is part of the stored data: this migration packs as the code does (see the note
# on changing the encoding in connector/store/packing.py).
from connector.store.packing import decode_version, encode_version

revision = "0011"
down_revision = "0010"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 20_000
COLUMNS = (
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
PACKED = ("stamp", "notification", "evidence", "packed")


def _columns_table(name: str) -> None:
    """The layout of 0007 to 0010 (a column per value)."""
    op.create_table(
        name,
        sa.Column("stamp", BigId, primary_key=True, autoincrement=False),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("previous", sa.BigInteger, nullable=True),
        sa.Column("renderer", sa.SmallInteger, nullable=False),
        sa.Column("modified", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.BigInteger, nullable=True),
        sa.Column("last_seen", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("kind", sa.Integer, nullable=True),
        sa.Column("evidence", sa.BigInteger, nullable=True),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("run", sa.BigInteger, nullable=False),
    )


def _packed_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("stamp", BigId, primary_key=True, autoincrement=False),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("evidence", sa.BigInteger, nullable=True),
        sa.Column("packed", sa.LargeBinary, nullable=False),
    )


def _pack(row: Any) -> dict[str, Any]:
    stamp, pk, previous, renderer, modified, first, last, count, kind, evidence, text, run = row
    recipients = tuple(int(p) for p in text.split()) if text else ()
    packed = encode_version(stamp, previous, renderer, modified, first, last, count, kind, recipients, run)
    return {"stamp": stamp, "notification": pk, "evidence": evidence, "packed": packed}


def _unpack(row: Any) -> dict[str, Any]:
    v = decode_version(row[0], row[1], row[2], bytes(row[3]))
    out = {name: getattr(v, name) for name in COLUMNS}
    out["recipients"] = " ".join(map(str, v.recipients))
    return out


def _rewrite(
    source: tuple[str, ...], target: tuple[str, ...], convert: Callable[[Any], dict[str, Any]]
) -> None:
    """notification_versions (of columns `source`) rewritten into a new table of columns
    `target`, BATCH rows at a time by stamp, which then takes its name."""
    conn = op.get_bind()
    new = "notification_versions_0011"
    (_packed_table if "packed" in target else _columns_table)(new)
    insert = sa.table(new, *(sa.column(c) for c in target)).insert()
    select = sa.text(
        f"SELECT {', '.join(source)} FROM notification_versions WHERE stamp > :after ORDER BY stamp LIMIT {BATCH}"
    )
    after = -(2**63)
    while True:
        rows = conn.execute(select, {"after": after}).all()
        if not rows:
            break
        conn.execute(insert, [convert(row) for row in rows])
        after = rows[-1][0]
    op.drop_table("notification_versions")
    op.rename_table(new, "notification_versions")
    if conn.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE notification_versions RENAME CONSTRAINT {new}_pkey TO notification_versions_pkey")


def upgrade() -> None:
    _rewrite(COLUMNS, PACKED, _pack)


def downgrade() -> None:
    _rewrite(PACKED, COLUMNS, _unpack)
