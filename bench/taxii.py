"""TAXII read benchmark: our server against medallion 3.0.0, then our server alone at scale.

    python bench/taxii.py [--objects 5000] [--big 1000000] [--pollers 8] [--seconds 10]

(a) A scan_http report is ingested with the real pipeline into one recipient's collection of
    about N objects, rendered when read; medallion gets the same objects (as our server
    renders them) with the same date_added. A client pages through each with limit=100
    following `next`, counting requests and checking that every object id is seen once.
    medallion's memory backend is quadratic in the collection size (its first page sorts and
    filters the whole collection with nested loops), so when a full pass
    would exceed --medallion-budget seconds the pass stops there and the rest is
    extrapolated from the measured per-page time; the output says so.
(b) Our server alone with about --big objects, ingested the same way (notifications, STIX
    rendered at every read): latency of a limit=1000 page at the start, middle and end
    (added_after) and via a `next` token, of getting one random object by id (latest and
    first version), and requests per second with concurrent pollers.

Each server runs in its own process bound to 127.0.0.1 only, so the client's threads and the
server do not share an interpreter lock; peak RSS is each server process's VmHWM.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import requests  # noqa: E402

from tests.medallion_peer import (  # noqa: E402
    Peer,
    page_all,
    start_medallion,
    vm_hwm_kib,
)

PAGE_A = 100
PAGE_B = 1000
USERNAME = "bench-reader"


# --- our server in a child process -----------------------------------------------------------


def _child(conn: Any, mode: str, args: dict[str, Any]) -> None:
    """Child process: start our server (loading objects, or on an existing store), report
    where it is, serve until told to stop, then report the peak RSS."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import logging

    logging.getLogger("meldpunt.taxii").setLevel(logging.ERROR)  # the token-secret warning
    from tests.medallion_peer import load_our_server, serve_our_store

    if mode == "load":
        peer = load_our_server(args["objects"], args["db_url"], username=USERNAME, password=args["password"])
    else:
        peer = serve_our_store(args["db_url"], username=USERNAME, password=args["password"])
    conn.send(
        {
            "url": peer.url,
            "api_root": peer.api_root,
            "collection_id": peer.collection_id,
            "date_added": peer.date_added,
        }
    )
    conn.recv()  # stop
    rss = vm_hwm_kib(os.getpid())
    peer.stop()
    conn.send(rss)


@dataclass
class ChildServer:
    peer: Peer
    process: Any
    conn: Any

    def stop(self) -> int | None:
        """Stop the child; returns its peak RSS in KiB."""
        rss = None
        try:
            self.conn.send("stop")
            if self.conn.poll(30):
                rss = self.conn.recv()
        finally:
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=10)
        return rss


def start_ours(
    mode: str, db_url: str, password: str, objects: list[dict[str, Any]] | None = None
) -> ChildServer:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    args = {"db_url": db_url, "password": password, "objects": objects}
    process = ctx.Process(target=_child, args=(child, mode, args), daemon=True)
    process.start()
    if not parent.poll(600):
        process.terminate()
        raise RuntimeError("our server did not start within 600 s")
    info = parent.recv()
    peer = Peer(
        name="ours",
        url=info["url"],
        api_root=info["api_root"],
        collection_id=info["collection_id"],
        username=USERNAME,
        password=password,
        date_added=info["date_added"],
    )
    return ChildServer(peer, process, parent)


# --- helpers -----------------------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f} MiB"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def check_exactly_once(name: str, seen: list[str], expected: set[str], complete: bool) -> None:
    dupes = len(seen) - len(set(seen))
    if dupes:
        raise SystemExit(f"{name}: {dupes} object ids were served more than once")
    if complete and set(seen) != expected:
        raise SystemExit(
            f"{name}: {len(expected - set(seen))} ids missing, {len(set(seen) - expected)} unexpected"
        )
    if not complete and not set(seen) <= expected:
        raise SystemExit(f"{name}: unexpected ids served")


# --- (a) ours against medallion ----------------------------------------------------------------


