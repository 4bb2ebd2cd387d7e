"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

The notification is the record: one row per notification with typed fields, one row per
version of it (what changed when it was seen again), and a delivery log per collection that
says which version reached which recipient when. STIX objects and MISP events are rendered from
these rows when they are read (connector/render/). Researchers' STIX, which has no notification
form, is stored verbatim (`stix_objects`, `collection_objects`), as are the objects of stores
written before the record existed (migration 0007).

The migrations under `migrations/versions/` create exactly these tables; a test compares the
migrated database with this metadata so the two cannot drift apart.

Sizes matter here: a national feed is millions of rows a day. Times of the record are
milliseconds since the epoch (the precision STIX timestamps carry), repeated text is stored once
(`notification_kinds`, `evidence`), versions point at the version before them instead of being
indexed by notification, and versions and deliveries are appended in blocks rather than a row
each.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# --- the record ------------------------------------------------------------------------------

# What many notifications have in common, stored once: partner, feed, classification, TLP, case,
# CVE, severity and the personal-data policy. `digest` (sha256 over those) finds a kind again.
notification_kinds = Table(
    "notification_kinds",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("partner", String(64), nullable=False),
    Column("feed", String(64), nullable=False),
    Column("taxonomy", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("tlp", String(16), nullable=False),
    Column("vulnerability", Text, nullable=True),
    Column("severity", Text, nullable=True),
    Column("case_id", Text, nullable=True),
    Column("direct_owner_only", Boolean, nullable=False),
    Column("discard_unrouted", Boolean, nullable=False),
)

# Evidence (feed-specific fields kept from the input) as JSON, stored once per distinct content:
# a host seen again with the same answer adds no second copy. `digest` is a 64-bit hash of the
# body; two bodies with one digest are told apart by comparing them.
evidence = Table(
    "evidence",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("digest", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_evidence_digest", "digest"),
)

# A partner's name as the clearinghouse first published it (its STIX identity): rendering must
# not change with the configuration, so a renamed partner keeps its published identity.
partner_names = Table(
    "partner_names",
    metadata,
    Column("partner", String(64), primary_key=True),
    Column("name", Text, nullable=False),
)

# One row per notification. Its natural key is (partner, classification, identifier,
# observable, day); `day` is the day it was first seen, and a later sighting of the same
# (partner, classification, identifier, observable), its `subject`, is a new version of it.
# Immutable once written: its latest version is in notification_heads.
notifications = Table(
    "notifications",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("subject", BigInteger, nullable=False),  # 64-bit digest of the key without the day
    Column("kind", Integer, nullable=False),  # notification_kinds.pk
    Column("identifier", Text, nullable=False),
    Column("day", Integer, nullable=False),  # days since 1970-01-01 (UTC)
    Column("ip", Text, nullable=True),
    Column("port", Integer, nullable=True),
    Column("protocol", String(16), nullable=True),
    Column("hostname", Text, nullable=True),
    Column("url", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("asn", BigInteger, nullable=True),
    Column("evidence", BigInteger, nullable=False),  # evidence.pk of its first version
    Column("first_seen", BigInteger, nullable=False),  # ms, of its first version
    Column("created", BigInteger, nullable=False),  # ms
    Column("first_run", BigInteger, nullable=False),
    # Migrated from a store of the old layout: the versions it had then were stored as STIX
    # objects (collection_objects), not rendered. NULL for every other notification.
    Column("legacy", Boolean, nullable=True),
    # True: the ids of its own objects are located (connector/stix/ids.py; migration 0013).
    # NULL: stored before, its objects keep their UUIDv5 ids, found through notification_ids.
    Column("located_ids", Boolean, nullable=True),
    Index("ix_notifications_subject", "subject"),
    # Statistics and `gone` work per feed and case (kinds): their notifications by kind.
    Index("ix_notifications_kind", "kind", "pk"),
)

# The stamp of each notification's latest version: the head of its chain of versions. A table of
# its own (migration 0014), because every re-observation moves it: on PostgreSQL an UPDATE writes
# a new copy of the whole row and of each of its index entries, which made a notification's row
# (about 280 bytes with its indexes) the biggest part of what a second day added to the store.
# Here a 16-byte row changes, and on PostgreSQL the table keeps half of each page free
# (fillfactor 50, set by the migration), so the new copy goes beside the old one on the same
# page and no index entry is written (a HOT update).
notification_heads = Table(
    "notification_heads",
    metadata,
    Column("notification", BigInteger, primary_key=True, autoincrement=False),
    Column("latest", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# The versions of notifications, in blocks (migration 0015): a block holds one batch's versions
# for one set of recipients, keyed by its last stamp (the rowid on SQLite) as the delivery log
# is, so a version is found by its stamp with an index range of one row. A version's stamp is the
# date_added its objects get in every collection it is delivered to (stamp + the object's slot,
# 0..15); its values (notification, evidence when it changed, previous, renderer, modified,
# first_seen, last_seen, count, kind, recipients, run) are a few bytes of varints
# (connector/store/packing.py). A version is added at every re-observation, and a row each
# (migrations 0007 to 0014) cost PostgreSQL 86 bytes a version, mostly the row's own overhead.
version_blocks = Table(
    "version_blocks",
    metadata,
    Column("last", BigId, primary_key=True, autoincrement=False),
    Column("first", BigInteger, nullable=False),
    Column("entries", LargeBinary, nullable=False),
)

# Object ids a notification stored before migration 0013 owns (its sighting, observed-data,
# indicator), by a 64-bit digest of the id: how TAXII's match[id] and `route explain` find such
# a notification. Later ones carry their subject in their ids (located ids) and have no rows here.
notification_ids = Table(
    "notification_ids",
    metadata,
    Column("digest", BigInteger, primary_key=True, autoincrement=False),
    Column("notification", BigInteger, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# Distinct observation times (ms) of a notification: re-ingesting a file changes nothing while a
# new sighting counts. Each version names two of its notification's times (first_seen and
# last_seen); listed here are only the times no version names, such as the middle one of three
# in one input. The code before listed every time of a notification seen more than twice;
# those rows are read the same way (a time named and listed is one time).
observations = Table(
    "observations",
    metadata,
    Column("notification", BigInteger, primary_key=True, autoincrement=False),
    Column("observed_at", BigInteger, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# --- delivery ----------------------------------------------------------------------------------

collections = Table(
    "collections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # recipient | inbox
    Column("owner", String(64), nullable=False),  # recipient id or partner id
    Column("title", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("number", Integer, nullable=False, unique=True),  # short key of the delivery tables
)

# The delivery log of notification versions, per collection, in blocks: each entry is a version
# stamp with its flags (connector/store/deliveries.py has the encoding). `last` is the highest
# date_added the block covers, so a page is one index range from `added_after` on.
delivery_blocks = Table(
    "delivery_blocks",
    metadata,
    Column("collection", Integer, primary_key=True, autoincrement=False),
    Column("last", BigInteger, primary_key=True, autoincrement=False),
    Column("first", BigInteger, nullable=False),
    Column("entries", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

# Objects a collection shares between deliveries (SCOs, identities, markings, vulnerabilities):
# each is in a collection once, at the date_added it first arrived. `stored`: it arrived as a
# stored object (collection_objects) rather than rendered with a notification version.
collection_shared = Table(
    "collection_shared",
    metadata,
    Column("collection", Integer, primary_key=True, autoincrement=False),
    Column("digest", BigInteger, primary_key=True, autoincrement=False),
    Column("date_added", BigInteger, nullable=False),
    Column("stored", Boolean, nullable=True),
    sqlite_with_rowid=False,
)

# Objects of delivered versions that were taken out of a collection (TAXII DELETE).
removed_objects = Table(
    "removed_objects",
    metadata,
    Column("collection", Integer, primary_key=True, autoincrement=False),
    Column("date_added", BigInteger, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# Where a notification stands with a recipient, once it reached it: delivered (first read by
# the recipient: TAXII, its MISP, its MISP feed), acknowledged, and closed as resolved,
# false-positive or not-ours (the recipient's word), or gone (a later scan of the same feed no
# longer saw it). No row: routed, not fetched yet. Every change is also a delivery_events row.
delivery_states = Table(
    "delivery_states",
    metadata,
    Column("notification", BigInteger, primary_key=True, autoincrement=False),
    Column("collection", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("routed_at", BigInteger, nullable=False),  # ms: the version first delivered there
    Column("delivered_at", BigInteger, nullable=True),  # ms
    Column("acknowledged_at", BigInteger, nullable=True),  # ms
    Column("closed_at", BigInteger, nullable=True),  # ms: resolved, false-positive, not-ours, gone
    sqlite_with_rowid=False,
)

# The history of delivery states: who said what, when, through which channel.
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("notification", BigInteger, nullable=False),
    Column("collection", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", BigInteger, nullable=False),  # ms
    Column("source", String(16), nullable=False),  # taxii | misp | misp-feed | cli | portal | scan | ingest
    Column("actor", String(128), nullable=True),  # username, or the run that saw it gone
    Column("note", Text, nullable=True),
    Index("ix_delivery_events_notification", "notification", "collection"),
)

clock = Table(
    "clock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_date_added", BigInteger, nullable=False),
)

# --- stored objects: researchers' STIX, and objects of the old layout ----------------------------

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

# Collection membership of stored object versions, keyed by date_added (from the same clock as
# the delivery log). Look-ups by STIX id go through stix_objects' (stix_id, modified) index to
# the pks, then through (object_pk, collection_id).
collection_objects = Table(
    "collection_objects",
    metadata,
    # Keyed per collection: a kept shared object has one date_added in each collection that
    # got it (migration 0012).
    Column("date_added", BigId, nullable=False, autoincrement=False),
    Column("collection_id", String(36), nullable=False),
    Column("object_pk", BigId, ForeignKey("stix_objects.pk"), nullable=False),
    Column("stix_id", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("is_latest", Boolean, nullable=False),
    # An index, not a constraint, so that SQLite can be told to use it (INDEXED BY).
    Index("uq_collection_objects_member", "object_pk", "collection_id", unique=True),
    PrimaryKeyConstraint("collection_id", "date_added", name="collection_objects_pkey"),
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

# --- runs, audit, statuses ------------------------------------------------------------------------

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
    # The stamps of the notification versions the run wrote lie within these (its versions are
    # then found by a range of version_blocks' key, without an index by run).
    Column("first_stamp", BigInteger, nullable=True),
    Column("last_stamp", BigInteger, nullable=True),
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

# Values the deployment generates once and keeps (the key that signs TAXII `next` tokens), so
# that every process on this database, and each after a restart, uses the same.
settings = Table(
    "settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# --- MISP ----------------------------------------------------------------------------------------

# Which notifications make up which event for a recipient...
misp_event_members = Table(
    "misp_event_members",
    metadata,
    Column("recipient", String(64), primary_key=True),
    Column("event_uuid", String(36), primary_key=True),
    Column("notification", BigInteger, primary_key=True, autoincrement=False),
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
    # When what the event is built from last changed (an ingest re-queued it, a notification in
    # it was deleted), unlike updated_at, which a sync's every attempt sets too: a MISP feed's
    # stored event is out of date when it was built from another value (migration 0009).
    Column("changed_at", String(32), nullable=True),
    Index("ix_misp_outbox_due", "status", "next_attempt"),
)

# Each event of a recipient's MISP feed as it was last built (`changed_at` of its outbox entry
# then, and a fingerprint of the configuration it shows): its file, its manifest entry and its
# hashes.csv lines. Feed requests read these; only a change builds an event again (item 3 of
# issue #14: every request rebuilt the whole feed, 31 s and 650 MB at 25,600 notifications).
misp_feed_events = Table(
    "misp_feed_events",
    metadata,
    Column("recipient", String(64), primary_key=True),
    Column("event_uuid", String(36), primary_key=True),
    Column("built_from", String(32), nullable=False),  # misp_outbox.changed_at when built
    Column("fingerprint", String(64), nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # the event's, epoch seconds
    Column("manifest", Text, nullable=False),  # its manifest.json entry (JSON, keys sorted)
    Column("hashes", Text, nullable=False),  # its hashes.csv lines, each ending in a newline
    Column("body", Text, nullable=False),  # <event_uuid>.json
    # [[notification, version stamp], ...] the event holds: fetching its file delivers them.
    Column("deliveries", Text, nullable=False, server_default="[]"),
)

# Networks, AS numbers and domains recipients claim in the portal (issue #16, item 2): pending
# until an operator approves; approved ones join the configured constituencies when a router is
# built (connector/claims.py). Times in ms.
constituency_claims = Table(
    "constituency_claims",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("recipient", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # network | asn | domain
    Column("value", String(255), nullable=False),  # normalised: CIDR, the number, the domain
    Column("status", String(16), nullable=False),  # pending | approved | refused
    Column("proposed_by", String(128), nullable=False),
    Column("proposed_at", BigInteger, nullable=False),
    Column("decided_by", String(128), nullable=True),
    Column("decided_at", BigInteger, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_constituency_claims_status", "status"),
    # One owner per prefix, AS number or domain among approved claims, also when two approvals
    # (or a self-approving proposal) race: the check in connector/claims.py reads before writing.
    Index(
        "ux_constituency_claims_approved",
        "kind",
        "value",
        unique=True,
        sqlite_where=text("status = 'approved'"),
        postgresql_where=text("status = 'approved'"),
    ),
)
