"""Deployment on PostgreSQL with more than one process (issue #15, item 1).

Two `meldpunt serve` processes (one of them with two uvicorn workers) on one PostgreSQL database,
with no MELDPUNT_TOKEN_SECRET: the key that signs `next` tokens is the one kept in the
database, so a client may take page 1 from one process and the next pages from the other,
while an ingest adds objects, and still gets every object exactly once. SIGTERM stops a server
gracefully (a request in flight is finished, or past shutdown_timeout aborted) with exit 0.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.collections import recipient_collection_id
from connector.config import load_config
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import _drop_pg_database, _fresh_pg_database, password_for
from tests.serving import pg_env, serving
from tests.test_cli import write_config

TAXII = "application/taxii+json;version=2.1"
HEADER = (
    "timestamp,ip,protocol,port,hostname,tag,asn,geo,region,city,naics,sic,http,http_code,"
    "http_reason,content_type,connection,www_authenticate,set_cookie,server,content_length,"
    "transfer_encoding,http_date\n"
)


def scan_http(path: Path, rows: list[tuple[str, int]]) -> Path:
    """A Shadowserver scan_http report of (address, port) rows on 2024-06-01."""
    lines = [
        f"2024-06-01 03:12:09,{ip},tcp,{port},,http,64500,NL,X,Y,0,0,HTTP/1.1,200,OK,text/html,,,,nginx,612,,"
        '"Sat, 01 Jun 2024 03:12:09 GMT"\n'
        for ip, port in rows
    ]
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def pg_database(postgres_url: str) -> Any:
    url, name = _fresh_pg_database(postgres_url)
    try:
        yield url
    finally:
        _drop_pg_database(postgres_url, name)


def _get(url: str, params: dict[str, Any]) -> requests.Response:
    answer = requests.get(
        url,
        params=params,
        headers={"Accept": TAXII},
        auth=("zcert-poller", password_for("zcert-poller")),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer


def _versions(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(o["id"], o.get("modified", o.get("created", ""))) for o in body.get("objects", [])]


def test_paging_across_processes_on_postgresql_while_ingesting(tmp_path: Path, pg_database: str) -> None:
    from connector.adapters.mapping import load_mappings

    config_path = write_config(tmp_path)
    env = pg_env(config_path, pg_database)
    env.pop("MELDPUNT_TOKEN_SECRET", None)  # the key kept in the database, shared by both
    config = load_config(config_path).model_copy(update={"database": pg_database})
    store = Store.open(pg_database)
    ingestor = Ingestor(config, store, load_mappings())
    reports = tmp_path / "reports"
    first = scan_http(_report(reports, 0), [(f"192.0.2.{i}", 80) for i in range(1, 41)])
    assert ingestor.run("shadowserver-foundation", "shadowserver", [first]).ok  # before the servers start

    objects = f"/meldpunt/collections/{recipient_collection_id('zcert')}/objects/"
    with (
        serving(config_path, tmp_path, "--workers", "2", env=env) as one,
        serving(config_path, tmp_path, env=env) as other,
    ):
        done = threading.Event()
        failures: list[BaseException] = []

        def ingest_more() -> None:
            try:
                for batch in range(1, 13):
                    rows = [(f"192.0.2.{i}", 8000 + batch) for i in range(1, 21)]
                    path = scan_http(_report(reports, batch), rows)
                    assert ingestor.run("shadowserver-foundation", "shadowserver", [path]).ok
                    time.sleep(0.05)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)
            finally:
                done.set()

        writer = threading.Thread(target=ingest_more)
        writer.start()
        # A poller: `next` while there is more (each page from the other process), else from
        # the last date_added it was given (X-TAXII-Date-Added-Last), until the ingest is over
        # and a request made after it ended brings nothing new.
        seen: list[tuple[str, str]] = []
        token: str | None = None
        cursor: str | None = None
        requests_made = 0
        while True:
            finished = done.is_set()
            params: dict[str, Any] = {"limit": 7}
            if token:
                params["next"] = token
            elif cursor:
                params["added_after"] = cursor
            answer = _get((one.url, other.url)[requests_made % 2] + objects, params)
            requests_made += 1
            body = answer.json()
            seen += _versions(body)
            if body.get("objects"):
                cursor = answer.headers["X-TAXII-Date-Added-Last"]
            token = body.get("next") if body.get("more") else None
            if token is None and not body.get("objects"):
                if finished:
                    break
                time.sleep(0.05)
        writer.join()
        assert not failures, failures
        assert requests_made > 30, "the paging did not cross processes often enough to mean anything"

        # What one process serves from the start, in one go: the poller saw exactly this.
        everything: list[tuple[str, str]] = []
        params = {"limit": 1000}
        while True:
            body = _get(other.url + objects, params).json()
            everything += _versions(body)
            if not body.get("more"):
                break
            params = {"limit": 1000, "next": body["next"]}
    store.close()
    assert len(seen) == len(set(seen)), "an object was served twice"
    assert seen == everything, "the poller missed objects, or saw them in another order"
    assert len(everything) >= 40 + 12 * 20 * 2  # every notification's sighting and observed-data


def _report(directory: Path, batch: int) -> Path:
    """A report file name the shadowserver format reads its report type from."""
    folder = directory / str(batch)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "2024-06-01-scan_http-nl.csv"


def test_discovery_names_the_api_root_at_the_public_url(store: Store, sample_config: Any) -> None:
    """Behind a proxy that terminates TLS, requests arrive as plain HTTP for the proxy's
    address: discovery must name the API root where clients reach it (server.public_url)."""
    from tests.conftest import start_server

    server_config = sample_config.server.model_copy(update={"public_url": "https://taxii.meldpunt.example/"})
    running, server, thread = start_server(sample_config.model_copy(update={"server": server_config}), store)
    try:
        answer = requests.get(
            running.url + "/taxii2/",
            headers={"Accept": TAXII},
            auth=("zcert-poller", password_for("zcert-poller")),
            timeout=30,
        ).json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert answer["default"] == "https://taxii.meldpunt.example/meldpunt/"
    assert answer["api_roots"] == ["https://taxii.meldpunt.example/meldpunt/"]
