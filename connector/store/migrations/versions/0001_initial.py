"""Initial schema: objects, collections, membership, clock, notifications, runs, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stix_objects",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("stix_id", sa.String(128), nullable=False),
        sa.Column("modified", sa.String(32), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("stix_id", "modified", name="uq_stix_objects_version"),
    )
    op.create_table(
        "collections",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("title", sa.String(256), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
    )
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
    op.create_index("ix_collection_objects_page", "collection_objects", ["collection_id", "date_added"])
    op.create_index(
        "ix_collection_objects_latest", "collection_objects", ["collection_id", "is_latest", "date_added"]
    )
    op.create_index("ix_collection_objects_id", "collection_objects", ["collection_id", "stix_id"])
    op.create_table(
        "clock",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_date_added", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(sa.table("clock", sa.column("id"), sa.column("last_date_added")),
                   [{"id": 1, "last_date_added": 0}])
    op.create_table(
        "notifications",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("feed", sa.String(64), nullable=False),
        sa.Column("classification", sa.String(128), nullable=False),
        sa.Column("identifier", sa.String(128), nullable=False),
        sa.Column("observable", sa.String(300), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("tlp", sa.String(16), nullable=False),
        sa.Column("sighting_id", sa.String(128), nullable=False),
        sa.Column("first_seen", sa.BigInteger, nullable=False),
        sa.Column("last_seen", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("modified", sa.String(32), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("first_run", sa.BigInteger, nullable=False),
        sa.Column("last_run", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_notifications_last_run", "notifications", ["last_run"])
    op.create_table(
        "observations",
        sa.Column("notification_key", sa.String(64), primary_key=True),
        sa.Column("observed_at", sa.BigInteger, primary_key=True),
    )
    op.create_table(
        "ingest_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("format", sa.String(64), nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "run_rows",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("ingest_runs.id"), nullable=False),
        sa.Column("input", sa.String(512), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=True),
    )
    op.create_index("ix_run_rows_run", "run_rows", ["run_id", "kind"])
    op.create_table(
        "audit_log",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=True),
        sa.Column("objects", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for name in ("audit_log", "run_rows", "ingest_runs", "observations", "notifications",
                 "clock", "collection_objects", "collections", "stix_objects"):
        op.drop_table(name)
