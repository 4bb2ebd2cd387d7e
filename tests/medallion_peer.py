"""Two TAXII 2.1 servers holding the same STIX objects: the OASIS reference server medallion
and ours, for differential tests and benchmarks.

medallion 3.0.0 (its memory backend) runs in a child process: its Flask application is a
module-level singleton (`medallion.application_instance`) whose users and backend are set
globally, so two peers in one process would share them. The child is this file run as a
script (`--serve-medallion CONFIG`); it binds 127.0.0.1 on a free port, reports the port on
stdout and stops when its stdin is closed (so it also goes away if the parent dies).

What medallion's memory backend expects (medallion/backends/memory_backend.py, common.py):

* the data file is one JSON object: "/discovery" (the discovery resource) and one key per API
  root name, each {"information": <api root resource>, "status": [<status resources>],
  "collections": [{id, title, description, can_read, can_write, media_types,
  "objects": [<STIX objects>], "manifest": [{id, date_added, version, media_type}]}]};
* `date_added` lives only in the manifest entries, as text; medallion parses it with
  "%Y-%m-%dT%H:%M:%S.%fZ" (or without the fraction), so its granularity is the microsecond.
  Objects POSTed in one request all get the same date_added (the request time), so ties are
  normal there; this helper gives every version its own, strictly increasing date_added;
* an entry's `version` is the object's `modified`, else `created`, else its date_added (the
  object then needs a hidden "_date_added" with that value);
* objects are returned in manifest date_added order (a stable sort, ties in manifest order),
  and a `next` token is a server-side snapshot of the remaining results that is consumed as
  it is paged and dropped after `session_timeout` seconds (default 30) from its creation;
* users are plain "name": "password" pairs (HTTP Basic via Flask-HTTPAuth);
* the configuration is {"users": ..., "taxii": {"max_page_size": N}, "backend": {"module":
  "medallion.backends.memory_backend", "module_class": "MemoryBackend", "filename": ...}}.

Nothing here imports the project at module level: the script mode needs only medallion.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connector.render.collection import CollectionView

TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
STIX_MEDIA_TYPE = "application/stix+json;version=2.1"
DEFAULT_API_ROOT = "meldpunt"
# A fixed collection id, used by both peers so that URLs differ only in the base.
DEFAULT_RECIPIENT = "differential-peer"
_START_TIMEOUT = 60.0


# --- shared helpers ----------------------------------------------------------------------------


def indicator(n: int, modified: str = "2024-01-01T00:00:00.000Z") -> dict[str, Any]:
    """A small valid STIX 2.1 indicator with a predictable id."""
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{n:08d}-0000-4000-8000-{n:012d}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": modified,
        "name": f"test indicator {n}",
        "pattern_type": "stix",
        "pattern": f"[ipv4-addr:value = '198.51.100.{n % 250}']",
        "valid_from": "2024-01-01T00:00:00Z",
    }


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def synthetic_date_added(count: int, start: datetime | None = None) -> list[str]:
    """`count` strictly increasing date_added values, one microsecond apart."""
    base = start or datetime(2024, 6, 1, tzinfo=UTC)
    return [_stamp(base + timedelta(microseconds=i)) for i in range(count)]


def _version_of(obj: dict[str, Any], date_added: str) -> str:
    return str(obj.get("modified") or obj.get("created") or date_added)


def _session(username: str, password: str) -> Any:
    import requests

    s = requests.Session()
    s.trust_env = False  # no proxy or ~/.netrc between the bench and 127.0.0.1
    s.auth = (username, password)
    s.headers["Accept"] = TAXII_MEDIA_TYPE
    return s


@dataclass
class Peer:
    """What a client needs to reach one collection on one server."""

    name: str
    url: str  # http://127.0.0.1:PORT
    api_root: str  # the API root name (path segment)
    collection_id: str
    username: str
    password: str
    # date_added of each given object, in the order given (RFC 3339, microseconds).
    date_added: list[str] = field(default_factory=list)

    @property
    def api_root_url(self) -> str:
        return f"{self.url}/{self.api_root}/"

    @property
    def collection_url(self) -> str:
        return f"{self.api_root_url}collections/{self.collection_id}/"

    def session(self) -> Any:
        """A requests.Session with this peer's credentials and the TAXII 2.1 Accept header."""
        return _session(self.username, self.password)


