"""MISP push benchmark: N notifications for one recipient, converted and pushed to the strict
MISP test server (tests/misp_fake.py) on 127.0.0.1 through PyMISP.

Prints notifications and attributes per second for conversion alone and for the whole sync,
and the requests made (and how many changed anything); then a second sync, which must make
no changing request.

    python bench/misp.py [--notifications 100000] [--days 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.adapters.mapping import load_mappings
from connector.channels.misp_sync import MispSync
from connector.collections import collection_rows
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.render.misp import build_event
from connector.store import Store
from tests.misp_fake import MispFake

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "divd"


def write_scan(directory: Path, count: int, days: int) -> Path:
    template = json.loads((SAMPLE / "DIVD-2024-00012.nuclei.jsonl").read_text().splitlines()[0])
    path = directory / "DIVD-2024-00012.nuclei.jsonl"
    with path.open("w") as handle:
        for i in range(count):
            day = 1 + i % days
            finding = dict(
                template,
                ip=f"10.{(i // 65536) % 256}.{(i // 256) % 256}.{i % 256}",
                port=str(443 + i % 3),
                timestamp=f"2024-06-{day:02d}T10:00:00.000000+00:00",
            )
            handle.write(json.dumps(finding) + "\n")
    (directory / "DIVD-2024-00012.yaml").write_text((SAMPLE / "DIVD-2024-00012.yaml").read_text())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30, help="events: one per case and day")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meldpunt-misp-bench-"))
    fake = MispFake(log_bodies=False).start()
    os.environ["BENCH_MISP_KEY"] = fake.key
    config = parse_config(
        {
            "partners": [{"id": "divd", "name": "DIVD"}],
            "recipients": [
                {
                    "id": "sector",
                    "name": "Sector CERT",
                    "kind": "sector-cert",
                    "constituency": {"networks": ["10.0.0.0/8"]},
                    "misp": {"url": fake.url, "key_env": "BENCH_MISP_KEY", "verify_tls": False},
                }
            ],
        }
    )
    store = Store.open(f"sqlite:///{work / 'b.db'}")
    store.sync_collections(collection_rows(config))
    started = time.perf_counter()
    Ingestor(config, store, load_mappings()).run(
        "divd", "divd-nuclei", [write_scan(work, args.notifications, args.days)]
    )
    print(f"ingested {args.notifications:,} notifications in {time.perf_counter() - started:.1f} s")

    sync = MispSync(config, store)
    entries = sync.due()
    channel = config.recipient("sector").misp
    assert channel is not None
    started = time.perf_counter()
    attributes = sum(
        build_event(config, store, e["recipient"], e["event_uuid"], e["group_label"], channel).attributes
        for e in entries
    )
    convert_s = time.perf_counter() - started
    print(
        f"conversion: {len(entries)} events, {attributes:,} attributes in {convert_s:.1f} s = "
        f"{args.notifications / convert_s:,.0f} notifications/s, {attributes / convert_s:,.0f} attributes/s"
    )

    requests_before = len(fake.requests)
    started = time.perf_counter()
    summary = sync.run()
    push_s = time.perf_counter() - started
    made = fake.requests[requests_before:]
    print(
        f"sync: {dict(summary.counts)} in {push_s:.1f} s = "
        f"{args.notifications / push_s:,.0f} notifications/s, "
        f"{attributes / push_s:,.0f} attributes/s (conversion included)"
    )
    print(f"requests: {len(made)} ({sum(1 for r in made if r.changed)} changing anything)")
    before = len(fake.requests)
    second = MispSync(config, store).run()
    print(
        f"second sync: {dict(second.counts) or 'nothing due'}; requests made: {len(fake.requests) - before}"
    )
    fake.stop()


if __name__ == "__main__":
    main()
