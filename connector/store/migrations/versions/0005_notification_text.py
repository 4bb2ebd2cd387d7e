"""A notification's identifier and observable as unbounded text.

They come from partners' input: a phishing URL, or a MISP event's `info` as identifier, easily
runs past the 128 and 300 characters these columns had. SQLite stored longer values anyway,
PostgreSQL refused them and with them the whole batch; a valid notification must not be refused
for its length. On PostgreSQL varchar to text is a change of the catalogue only; SQLite rebuilds
the table (batch mode).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

WIDTHS = {"identifier": 128, "observable": 300}


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        for name, width in WIDTHS.items():
            batch.alter_column(name, type_=sa.Text(), existing_type=sa.String(width), existing_nullable=False)


def downgrade() -> None:
    # Refuses (PostgreSQL) when a stored value is longer than the old width: shortening it
    # would change the notification's natural key.
    with op.batch_alter_table("notifications") as batch:
        for name, width in WIDTHS.items():
            batch.alter_column(name, type_=sa.String(width), existing_type=sa.Text(), existing_nullable=False)
