"""How legacy-0006.json was made: run with the code of commit 4cb141b (the last with the old
layout, migration 0006) first on the path, e.g.

    git worktree add /tmp/old 4cb141b
    PYTHONPATH=/tmp/old python tests/data/legacy-store/make.py /work/shared/data out.json

It ingests sample feeds into a fresh SQLite store (two days of the DIVD scan, Shadowserver
scan_http and compromised_website, leaked credentials, a researcher's bundle, MISP events),
deletes one object through the store, and writes every table's rows, plus what each collection
served then (every version with its date_added and body), as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import inspect

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.store import Store, VersionFilter

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    work = Path(tempfile.mkdtemp())
    raw = yaml.safe_load((REPO / "config" / "meldpunt.yaml").read_text())
    raw["partners"] += [
        {"id": "shadowserver", "name": "Shadowserver"},
        {"id": "connect2trust", "name": "Connect2Trust", "formats": ["misp-event"]},
    ]
    for r in raw["recipients"]:
        if r["id"] == "zcert":
            r["misp"] = {"feed": True}
    config = parse_config(raw)
    store = Store.open(f"sqlite:///{work / 'old.db'}")
    store.sync_collections(collection_rows(config))
    clock = iter([datetime(2024, 6, 15, 12, minute, tzinfo=UTC) for minute in range(60)])
    ingest = Ingestor(config, store, load_mappings(), clock=lambda: next(clock))
    divd = data / "divd" / "DIVD-2024-00012.nuclei.jsonl"
    ingest.run("divd", "divd-nuclei", [divd])
    later = work / divd.name
    later.write_text(divd.read_text().replace("2024-06-12T04:48:41", "2024-06-12T09:48:41"))
    (work / "DIVD-2024-00012.yaml").write_text((divd.parent / "DIVD-2024-00012.yaml").read_text())
    ingest.run("divd", "divd-nuclei", [later])  # the same day again later: new versions
    later.write_text(divd.read_text().replace("2024-06-12T04:48:41", "2024-06-12T10:48:41"))
    ingest.run("divd", "divd-nuclei", [later])  # a third time: its times are listed
    for report in ("scan_http", "compromised_website"):
        path = work / f"2024-06-01-{report}-nl.csv"
        path.write_text((data / "shadowserver" / f"{report}.csv").read_text())
        ingest.run("shadowserver", "shadowserver", [path])
    ingest.run("divd", "divd-credentials", [data / "credentials" / "DIVD-2024-00037.credentials.csv"])
    ingest.run("researcher-1", "stix", [REPO / "tests" / "data" / "stix" / "researcher-1.bundle.json"])
    ingest.run("connect2trust", "misp-event", [data / "misp" / "connect2trust-event.json"])
    zcert = recipient_collection_id("zcert")
    page = store.page(zcert, after=None, limit=1000, types=("sighting",))
    store.remove_members(zcert, page[-1].stix_id, VersionFilter(all=True))
    tables = {}
    with store.engine.connect() as conn:
        for name in sorted(inspect(conn).get_table_names()):
            rows = conn.exec_driver_sql(f'SELECT * FROM "{name}"').mappings().all()
            tables[name] = [dict(r) for r in rows]
    served = {}
    for row in collection_rows(config):
        members = store.page(row.id, after=None, limit=100_000, versions=VersionFilter(all=True))
        latest = store.page(row.id, after=None, limit=100_000)
        served[row.id] = {
            "all": [[m.date_added, m.stix_id, m.version, m.body] for m in members],
            "latest": [[m.date_added, m.stix_id, m.version] for m in latest],
        }
    out.write_text(json.dumps({"tables": tables, "served": served}, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
