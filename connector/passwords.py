"""Password hashing for TAXII users: argon2id, so a leaked config gives away no passwords."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class VerifiedCache:
    """Remembers recent successful verifications so paging clients do not pay argon2 per page.

    argon2 is slow on purpose (tens of milliseconds); a poller fetching 10,000 pages must not
    spend minutes in it. Only successes are cached, keyed by a keyed digest of the presented
    credentials (the key lives only in this process), for a short time.
    """

    def __init__(self, ttl_seconds: float = 300.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._key = os.urandom(32)
        self._entries: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _digest(self, password_hash: str, password: str) -> bytes:
        msg = password_hash.encode() + b"\0" + password.encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def known(self, password_hash: str, password: str) -> bool:
        """Whether these credentials verified recently: an HMAC, never argon2, so a caller can
        ask it on the event loop before deciding whether a verification may run at all."""
        digest = self._digest(password_hash, password)
        with self._lock:
            expires = self._entries.get(digest)
        return expires is not None and expires > time.monotonic()

    def verify(self, password_hash: str, password: str) -> bool:
        if self.known(password_hash, password):
            return True
        digest = self._digest(password_hash, password)
        now = time.monotonic()
        if not verify_password(password_hash, password):
            return False
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = now + self._ttl
        return True


TOKEN_PREFIX = "mpt"


def new_token() -> tuple[str, str, str]:
    """(token to hand to the client, its public id, the hash to put in the config)."""
    token_id = os.urandom(8).hex()
    secret = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    return f"{TOKEN_PREFIX}_{token_id}_{secret}", token_id, hash_password(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    prefix, _, rest = token.strip().partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or len(token_id) != 16 or not secret:
        return None
    return token_id, secret
