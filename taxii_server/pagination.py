"""Opaque, stateless `next` tokens, bound to the user, collection and query that made them.

A token carries the last date_added of its page and is signed (HMAC-SHA256) with a key that
all server processes share, so any process can continue any client's paging, for as long as
the client likes; a token replayed by another user, on another collection or with another
query is refused rather than answered with somebody else's objects.

One difference from the query is allowed: `added_after` may be left out. The cursor already
lies past it (it is the last date_added served, and every one served was later than
added_after), and OpenCTI's taxii2 connector sends `next` alone. The token records the
added_after of the query that made it, so an added_after that is given must be that one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from typing import TYPE_CHECKING

from taxii_server.errors import TaxiiError

if TYPE_CHECKING:
    from connector.store import Store

_VERSION = 2  # 1: [1, user, collection, fingerprint with added_after, last]


class TokenCodec:
    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret or os.urandom(32)

    @staticmethod
    def query_fingerprint(*parts: object) -> str:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def encode(
        self,
        username: str,
        collection_id: str,
        query: str,
        last_date_added: int,
        added_after: int | None = None,
    ) -> str:
        """`query` is the fingerprint of every filter but added_after, which is given apart."""
        payload = json.dumps(
            [_VERSION, username, collection_id, query, added_after, last_date_added], separators=(",", ":")
        ).encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")

    def decode(
        self, token: str, username: str, collection_id: str, query: str, added_after: int | None = None
    ) -> int:
        bad = TaxiiError(
            400,
            "Invalid next token",
            "The next token is malformed, or was issued for another user, collection or query.",
        )
        try:
            # Strict: the lenient decoder skips characters outside the alphabet (a NUL, say),
            # so a token with junk inserted would pass as the original.
            raw = base64.b64decode(
                (token + "=" * (-len(token) % 4)).encode("ascii"), altchars=b"-_", validate=True
            )
        except (ValueError, TypeError, binascii.Error):
            raise bad from None
        payload, mac = raw[:-16], raw[-16:]
        if len(raw) <= 16 or not hmac.compare_digest(
            mac, hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        ):
            raise bad
        try:
            version, user, coll, fingerprint, issued_after, last = json.loads(payload)
        except (ValueError, TypeError):
            raise bad from None
        if version != _VERSION or (user, coll, fingerprint) != (username, collection_id, query):
            raise bad
        if added_after is not None and added_after != issued_after:
            raise bad
        if not isinstance(last, int):
            raise bad
        return last


TOKEN_SECRET = "taxii.token_secret"


def token_secret(store: Store) -> bytes:
    """The key that signs `next` tokens when the environment gives none: generated (256 bits)
    on first use and kept in the store, so it is the same for every process on the database
    and after every restart (a restart no longer refuses the cursors clients hold)."""
    return store.setting(TOKEN_SECRET, lambda: secrets.token_urlsafe(32)).encode()
