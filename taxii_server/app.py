"""The TAXII 2.1 application, built from configuration (no module-level state)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.channels.misp_feed import FeedRefresher, feed_recipients
from connector.claims import with_claims
from connector.collections import collection_rows
from connector.config import Config
from connector.logs import redact
from connector.render.collection import CollectionView
from connector.routing import Router
from connector.store import Store
from taxii_server import portal
from taxii_server.auth import Authenticator
from taxii_server.context import ServerState, authenticated, principal
from taxii_server.errors import (
    TaxiiError,
    handle_http_error,
    handle_taxii_error,
    handle_unexpected_error,
    handle_validation_error,
)
from taxii_server.media import taxii_response
from taxii_server.metrics import RequestMetrics, ServerMetrics
from taxii_server.openapi import taxii_openapi
from taxii_server.pagination import TokenCodec, token_secret
from taxii_server.router_refresh import RouterRefresher
from taxii_server.routes import collections, discovery, health, inbox, misp_feed, objects, stats, status

log = logging.getLogger("meldpunt.taxii")


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


def _metrics_token(config: Config) -> str | None:
    """The bearer token for /metrics on this port, when the configuration asks for one; a
    variable it names but that is not set stops the server (metrics are never unguarded)."""
    metrics = config.server.metrics
    if not metrics.enabled or metrics.token_env is None:
        return None
    token = os.environ.get(metrics.token_env)
    if not token:
        raise ValueError(
            f"server.metrics.token_env: the environment variable {metrics.token_env} is not set; "
            "set it to the token scrapers send (Authorization: Bearer ...)"
        )
    redact(token)
    return token


class HeadAsGet:
    """HEAD on every GET resource: the GET's status and headers (Content-Length included),
    without the body. FastAPI's GET routes answer HEAD with 405; Starlette's own routes do
    this same thing. The GET is told it answers a HEAD (`request.state.head`, context.is_head):
    no object reaches the client, so none may count as delivered."""

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

        state = {**scope.get("state", {}), "head": True}
        await self.app({**scope, "method": "GET", "state": state}, receive, headers_only)


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

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """While serving, MISP feed events that changed are built in the background, so feed
        requests read them stored (connector/channels/misp_feed.py); and the router is built
        again when the approved constituency claims change (taxii_server/router_refresh.py)."""
        refresher = None
        if feed_recipients(config):
            refresher = FeedRefresher(config, store, config.server.misp_feed_refresh_seconds)
            refresher.start()
        routes = RouterRefresher(_app.state.meldpunt)
        routes.start()
        try:
            yield
        finally:
            routes.stop()
            if refresher is not None:
                refresher.stop()

    app = FastAPI(
        lifespan=lifespan,
        title=config.server.title,
        version="2.1",
        description="TAXII 2.1 API of the Security Meldpunt clearinghouse.",
        docs_url=None,  # the interactive pages load scripts from a CDN; the document is enough
        redoc_url=None,
        openapi_url="/taxii2/openapi.json",
    )
    rows = collection_rows(config)
    store.sync_collections(rows)
    metrics = ServerMetrics(store)
    secret = _token_secret(config, store)
    app.state.meldpunt = ServerState(
        config=config,
        store=store,
        authenticator=Authenticator(config, [r.id for r in rows]),
        tokens=TokenCodec(secret),
        collections={r.id: r for r in rows},
        view=CollectionView(store),
        router=Router(with_claims(config, store)),  # approved claims too (connector/claims.py)
        metrics=metrics,
    )
    app.add_exception_handler(TaxiiError, handle_taxii_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    app.include_router(health.router)  # first: /healthz must not fall to /{api_root}/'s redirect
    # /portal/ before the TAXII routes too; its own sessions (cookie + CSRF), the same users and rights.
    portal.mount(app, secret)
    token = _metrics_token(config)
    app.include_router(health.metrics_router(token) if token is not None else health.metrics_absent())
    taxii = [Depends(principal)]  # authentication on by default for every TAXII route
    app.include_router(discovery.router, dependencies=taxii)
    app.include_router(collections.router, dependencies=taxii)
    app.include_router(objects.router, dependencies=taxii)
    app.include_router(inbox.router, dependencies=taxii)
    app.include_router(status.router, dependencies=taxii)
    app.include_router(misp_feed.router, dependencies=[Depends(authenticated)])  # MISP, not TAXII
    app.include_router(stats.router, dependencies=[Depends(authenticated)])  # JSON, not TAXII
    app.add_middleware(RequestMetrics, metrics=metrics)  # innermost: it reads the matched route
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestHeadLimit, limit=config.server.max_request_head_bytes)  # outermost
    app.openapi = lambda: taxii_openapi(app)  # type: ignore[method-assign]
    return app
