"""Notification versions in blocks, `version_blocks`, instead of a row each.

A version is added at every re-observation, so its size is what a later day of the same hosts
costs the store (issue #12: a second day at most 0.3x the input). As a row of its own it cost
PostgreSQL 86 bytes (a 24-byte header, a line pointer and an index entry around about 25 bytes
of values), and a second day of 100,000 hosts grew the store by 0.56x the day's input. In
blocks of up to 64 versions keyed by their last stamp, as the delivery log is, the versions of
that day take 26 bytes each and the day 0.34x (connector/store/packing.py has the encoding).

New batches write a block per set of recipients (their stamps are consecutive); the versions
of the old layout are cut into blocks of BLOCK_VERSIONS in stamp order. Rows are read BATCH at a
time in stamp order (a store may hold millions of versions, none of them all in memory), and the
old table is dropped; the same on both engines. Downgrade writes a row per version again.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

# The encoding is part of the stored data: this migration packs as the code does (see the note
# on changing it in connector/store/packing.py).
from connector.store.packing import BLOCK_VERSIONS, VersionBlock, blocks_of, decode_version

revision = "0015"
down_revision = "0014"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 20_000


def upgrade() -> None:
    op.create_table(
        "version_blocks",
        sa.Column("last", BigId, primary_key=True, autoincrement=False),
        sa.Column("first", sa.BigInteger, nullable=False),
        sa.Column("entries", sa.LargeBinary, nullable=False),
    )
    conn = op.get_bind()
    blocks = sa.table("version_blocks", sa.column("last"), sa.column("first"), sa.column("entries"))
    after = None
    while True:
        where = "" if after is None else "WHERE stamp > :after "
        rows = conn.execute(
            sa.text(
                "SELECT stamp, notification, evidence, packed FROM notification_versions "
                f"{where}ORDER BY stamp LIMIT {BATCH}"
            ),
            {} if after is None else {"after": after},
        ).all()
        if not rows:
            break
        # One group for all: the old layout's stamps are in arrival order, not by recipients.
        cut = blocks_of(
            (int(stamp), int(notification), None if evidence is None else int(evidence), bytes(packed), ())
            for stamp, notification, evidence, packed in rows
        )
        conn.execute(
            blocks.insert(), [{"last": last, "first": first, "entries": data} for last, first, data in cut]
        )
        after = rows[-1][0]
    op.drop_table("notification_versions")


def downgrade() -> None:
    op.create_table(
        "notification_versions",
        sa.Column("stamp", BigId, primary_key=True, autoincrement=False),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("evidence", sa.BigInteger, nullable=True),
        sa.Column("packed", sa.LargeBinary, nullable=False),
    )
    conn = op.get_bind()
    versions = sa.table(
        "notification_versions",
        sa.column("stamp"),
        sa.column("notification"),
        sa.column("evidence"),
        sa.column("packed"),
    )
    blocks = max(1, BATCH // BLOCK_VERSIONS)  # a statement's blocks: about BATCH versions
    after = None
    while True:
        where = "" if after is None else "WHERE last > :after "
        rows = conn.execute(
            sa.text(f"SELECT last, first, entries FROM version_blocks {where}ORDER BY last LIMIT {blocks}"),
            {} if after is None else {"after": after},
        ).all()
        if not rows:
            break
        out = []
        for last, first, entries in rows:
            for stamp, notification, evidence, packed in VersionBlock(last, first, bytes(entries)).entries():
                decode_version(stamp, notification, evidence, packed)  # refuses what does not read
                out.append(
                    {"stamp": stamp, "notification": notification, "evidence": evidence, "packed": packed}
                )
        conn.execute(versions.insert(), out)
        after = rows[-1][0]
    op.drop_table("version_blocks")
