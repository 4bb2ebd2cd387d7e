"""Collections (TAXII 2.1 section 5.1) and a single collection (section 5.2).

A user is shown only the collections it may read or write; any other id is "not found".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from connector.store import CollectionRow
from taxii_server.auth import Principal
from taxii_server.context import principal, state
from taxii_server.errors import not_found
from taxii_server.media import STIX_MEDIA_TYPE, taxii_response

router = APIRouter()


def check_api_root(request: Request, api_root: str) -> None:
    if api_root != state(request).config.server.api_root:
        raise not_found("API root")


def visible_collection(request: Request, api_root: str, collection_id: str, who: Principal) -> CollectionRow:
    check_api_root(request, api_root)
    row = state(request).collections.get(collection_id)
    if row is None or not who.can_see(collection_id):
        raise not_found("collection")
    return row


def describe(row: CollectionRow, who: Principal) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "description": row.description,
        "can_read": row.id in who.readable,
        "can_write": row.id in who.writable or row.id in who.feedback,
        "media_types": [STIX_MEDIA_TYPE],
    }


@router.get("/{api_root}/collections/")
def list_collections(request: Request, api_root: str, who: Principal = Depends(principal)) -> Response:
    check_api_root(request, api_root)
    rows = [r for cid, r in sorted(state(request).collections.items()) if who.can_see(cid)]
    body: dict[str, Any] = {"collections": [describe(r, who) for r in rows]} if rows else {}
    return taxii_response(body)


@router.get("/{api_root}/collections/{collection_id}/")
def get_collection(
    request: Request, api_root: str, collection_id: str, who: Principal = Depends(principal)
) -> Response:
    return taxii_response(describe(visible_collection(request, api_root, collection_id, who), who))
