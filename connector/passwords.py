"""Password hashing for TAXII users: argon2id, so a leaked config gives away no passwords."""

from __future__ import annotations

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

    def verify(self, password_hash: str, password: str) -> bool:
        digest = self._digest(password_hash, password)
        now = time.monotonic()
        with self._lock:
            expires = self._entries.get(digest)
            if expires is not None and expires > now:
                return True
        if not verify_password(password_hash, password):
            return False
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = now + self._ttl
        return True