def part_a(n: int, budget: float, workdir: Path) -> None:
    from connector.store.times import us_to_timestamp

    print(
        f"\n== (a) about {n} objects rendered from notifications, one collection, limit={PAGE_A}, `next` =="
    )
    password = "bench-" + os.urandom(8).hex()
    db_url = f"sqlite:///{workdir / 'a.db'}"
    t0 = time.perf_counter()
    members, _seconds = load_notifications(db_url, n, password, bodies=True)
    objects = [orjson.loads(body) for _, _, body in members]
    expected = {o["id"] for o in objects}
    pages_needed = math.ceil(len(objects) / PAGE_A)
    ours = start_ours("serve", db_url, password)
    print(f"ours: {len(objects)} objects ingested, server started in {time.perf_counter() - t0:.1f} s")
    try:
        result = page_all(ours.peer, limit=PAGE_A)
        check_exactly_once("ours", result.ids, expected, result.complete)
    finally:
        ours_rss = ours.stop()
    ours_time = result.seconds
    print(
        f"ours:      {ours_time:8.2f} s  {result.requests} requests, {len(result.ids)} objects, "
        f"each id once; page median {statistics.median(result.latencies) * 1000:.1f} ms; "
        f"server peak RSS {mib(ours_rss)}"
    )

    # medallion 3.0.0 reads any `version` property as a timestamp and answers 500 for an
    # extension-definition (whose `version` is "1.0.0", as STIX 2.1 defines it): it gets that
    # one object without the property.
    for_medallion = [
        {k: v for k, v in o.items() if k != "version"} if o["type"] == "extension-definition" else o
        for o in objects
    ]
    t0 = time.perf_counter()
    med = start_medallion(
        for_medallion,
        date_added=[us_to_timestamp(d) for d, _, _ in members],
        max_page_size=1000,
        session_timeout=int(budget) * 4 + 3600,
    )
    print(f"medallion: started in {time.perf_counter() - t0:.1f} s at {med.url}")
    try:
        med_time, note = _medallion_pass(med, expected, pages_needed, budget)
        med_rss = med.peak_rss_kib()
    finally:
        med.stop()
    print(f"medallion: {med_time:8.2f} s  {note}; server peak RSS {mib(med_rss)}")
    qualifier = {"EXTRAPOLATED": " (extrapolated)", "LOWER BOUND": " at least (lower bound)"}
    suffix = next((v for k, v in qualifier.items() if note.startswith(k)), "")
    print(f"ratio medallion/ours: {med_time / ours_time:.1f}x{suffix}")


def _medallion_pass(
    med: Any, expected: set[str], pages_needed: int, budget: float, request_timeout: float | None = None
) -> tuple[float, str]:
    """medallion's time for a full pass: measured, extrapolated, or a lower bound.

    Its first page does almost all the work (it filters and sorts the whole collection and
    keeps the rest as a snapshot), later pages are cheap and alike; so a pass cut short by the
    budget is extrapolated with the mean time of the later pages measured so far.
    """
    try:
        result = page_all(med, limit=PAGE_A, budget_seconds=budget, request_timeout=request_timeout)
    except requests.exceptions.Timeout:
        return budget, (
            f"LOWER BOUND: its first page alone did not finish within the {budget:g} s budget "
            "(a full pass takes longer than this)"
        )
    check_exactly_once("medallion", result.ids, expected, result.complete)
    first = result.latencies[0]
    rest = result.latencies[1:]
    if result.complete:
        return result.seconds, (
            f"{result.requests} requests, {len(result.ids)} objects, each id once; "
            f"first page {first:.2f} s, later pages median {statistics.median(rest or [0]) * 1000:.1f} ms"
        )
    per_page = statistics.mean(rest)  # page_all stops after two pages at the earliest
    remaining = pages_needed - result.requests
    estimate = result.seconds + remaining * per_page
    return estimate, (
        f"EXTRAPOLATED: stopped after {result.requests} of {pages_needed} pages at the {budget:g} s "
        f"budget ({result.seconds:.1f} s measured, first page {first:.2f} s); the remaining "
        f"{remaining} pages estimated at the measured {per_page * 1000:.1f} ms each"
    )


# --- (b) ours alone, big ------------------------------------------------------------------------


SCAN_HTTP_HEADER = ["timestamp", "ip", "protocol", "port", "hostname", "tag", "asn", "geo"]


