"""Portal sessions and CSRF tokens: signed cookies, checked on every request.

A session is a cookie holding who logged in, when, a random nonce and a fingerprint of the
user's credentials in the configuration, signed with HMAC-SHA256 under a key derived from the
server's token secret (the one every process on the database shares, taxii_server/app.py), so
any worker accepts it and no session table is needed. It is HttpOnly, SameSite=Strict, Secure
when `server.public_url` is https, and lasts `SESSION_SECONDS`. Changing the user's password
hash (or removing the user) in the configuration ends its sessions: the fingerprint no longer
matches. Logging out clears the cookie and records the moment in the store (`settings`, one row
per user): every session of that user issued until then ends, in every process on the database
(a copied cookie too). One indexed read per request; a logout ends the user's other browsers'
sessions as well, the safe side for accounts that several analysts might share.

CSRF: every POST form carries a token derived from the session's nonce (synchronizer token,
stateless: HMAC of the nonce), so a page of another site cannot make one even where a browser
sends the cookie anyway. The login form, posted before any session exists, gets its own
short-lived signed nonce cookie and a token derived from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from connector.config import Config, UserConfig

SESSION_COOKIE = "meldpunt_portal"
LOGIN_COOKIE = "meldpunt_portal_login"
SESSION_SECONDS = 8 * 3600  # a working day
LOGIN_SECONDS = 3600


@dataclass(frozen=True)
class Session:
    username: str
    issued: int  # ms
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(user: UserConfig) -> str:
    """What the session binds to: the user's configured credentials (hashes, never secrets)."""
    material = json.dumps([user.password_hash, [t.hash for t in user.tokens]]).encode()
    return hashlib.sha256(material).hexdigest()[:16]


class Sessions:
    """Issues and checks session cookies and CSRF tokens."""

    def __init__(
        self,
        config: Config,
        secret: bytes,
        logged_out_at: Callable[[str], int | None],
        record_logout: Callable[[str, int], None],
    ) -> None:
        """`logged_out_at(user)` and `record_logout(user, ms)`: where logouts are kept (the
        store), so that every process sharing it sees them."""
        self._key = hmac.new(secret, b"meldpunt portal session v1", hashlib.sha256).digest()
        self._users = {u.username: u for u in config.users}
        self._logged_out_at = logged_out_at
        self._record_logout = record_logout
        self.secure = bool(config.server.public_url and config.server.public_url.startswith("https://"))

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def _signed(self, value: dict[str, object]) -> str:
        payload = json.dumps(value, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._sign(payload)}"

    def _verified(self, cookie: str | None) -> dict[str, object] | None:
        if not cookie or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        try:
            payload = _unb64(body)
        except (ValueError, TypeError):
            return None
        if not signature.isascii() or not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- sessions --------------------------------------------------------------------------

    def issue(self, username: str) -> str:
        user = self._users[username]
        issued = time.time_ns() // 1_000_000
        logged_out = self._logged_out_at(username)
        if logged_out is not None and issued <= logged_out:
            issued = logged_out + 1  # a login in the same millisecond as a logout stays valid
        nonce = secrets.token_urlsafe(16)
        return self._signed({"u": username, "t": issued, "n": nonce, "f": fingerprint(user)})

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None: unsigned, expired, revoked, or for a user
        whose credentials changed or who is gone."""
        value = self._verified(cookie)
        if value is None:
            return None
        username, issued, nonce = value.get("u"), value.get("t"), value.get("n")
        if not isinstance(username, str) or not isinstance(issued, int) or not isinstance(nonce, str):
            return None
        if not -5000 <= time.time_ns() // 1_000_000 - issued < SESSION_SECONDS * 1000:
            return None
        user = self._users.get(username)
        if user is None or value.get("f") != fingerprint(user):
            return None
        logged_out = self._logged_out_at(username)
        if logged_out is not None and issued <= logged_out:
            return None
        return Session(username, issued, nonce)

    def revoke(self, session: Session) -> None:
        """Log the user out: its sessions issued until now end, in every process."""
        self._record_logout(session.username, max(time.time_ns() // 1_000_000, session.issued))

    # --- CSRF --------------------------------------------------------------------------------

    def csrf(self, nonce: str, purpose: str = "session") -> str:
        return self._sign(f"csrf|{purpose}|{nonce}".encode())

    def csrf_ok(self, nonce: str | None, given: object, purpose: str = "session") -> bool:
        if not nonce or not isinstance(given, str) or not given or not given.isascii():
            return False  # compare_digest raises on non-ASCII text
        return hmac.compare_digest(self.csrf(nonce, purpose), given)

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, nonce) for the login form's CSRF token."""
        nonce = secrets.token_urlsafe(16)
        return self._signed({"n": nonce, "t": int(time.time())}), nonce

    def login_nonce_of(self, cookie: str | None) -> str | None:
        value = self._verified(cookie)
        if value is None:
            return None
        nonce, issued = value.get("n"), value.get("t")
        if not isinstance(nonce, str) or not isinstance(issued, int):
            return None
        return nonce if 0 <= time.time() - issued < LOGIN_SECONDS else None
