"""The notification is the record: typed notification rows, versions, a delivery log in blocks.

Up to 0006 the stored STIX objects were the record and `notifications` an index beside them:
about 5 KB a notification. From here a notification is one row of typed fields, each sighting
of it again a version row, and delivery a log of (version, collection) entries; STIX and MISP
are rendered from the rows when read.

What a store of the old layout holds is kept, none of it rewritten:
- its STIX objects and collection memberships stay where they are (`stix_objects`,
  `collection_objects`) with their date_added values, and are served as before;
- each of its notifications becomes a notification row (typed fields read back from its
  latest sighting, observed-data and observables) marked `legacy`, with one version of
  renderer 0 ("stored objects") holding its state. Its next sighting is a rendered version
  that supersedes the stored objects in the collections it reaches;
- objects a collection holds that later versions share (observables, identities, markings,
  vulnerabilities) are registered in `collection_shared`, so they are not delivered twice;
- observation times and MISP event members move to the notification's new key.

There is no way down: the old layout cannot hold versions rendered after this one (restore the
backup taken before upgrading instead; docs/deploy.md).

Revision ID: 0007
Revises: 0006
"""

import hashlib
import json
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

# The digests are part of the stored data: this migration must compute them as the code does.
from connector.store.records import digest

revision = "0007"
down_revision = "0006"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SLOTS = 16
# Objects of the old layout later versions may share: registered per collection.
_SHARED_TYPES = {
    "artifact",
    "autonomous-system",
    "directory",
    "domain-name",
    "email-addr",
    "email-message",
    "file",
    "ipv4-addr",
    "ipv6-addr",
    "mac-addr",
    "mutex",
    "network-traffic",
    "process",
    "software",
    "url",
    "user-account",
    "windows-registry-key",
    "x509-certificate",
    "marking-definition",
    "identity",
    "extension-definition",
    "vulnerability",
    "malware",
}
KIND_FIELDS = (
    "partner",
    "feed",
    "taxonomy",
    "type",
    "tlp",
    "vulnerability",
    "severity",
    "case_id",
    "direct_owner_only",
    "discard_unrouted",
)


def _rename_keyed(old: str, new: str, indexes: list[str]) -> None:
    """Rename a table out of the way, freeing its index and primary key names (PostgreSQL keeps
    those schema-wide, where the new table's would collide)."""
    for name in indexes:
        op.drop_index(name, table_name=old)
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {new} RENAME CONSTRAINT {old}_pkey TO {new}_pkey")


