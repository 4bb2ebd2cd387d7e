"""`meldpunt purge`, `meldpunt forget` and `meldpunt audit`: retention, a data subject's
request, and who read what (connector/retention.py, connector/store/audit_search.py)."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from connector.cli_common import ConfigOption, fail, known_recipient, load, open_store
from connector.console import out, plain_cells, print_table

_HOST = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}\.?$", re.IGNORECASE
)
_DURATION = re.compile(r"^(\d+)([smhd])$")


def _print_report(report: Any, what: str) -> None:
    """One line per count (greppable), then notifications by classification."""
    counts = {k: v for k, v in report.counts.items() if v}
    if not counts:
        out.print(f"{what}: nothing to remove", markup=False)
        return
    verb = "would remove (--dry-run: nothing changed)" if report.dry_run else "removed"
    out.print(f"{what}: {verb}", markup=False)
    for name, value in sorted(counts.items()):
        out.print(f"  {name} {value}", markup=False)
    if report.by_classification:
        table = Table("classification", "notifications", title="by classification")
        for name, value in sorted(report.by_classification.items()):
            table.add_row(*plain_cells(name, value))
        print_table(out, table)


def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; change nothing.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Remove notifications past their classification's retention (retention.* in the
    configuration) everywhere they live, and the quarantined rows of runs older than
    retention.quarantine_days; print what was removed."""
    from connector.retention import purge as run_purge

    config = load(config_path)
    store = open_store(config, config_path)
    retention = config.retention
    periods = ", ".join(f"{k} {v} days" for k, v in sorted(retention.periods().items()))
    out.print(
        f"retention: {periods}; anything else {retention.default_days} days; quarantined rows "
        f"{retention.quarantine_days} days",
        markup=False,
        soft_wrap=True,
    )
    _print_report(run_purge(store, config, dry_run=dry_run), "purge")


def forget(
    value: Annotated[str, typer.Argument(help="An IP address, host name, URL or e-mail address.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; change nothing.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """A data subject's request: remove every notification whose observable is VALUE (or whose
    URL or evidence holds it), the stored STIX objects that hold it and those that refer to
    them, and the quarantined rows, status resources and MISP errors that quote it; print what
    was removed."""
    from connector.retention import forget as run_forget

    if problem := _subject_problem(value):
        raise fail(problem)
    config = load(config_path)
    store = open_store(config, config_path)
    _print_report(run_forget(store, config, value, dry_run=dry_run), f"forget {value}")


def _subject_problem(value: str) -> str | None:
    """Why VALUE is not something a notification can be about. Checked because it is also
    looked for as text: a stray `1` would match half the store."""
    text = value.strip()
    if "://" in text:
        return None if len(text) > len("http://x.y") else f"{value!r} is too short to be a URL"
    if "@" in text:
        local, _, domain = text.rpartition("@")
        return None if local and _HOST.match(domain) else f"{value!r} is not an e-mail address"
    try:
        ipaddress.ip_network(text, strict=True)
        return None
    except ValueError:
        pass
    if _HOST.match(text) and not text.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return None
    return f"{value!r} is not an IP address, host name, URL or e-mail address"


def _since(text: str) -> str:
    """--since as the audit log writes times: an RFC 3339 timestamp, a date, or a duration
    back from now (7d, 12h, 30m)."""
    from connector.store.times import timestamp_to_us, us_to_timestamp

    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return us_to_timestamp(int((time.time() - seconds) * 1_000_000))
    candidate = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", candidate):
        candidate += "T00:00:00Z"
    return us_to_timestamp(timestamp_to_us(candidate))


def audit(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's entries.")] = None,
    recipient: Annotated[
        str | None, typer.Option("--recipient", help="Only entries on this recipient's collection.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time: 2024-06-01, 2024-06-01T12:00:00Z, or 7d / 12h back."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the latest N entries.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array of the entries, for scripts.")
    ] = False,
    config_path: ConfigOption = None,
) -> None:
    """The audit log: who read, wrote or deleted what, when, on which collection, how many
    objects, with what answer; oldest first."""
    from connector.collections import collection_rows, recipient_collection_id

    config = load(config_path)
    known_recipient(config, recipient)
    try:
        start = _since(since) if since is not None else None
    except ValueError as exc:
        raise fail(f"--since: {exc} (give 2024-06-01, 2024-06-01T12:00:00Z, or 7d / 12h / 30m)") from None
    store = open_store(config, config_path)
    collections = [recipient_collection_id(recipient)] if recipient else None
    entries = store.audit_search(username=user, collections=collections, since=start, limit=limit)
    owners = {row.id: row.owner for row in collection_rows(config)}
    rows = [
        {
            "at": e["at"],
            "user": e["username"],
            "action": e["action"],
            "collection": e["collection_id"],
            "owner": owners.get(e["collection_id"] or ""),
            "objects": e["objects"],
            "status": e["status"],
        }
        for e in entries
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("at", "user", "action", "collection of", "objects", "status", title="Audit log")
    for row in rows:
        table.add_row(
            *plain_cells(
                row["at"],
                row["user"],
                row["action"],
                row["owner"] or row["collection"] or "-",
                row["objects"],
                row["status"],
            )
        )
    print_table(out, table)
    if not rows:
        out.print("no entries", markup=False)
