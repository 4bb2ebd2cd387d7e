"""A partner's statistics over HTTP: `/{api_root}/stats/` (not TAXII, JSON).

What became of what the partner reported, per feed and per case (connector/stats.py): routed,
delivered, acknowledged, resolved, false positives, gone, and how long that took. For the
partner's own notifications only, and never naming a recipient: a partner learns nothing of who
owns what. Users that write no partner's inbox get "not found".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector import stats
from taxii_server.auth import Principal
from taxii_server.context import authenticated, state
from taxii_server.errors import not_found
from taxii_server.media import json_response

router = APIRouter()


@router.get("/{api_root}/stats/")
async def partner_stats(request: Request, api_root: str, who: Principal = Depends(authenticated)) -> Response:
    s = state(request)
    if api_root != s.config.server.api_root or who.partner is None:
        raise not_found("statistics")
    partner = who.partner

    def figures() -> dict[str, Any]:
        return {
            "partner": partner,
            "feeds": {feed: f.as_dict() for feed, f in stats.feeds(s.store, partner).items()},
            "cases": {case: f.as_dict() for case, f in stats.cases(s.store, partner).items()},
        }

    body = await run_in_threadpool(figures)
    await run_in_threadpool(
        s.store.audit, username=who.username, action="stats", collection_id=None, objects=0, status=200
    )
    return json_response(body)
