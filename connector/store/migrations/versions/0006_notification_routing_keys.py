"""What a notification was routed by: its address, AS number, host name, and whether it goes
to its direct owner only (personal data).

`meldpunt route explain <notification>` re-routed a stored notification by its observable
alone: one delivered by its host name or AS number was explained as unrouted, and a leaked
credential as going to the owner's parents too. Rows stored before this migration have NULLs
here; explain says it can only route those by their observable.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

COLUMNS = ("routed_ip", "routed_asn", "routed_hostname", "direct_owner_only")


def upgrade() -> None:
    op.add_column("notifications", sa.Column("routed_ip", sa.Text(), nullable=True))
    op.add_column("notifications", sa.Column("routed_asn", sa.BigInteger(), nullable=True))
    op.add_column("notifications", sa.Column("routed_hostname", sa.Text(), nullable=True))
    op.add_column("notifications", sa.Column("direct_owner_only", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
