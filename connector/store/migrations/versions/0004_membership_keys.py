"""Collection membership keyed by date_added, with only indexes that grow at their end.

The old layout had six b-trees per membership row, one of them keyed by (collection, STIX
id): random positions, the most expensive part of an ingest. The new one has three:
date_added (the row key), the unique index (object_pk, collection_id) and (collection_id,
date_added). Look-ups by STIX id go through stix_objects' (stix_id, modified) index instead.

Rows are copied as they are: date_added was already unique, and (collection_id, object_pk)
already unique, so the copy cannot conflict.

The observations table is left as it is on the way up (0004's ingest ignores the rows it no
longer needs); the downgrade lists again the times 0004 leaves implied (see connector/ingest.py,
OBSERVATIONS_IMPLIED), which 0003's ingest relies on.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = "collection_id, object_pk, stix_id, type, version, date_added, is_latest"


def _drop_old(table: str, constraints: list[str], indexes: list[str]) -> None:
    """Frees the old table's index and constraint names (its primary key's too) for the new
    table. SQLite keeps a table's constraint names inside the table (they go with it);
    PostgreSQL names them in the schema, where a second index of the same name is refused."""
    for name in indexes:
        op.drop_index(name, table_name=table)
    if op.get_bind().dialect.name == "postgresql":
        for name in constraints:
            op.drop_constraint(name, table, type_="unique")
        op.drop_constraint("collection_objects_pkey", table, type_="primary")


def upgrade() -> None:
    op.rename_table("collection_objects", "collection_objects_0003")
    _drop_old(
        "collection_objects_0003",
        ["uq_collection_objects_member", "uq_collection_objects_date_added"],
        ["ix_collection_objects_page", "ix_collection_objects_latest", "ix_collection_objects_id"],
    )
    op.create_table(
        "collection_objects",
        sa.Column("date_added", BigId, primary_key=True, autoincrement=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("object_pk", BigId, sa.ForeignKey("stix_objects.pk"), nullable=False),
        sa.Column("stix_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("is_latest", sa.Boolean, nullable=False),
    )
    op.execute(
        f"INSERT INTO collection_objects ({COLUMNS}) SELECT {COLUMNS} FROM collection_objects_0003 "
        "ORDER BY date_added"
    )
    op.drop_table("collection_objects_0003")
    op.create_index(
        "uq_collection_objects_member", "collection_objects", ["object_pk", "collection_id"], unique=True
    )
    op.create_index("ix_collection_objects_page", "collection_objects", ["collection_id", "date_added"])


def downgrade() -> None:
    op.rename_table("collection_objects", "collection_objects_0004")
    _drop_old("collection_objects_0004", [], ["uq_collection_objects_member", "ix_collection_objects_page"])
    op.create_table(
        "collection_objects",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("object_pk", BigId, sa.ForeignKey("stix_objects.pk"), nullable=False),
        sa.Column("stix_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("is_latest", sa.Boolean, nullable=False),
        sa.UniqueConstraint("collection_id", "object_pk", name="uq_collection_objects_member"),
        sa.UniqueConstraint("date_added", name="uq_collection_objects_date_added"),
    )
    op.execute(
        f"INSERT INTO collection_objects ({COLUMNS}) SELECT {COLUMNS} FROM collection_objects_0004 "
        "ORDER BY date_added"
    )
    op.drop_table("collection_objects_0004")
    op.create_index("ix_collection_objects_page", "collection_objects", ["collection_id", "date_added"])
    op.create_index(
        "ix_collection_objects_latest", "collection_objects", ["collection_id", "is_latest", "date_added"]
    )
    op.create_index("ix_collection_objects_id", "collection_objects", ["collection_id", "stix_id"])
    # Up to 0003 the observations table lists every notification's times, and ingest counts any
    # time not listed there as new. From 0004 on, the times of a notification seen at most twice
    # are its first_seen and last_seen, not listed: list them again, or the first re-ingest
    # after the downgrade counts them a second time.
    op.execute(
        "INSERT INTO observations (notification_key, observed_at) "
        "SELECT key, first_seen FROM notifications WHERE count <= 2 "
        "UNION SELECT key, last_seen FROM notifications WHERE count <= 2 "
        "ON CONFLICT DO NOTHING"
    )
