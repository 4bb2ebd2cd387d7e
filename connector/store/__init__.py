"""Persistent state: objects and versions, collections, notifications, runs, audit."""

from connector.store.store import CollectionRow, Member, Store, VersionFilter, Writer

__all__ = ["CollectionRow", "Member", "Store", "VersionFilter", "Writer"]
