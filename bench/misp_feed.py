"""MISP feed requests at a national scale: what one file request costs, and what a change costs.

    python bench/misp_feed.py [--notifications 25600] [--days 30] [--source DIR]

One recipient with `misp: {feed: true}` gets --notifications DIVD findings over --days days
(one MISP event per case and day) in a fresh SQLite store. Then each kind of feed request
(`manifest.json`, `hashes.csv`, one `<uuid>.json`) runs in a process of its own, which opens
the store, resets its peak memory, answers the request as the server does
(connector.channels.misp_feed.feed_file) and reports the time and the peak memory above what it
held before. Where the code stores built events (this change), the building is timed too: once
after the ingest (what the server's refresher does), and again after one more finding of one
day, when only that day's event is built again.

It asserts nothing. --source DIR runs everything from another checkout (PYTHONPATH), for a
before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = os.environ.get("BENCH_SOURCE")
sys.path.insert(0, SOURCE or str(REPO))

RECIPIENT = "sector"
SAMPLE = REPO / "samples" / "divd"


def config_dict(database: str) -> dict[str, object]:
    return {
        "database": database,
        "partners": [{"id": "divd", "name": "DIVD"}],
        "recipients": [
            {
                "id": RECIPIENT,
                "name": "Sector CERT",
                "kind": "sector-cert",
                "constituency": {"networks": ["10.0.0.0/8"]},
                "misp": {"feed": True},
            }
        ],
        "server": {"public_url": "https://meldpunt.example"},
    }


def write_scan(directory: Path, count: int, days: int, first: int = 0) -> Path:
    template = json.loads((SAMPLE / "DIVD-2024-00012.nuclei.jsonl").read_text().splitlines()[0])
    path = directory / "DIVD-2024-00012.nuclei.jsonl"
    with path.open("w") as handle:
        for i in range(first, first + count):
            finding = dict(
                template,
                ip=f"10.{(i // 65536) % 256}.{(i // 256) % 256}.{i % 256}",
                port=str(443 + i % 3),
                timestamp=f"2024-06-{1 + i % days:02d}T10:00:00.000000+00:00",
            )
            handle.write(json.dumps(finding) + "\n")
    (directory / "DIVD-2024-00012.yaml").write_text((SAMPLE / "DIVD-2024-00012.yaml").read_text())
    return path


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(args: argparse.Namespace) -> None:
    """In a process of its own: one request (or one refresh), timed, with its peak memory."""
    from connector.channels import misp_feed
    from connector.collections import recipient_collection_id
    from connector.config import parse_config
    from connector.store import Store

    config = parse_config(config_dict(args.database))
    store = Store.open(args.database)
    store.misp_events(RECIPIENT)  # connections open, modules loaded
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here (Linux)
    before = memory_kib("VmRSS")
    began = time.perf_counter()
    if args.measure == "refresh":
        result: object = misp_feed.refresh_feeds(config, store)
    elif hasattr(misp_feed, "deliver_feed_file"):  # as the server answers it, deliveries marked
        content = misp_feed.deliver_feed_file(config, store, RECIPIENT, args.measure, "bench")
        result = len(content or b"")
    else:
        content = misp_feed.feed_file(config, store, RECIPIENT, args.measure)
        event = args.measure.endswith(".json") and args.measure != "manifest.json"
        if event and hasattr(misp_feed, "event_deliveries"):  # the server marked them delivered
            delivered = misp_feed.event_deliveries(store, RECIPIENT, args.measure.removesuffix(".json"))
            store.mark_delivered(
                recipient_collection_id(RECIPIENT), delivered, source="misp-feed", actor="bench"
            )
        result = len(content or b"")
    took = time.perf_counter() - began
    print(json.dumps({"seconds": took, "peak_mib": (memory_kib("VmHWM") - before) / 1024, "result": result}))


def child(args: argparse.Namespace, what: str) -> dict[str, object]:
    command = [sys.executable, __file__, "--measure", what, "--database", args.database]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--notifications", type=int, default=25_600)
    parser.add_argument("--days", type=int, default=30, help="events: one per case and day")
    parser.add_argument("--source", type=Path, default=None, help="run from this checkout")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--database", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    if args.source is not None:
        env = dict(os.environ, BENCH_SOURCE=str(args.source), PYTHONPATH=str(args.source))
        rest = [a for a in sys.argv[1:] if a not in ("--source", str(args.source))]
        raise SystemExit(subprocess.call([sys.executable, __file__, *rest], env=env, cwd=str(args.source)))

    from connector.adapters.mapping import load_mappings
    from connector.channels import misp_feed
    from connector.collections import collection_rows
    from connector.config import parse_config
    from connector.ingest import Ingestor
    from connector.store import Store

    work = Path(tempfile.mkdtemp(prefix="meldpunt-misp-feed-bench-"))
    args.database = f"sqlite:///{work / 'b.db'}"
    config = parse_config(config_dict(args.database))
    store = Store.open(args.database)
    store.sync_collections(collection_rows(config))
    began = time.perf_counter()
    Ingestor(config, store, load_mappings()).run(
        "divd", "divd-nuclei", [write_scan(work, args.notifications, args.days)]
    )
    events = store.misp_events(RECIPIENT)
    took = time.perf_counter() - began
    print(f"code from {SOURCE or REPO}")
    print(f"ingested {args.notifications:,} notifications in {took:.1f} s: {len(events)} events")
    stored = hasattr(misp_feed, "refresh_feeds")
    if stored:
        show(f"build on change (all {len(events)} events, once)", child(args, "refresh"))
    for name in ["manifest.json", "hashes.csv", f"{events[len(events) // 2][0]}.json"]:
        label = "<uuid>.json" if name.endswith(".json") and name != "manifest.json" else name
        show(f"request {label}", child(args, name))
    if stored:
        scan = write_scan(work, 1, args.days, first=args.notifications)
        Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan])
        show("one more finding: build on change", child(args, "refresh"))
        show("request manifest.json after it", child(args, "manifest.json"))


def show(label: str, r: dict[str, object]) -> None:
    print(f"{label:45} {r['seconds']:8.3f} s  peak {r['peak_mib']:+7.0f} MiB  ({r['result']})")


if __name__ == "__main__":
    main()
