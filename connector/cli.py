"""The `meldpunt` command line: each stage usable on its own, and the whole in one command."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from connector import cli_retention
from connector.cli_common import ConfigOption, store_if_there
from connector.cli_common import fail as _fail
from connector.cli_common import known_recipient as _known_recipient
from connector.cli_common import load as _load
from connector.cli_common import mappings as _mappings
from connector.cli_common import open_store as _open_store
from connector.cli_run import run as run_command
from connector.cli_store import store_app
from connector.config import Config, ConfigError, RecipientConfig, parse_config
from connector.config import config_path as resolve_config_path
from connector.console import console, labelled, out, plain_cells, print_summary, print_table
from connector.counts import nothing_usable
from connector.ingest import IngestError, Ingestor
from connector.logs import LogLevelError, setup_logging
from connector.normalize import canonical_ip_or_network, url_host
from connector.passwords import hash_password, new_token
from connector.rsit import RSIT, check_category
from connector.store import Store

if TYPE_CHECKING:
    from connector.channels.misp_sync import MispSync

app = typer.Typer(
    help="Security Meldpunt connector: partner feeds to STIX 2.1, routed, served over TAXII 2.1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning (default), error.")] = None,
) -> None:
    try:
        setup_logging(log_level)
    except LogLevelError as exc:
        raise _fail(str(exc)) from None


@app.command("hash-password")
def hash_password_cmd() -> None:
    """Read a password from standard input (or a prompt) and print its argon2 hash for the config."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            raise _fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise _fail("empty password")
    typer.echo(hash_password(password))  # plain: rich would wrap a long hash in a pipe


@app.command("create-token")
def create_token(
    user: Annotated[str, typer.Option(help="Username the token is for (a users[] entry).")],
    config_path: ConfigOption = None,
) -> None:
    """Make a bearer API token: print the token (give it to the client, once) and the config entry.

    The user must be in the configuration: the entry printed goes under that user, and a token
    for a name nobody configured would be handed out and then never work."""
    config = _load(config_path)
    known = [u.username for u in config.users]
    if user not in known:
        shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
        raise _fail(
            f"unknown user {user!r} in {resolve_config_path(config_path)} (known: {shown or 'none'}); "
            "add it under users[] with what it may do (recipient, inbox or operator) first"
        )
    token, token_id, token_hash = new_token()
    console.print(f"token for {user} (shown once; store it in the client's secret store):", markup=False)
    typer.echo(token)
    console.print(f"add under users[] -> username: {user} -> tokens:", markup=False)
    typer.echo(f'  - {{id: "{token_id}", hash: "{token_hash}"}}')


@app.command()
def ingest(
    # Checked by _readable_inputs, not typer: typer's check exits 2, the code for a wrong
    # command or configuration, where an input that cannot be read is 1 (README).
    paths: Annotated[list[Path], typer.Argument(help="Input files.")],
    partner: Annotated[str, typer.Option(help="Partner id from the configuration.")],
    fmt: Annotated[str, typer.Option("--format", help="Input format (a mapping under mappings/).")],
    case: Annotated[
        Path | None,
        typer.Option(help="Case metadata file, where the format uses one and it is not beside the input."),
    ] = None,
    config_path: ConfigOption = None,
) -> None:
    """Ingest partner files: parse, quarantine bad rows, build STIX, route, store; print counts.

    Exit 1 when an input cannot be read, or when rows were quarantined and none became a
    notification (a wrong --format, a broken export); 2 on a configuration error or an unknown
    partner or format."""
    config = _load(config_path)
    _readable_inputs(paths)
    store = _open_store(config, create=True)
    try:
        ingestor = Ingestor(config, store, _mappings(config))
    except (ValueError, OSError) as exc:  # the asn_table: a malformed line, or unreadable
        raise _fail(str(exc)) from None
    total = sum(p.stat().st_size for p in paths)
    done_before = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("ingesting", total=total)

        def advance(position: int) -> None:
            # Positions are per file; a position lower than the last one means the next file.
            nonlocal done_before, last
            if position < last:
                done_before += last
            last = position
            progress.update(task, completed=done_before + position)

        last = 0
        try:
            summary = ingestor.run(partner, fmt, paths, context_file=case, progress=advance)
        except IngestError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail(
                "interrupted: what was committed stays (the run is recorded as failed); "
                "ingest the same input again to complete it",
                130,
            ) from None
    print_summary(store, summary)
    if not summary.ok:
        raise typer.Exit(1)
    if problem := nothing_usable(summary.counts, fmt):
        raise _fail(problem, code=1)


