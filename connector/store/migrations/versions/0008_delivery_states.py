"""Delivery states: whether a notification reached its recipient, and what the recipient (or a
later scan) said of it; and notifications by kind, for statistics per feed and case.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_states",
        sa.Column("notification", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("collection", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("routed_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger, nullable=True),
        sa.Column("acknowledged_at", sa.BigInteger, nullable=True),
        sa.Column("closed_at", sa.BigInteger, nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "delivery_events",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("collection", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_delivery_events_notification", "delivery_events", ["notification", "collection"])
    op.create_index("ix_notifications_kind", "notifications", ["kind", "pk"])


def downgrade() -> None:
    op.drop_index("ix_notifications_kind", table_name="notifications")
    op.drop_index("ix_delivery_events_notification", table_name="delivery_events")
    op.drop_table("delivery_events")
    op.drop_table("delivery_states")