def _create_tables() -> None:
    op.create_table(
        "notification_kinds",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("feed", sa.String(64), nullable=False),
        sa.Column("taxonomy", sa.String(64), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("tlp", sa.String(16), nullable=False),
        sa.Column("vulnerability", sa.Text, nullable=True),
        sa.Column("severity", sa.Text, nullable=True),
        sa.Column("case_id", sa.Text, nullable=True),
        sa.Column("direct_owner_only", sa.Boolean, nullable=False),
        sa.Column("discard_unrouted", sa.Boolean, nullable=False),
    )
    op.create_table(
        "evidence",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_evidence_digest", "evidence", ["digest"])
    op.create_table(
        "partner_names",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.create_table(
        "notifications",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("identifier", sa.Text, nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("ip", sa.Text, nullable=True),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("protocol", sa.String(16), nullable=True),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("asn", sa.BigInteger, nullable=True),
        sa.Column("evidence", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.BigInteger, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("latest", sa.BigInteger, nullable=False),
        sa.Column("first_run", sa.BigInteger, nullable=False),
        sa.Column("legacy", sa.Boolean, nullable=True),
    )
    op.create_index("ix_notifications_subject", "notifications", ["subject"])
    op.create_table(
        "notification_versions",
        sa.Column("stamp", BigId, primary_key=True, autoincrement=False),
        sa.Column("notification", sa.BigInteger, nullable=False),
        sa.Column("previous", sa.BigInteger, nullable=True),
        sa.Column("renderer", sa.SmallInteger, nullable=False),
        sa.Column("modified", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.BigInteger, nullable=True),
        sa.Column("last_seen", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("kind", sa.Integer, nullable=True),
        sa.Column("evidence", sa.BigInteger, nullable=True),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("run", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "notification_ids",
        sa.Column("digest", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("notification", sa.BigInteger, primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "observations",
        sa.Column("notification", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("observed_at", sa.BigInteger, primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "delivery_blocks",
        sa.Column("collection", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("first", sa.BigInteger, nullable=False),
        sa.Column("entries", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "collection_shared",
        sa.Column("collection", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("digest", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("stored", sa.Boolean, nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "removed_objects",
        sa.Column("collection", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("date_added", sa.BigInteger, primary_key=True, autoincrement=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "misp_event_members",
        sa.Column("recipient", sa.String(64), primary_key=True),
        sa.Column("event_uuid", sa.String(36), primary_key=True),
        sa.Column("notification", sa.BigInteger, primary_key=True, autoincrement=False),
    )


def upgrade() -> None:
    conn = op.get_bind()
    # Collections get numbers: the short key of the delivery tables.
    with op.batch_alter_table("collections") as batch:
        batch.add_column(sa.Column("number", sa.Integer, nullable=True))
    ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM collections ORDER BY id")]
    for number, collection_id in enumerate(ids, start=1):
        conn.execute(sa.text("UPDATE collections SET number = :n WHERE id = :i"), {"n": number, "i": collection_id})
    with op.batch_alter_table("collections") as batch:
        batch.alter_column("number", existing_type=sa.Integer, nullable=False)
        batch.create_unique_constraint("uq_collections_number", ["number"])
    with op.batch_alter_table("ingest_runs") as batch:
        batch.add_column(sa.Column("first_stamp", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("last_stamp", sa.BigInteger, nullable=True))

    _rename_keyed("notifications", "notifications_0006", ["ix_notifications_last_run"])
    _rename_keyed("observations", "observations_0006", [])
    _rename_keyed("misp_event_members", "misp_event_members_0006", [])
    _create_tables()
    _Conversion(conn).run()
    op.drop_table("notifications_0006")
    op.drop_table("observations_0006")
    op.drop_table("misp_event_members_0006")


def downgrade() -> None:
    raise NotImplementedError(
        "migration 0007 (the notification record) cannot be undone: the old layout has no room "
        "for versions rendered since; restore the backup taken before the upgrade"
    )


# --- the data ---------------------------------------------------------------------------------


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def _day(text: str) -> int:
    return (datetime.fromisoformat(text).date() - datetime(1970, 1, 1).date()).days


def _observable(fields: dict[str, Any]) -> str:
    """As Notification.observable."""
    host = fields["url"] or fields["email"] or fields["ip"] or fields["hostname"] or ""
    if fields["port"] is None:
        return str(host)
    return f"[{host}]:{fields['port']}" if ":" in host else f"{host}:{fields['port']}"


def _parsed(observable: str) -> dict[str, Any]:
    """Typed fields from an observable's text (`192.0.2.1:443`, `[2001:db8::1]:443`, a URL, an
    e-mail address, a host name)."""
    import ipaddress

    fields: dict[str, Any] = dict.fromkeys(("ip", "port", "protocol", "hostname", "url", "email"))
    host = observable
    if "://" in observable:
        fields["url"] = observable
        return fields
    if "@" in observable:
        fields["email"] = observable
        return fields
    if observable.startswith("[") and "]:" in observable:
        host, _, port = observable[1:].partition("]:")
        fields["port"] = int(port)
    elif observable.count(":") == 1:
        host, _, port = observable.partition(":")
        if port.isdigit():
            fields["port"] = int(port)
        else:
            host = observable
    try:
        ipaddress.ip_network(host, strict=False)
        fields["ip"] = host
    except ValueError:
        fields["hostname"] = host
    return fields


class _Conversion:
    """Old notification rows -> notification, legacy version, ids, observations, MISP members;
    old shared memberships -> collection_shared."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.kinds: dict[tuple[Any, ...], int] = {}
        self.evidence: dict[str, int] = {}
        self.numbers = dict(conn.exec_driver_sql("SELECT owner, number FROM collections WHERE kind = 'recipient'").all())
        self.stamp = int(conn.exec_driver_sql("SELECT last_date_added FROM clock WHERE id = 1").scalar() or 0)
        self.pks: dict[str, int] = {}

    def _next_stamp(self) -> int:
        stamp = self.stamp + 1
        stamp += -stamp % SLOTS
        self.stamp = stamp + SLOTS - 1
        return stamp

    def _latest_body(self, stix_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            sa.text("SELECT body FROM stix_objects WHERE stix_id = :i ORDER BY modified DESC LIMIT 1"),
            {"i": stix_id},
        ).first()
        return json.loads(row[0]) if row else None

    def run(self) -> None:
        self._partner_names()
        rows = self.conn.execute(sa.text("SELECT * FROM notifications_0006 ORDER BY first_run, key")).mappings().all()
        for row in rows:
            self._notification(dict(row))
        self._observations()
        self._misp_members()
        self._shared()
        self.conn.execute(sa.text("UPDATE clock SET last_date_added = :s WHERE id = 1"), {"s": self.stamp})
        if self.conn.dialect.name == "postgresql":
            for table in ("notifications", "evidence", "notification_kinds"):
                self.conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                    f"(SELECT coalesce(max(pk), 0) + 1 FROM {table}), false)"
                )

    def _partner_names(self) -> None:
        """Partner identities as published: renderings of later versions keep those names."""
        found = self.conn.exec_driver_sql(
            "SELECT body FROM stix_objects WHERE type = 'identity' ORDER BY pk"
        ).all()
        partners = [r[0] for r in self.conn.exec_driver_sql("SELECT DISTINCT partner FROM notifications_0006")]
        from connector.stix.build import partner_identity_id

        by_id = {}
        for (body,) in found:
            obj = json.loads(body)
            by_id.setdefault(obj["id"], obj.get("name"))
        for partner in partners:
            name = by_id.get(partner_identity_id(partner))
            if name:
                self.conn.execute(
                    sa.text("INSERT INTO partner_names (partner, name) VALUES (:p, :n)"), {"p": partner, "n": name}
                )

    def _kind(self, values: tuple[Any, ...]) -> int:
        pk = self.kinds.get(values)
        if pk is None:
            key = hashlib.sha256(orjson.dumps(list(values))).hexdigest()  # as notifications.kind_digest
            pk = len(self.kinds) + 1
            self.conn.execute(
                sa.text(
                    "INSERT INTO notification_kinds (pk, digest, partner, feed, taxonomy, type, tlp, vulnerability,"
                    " severity, case_id, direct_owner_only, discard_unrouted) VALUES (:pk, :d, :p, :f, :ta, :ty,"
                    " :tlp, :v, :s, :c, :do, :du)"
                ),
                {
                    "pk": pk,
                    "d": key,
                    "p": values[0],
                    "f": values[1],
                    "ta": values[2],
                    "ty": values[3],
                    "tlp": values[4],
                    "v": values[5],
                    "s": values[6],
                    "c": values[7],
                    "do": values[8],
                    "du": values[9],
                },
            )
            self.kinds[values] = pk
        return pk

    def _evidence(self, body: str) -> int:
        pk = self.evidence.get(body)
        if pk is None:
            pk = len(self.evidence) + 1
            self.conn.execute(
                sa.text("INSERT INTO evidence (pk, digest, body) VALUES (:pk, :d, :b)"),
                {"pk": pk, "d": digest(body), "b": body},
            )
            self.evidence[body] = pk
        return pk

    def _notification(self, row: dict[str, Any]) -> None:
        sighting = self._latest_body(row["sighting_id"]) or {}
        extension = next(iter(sighting.get("extensions", {}).values()), {})
        observed = self._latest_body((sighting.get("observed_data_refs") or [""])[0]) or {}
        fields: dict[str, Any] = {"ip": None, "port": None, "protocol": None, "hostname": None, "url": None, "email": None}
        for ref in observed.get("object_refs", []):
            sco = self._latest_body(ref) or {}
            kind = sco.get("type")
            if kind in ("ipv4-addr", "ipv6-addr"):
                fields["ip"] = sco["value"]
            elif kind == "domain-name":
                fields["hostname"] = sco["value"]
            elif kind == "url":
                fields["url"] = sco["value"]
            elif kind == "email-addr":
                fields["email"] = sco["value"]
            elif kind == "network-traffic":
                fields["port"] = sco.get("dst_port")
                fields["protocol"] = (sco.get("protocols") or [None])[0]
        if _observable(fields) != row["observable"]:
            fields = _parsed(row["observable"])  # its objects are gone: read the key's own text
        sighted = self._latest_body(sighting.get("sighting_of_ref", "")) or {}
        vulnerability = sighted.get("name") if sighted.get("type") == "vulnerability" else None
        if vulnerability == row["identifier"]:
            vulnerability = None
        taxonomy, _, type_ = row["classification"].partition("/")
        direct = bool(row.get("direct_owner_only"))
        kind = self._kind(
            (
                row["partner"],
                row["feed"],
                taxonomy,
                type_,
                row["tlp"],
                vulnerability,
                extension.get("severity"),
                extension.get("case_id"),
                direct,
                direct,  # personal data: what the feeds that carry it also discard when unrouted
            )
        )
        evidence = self._evidence(orjson.dumps(extension.get("evidence", {})).decode())
        pk = len(self.pks) + 1
        self.pks[row["key"]] = pk
        stamp = self._next_stamp()
        first, last = row["first_seen"] // 1000, row["last_seen"] // 1000
        observable = row["observable"]
        subject = digest("\x1f".join((row["partner"], row["classification"], row["identifier"], observable)))
        self.conn.execute(
            sa.text(
                "INSERT INTO notifications (pk, subject, kind, identifier, day, ip, port, protocol, hostname, url,"
                " email, asn, evidence, first_seen, created, latest, first_run, legacy) VALUES (:pk, :subject,"
                " :kind, :identifier, :day, :ip, :port, :protocol, :hostname, :url, :email, :asn, :evidence,"
                " :first, :created, :latest, :run, :legacy)"
            ),
            {
                "pk": pk,
                "subject": subject,
                "kind": kind,
                "identifier": row["identifier"],
                "day": _day(row["day"]),
                **fields,
                "asn": row.get("routed_asn"),
                "evidence": evidence,
                "first": first,
                "created": _ms(row["created"]),
                "latest": stamp,
                "run": row["first_run"],
                "legacy": True,
            },
        )
        recipients = [self.numbers[r] for r in json.loads(row["recipients"]) if r in self.numbers]
        self.conn.execute(
            sa.text(
                "INSERT INTO notification_versions (stamp, notification, previous, renderer, modified, first_seen,"
                " last_seen, count, kind, evidence, recipients, run) VALUES (:s, :n, NULL, 0, :m, NULL, :l, :c,"
                " NULL, NULL, :r, :run)"
            ),
            {
                "s": stamp,
                "n": pk,
                "m": _ms(row["modified"]),
                "l": last - first,
                "c": row["count"],
                "r": " ".join(map(str, recipients)),
                "run": row["last_run"],
            },
        )
        owned = {row["sighting_id"], *(sighting.get("observed_data_refs") or [])}
        if sighted.get("type") == "indicator":
            owned.add(sighted["id"])
        for ident in sorted(owned):
            self.conn.execute(
                sa.text("INSERT INTO notification_ids (digest, notification) VALUES (:d, :n)"),
                {"d": digest(ident), "n": pk},
            )

    def _observations(self) -> None:
        for key, observed_at in self.conn.exec_driver_sql(
            "SELECT notification_key, observed_at FROM observations_0006"
        ).all():
            if key in self.pks:
                self.conn.execute(
                    sa.text("INSERT INTO observations (notification, observed_at) VALUES (:n, :o)"),
                    {"n": self.pks[key], "o": observed_at // 1000},
                )

    def _misp_members(self) -> None:
        for recipient, event_uuid, key in self.conn.exec_driver_sql(
            "SELECT recipient, event_uuid, notification_key FROM misp_event_members_0006"
        ).all():
            if key in self.pks:
                self.conn.execute(
                    sa.text("INSERT INTO misp_event_members (recipient, event_uuid, notification) VALUES (:r, :e, :n)"),
                    {"r": recipient, "e": event_uuid, "n": self.pks[key]},
                )

    def _shared(self) -> None:
        numbers = dict(self.conn.exec_driver_sql("SELECT id, number FROM collections").all())
        rows = self.conn.exec_driver_sql(
            "SELECT collection_id, stix_id, type, min(date_added) FROM collection_objects "
            "GROUP BY collection_id, stix_id, type"
        ).all()
        for collection_id, stix_id, stix_type, date_added in rows:
            if stix_type in _SHARED_TYPES and collection_id in numbers:
                self.conn.execute(
                    sa.text(
                        "INSERT INTO collection_shared (collection, digest, date_added, stored) VALUES (:c, :d, :a, :s)"
                    ),
                    {"c": numbers[collection_id], "d": digest(stix_id), "a": date_added, "s": True},
                )
