"""Wrong logins must not stall everybody (issue #14, item 1).

Every wrong login ran argon2 (64 MiB) in the shared worker threads before any back-off
applied: a flood of them held every thread and gigabytes of memory, and a valid poller waited
behind it. Now verifications are bounded (in all and per client address) and refused with
429 before anything is hashed when no slot is free or the client is in back-off; unknown
users are verified against a decoy hash under the same bound.

These are functional checks: hashes counted, orderings observed. How fast the server stays
under a real flood is measured by bench/auth_flood.py, which asserts nothing.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from connector import passwords
from connector.config import Config
from connector.store import Store
from taxii_server import auth as auth_module
from taxii_server.auth import Attempt, AuthenticationFailed, Authenticator, Principal, TooManyAttempts
from tests.conftest import password_for, start_server
from tests.test_taxii_read import TAXII_MEDIA_TYPE, assert_taxii_error, session_for

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def cheap_config(sample_config: Config) -> Config:
    users = [
        u.model_copy(update={"password_hash": CHEAP.hash(password_for(u.username))})
        for u in sample_config.users
        if u.password_hash
    ]
    server = sample_config.server.model_copy(
        update={"max_concurrent_verifications": 3, "max_concurrent_verifications_per_client": 2}
    )
    return sample_config.model_copy(update={"users": users, "server": server})


class Hashes:
    """Counts argon2 verifications (the real ones still run)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.real = passwords.verify_password

    def __call__(self, password_hash: str, password: str) -> bool:
        self.calls.append(password_hash)
        return self.real(password_hash, password)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Hashes:
    counter = Hashes()
    monkeypatch.setattr(passwords, "verify_password", counter)
    monkeypatch.setattr(auth_module, "verify_password", counter)
    return counter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def refused(call: Callable[[], object]) -> TooManyAttempts:
    with pytest.raises(TooManyAttempts) as caught:
        call()
    assert caught.value.status == 429 and int(caught.value.headers["Retry-After"]) >= 1
    return caught.value


def test_verifications_beyond_the_bounds_are_refused_without_hashing(
    cheap_config: Config, hashes: Hashes
) -> None:
    auth = Authenticator(cheap_config, [])
    user = cheap_config.users[0].username
    a1 = auth.begin(basic(user, "wrong"), "192.0.2.1")
    a2 = auth.begin(basic("nobody-at-all", "wrong"), "192.0.2.1")  # unknown users take a slot too
    assert isinstance(a1, Attempt) and isinstance(a2, Attempt)
    refused(lambda: auth.begin(basic(user, "wrong"), "192.0.2.1"))  # the client's bound: 2
    b1 = auth.begin(basic(user, "wrong"), "192.0.2.2")
    assert isinstance(b1, Attempt)
    refused(lambda: auth.begin(basic(user, "wrong"), "192.0.2.3"))  # the bound in all: 3
    assert hashes.calls == []
    auth.release(b1)
    auth.release(b1)  # a second release gives nothing back twice
    third = auth.begin(basic(user, "wrong"), "192.0.2.3")
    assert isinstance(third, Attempt)
    refused(lambda: auth.begin(basic(user, "wrong"), "192.0.2.4"))
    with pytest.raises(AuthenticationFailed):
        auth.verify(a1)  # verifying releases the slot
    assert len(hashes.calls) == 1
    assert isinstance(auth.begin(basic(user, "wrong"), "192.0.2.4"), Attempt)


def test_a_client_in_back_off_is_refused_before_hashing(cheap_config: Config, hashes: Hashes) -> None:
    """During the back-off after a failure the same client and account are refused unverified,
    the right password included (so that refusals tell a guesser nothing); other accounts from
    that client are not, until it has failed for more than SPRAY_ALLOWANCE accounts; then only
    credentials that verified before (a colleague's poller behind the same address) pass."""
    clock = Clock()
    auth = Authenticator(cheap_config, [], failure_delay=30.0, max_delay=30.0, clock=clock)
    user, other = cheap_config.users[0].username, cheap_config.users[1].username
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(basic(user, "wrong"), "192.0.2.1")
    assert len(hashes.calls) == 1
    clock.now += 10
    refused(lambda: auth.authenticate(basic(user, "wrong"), "192.0.2.1"))
    refused(lambda: auth.authenticate(basic(user, password_for(user)), "192.0.2.1"))
    assert len(hashes.calls) == 1
    assert isinstance(auth.authenticate(basic(user, password_for(user)), "192.0.2.2"), Principal)
    assert isinstance(auth.authenticate(basic(other, password_for(other)), "192.0.2.1"), Principal)
    assert len(hashes.calls) == 3
    clock.now += 21
    assert isinstance(auth.authenticate(basic(user, password_for(user)), "192.0.2.1"), Principal)

    for i in range(auth_module.SPRAY_ALLOWANCE + 1):  # spraying from 198.51.100.9
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(basic(f"guess-{i}", "wrong"), "198.51.100.9")
    before = len(hashes.calls)
    refused(lambda: auth.authenticate(basic("guess-next", "wrong"), "198.51.100.9"))
    refused(lambda: auth.authenticate(basic(user, "a-guess"), "198.51.100.9"))
    assert len(hashes.calls) == before
    # Cached success (verified from elsewhere a moment ago): no hash, not refused.
    assert isinstance(auth.authenticate(basic(other, password_for(other)), "198.51.100.9"), Principal)
    assert len(hashes.calls) == before
    # The account refused during the client's back-off stays refused with it: no fast probing.
    refused(lambda: auth.authenticate(basic(user, password_for(user)), "198.51.100.9"))


