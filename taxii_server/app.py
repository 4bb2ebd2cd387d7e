"""The TAXII 2.1 application, built from configuration (no module-level state)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.collections import collection_rows
from connector.config import Config
from connector.logs import redact
from connector.render.collection import CollectionView
from connector.routing import Router
from connector.store import CollectionRow, Store
from taxii_server.auth import AuthenticationFailed, Authenticator, Principal, TooManyAttempts
from taxii_server.errors import (
    TaxiiError,
    handle_http_error,
    handle_taxii_error,
    handle_unexpected_error,
    handle_validation_error,
    not_found,
)
from taxii_server.media import accepts_taxii, taxii_response
from taxii_server.openapi import taxii_openapi
from taxii_server.pagination import TokenCodec, token_secret
from taxii_server.params import storable

log = logging.getLogger("meldpunt.taxii")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class ServerState:
    config: Config
    store: Store
    authenticator: Authenticator
    tokens: TokenCodec
    collections: dict[str, CollectionRow]
    view: CollectionView
    # Built once here: the IP-to-ASN table alone takes about a second to load, which every
    # inbox POST paid on the event loop when each built its own.
    router: Router


def state(request: Request) -> ServerState:
    return request.app.state.meldpunt  # type: ignore[no-any-return]


def _address(text: str) -> IPAddress | None:
    """An address as a peer or an X-Forwarded-For entry gives it ("[2001:db8::1]:443",
    "192.0.2.1:443" and IPv4-mapped IPv6 included), or None when it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: Request) -> str:
    """Who the back-off counts against: the connecting address, unless that is one of
    `server.trusted_proxies`; then the nearest X-Forwarded-For entry that is not itself a
    trusted proxy (entries further left are the client's own word). An entry that is not an
    address stops the walk at the trusted hop that passed it on."""
    peer = request.client.host if request.client else "unknown"
    trusted = state(request).config.server.trusted_proxies
    hop = _address(peer)
    if not trusted or hop is None or not any(hop in net for net in trusted):
        return peer
    current = str(hop)
    entries = [e for value in request.headers.getlist("x-forwarded-for") for e in value.split(",")]
    for entry in reversed(entries):
        hop = _address(entry)
        if hop is None:
            return current
        current = str(hop)
        if not any(hop in net for net in trusted):
            return current
    return current


async def authenticated(request: Request) -> Principal:
    """The cheap checks on the event loop (back-off, the cache of recent successes, a free
    verification slot), argon2 in the authenticator's own threads (not the worker threads
    requests are served in), and the back-off after a failure or a refusal asleep on the
    event loop: a client failing on many connections at once holds at most its share of the
    bounded verification slots, never the worker threads everybody else needs, and gets its
    answers no faster than its back-off allows."""
    authenticator = state(request).authenticator
    try:
        outcome = authenticator.begin(request.headers.get("authorization"), client_address(request))
    except TooManyAttempts as refusal:
        await asyncio.sleep(refusal.delay)
        raise
    if isinstance(outcome, Principal):
        return outcome
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(authenticator.executor, authenticator.verify, outcome)
    except AuthenticationFailed as failure:
        await asyncio.sleep(failure.delay)
        raise
    finally:
        authenticator.release(outcome)


_PATH_NAMES = {
    "api_root": "API root",
    "collection_id": "collection",
    "object_id": "object",
    "status_id": "status",
}


async def principal(request: Request) -> Principal:
    """Every TAXII route depends on this: negotiation first, then authentication, then the
    path's identifiers: one that holds what no stored identifier can (a NUL) names nothing,
    and is answered "not found" before it reaches a query (taxii_server.params)."""
    if not accepts_taxii(request.headers.get("accept")):
        raise TaxiiError(
            406, "Not acceptable", "This server answers with application/taxii+json;version=2.1 only."
        )
    who = await authenticated(request)
    for name, what in _PATH_NAMES.items():
        value = request.path_params.get(name)
        if isinstance(value, str) and not storable(value):
            raise not_found(what)
    return who


def _token_secret(config: Config, store: Store) -> bytes:
    """The environment's key when set (every process must then get the same one), else the
    one kept in the database, generated on first start: cursors survive restarts and work
    on every process sharing the store. The key itself is never logged."""
    value = os.environ.get(config.server.token_secret_env)
    if value:
        return value.encode()
    secret = token_secret(store)
    redact(secret.decode())
    log.info(
        "next tokens are signed with the key kept in the database",
        extra={"env": config.server.token_secret_env},
    )
    return secret


class HeadAsGet:
    """HEAD on every GET resource: the GET's status and headers (Content-Length included),
    without the body. FastAPI's GET routes answer HEAD with 405; Starlette's own routes do
    this same thing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class RequestHeadLimit:
    """414 for a request line over `limit` bytes, 431 for a request head over it, as TAXII
    errors. h11 stops reading a head that grows past the limit unfinished (see
    taxii_server.server), but one that arrives whole in one read passes it at any size."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        headers = {"Connection": "close"}
        await taxii_response(refusal.body(), status=refusal.status, headers=headers)(scope, receive, send)

    def refusal(self, scope: Scope) -> TaxiiError | None:
        query = scope.get("query_string") or b""
        target = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)
        line = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
        head = line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2
        limit = f"The limit is {self.limit} bytes."
        if line > self.limit:
            return TaxiiError(414, "Request line too long", limit)
        if head > self.limit:
            return TaxiiError(431, "Request header fields too large", limit)
        return None


def create_app(config: Config, store: Store) -> FastAPI:
    from taxii_server.routes import collections, discovery, inbox, misp_feed, objects, status

    app = FastAPI(
        title=config.server.title,
        version="2.1",
        description="TAXII 2.1 API of the Security Meldpunt clearinghouse.",
        docs_url=None,  # the interactive pages load scripts from a CDN; the document is enough
        redoc_url=None,
        openapi_url="/taxii2/openapi.json",
    )
    rows = collection_rows(config)
    store.sync_collections(rows)
    app.state.meldpunt = ServerState(
        config=config,
        store=store,
        authenticator=Authenticator(config, [r.id for r in rows]),
        tokens=TokenCodec(_token_secret(config, store)),
        collections={r.id: r for r in rows},
        view=CollectionView(store),
        router=Router(config),
    )
    app.add_exception_handler(TaxiiError, handle_taxii_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    taxii = [Depends(principal)]  # authentication on by default for every TAXII route
    app.include_router(discovery.router, dependencies=taxii)
    app.include_router(collections.router, dependencies=taxii)
    app.include_router(objects.router, dependencies=taxii)
    app.include_router(inbox.router, dependencies=taxii)
    app.include_router(status.router, dependencies=taxii)
    app.include_router(misp_feed.router, dependencies=[Depends(authenticated)])  # MISP, not TAXII
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestHeadLimit, limit=config.server.max_request_head_bytes)  # outermost
    app.openapi = lambda: taxii_openapi(app)  # type: ignore[method-assign]
    return app
