"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

The migrations under `migrations/versions/` create exactly these tables; a test compares the
migrated database with this metadata so the two cannot drift apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# One row per STIX object version. `modified` is '' for objects without versions (SCOs and
# marking definitions); (stix_id, modified) identifies a version.
stix_objects = Table(
    "stix_objects",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("stix_id", String(128), nullable=False),
    Column("modified", String(32), nullable=False),
    Column("type", String(64), nullable=False),
    Column("spec_version", String(8), nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("stix_id", "modified", name="uq_stix_objects_version"),
)

collections = Table(
    "collections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # recipient | inbox
    Column("owner", String(64), nullable=False),  # recipient id or partner id
    Column("title", String(256), nullable=False),
    Column("description", Text, nullable=False),
)

# Collection membership of object versions. `date_added` (microseconds since the epoch) is
# assigned by the store under a lock on `clock`, so it strictly increases in commit order:
# a poller using added_after can never miss a row committed later with a smaller value. It is
# also the row's key, so the table itself is stored in the order rows arrive.
#
# Every index here grows at its end (or at one end per collection): an ingest adds millions of
# rows, and an index keyed by random ids costs several times an appended one once it outgrows
# the cache. Look-ups by STIX id therefore go through stix_objects' (stix_id, modified) index to
# the pks, then through (object_pk, collection_id), never through a stix_id index here.
collection_objects = Table(
    "collection_objects",
    metadata,
    Column("date_added", BigId, primary_key=True, autoincrement=False),
    Column("collection_id", String(36), nullable=False),
    Column("object_pk", BigId, ForeignKey("stix_objects.pk"), nullable=False),
    Column("stix_id", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("is_latest", Boolean, nullable=False),
    # An index, not a constraint, so that SQLite can be told to use it (INDEXED BY).
    Index("uq_collection_objects_member", "object_pk", "collection_id", unique=True),
    Index("ix_collection_objects_page", "collection_id", "date_added"),
)

clock = Table(
    "clock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_date_added", BigInteger, nullable=False),
)

# One row per notification (natural key), with its aggregate state and current STIX ids.
notifications = Table(
    "notifications",
    metadata,
    Column("key", String(64), primary_key=True),  # sha256 of the natural key
    Column("partner", String(64), nullable=False),
    Column("feed", String(64), nullable=False),
    Column("classification", String(128), nullable=False),
    # From partners' input, unbounded (a phishing URL, a MISP event's info): migration 0005.
    Column("identifier", Text, nullable=False),
    Column("observable", Text, nullable=False),
    Column("day", String(10), nullable=False),
    Column("tlp", String(16), nullable=False),
    Column("sighting_id", String(128), nullable=False),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("created", String(32), nullable=False),
    Column("modified", String(32), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list, as routed at the last update
    Column("first_run", BigInteger, nullable=False),
    Column("last_run", BigInteger, nullable=False),
    # What the router was given (migration 0006), so `route explain` can route it again as it
    # was routed; NULL on rows stored before.
    Column("routed_ip", Text, nullable=True),
    Column("routed_asn", BigInteger, nullable=True),
    Column("routed_hostname", Text, nullable=True),
    Column("direct_owner_only", Boolean, nullable=True),
    Index("ix_notifications_last_run", "last_run"),
)

# Distinct observation times per notification: makes re-ingesting a file a no-op while a
# genuinely new sighting of the same occurrence increments the count. Listed only for
# notifications with more than two (then all of them): up to two are first_seen and last_seen
# (see OBSERVATIONS_IMPLIED in connector/ingest.py).
observations = Table(
    "observations",
    metadata,
    Column("notification_key", String(64), primary_key=True),
    Column("observed_at", BigInteger, primary_key=True),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("partner", String(64), nullable=False),
    Column("format", String(64), nullable=False),
    Column("inputs", Text, nullable=False),  # JSON list of file names
    Column("started_at", String(32), nullable=False),
    Column("finished_at", String(32), nullable=True),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("counts", Text, nullable=False),  # JSON object
    Column("error", Text, nullable=True),
)

# Rows of a run that did not become notifications: quarantined faults and skipped records.
run_rows = Table(
    "run_rows",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, ForeignKey("ingest_runs.id"), nullable=False),
    Column("input", String(512), nullable=False),
    Column("line", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # quarantined | skipped
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=True),
    Index("ix_run_rows_run", "run_id", "kind"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False),
    Column("username", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("collection_id", String(36), nullable=True),
    Column("objects", Integer, nullable=False),
    Column("status", Integer, nullable=False),
)

# Who first submitted each STIX id through an inbox or a STIX file: the id belongs to that
# source, so nobody else can publish a "newer version" of somebody else's object.
object_sources = Table(
    "object_sources",
    metadata,
    Column("stix_id", String(128), primary_key=True),
    Column("source", String(64), nullable=False),  # partner id
    Column("username", String(128), nullable=True),  # TAXII user, when posted
    Column("first_seen", String(32), nullable=False),
)

# TAXII status resources of inbox POSTs; readable only by the user who posted.
statuses = Table(
    "statuses",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(128), nullable=False),
    Column("collection_id", String(36), nullable=False),
    Column("request_timestamp", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),  # the status resource as JSON
)

# MISP delivery: which notifications make up which event for a recipient...
misp_event_members = Table(
    "misp_event_members",
    metadata,
    Column("recipient", String(64), primary_key=True),
    Column("event_uuid", String(36), primary_key=True),
    Column("notification_key", String(64), primary_key=True),
)

# ...and the durable outbox: an event is recorded here before any attempt to push it, and a
# MISP outage or a crash leaves it pending, never lost.
misp_outbox = Table(
    "misp_outbox",
    metadata,
    Column("recipient", String(64), primary_key=True),
    Column("event_uuid", String(36), primary_key=True),
    Column("group_label", String(300), nullable=False),
    Column("status", String(16), nullable=False),  # pending | done | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt", BigInteger, nullable=False),  # microseconds since the epoch
    Column("last_error", Text, nullable=True),
    Column("pushed_hash", String(64), nullable=True),  # content last accepted by the MISP
    Column("updated_at", String(32), nullable=False),
    Index("ix_misp_outbox_due", "status", "next_attempt"),
)
