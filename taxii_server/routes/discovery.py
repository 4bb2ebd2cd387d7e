"""Server discovery (TAXII 2.1 section 4.1) and API root information (section 4.2)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from taxii_server.context import state
from taxii_server.errors import not_found
from taxii_server.media import MEDIA_TYPE, taxii_response

router = APIRouter()


@router.get("/taxii2/")
def discovery(request: Request) -> Response:
    s = state(request)
    # Behind a reverse proxy that terminates TLS the request arrives as plain HTTP for the
    # proxy's address: server.public_url is where clients reach the API root.
    base = s.config.server.public_url or str(request.base_url)
    root = f"{base.rstrip('/')}/{s.config.server.api_root}/"
    return taxii_response(
        {
            "title": s.config.server.title,
            "description": "Security notifications for the organisations in your constituency.",
            "default": root,
            "api_roots": [root],
        }
    )


@router.get("/{api_root}/")
def api_root(request: Request, api_root: str) -> Response:
    s = state(request)
    if api_root != s.config.server.api_root:
        raise not_found("API root")
    return taxii_response(
        {
            "title": "Security Meldpunt",
            "description": "Notifications per recipient; inboxes for partners and researchers.",
            "versions": [MEDIA_TYPE],
            "max_content_length": s.config.server.max_content_length,
        }
    )
