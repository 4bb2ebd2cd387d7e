"""Who is asking, and what they may do: deny by default.

A user's rights come from the configuration alone: `recipient: X` reads X's collection,
`inbox: P` writes partner P's inbox, `operator: true` reads everything and may delete.
Everything else does not exist for that user. Credentials: HTTP Basic (password) or an API
token (`mpt_<id>_<secret>`, as `Bearer` or, as taxii2-client's TokenAuth sends it, `Token`),
both checked against argon2 hashes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import Config, UserConfig
from connector.passwords import VerifiedCache, parse_token
from taxii_server.errors import TaxiiError

log = logging.getLogger("meldpunt.taxii.auth")

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Security Meldpunt TAXII", charset="UTF-8"'}
# Failures a client address may have across all accounts before its back-off counts them all:
# guessing one password per account (password spraying) never fails twice for one account.
SPRAY_ALLOWANCE = 5


@dataclass(frozen=True)
class Principal:
    username: str
    readable: frozenset[str] = field(default_factory=frozenset)
    writable: frozenset[str] = field(default_factory=frozenset)
    operator: bool = False
    partner: str | None = None  # whose inbox this user writes (the source of what it posts)

    def can_see(self, collection_id: str) -> bool:
        return collection_id in self.readable or collection_id in self.writable


def principal_for(user: UserConfig, all_collections: Iterable[str]) -> Principal:
    readable = set(all_collections) if user.operator else set()
    if user.recipient:
        readable.add(recipient_collection_id(user.recipient))
    writable = {inbox_collection_id(user.inbox)} if user.inbox else set()
    return Principal(user.username, frozenset(readable), frozenset(writable), user.operator, user.inbox)


class AuthenticationFailed(TaxiiError):
    """A 401 to answer only after `delay` seconds (the back-off for this client and account)."""

    def __init__(self, delay: float) -> None:
        super().__init__(401, "Authentication failed", "Unknown user or wrong credentials.", _CHALLENGE)
        self.delay = delay


class Authenticator:
    """Checks credentials, with a back-off on repeated failures per client address.

    `authenticate` does not sleep: it raises AuthenticationFailed with the back-off, and the
    caller waits it out without holding a worker thread (see taxii_server.app.authenticated).
    """

    def __init__(
        self,
        config: Config,
        all_collections: Iterable[str],
        failure_delay: float = 0.25,
        max_delay: float = 4.0,
    ) -> None:
        collections = list(all_collections)
        self._users = {u.username: u for u in config.users}
        self._principals = {u.username: principal_for(u, collections) for u in config.users}
        self._tokens = {tok.id: (u.username, tok.hash) for u in config.users for tok in u.tokens}
        self._cache = VerifiedCache()
        self._failures: dict[str, int] = {}  # by client and username
        self._client_failures: dict[str, int] = {}  # by client, across usernames
        self._lock = threading.Lock()
        self._failure_delay = failure_delay
        self._max_delay = max_delay
        # A hash to verify against for unknown users, so timing does not reveal who exists.
        hashes = [u.password_hash for u in config.users if u.password_hash]
        self._decoy = hashes[0] if hashes else None

    def authenticate(self, authorization: str | None, client: str) -> Principal:
        scheme, _, credentials = (authorization or "").partition(" ")
        # `Token` is how taxii2-client's TokenAuth (and so OpenCTI) sends the same thing.
        if scheme.lower() in ("bearer", "token") and credentials.strip():
            username, ok = self._check_token(credentials.strip())
        else:
            username, password = _parse_basic(authorization)
            ok = self._check_password(username, password)
        # Back-off is per client and username: a success with one account does not clear the
        # failures a client piled up guessing another's password.
        key = f"{client}|{username}"
        if ok:
            with self._lock:
                self._failures.pop(key, None)
            return self._principals[username]
        raise self._failure(username, client, key)

    def _check_password(self, username: str, password: str) -> bool:
        user = self._users.get(username)
        if user is not None and user.password_hash:
            return self._cache.verify(user.password_hash, password)
        if self._decoy is not None:
            self._cache.verify(self._decoy, password)
        return False

    def _check_token(self, token: str) -> tuple[str, bool]:
        parsed = parse_token(token)
        entry = self._tokens.get(parsed[0]) if parsed else None
        if parsed is None or entry is None:
            if self._decoy is not None:
                self._cache.verify(self._decoy, token)
            return "(token)", False
        username, token_hash = entry
        return username, self._cache.verify(token_hash, parsed[1])

    def _failure(self, username: str, client: str, key: str) -> AuthenticationFailed:
        """Log, and give the error to raise with this client's back-off: by its failures for
        this account, or, past SPRAY_ALLOWANCE, by its failures for any account. A success
        clears the first count only, so that one valid account cannot wash the other away.
        Only failing requests wait: colleagues behind the same address who log in correctly
        never do."""
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            spread = self._client_failures.get(client, 0) + 1
            self._client_failures[client] = spread
            for counts in (self._failures, self._client_failures):
                if len(counts) > 100_000:
                    counts.clear()
        log.warning(
            "authentication failed",
            extra={"username": username, "client": client, "failures": failures, "client_failures": spread},
        )
        counted = min(max(failures, spread - SPRAY_ALLOWANCE), 64)  # 2.0**1024 overflows a float
        return AuthenticationFailed(min(self._max_delay, self._failure_delay * 2.0 ** (counted - 1)))


def _parse_basic(authorization: str | None) -> tuple[str, str]:
    if not authorization:
        raise TaxiiError(401, "Authentication required", "Use HTTP Basic or a bearer token.", _CHALLENGE)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise TaxiiError(401, "Authentication required", "Use HTTP Basic or a bearer token.", _CHALLENGE)
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TaxiiError(401, "Authentication failed", "Malformed Basic credentials.", _CHALLENGE) from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise TaxiiError(401, "Authentication failed", "Malformed Basic credentials.", _CHALLENGE)
    return username, password
