"""What one inbox POST of about 10 MB costs the server, by the shape of its objects.

    python bench/inbox_flood.py [--megabytes 10] [--source DIR] [--shapes zeros,empty,...]

For each shape a fresh `meldpunt serve` runs in its own process on 127.0.0.1 (the example
deployment, a fresh SQLite store, a fresh password for researcher-1), and one POST of that
shape goes to researcher-1's inbox. Printed per shape: the answer's status and size, how long
it took, the status resource stored (bytes in the `statuses` table) and the server's memory:
its peak (VmHWM, reset just before the POST) above what it held then. Shapes:

- zeros:      {"objects": [0, 0, ...]}         (issue #14, item 2: 644 MB status, 4.5 GB)
- empty:      {"objects": [{}, {}, ...]}       (the most Python objects per byte)
- capped:     10,000 zeros (at the default server.max_objects_per_post)
- indicators: valid indicators of about 1 KB up to the size (at most 10,000 of them)

It asserts nothing. --source DIR runs the server from another checkout (PYTHONPATH), for a
before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

from connector.collections import inbox_collection_id  # noqa: E402
from connector.passwords import hash_password  # noqa: E402

SAMPLE_CONFIG = REPO / "config" / "meldpunt.yaml"
MEDIA = "application/taxii+json;version=2.1"
T0 = "2024-01-01T00:00:00.000Z"
SERVE = [sys.executable, "-c", "from connector.cli import app; app()", "serve"]


def body_of(shape: str, size: int) -> bytes:
    if shape == "zeros":
        return b'{"objects":[' + b",".join([b"0"] * ((size - 14) // 2)) + b"]}"
    if shape == "empty":
        return b'{"objects":[' + b",".join([b"{}"] * ((size - 14) // 3)) + b"]}"
    if shape == "capped":
        return b'{"objects":[' + b",".join([b"0"] * 10_000) + b"]}"
    objects = []
    used = 14
    while used < size - 1100 and len(objects) < 10_000:
        obj = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{uuid.uuid4()}",
            "created": T0,
            "modified": T0,
            "name": "x" * 700,
            "pattern": f"[ipv4-addr:value = '198.51.100.{33 + len(objects) % 6}']",
            "pattern_type": "stix",
            "valid_from": T0,
        }
        objects.append(obj)
        used += len(orjson.dumps(obj)) + 1
    return orjson.dumps({"objects": objects})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_shape(shape: str, size: int, source: Path | None) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="meldpunt-inbox-flood-"))
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    password = os.urandom(12).hex()
    for user in raw["users"]:
        user["password_hash"] = hash_password(
            password if user["username"] == "researcher-1" else os.urandom(8).hex()
        )
    raw["database"] = f"sqlite:///{workdir / 'bench.db'}"
    config = workdir / "meldpunt.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    port = _free_port()
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    server = subprocess.Popen(
        [*SERVE, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=str(source or REPO),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        session = requests.Session()
        session.trust_env = False
        session.auth = ("researcher-1", password)
        url = f"http://127.0.0.1:{port}/meldpunt/collections/{inbox_collection_id('researcher-1')}/objects/"
        session.get(f"http://127.0.0.1:{port}/taxii2/", headers={"Accept": MEDIA})  # log in, warm up
        body = body_of(shape, size)
        # The login's argon2 hash (64 MiB) set the peak so far: start it again from here
        # (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")
        before = memory_kib(server.pid, "VmRSS")
        began = time.perf_counter()
        resp = session.post(url, data=body, headers={"Content-Type": MEDIA, "Accept": MEDIA}, timeout=3600)
        took = time.perf_counter() - began
        peak = memory_kib(server.pid, "VmHWM")
        with sqlite3.connect(workdir / "bench.db") as db:
            stored = db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM statuses").fetchone()[0]
        print(
            f"{shape:11} body {len(body) / 1e6:5.1f} MB -> {resp.status_code}, answer "
            f"{len(resp.content) / 1e6:8.3f} MB, stored status {stored / 1e6:8.3f} MB, "
            f"{took:6.1f} s, server peak {peak / 1024:7.0f} MiB ({(peak - before) / 1024:+7.0f} MiB over "
            f"{before / 1024:.0f} before)"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--source", type=Path, default=None, help="run the server from this checkout")
    parser.add_argument("--shapes", default="zeros,empty,capped,indicators")
    args = parser.parse_args()
    size = int(args.megabytes * 1024 * 1024) - 64
    print(f"server from {args.source or REPO}")
    for shape in args.shapes.split(","):
        run_shape(shape, size, args.source)


if __name__ == "__main__":
    main()
