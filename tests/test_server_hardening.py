"""Hardening of the TAXII server's edges (issue #14): trusted proxies, values PostgreSQL text
cannot hold, HEAD, over-long request heads, `next` without `added_after`, `Token` auth.

Servers started "like `meldpunt serve`" go through the serve command itself, with its
run_server replaced by uvicorn on a socket of 127.0.0.1 that this test bound, given the settings
run_server gives it (uvicorn_options): what is checked is the application the command builds
and the settings it uses, not a copy of them here.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
import yaml
from argon2 import PasswordHasher
from taxii2client.common import TokenAuth
from taxii2client.v21 import Collection

from connector.adapters.mapping import load_mappings
from connector.collections import recipient_collection_id
from connector.config import ApiToken, Config
from connector.ingest import Ingestor
from connector.passwords import new_token
from connector.store import Store
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, RunningServer, password_for, serving, start_server
from tests.test_taxii_read import (
    TAXII_MEDIA_TYPE,
    _largest_reader,
    assert_taxii_error,
    manifest_dates,
    session_for,
)

# --- a server started by the serve command ---------------------------------------------------


class Records(logging.Handler):
    """The log records of one logger, for assertions on what the server decided."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def auth_log() -> Iterator[Records]:
    logger = logging.getLogger("meldpunt.taxii.auth")
    handler = Records()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def write_config(tmp_path: Path, server: dict[str, Any] | None = None) -> Path:
    """The example deployment with cheap hashes of the test passwords, on a SQLite file."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    for user in raw["users"]:
        user["password_hash"] = CHEAP.hash(password_for(user["username"]))
    raw["database"] = f"sqlite:///{tmp_path / 'served.db'}"
    raw["server"] = {**raw.get("server", {}), **(server or {})}
    path = tmp_path / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@contextmanager
def served_by_cli(monkeypatch: pytest.MonkeyPatch, config_path: Path) -> Iterator[str]:
    """`meldpunt serve --config PATH`, with the uvicorn settings the command chooses, on a port
    of 127.0.0.1 bound here. Yields the base URL."""
    from connector import cli

    started: dict[str, Any] = {}

    def run_server(config: Any, application: Any, **_where: Any) -> None:
        from taxii_server.server import uvicorn_options

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(application, **uvicorn_options(config)))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.update(server=server, thread=thread, port=sock.getsockname()[1])

    monkeypatch.setattr("taxii_server.server.run_server", run_server)
    cli.serve(config_path=config_path, host=None, port=None, workers=None)
    server, thread = started["server"], started["thread"]
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{started['port']}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wrong_login(base: str, forwarded_for: str) -> None:
    s = session_for(None)
    s.auth = ("zcert-poller", "wrong")
    resp = s.get(f"{base}/meldpunt/collections/", headers={"X-Forwarded-For": forwarded_for}, timeout=30)
    assert resp.status_code in (401, 429), resp.text


# --- 4. X-Forwarded-For is trusted only from configured proxies -------------------------------


def test_x_forwarded_for_from_loopback_is_ignored_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local client sending a new X-Forwarded-For with every guess looked like a new client
    each time, and so never accumulated a back-off. Without server.trusted_proxies the header
    is ignored: every guess counts against 127.0.0.1."""
    with served_by_cli(monkeypatch, write_config(tmp_path)) as base, auth_log() as log:
        for i in range(3):
            _wrong_login(base, f"203.0.113.{i + 1}")
    failures = [r for r in log.records if r.getMessage() == "authentication failed"]
    assert [r.client for r in failures] == ["127.0.0.1"] * 3  # type: ignore[attr-defined]
    assert [r.client_failures for r in failures] == [1, 2, 3]  # type: ignore[attr-defined]


