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

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

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
    op.execute("INSERT INTO notification_heads (notification, latest) SELECT pk, latest FROM notifications ORDER BY pk")
    # SQLite 3.35+ and PostgreSQL drop a column in place; nothing indexes this one.
    op.execute("ALTER TABLE notifications DROP COLUMN latest")


def downgrade() -> None:
    op.add_column("notifications", sa.Column("latest", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE notifications SET latest = "
        "(SELECT h.latest FROM notification_heads h WHERE h.notification = notifications.pk)"
    )
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("latest", existing_type=sa.BigInteger, nullable=False)
    op.drop_table("notification_heads")
