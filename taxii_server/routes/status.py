"""Status resources (TAXII 2.1 section 4.3): readable only by the user who posted."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from taxii_server.auth import Principal
from taxii_server.context import principal, state
from taxii_server.errors import not_found
from taxii_server.media import taxii_response
from taxii_server.routes.collections import check_api_root

router = APIRouter()


@router.get("/{api_root}/status/{status_id}/")
def get_status(
    request: Request, api_root: str, status_id: str, who: Principal = Depends(principal)
) -> Response:
    check_api_root(request, api_root)
    found = state(request).store.status(status_id)
    if found is None or found[0] != who.username:
        raise not_found("status")
    return taxii_response(found[1])