def _readable_inputs(paths: list[Path]) -> None:
    """Refuse the whole ingest when an input is missing or not a file: a mistyped path is fixed
    and the same command run again, rather than half the inputs ingested."""
    problems = []
    for path in paths:
        if not path.exists():
            problems.append(f"input {path} does not exist")
        elif not path.is_file():
            problems.append(f"input {path} is not a file")
    if problems:
        raise _fail("; ".join(problems) + "; nothing was ingested", code=1)


route_app = typer.Typer(help="Routing: where notifications go, and why.", no_args_is_help=True)
recipients_app = typer.Typer(help="Recipients: import and check constituencies.", no_args_is_help=True)
misp_app = typer.Typer(
    help="MISP: push to recipients' instances, outbox status, feeds.", no_args_is_help=True
)
app.add_typer(misp_app, name="misp")
app.add_typer(route_app, name="route")
app.add_typer(recipients_app, name="recipients")
runs_app = typer.Typer(help="Ingest runs: what ran, how it ended.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(store_app, name="store")
app.command("run")(run_command)
app.command("purge")(cli_retention.purge)
app.command("forget")(cli_retention.forget)
app.command("audit")(cli_retention.audit)


AS_NUMBER_MAX = 2**32 - 1  # AS numbers are 32-bit (RFC 6793); AS0 is reserved (RFC 7607)
_AS_NUMBER = re.compile(r"^(?:AS)?(\d+)$", re.IGNORECASE)
# A notification's own objects: its sighting, observed-data, indicator.
_OWN_ID = re.compile(r"^(?:sighting|observed-data|indicator)--[0-9a-f-]{36}$")
# Meant as an address or network: digits and dots (no top-level domain is numeric), or a colon
# (no host name has one).
_ADDRESS_LIKE = re.compile(r"^(?:[0-9.]+(?:/\S*)?|.*:.*)$")


def route_target_problem(target: str) -> str | None:
    """Why `target` is no IP address, network, AS number, domain, e-mail address or URL; None
    when it is one (or a notification's id or key).

    explain_target takes whatever is not an address or AS number for a domain name, so a typo
    (`192.0.2.999`, an 11-digit AS number) got an answer about a domain nobody can own. What is
    checked here is what cannot be meant as a domain: text of digits and dots or with a colon
    (an address), digits with or without `AS` (an AS number), a name without a dot or with a
    numeric last label.
    """
    text = target.strip()
    if _OWN_ID.match(text):
        return None
    if match := _AS_NUMBER.match(text):
        if not 1 <= int(match.group(1)) <= AS_NUMBER_MAX:
            return (
                f"{target!r} is not an AS number: AS numbers are 32-bit, "
                f"AS1 to AS{AS_NUMBER_MAX} (AS0 is reserved)"
            )
        return None
    if "://" in text:
        try:
            host = url_host(text)
        except ValueError:
            return None  # explain_target names what is wrong with the URL
        problem = _host_problem(host, part=True) if host else None
        return f"URL {target!r}: its host {problem}" if problem else None
    if "@" in text:
        problem = _host_problem(text.rpartition("@")[2], part=True)
        return f"e-mail address {target!r}: its domain {problem}" if problem else None
    return _host_problem(text)


def _host_problem(host: str, *, part: bool = False) -> str | None:
    """Why `host` is neither an IP address (or network) nor a domain name; None if it is one.
    `part`: the host of a URL or e-mail address, which cannot be an AS number either."""
    bare = host.strip().removeprefix("[").removesuffix("]")
    if _ADDRESS_LIKE.match(bare):
        try:
            canonical_ip_or_network(bare)
        except ValueError as exc:
            return str(exc)
        return None
    labels = bare.rstrip(".").split(".")
    if len(labels) < 2:
        what = "neither an IP address nor" if part else "not an IP address, an AS number (AS64500) or"
        return f"{host!r} is {what} a domain name (a domain name has at least two labels: example.nl)"
    if labels[-1].isdigit():
        return f"{host!r} is neither an IP address nor a domain name: no top-level domain is numeric"
    return None


def route_category(category: str) -> tuple[str, str]:
    """`--category` as (taxonomy, type) of the RSIT taxonomy, both: a notification has both,
    and a taxonomy alone would be checked against type-level recipient categories as
    `taxonomy/None`. ValueError naming the known values."""
    taxonomy, _, type_ = category.partition("/")
    check_category(category)
    if not type_:
        raise ValueError(
            f"{category!r} names no type: give taxonomy/type, e.g. {taxonomy}/{RSIT[taxonomy][0]}"
        )
    return taxonomy, type_


@route_app.command("explain")
def route_explain(
    target: Annotated[
        str,
        typer.Argument(
            help="IP address, AS number, domain, e-mail address, URL, or a notification (its sighting, "
            "observed-data or indicator id)."
        ),
    ],
    tlp: Annotated[str, typer.Option(help="TLP of the notification to imagine.")] = "amber",
    category: Annotated[
        str | None, typer.Option(help="RSIT taxonomy/type, e.g. vulnerable/vulnerable-system.")
    ] = None,
    config_path: ConfigOption = None,
) -> None:
    """Which recipients get it, by which rule; which rules were considered and why they did not apply."""
    from connector.claims import with_claims
    from connector.explain import explain_target
    from connector.routing import Policy, Router
    from connector.tlp import parse_tlp

    config = _load(config_path)
    if problem := route_target_problem(target):
        raise _fail(problem)
    taxonomy: str | None = None
    type_: str | None = None
    if category is not None:
        try:
            taxonomy, type_ = route_category(category)
        except ValueError as exc:
            raise _fail(f"--category: {exc}") from None
    try:
        policy = Policy(parse_tlp(tlp), taxonomy, type_)
        # A notification id needs the store; any other target is answered with it when there
        # is one, since approved portal claims (connector/claims.py) route as ingest routes.
        if _OWN_ID.match(target.strip()):
            store, without = _open_store(config, config_path), None
        else:
            store, without = store_if_there(config)
        lines = explain_target(Router(with_claims(config, store)), target, policy, store)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if without is not None:
        typer.echo(f"note: from the configuration alone, approved portal claims not consulted: {without}")
    for line in lines:
        typer.echo(line)


@recipients_app.command("import")
def recipients_import(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns id,name,kind,parent,deliver_to_parent,"
            "max_tlp,categories,networks,asns,domains."
        ),
    ],
    dry_run: Annotated[bool, typer.Option(help="Only validate; change nothing.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Validate recipients from CSV against the configuration; append them to its recipient file."""
    from connector.recipients_csv import append_rows, read_recipient_rows

    config = _load(config_path, new_recipient_files=True)  # it creates the first recipient file
    rows, problems = read_recipient_rows(csv_file, RecipientConfig.model_validate)
    # The rows that are fine on their own are also checked against everything else.
    combined = config.model_dump(mode="json")
    combined["recipients"] = [*combined["recipients"], *rows]
    combined["recipient_files"] = []  # already merged into recipients
    try:
        parse_config(combined, source=str(csv_file))
    except ConfigError as exc:
        problems = [*problems, *_named_rows(exc.problems, config, rows, csv_file)]
    if problems:
        for problem in problems:
            console.print(Text(problem, style="red"))
        raise _fail(f"{csv_file}: {len(problems)} problem(s); nothing imported", code=1)
    if dry_run:
        out.print(f"{len(rows)} recipient(s) valid; nothing written (--dry-run)", markup=False)
        return
    if not config.recipient_files:
        raise _fail(
            f"the configuration {resolve_config_path(config_path)} names no recipient_files; "
            "add e.g. `recipient_files: [recipients.csv]` to it"
        )
    target = config.recipient_files[0]
    append_rows(target, rows)
    out.print(f"{len(rows)} recipient(s) imported into {target}", markup=False)


def _named_rows(problems: list[str], config: Config, rows: list[dict[str, Any]], csv_file: Path) -> list[str]:
    """The configuration's problems with `recipients[i]` said as the recipient it is: one
    configured already, or one of the file's rows (the list's positions mean nothing to the
    operator)."""
    base = len(config.recipients)

    def named(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= base:
            return f"{csv_file.name}: recipient {rows[i - base]['id']!r}"
        return f"configured recipient {config.recipients[i].id!r}"

    return [re.sub(r"recipients\[(\d+)\]", named, problem) for problem in problems]


@misp_app.command("sync")
def misp_sync(
    recipient: Annotated[str | None, typer.Option(help="Only this recipient.")] = None,
    now: Annotated[
        bool, typer.Option("--now", help="Also entries whose retry back-off has not expired.")
    ] = False,
    config_path: ConfigOption = None,
) -> None:
    """Push due outbox entries to the recipients' MISP instances; print what happened.

    Exit 1 when a delivery failed, 2 when a recipient's entries were left queued because its
    MISP API key is not set."""
    from connector.channels.misp_sync import MispSync, SyncSummary, recipients_without_key

    config = _load(config_path)
    _known_recipient(config, recipient)
    sync = MispSync(config, _open_store(config, config_path))
    due = Counter(e["recipient"] for e in sync.due(recipient, include_later=now))
    keyless = recipients_without_key(config, recipient)
    for rid, variable in sorted(keyless.items()):
        if due[rid]:
            console.print(
                labelled(
                    "error:",
                    "bold red",
                    f"{rid}: {due[rid]} MISP delivery(ies) not attempted: {variable} (its MISP API "
                    "key) is not set; set it and run `meldpunt misp sync` again (they stay queued)",
                )
            )
        else:
            console.print(labelled("warning:", "yellow", f"{rid}: {variable} (its MISP API key) is not set"))
    runnable = [rid for rid in sorted(due) if rid not in keyless]
    summary = SyncSummary()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("pushing", total=sum(due[rid] for rid in runnable))
        offset = 0
        for rid in runnable:
            # One recipient at a time, so that those without a key are left out (MispSync
            # would mark each of their entries failed for good: see recipients_without_key).
            part = sync.run(
                rid,
                lambda done, _total, base=offset: progress.update(task, completed=base + done),
                include_later=now,
            )
            offset += due[rid]
            summary.counts.update(part.counts)
            summary.per_recipient.update(part.per_recipient)
            summary.errors.extend(part.errors)
            summary.feedback.update(part.feedback)
    # Sightings are read back on every sync, also from a MISP nothing was due for (the steady
    # state of a timer running this command): run() read those it pushed to.
    for rid in sync.pushing():
        if recipient in (None, rid) and rid not in runnable and rid not in keyless:
            sync.pull_sightings(summary, rid)
    table = Table("recipient", *sorted(summary.counts), title="MISP sync")
    for rid, counts in sorted(summary.per_recipient.items()):
        table.add_row(*plain_cells(rid, *[counts[k] for k in sorted(summary.counts)]))
    if summary.counts:
        print_table(out, table)
    else:
        out.print("nothing due")
    if summary.feedback:
        said = ", ".join(f"{outcome} {n}" for outcome, n in sorted(summary.feedback.items()))
        out.print(Text(f"feedback from MISP sightings: {said}"))
    for error in summary.errors:
        console.print(Text(error, style="red"))
    _tell_failed_entries(sync, recipient)
    if summary.counts.get("failed"):
        raise typer.Exit(1)
    if any(due[rid] for rid in keyless):
        raise typer.Exit(2)


def _tell_failed_entries(sync: MispSync, recipient: str | None) -> None:
    """Failed entries are not retried by a sync: say so, or "nothing due" reads as all done."""
    for row in sync.status():
        if row["failed"] and recipient in (None, row["recipient"]):
            console.print(
                labelled(
                    "warning:",
                    "yellow",
                    f"{row['recipient']}: {row['failed']} failed MISP delivery(ies) wait for "
                    f"`meldpunt misp retry --recipient {row['recipient']}` once the cause is fixed "
                    f"(last error: {row['last_error'] or 'none recorded'})",
                )
            )


@misp_app.command("retry")
def misp_retry(
    recipient: Annotated[str | None, typer.Option(help="Only this recipient.")] = None,
    config_path: ConfigOption = None,
) -> None:
    """Queue failed MISP deliveries again (after an outage longer than the retries)."""
    from connector.channels.misp_sync import MispSync

    config = _load(config_path)
    _known_recipient(config, recipient)
    count = MispSync(config, _open_store(config, config_path)).retry_failed(recipient)
    out.print(f"{count} failed delivery(ies) queued again; run `meldpunt misp sync`", markup=False)


@misp_app.command("status")
def misp_status(config_path: ConfigOption = None) -> None:
    """The MISP outbox per recipient: pending, done, failed, next attempt, last error."""
    from connector.channels.misp_sync import MispSync
    from connector.store.times import us_to_timestamp

    config = _load(config_path)
    table = Table("recipient", "pending", "done", "failed", "next attempt", "last error", title="MISP outbox")
    for row in MispSync(config, _open_store(config, config_path)).status():
        nxt = us_to_timestamp(row["next_attempt"]) if row["next_attempt"] else "-"
        table.add_row(
            *plain_cells(
                row["recipient"],
                row["pending"],
                row["done"],
                row["failed"],
                nxt,
                row["last_error"] or "",
            )
        )
    print_table(out, table)


@misp_app.command("export-feed")
def misp_export_feed(
    directory: Annotated[Path, typer.Argument(help="Output folder; one subfolder per recipient.")],
    recipient: Annotated[str | None, typer.Option(help="Only this recipient.")] = None,
    config_path: ConfigOption = None,
) -> None:
    """Write MISP feeds (manifest.json, hashes.csv, <uuid>.json) for recipients with `misp.feed`."""
    from connector.channels.misp_feed import export_feed

    config = _load(config_path)
    _known_recipient(config, recipient)
    chosen = [
        r for r in config.recipients if (r.misp and r.misp.feed) and (recipient is None or r.id == recipient)
    ]
    where = resolve_config_path(config_path)
    if recipient and not chosen:
        raise _fail(f"recipient {recipient!r} has no MISP feed: set misp.feed: true for it in {where}")
    if not chosen:
        raise _fail(
            f"no recipient has a MISP feed, nothing to export: set misp.feed: true for a recipient in {where}"
        )
    store = _open_store(config, config_path)
    for r in chosen:
        count = export_feed(config, store, r.id, directory / r.id)
        out.print(f"{r.id}: {count} event(s) in {directory / r.id}", markup=False)


@app.command()
def serve(
    config_path: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
    # Bounded: the OS would take 70000 as 70000 % 65536 and listen somewhere unexpected.
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: server.port).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Worker processes on the port (default: server.workers)."),
    ] = None,
) -> None:
    """Serve the TAXII 2.1 API (and /healthz, /readyz, metrics as configured) until SIGTERM.

    Prints the address it listens on once it does. SIGTERM stops it gracefully: no new
    connections, requests in flight finish (up to server.shutdown_timeout, then they are
    cancelled), exit 0."""
    # Stopped before it serves (the store still opening): nothing in flight, exit 0 at once.
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        _serve(config_path, host, port, workers)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(config_path: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    config = _load(config_path)
    count = workers or config.server.workers
    metrics_dir = _prepare_workers(config, config_path, count)
    from taxii_server import create_app  # after _prepare_workers: prometheus-client reads its variable
    from taxii_server.server import CannotListen, run_server

    store = _open_store(config, create=True)
    try:
        application = create_app(config, store)
    except (ValueError, OSError) as exc:  # the asn_table (a malformed line, unreadable), metrics token
        raise _fail(str(exc)) from None
    bind = host or config.server.host
    try:
        stopped = run_server(
            config,
            application,
            host=bind,
            port=config.server.port if port is None else port,
            workers=count,
            announce=lambda line: out.print(line, markup=False, soft_wrap=True),
            metrics_listener=lambda: _metrics_listener(config, application, store, count),
        )
    except CannotListen:
        raise typer.Exit(1) from None  # its reason is logged (an error line, JSON)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    name = {signal.SIGTERM: " on SIGTERM", signal.SIGINT: " on SIGINT"}.get(stopped or 0, "")
    out.print(f"meldpunt serve: stopped{name}; requests in flight were finished", markup=False)


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _prepare_workers(config: Config, config_path: Path | None, workers: int) -> Path | None:
    """For several workers: what each (a new interpreter) needs to build its own application,
    and with metrics on, a fresh directory for prometheus-client's multiprocess mode (returned,
    to be removed when serving ends). Must run before prometheus-client is imported."""
    if workers <= 1:
        return None
    import logging

    from connector.config import config_path as resolve

    os.environ["MELDPUNT_SERVE_CONFIG"] = str(resolve(config_path).absolute())
    os.environ["MELDPUNT_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().level).lower()
    if not config.server.metrics.enabled:
        return None
    if "prometheus_client" in sys.modules:  # pragma: no cover - a programming error, not an input
        raise RuntimeError("prometheus-client was imported before its multiprocess directory was set")
    directory = Path(tempfile.mkdtemp(prefix="meldpunt-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def _metrics_listener(config: Config, application: object, store: Store, workers: int) -> object:
    """server.metrics.port: a listener of its own for the scraper (in this process; with several
    workers, the parent's, reading every worker's files). Returns its stop function."""
    metrics = config.server.metrics
    if not metrics.enabled or metrics.port is None:
        return None
    from prometheus_client import start_http_server

    from taxii_server.metrics import ServerMetrics

    state = application.state.meldpunt  # type: ignore[attr-defined]
    source = ServerMetrics(store) if workers > 1 else state.metrics
    try:
        server, _thread = start_http_server(metrics.port, addr=metrics.host, registry=source.registry())
    except OSError as exc:
        raise _fail(f"cannot listen for metrics on {metrics.host}:{metrics.port}: {exc}", code=1) from None
    out.print(f"meldpunt serve: metrics on http://{metrics.host}:{metrics.port}/metrics", markup=False)
    return server.shutdown


@app.command()
def export(
    recipient: Annotated[str, typer.Option(help="Recipient id.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Output file (default: stdout).")] = None,
    config_path: ConfigOption = None,
) -> None:
    """Write a recipient's collection as one STIX 2.1 bundle (what its TAXII collection serves)."""
    from connector.export import write_bundle

    config = _load(config_path)
    _known_recipient(config, recipient)
    store = _open_store(config, config_path)
    if out_file is None:
        count = write_bundle(store, recipient, sys.stdout.buffer)
    else:
        try:
            with out_file.open("wb") as fh:
                count = write_bundle(store, recipient, fh)
        except OSError as exc:
            raise _fail(f"cannot write {out_file}: {exc.strerror or exc}", code=1) from None
    console.print(f"{count} objects exported for {recipient}", markup=False)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Directory for the demo's fresh SQLite store.")] = Path(
        "meldpunt-demo"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on (127.0.0.1).")] = 6100,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep serving after the self-check.")
    ] = True,
) -> None:
    """Sample config and feeds into a fresh SQLite store, poll it with taxii2-client, then serve."""
    from connector.demo import run_demo

    raise typer.Exit(run_demo(workdir=workdir, port=port, serve=serve_after, out=out, console=console))


_RUN_COUNTS = ("read", "new", "updated", "quarantined")


RUN_FIELDS = ("id", "partner", "format", "status", "started_at", "finished_at", "inputs", "counts", "error")


@runs_app.command("list")
def runs_list(
    config_path: ConfigOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the latest runs.")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array of the runs, with all their counts, for scripts.")
    ] = False,
) -> None:
    """The latest ingest runs: status, times, counts. A run still `running` whose process is
    gone (killed, its host lost) stays so: `meldpunt runs mark-failed ID` ends it."""
    config = _load(config_path)
    runs = _open_store(config, config_path).runs(limit)
    if as_json:
        typer.echo(json.dumps([{k: run.get(k) for k in RUN_FIELDS} for run in runs], indent=2, default=str))
        return
    table = Table("run", "partner", "format", "status", "started", "finished", "counts", title="Ingest runs")
    for run in runs:
        counts = run["counts"]
        shown = ", ".join(f"{k} {counts[k]}" for k in _RUN_COUNTS if k in counts)
        table.add_row(
            *plain_cells(
                run["id"],
                run["partner"],
                run["format"],
                run["status"],
                run["started_at"],
                run["finished_at"] or "-",
                shown or "-",
            )
        )
    print_table(out, table)


