"""Hardening of the TAXII server's edges (issue #14): trusted proxies, values PostgreSQL text
cannot hold, HEAD, over-long request heads, `next` without `added_after`, `Token` auth.

Servers started "like `meldpunt serve`" go through the serve command itself, with uvicorn.run
replaced by a server on a socket of 127.0.0.1 that this test bound: what is checked is the
settings the command really gives uvicorn, not a copy of them here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from taxii2client.common import TokenAuth
from taxii2client.v21 import Collection

from connector.collections import recipient_collection_id
from connector.config import ApiToken, Config
from connector.passwords import new_token
from tests.conftest import RunningServer, start_server
from tests.test_taxii_read import (
    TAXII_MEDIA_TYPE,
    _largest_reader,
    assert_taxii_error,
    manifest_dates,
    session_for,
)

# --- 5. values PostgreSQL text cannot hold ------------------------------------------------------


def test_nul_characters_are_400_or_404_on_both_engines(taxii: RunningServer) -> None:
    """psycopg refuses a NUL in a query parameter, so these were 500s on PostgreSQL (and quiet
    empty answers on SQLite). A filter, token or timestamp holding one is a bad request (400);
    an id holding one names nothing that can exist (404), whichever resource it is."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    base = taxii.collection_url(cid)
    some_id = next(iter(manifest_dates(s, taxii, cid)))
    for endpoint in ("objects/", "manifest/", f"objects/{some_id}/"):
        for name, value in (
            ("match[id]", some_id + "\x00"),
            ("match[id]", f"{some_id},x\x00y"),
            ("match[type]", "sighting\x00"),
            ("match[version]", "last\x00"),
            ("match[spec_version]", "2.1\x00"),
            ("added_after", "2024-01-01T00:00:00Z\x00"),
            ("next", "abc\x00def"),
        ):
            assert_taxii_error(s.get(base + endpoint, params={name: value}), 400)
    nul_id = "sighting--%00"
    assert_taxii_error(s.get(base + f"objects/{nul_id}/"), 404)
    assert_taxii_error(s.get(base + f"objects/{nul_id}/versions/"), 404)
    assert_taxii_error(s.get(base + f"objects/{some_id}%00/"), 404)
    assert_taxii_error(s.get(taxii.api_root + "collections/%00/"), 404)
    assert_taxii_error(s.get(taxii.api_root + "collections/%00/objects/"), 404)
    assert_taxii_error(s.get(taxii.api_root + "status/%00/"), 404)
    assert_taxii_error(s.get(taxii.api_root + f"status/{'0' * 8}%00/"), 404)
    operator = session_for("operator-1")
    assert_taxii_error(operator.delete(base + f"objects/{nul_id}/"), 404)
    assert_taxii_error(operator.get(base + "objects/", params={"match[id]": "\x00"}), 400)
    assert s.get(base + "objects/", params={"limit": 1}).status_code == 200  # still serving


# --- 16. next without added_after (OpenCTI) ------------------------------------------------------


def test_next_is_accepted_without_repeating_added_after(taxii: RunningServer) -> None:
    """OpenCTI's taxii2 connector sends `next` alone after a first page asked with
    added_after; the cursor implies the position, so the token is good without it. With an
    added_after other than its own, or another filter, it is still refused."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    everything = s.get(url, params={"limit": 1000}).json()["objects"]
    start = s.get(url, params={"limit": 3}).headers["X-TAXII-Date-Added-Last"]
    first = s.get(url, params={"limit": 3, "added_after": start})
    assert first.status_code == 200, first.text
    token = first.json()["next"]
    with_it = s.get(url, params={"limit": 3, "added_after": start, "next": token})
    without = s.get(url, params={"limit": 3, "next": token})
    assert without.status_code == 200, without.text
    assert without.json()["objects"] == with_it.json()["objects"] == everything[6:9]
    assert_taxii_error(
        s.get(url, params={"limit": 3, "added_after": "2000-01-01T00:00:00Z", "next": token}), 400
    )
    assert_taxii_error(s.get(url, params={"limit": 3, "next": token, "match[type]": "sighting"}), 400)
    other = next(x for x in taxii.config.users if x.recipient and x.recipient != u.recipient)
    assert_taxii_error(
        session_for(other.username).get(
            taxii.collection_url(recipient_collection_id(other.recipient or "")) + "objects/",
            params={"limit": 3, "next": token},
        ),
        400,
    )


# --- 17. Authorization: Token <key> ---------------------------------------------------------------


@pytest.fixture
def token_server(sample_config: Config, tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    from connector.store import Store

    token, token_id, token_hash = new_token()
    users = [
        u.model_copy(update={"tokens": [ApiToken(id=token_id, hash=token_hash)]})
        if u.username == "zcert-poller"
        else u
        for u in sample_config.users
    ]
    config = sample_config.model_copy(update={"users": users})
    store = Store.open(f"sqlite:///{tmp_path / 'tokens.db'}")
    running, server, thread = start_server(config, store)
    try:
        yield running, token
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        store.close()


def test_token_scheme_is_a_synonym_of_bearer(token_server: tuple[RunningServer, str]) -> None:
    """taxii2-client's TokenAuth (OpenCTI's) sends `Authorization: Token <key>`."""
    running, token = token_server
    cid = recipient_collection_id("zcert")
    with Collection(running.collection_url(cid), auth=TokenAuth(token)) as coll:
        assert coll.can_read is True
        assert coll.get_objects()["more"] is False
    for scheme in ("Token", "token", "Bearer"):
        resp = requests.get(
            running.api_root + "collections/",
            headers={"Authorization": f"{scheme} {token}", "Accept": TAXII_MEDIA_TYPE},
            timeout=30,
        )
        assert resp.status_code == 200, (scheme, resp.text)
    wrong = requests.get(
        running.api_root + "collections/",
        headers={"Authorization": f"Token {token[:-2]}xx", "Accept": TAXII_MEDIA_TYPE},
        timeout=30,
    )
    assert_taxii_error(wrong, 401)
