"""Who is asking, and what they may do: deny by default.

A user's rights come from the configuration alone: `recipient: X` reads X's collection,
`inbox: P` writes partner P's inbox. Everything else does not exist for that user.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from dataclasses import dataclass, field

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import Config
from connector.passwords import VerifiedCache
from taxii_server.errors import TaxiiError

log = logging.getLogger("meldpunt.taxii.auth")

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Security Meldpunt TAXII", charset="UTF-8"'}


@dataclass(frozen=True)
class Principal:
    username: str
    readable: frozenset[str] = field(default_factory=frozenset)
    writable: frozenset[str] = field(default_factory=frozenset)

    def can_see(self, collection_id: str) -> bool:
        return collection_id in self.readable or collection_id in self.writable


class Authenticator:
    """HTTP Basic against argon2 hashes, with a back-off on repeated failures per source."""

    def __init__(self, config: Config, failure_delay: float = 0.25, max_delay: float = 4.0) -> None:
        self._users = {u.username: u for u in config.users}
        self._principals = {
            u.username: Principal(
                u.username,
                frozenset({recipient_collection_id(u.recipient)} if u.recipient else ()),
                frozenset({inbox_collection_id(u.inbox)} if u.inbox else ()),
            )
            for u in config.users
        }
        self._cache = VerifiedCache()
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._failure_delay = failure_delay
        self._max_delay = max_delay
        # A hash to verify against for unknown users, so timing does not reveal who exists.
        self._decoy = next(iter(self._users.values())).password_hash if self._users else None

    def authenticate(self, authorization: str | None, client: str) -> Principal:
        username, password = _parse_basic(authorization)
        user = self._users.get(username)
        if user is not None and self._cache.verify(user.password_hash, password):
            with self._lock:
                self._failures.pop(client, None)
            return self._principals[username]
        if user is None and self._decoy is not None:
            self._cache.verify(self._decoy, password)
        with self._lock:
            failures = self._failures.get(client, 0) + 1
            self._failures[client] = failures
            if len(self._failures) > 100_000:
                self._failures.clear()
        log.warning(
            "authentication failed", extra={"username": username, "client": client, "failures": failures}
        )
        time.sleep(min(self._max_delay, self._failure_delay * 2 ** (failures - 1)))
        raise TaxiiError(401, "Authentication failed", "Unknown user or wrong password.", _CHALLENGE)


def _parse_basic(authorization: str | None) -> tuple[str, str]:
    if not authorization:
        raise TaxiiError(401, "Authentication required", "Use HTTP Basic authentication.", _CHALLENGE)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise TaxiiError(401, "Authentication required", "Use HTTP Basic authentication.", _CHALLENGE)
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise TaxiiError(401, "Authentication failed", "Malformed Basic credentials.", _CHALLENGE) from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise TaxiiError(401, "Authentication failed", "Malformed Basic credentials.", _CHALLENGE)
    return username, password
