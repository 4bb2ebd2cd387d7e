"""Who is asking, and what they may do: deny by default.

A user's rights come from the configuration alone: `recipient: X` reads X's collection,
`inbox: P` writes partner P's inbox, `operator: true` reads everything and may delete.
Everything else does not exist for that user. Credentials: HTTP Basic (password) or an API
token (`mpt_<id>_<secret>`, as `Bearer` or, as taxii2-client's TokenAuth sends it, `Token`),
both checked against argon2 hashes.

argon2 is slow and takes 64 MiB on purpose, so a verification is the one thing a stranger can
make this server spend much on. Checking is therefore split in two. `begin` does everything
cheap, on the event loop: parse, refuse a client still in back-off, accept credentials that
verified recently (an HMAC look-up), and claim one of a bounded number of verification slots
(in all, and per client address), refusing with 429 when none is free. Only then does
`verify` run argon2, in a thread of its own small pool (`executor`) at a lower priority.
So a flood of wrong logins costs at most `max_concurrent_verifications` hashes at a time,
whatever it sends, and a poller whose credentials are cached never waits behind it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import Config, UserConfig
from connector.passwords import VerifiedCache, parse_token, verify_password
from taxii_server.errors import TaxiiError

log = logging.getLogger("meldpunt.taxii.auth")

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Security Meldpunt TAXII", charset="UTF-8"'}
# Failures a client address may have across all accounts before its back-off counts them all:
# guessing one password per account (password spraying) never fails twice for one account.
SPRAY_ALLOWANCE = 5
# Back-off bookkeeping kept for at most this many keys; expired windows go first.
_MAX_TRACKED = 100_000
_TOKEN_SCHEMES = ("bearer", "token")  # Token: taxii2-client's TokenAuth (OpenCTI)


@dataclass(frozen=True)
class Principal:
    username: str
    readable: frozenset[str] = field(default_factory=frozenset)
    writable: frozenset[str] = field(default_factory=frozenset)
    operator: bool = False
    partner: str | None = None  # whose inbox this user writes (the source of what it posts)
    # The recipient whose collection this user reads, and may post feedback to (opinion and
    # note objects on its notifications: connector/feedback.py).
    recipient: str | None = None

    @property
    def feedback(self) -> frozenset[str]:
        return frozenset({recipient_collection_id(self.recipient)}) if self.recipient else frozenset()

    def can_see(self, collection_id: str) -> bool:
        return collection_id in self.readable or collection_id in self.writable


def principal_for(user: UserConfig, all_collections: Iterable[str]) -> Principal:
    readable = set(all_collections) if user.operator else set()
    if user.recipient:
        readable.add(recipient_collection_id(user.recipient))
    writable = {inbox_collection_id(user.inbox)} if user.inbox else set()
    return Principal(
        user.username, frozenset(readable), frozenset(writable), user.operator, user.inbox, user.recipient
    )


class AuthenticationFailed(TaxiiError):
    """A 401 to answer only after `delay` seconds (the back-off for this client and account)."""

    def __init__(self, delay: float) -> None:
        super().__init__(401, "Authentication failed", "Unknown user or wrong credentials.", _CHALLENGE)
        self.delay = delay


class TooManyAttempts(TaxiiError):
    """A 429 decided before any hash ran: the credentials were not checked.

    429 rather than 401, because nothing was found wrong with them: a colleague behind the
    same address as a password guesser learns to retry (Retry-After), not that the password
    is wrong; and a guesser learns nothing about the guess. Like a 401 it is answered only
    after `delay` seconds (the rest of the back-off, at least the first back-off step): a
    flood answered at once would only come back at once, and the requests themselves,
    however cheap, would then take the event loop from everybody else."""

    def __init__(self, delay: float, retry_after: float, description: str) -> None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        super().__init__(429, "Too many login attempts", description, headers)
        self.delay = delay


@dataclass
class Attempt:
    """Credentials admitted to verification: holds one slot until released (once)."""

    username: str
    client: str
    password_hash: str | None  # None: nobody has these credentials; the decoy is verified instead
    secret: str
    released: bool = False

    @property
    def key(self) -> str:
        return f"{self.client}|{self.username}"


class Authenticator:
    """Checks credentials, with a back-off on repeated failures per client address.

    Neither method sleeps: a failure raises AuthenticationFailed with the back-off, which the
    caller waits out without holding a worker thread (see taxii_server.app.authenticated).
    While that back-off runs, the same client (for that account; past SPRAY_ALLOWANCE
    failures, for any account it has no cached success for) is refused at once by `begin`.
    """

    def __init__(
        self,
        config: Config,
        all_collections: Iterable[str],
        failure_delay: float = 0.25,
        max_delay: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        collections = list(all_collections)
        self._users = {u.username: u for u in config.users}
        self._principals = {u.username: principal_for(u, collections) for u in config.users}
        self._tokens = {tok.id: (u.username, tok.hash) for u in config.users for tok in u.tokens}
        self._cache = VerifiedCache()
        self._failures: dict[str, int] = {}  # by client and username
        self._client_failures: dict[str, int] = {}  # by client, across usernames
        self._until: dict[str, float] = {}  # back-off end, by client and username
        self._client_until: dict[str, float] = {}  # back-off end, by client (spraying)
        self._running: dict[str, int] = {}  # verifications running, by client
        self._running_total = 0
        self._max_running = config.server.max_concurrent_verifications
        self._max_running_client = config.server.max_concurrent_verifications_per_client
        # Where `verify` runs: as many threads as verifications may run, apart from the worker
        # threads that serve requests, and at a lower CPU priority, so that hashing for
        # strangers yields the processor to the requests of users already logged in.
        self.executor = ThreadPoolExecutor(
            max_workers=self._max_running, thread_name_prefix="meldpunt-verify", initializer=_yield_cpu
        )
        self._lock = threading.Lock()
        self._failure_delay = failure_delay
        self._max_delay = max_delay
        self._clock = clock
        # A hash to verify against when nobody has the credentials given, so that an unknown
        # user costs what a known one does and timing does not reveal who exists.
        hashes = [u.password_hash for u in config.users if u.password_hash]
        hashes += [tok.hash for u in config.users for tok in u.tokens]
        self._decoy = hashes[0] if hashes else None

    # --- the two steps ----------------------------------------------------------------------

    def begin(self, authorization: str | None, client: str) -> Principal | Attempt:
        """Everything before argon2, cheap enough for the event loop: a Principal when the
        credentials verified recently, else an Attempt holding a verification slot (give it
        to `verify`). Raises TaxiiError 401 for missing or malformed credentials and
        TooManyAttempts while the client is in back-off or no slot is free."""
        username, secret, password_hash = self._credentials(authorization)
        key = f"{client}|{username}"
        now = self._clock()
        with self._lock:
            wait = self._until.get(key, 0.0) - now
        if wait > 0:
            log.debug("login refused in back-off", extra={"username": username, "client": client})
            raise self._refusal(wait, "Too many failed logins for this account from this address.")
        if password_hash is not None and self._cache.known(password_hash, secret):
            return self._succeeded(username, key)
        with self._lock:
            wait = self._client_until.get(client, 0.0) - now
            if wait > 0:
                # Spraying: this account may not be tried from here either until the client's
                # back-off ends, so refusals cannot probe the cache of successes at full speed.
                self._until[key] = max(self._until.get(key, 0.0), now + wait)
                busy = "Too many failed logins from this address."
            elif self._running_total >= self._max_running:
                wait, busy = 0.0, "Too many logins are being checked; try again shortly."
            elif self._running.get(client, 0) >= self._max_running_client:
                wait, busy = 0.0, "Too many logins from this address are being checked at once."
            else:
                self._running_total += 1
                self._running[client] = self._running.get(client, 0) + 1
                return Attempt(username, client, password_hash, secret)
        log.debug("login refused before verification", extra={"username": username, "client": client})
        raise self._refusal(wait, busy)

    def verify(self, attempt: Attempt) -> Principal:
        """argon2 (run it in a worker thread); releases the attempt's slot. Raises
        AuthenticationFailed with the back-off to wait before answering."""
        try:
            if attempt.password_hash is not None:
                ok = self._cache.verify(attempt.password_hash, attempt.secret)
            else:
                if self._decoy is not None:
                    verify_password(self._decoy, attempt.secret)
                ok = False
        finally:
            self.release(attempt)
        if ok:
            return self._succeeded(attempt.username, attempt.key)
        raise self._failure(attempt.username, attempt.client, attempt.key)

    def release(self, attempt: Attempt) -> None:
        """Give the attempt's slot back; again is a no-op (verify releases, callers may too)."""
        with self._lock:
            if attempt.released:
                return
            attempt.released = True
            self._running_total -= 1
            left = self._running.get(attempt.client, 1) - 1
            if left > 0:
                self._running[attempt.client] = left
            else:
                self._running.pop(attempt.client, None)

    def authenticate(self, authorization: str | None, client: str) -> Principal:
        """Both steps in one call, for callers without an event loop (and tests)."""
        outcome = self.begin(authorization, client)
        return outcome if isinstance(outcome, Principal) else self.verify(outcome)

    # --- helpers ------------------------------------------------------------------------------

    def _credentials(self, authorization: str | None) -> tuple[str, str, str | None]:
        """(username for the back-off key, secret, the hash to verify it against or None)."""
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() in _TOKEN_SCHEMES and credentials.strip():
            parsed = parse_token(credentials.strip())
            entry = self._tokens.get(parsed[0]) if parsed else None
            if parsed is None or entry is None:
                return "(token)", credentials.strip(), None
            return entry[0], parsed[1], entry[1]
        username, password = _parse_basic(authorization)
        user = self._users.get(username)
        return username, password, user.password_hash if user is not None else None

    def _refusal(self, wait: float, description: str) -> TooManyAttempts:
        """A 429 to answer after the rest of the back-off (`wait`), at least its first step."""
        delay = min(max(wait, self._failure_delay), self._max_delay)
        return TooManyAttempts(delay, wait - delay, description)

    def _succeeded(self, username: str, key: str) -> Principal:
        # Back-off is per client and username: a success with one account does not clear the
        # failures a client piled up guessing another's password.
        with self._lock:
            self._failures.pop(key, None)
        return self._principals[username]

    def _failure(self, username: str, client: str, key: str) -> AuthenticationFailed:
        """Log, and give the error to raise with this client's back-off: by its failures for
        this account, or, past SPRAY_ALLOWANCE, by its failures for any account. A success
        clears the first count only, so that one valid account cannot wash the other away.
        Until the back-off has passed, `begin` refuses this client and account (and, past
        SPRAY_ALLOWANCE, this client) without verifying anything."""
        now = self._clock()
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            spread = self._client_failures.get(client, 0) + 1
            self._client_failures[client] = spread
            counted = min(max(failures, spread - SPRAY_ALLOWANCE), 64)  # 2.0**1024 overflows a float
            delay = min(self._max_delay, self._failure_delay * 2.0 ** (counted - 1))
            self._until[key] = max(self._until.get(key, 0.0), now + delay)
            if spread > SPRAY_ALLOWANCE:
                self._client_until[client] = max(self._client_until.get(client, 0.0), now + delay)
            self._prune(now)
        log.warning(
            "authentication failed",
            extra={"username": username, "client": client, "failures": failures, "client_failures": spread},
        )
        return AuthenticationFailed(delay)

    def _prune(self, now: float) -> None:
        """Bound the bookkeeping (called under the lock): windows that have ended go first."""
        for windows in (self._until, self._client_until):
            if len(windows) > _MAX_TRACKED:
                for k in [k for k, end in windows.items() if end <= now]:
                    del windows[k]
                if len(windows) > _MAX_TRACKED:
                    windows.clear()
        for counts in (self._failures, self._client_failures):
            if len(counts) > _MAX_TRACKED:
                counts.clear()


def _yield_cpu() -> None:
    """Lower this thread's scheduling priority (Linux: nice is per thread, and the threads
    argon2 starts for its lanes inherit it). Elsewhere the call would renice the whole
    process, so it is left alone there."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


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
