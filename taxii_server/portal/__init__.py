"""The web portal under /portal/: server-rendered pages for recipients, researchers and
operators, with the TAXII server's users and rights (issue #16).

`mount(app, secret)` adds it to the application taxii_server/app.py builds: its routes, its
static files (served from this package: no CDN), and its error pages. Modules: session
(cookies, CSRF), web (the logged-in user, rendering), login, recipient, researcher, operator,
data (what a recipient's collection holds), svg (the chart), i18n (English and Dutch).
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from connector.store import portal as portal_sql
from taxii_server.portal import claims, login, operator, recipient, researcher
from taxii_server.portal.session import Sessions
from taxii_server.portal.web import (
    HERE,
    PREFIX,
    PortalError,
    PortalState,
    Redirect,
    Viewer,
    page,
    secured,
    viewer,
)

_STATIC = {"portal.css": "text/css", "portal.js": "text/javascript"}
home_router = APIRouter()


@home_router.get(PREFIX)
async def bare() -> Response:
    return secured(RedirectResponse(f"{PREFIX}/", status_code=308))


@home_router.get(PREFIX + "/")
async def home(request: Request, who: Viewer = Depends(viewer)) -> Response:
    """Where each role's pages are; a user with one view goes straight to it."""
    views = [(r, f"{PREFIX}/recipients/{r}/") for r in who.recipients]
    if who.principal.partner:
        views.append(("researcher", f"{PREFIX}/submissions/"))
    if who.principal.operator:
        views.append(("operator", f"{PREFIX}/operations/"))
    if len(views) == 1 and not who.principal.operator:
        return secured(RedirectResponse(views[0][1], status_code=303))
    names = {r.id: r.name for r in who.server.config.recipients}
    return page(request, "home.html", {"views": views, "names": names}, who=who)


@home_router.get(PREFIX + "/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        return secured(Response(status_code=404))
    response = FileResponse(HERE / "static" / name, media_type=_STATIC[name])
    response.headers["Cache-Control"] = "max-age=3600"
    return secured(response)


last_router = APIRouter()


@last_router.api_route(PREFIX + "/{rest:path}", methods=["GET", "POST"])
async def unknown(rest: str, who: Viewer = Depends(viewer)) -> Response:
    """Anything else under /portal/: the portal's own 404 page (after the login check, so a
    stranger learns nothing of which pages exist)."""
    raise PortalError(404, "not_found")


async def _redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Redirect)
    return secured(RedirectResponse(exc.location, status_code=303))


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortalError)
    who = None
    with contextlib.suppress(Redirect):
        who = await viewer(request)
    return page(request, "error.html", {"message": exc.message_key}, who=who, status=exc.status)


def mount(app: FastAPI, secret: bytes) -> None:
    """Add the portal to the TAXII application; `secret` is the server's signing key (shared by
    every process on the database), from which the session key is derived."""
    store = app.state.meldpunt.store

    def logged_out_at(username: str) -> int | None:
        with store.reading() as reader:
            return portal_sql.logged_out_at(reader.conn, username)

    def record_logout(username: str, at_ms: int) -> None:
        with store.writing() as w:
            portal_sql.record_logout(w.conn, username, at_ms)

    app.state.portal = PortalState(Sessions(app.state.meldpunt.config, secret, logged_out_at, record_logout))
    app.add_exception_handler(Redirect, _redirect)
    app.add_exception_handler(PortalError, _error)
    routers = (
        home_router,
        login.router,
        recipient.router,
        researcher.router,
        operator.router,
        claims.router,
        last_router,
    )
    for router in routers:
        app.include_router(router, include_in_schema=False)
