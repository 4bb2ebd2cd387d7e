"""What a portal page costs as a recipient's collection grows.

A synthetic Shadowserver report (bench/ingest.py's generator) is ingested for one recipient
holding 10.0.0.0/8, then the portal's data functions are timed: the list (every notification
of the collection with its state: what each list page, filter and export walks), one page with
a filter, one notification's detail, and a STIX bundle of 100 notifications. Prints figures,
asserts nothing.

    .venv/bin/python bench/portal.py [--rows 20000] [--database URL]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import write_report

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.passwords import hash_password
from connector.store import Store
from taxii_server.portal import data


def timed(what: str, work):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = work()
    print(f"  {what:52} {time.perf_counter() - started:8.3f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--database", help="a store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meldpunt-portal-bench-"))
    config = parse_config(
        {
            "partners": [{"id": "shadowserver", "name": "Shadowserver", "default_tlp": "amber"}],
            "recipients": [
                {
                    "id": "org",
                    "name": "Org",
                    "kind": "organisation",
                    "constituency": {"networks": ["10.0.0.0/8"]},
                }
            ],
            "users": [{"username": "bench", "password_hash": hash_password("bench"), "recipient": "org"}],
        }
    )
    store = Store.open(args.database or f"sqlite:///{work / 'm.db'}")
    store.sync_collections(collection_rows(config))
    report = work / "2024-06-01-scan_http-nl.csv"
    write_report(report, args.rows, 256, random.Random(1))
    print(f"{args.rows} rows, store {args.database or 'SQLite'}")
    summary = timed(
        "ingest",
        lambda: Ingestor(config, store, load_mappings()).run("shadowserver", "shadowserver", [report]),
    )
    print(f"  routed notifications: {summary.counts['routed']}")
    everything = timed(
        "every notification of the collection (a list page)", lambda: data.items(store, "org", config)
    )
    lists = data.Lists()
    timed("the same, kept by the server: first request", lambda: data.items(store, "org", config, lists))
    timed("the same, kept by the server: next requests", lambda: data.items(store, "org", config, lists))
    filters = data.Filters(search="10.20.0.0/16", state="routed")
    page = timed("filter and page (in memory, after the above)", lambda: data.listing(everything, filters, 1))
    print(f"  matching the filter: {page.total}")
    timed(
        "one notification's detail",
        lambda: data.detail(store, "org", everything[len(everything) // 2].sighting),
    )
    timed("a STIX bundle of 100 notifications", lambda: data.bundle(store, everything[:100]))
    store.close()


if __name__ == "__main__":
    main()
