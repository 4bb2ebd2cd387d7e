"""Logging in and out of the portal, with the TAXII server's users and their checks.

The password is checked by the same Authenticator as TAXII's HTTP Basic (taxii_server/auth.py):
the same hashes, the cache, the back-off per client and account, the bounded argon2 slots.
The form's fields are handed to it as the Basic header a TAXII client would send, so there is
one password check in the server, not two.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from taxii_server.auth import Principal, TooManyAttempts
from taxii_server.context import authenticated_by, state
from taxii_server.errors import TaxiiError
from taxii_server.portal.session import LOGIN_COOKIE, LOGIN_SECONDS, SESSION_COOKIE, SESSION_SECONDS
from taxii_server.portal.web import (
    PREFIX,
    Viewer,
    audit,
    form_checked,
    page,
    portal,
    read_form,
    secured,
    viewer,
)

router = APIRouter()


async def check_password(request: Request, username: str, password: str) -> Principal:
    """The Authenticator's two steps, as taxii_server.context.authenticated runs them: the
    cheap checks on the event loop, argon2 in its own threads, the back-off slept out."""
    header = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    return await authenticated_by(request, header)


def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    cookie, nonce = portal(request).sessions.login_nonce()
    response = page(
        request,
        "login.html",
        {"login_csrf": portal(request).sessions.csrf(nonce, "login"), "error": error},
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        cookie,
        max_age=LOGIN_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=portal(request).sessions.secure or request.url.scheme == "https",
    )
    return response


@router.get(PREFIX + "/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post(PREFIX + "/login")
async def login(request: Request) -> Response:
    sessions = portal(request).sessions
    form = await read_form(request)
    nonce = sessions.login_nonce_of(request.cookies.get(LOGIN_COOKIE))
    if not sessions.csrf_ok(nonce, form.get("csrf"), "login"):
        # Refused (403) but with a fresh form: a login page left open past its token's hour, or
        # a second login tab (each replaces the token), is no attack, just a retry.
        return _login_page(request, "forbidden", 403)
    username, password = str(form.get("username") or ""), str(form.get("password") or "")
    if not username or ":" in username:
        return _login_page(request, "login_failed", 401)
    try:
        who = await check_password(request, username, password)
    except TooManyAttempts:
        return _login_page(request, "login_busy", 429)
    except TaxiiError:
        return _login_page(request, "login_failed", 401)
    await audit(state(request), who.username, "portal-login")
    response = secured(RedirectResponse(f"{PREFIX}/", status_code=303))
    response.set_cookie(
        SESSION_COOKIE,
        await run_in_threadpool(sessions.issue, who.username),
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=sessions.secure or request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post(PREFIX + "/logout")
async def logout(request: Request, who: Viewer = Depends(viewer)) -> Response:
    await form_checked(request, who)
    await run_in_threadpool(portal(request).sessions.revoke, who.session)
    await audit(who.server, who.principal.username, "portal-logout")
    response = secured(RedirectResponse(f"{PREFIX}/login", status_code=303))
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response
