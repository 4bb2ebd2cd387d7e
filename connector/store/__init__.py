"""Persistent state: the notification record and its deliveries, stored objects, runs, outbox, audit.

Every SQL statement of the product lives in this package."""

from connector.store.objects import Member, VersionFilter
from connector.store.store import CollectionRow, Reader, Store
from connector.store.writer import Writer

__all__ = ["CollectionRow", "Member", "Reader", "Store", "VersionFilter", "Writer"]
