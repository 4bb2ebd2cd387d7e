"""Collection ids and descriptions, derived from the configuration so they never change."""

from __future__ import annotations

from functools import lru_cache

from connector.config import Config
from connector.stix.ids import project_uuid
from connector.store import CollectionRow


@lru_cache(maxsize=4096)  # asked once per routed notification
def recipient_collection_id(recipient_id: str) -> str:
    return str(project_uuid("collection", "recipient", recipient_id))


@lru_cache(maxsize=1024)
def inbox_collection_id(partner_id: str) -> str:
    return str(project_uuid("collection", "inbox", partner_id))


def collection_rows(config: Config) -> list[CollectionRow]:
    rows = [
        CollectionRow(
            id=recipient_collection_id(r.id),
            kind="recipient",
            owner=r.id,
            title=f"Notifications for {r.name}",
            description=f"Security notifications concerning the constituency of {r.name} ({r.id}).",
        )
        for r in config.recipients
    ]
    rows += [
        CollectionRow(
            id=inbox_collection_id(p.id),
            kind="inbox",
            owner=p.id,
            title=f"Inbox of {p.name}",
            description=f"Write-only collection where {p.name} submits STIX 2.1 notifications.",
        )
        for p in config.partners
    ]
    return rows