def test_a_refusal_is_answered_after_the_rest_of_the_back_off(cheap_config: Config) -> None:
    """A refused request waits out what is left of the back-off (at least its first step)
    before its 429 goes out, as a failed one waits before its 401: a flood answered at once
    would come straight back and keep the event loop busy."""
    clock = Clock()
    auth = Authenticator(cheap_config, [], failure_delay=0.25, max_delay=4.0, clock=clock)
    user = cheap_config.users[0].username
    for _ in range(5):
        with pytest.raises(AuthenticationFailed) as failed:
            auth.authenticate(basic(user, "wrong"), "192.0.2.1")
        clock.now += failed.value.delay
    with pytest.raises(AuthenticationFailed) as failed:
        auth.authenticate(basic(user, "wrong"), "192.0.2.1")
    assert failed.value.delay == 4.0
    clock.now += 1.0
    assert refused(lambda: auth.begin(basic(user, "wrong"), "192.0.2.1")).delay == 3.0
    clock.now += 2.9
    late = refused(lambda: auth.begin(basic(user, "wrong"), "192.0.2.1"))
    assert late.delay == 0.25 and late.headers["Retry-After"] == "1"


def test_unknown_users_and_tokens_cost_one_decoy_verification(cheap_config: Config, hashes: Hashes) -> None:
    auth = Authenticator(cheap_config, [])
    configured = {u.password_hash for u in cheap_config.users}
    for authorization in (basic("no-such-user", "pw"), "Bearer mpt_0123456789abcdef_secret", "Token junk"):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(authorization, f"192.0.2.{len(hashes.calls) + 10}")
    assert len(hashes.calls) == 3 and set(hashes.calls) <= configured


@pytest.fixture
def served(cheap_config: Config, tmp_path: Path) -> Iterator[str]:
    store = Store.open(f"sqlite:///{tmp_path / 'flood.db'}")
    running, server, thread = start_server(cheap_config, store)
    try:
        yield running.api_root + "collections/"
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        store.close()


def test_a_flood_of_wrong_logins_neither_holds_the_threads_nor_waits_the_valid_poller(
    cheap_config: Config, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 concurrent wrong logins (wrong passwords and unknown users) while every argon2
    verification hangs: no more than the bound ever run at once, the rest are refused with a
    429 TAXII error at once, and a poller that logged in before is answered meanwhile. Before,
    each wrong login took a worker thread into argon2 and the poller queued behind them."""
    poller, victim = cheap_config.users[0].username, cheap_config.users[1].username
    poll = session_for(poller)
    assert poll.get(served, timeout=15).status_code == 200  # logged in: its success is cached

    release = threading.Event()
    lock = threading.Lock()
    running, peak = [0], [0]
    real = passwords.verify_password

    def hanging(password_hash: str, password: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(30)
        with lock:
            running[0] -= 1
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", hanging)
    monkeypatch.setattr(auth_module, "verify_password", hanging, raising=False)
    answers: list[requests.Response] = []

    def guess(i: int) -> None:
        s = session_for(None)
        s.auth = (victim, "wrong") if i % 2 else (f"unknown-{i}", "wrong")
        answers.append(s.get(served, timeout=60))

    guessers = [threading.Thread(target=guess, args=(i,)) for i in range(120)]
    try:
        for t in guessers:
            t.start()
        bound = cheap_config.server.max_concurrent_verifications_per_client
        refusals = 0
        for _ in range(100):  # until all but the verifications holding a slot are refused
            refusals = sum(1 for a in list(answers) if a.status_code == 429)
            if refusals >= 120 - bound:
                break
            threading.Event().wait(0.1)
        resp = poll.get(served, timeout=5)
        assert resp.status_code == 200, resp.text
        assert refusals == 120 - bound and peak[0] <= bound
    finally:
        release.set()
        for t in guessers:
            t.join()
    assert peak[0] <= cheap_config.server.max_concurrent_verifications_per_client
    assert sorted({a.status_code for a in answers}) == [401, 429]
    refusal = next(a for a in answers if a.status_code == 429)
    body = assert_taxii_error(refusal, 429)
    assert body["title"] == "Too many login attempts" and int(refusal.headers["Retry-After"]) >= 1
    assert refusal.headers["Content-Type"] == TAXII_MEDIA_TYPE
