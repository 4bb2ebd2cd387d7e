"""A recipient's collection as one STIX 2.1 bundle: exactly what its TAXII collection serves."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from connector.collections import recipient_collection_id
from connector.render.collection import CollectionView
from connector.stix.ids import project_id
from connector.store import Store

PAGE = 5000


def iter_collection(store: Store, collection_id: str) -> Iterator[str]:
    """Stored JSON of every current object version in the collection, in date_added order."""
    after = None
    view = CollectionView(store)
    while True:
        page = view.page(collection_id, after=after, limit=PAGE)
        yield from (m.body for m in page)
        if len(page) < PAGE:
            return
        after = page[-1].date_added


def write_bundle(store: Store, recipient_id: str, out) -> int:  # type: ignore[no-untyped-def]
    """Stream the bundle to a binary file object; returns the number of objects written."""
    collection_id = recipient_collection_id(recipient_id)
    bundle_id = project_id("bundle", "export", recipient_id)
    out.write(b'{"type":"bundle","id":' + orjson.dumps(bundle_id) + b',"objects":[')
    count = 0
    for body in iter_collection(store, collection_id):
        if count:
            out.write(b",")
        out.write(body.encode())
        count += 1
    out.write(b"]}\n")
    return count
