"""The researcher's (any partner user's) page: upload a STIX bundle, see what became of each
object, and the statistics of its own cases and feeds.

An upload goes through exactly what a TAXII inbox POST goes through (taxii_server/routes/
inbox.py): the envelope reader, connector/submission.py `Submissions.submit` and the status
resource (taxii_server/status_body.py), saved as a status the user can also read over TAXII.
The page shows that status resource. Statistics come from connector/stats.py, which never
names a recipient.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector import stats
from connector.collections import inbox_collection_id
from connector.submission import Submissions
from taxii_server.envelope import envelope_objects
from taxii_server.errors import TaxiiError
from taxii_server.portal.web import FORM_LIMIT, PREFIX, PortalError, Viewer, form_checked, page, viewer
from taxii_server.status_body import status_body

router = APIRouter()


def _partner(who: Viewer) -> str:
    if who.principal.partner is None:
        raise PortalError(404, "not_found")
    return who.principal.partner


def _figures(who: Viewer, partner: str) -> dict[str, Any]:
    return {
        "cases": {c: f.as_dict() for c, f in stats.cases(who.server.store, partner).items()},
        "feeds": {f: v.as_dict() for f, v in stats.feeds(who.server.store, partner).items()},
    }


@router.get(PREFIX + "/submissions/")
async def submissions(request: Request, who: Viewer = Depends(viewer)) -> Response:
    partner = _partner(who)
    figures = await run_in_threadpool(_figures, who, partner)
    return page(request, "submissions.html", {"partner": partner, **figures}, who=who)


async def _upload(request: Request, limit: int) -> bytes | None:
    form = await request.form()
    upload = form.get("bundle")
    if upload is None or isinstance(upload, str):
        return b""
    body = await upload.read(limit + 1)
    return None if len(body) > limit else body


@router.post(PREFIX + "/submissions/")
async def upload(request: Request, who: Viewer = Depends(viewer)) -> Response:
    s = who.server
    partner = _partner(who)  # before a body up to the inbox's limit is read: partners only
    await form_checked(request, who, s.config.server.max_content_length + FORM_LIMIT)
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = await _upload(request, s.config.server.max_content_length)
    error, status = None, None
    if body is None:
        error = "too_large"
    else:
        collection = inbox_collection_id(partner)
        try:
            result = await run_in_threadpool(
                Submissions(s.config, s.store, router=s.router).submit,
                partner=partner,
                objects=envelope_objects(body, s.config.server.max_objects_per_post),
                username=who.principal.username,
                inbox_collection=collection,
            )
        except TaxiiError as refused:
            error = "too_large" if refused.status == 413 else "not_json"
        else:
            status = status_body(result, received)
            await run_in_threadpool(
                s.store.save_status, status, username=who.principal.username, collection_id=collection
            )
            await run_in_threadpool(
                s.store.audit,
                username=who.principal.username,
                action="add-objects",
                collection_id=collection,
                objects=status["success_count"],
                status=202,
            )
    figures = await run_in_threadpool(_figures, who, partner)
    return page(
        request,
        "submissions.html",
        {"partner": partner, **figures, "result": status, "error": error},
        who=who,
        status=400 if error == "not_json" else 413 if error else 200,
    )