def load_notifications(
    db_url: str, objects: int, password: str, *, bodies: bool = False
) -> tuple[list[tuple[int, str, str]], float]:
    """Ingest a Shadowserver scan_http report (distinct hosts, one recipient owning them all)
    with the real pipeline until the recipient's collection holds about `objects` objects
    (each notification renders to five: address, host name, network-traffic, observed-data,
    sighting). Returns the collection's (date_added, id, body or '') in order, and the ingest's
    seconds."""
    import csv

    from connector.adapters.mapping import load_mappings
    from connector.collections import collection_rows, recipient_collection_id
    from connector.config import parse_config
    from connector.ingest import Ingestor
    from connector.passwords import hash_password
    from connector.render.collection import CollectionView
    from connector.store import Store
    from tests.medallion_peer import DEFAULT_RECIPIENT

    rows = max(1, (objects - 5) // 5)
    config = parse_config(
        {
            "partners": [{"id": "shadowserver", "name": "Shadowserver"}],
            "recipients": [
                {
                    "id": DEFAULT_RECIPIENT,
                    "name": "Differential peer",
                    "kind": "organisation",
                    "constituency": {"networks": ["10.0.0.0/8"]},
                }
            ],
            "users": [
                {
                    "username": USERNAME,
                    "password_hash": hash_password(password),
                    "recipient": DEFAULT_RECIPIENT,
                }
            ],
        }
    )
    report = Path(db_url.removeprefix("sqlite:///")).with_name("2024-06-01-scan_http-nl.csv")
    with report.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCAN_HTTP_HEADER)
        for i in range(rows):
            ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            moment = f"2024-06-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
            writer.writerow([moment, ip, "tcp", 443, f"host{i}.example.nl", "http", 64500, "NL"])
    store = Store.open(db_url)
    try:
        store.sync_collections(collection_rows(config))
        started = time.perf_counter()
        Ingestor(config, store, load_mappings()).run("shadowserver", "shadowserver", [report])
        seconds = time.perf_counter() - started
        view, members, after = CollectionView(store), [], None
        collection = recipient_collection_id(DEFAULT_RECIPIENT)
        while True:
            page = view.page(collection, after=after, limit=50_000)
            members += [(m.date_added, m.stix_id, m.body if bodies else "") for m in page]
            if len(page) < 50_000:
                return members, seconds
            after = page[-1].date_added
    finally:
        store.close()
        report.unlink()


