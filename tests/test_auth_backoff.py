"""The back-off after failed logins (taxii_server.auth.Authenticator): who is slowed down, by
how much, and that the server waits it out without holding up anybody else.

Hashes here are argon2 with the cheapest parameters: what is checked is the back-off, not this
machine's speed at argon2.
"""

from __future__ import annotations

import base64
import functools
import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from connector.config import Config
from connector.store import Store
from taxii_server import app as taxii_app
from taxii_server.auth import SPRAY_ALLOWANCE, AuthenticationFailed, Authenticator
from tests.conftest import password_for, start_server
from tests.test_taxii_read import session_for

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def cheap_config(sample_config: Config) -> Config:
    users = [
        u.model_copy(update={"password_hash": CHEAP.hash(password_for(u.username))})
        for u in sample_config.users
        if u.password_hash
    ]
    return sample_config.model_copy(update={"users": users})


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def unhurried() -> Callable[[], float]:
    """A clock that moves on a minute at every reading: each call below comes after the
    back-off of the one before has passed, as it does for a client that waits for its 401.
    (A request during a back-off is refused unverified: tests/test_auth_flood.py.)"""
    ticks = itertools.count()
    return lambda: 60.0 * next(ticks)


def delay(auth: Authenticator, username: str, client: str, password: str = "wrong") -> float:
    with pytest.raises(AuthenticationFailed) as failed:
        auth.authenticate(basic(username, password), client)
    return failed.value.delay


def test_the_back_off_doubles_per_account_and_a_success_clears_it(cheap_config: Config) -> None:
    auth = Authenticator(cheap_config, [], failure_delay=0.25, max_delay=4.0, clock=unhurried())
    user = cheap_config.users[0].username
    assert [delay(auth, user, "192.0.2.1") for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert delay(auth, user, "192.0.2.2") == 0.25  # another client is not slowed down
    assert [delay(auth, user, "192.0.2.3") for _ in range(3)] == [0.25, 0.5, 1.0]
    auth.authenticate(basic(user, password_for(user)), "192.0.2.3")
    assert delay(auth, user, "192.0.2.3") == 0.25


def test_guessing_one_password_per_account_is_slowed_down_too(cheap_config: Config) -> None:
    """Password spraying fails once per account: past SPRAY_ALLOWANCE failures from one client
    across accounts, each further failure counts against the client as a whole, and a login
    with a valid account does not wash that away."""
    auth = Authenticator(cheap_config, [], failure_delay=0.25, max_delay=4.0, clock=unhurried())
    valid = cheap_config.users[0].username
    delays = [delay(auth, f"guess-{i}", "198.51.100.7") for i in range(SPRAY_ALLOWANCE + 4)]
    assert delays == [0.25] * (SPRAY_ALLOWANCE + 1) + [0.5, 1.0, 2.0]
    auth.authenticate(basic(valid, password_for(valid)), "198.51.100.7")
    assert delay(auth, "guess-next", "198.51.100.7") == 4.0
    assert delay(auth, "guess-next", "198.51.100.8") == 0.25  # another client is not


def test_a_flood_of_failures_never_turns_the_401_into_an_error(cheap_config: Config) -> None:
    """The exponent is capped: 0.25 * 2 ** 1100 overflowed a float (a 500 after ~1,000 failures)."""
    auth = Authenticator(cheap_config, [], failure_delay=0.25, max_delay=4.0)
    auth._client_failures["203.0.113.9"] = 5_000  # as after a long flood from that address
    assert delay(auth, "anyone", "203.0.113.9") == 4.0


def test_the_back_off_does_not_hold_up_other_users(
    cheap_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client failing on many connections at once used to hold the server's worker threads
    (about 40) asleep, and every other user waited behind them. With a back-off of 6 s, the
    other user's request must be answered while every failing request is still waiting:
    an ordering, not a measured time. The guesses beyond the client's verification slots,
    and those made during its back-off, are refused at once (429) without being verified."""
    monkeypatch.setattr(
        taxii_app, "Authenticator", functools.partial(Authenticator, failure_delay=6.0, max_delay=6.0)
    )
    attacker, victim = cheap_config.users[0].username, cheap_config.users[1].username
    store = Store.open(f"sqlite:///{tmp_path / 'backoff.db'}")
    running, server, thread = start_server(cheap_config, store)
    url = running.api_root + "collections/"
    answered: list[int] = []

    def guess() -> None:
        s = session_for(None)
        s.auth = (attacker, "wrong")
        answered.append(s.get(url, timeout=60).status_code)

    guessers = [threading.Thread(target=guess) for _ in range(60)]
    try:
        # Logged in before (a poller): a verification slot of the shared address is not needed.
        assert session_for(victim).get(url, timeout=15).status_code == 200
        for t in guessers:
            t.start()
        assert session_for(victim).get(url, timeout=15).status_code == 200
        assert 401 not in answered, "the other user's request was answered only after the back-off"
    finally:
        for t in guessers:
            t.join()
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        store.close()
    assert set(answered) <= {401, 429} and len(answered) == 60
    assert 1 <= answered.count(401) <= cheap_config.server.max_concurrent_verifications_per_client
