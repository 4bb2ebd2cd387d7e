"""Shared fixtures: sample data, the example config with known test passwords, stores on
SQLite and on a real PostgreSQL, and a real TAXII server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.config import Config, load_config
from connector.ingest import Ingestor
from connector.passwords import hash_password
from connector.store import Store

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = REPO / "config" / "meldpunt.yaml"


def _shared_data() -> Path:
    env = os.environ.get("MELDPUNT_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    for candidate in candidates:
        if (candidate / "divd").is_dir():
            return candidate
    # The DIVD sample is also in the repository (written for this project, no licence limits).
    return REPO / "samples"


SHARED_DATA = _shared_data()
DIVD_SCAN = SHARED_DATA / "divd" / "DIVD-2024-00012.nuclei.jsonl"


def divd_scan_as(directory: Path, text: str) -> Path:
    """The DIVD sample scan with this text (another day, other hosts) in `directory`, its case
    file beside it, where the adapter looks for it."""
    scan = directory / DIVD_SCAN.name
    scan.write_text(text)
    case = DIVD_SCAN.with_name("DIVD-2024-00012.yaml")
    (directory / case.name).write_text(case.read_text())
    return scan


# Test passwords are derived from the username: known to the tests, never in the repository.
PASSWORD_SUFFIX = "-test-password-" + uuid.uuid4().hex[:8]


def password_for(username: str) -> str:
    return username + PASSWORD_SUFFIX


@pytest.fixture(scope="session")
def sample_config() -> Config:
    """The example deployment with test passwords in place of its (unknown) ones."""
    base = load_config(SAMPLE_CONFIG)
    users = [
        u.model_copy(update={"password_hash": hash_password(password_for(u.username))}) for u in base.users
    ]
    return base.model_copy(update={"users": users})


@pytest.fixture(scope="session")
def mappings():  # type: ignore[no-untyped-def]
    return load_mappings()


# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server URL (without database): $MELDPUNT_TEST_PG_URL, or a throwaway
    cluster started here on 127.0.0.1 from the machine's PostgreSQL binaries."""
    given = os.environ.get("MELDPUNT_TEST_PG_URL")
    if given:
        yield given.rstrip("/")
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL is needed for the store tests: install it (Debian: apt-get install "
            "postgresql) or set MELDPUNT_TEST_PG_URL=postgresql+psycopg://user@127.0.0.1:PORT"
        )
    tmp = Path(tempfile.mkdtemp(prefix="meldpunt-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(tmp, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", _free_port()
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "meldpunt", "-A", "trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(tmp / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://meldpunt@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh_pg_database(server_url: str) -> tuple[str, str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return f"{server_url}/{name}", name


def _drop_pg_database(server_url: str, name: str) -> None:
    admin = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each engine; tests using it run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meldpunt.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    url, name = _fresh_pg_database(server)
    try:
        yield url
    finally:
        _drop_pg_database(server, name)


@pytest.fixture
def store(store_url: str, sample_config: Config) -> Iterator[Store]:
    s = Store.open(store_url)
    s.sync_collections(collection_rows(sample_config))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ingestor(store: Store, sample_config: Config, mappings) -> Ingestor:  # type: ignore[no-untyped-def]
    return Ingestor(sample_config, store, mappings)


# --- TAXII server ----------------------------------------------------------------------------


class RunningServer:
    def __init__(self, url: str, config: Config, store: Store) -> None:
        self.url = url
        self.config = config
        self.store = store

    @property
    def api_root(self) -> str:
        return f"{self.url}/{self.config.server.api_root}/"

    def collection_url(self, collection_id: str) -> str:
        return f"{self.api_root}collections/{collection_id}/"


def start_server(config: Config, store: Store) -> tuple[RunningServer, object, threading.Thread]:
    import uvicorn

    from taxii_server import create_app

    sock = socket.socket()
    # Connections accepted on a socket handed to uvicorn do not get TCP_NODELAY (those of one it
    # binds itself do): every small answer then waited 40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config, store), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("TAXII server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", config, store), server, thread


@contextmanager
def serving(config: Config, store: Store) -> Iterator[RunningServer]:
    """The TAXII server on 127.0.0.1 for the duration of a `with` block."""
    running, server, thread = start_server(config, store)
    try:
        yield running
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


@pytest.fixture
def taxii(store: Store, sample_config: Config, ingestor: Ingestor) -> Iterator[RunningServer]:
    """The example deployment with the DIVD sample ingested, served on 127.0.0.1."""
    summary = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    assert summary.ok
    with serving(sample_config, store) as running:
        yield running


@pytest.fixture
def fakes():  # type: ignore[no-untyped-def]
    """Two strict MISP test servers on 127.0.0.1 (tests/misp_fake.py): sector instances."""
    from tests.misp_fake import MispFake

    started = [MispFake().start(), MispFake().start()]
    yield started
    for fake in started:
        fake.stop()
