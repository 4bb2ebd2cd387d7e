"""`meldpunt run`: the scheduler (connector/scheduler) on the command line."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from connector.cli_common import ConfigOption, fail, load, mappings, open_store, refuse_missing_store
from connector.console import out, plain_cells, print_table


def _when(value: Any) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(
    config_path: ConfigOption = None,
    status: Annotated[
        bool, typer.Option("--status", help="Print each job's last run, success and failure, and the spool.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Run every job once and exit (for a systemd timer or cron).")
    ] = False,
) -> None:
    """Run the recurring work until SIGTERM: spool pick-up, MISP pulls, MISP sync, each on its
    interval (scheduler.* and partners[].misp_pull in the configuration).

    --once: each job once; exit 1 when one failed. --status: what each job did last."""
    from connector.scheduler.worker import SpoolLocked, Worker, spool_lock, stop_on_signals

    config = load(config_path)
    if status:
        _print_status(config, config_path)
        return
    store = open_store(config, config_path, create=True)
    try:
        worker = Worker(config, store, mappings(config))
    except (ValueError, OSError) as exc:  # the asn_table: a malformed line, or unreadable
        raise fail(str(exc)) from None
    if not worker.jobs:
        raise fail(
            "nothing to run: configure scheduler.spool_dir, a partner's misp_pull, or a recipient's "
            "misp.url (with scheduler.misp_sync_interval)"
        )
    try:
        with spool_lock(config.scheduler.spool_dir), stop_on_signals(worker) as received:
            if once:
                if not worker.run_once():
                    raise fail("a job failed; `meldpunt run --status` says which and why", code=1)
                return
            jobs = ", ".join(f"{job.name} every {job.interval:g}s" for job in worker.jobs)
            out.print(f"meldpunt run: {jobs} (pid {os.getpid()})", markup=False, soft_wrap=True)
            worker.run_forever()
    except SpoolLocked as exc:
        raise fail(str(exc), code=1) from None
    name = {signal.SIGTERM: " on SIGTERM", signal.SIGINT: " on SIGINT"}.get(
        received[0] if received else 0, ""
    )
    out.print(f"meldpunt run: stopped{name}", markup=False)


def _print_status(config: Any, config_path: Any) -> None:
    from connector.scheduler.worker import waiting_files

    refuse_missing_store(config, config_path)
    store = open_store(config, config_path)
    states = store.job_states()
    table = Table("job", "ok", "last run", "last success", "last failure", "counts", "message", title="Jobs")
    for job, state in sorted(states.items()):
        counts = ", ".join(f"{k} {v}" for k, v in sorted((state.get("counts") or {}).items()))
        table.add_row(
            *plain_cells(
                job,
                "yes" if state.get("ok") else "no",
                _when(state.get("last_run")),
                _when(state.get("last_success")),
                _when(state.get("last_failure")),
                counts or "-",
                state.get("message") or "",
            )
        )
    if not states:
        out.print("no job has run yet", markup=False)
    else:
        print_table(out, table)
    spool_dir = config.scheduler.spool_dir
    if spool_dir is not None:
        files = Table("partner", "format", "waiting", "failed", title=f"Spool {spool_dir}")
        for partner, fmt, waiting, failed in waiting_files(spool_dir):
            files.add_row(*plain_cells(partner, fmt, waiting, failed))
        print_table(out, files)
