"""`meldpunt demo`: the whole path on the sample config and feeds, checked with a real client.

It ingests the samples (DIVD scan, Shadowserver report, a researcher's STIX bundle: the
files the README's usage lines name) into a fresh SQLite store, serves TAXII 2.1 on 127.0.0.1, polls
every recipient's collection with taxii2-client under fresh demo passwords (printed, never
stored), and keeps serving so you can poll it yourself.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, load_config
from connector.ingest import Ingestor
from connector.passwords import hash_password
from connector.store import Store

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = REPO / "config" / "meldpunt.yaml"
SAMPLES = REPO / "samples"
SAMPLE_FEEDS = [
    ("divd", "divd-nuclei", sorted((SAMPLES / "divd").glob("*.nuclei.jsonl"))),
    ("shadowserver-foundation", "shadowserver", sorted((SAMPLES / "shadowserver").glob("*.csv"))),
    ("researcher-1", "stix", sorted((SAMPLES / "stix").glob("*.json"))),
]


def demo_config(workdir: Path, port: int) -> tuple[Config, dict[str, str]]:
    """The sample config with its own store and freshly generated user passwords."""
    base = load_config(SAMPLE_CONFIG)
    passwords = {u.username: secrets.token_urlsafe(12) for u in base.users}
    users = [u.model_copy(update={"password_hash": hash_password(passwords[u.username])}) for u in base.users]
    server = base.server.model_copy(update={"host": "127.0.0.1", "port": port})
    config = base.model_copy(
        update={
            "database": f"sqlite:///{(workdir / 'meldpunt.db').resolve()}",
            "users": users,
            "server": server,
        }
    )
    return config, passwords


def run_demo(*, workdir: Path, port: int, serve: bool, out: Console, console: Console) -> int:
    import uvicorn

    from taxii_server import create_app

    marker = workdir / ".meldpunt-demo"
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        console.print(
            Text.assemble(
                ("error:", "bold red"),
                f" {workdir} exists and is not a demo directory; "
                "choose another --workdir (the demo starts from an empty one)",
            )
        )
        return 2
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    marker.write_text("created by `meldpunt demo`; the next demo run empties this directory\n")
    config, passwords = demo_config(workdir, port)
    # One process serves the demo: a per-run token key is all it needs.
    os.environ.setdefault(config.server.token_secret_env, secrets.token_urlsafe(32))
    store = Store.open(config.database)
    store.sync_collections(collection_rows(config))
    ingestor = Ingestor(config, store, load_mappings(config.mappings_dir))
    from connector.console import print_summary

    ok = True
    for partner, fmt, paths in SAMPLE_FEEDS:
        out.print(
            Text.assemble(("ingest", "bold"), f" {partner} / {fmt}: {', '.join(p.name for p in paths)}")
        )
        summary = ingestor.run(partner, fmt, paths)
        print_summary(store, summary)
        ok = ok and summary.ok

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, store), host="127.0.0.1", port=port, log_level="warning", log_config=None
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            console.print(
                Text.assemble(("error:", "bold red"), f" the TAXII server did not start on 127.0.0.1:{port}")
            )
            return 1
        time.sleep(0.05)

    base = f"http://127.0.0.1:{port}"
    ok = _self_check(config, passwords, base, out) and ok
    _print_howto(config, passwords, base, out)
    if not serve:
        server.should_exit = True
        thread.join(timeout=10)
        return 0 if ok else 1
    out.print(
        f"serving TAXII 2.1 on {base}/taxii2/ and the web portal on {base}/portal/ "
        "(the same users and passwords; Ctrl-C to stop)",
        markup=False,
    )
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(timeout=10)
    return 0 if ok else 1


def _self_check(config: Config, passwords: dict[str, str], base: str, out: Console) -> bool:
    """Poll every recipient's collection as its own user with taxii2-client."""
    from taxii2client.v21 import Collection, as_pages

    from connector.console import plain_cells, print_table

    table = Table("user", "recipient", "objects", "sightings", "hosts", title="polled with taxii2-client")
    hosts_total = 0
    for user in config.users:
        if not user.recipient:
            continue
        url = f"{base}/{config.server.api_root}/collections/{recipient_collection_id(user.recipient)}/"
        collection = Collection(url, user=user.username, password=passwords[user.username])
        objects = [
            o for page in as_pages(collection.get_objects, per_request=50) for o in page.get("objects", [])
        ]
        sightings = [o for o in objects if o["type"] == "sighting"]
        hosts = sorted({o["value"] for o in objects if o["type"] in ("ipv4-addr", "ipv6-addr")})
        shown = ", ".join(hosts[:3]) + (f" (+{len(hosts) - 3})" if len(hosts) > 3 else "")
        table.add_row(*plain_cells(user.username, user.recipient, len(objects), len(sightings), shown or "-"))
        hosts_total += len(hosts)
    print_table(out, table)
    return hosts_total > 0


def _print_howto(config: Config, passwords: dict[str, str], base: str, out: Console) -> None:
    user = next(u for u in config.users if u.recipient)
    cid = recipient_collection_id(user.recipient or "")
    out.print("\n[bold]demo credentials[/] (valid for this run only):")
    for u in config.users:
        roles = [f"reads {u.recipient}"] if u.recipient else []
        roles += [f"writes inbox {u.inbox}"] if u.inbox else []
        roles += ["operator: may delete from collections"] if u.operator else []
        role = "; ".join(roles)
        out.print(f"  {u.username:18} {passwords[u.username]}   ({role})", highlight=False, markup=False)
    out.print("\n[bold]poll it yourself[/] with taxii2-client:", highlight=False)
    out.print(
        f"  {shlex.quote(sys.executable)} - <<'EOF'\n"  # the interpreter that has taxii2-client
        "  from taxii2client.v21 import Collection, as_pages\n"
        f"  c = Collection('{base}/{config.server.api_root}/collections/{cid}/',\n"
        f"                 user='{user.username}', password='{passwords[user.username]}')\n"
        "  for page in as_pages(c.get_objects, per_request=100):\n"
        "      for obj in page.get('objects', []):\n"
        "          print(obj['type'], obj['id'])\n"
        "  EOF",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
