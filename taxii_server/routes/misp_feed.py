"""MISP feeds over HTTP: `/misp-feed/<recipient>/manifest.json`, `hashes.csv`, `<uuid>.json`.

Not TAXII: MISP fetches these files as a feed of type "MISP Feed" with the recipient's own
credentials (HTTP Basic or a bearer token, the same users as TAXII). Only users that may read
the recipient's collection get its feed; every other recipient id is "not found".
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector.channels.misp_feed import deliver_feed_file
from connector.collections import recipient_collection_id
from taxii_server.auth import Principal
from taxii_server.context import authenticated, state
from taxii_server.errors import not_found

router = APIRouter()
_FILE = re.compile(r"^(manifest\.json|hashes\.csv|[0-9a-f-]{36}\.json)$")


@router.get("/misp-feed/{recipient}/{name}")
async def serve_feed_file(
    request: Request, recipient: str, name: str, who: Principal = Depends(authenticated)
) -> Response:
    s = state(request)
    try:
        channel = s.config.recipient(recipient).misp
    except KeyError:
        channel = None
    if channel is None or not channel.feed or recipient_collection_id(recipient) not in who.readable:
        raise not_found("feed")
    if not _FILE.match(name):
        raise not_found("feed file")
    content = await run_in_threadpool(deliver_feed_file, s.config, s.store, recipient, name, who.username)
    if content is None:
        raise not_found("feed file")
    media = "text/csv" if name.endswith(".csv") else "application/json"
    await run_in_threadpool(
        s.store.audit, username=who.username, action="misp-feed", collection_id=None, objects=0, status=200
    )
    return Response(content, media_type=media)
