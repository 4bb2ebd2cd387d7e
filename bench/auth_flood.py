"""A flood of wrong logins against the real server, while a valid poller polls.

    python bench/auth_flood.py [--flood 200] [--seconds 20] [--addresses 1] [--source DIR]

`meldpunt serve` runs in its own process on 127.0.0.1, with the example deployment, the DIVD
sample ingested into a fresh SQLite store and passwords hashed the way `meldpunt
hash-password` hashes them (argon2id, 64 MiB, t=3, p=4). A poller (source address 127.0.0.1)
logs in, then fetches `objects/?limit=100` of its collection over and over. After a few
seconds of that alone, --flood connections (from --addresses source addresses 127.0.0.2...,
all on loopback) send wrong logins as fast as they are answered, half a wrong password for
an existing user, half an unknown user, for --seconds.

Printed: the poller's latency alone and during the flood (p50, p95, max), the flood's answers
by status and rate, and the server's peak memory (VmHWM, and the largest RSS sampled during
the flood). Targets from issue #14: poller p95 under 200 ms, server under 1 GB. It asserts
nothing: machines are noisy. --source DIR runs the server from another checkout of the
project (PYTHONPATH), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from connector.adapters.mapping import load_mappings  # noqa: E402
from connector.collections import collection_rows, recipient_collection_id  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.ingest import Ingestor  # noqa: E402
from connector.passwords import hash_password  # noqa: E402
from connector.store import Store  # noqa: E402

SAMPLE_CONFIG = REPO / "config" / "meldpunt.yaml"
POLLER, TARGET = "zcert-poller", "ibd-poller"  # the valid poller; the account the flood guesses


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(workdir: Path) -> tuple[Path, dict[str, str]]:
    """A config file with fresh passwords, and its store with the DIVD sample ingested."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    passwords = {u["username"]: os.urandom(12).hex() for u in raw["users"]}
    for user in raw["users"]:
        user["password_hash"] = hash_password(passwords[user["username"]])
    raw["database"] = f"sqlite:///{workdir / 'bench.db'}"
    path = workdir / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    config = load_config(path)
    store = Store.open(config.database)
    store.sync_collections(collection_rows(config))
    scan = REPO.parent / "shared" / "data" / "divd" / "DIVD-2024-00012.nuclei.jsonl"
    if not scan.exists():
        scan = REPO / "samples" / "divd" / "DIVD-2024-00012.nuclei.jsonl"
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan])
    store.close()
    return path, passwords


def start_server(config: Path, port: int, source: Path | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("MELDPUNT_TOKEN_SECRET", None)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [sys.executable, "-c", "from connector.cli import app; app()", "serve"]
    server = subprocess.Popen(
        [*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=str(source or REPO),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Http:
    """One keep-alive HTTP/1.1 connection from a chosen source address; little client-side
    work per request, so that the client's own CPU takes as little from the server as can be."""

    def __init__(self, port: int, source: str) -> None:
        self.port, self.source = port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, authorization: str) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, local_addr=(self.source, 0)
            )
        assert self.reader is not None
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/taxii+json;version=2.1\r\n"
            f"Authorization: {authorization}\r\n\r\n"
        )
        self.writer.write(head.encode())
        status_line = await self.reader.readline()
        if not status_line:
            self.writer.close()
            raise ConnectionError("closed by the server")
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            self.writer.close()
        return int(status_line.split()[1])


def _percentiles(values: list[float]) -> str:
    if not values:
        return "no requests"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   "
        f"max {ordered[-1] * 1000:7.1f} ms   ({len(ordered)} requests)"
    )


async def run(args: argparse.Namespace, port: int, pid: int, passwords: dict[str, str]) -> None:
    path = f"/meldpunt/collections/{recipient_collection_id('zcert')}/objects/?limit=100"
    poller = Http(port, "127.0.0.1")
    valid = _basic(POLLER, passwords[POLLER])
    assert await poller.request(path, valid) == 200, "the poller cannot log in"
    phase = {"name": "alone"}
    latencies: dict[str, list[float]] = {"alone": [], "flood": []}
    poller_status: Counter[int] = Counter()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            status = await poller.request(path, valid)
            latencies[phase["name"]].append(time.perf_counter() - began)
            poller_status[status] += 1
            await asyncio.sleep(0.02)

    flood_status: Counter[str] = Counter()

    async def guess(i: int) -> None:
        source = f"127.0.0.{2 + i % args.addresses}"
        connection = Http(port, source)
        n = 0
        while not stop.is_set():
            n += 1
            user = TARGET if i % 2 else f"unknown-{i}-{n}"
            try:
                status = await connection.request(path, _basic(user, f"wrong-{n}"))
                flood_status[str(status)] += 1
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                flood_status[type(exc).__name__] += 1
                connection = Http(port, source)

    peak_rss = [0]

    async def sample_memory() -> None:
        while not stop.is_set():
            peak_rss[0] = max(peak_rss[0], memory_kib(pid, "VmRSS"))
            await asyncio.sleep(0.05)

    poll_task = asyncio.create_task(poll())
    await asyncio.sleep(args.alone)
    rss_before = memory_kib(pid, "VmRSS")
    phase["name"] = "flood"
    began = time.perf_counter()
    tasks = [asyncio.create_task(guess(i)) for i in range(args.flood)]
    tasks.append(asyncio.create_task(sample_memory()))
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.wait([poll_task, *tasks], timeout=args.seconds + 120)
    elapsed = time.perf_counter() - began
    hwm = memory_kib(pid, "VmHWM")

    print(f"poller alone:        {_percentiles(latencies['alone'])}")
    print(f"poller during flood: {_percentiles(latencies['flood'])}   statuses {dict(poller_status)}")
    total = sum(flood_status.values())
    print(
        f"flood: {args.flood} connections from {args.addresses} address(es), {total} wrong logins "
        f"answered in {elapsed:.1f} s ({total / elapsed:.0f}/s): {dict(sorted(flood_status.items()))}"
    )
    print(
        f"server memory: RSS {rss_before / 1024:.0f} MiB before the flood, "
        f"largest sampled during it {peak_rss[0] / 1024:.0f} MiB, peak (VmHWM) {hwm / 1024:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flood", type=int, default=200, help="concurrent wrong-login connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts")
    parser.add_argument("--alone", type=float, default=3.0, help="seconds the poller polls before it")
    parser.add_argument("--addresses", type=int, default=1, help="source addresses the flood comes from")
    parser.add_argument("--source", type=Path, help="serve from this checkout instead (PYTHONPATH)")
    args = parser.parse_args()
    if not 1 <= args.addresses <= 250:
        parser.error("--addresses: 1 to 250")
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="meldpunt-auth-flood-") as tmp:
        config, passwords = prepare(Path(tmp))
        port = _free_port()
        server = start_server(config, port, args.source)
        try:
            asyncio.run(run(args, port, server.pid, passwords))
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
