"""What every portal page needs: the portal's state, the logged-in user, the language, CSRF
checks, and rendering a template with safe headers.

Deny by default: `viewer` is the dependency of every page but the login page and the static
files; without a valid session it redirects to the login page, and nothing of the page runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from connector.collections import recipient_collection_id
from taxii_server.auth import Principal, principal_for
from taxii_server.context import ServerState, state
from taxii_server.portal import i18n
from taxii_server.portal.data import Lists, when
from taxii_server.portal.session import SESSION_COOKIE, Session, Sessions

PREFIX = "/portal"
HERE = Path(__file__).parent
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
# Only this server's own files; no inline script, no frames, no form posts elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class PortalState:
    sessions: Sessions
    lists: Lists = field(default_factory=Lists)  # recipients' lists while their collection is unchanged


class Redirect(Exception):
    """Raised by a dependency to answer with a redirect instead of the page."""

    def __init__(self, location: str) -> None:
        self.location = location


class PortalError(Exception):
    """An error page (404 for what this user may not see, 403 for a missing CSRF token)."""

    def __init__(self, status: int, message_key: str) -> None:
        self.status = status
        self.message_key = message_key


@dataclass
class Viewer:
    """The logged-in user of a request, with what it may see."""

    session: Session
    principal: Principal
    server: ServerState

    @property
    def recipients(self) -> list[str]:
        """The recipients whose notifications this user may see (TAXII's `readable`)."""
        return [
            r.id
            for r in self.server.config.recipients
            if recipient_collection_id(r.id) in self.principal.readable
        ]

    def may_read(self, recipient: str) -> bool:
        return recipient_collection_id(recipient) in self.principal.readable

    def may_act(self, recipient: str) -> bool:
        """Acknowledging and closing are the recipient's own word: its users only."""
        return self.principal.recipient == recipient


async def audit(
    server: ServerState, username: str, action: str, *, collection_id: str | None = None, objects: int = 0
) -> None:
    """One line in the audit log (`meldpunt audit`), as TAXII reads and writes get."""
    await run_in_threadpool(
        server.store.audit,
        username=username,
        action=action,
        collection_id=collection_id,
        objects=objects,
        status=200,
    )


def portal(request: Request) -> PortalState:
    return request.app.state.portal  # type: ignore[no-any-return]


def language(request: Request) -> str:
    return i18n.choose(
        request.query_params.get("lang"),
        request.cookies.get(i18n.LANG_COOKIE),
        request.headers.get("accept-language"),
    )


async def viewer(request: Request) -> Viewer:
    """Every page's dependency: the session's user, or a redirect to the login page."""
    cookie = request.cookies.get(SESSION_COOKIE)
    session = await run_in_threadpool(portal(request).sessions.check, cookie) if cookie else None
    if session is None:
        raise Redirect(f"{PREFIX}/login")
    server = state(request)
    user = next(u for u in server.config.users if u.username == session.username)
    return Viewer(session, principal_for(user, server.collections), server)


FORM_LIMIT = 64 * 1024  # bytes of an ordinary form (login, a note, a claim)


async def read_form(request: Request, limit: int = FORM_LIMIT) -> Any:
    """The POSTed form, read only when its declared length is within `limit` (a browser always
    declares it): an unbounded form body would be held in memory whole. 413 otherwise."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > limit:
        raise PortalError(413, "too_large")
    return await request.form(max_files=1, max_fields=20, max_part_size=FORM_LIMIT)


async def form_checked(request: Request, who: Viewer, limit: int = FORM_LIMIT) -> Any:
    """The POSTed form, once its CSRF token is the session's; 403 otherwise."""
    form = await read_form(request, limit)
    if not portal(request).sessions.csrf_ok(who.session.nonce, form.get("csrf")):
        raise PortalError(403, "forbidden")
    return form


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    who: Viewer | None = None,
    status: int = 200,
) -> Response:
    """A rendered page with the security headers; `?lang=` is remembered in a cookie."""
    lang = language(request)
    values: dict[str, Any] = {
        "t": i18n.translator(lang),
        "states": i18n.STATE_NAMES[lang],
        "lang": lang,
        "prefix": PREFIX,
        "who": who,
        "csrf": portal(request).sessions.csrf(who.session.nonce) if who else "",
        "path": request.url.path,
        "when": when,
    }
    values.update(context or {})
    response = HTMLResponse(TEMPLATES.get_template(template).render(values), status_code=status)
    secured(response)
    if request.query_params.get("lang") in i18n.LANGUAGES:
        response.set_cookie(
            i18n.LANG_COOKIE,
            lang,
            max_age=365 * 86400,
            path=PREFIX,
            samesite="strict",
            httponly=True,
            secure=portal(request).sessions.secure or request.url.scheme == "https",
        )
    return response


def secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
