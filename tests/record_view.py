"""What the store's record holds, as tests look at it: notifications with their latest state,
and every STIX object version the record renders (delivered or not), plus the stored ones."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from connector.render.collection import _Context
from connector.render.stix import notification_of
from connector.stix.build import notification_ids
from connector.store import Store
from connector.store.times import day_text


def notification_rows(store: Store) -> list[dict[str, Any]]:
    """One dict per notification: its identity, latest state and recipients (ids)."""
    owners = store.collection_owners()
    rows = []
    for n, v, kind in store.iter_notifications():
        notification = notification_of(n, kind, {})
        natural = notification.natural_key()
        rows.append(
            {
                "pk": n.pk,
                "key": hashlib.sha256("\x1f".join(natural).encode()).hexdigest(),
                "sighting_id": notification_ids(natural, notification.legacy_ids)[0],
                "partner": kind.partner,
                "feed": kind.feed,
                "classification": kind.classification,
                "identifier": n.identifier,
                "observable": n.observable,
                "day": day_text(n.day),
                "tlp": kind.tlp,
                "first_seen": v.first_seen_of(n),
                "last_seen": v.last_seen_of(n),
                "count": v.count,
                "recipients": [owners[number] for number in v.recipients],
                "legacy": n.legacy,
            }
        )
    return rows


def all_objects(store: Store) -> list[dict[str, Any]]:
    """Every object version the record renders (each version of each notification, routed or
    not) and every stored object, once each."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    with store.reading() as reader:
        context = _Context(reader)
        for n, _v, _kind in store.iter_notifications():
            context.load_notifications([n.pk])
            for version in context.chain(n):
                context.load([version.stamp])
                for item in context.render(version.stamp)[2]:
                    obj = item.obj
                    seen.setdefault((obj["id"], obj.get("modified", "")), obj)
        for (body,) in reader.conn.exec_driver_sql("SELECT body FROM stix_objects"):
            obj = orjson.loads(body)
            seen.setdefault((obj["id"], obj.get("modified", "")), obj)
    return list(seen.values())


def every_version(conn: Any) -> list[Any]:
    """Every stored notification version, in stamp order (from its blocks)."""
    from connector.store.notifications import version_blocks_after

    return [version for block in version_blocks_after(conn, None) for version in block.versions()]
