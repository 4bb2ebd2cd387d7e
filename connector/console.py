"""What the command line prints: plain text, whole tables, the ingest run's summary.

Everything printed holds values from the command line, the configuration, partners' files and
the store, so none of it is ever read as rich markup.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from connector.counts import COUNT_NAMES, RunSummary
from connector.store import Store

console = Console(stderr=True, soft_wrap=True)  # messages are greppable: never wrapped
out = Console()


def labelled(label: str, style: str, message: str) -> Text:
    """A message with a coloured label. The message is plain text, never rich markup: it holds
    values from the command line, the configuration, partners' files and the store, and
    markup would swallow any of their square brackets (`[red]zz` printed as `zz`)."""
    return Text.assemble((label, style), " ", message)


def plain_cells(*values: object) -> list[Text]:
    """Table cells as plain text, for the same reason: cell strings are parsed as markup."""
    return [v if isinstance(v, Text) else Text(str(v)) for v in values]


def print_table(target: Console, table: Table) -> None:
    """Print a table without losing any of its text.

    rich fits a table to the console's width, cutting cells (`2026-12-0…`) or folding them over
    several lines; piped, that width is 80 columns (or $COLUMNS). Piped output is read by grep
    and scripts, so there the table takes the width it needs, one line per row. On a terminal
    it fits the screen, with cells folded rather than cut."""
    if target.is_terminal:
        for column in table.columns:
            column.overflow = "fold"
        target.print(table)
        return
    needed = Measurement.get(target, target.options.update_width(1_000_000), table).maximum
    width = target.width
    target.width = max(width, needed)
    try:
        target.print(table)
    finally:
        target.width = width


def print_summary(store: Store, summary: RunSummary, limit: int = 20) -> None:
    counts = Table(title=f"ingest run {summary.run_id}", show_header=False)
    for name in COUNT_NAMES:
        counts.add_row(*plain_cells(name, summary.counts.get(name, 0)))
    print_table(out, counts)
    involved = set(summary.per_recipient) | set(summary.suppressed_tlp) | set(summary.suppressed_category)
    if involved:
        table = Table("recipient", "delivered", "suppressed (TLP)", "suppressed (category)")
        for rid in sorted(involved):
            table.add_row(
                *plain_cells(
                    rid,
                    summary.per_recipient[rid],
                    summary.suppressed_tlp[rid],
                    summary.suppressed_category[rid],
                )
            )
        print_table(out, table)
    _print_rows(store, summary, limit)
    for warning in summary.warnings:
        console.print(labelled("warning:", "yellow", warning))
    for err in summary.input_errors:
        console.print(labelled("input not ingested:", "bold red", err))


def _print_rows(store: Store, summary: RunSummary, limit: int) -> None:
    """The rows that did not become notifications, and the notifications nobody claims."""
    rows = store.run_rows(summary.run_id)
    bad = [r for r in rows if r["kind"] != "skipped"]
    if bad:
        table = Table("input", "line", "kind", "reason", title="not ingested")
        for r in bad[:limit]:
            table.add_row(*plain_cells(r["input"], r["line"], r["kind"], r["reason"]))
        print_table(out, table)
        if len(bad) > limit:
            out.print(
                f"... and {len(bad) - limit} more (store table run_rows, run {summary.run_id})", markup=False
            )
    skipped = len(rows) - len(bad)
    if skipped:
        out.print(
            f"skipped {skipped} row(s) that are not notifications (blank lines, informational findings)",
            markup=False,
        )
    unrouted = store.unrouted(summary.run_id)
    if unrouted:
        table = Table(
            "observable", "classification", "identifier", title="unrouted (no recipient claims these)"
        )
        for n in unrouted[:limit]:
            table.add_row(*plain_cells(n["observable"], n["classification"], n["identifier"]))
        print_table(out, table)
        if len(unrouted) > limit:
            out.print(f"... and {len(unrouted) - limit} more", markup=False)
