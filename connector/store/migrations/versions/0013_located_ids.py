"""Notifications whose own objects have located ids (connector/stix/ids.py).

The ids of a notification's sighting, observed-data and indicator now carry the digest of its
subject, so the store finds the notification of such an id through the subject index, and
`notification_ids` (an index of random keys, a tenth of the store at a million notifications and
its slowest write) holds only the ids of notifications stored before. Those keep the UUIDv5 ids
they were served with: a served object's id never changes. `located_ids` tells the two apart:
NULL for every notification already stored (adding the column rewrites nothing), TRUE for each
one stored from now on.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    op.add_column("notifications", sa.Column("located_ids", sa.Boolean, nullable=True))


def downgrade() -> None:
    located = op.get_bind().exec_driver_sql(
        "SELECT count(*) FROM notifications WHERE located_ids IS NOT NULL"
    ).scalar()
    if located:
        raise RuntimeError(
            f"{located} notifications have located ids, which 0012's code would render as other ids "
            "than the ones it served: forget or purge them first, or restore a backup from before 0013"
        )
    # SQLite 3.35+ and PostgreSQL drop a column in place; nothing indexes this one.
    op.execute("ALTER TABLE notifications DROP COLUMN located_ids")
