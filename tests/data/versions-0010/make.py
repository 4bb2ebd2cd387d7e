"""How versions-0010.json was made: run with the code of commit 8a88171 (the last with a column
per version value, migration 0010) first on the path, e.g.

    git worktree add /tmp/old 8a88171
    PYTHONPATH=/tmp/old python tests/data/versions-0010/make.py /work/shared/data out.json

It ingests the sample feeds into a fresh SQLite store so that the versions cover what the packed
layout (migration 0011) must carry: the DIVD scan four times (later days: versions with a
previous and a growing count, listed observation times from the third; a severity change: a
version with its own kind; changed evidence; an earlier sighting: a version with its own
first_seen), notifications delivered to two collections (a hospital and its sector CERT), to
one, and to none (addresses outside every constituency, and Shadowserver's), leaked
credentials. It writes every table's rows (bytes as {"b64": ...}), the versions as the code
then read them, what each collection served (every version with its date_added and body, and
the latest), and each run's unrouted notifications, as JSON.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.store import Store, VersionFilter
from connector.store.notifications import versions_by_stamp
from tests.test_migration_record import legacy_config

# Each ingest of the DIVD scan after the first: (replace, with) pairs applied to the file.
DIVD_AGAIN = [
    [("2024-06-1", "2024-06-2")],  # ten days later: every notification a version
    [("2024-06-1", "2024-07-1"), ('"severity": "critical"', '"severity": "high"')],  # a kind change
    [("2024-06-1", "2024-05-1"), ('"epss-score": 0.96', '"epss-score": 0.97')],  # earlier, new evidence
]


def value(v: Any) -> Any:
    return {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes | memoryview) else v


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    work = Path(tempfile.mkdtemp())
    config = legacy_config()
    store = Store.open(f"sqlite:///{work / 'old.db'}")
    store.sync_collections(collection_rows(config))
    clock = iter([datetime(2024, 8, 1, 12, minute, tzinfo=UTC) for minute in range(60)])
    ingest = Ingestor(config, store, load_mappings(), clock=lambda: next(clock))
    runs = []
    divd = data / "divd" / "DIVD-2024-00012.nuclei.jsonl"
    runs.append(ingest.run("divd", "divd-nuclei", [divd]).run_id)
    (work / "DIVD-2024-00012.yaml").write_text((divd.parent / "DIVD-2024-00012.yaml").read_text())
    for changes in DIVD_AGAIN:
        text = divd.read_text()
        for old, new in changes:
            text = text.replace(old, new)
        (work / divd.name).write_text(text)
        runs.append(ingest.run("divd", "divd-nuclei", [work / divd.name]).run_id)
    report = (data / "shadowserver" / "scan_http.csv").read_text()
    for day, text in (("01", report), ("02", report.replace("2018-04-19", "2018-04-20"))):
        path = work / f"2024-06-{day}-scan_http-nl.csv"
        path.write_text(text)
        runs.append(ingest.run("shadowserver", "shadowserver", [path]).run_id)
    credentials = data / "credentials" / "DIVD-2024-00037.credentials.csv"
    runs.append(ingest.run("divd", "divd-credentials", [credentials]).run_id)
    tables = {}
    with store.engine.connect() as conn:
        for name in sorted(inspect(conn).get_table_names()):
            rows = conn.exec_driver_sql(f'SELECT * FROM "{name}"').mappings().all()
            tables[name] = [{k: value(v) for k, v in r.items()} for r in rows]
        stamps = [r["stamp"] for r in tables["notification_versions"]]
        versions = [asdict(v) for _s, v in sorted(versions_by_stamp(conn, stamps).items())]
    view = CollectionView(store)
    served = {}
    for row in collection_rows(config):
        members = view.page(row.id, after=None, limit=100_000, versions=VersionFilter(all=True))
        latest = view.page(row.id, after=None, limit=100_000)
        served[row.id] = {
            "all": [[m.date_added, m.stix_id, m.version, m.body] for m in members],
            "latest": [[m.date_added, m.stix_id, m.version] for m in latest],
        }
    unrouted = {str(run): store.unrouted(run) for run in runs}
    document = {"tables": tables, "versions": versions, "served": served, "unrouted": unrouted}
    out.write_text(json.dumps(document, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