def test_x_forwarded_for_is_used_from_a_configured_proxy_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a trusted proxy the client is the nearest address the proxies did not add: the
    rightmost entry that is not itself a trusted proxy. What the client wrote at the left of
    the header (a spoofed address) does not count."""
    config = write_config(tmp_path, {"trusted_proxies": ["127.0.0.0/8", "192.0.2.0/24"]})
    with served_by_cli(monkeypatch, config) as base, auth_log() as log:
        _wrong_login(base, "203.0.113.7")
        _wrong_login(base, "198.51.100.66, 203.0.113.8, 192.0.2.10")  # client spoofs the left
        _wrong_login(base, "not-an-address")  # the proxy's own peer then counts
    failures = [r for r in log.records if r.getMessage() == "authentication failed"]
    assert [r.client for r in failures] == ["203.0.113.7", "203.0.113.8", "127.0.0.1"]  # type: ignore[attr-defined]


def test_trusted_proxies_must_be_networks(tmp_path: Path) -> None:
    from connector.config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path, {"trusted_proxies": ["proxy.example.nl"]}))
    assert "server.trusted_proxies" in refused.value.render()


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


# --- 10. HEAD, and over-long request heads ----------------------------------------------------------


def test_head_on_every_get_resource_answers_the_get_headers_without_a_body(taxii: RunningServer) -> None:
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    base = taxii.collection_url(cid)
    some_id = next(iter(manifest_dates(s, taxii, cid)))
    urls = [
        f"{taxii.url}/taxii2/",
        taxii.api_root,
        taxii.api_root + "collections/",
        base,
        base + "objects/?limit=2",
        base + f"objects/{some_id}/",
        base + f"objects/{some_id}/versions/",
        base + "manifest/?limit=2",
        taxii.api_root + "status/no-such-status/",  # 404: the same error headers
        base + "objects/?match[version]=bogus",  # 400
    ]
    for url in urls:
        got, head = s.get(url), s.head(url)
        assert head.status_code == got.status_code, (url, head.status_code, got.status_code)
        assert head.content == b"", url
        for name in ("Content-Type", "Content-Length", "X-TAXII-Date-Added-First", "X-TAXII-Date-Added-Last"):
            assert head.headers.get(name) == got.headers.get(name), (url, name)
    anonymous = session_for(None).head(taxii.api_root + "collections/")
    assert anonymous.status_code == 401 and anonymous.content == b""
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")


def test_a_head_delivers_nothing(store: Store, sample_config: Config) -> None:
    """Found by a review (4 December 2026): HEAD ran the GET and marked every sighting on the
    page delivered, though no object reached the client (stats and escalation read that state).
    Its audit row says it was a HEAD."""
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    with serving(sample_config, store) as server:
        s = session_for("noord-poller")
        url = server.collection_url(recipient_collection_id("ziekenhuis-noord")) + "objects/"
        head = s.head(url)
        assert head.status_code == 200 and head.content == b""
        assert _delivered(store) == 0
        assert s.get(url).status_code == 200
        assert _delivered(store) > 0
    actions = [row["action"] for row in store.audit_entries() if row["username"] == "noord-poller"]
    assert actions == ["objects (HEAD)", "objects"]


def _delivered(store: Store) -> int:
    with store.engine.connect() as conn:
        query = "SELECT count(*) FROM delivery_states WHERE state = 'delivered'"
        return int(conn.exec_driver_sql(query).scalar_one())


def test_a_405_names_every_method_of_the_resource(taxii: RunningServer) -> None:
    """Found by schemathesis: `objects/` is two routes (read, inbox) and Starlette's 405 named
    only the first one's methods, `Allow: GET`, as if there were no inbox."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    base = taxii.collection_url(cid)
    some_id = next(iter(manifest_dates(s, taxii, cid)))
    expected = {
        base + "objects/": {"GET", "HEAD", "POST"},
        base + f"objects/{some_id}/": {"DELETE", "GET", "HEAD"},
        base + "manifest/": {"GET", "HEAD"},
        f"{taxii.url}/taxii2/": {"GET", "HEAD"},
    }
    for url, methods in expected.items():
        for verb in ("OPTIONS", "PUT", "PATCH"):
            resp = s.request(verb, url)
            assert_taxii_error(resp, 405)
            assert set(resp.headers["Allow"].split(", ")) == methods, (verb, url, resp.headers["Allow"])


