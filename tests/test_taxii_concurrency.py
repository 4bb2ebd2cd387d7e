"""Polling with added_after while ingest writes: every object arrives exactly once.

Also: `next` tokens work on another server process that shares the token secret.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import requests

from connector.collections import recipient_collection_id
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from tests.conftest import DIVD_SCAN, password_for, start_server

HEADERS = {"Accept": "application/taxii+json;version=2.1"}
CASE = DIVD_SCAN.parent / "DIVD-2024-00012.yaml"


def scan_batches(tmp_path: Path, batches: int, per_batch: int) -> list[Path]:
    """Synthetic nuclei files, every finding a new notification for Z-CERT."""
    template = json.loads(DIVD_SCAN.read_text().splitlines()[0])
    files = []
    for b in range(batches):
        lines = []
        for i in range(per_batch):
            finding = dict(
                template, ip=f"192.0.2.{40 + (b * per_batch + i) % 80}", port=str(1000 + b * per_batch + i)
            )
            lines.append(json.dumps(finding))
        path = tmp_path / f"batch{b:03d}" / "DIVD-2024-00012.nuclei.jsonl"
        path.parent.mkdir()
        path.write_text("\n".join(lines) + "\n")
        (path.parent / CASE.name).write_text(CASE.read_text())
        files.append(path)
    return files


def test_poller_gets_every_object_exactly_once_during_ingest(
    store, sample_config, ingestor: Ingestor, tmp_path: Path
) -> None:
    files = scan_batches(tmp_path, batches=12, per_batch=15)
    running, server, thread = start_server(sample_config, store)
    url = running.collection_url(recipient_collection_id("zcert")) + "objects/"
    auth = ("zcert-poller", password_for("zcert-poller"))
    done = threading.Event()

    def writer() -> None:
        try:
            for path in files:
                ingestor.run("divd", "divd-nuclei", [path])
        finally:
            done.set()

    seen: list[str] = []
    cursor: str | None = None
    session = requests.Session()
    writing = threading.Thread(target=writer)
    writing.start()
    try:
        polls = 0
        while polls < 2000:
            polls += 1
            finished = done.is_set()  # read before polling: one more full pass after the end
            params = {"limit": "7"}
            if cursor:
                params["added_after"] = cursor
            while True:
                response = session.get(url, params=params, auth=auth, headers=HEADERS, timeout=30)
                assert response.status_code == 200, response.text
                body = response.json()
                seen += [o["id"] for o in body.get("objects", [])]
                if "X-TAXII-Date-Added-Last" in response.headers:
                    cursor = response.headers["X-TAXII-Date-Added-Last"]
                if not body.get("more"):
                    break
                params = {"limit": "7", "next": body["next"]}
            if finished:
                break
    finally:
        writing.join()
        server.should_exit = True
        thread.join(timeout=10)
    final = {
        m.stix_id
        for m in CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=100_000)
    }
    assert len(seen) == len(set(seen)), "an object was delivered twice"
    assert set(seen) == final, "an object was missed"
    assert sum(1 for i in seen if i.startswith("sighting--")) == 12 * 15


def test_next_token_works_on_another_process_with_the_shared_secret(taxii, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url_path = f"collections/{recipient_collection_id('zcert')}/objects/"
    auth = ("zcert-poller", password_for("zcert-poller"))
    monkeypatch.setenv(taxii.config.server.token_secret_env, "shared-secret-for-this-test")
    first, s1, t1 = start_server(taxii.config, taxii.store)
    second, s2, t2 = start_server(taxii.config, taxii.store)
    try:
        page = requests.get(
            first.api_root + url_path, params={"limit": "5"}, auth=auth, headers=HEADERS, timeout=10
        ).json()
        assert page["more"] and page["next"]

        def continue_on(api_root: str) -> requests.Response:
            params = {"limit": "5", "next": page["next"]}
            return requests.get(api_root + url_path, params=params, auth=auth, headers=HEADERS, timeout=10)

        other = continue_on(second.api_root)
        assert other.status_code == 200
        ids_first = {o["id"] for o in page["objects"]}
        ids_second = {o["id"] for o in other.json()["objects"]}
        assert ids_second and not ids_first & ids_second
        # The fixture's own server has a different (random) key: it refuses the token.
        refused = continue_on(taxii.api_root)
        assert refused.status_code == 400
    finally:
        for server, thread in ((s1, t1), (s2, t2)):
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(timeout=10)
