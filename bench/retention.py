"""Retention benchmark: how long a data subject's request (`forget`) and a purge take on a store
of N notifications with D days of versions.

Usage: python bench/retention.py [--rows N] [--days D] [--database URL] [--remove-share F]

Why: both read what no index serves. `forget` reads every notification (no index on its
observables), every evidence body and every version block that holds the value's bytes (a
re-observation's change is kept in its version: connector/store/evidence.py); a purge reads
every notification with its head to find what expired, then, before it removes anything, every
notification's observables and evidence and every version block once (Remover.survey). An
operator answering a request under the GDPR wants to know that this takes seconds, not hours,
at the size of their store.

It writes D days of a generated Shadowserver scan_http report (bench/ingest.py's generator:
the same hosts every day, evidence that changes as a real server's does), ingests them, and
prints the store's size, then the seconds each of these takes:
  1. forget --dry-run of an address one notification holds
  2. forget --dry-run of an address nobody holds (the scans alone)
  3. forget of the address of step 1 (the removal too)
  4. purge's selection with every notification expired (the scan of notifications and heads)
  5. the removal of a share of them (--remove-share, 1% by default), as purge removes them
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from ingest import make_config, write_report  # bench/ingest.py: the same generated reports

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.ingest import Ingestor
from connector.retention import Remover, expired, forget
from connector.store import Store

RECIPIENTS = 200


def timed(label: str, action):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    print(f"  {label:<58} {seconds:8.2f} s", flush=True)
    return result, seconds


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        out = {
            table: int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
            for table in ("notifications", "evidence", "version_blocks", "delivery_blocks")
        }
        if store.dialect == "postgresql":
            size = "SELECT pg_database_size(current_database())"
            out["bytes"] = int(conn.exec_driver_sql(size).scalar_one())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows a day (hosts)")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--database", help="a PostgreSQL URL (an empty database); default SQLite")
    parser.add_argument("--remove-share", type=float, default=0.01, help="share of the store step 5 removes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="meldpunt-retention-"))
    config = make_config(RECIPIENTS)
    store = Store.open(args.database or f"sqlite:///{work / 'bench.db'}")
    store.sync_collections(collection_rows(config))
    mappings = load_mappings()
    for day in range(1, args.days + 1):
        report = work / f"2024-06-{day:02d}-scan_http-nl.csv"
        write_report(report, args.rows, RECIPIENTS, random.Random(7), day=day)
        timed(
            f"ingest of day {day} ({args.rows:,} rows)", lambda r=report: ingest(store, config, mappings, r)
        )
    found = counts(store)
    if store.dialect == "sqlite":
        store.checkpoint()
        found["bytes"] = sum(p.stat().st_size for p in work.glob("bench.db*"))
    print(
        f"store ({store.dialect}): {found['notifications']:,} notifications, {found['evidence']:,} "
        f"evidence rows, {found['version_blocks']:,} version blocks, {found['delivery_blocks']:,} "
        f"delivery blocks, {found['bytes'] / 2**20:,.0f} MiB"
    )

    with store.reading() as reader:
        target = reader.notifications([found["notifications"] // 2])[found["notifications"] // 2]
    address = target.ip
    assert address is not None
    held, _ = timed(f"1. forget --dry-run {address}", lambda: forget(store, config, address, dry_run=True))
    absent, _ = timed(
        "2. forget --dry-run 192.0.2.1 (held by none)",
        lambda: forget(store, config, "192.0.2.1", dry_run=True),
    )
    gone, _ = timed(f"3. forget {address}", lambda: forget(store, config, address))
    (targets, _limits), _ = timed(
        "4. purge's selection, every notification expired",
        lambda: expired(store, config, time.time() + 10 * 365 * 86400),
    )
    share = sorted(random.Random(1).sample(targets, max(1, int(len(targets) * args.remove_share))))
    removed, seconds = timed(
        f"5. removal of {len(share):,} notifications ({args.remove_share:.0%})",
        lambda: Remover(store, share).run(),
    )
    print(
        f"found: {held.counts['notifications']} / {absent.counts['notifications']} notifications; "
        f"forget removed {gone.counts['notifications']}; purge selected {len(targets):,}, removed "
        f"{removed.counts['notifications']:,} ({len(share) / seconds:,.0f} notifications/s)"
    )
    store.close()


def ingest(store: Store, config, mappings, report: Path) -> None:  # type: ignore[no-untyped-def]
    Ingestor(config, store, mappings).run("shadowserver", "shadowserver", [report])


if __name__ == "__main__":
    main()
