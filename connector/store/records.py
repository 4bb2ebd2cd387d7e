"""The record as the store hands it out: a notification, its kind, and its versions."""

from __future__ import annotations

from dataclasses import dataclass

from connector.notification import observable_of
from connector.stix.ids import digest

__all__ = ["EvidenceKey", "Kind", "NotificationRecord", "VersionRecord", "digest"]

# What a version's evidence is: the pk of an evidence row, or a change to the evidence of its
# notification's row kept in the version itself (connector/store/evidence.py, an "inline change").
EvidenceKey = int | str


@dataclass(frozen=True, slots=True)
class Kind:
    """What many notifications share (notification_kinds)."""

    pk: int
    partner: str
    feed: str
    taxonomy: str
    type: str
    tlp: str
    vulnerability: str | None
    severity: str | None
    case_id: str | None
    direct_owner_only: bool
    discard_unrouted: bool

    @property
    def classification(self) -> str:
        return f"{self.taxonomy}/{self.type}"


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    pk: int
    subject: int
    kind: int
    identifier: str
    day: int  # days since 1970-01-01
    ip: str | None
    port: int | None
    protocol: str | None
    hostname: str | None
    url: str | None
    email: str | None
    asn: int | None
    evidence: int
    first_seen: int  # ms
    created: int  # ms
    latest: int  # stamp of the latest version
    first_run: int
    legacy: bool
    located_ids: bool  # its own objects' ids carry its subject (connector/stix/ids.py); False: UUIDv5

    @property
    def observable(self) -> str:
        """As Notification.observable: the thing the notification is about, in its natural key."""
        return observable_of(self.url, self.email, self.ip, self.hostname, self.port, self.protocol)


@dataclass(frozen=True, slots=True)
class VersionRecord:
    stamp: int
    notification: int
    previous: int | None
    renderer: int
    modified: int  # ms
    first_seen: int | None  # ms; None: the notification's
    last_seen: int  # ms after first_seen
    count: int
    kind: int | None  # None: the notification's
    evidence: EvidenceKey | None  # None: the notification's
    recipients: tuple[int, ...]  # collection numbers
    run: int

    def first_seen_of(self, n: NotificationRecord) -> int:
        return n.first_seen if self.first_seen is None else self.first_seen

    def last_seen_of(self, n: NotificationRecord) -> int:
        return self.first_seen_of(n) + self.last_seen

    def kind_of(self, n: NotificationRecord) -> int:
        return n.kind if self.kind is None else self.kind

    def evidence_of(self, n: NotificationRecord) -> EvidenceKey:
        return n.evidence if self.evidence is None else self.evidence
