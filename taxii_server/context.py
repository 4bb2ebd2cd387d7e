"""What every TAXII route depends on: the server's state, the client's address, the user.

Routes import this, and the application (taxii_server/app.py) imports the routes: no cycle."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from fastapi import Request

from connector.config import Config
from connector.render.collection import CollectionView
from connector.routing import Router
from connector.store import CollectionRow, Store
from taxii_server.auth import AuthenticationFailed, Authenticator, Principal, TooManyAttempts
from taxii_server.errors import (
    TaxiiError,
    not_found,
)
from taxii_server.media import accepts_taxii
from taxii_server.metrics import ServerMetrics
from taxii_server.pagination import TokenCodec
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
    metrics: ServerMetrics


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
    return await authenticated_by(request, request.headers.get("authorization"))


async def authenticated_by(request: Request, authorization: str | None) -> Principal:
    """`authenticated` for the credentials given (an Authorization header's value): the
    portal's login form goes through the very same steps."""
    authenticator = state(request).authenticator
    failures = state(request).metrics.login_failures
    try:
        outcome = authenticator.begin(authorization, client_address(request))
    except TooManyAttempts as refusal:
        failures.labels("refused").inc()
        await asyncio.sleep(refusal.delay)
        raise
    if isinstance(outcome, Principal):
        return outcome
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(authenticator.executor, authenticator.verify, outcome)
    except AuthenticationFailed as failure:
        failures.labels("failed").inc()
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


def is_head(request: Request) -> bool:
    """Whether this GET answers a HEAD (app.HeadAsGet): its body is never sent."""
    return bool(getattr(request.state, "head", False))
