"""Constituency self-service pages (connector/claims.py): a recipient proposes a network, AS
number or domain and sees its claims' status; an operator sees the pending ones with their
conflicts (naming the other recipients: operators only) and approves or refuses them.

An approval rebuilds this server's router, so inbox submissions route by it at once; every
ingest builds its own router and so routes by it from the next run.
"""

from __future__ import annotations

import ipaddress

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
    return await _claims_page(request, who, recipient, error=request.query_params.get("error"))


async def _claims_page(
    request: Request, who: Viewer, recipient: str, status: int = 200, **extra: object
) -> Response:
    """The recipient's claims page: its configured constituency, its claims, the form."""
    rows = await run_in_threadpool(claims.claims, who.server.store, None, recipient)
    context = {
        "recipient": recipient,
        "rows": rows,
        "kinds": claims.KINDS,
        "configured": who.server.config.recipient(recipient).constituency,
        **extra,
    }
    return page(request, "claims.html", context, who=who, status=status)


@router.post(PREFIX + "/recipients/{recipient}/claims/")
async def propose(request: Request, recipient: str, who: Viewer = Depends(viewer)) -> Response:
    form = await form_checked(request, who)
    _own(who, recipient)
    kind, value = str(form.get("kind") or ""), str(form.get("value") or "")[:300]
    try:
        s, by = who.server, who.principal.username
        filed = await run_in_threadpool(claims.propose, s.config, s.store, recipient, kind, value, by)
    except claims.ClaimError as refused:
        return await _claims_page(request, who, recipient, status=400, refusal=str(refused))
    await audit(who.server, by, "claim-propose", collection_id=recipient_collection_id(recipient), objects=1)
    if filed.status == claims.APPROVED:  # inside its own holdings: it approved itself
        await run_in_threadpool(_rebuild_router, who)
    return secured(RedirectResponse(f"{PREFIX}/recipients/{recipient}/claims/", status_code=303))


def _exists(who: Viewer, pk: int) -> bool:
    try:
        claims.claim(who.server.store, pk)
    except claims.ClaimError:
        return False
    return True


def _rebuild_router(who: Viewer) -> None:
    who.server.router = Router(claims.with_claims(who.server.config, who.server.store))


def _review(who: Viewer) -> list[dict[str, object]]:
    held = claims.holdings(who.server.config, who.server.store)
    out = []
    for c in claims.claims(who.server.store, claims.PENDING):
        found = claims.conflicts(c.recipient, c.kind, c.value, held)
        today = _routes_to_now(who, c)
        if today is not None and not any(h.recipient == today.recipient for h in found):
            found.append(today)
        out.append({"claim": c, "conflicts": found})
    return out


def _routes_to_now(who: Viewer, c: claims.ClaimRow) -> claims.Holding | None:
    """Who the claimed value routes to today by any rule (routing tries addresses, then AS
    numbers, then domains): a network inside another's AS is no same-kind conflict, yet
    approving it moves that recipient's notifications. For a network, its first address."""
    router = who.server.router
    if c.kind == "network":
        found = router.match_keys(ip=str(ipaddress.ip_network(c.value).network_address))
    elif c.kind == "asn":
        found = router.match_keys(asn=int(c.value))
    else:
        found = router.match_keys(hostname=c.value)
    if found is None or found.owner == c.recipient:
        return None
    return claims.Holding(found.owner, c.kind, found.rule, "routes there today")


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
    decision = form.get("decision")
    if decision not in ("approve", "refuse"):
        raise PortalError(400, "bad_request")
    approve = decision == "approve"
    reason = str(form.get("reason") or "").replace("\x00", "").strip()[:1000] or None
    if not await run_in_threadpool(_exists, who, pk):
        raise PortalError(404, "not_found")
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
