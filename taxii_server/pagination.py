"""Opaque, stateless `next` tokens, bound to the user, collection and query that made them.

A token carries the last date_added of its page and is signed (HMAC-SHA256) with a key that
all server processes share, so any process can continue any client's paging, for as long as
the client likes; a token replayed by another user, on another collection or with another
query is refused rather than answered with somebody else's objects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from taxii_server.errors import TaxiiError


class TokenCodec:
    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret or os.urandom(32)

    @staticmethod
    def query_fingerprint(*parts: object) -> str:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def encode(self, username: str, collection_id: str, query: str, last_date_added: int) -> str:
        payload = json.dumps(
            [1, username, collection_id, query, last_date_added], separators=(",", ":")
        ).encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")

    def decode(self, token: str, username: str, collection_id: str, query: str) -> int:
        bad = TaxiiError(
            400,
            "Invalid next token",
            "The next token is malformed, or was issued for another user, collection or query.",
        )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise bad from None
        payload, mac = raw[:-16], raw[-16:]
        if len(raw) <= 16 or not hmac.compare_digest(
            mac, hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        ):
            raise bad
        try:
            version, user, coll, fingerprint, last = json.loads(payload)
        except (ValueError, TypeError):
            raise bad from None
        if version != 1 or (user, coll, fingerprint) != (username, collection_id, query):
            raise bad
        if not isinstance(last, int):
            raise bad
        return last
