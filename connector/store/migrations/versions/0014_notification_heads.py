"""Each notification's latest version in a table of its own, `notification_heads`.

`notifications.latest` was the only column a re-observation changed. On PostgreSQL an UPDATE
writes a new copy of the row and a new entry in each of its indexes (no index covers `latest`,
but a full page leaves no room for the copy beside the old one), so a second day of the same
hosts grew the store by a whole notification row per host: about 270 of the 420 bytes a
re-observation added. Now a re-observation changes a 16-byte row of `notification_heads`,
whose pages PostgreSQL keeps half free (fillfactor 50) so that the new copy goes on the same
page without a new index entry. The notifications table is now immutable once written.

On PostgreSQL dropping the column frees no space until the table is rewritten (VACUUM FULL, or
a dump and restore): new rows are smaller at once. SQLite rewrites the table here.

The code of this revision also lists fewer observation times: only those no version names as
its first_seen or last_seen, where the code before listed every time of a notification seen
more than twice (connector/recording.py). The downgrade lists them all again, so that the code
before counts a time seen again once.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from connector.store.packing import decode_version

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    op.create_table(
        "notification_heads",
        sa.Column("notification", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("latest", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notification_heads SET (fillfactor = 50)")
    op.execute(
        "INSERT INTO notification_heads (notification, latest) "
        "SELECT pk, latest FROM notifications ORDER BY pk"
    )
    # In place on PostgreSQL and on SQLite 3.35+; an older SQLite (RHEL 9 has 3.34) has no
    # DROP COLUMN, and Alembic's batch mode copies the table without it there.
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("latest")


BATCH = 20_000
LISTED_FROM = 3  # the code before listed every time of a notification counting this many


def _relist_named_times() -> None:
    """Every time a version names (its first_seen and last_seen), listed for each notification
    whose latest version counts LISTED_FROM or more times, as the code before expects."""
    conn = op.get_bind()
    listed: set[int] = set()
    after = -1
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT h.notification, v.stamp, v.evidence, v.packed FROM notification_heads h "
                "JOIN notification_versions v ON v.stamp = h.latest "
                f"WHERE h.notification > :after ORDER BY h.notification LIMIT {BATCH}"
            ),
            {"after": after},
        ).all()
        if not rows:
            break
        for pk, stamp, evidence, packed in rows:
            if decode_version(stamp, pk, evidence, bytes(packed)).count >= LISTED_FROM:
                listed.add(int(pk))
        after = rows[-1][0]
    after = -1
    while listed:
        rows = conn.execute(
            sa.text(
                "SELECT v.stamp, v.notification, v.evidence, v.packed, n.first_seen "
                "FROM notification_versions v JOIN notifications n ON n.pk = v.notification "
                f"WHERE v.stamp > :after ORDER BY v.stamp LIMIT {BATCH}"
            ),
            {"after": after},
        ).all()
        if not rows:
            break
        times: set[tuple[int, int]] = set()
        for stamp, pk, evidence, packed, first_seen in rows:
            if pk in listed:
                version = decode_version(stamp, pk, evidence, bytes(packed))
                first = first_seen if version.first_seen is None else version.first_seen
                times |= {(pk, first), (pk, first + version.last_seen)}
        if times:
            conn.execute(
                sa.text(
                    "INSERT INTO observations (notification, observed_at) VALUES (:n, :t) "
                    "ON CONFLICT DO NOTHING"
                ),
                [{"n": pk, "t": at} for pk, at in sorted(times)],
            )
        after = rows[-1][0]


def downgrade() -> None:
    _relist_named_times()
    op.add_column("notifications", sa.Column("latest", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE notifications SET latest = "
        "(SELECT h.latest FROM notification_heads h WHERE h.notification = notifications.pk)"
    )
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("latest", existing_type=sa.BigInteger, nullable=False)
    op.drop_table("notification_heads")