# --- medallion -----------------------------------------------------------------------------------


def medallion_data(
    objects: Sequence[dict[str, Any]],
    *,
    api_root: str,
    collection_id: str,
    date_added: Sequence[str],
    base_url: str = "http://127.0.0.1",
) -> dict[str, Any]:
    """medallion's memory-backend data file holding `objects` in one read-only collection."""
    stored: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    for obj, added in zip(objects, date_added, strict=True):
        copy = dict(obj)
        if "modified" not in copy and "created" not in copy:
            copy["_date_added"] = added  # how medallion versions objects without timestamps
        stored.append(copy)
        manifest.append(
            {
                "id": obj["id"],
                "date_added": added,
                "version": _version_of(obj, added),
                "media_type": "application/stix+json;version=" + str(obj.get("spec_version", "2.1")),
            }
        )
    root_url = f"{base_url}/{api_root}/"
    return {
        "/discovery": {
            "title": "medallion differential peer",
            "description": "The OASIS reference TAXII server, for differential tests.",
            "default": root_url,
            "api_roots": [root_url],
        },
        api_root: {
            "information": {
                "title": "medallion peer API root",
                "description": "One collection.",
                "versions": [TAXII_MEDIA_TYPE],
                "max_content_length": 10 * 1024 * 1024,
            },
            "status": [],
            "collections": [
                {
                    "id": collection_id,
                    "title": "Differential collection",
                    "description": "The same objects as the other peer.",
                    "can_read": True,
                    "can_write": False,
                    "media_types": [STIX_MEDIA_TYPE],
                    "objects": stored,
                    "manifest": manifest,
                }
            ],
        },
    }


