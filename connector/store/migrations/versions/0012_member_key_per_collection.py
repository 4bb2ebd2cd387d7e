"""Stored-object membership keyed by (collection, date_added), not by date_added alone.

A notification delivered to a recipient and its parent reaches both collections at the same
date_added (one stamp per version). When it is removed (forget, purge) while the objects it
brought are still needed there, those objects are kept in each collection as stored objects at
the date_added they were served at: the same date_added in two collections, which a key of
date_added alone refused (forget stopped with an IntegrityError). The key is per collection
now; (collection_id, date_added) was an index already, and is the key's order, so that index
goes.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = "date_added, collection_id, object_pk, stix_id, type, version, is_latest"


def _columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("date_added", BigId, nullable=False, autoincrement=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("object_pk", BigId, sa.ForeignKey("stix_objects.pk"), nullable=False),
        sa.Column("stix_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("is_latest", sa.Boolean, nullable=False),
    ]


def _move_aside(old: str, indexes: list[str]) -> None:
    """The table renamed, its index and key names freed for the new one (PostgreSQL names them
    in the schema; SQLite keeps them with the table)."""
    op.rename_table("collection_objects", old)
    for name in indexes:
        op.drop_index(name, table_name=old)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("collection_objects_pkey", old, type_="primary")


def upgrade() -> None:
    _move_aside("collection_objects_0011", ["uq_collection_objects_member", "ix_collection_objects_page"])
    op.create_table(
        "collection_objects",
        *_columns(),
        sa.PrimaryKeyConstraint("collection_id", "date_added", name="collection_objects_pkey"),
    )
    op.execute(
        f"INSERT INTO collection_objects ({COLUMNS}) SELECT {COLUMNS} FROM collection_objects_0011 "
        "ORDER BY collection_id, date_added"
    )
    op.drop_table("collection_objects_0011")
    op.create_index(
        "uq_collection_objects_member", "collection_objects", ["object_pk", "collection_id"], unique=True
    )


def downgrade() -> None:
    shared = op.get_bind().exec_driver_sql(
        "SELECT count(*) FROM (SELECT date_added FROM collection_objects GROUP BY date_added "
        "HAVING count(*) > 1) AS twice"
    ).scalar()
    if shared:
        raise RuntimeError(
            f"{shared} date_added values are held by more than one collection (objects kept where a "
            "removed notification had brought them): 0011's key of date_added alone cannot hold them"
        )
    _move_aside("collection_objects_0012", ["uq_collection_objects_member"])
    op.create_table(
        "collection_objects",
        *_columns(),
        sa.PrimaryKeyConstraint("date_added", name="collection_objects_pkey"),
    )
    op.execute(
        f"INSERT INTO collection_objects ({COLUMNS}) SELECT {COLUMNS} FROM collection_objects_0012 "
        "ORDER BY date_added"
    )
    op.drop_table("collection_objects_0012")
    op.create_index(
        "uq_collection_objects_member", "collection_objects", ["object_pk", "collection_id"], unique=True
    )
    op.create_index("ix_collection_objects_page", "collection_objects", ["collection_id", "date_added"])