@runs_app.command("mark-failed")
def runs_mark_failed(
    run_id: Annotated[int, typer.Argument(help="The run's number (meldpunt runs list).")],
    config_path: ConfigOption = None,
) -> None:
    """End a run left `running` by a process that is gone. What it committed stays; ingest the
    same input again to complete it (nothing is stored twice)."""
    config = _load(config_path)
    store = _open_store(config, config_path)
    reason = "marked failed by an operator: its process was gone; ingest the same input again to complete it"
    if not store.mark_run_failed(run_id, reason):
        run = store.run(run_id)
        state = "does not exist" if run is None else f"is not running ({run['status']})"
        raise _fail(f"run {run_id} {state}")
    out.print(f"run {run_id} marked failed; ingest its input again to complete it", markup=False)


# --- closing the loop: feedback, statistics, misrouting, escalation ---------------------------

stats_app = typer.Typer(help="Statistics: what became of notifications after delivery.", no_args_is_help=True)
app.add_typer(stats_app, name="stats")


@app.command("feedback")
def feedback_cmd(
    recipient: Annotated[str, typer.Argument(help="The recipient the feedback is from.")],
    target: Annotated[
        str, typer.Argument(help="The notification: its sighting (or observed-data, indicator) id.")
    ],
    state: Annotated[str, typer.Argument(help="acknowledged, resolved, false-positive or not-ours.")],
    note: Annotated[str | None, typer.Option(help="What the recipient said, kept with the state.")] = None,
    config_path: ConfigOption = None,
) -> None:
    """Record what a recipient said of a notification it received (for feedback it gave by
    mail or phone: recipients give theirs through TAXII, MISP sightings or the portal)."""
    import getpass

    from connector import feedback

    config = _load(config_path)
    _known_recipient(config, recipient)
    if state not in feedback.GIVEN:
        raise _fail(f"unknown state {state!r} (one of {', '.join(feedback.GIVEN)})")
    store = _open_store(config, config_path)
    try:
        feedback.give(store, recipient, target, state, source="cli", actor=getpass.getuser(), note=note)
    except feedback.NotFound:
        raise _fail(f"no notification {target!r} in the collection of {recipient!r}", code=1) from None
    out.print(f"{target}: {state} for {recipient}", markup=False)


