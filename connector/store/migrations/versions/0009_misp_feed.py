"""MISP feeds from what is stored: each built event kept, and when its outbox entry changed.

`misp_feed_events` holds every feed event as it was last built (file, manifest entry, hashes
lines); `misp_outbox.changed_at` says when what an event is built from last changed, so a feed
request can tell a stored event that is up to date from one to build again without building
it. Existing outbox entries take their `updated_at`: no event of theirs is built yet, so each is
built once, by the server's refresher or the first request for its file.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("misp_outbox") as batch:
        batch.add_column(sa.Column("changed_at", sa.String(32), nullable=True))
    op.execute("UPDATE misp_outbox SET changed_at = updated_at")
    op.create_table(
        "misp_feed_events",
        sa.Column("recipient", sa.String(64), primary_key=True),
        sa.Column("event_uuid", sa.String(36), primary_key=True),
        sa.Column("built_from", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("hashes", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("deliveries", sa.Text, nullable=False, server_default="[]"),
    )


def downgrade() -> None:
    op.drop_table("misp_feed_events")
    with op.batch_alter_table("misp_outbox") as batch:
        batch.drop_column("changed_at")
