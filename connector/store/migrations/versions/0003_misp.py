"""MISP delivery: event membership and the durable outbox.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "misp_event_members",
        sa.Column("recipient", sa.String(64), primary_key=True),
        sa.Column("event_uuid", sa.String(36), primary_key=True),
        sa.Column("notification_key", sa.String(64), primary_key=True),
    )
    op.create_table(
        "misp_outbox",
        sa.Column("recipient", sa.String(64), primary_key=True),
        sa.Column("event_uuid", sa.String(36), primary_key=True),
        sa.Column("group_label", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("pushed_hash", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_misp_outbox_due", "misp_outbox", ["status", "next_attempt"])


def downgrade() -> None:
    op.drop_table("misp_outbox")
    op.drop_table("misp_event_members")