def _print_figures(title: str, figures: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for name, value in figures.items():
        table.add_row(*plain_cells(name, "-" if value is None else value))
    print_table(out, table)


@stats_app.command("case")
def stats_case(
    case_id: Annotated[str, typer.Argument(help="The partner's case id, e.g. DIVD-2024-00012.")],
    partner: Annotated[str | None, typer.Option(help="Only this partner's notifications of it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """A case's figures: notifications, routed, delivered, acknowledged, resolved, false
    positives, gone, and the median times (never which recipients)."""
    from connector import stats

    config = _load(config_path)
    figures = stats.case(_open_store(config, config_path), case_id, partner).as_dict()
    if as_json:
        typer.echo(json.dumps({"case": case_id, **figures}, indent=2))
        return
    if not figures["notifications"]:
        raise _fail(f"no notifications of case {case_id!r}", code=1)
    _print_figures(f"case {case_id}", figures)


@stats_app.command("feed")
def stats_feed(
    partner: Annotated[str, typer.Argument(help="The partner whose feeds to count.")],
    since: Annotated[
        str | None, typer.Option(help="Only notifications first seen on or after this date (YYYY-MM-DD).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """A partner's figures per feed (never which recipients)."""
    from datetime import UTC, datetime

    from connector import stats

    config = _load(config_path)
    try:
        config.partner(partner)
    except KeyError:
        raise _fail(f"unknown partner {partner!r}") from None
    floor = None
    if since is not None:
        try:
            floor = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise _fail(f"--since: {since!r} is not a date (YYYY-MM-DD)") from None
    per_feed = {
        feed: f.as_dict() for feed, f in stats.feeds(_open_store(config, config_path), partner, floor).items()
    }
    if as_json:
        typer.echo(json.dumps({"partner": partner, "since": since, "feeds": per_feed}, indent=2))
        return
    if not per_feed:
        out.print(f"no notifications from {partner}", markup=False)
    for feed, figures in per_feed.items():
        _print_figures(f"{partner} {feed}", figures)


@stats_app.command("recipient")
def stats_recipient(
    recipient: Annotated[str, typer.Argument(help="The recipient.")],
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """What reached a recipient, what it fetched, acknowledged and closed, what is still open,
    and its oldest open notification."""
    from connector import stats

    config = _load(config_path)
    _known_recipient(config, recipient)
    figures = stats.recipient(_open_store(config, config_path), recipient).as_dict()
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    _print_figures(f"recipient {recipient}", figures)


@app.command("misrouted")
def misrouted_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Notifications a recipient said are not its own, with how they were routed: a
    constituency claim to fix."""
    from connector import stats
    from connector.claims import with_claims
    from connector.explain import explain_target
    from connector.routing import Policy, Router

    config = _load(config_path)
    store = _open_store(config, config_path)
    router = Router(with_claims(config, store))  # approved portal claims route too
    reports = []
    for m in stats.misrouted(store):
        policy = Policy(m.kind.tlp, m.kind.taxonomy, m.kind.type, m.kind.direct_owner_only)
        lines = explain_target(router, m.sighting, policy, store)
        reports.append(
            {"recipient": m.recipient, "sighting": m.sighting, "at": m.at, "note": m.note, "explain": lines}
        )
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    if not reports:
        out.print("no notification was reported as not the recipient's own", markup=False)
    for report in reports:
        said = f": {report['note']}" if report["note"] else ""
        out.print(
            f"{report['recipient']} says {report['sighting']} is not theirs ({report['at']}){said}",
            markup=False,
        )
        for line in report["explain"]:
            out.print(f"    {line}", markup=False)


@app.command("escalations")
def escalations_cmd(
    older_than: Annotated[
        float, typer.Option(help="Hours a notification may stay unfetched, or fetched but unacknowledged.")
    ] = 72.0,
    recipient: Annotated[str | None, typer.Option(help="Only this recipient.")] = None,
    offer_to_parent: Annotated[
        bool,
        typer.Option(
            "--offer-to-parent",
            help="Offer each overdue notification to the recipient's parent, as a STIX note in the "
            "parent's collection, where the parent already receives it (deliver_to_parent).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """Per recipient, what it has not fetched, or fetched and not acknowledged, for longer than
    --older-than hours: the input to a reminder (or, --offer-to-parent, a word with its parent)."""
    from connector import stats

    config = _load(config_path)
    _known_recipient(config, recipient)
    wanted = [recipient] if recipient else [r.id for r in config.recipients]
    store = _open_store(config, config_path)
    overdue = stats.escalations(store, wanted, older_than * 3600)
    if offer_to_parent:
        _offer_to_parents(config, store, overdue, as_json)
        return
    if as_json:
        typer.echo(json.dumps([o.__dict__ for o in overdue], indent=2))
        return
    if not overdue:
        out.print(f"nothing overdue (older than {older_than:g} hours)", markup=False)
        return
    table = Table(
        "recipient", "sighting", "state", "since", title=f"overdue (older than {older_than:g} hours)"
    )
    for o in overdue:
        table.add_row(*plain_cells(o.recipient, o.sighting, o.state, o.since))
    print_table(out, table)


def _offer_to_parents(config: Config, store: Store, overdue: list[Any], as_json: bool) -> None:
    from connector.escalation import offer_to_parents

    offers = offer_to_parents(config, store, overdue)
    if as_json:
        typer.echo(json.dumps([o.__dict__ for o in offers], indent=2))
        return
    if not offers:
        out.print("nothing overdue: nothing to offer", markup=False)
        return
    table = Table("recipient", "sighting", "parent", "outcome", title="offered to the parent")
    for o in offers:
        outcome = f"{o.outcome}: {o.reason}" if o.reason else o.outcome
        table.add_row(*plain_cells(o.recipient, o.sighting, o.parent or "-", outcome))
    print_table(out, table)
    counts = Counter(o.outcome for o in offers)
    out.print(", ".join(f"{n} {what}" for what, n in sorted(counts.items())), markup=False)


if __name__ == "__main__":  # pragma: no cover
    app()
