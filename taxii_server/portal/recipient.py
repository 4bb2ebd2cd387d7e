"""The recipient's pages: its notifications (filtered, paged, exported as CSV), one
notification with its evidence and STIX, and the buttons that say what became of it.

A recipient is named in the URL (`/portal/recipients/{id}/...`) and answered only when the
user may read its collection (TAXII's `readable`: its own users, operators); any other id,
existing or not, is the same 404. The buttons call connector/feedback.py `give` with
source "portal", the very code TAXII opinions and `meldpunt feedback` use, so the new state is
what TAXII, MISP and `meldpunt stats` see.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response, StreamingResponse

from connector import feedback
from connector.collections import recipient_collection_id
from taxii_server.portal import data
from taxii_server.portal.web import (
    PREFIX,
    PortalError,
    Viewer,
    audit,
    form_checked,
    page,
    portal,
    secured,
    viewer,
)

router = APIRouter()


def _recipient(who: Viewer, recipient: str) -> str:
    if not who.may_read(recipient):
        raise PortalError(404, "not_found")
    return recipient


def _collection(recipient: str) -> str:
    return recipient_collection_id(recipient)


def _date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def filters_of(request: Request) -> data.Filters:
    q = request.query_params
    return data.Filters(
        classification=q.get("classification", "")[:200],
        feed=q.get("feed", "")[:200],
        state=q.get("state", "")[:32],
        since=_date(q.get("since")),
        until=_date(q.get("until")),
        search=q.get("q", "")[:500],
        concerns=q.get("concerns", "")[:64],
    )


def _query_without_page(request: Request) -> str:
    from urllib.parse import urlencode

    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "lang")])


@router.get(PREFIX + "/recipients/{recipient}/")
async def notifications(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    _recipient(who, recipient)
    filters = filters_of(request)
    try:
        number = int(request.query_params.get("page", "1"))
    except ValueError:
        number = 1
    everything = await run_in_threadpool(
        data.items, who.server.store, recipient, who.server.config, portal(request).lists
    )
    listing = data.listing(everything, filters, number)
    name = next(r.name for r in who.server.config.recipients if r.id == recipient)
    return page(
        request,
        "notifications.html",
        {
            "recipient": recipient,
            "recipient_name": name,
            "children": data.descendants(who.server.config, recipient),
            "listing": listing,
            "filters": filters,
            "query": _query_without_page(request),
        },
        who=who,
    )


async def _filtered(request: Request, who: Viewer, recipient: str) -> list[Any]:
    """The recipient's notifications the request's filters select (what an export holds)."""
    _recipient(who, recipient)
    filters = filters_of(request)
    everything = await run_in_threadpool(
        data.items, who.server.store, recipient, who.server.config, portal(request).lists
    )
    return [i for i in everything if filters.matches(i)]


@router.get(PREFIX + "/recipients/{recipient}/export.csv")
async def export_csv(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    selected = (await _filtered(request, who, recipient))[: data.EXPORT_LIMIT]
    out = io.StringIO()
    csv.writer(out).writerows(data.csv_rows(selected))
    await audit(
        who.server,
        who.principal.username,
        "portal-export",
        collection_id=_collection(recipient),
        objects=len(selected),
    )
    headers = {"Content-Disposition": f'attachment; filename="{recipient}-notifications.csv"'}
    return secured(StreamingResponse(iter([out.getvalue()]), media_type="text/csv", headers=headers))


@router.get(PREFIX + "/recipients/{recipient}/export.json")
async def export_bundle(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    """The filtered selection as a STIX 2.1 bundle (what TAXII serves for those notifications)."""
    selected = await _filtered(request, who, recipient)
    body = await run_in_threadpool(data.bundle, who.server.store, selected)
    await audit(
        who.server,
        who.principal.username,
        "portal-export",
        collection_id=_collection(recipient),
        objects=len(body["objects"]),
    )
    headers = {"Content-Disposition": f'attachment; filename="{recipient}-notifications.stix.json"'}
    media = "application/stix+json;version=2.1"
    return secured(Response(orjson.dumps(body), media_type=media, headers=headers))


@router.get(PREFIX + "/recipients/{recipient}/notifications/{ident}")
async def notification(
    request: Request, recipient: str, ident: str, who: Viewer = Depends(viewer)
) -> Response:
    _recipient(who, recipient)
    reader_name = who.principal.username if who.may_act(recipient) else None
    found = await run_in_threadpool(data.detail, who.server.store, recipient, ident[:200], reader_name)
    if found is None:
        raise PortalError(404, "not_found")
    await audit(
        who.server, who.principal.username, "portal-read", collection_id=_collection(recipient), objects=1
    )
    return page(
        request,
        "notification.html",
        {
            "recipient": recipient,
            "d": found,
            "evidence_json": _pretty(found.evidence),
            "objects_json": [_pretty(o) for o in found.objects],
            "when": data.when,
            "given": feedback.GIVEN,
            "may_act": who.may_act(recipient),
            "saved": request.query_params.get("saved"),
        },
        who=who,
    )


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@router.post(PREFIX + "/recipients/{recipient}/notifications/{ident}")
async def say(request: Request, recipient: str, ident: str, who: Viewer = Depends(viewer)) -> Response:
    form = await form_checked(request, who)
    _recipient(who, recipient)
    if not who.may_act(recipient):
        raise PortalError(404, "not_found")
    new = str(form.get("state") or "")
    if new not in feedback.GIVEN:  # said before the notification is looked for: reveals nothing
        raise PortalError(400, "bad_request")
    note = str(form.get("note") or "").replace("\x00", "").strip()[:2000] or None  # PostgreSQL
    if await run_in_threadpool(data.shown, who.server.store, recipient, ident[:200]) is None:
        raise PortalError(404, "not_found")
    try:
        await run_in_threadpool(
            feedback.give,
            who.server.store,
            recipient,
            ident[:200],
            new,
            source="portal",
            actor=who.principal.username,
            note=note,
        )
    except feedback.NotFound:
        raise PortalError(404, "not_found") from None
    await audit(
        who.server, who.principal.username, "portal-feedback", collection_id=_collection(recipient), objects=1
    )
    location = f"{PREFIX}/recipients/{recipient}/notifications/{ident}?saved={new}"
    return secured(RedirectResponse(location, status_code=303))
