"""Constituency self-service pages (connector/claims.py): a recipient proposes a network, AS
number or domain and sees its claims' status; an operator sees the pending ones with their
conflicts (naming the other recipients: operators only) and approves or refuses them.

An approval rebuilds this server's router, so inbox submissions route by it at once; every
ingest builds its own router and so routes by it from the next run.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from connector import claims
from connector.collections import recipient_collection_id
from connector.routing import Router
from taxii_server.portal.web import PREFIX, PortalError, Viewer, audit, form_checked, page, secured, viewer

router = APIRouter()


def _own(who: Viewer, recipient: str) -> None:
    if not who.may_act(recipient):
        raise PortalError(404, "not_found")


@router.get(PREFIX + "/recipients/{recipient}/claims/")
async def recipient_claims(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    _own(who, recipient)
    rows = await run_in_threadpool(claims.claims, who.server.store, None, recipient)
    constituency = who.server.config.recipient(recipient).constituency
    return page(
        request,
        "claims.html",
        {
            "recipient": recipient,
            "rows": rows,
            "kinds": claims.KINDS,
            "configured": constituency,
            "error": request.query_params.get("error"),
        },
        who=who,
    )


@router.post(PREFIX + "/recipients/{recipient}/claims/")
async def propose(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    form = await form_checked(request, who)
    _own(who, recipient)
    kind, value = str(form.get("kind") or ""), str(form.get("value") or "")[:300]
    try:
        s, by = who.server, who.principal.username
        await run_in_threadpool(claims.propose, s.config, s.store, recipient, kind, value, by)
    except claims.ClaimError as refused:
        rows = await run_in_threadpool(claims.claims, who.server.store, None, recipient)
        return page(
            request,
            "claims.html",
            {
                "recipient": recipient,
                "rows": rows,
                "kinds": claims.KINDS,
                "configured": who.server.config.recipient(recipient).constituency,
                "refusal": str(refused),
            },
            who=who,
            status=400,
        )
    await audit(who.server, by, "claim-propose", collection_id=recipient_collection_id(recipient), objects=1)
    _rebuild_router(who)  # a claim inside its own holdings may have approved itself
    return secured(RedirectResponse(f"{PREFIX}/recipients/{recipient}/claims/", status_code=303))


def _rebuild_router(who: Viewer) -> None:
    who.server.router = Router(claims.with_claims(who.server.config, who.server.store))


def _review(who: Viewer) -> list[dict[str, object]]:
    held = claims.holdings(who.server.config, who.server.store)
    return [
        {"claim": c, "conflicts": claims.conflicts(c.recipient, c.kind, c.value, held)}
        for c in claims.claims(who.server.store, claims.PENDING)
    ]


@router.get(PREFIX + "/operations/claims/")
async def review(request: Request, who: Viewer = Depends(viewer)) -> Response:
    if not who.principal.operator:
        raise PortalError(404, "not_found")
    pending = await run_in_threadpool(_review, who)
    everything = await run_in_threadpool(claims.claims, who.server.store)
    decided = [c for c in everything if c.status != claims.PENDING]
    return page(
        request,
        "claims_review.html",
        {"pending": pending, "decided": decided[-50:][::-1], "refusal": None},
        who=who,
    )


@router.post(PREFIX + "/operations/claims/{pk}")
async def decide(request: Request, pk: int, who: Viewer = Depends(viewer)) -> Response:
    form = await form_checked(request, who)
    if not who.principal.operator:
        raise PortalError(404, "not_found")
    approve = form.get("decision") == "approve"
    reason = str(form.get("reason") or "").strip()[:1000] or None
    try:
        await run_in_threadpool(
            claims.decide, who.server.config, who.server.store, pk, approve, who.principal.username, reason
        )
    except claims.ClaimError as refused:
        pending = await run_in_threadpool(_review, who)
        return page(
            request,
            "claims_review.html",
            {"pending": pending, "decided": [], "refusal": str(refused)},
            who=who,
            status=409,
        )
    await audit(who.server, who.principal.username, "claim-approve" if approve else "claim-refuse", objects=1)
    if approve:
        await run_in_threadpool(_rebuild_router, who)
    return secured(RedirectResponse(f"{PREFIX}/operations/claims/", status_code=303))
