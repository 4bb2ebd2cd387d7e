"""`meldpunt run`: the recurring work as one long-running process, each job on its interval.

Jobs: `spool` (pick up dropped files, connector/scheduler/spool.py), `misp-pull:PARTNER` (a
partner's MISP instance, connector/scheduler/pull.py) and `misp-sync` (push the MISP outbox,
as `meldpunt misp sync` does). Each job's last run, success and failure are kept in the store
(connector/store/jobs.py), so `meldpunt run --status` and the server's /metrics show them.

A job that fails (the database or a MISP down) is recorded as failed and tried again at its
next interval; the others go on. SIGTERM (or Ctrl-C) stops the worker: a job in progress is
ended at its next safe point (an ingest between two reads, the run recorded as failed and its
file left in the spool to be ingested again, which completes it), and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.adapters.mapping import Mapping
from connector.channels.misp_sync import MispSync, recipients_without_key
from connector.config import Config, PartnerConfig
from connector.counts import nothing_usable
from connector.ingest import IngestError, Ingestor
from connector.scheduler import pull, spool
from connector.store import Store

log = logging.getLogger("meldpunt.scheduler")

LOCK_NAME = ".meldpunt-run.lock"
MESSAGE_MAX = 500


class Stopping(Exception):
    """Raised inside a job when the worker was asked to stop."""


class SpoolLocked(Exception):
    """Another `meldpunt run` holds the spool."""


@dataclass
class Job:
    name: str
    interval: float
    work: Callable[[], tuple[dict[str, Any], str | None]]  # (counts, problem or None)
    due: float = 0.0


class Worker:
    def __init__(
        self,
        config: Config,
        store: Store,
        mappings: dict[str, Mapping],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.mappings = mappings
        self.clock = clock
        self.stop = threading.Event()
        self.ingestor = Ingestor(config, store, mappings)
        self.jobs = self._jobs()

    # --- the jobs --------------------------------------------------------------------------------

    def _jobs(self) -> list[Job]:
        scheduler = self.config.scheduler
        jobs = []
        if scheduler.spool_dir is not None:
            jobs.append(Job("spool", scheduler.spool_interval, self.spool))
        for partner in self.config.partners:
            if partner.misp_pull is not None:
                jobs.append(
                    Job(
                        f"misp-pull:{partner.id}",
                        partner.misp_pull.interval,
                        lambda p=partner: self.pull(p),
                    )
                )
        pushing = any(r.misp is not None and r.misp.url for r in self.config.recipients)
        if scheduler.misp_sync_interval is not None and pushing:
            jobs.append(Job("misp-sync", scheduler.misp_sync_interval, self.sync))
        return jobs

    def spool(self) -> tuple[dict[str, Any], str | None]:
        assert self.config.scheduler.spool_dir is not None
        outcome = spool.pass_over(
            self.config.scheduler.spool_dir,
            formats=self._folder_problem,
            mapping_of=self.mappings.get,
            ingest=self._ingest,
            settle_seconds=self.config.scheduler.settle_seconds,
            keep_days=self.config.scheduler.keep_done_days,
            stopping=self.stop.is_set,
            now=self.clock,
        )
        for problem in outcome.problems:
            log.error("spool folder names nothing this deployment takes", extra={"problem": problem})
        counts = {
            "done": len(outcome.done),
            "failed": len(outcome.failed),
            "waiting": len(outcome.deferred),
            "deleted": outcome.deleted,
        }
        return counts, "; ".join(outcome.problems) or None

    def pull(self, partner: PartnerConfig) -> tuple[dict[str, Any], str | None]:
        assert partner.misp_pull is not None and self.config.scheduler.spool_dir is not None
        began = self.clock()
        previous = self.store.job_state(f"misp-pull:{partner.id}") or {}
        start = pull.since(partner.misp_pull, previous.get("pulled_from_start"), began)
        events = pull.events_since(partner, start)
        counts: dict[str, Any] = {"events": len(events), "pulled_from_start": began}
        if events:
            folder = self.config.scheduler.spool_dir / partner.id / pull.MISP_FORMAT
            path = pull.write_events(folder, events, f"pulled-{spool.stamp(began)}.jsonl")
            run_id, failure = self._ingest(partner.id, pull.MISP_FORMAT, path)
            spool.file_away(path, run_id, failure)
            counts["run"] = run_id
            if failure is not None:
                return counts, f"the pulled events were not ingested: {failure}"
        return counts, None

    def sync(self) -> tuple[dict[str, Any], str | None]:
        keyless = recipients_without_key(self.config, None)
        sync = MispSync(self.config, self.store)
        counts: dict[str, Any] = {}
        for r in self.config.recipients:
            if r.misp is None or not r.misp.url or r.id in keyless:
                continue
            if self.stop.is_set():
                break
            for outcome, n in sync.run(r.id).counts.items():
                counts[outcome] = counts.get(outcome, 0) + n
        waiting = {rid for rid in keyless if self.store.misp_due(rid, include_later=True)}
        problem = None
        if waiting:
            named = ", ".join(f"{rid} ({keyless[rid]})" for rid in sorted(waiting))
            problem = f"MISP deliveries left queued, their API key is not set: {named}"
        return counts, problem

    # --- ingest ------------------------------------------------------------------------------------

    def _folder_problem(self, partner: str, fmt: str) -> str | None:
        try:
            self.ingestor._check(partner, fmt)
        except IngestError as exc:
            return str(exc)
        return None

    def _ingest(self, partner: str, fmt: str, path: Path) -> tuple[int, str | None]:
        def progress(_position: int) -> None:
            if self.stop.is_set():
                raise Stopping("the worker was asked to stop")

        summary = self.ingestor.run(partner, fmt, [path], progress=progress)
        if not summary.ok:
            return summary.run_id, "; ".join(summary.input_errors) or "the run failed"
        return summary.run_id, nothing_usable(summary.counts, fmt)

    # --- running ---------------------------------------------------------------------------------

    def run_job(self, job: Job) -> bool:
        """Run one job now and record how it went; True when it succeeded."""
        began = self.clock()
        state: dict[str, Any] = {}
        try:
            counts, problem = job.work()
        except Stopping:
            log.info("job stopped", extra={"job": job.name})
            return False
        except Exception as exc:
            counts, problem = {}, f"{type(exc).__name__}: {exc}"
            log.error("job failed", extra={"job": job.name}, exc_info=True)
        ended = self.clock()
        try:
            state = self.store.job_state(job.name) or {}
            state.update(last_run=began, last_duration=round(ended - began, 3), ok=problem is None)
            state["counts"] = {k: v for k, v in counts.items() if k != "pulled_from_start"}
            if problem is None:
                state.update(last_success=ended, message=None)
                if "pulled_from_start" in counts:
                    state["pulled_from_start"] = counts["pulled_from_start"]
            else:
                state.update(last_failure=ended, message=problem[:MESSAGE_MAX])
            self.store.record_job(job.name, state)
        except Exception:
            log.error("job state not recorded", extra={"job": job.name}, exc_info=True)
        if problem is None:
            log.info("job done", extra={"job": job.name, **state.get("counts", {})})
        return problem is None

    def run_once(self) -> bool:
        """Every job once, in order; True when all succeeded."""
        results = [self.run_job(job) for job in self.jobs if not self.stop.is_set()]
        return all(results)

    def run_forever(self) -> None:
        """Each job at its interval until stop is set (SIGTERM, Ctrl-C)."""
        while not self.stop.is_set():
            now = self.clock()
            for job in self.jobs:
                if self.stop.is_set():
                    return
                if job.due <= now:
                    self.run_job(job)
                    job.due = self.clock() + job.interval
            nearest = min((job.due for job in self.jobs), default=self.clock() + 60)
            self.stop.wait(max(0.05, nearest - self.clock()))


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[list[int]]:
    """SIGTERM and SIGINT set the worker's stop; yields the signals received."""
    received: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        received.append(signum)
        worker.stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def spool_lock(spool_dir: Path | None) -> Iterator[None]:
    """One `meldpunt run` per spool: an exclusive lock on a file in it, for as long as it runs
    (released by the system when the process ends, however it ends)."""
    if spool_dir is None:
        yield
        return
    import fcntl

    with (spool_dir / LOCK_NAME).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolLocked(
                f"another `meldpunt run` is using the spool {spool_dir} (it holds {LOCK_NAME}); "
                "run one per spool directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def waiting_files(spool_dir: Path) -> list[tuple[str, str, int, int]]:
    """(partner, format, files waiting, files in failed/) per spool folder."""
    out = []
    for partner, fmt, folder in spool.folders(spool_dir):
        waiting = sum(1 for p in folder.iterdir() if spool.is_candidate(p))
        failed_dir = folder / spool.FAILED
        failed = (
            sum(1 for p in failed_dir.iterdir() if not p.name.endswith(spool.REASON_SUFFIX))
            if failed_dir.is_dir()
            else 0
        )
        out.append((partner, fmt, waiting, failed))
    return out
