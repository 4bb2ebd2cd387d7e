"""Constituency claims recipients propose in the portal (issue #16, item 2).

`constituency_claims` holds each proposed network, AS number or domain with who proposed it,
its status (pending, approved, refused) and who decided. Approved claims are added to the
configured constituencies when a router is built (connector/claims.py).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "constituency_claims",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed_by", sa.String(128), nullable=False),
        sa.Column("proposed_at", sa.BigInteger, nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_constituency_claims_status", "constituency_claims", ["status"])
    op.create_index(
        "ux_constituency_claims_approved",
        "constituency_claims",
        ["kind", "value"],
        unique=True,
        sqlite_where=sa.text("status = 'approved'"),
        postgresql_where=sa.text("status = 'approved'"),
    )


def downgrade() -> None:
    op.drop_index("ux_constituency_claims_approved", table_name="constituency_claims")
    op.drop_index("ix_constituency_claims_status", table_name="constituency_claims")
    op.drop_table("constituency_claims")