class MedallionPeer(Peer):
    def __init__(self, process: subprocess.Popen[str], workdir: Path, **kwargs: Any) -> None:
        super().__init__(name="medallion", **kwargs)
        self.process = process
        self.workdir = workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "medallion.log"

    def peak_rss_kib(self) -> int | None:
        """The child's peak resident set (VmHWM), while it runs."""
        return vm_hwm_kib(self.process.pid)

    def stop(self) -> None:
        """Close the child's stdin (it shuts its server down), then wait; kill if it hangs."""
        if self.process.poll() is None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MedallionPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process, in KiB; None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def start_medallion(
    objects: Sequence[dict[str, Any]],
    *,
    date_added: Sequence[str] | None = None,
    api_root: str = DEFAULT_API_ROOT,
    collection_id: str | None = None,
    username: str = "medallion-reader",
    password: str | None = None,
    max_page_size: int = 1000,
    session_timeout: int = 30,
) -> MedallionPeer:
    """Start medallion 3.0.0 (memory backend) on 127.0.0.1 with `objects` in one collection.

    `date_added` (one RFC 3339 value per object, strictly increasing for a well defined order)
    defaults to synthetic values one microsecond apart. `session_timeout` is how long
    medallion keeps a `next` snapshot after creating it (its default is 30 s).
    """
    import uuid

    stamps = list(date_added) if date_added is not None else synthetic_date_added(len(objects))
    collection_id = collection_id or str(uuid.uuid4())
    password = password or secrets.token_urlsafe(12)
    workdir = Path(tempfile.mkdtemp(prefix="medallion-peer-"))
    data_file = workdir / "data.json"
    data_file.write_text(
        json.dumps(
            medallion_data(objects, api_root=api_root, collection_id=collection_id, date_added=stamps)
        ),
        encoding="utf-8",
    )
    config = {
        "users": {username: password},
        "taxii": {"max_page_size": max_page_size},
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(data_file),
            "session_timeout": session_timeout,
            "check_interval": 1 if session_timeout < 10 else 10,
        },
    }
    config_file = workdir / "config.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    config_file.chmod(0o600)
    with open(workdir / "medallion.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-medallion", str(config_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = _read_port(process, workdir / "medallion.log")
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return MedallionPeer(
        process,
        workdir,
        url=f"http://127.0.0.1:{port}",
        api_root=api_root,
        collection_id=collection_id,
        username=username,
        password=password,
        date_added=stamps,
    )


def _read_port(process: subprocess.Popen[str], log: Path) -> int:
    lines: queue.Queue[str] = queue.Queue()

    def reader() -> None:
        assert process.stdout is not None
        lines.put(process.stdout.readline())

    threading.Thread(target=reader, daemon=True).start()
    try:
        line = lines.get(timeout=_START_TIMEOUT)
    except queue.Empty:
        line = ""
    if not line.startswith("PORT "):
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"medallion did not start (exit {process.poll()}): {line!r}\n{tail}")
    return int(line.split()[1])


def _serve_medallion(config_path: str) -> None:
    """Script mode: run medallion on 127.0.0.1, port 0; print the port; stop on stdin EOF."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    import medallion
    from werkzeug.serving import make_server

    with open(config_path, encoding="utf-8") as f:
        configuration = json.load(f)
    app = medallion.application_instance
    for part in ("users", "taxii", "backend"):
        medallion.set_config(app, part, configuration)
    medallion.register_blueprints(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    # The discovery resource names the real address now that it is known.
    root = next(k for k in app.medallion_backend.data if k != "/discovery")
    discovery = app.medallion_backend.data["/discovery"]
    discovery["default"] = f"http://127.0.0.1:{port}/{root}/"
    discovery["api_roots"] = [discovery["default"]]

    def stop_on_eof() -> None:
        sys.stdin.read()
        server.shutdown()

    threading.Thread(target=stop_on_eof, daemon=True).start()
    print(f"PORT {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# --- our server ----------------------------------------------------------------------------------


class OurPeer(Peer):
    def __init__(self, stop: Any, store: Any, running: Any, workdir: Path | None, **kwargs: Any) -> None:
        super().__init__(name="ours", **kwargs)
        self._stop = stop
        self.store = store
        self.running = running  # tests.conftest.RunningServer
        self.workdir = workdir

    def stop(self) -> None:
        self._stop()
        self.store.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OurPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def our_config(
    db_url: str,
    *,
    username: str,
    password: str,
    api_root: str = DEFAULT_API_ROOT,
    recipient_id: str = DEFAULT_RECIPIENT,
    page_size_max: int = 1000,
) -> Any:
    """A Config with one recipient and one user who reads that recipient's collection.

    Without `limit` a client gets min(100, page_size_max) objects per page.
    """
    from connector.config import parse_config
    from connector.passwords import hash_password

    return parse_config(
        {
            "database": db_url,
            "server": {
                "host": "127.0.0.1",
                "api_root": api_root,
                "page_size_default": min(100, page_size_max),
                "page_size_max": page_size_max,
            },
            "recipients": [{"id": recipient_id, "name": "Differential peer", "kind": "organisation"}],
            "users": [
                {"username": username, "password_hash": hash_password(password), "recipient": recipient_id}
            ],
        },
        source="<medallion_peer>",
    )


def add_to_store(
    store: Any, collection_id: str, objects: Sequence[dict[str, Any]], chunk: int = 2000
) -> None:
    """Add objects to a collection through the store (date_added assigned in the given order)."""
    for start in range(0, len(objects), chunk):
        store.store_objects(collection_id, list(objects[start : start + chunk]))


def stored_date_added(store: Any, collection_id: str, objects: Iterable[dict[str, Any]]) -> list[str]:
    """date_added of each given object version in the collection, as TAXII shows it."""
    from connector.store import VersionFilter
    from connector.store.times import us_to_timestamp, version_key

    wanted = list(objects)
    members = CollectionView(store).page(
        collection_id, after=None, limit=len(wanted) + 1, versions=VersionFilter(all=True)
    )
    by_key = {(m.stix_id, m.version): us_to_timestamp(m.date_added) for m in members}
    return [by_key[(o["id"], version_key(o.get("modified")))] for o in wanted]


def serve_our_store(
    db_url: str,
    *,
    username: str,
    password: str,
    api_root: str = DEFAULT_API_ROOT,
    recipient_id: str = DEFAULT_RECIPIENT,
    page_size_max: int = 1000,
    date_added: list[str] | None = None,
    workdir: Path | None = None,
) -> OurPeer:
    """Serve an existing store (already holding the collection's objects) on 127.0.0.1."""
    from connector.collections import collection_rows, recipient_collection_id
    from connector.store import Store
    from tests.conftest import start_server

    config = our_config(
        db_url,
        username=username,
        password=password,
        api_root=api_root,
        recipient_id=recipient_id,
        page_size_max=page_size_max,
    )
    store = Store.open(db_url)
    store.sync_collections(collection_rows(config))
    running, server, thread = start_server(config, store)

    def stop() -> None:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)

    return OurPeer(
        stop,
        store,
        running,
        workdir,
        url=running.url,
        api_root=api_root,
        collection_id=recipient_collection_id(recipient_id),
        username=username,
        password=password,
        date_added=date_added or [],
    )


def load_our_server(
    objects: Sequence[dict[str, Any]],
    db_url: str | None = None,
    *,
    username: str = "peer-reader",
    password: str | None = None,
    api_root: str = DEFAULT_API_ROOT,
    recipient_id: str = DEFAULT_RECIPIENT,
    page_size_max: int = 1000,
) -> OurPeer:
    """Our server on 127.0.0.1 with `objects` (in this order) in one recipient's collection.

    `db_url` defaults to a fresh SQLite file in a temporary directory, removed on stop().
    The peer's `date_added` lists what the store assigned to each object, to give medallion.
    """
    from connector.collections import collection_rows, recipient_collection_id
    from connector.store import Store

    workdir = None
    if db_url is None:
        workdir = Path(tempfile.mkdtemp(prefix="meldpunt-peer-"))
        db_url = f"sqlite:///{workdir / 'meldpunt.db'}"
    password = password or secrets.token_urlsafe(12)
    collection_id = recipient_collection_id(recipient_id)
    store = Store.open(db_url)
    try:
        store.sync_collections(
            collection_rows(
                our_config(db_url, username=username, password=password, recipient_id=recipient_id)
            )
        )
        add_to_store(store, collection_id, objects)
        stamps = stored_date_added(store, collection_id, objects)
    finally:
        store.close()
    return serve_our_store(
        db_url,
        username=username,
        password=password,
        api_root=api_root,
        recipient_id=recipient_id,
        page_size_max=page_size_max,
        date_added=stamps,
        workdir=workdir,
    )


# --- paging (used by tests and the benchmark) ----------------------------------------------------


@dataclass
class PagingResult:
    ids: list[str]
    requests: int
    seconds: float
    latencies: list[float]
    complete: bool  # False when stopped by the time budget


def page_all(
    peer: Peer,
    *,
    limit: int = 100,
    params: dict[str, str] | None = None,
    session: Any = None,
    max_pages: int = 100_000,
    budget_seconds: float | None = None,
    request_timeout: float | None = None,
    endpoint: str = "objects/",
    key: str = "objects",
) -> PagingResult:
    """Follow `next` from the first page until `more` is false (or the budget runs out).

    Each request may take `request_timeout` seconds (default: the budget, else 600).
    """
    timeout = request_timeout or budget_seconds or 600
    s = session or peer.session()
    base = dict(params or {})
    query = {**base, "limit": str(limit)}
    ids: list[str] = []
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(max_pages):
        t0 = time.perf_counter()
        resp = s.get(peer.collection_url + endpoint, params=query, timeout=timeout)
        latencies.append(time.perf_counter() - t0)
        if resp.status_code != 200:
            raise AssertionError(f"{peer.name}: {resp.status_code} {resp.text[:300]}")
        body = resp.json()
        ids.extend(o["id"] for o in body.get(key, []))
        if not body.get("more"):
            return PagingResult(ids, len(latencies), time.perf_counter() - started, latencies, True)
        query = {**base, "limit": str(limit), "next": body["next"]}
        # At least two pages, so a cut-short pass has measured a page after the first.
        over = budget_seconds is not None and time.perf_counter() - started > budget_seconds
        if over and len(latencies) >= 2:
            return PagingResult(ids, len(latencies), time.perf_counter() - started, latencies, False)
    raise AssertionError(f"{peer.name}: paging did not end within {max_pages} pages")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-medallion", metavar="CONFIG", required=True)
    args = parser.parse_args(argv)
    _serve_medallion(args.serve_medallion)


if __name__ == "__main__":
    main()
