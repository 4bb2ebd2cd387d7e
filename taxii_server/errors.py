"""One error type for the HTTP layer, rendered in one place as a TAXII 2.1 error message."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from taxii_server.media import taxii_response


class TaxiiError(Exception):
    def __init__(
        self, status: int, title: str, description: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.description = description
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "http_status": str(self.status)}
        if self.description:
            out["description"] = self.description
        return out


def not_found(what: str = "collection") -> TaxiiError:
    # The same answer whether the thing does not exist or the user may not see it.
    return TaxiiError(
        404, f"{what.capitalize()} not found", f"No {what} with that identifier is available to this user."
    )


async def handle_taxii_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TaxiiError)
    return taxii_response(exc.body(), status=exc.status, headers=exc.headers)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    err = TaxiiError(exc.status_code, titles.get(exc.status_code, str(exc.detail)), headers=headers)
    return taxii_response(err.body(), status=err.status, headers=err.headers)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path answers. Starlette's 405 names only the methods of
    the first route whose path matched, and GET and POST of `objects/` are two routes (read and
    inbox): its `Allow: GET` would tell a client that the inbox does not exist. Each method is
    tried against the routes as the router itself matches them (included routers too)."""
    methods = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    }
    if "GET" in methods:
        methods.add("HEAD")  # HeadAsGet answers HEAD on every GET resource (app.py)
    return ", ".join(sorted(methods))


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


async def handle_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    err = TaxiiError(400, "Bad request", detail)
    return taxii_response(err.body(), status=400)


async def handle_unexpected_error(_request: Request, exc: Exception) -> Response:
    """Any other exception (a database lost, a lock not granted in time): a TAXII error
    message (TAXII 2.1 3.6) rather than Starlette's text/plain, without the exception's text,
    which may name hosts or credentials. The traceback still reaches the server's log: Starlette
    re-raises after this response is sent."""
    return taxii_response(TaxiiError(500, "Internal server error").body(), status=500)
