"""Changes to a notification's evidence kept in its version ("inline changes"), not in a row.

A re-observation whose evidence changed in a detail (a session cookie, a page's length) stored
the change as an evidence row of its own (digest 0). On PostgreSQL that row's header, line
pointer and two index entries cost more than the change: 53 of the 91 bytes a second day of
the same hosts added per row. From this revision a change is kept in the version's block
(connector/store/packing.py: flags bit 2, a tagged evidence field), and stored as a row only
when a later version has the same evidence (connector/store/evidence.py).

Upgrade changes nothing: blocks without an inline change are written as before, and change
rows stored before stay valid (a version refers to them by pk, as it did). Downgrade stores
every inline change as an evidence row with digest 0, as the code before this revision did,
and writes its block again without it: that code reads only untagged blocks.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

# The encoding is part of the stored data: see the note on changing it in
# connector/store/packing.py.
from connector.store.packing import BLOCK_VERSIONS, VersionBlock, encode_block

revision = "0016"
down_revision = "0015"

BATCH = 20_000  # versions read per statement, about


def upgrade() -> None:
    """Nothing to change (see the module's docstring)."""


def downgrade() -> None:
    conn = op.get_bind()
    evidence = sa.table("evidence", sa.column("pk"), sa.column("digest"), sa.column("body"))
    next_pk = int(conn.execute(sa.text("SELECT coalesce(max(pk), 0) FROM evidence")).scalar() or 0) + 1
    after = None
    while True:
        where = "" if after is None else "WHERE last > :after "
        limit = max(1, BATCH // BLOCK_VERSIONS)
        rows = conn.execute(
            sa.text(f"SELECT last, first, entries FROM version_blocks {where}ORDER BY last LIMIT {limit}"),
            {} if after is None else {"after": after},
        ).all()
        if not rows:
            break
        new_rows: list[dict[str, object]] = []
        rewritten: list[dict[str, object]] = []
        for last, first, entries in rows:
            versions = VersionBlock(last, first, bytes(entries)).entries()
            if not any(isinstance(key, str) for _s, _n, key, _p in versions):
                continue
            untagged = []
            for stamp, notification, key, packed in versions:
                if isinstance(key, str):  # a row each, as the code before stored them
                    new_rows.append({"pk": next_pk, "digest": 0, "body": key})
                    key = next_pk
                    next_pk += 1
                untagged.append((stamp, notification, key, packed))
            rewritten.append({"at": last, "entries": encode_block(untagged)})
        if new_rows:
            conn.execute(evidence.insert(), new_rows)
        if rewritten:
            conn.execute(sa.text("UPDATE version_blocks SET entries = :entries WHERE last = :at"), rewritten)
        after = rows[-1][0]
    if conn.dialect.name == "postgresql" and next_pk > 1:
        # The rows above were numbered here, past the sequence: move it past them, as
        # connector/store/writer.py does, for any insert that takes its pk from it.
        conn.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('evidence', 'pk'), :last)"), {"last": next_pk - 1}
        )
