"""The key that signs `next` tokens outlives the process (issue #14, item 18).

Without MELDPUNT_TOKEN_SECRET every process made up its own key, so a restart refused every
cursor a client held, and a second process refused the first one's. The key is now generated
once and kept in the database (the store's settings table); the variable still wins.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import threading

import pytest

from connector.collections import recipient_collection_id
from connector.store import Store
from taxii_server.pagination import TOKEN_SECRET, token_secret
from tests.conftest import RunningServer, start_server
from tests.test_taxii_read import _largest_reader, assert_taxii_error, session_for

ENV = "MELDPUNT_TOKEN_SECRET"


def _first_page_token(taxii: RunningServer, username: str, cid: str) -> str:
    page = session_for(username).get(taxii.collection_url(cid) + "objects/", params={"limit": 2})
    assert page.status_code == 200, page.text
    return str(page.json()["next"])


@pytest.fixture
def no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


@pytest.mark.usefixtures("no_env_secret")
def test_a_cursor_survives_a_restart_and_works_on_another_process(
    taxii: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A second server on the same store (a restart, or another process behind the same
    address) continues the paging the first one began, and the key is in no log line."""
    caplog.set_level(logging.DEBUG)
    u, cid = _largest_reader(taxii)
    token = _first_page_token(taxii, u.username, cid)
    second, server, thread = start_server(taxii.config, taxii.store)
    try:
        resp = session_for(u.username).get(
            second.collection_url(cid) + "objects/", params={"limit": 2, "next": token}
        )
        assert resp.status_code == 200, resp.text
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
    secret = token_secret(taxii.store).decode()
    assert len(secret) >= 40
    assert secret not in caplog.text
    assert all(secret not in str(vars(r)) for r in caplog.records)


@pytest.mark.usefixtures("no_env_secret")
def test_the_environment_variable_still_wins(taxii: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server given MELDPUNT_TOKEN_SECRET signs with it: the stored key does not verify its
    tokens, and a server with the same variable does."""
    u, cid = _largest_reader(taxii)
    monkeypatch.setenv(ENV, "an-operator-chosen-key-" + "x" * 20)
    with_env, server, thread = start_server(taxii.config, taxii.store)
    try:
        token = _first_page_token(with_env, u.username, cid)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
    url = taxii.collection_url(recipient_collection_id(u.recipient or "")) + "objects/"
    # `taxii` was started before the variable was set: it signs with the stored key.
    assert_taxii_error(session_for(u.username).get(url, params={"limit": 2, "next": token}), 400)
    again, server, thread = start_server(taxii.config, taxii.store)
    try:
        resp = session_for(u.username).get(
            again.collection_url(cid) + "objects/", params={"limit": 2, "next": token}
        )
        assert resp.status_code == 200, resp.text
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_processes_starting_together_agree_on_one_key(store_url: str) -> None:
    """Eight stores opened on a fresh database at once (as processes starting together) each
    create the table if missing and insert a key: one insert wins and all read it."""
    stores = [Store.open(store_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    keys: list[bytes] = []
    failures: list[BaseException] = []

    def start(store: Store) -> None:
        try:
            barrier.wait(10)
            keys.append(token_secret(store))
        except BaseException as exc:  # reported below, with the engine
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.close()
    assert failures == []
    assert len(keys) == 8 and len(set(keys)) == 1
    again = Store.open(store_url)
    try:
        assert token_secret(again) == keys[0]
        assert again.setting(TOKEN_SECRET, lambda: "another") == keys[0].decode()
    finally:
        again.close()
