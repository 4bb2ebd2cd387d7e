"""A notification: one factual occurrence of abuse, as every adapter produces it.

Adapters know their feed; everything after them (STIX, routing, storage) knows only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Classification:
    """RSIT taxonomy/type plus an identifier (a CVE id, `open-rdp`, a malware family)."""

    taxonomy: str
    type: str
    identifier: str

    def tag(self) -> str:
        return f'rsit:{self.taxonomy}="{self.type}"'


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where the occurrence was read: kept so an analyst can trace any object to its line."""

    file: str
    line: int


def observable_of(
    url: str | None,
    email: str | None,
    ip: str | None,
    hostname: str | None,
    port: int | None,
    protocol: str | None,
) -> str:
    """Notification.observable from its fields (the stored record has them too)."""
    # The most specific first: two phishing URLs on one shared-hosting address are two.
    host = url or email or ip or hostname or ""
    if port is None:
        return host
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    protocol = (protocol or "tcp").lower()
    return endpoint if protocol == "tcp" else f"{endpoint}/{protocol}"


@dataclass(slots=True)
class Notification:
    partner: str
    feed: str
    classification: Classification
    observed_at: datetime
    tlp: str
    ip: str | None = None
    port: int | None = None
    protocol: str | None = None
    hostname: str | None = None
    url: str | None = None
    email: str | None = None
    asn: int | None = None
    vulnerability: str | None = None
    severity: str | None = None
    case_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    source: SourceRef | None = None
    direct_owner_only: bool = False  # personal data: never to the owner's parents
    discard_unrouted: bool = False  # personal data: not kept when nobody is entitled to it
    # Evidence keys that change with every observation (mapping volatile_evidence): how the
    # notification is recorded, not what it is, so not part of its equality.
    volatile: tuple[str, ...] = field(default=(), compare=False)
    # Stored before migration 0013: its own objects keep the UUIDv5 ids they were served with
    # (connector/stix/ids.py). How it is stored, not what it is.
    legacy_ids: bool = field(default=False, compare=False)

    @property
    def observable(self) -> str:
        """The thing the notification is about, as it appears in the natural key.

        With a port, a protocol other than TCP follows it (`192.0.2.1:389/udp`): an open UDP
        service (an amplifier) and a TCP service on the same port are two findings. Without a
        protocol, or with TCP, the observable is what it always was (`192.0.2.1:389`), so the
        ids of the notifications stored before (all derived from the natural key) stay valid;
        the network-traffic object took a missing protocol for TCP already."""
        return observable_of(self.url, self.email, self.ip, self.hostname, self.port, self.protocol)

    @property
    def day(self) -> str:
        moment = self.observed_at
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        return f"{moment.year}-{moment.month:02d}-{moment.day:02d}"  # as strftime("%Y-%m-%d")

    def natural_key(self) -> tuple[str, str, str, str, str]:
        """(partner, classification, identifier, observable, day): seeing it again updates it."""
        c = self.classification
        return (self.partner, f"{c.taxonomy}/{c.type}", c.identifier, self.observable, self.day)