def timed_get(session: requests.Session, url: str, params: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    resp = session.get(url, params=params, timeout=120)
    content = resp.content
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise SystemExit(f"{url} {params}: {resp.status_code} {content[:300]!r}")
    return elapsed, orjson.loads(content)


def latency(
    peer: Peer, label: str, params: dict[str, str], repeats: int, first: str, more: bool
) -> dict[str, Any]:
    url = peer.collection_url + "objects/"
    times = []
    body: dict[str, Any] = {}
    with peer.session() as s:
        timed_get(s, url, params)  # warm-up
        for _ in range(repeats):
            elapsed, body = timed_get(s, url, params)
            times.append(elapsed)
    objects = body.get("objects", [])
    if len(objects) != PAGE_B or objects[0]["id"] != first or body["more"] is not more:
        raise SystemExit(f"{label}: unexpected page ({len(objects)} objects, more={body.get('more')})")
    print(
        f"  {label:<34} median {statistics.median(times) * 1000:7.1f} ms"
        f"   p95 {percentile(times, 0.95) * 1000:7.1f} ms   ({repeats} requests, {len(objects)} objects each)"
    )
    return body


def by_id_latency(peer: Peer, ids: list[str], repeats: int, params: dict[str, str], label: str) -> None:
    """Get an Object (TAXII 2.1 5.6) for random objects of the big collection: found through the
    id digests, never by walking the collection, so this must not grow with it."""
    rng = random.Random(11)
    times = []
    with peer.session() as s:
        for wanted in [rng.choice(ids) for _ in range(repeats + 1)]:
            elapsed, body = timed_get(s, f"{peer.collection_url}objects/{wanted}/", params)
            objects = body.get("objects", [])
            if [o["id"] for o in objects] != [wanted]:
                raise SystemExit(f"{label}: {wanted} gave {len(objects)} objects")
            times.append(elapsed)
    times = times[1:]  # the first warms the connection up
    print(
        f"  {label:<34} median {statistics.median(times) * 1000:7.1f} ms"
        f"   p95 {percentile(times, 0.95) * 1000:7.1f} ms   ({repeats} requests, random objects)"
    )


def pollers(peer: Peer, count: int, seconds: float, stamps: list[int]) -> None:
    """`count` threads, each a requests.Session, paging with next from random starting points."""
    from connector.store.times import us_to_timestamp

    url = peer.collection_url + "objects/"
    deadline = time.monotonic() + seconds
    totals = {"requests": 0, "objects": 0, "errors": 0}
    lock = threading.Lock()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        done = got = errors = 0
        query: dict[str, str] = {}
        token = None
        with peer.session() as s:
            while time.monotonic() < deadline:
                if token is None:
                    query = {"limit": str(PAGE_B), "added_after": us_to_timestamp(rng.choice(stamps))}
                resp = s.get(url, params={**query, "next": token} if token else query, timeout=120)
                done += 1
                if resp.status_code != 200:
                    errors += 1
                    token = None
                    continue
                body = orjson.loads(resp.content)
                got += len(body.get("objects", []))
                token = body.get("next") if body.get("more") else None
        with lock:
            totals["requests"] += done
            totals["objects"] += got
            totals["errors"] += errors

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    elapsed = time.perf_counter() - t0
    print(
        f"  {count} concurrent pollers, {elapsed:.1f} s: {totals['requests'] / elapsed:.1f} requests/s, "
        f"{totals['objects'] / elapsed:,.0f} objects/s, {totals['requests']} requests, "
        f"{totals['errors']} errors"
    )
    if totals["errors"]:
        raise SystemExit("pollers saw errors")


def part_b(big: int, n_pollers: int, seconds: float, repeats: int, workdir: Path) -> None:
    from connector.store.times import us_to_timestamp

    print(
        f"\n== (b) ours alone: about {big:,} objects rendered from notifications (SQLite), limit={PAGE_B} =="
    )
    if big <= 4 * PAGE_B:  # the middle page and the one after it are full, with more after them
        raise SystemExit(f"--big must be more than {4 * PAGE_B}")
    password = "bench-" + os.urandom(8).hex()
    db_url = f"sqlite:///{workdir / 'big.db'}"
    members, ingest_s = load_notifications(db_url, big, password)
    size = (workdir / "big.db").stat().st_size
    count = len(members)
    print(f"ingest: {ingest_s:.1f} s ({size / 2**20:.0f} MiB database), {count:,} objects in the collection")
    t0 = time.perf_counter()
    ours = start_ours("serve", db_url, password)
    print(f"server started in {time.perf_counter() - t0:.1f} s at {ours.peer.url}")
    try:
        peer = ours.peer
        latency(peer, "start (no added_after)", {"limit": str(PAGE_B)}, repeats, members[0][1], True)
        middle = count // 2
        query = {"limit": str(PAGE_B), "added_after": us_to_timestamp(members[middle - 1][0])}
        body = latency(
            peer, f"middle (added_after #{middle - 1:,})", query, repeats, members[middle][1], True
        )
        # `next` continues the same query, so it goes with the same added_after (TAXII 2.1 3.4).
        latency(
            peer,
            "middle + 1 page (next token)",
            {**query, "next": body["next"]},
            repeats,
            members[middle + PAGE_B][1],
            True,
        )
        end = count - PAGE_B
        latency(
            peer,
            f"end (added_after #{end - 1:,})",
            {"limit": str(PAGE_B), "added_after": us_to_timestamp(members[end - 1][0])},
            repeats,
            members[end][1],
            False,
        )
        ids = [i for _, i, _ in members]
        by_id_latency(peer, ids, repeats, {}, "one object by id")
        by_id_latency(peer, ids, repeats, {"match[version]": "first"}, "one object by id, first version")
        pollers(peer, n_pollers, seconds, [d for d, _, _ in members])
    finally:
        rss = ours.stop()
    print(f"server peak RSS: {mib(rss)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="TAXII read benchmark (ours vs medallion; ours at scale)")
    parser.add_argument("--objects", type=int, default=5000, help="objects in part (a)")
    parser.add_argument("--big", type=int, default=1_000_000, help="objects in part (b)")
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrent polling")
    parser.add_argument("--repeats", type=int, default=30, help="requests per latency figure")
    parser.add_argument(
        "--medallion-budget",
        type=float,
        default=600.0,
        help="seconds before medallion's pass is cut short and extrapolated",
    )
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"{platform.platform()}"
    )
    with tempfile.TemporaryDirectory(prefix="taxii-bench-") as tmp:
        if not args.skip_a:
            part_a(args.objects, args.medallion_budget, Path(tmp))
        if not args.skip_b:
            part_b(args.big, args.pollers, args.seconds, args.repeats, Path(tmp))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nbenchmark client peak RSS: {mib(peak)}")


if __name__ == "__main__":
    main()