def test_the_openapi_document_says_what_each_query_parameter_takes(taxii: RunningServer) -> None:
    """What the document calls valid, the server takes; what the server refuses with 400, the
    document calls invalid (schemathesis held the server to a document that took any string:
    an empty `added_after=` was "valid")."""
    import re

    spec = requests.get(f"{taxii.url}/taxii2/openapi.json", timeout=10).json()
    objects = spec["paths"]["/{api_root}/collections/{collection_id}/objects/"]
    params = {p["name"]: p["schema"] for p in objects["get"]["parameters"] if p["in"] == "query"}
    assert params["added_after"] == {"type": "string", "format": "date-time"}
    assert objects["post"]["requestBody"]["content"][TAXII_MEDIA_TYPE]["schema"]["$ref"].endswith(
        "/EnvelopeIn"
    )
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    cases = {
        "limit": (["1", "007", "99999999999999999999"], ["", "0", " 5", "5 ", "-1", "1.0", "\u0663"]),
        "match[type]": (["indicator", " indicator ,x", "no-such-type"], ["", ",", " , ", "\t"]),
        "match[id]": (["indicator--0", "anything at all"], ["", ", ,"]),
        "match[spec_version]": (["2.1", "2.0,2.1"], ["", ","]),
    }
    for name, (good, bad) in cases.items():
        pattern = re.compile(params[name]["pattern"])
        for value in good:
            assert pattern.search(value), (name, value)
            assert s.get(url, params={name: value}).status_code == 200, (name, value)
        for value in bad:
            assert not pattern.search(value), (name, value)
            assert s.get(url, params={name: value}).status_code == 400, (name, value)


def _raw_exchange(port: int, *parts: bytes) -> tuple[bytes, bytes]:
    """Send `parts` (pausing between them, so the server sees each as it arrives) and read
    the answer until the server closes: (status line and headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        for part in parts:
            raw.sendall(part)
            time.sleep(0.2)
        chunks = []
        while chunk := raw.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head, body


def _assert_raw_taxii_error(head: bytes, body: bytes, status: int) -> None:
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"content-type: application/taxii+json;version=2.1" in head.lower(), head
    assert f'"http_status":"{status}"'.encode() in body, body


def test_over_long_request_heads_answer_taxii_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn answered a request head over h11's limit with a text/plain 400, and let one
    through when it happened to arrive whole. A request line over server.max_request_head_bytes
    is 414, a head over it 431, an unparsable request 400: each a TAXII error message, whether
    the head arrived whole (the application checks) or is still arriving (h11 stops reading)."""
    with served_by_cli(monkeypatch, write_config(tmp_path)) as base:  # the default: 16 KiB
        port = int(base.rsplit(":", 1)[1])
        s = session_for("zcert-poller")
        url = f"{base}/meldpunt/collections/"
        assert s.get(url, params={"match[id]": "x" * 15_000}).status_code == 200
        assert_taxii_error(s.get(url, params={"match[id]": "x" * 17_000}), 414)
        assert_taxii_error(s.get(url, headers={"X-Padding": "y" * 17_000}), 431)
        assert_taxii_error(s.get(url, headers={f"X-Pad-{i}": "z" * 100 for i in range(170)}), 431)
        # Still arriving: the request line, then a header, grow past the limit unfinished.
        _assert_raw_taxii_error(*_raw_exchange(port, b"GET /" + b"a" * 17_000), 414)
        _assert_raw_taxii_error(*_raw_exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 17_000), 431)
        _assert_raw_taxii_error(
            *_raw_exchange(port, b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"), 400
        )
        assert s.get(url).status_code == 200


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


def test_the_readme_documents_every_server_key() -> None:
    """Every `server.*` key the configuration accepts has a row in the README's table."""
    from connector.config import ServerConfig
    from tests.conftest import REPO

    table = (REPO / "README.md").read_text(encoding="utf-8").split("## Configuration", 1)[1]
    table = table.split("\n## ", 1)[0]
    missing = [name for name in ServerConfig.model_fields if f"`server.{name}`" not in table]
    assert missing == []
