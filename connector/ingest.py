"""The ingest pipeline: input files -> notifications -> STIX -> routing -> store.

Streams: rows are read one at a time and written in batches, so memory does not grow with
the file. Every row ends up somewhere visible: a notification (new, updated or unchanged),
or a run row (quarantined with line and reason, or skipped with the rule's reason).
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from connector import feedback
from connector.adapters.engine import InputError, MappedAdapter, RowRejected, RowSkipped, load_context
from connector.adapters.mapping import Mapping, families, family_mapping, report_type_of
from connector.adapters.readers import RawRecord, RowError, readable
from connector.adapters.registry import (
    CODE_ADAPTERS,
    Adapter,
    AdapterContext,
    RecordOutcome,
    load_code_adapters,
    read_warnings,
    record_outcome,
)
from connector.claims import with_claims
from connector.collections import collection_rows, inbox_collection_id
from connector.config import Config
from connector.counts import RunSummary
from connector.notification import Notification
from connector.recording import BatchRecorder, RecordingCache
from connector.routing import Router
from connector.store import Store, Writer

log = logging.getLogger("meldpunt.ingest")

# Notifications built and written together (memory: a batch's objects are held until written)...
BATCH_SIZE = 5000
# ...and per commit: each commit writes every index page the batches touched, and the id
# indexes are touched all over, so committing less often is what keeps a growing store fast.
# But the write lock is held meanwhile (on SQLite every other writer waits, a TAXII request's
# audit row included), so a transaction is also committed once it has been open this long.
COMMIT_EVERY = 25_000
COMMIT_SECONDS = 2.0
STIX_FORMAT = "stix"  # built in: STIX needs no mapping
RAW_EXCERPT = 2000
REASON_MAX = 2000  # a quarantine reason is a sentence: one quoting a 10 MB value is cut here
Clock = Callable[[], datetime]


# The cyclic garbage collector during an ingest: CPython collects its youngest generation every
# 700 container allocations and, as those pile up, the whole heap. An ingest allocates a handful
# of containers per row (the record's dict, the notification, tuples for the store) that
# reference counting frees or that live for a batch, none of them in cycles; the collections
# found nothing to free and took a fifth of its time (bench/ingest.py: 14,000 -> 17,000 rows/s
# without them). While any ingest runs, the youngest generation is collected every
# INGEST_GC_THRESHOLD allocations instead: cyclic garbage is still collected, less often.
INGEST_GC_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_gc_users = 0
_gc_before: tuple[int, int, int] | None = None


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The collector's thresholds raised for the duration (see INGEST_GC_THRESHOLD); ingests in
    several threads at once share one raise, and the last to finish puts the thresholds back."""
    global _gc_users, _gc_before
    with _gc_lock:
        if _gc_users == 0:
            _gc_before = gc.get_threshold()
            gc.set_threshold(max(INGEST_GC_THRESHOLD, _gc_before[0]), *_gc_before[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_before is not None:
                gc.set_threshold(*_gc_before)
                _gc_before = None


class IngestError(Exception):
    """The run cannot start (unknown partner or format, a format the partner may not use)."""


def storage_problem(n: Notification) -> str | None:
    """Why the store cannot hold this notification (None when it can), naming no value: a NUL
    character in its identifier or observable (PostgreSQL text cannot hold one), evidence that
    cannot be serialised (nested deeper than orjson writes). Found here, the record is
    quarantined; found when the batch is written, it would fail every row of the batch."""
    return storable(n)[0]


def storable(n: Notification) -> tuple[str | None, str]:
    """(storage_problem, the evidence as the JSON the store keeps it in; "" with a problem):
    the JSON is made here once, and the batch carries it to the store."""
    for name, value in (("identifier", n.classification.identifier), ("observable", n.observable)):
        if "\x00" in value:
            return f"{name}: contains a NUL character", ""
    try:
        return None, orjson.dumps(n.evidence).decode()
    except orjson.JSONEncodeError as exc:
        return f"evidence: cannot be stored as JSON ({exc})", ""


class Ingestor:
    def __init__(
        self,
        config: Config,
        store: Store,
        mappings: dict[str, Mapping],
        clock: Clock | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        commit_every: int = COMMIT_EVERY,
        commit_seconds: float = COMMIT_SECONDS,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.store = store
        self.mappings = mappings
        self.router = Router(with_claims(config, store))  # configured + approved claims
        self.misp_group_by = {r.id: r.misp.group_by for r in config.recipients if r.misp is not None}
        self.cache = RecordingCache()
        load_code_adapters()
        self.clock = clock or (lambda: datetime.now(UTC))

    def run(
        self,
        partner: str,
        fmt: str,
        paths: Iterable[Path],
        *,
        context_file: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RunSummary:
        with _fewer_collections():
            return self._run(partner, fmt, paths, context_file=context_file, progress=progress)

    def _run(
        self,
        partner: str,
        fmt: str,
        paths: Iterable[Path],
        *,
        context_file: Path | None,
        progress: Callable[[int], None] | None,
    ) -> RunSummary:
        paths = list(paths)
        self._check(partner, fmt)
        self.store.sync_collections(collection_rows(self.config))  # deliveries need their numbers
        run_id = self.store.start_run(partner, fmt, [str(p) for p in paths])
        summary = RunSummary(run_id)
        try:
            for path in paths:
                if fmt == STIX_FORMAT:
                    self._ingest_stix_file(summary, partner, path)
                elif fmt in CODE_ADAPTERS:
                    context = AdapterContext(
                        partner, self.config.partner(partner).default_tlp, path.name, path
                    )
                    self._ingest_file(
                        summary, None, partner, path, context_file, progress, CODE_ADAPTERS[fmt](context)
                    )
                else:
                    mapping = self._mapping_for(fmt, path, summary)
                    self._ingest_file(summary, mapping, partner, path, context_file, progress)
                summary.checkpoint()  # every write of this input is committed
        except BaseException as exc:  # an interrupt (Ctrl-C) too: the run must not stay `running`
            # Ctrl-C inside a driver call leaves that call's cursor referenced from the
            # traceback's frames; SQLite keeps the connection (and its write lock) until the
            # cursor goes, so recording the run below would wait for the lock and fail.
            traceback.clear_frames(exc.__traceback__)
            # What the store holds: the counts as of the last commit (the rest was rolled back).
            committed = summary.committed or RunSummary(run_id)
            self.store.finish_run(
                run_id,
                "failed",
                committed.as_dict(),
                error=f"{exc!r}; counts are those committed before the failure, "
                "the rest was rolled back (ingest the input again to complete it)",
                stamps=committed.stamps,
            )
            raise
        status = "done" if summary.ok else "failed"
        self.store.finish_run(
            run_id,
            status,
            summary.as_dict(),
            error="; ".join(summary.input_errors) or None,
            stamps=summary.stamps,
        )
        log.info("ingest run finished", extra={"run": run_id, "status": status, **summary.counts})
        return summary

    def _mapping_for(self, fmt: str, path: Path, summary: RunSummary) -> Mapping:
        if fmt in self.mappings:
            return self.mappings[fmt]
        mapping, fallback = family_mapping(self.mappings, fmt, path.name)
        # (A name that gives no report type is an input error of its own: family_context.)
        if fallback and report_type_of(path.name, mapping.family) is not None:
            warning = (
                f"{path.name}: no {fmt} mapping for this report type; ingested through the "
                f"columns common to all {fmt} reports ({mapping.format})"
            )
            summary.warnings.append(warning)
            log.warning("report type without a mapping", extra={"input": path.name, "format": fmt})
        return mapping

    def _check(self, partner: str, fmt: str) -> None:
        """Refuse unknown partners and formats, and formats the partner may not deliver."""
        try:
            partner_cfg = self.config.partner(partner)
        except KeyError:
            known = ", ".join(p.id for p in self.config.partners) or "none configured"
            raise IngestError(f"unknown partner {partner!r} (known: {known})") from None
        formats = {*self.mappings, *families(self.mappings), *CODE_ADAPTERS, STIX_FORMAT}
        if fmt not in formats:
            raise IngestError(f"unknown format {fmt!r} (known: {', '.join(sorted(formats))})")
        if partner_cfg.formats and fmt not in partner_cfg.formats:
            raise IngestError(
                f"partner {partner!r} may not deliver format {fmt!r} "
                f"(allowed: {', '.join(partner_cfg.formats)})"
            )

    def _ingest_stix_file(self, summary: RunSummary, partner: str, path: Path) -> None:
        """A researcher's STIX 2.1 bundle (or envelope, or JSON list of objects): read object by
        object (connector/stix_stream.py: an object nested too deep is refused on its own, not
        the file), validated per object, routed by its observables."""
        from connector.stix_stream import StreamError, stream_objects
        from connector.submission import Submissions  # loads the STIX validator: only when needed

        message = None
        try:
            with path.open("rb") as handle:
                objects = stream_objects(handle, require_objects=True, allow_list=True)
                result = Submissions(self.config, self.store, self.router, self.clock).submit(
                    partner=partner, objects=objects, inbox_collection=inbox_collection_id(partner)
                )
        except OSError as exc:
            message = f"{path}: not a readable JSON document: {exc}"
        except StreamError as exc:
            if exc.kind == "json":
                message = f"{path}: not a readable JSON document: {exc}"
            else:
                message = (
                    f"{path}: expected a STIX bundle, a TAXII envelope or a JSON list of objects ({exc})"
                )
        if message is not None:
            summary.input_errors.append(message)
            self._record_rows(summary.run_id, [(path.name, 0, "input-error", message, None)])
            return
        summary.counts["read"] += len(result.outcomes)
        summary.counts["notifications"] += len(result.accepted)
        summary.counts["new"] += result.new
        summary.counts["updated"] += result.updated
        summary.counts["unchanged"] += result.unchanged
        summary.counts["quarantined"] += len(result.rejected)
        summary.counts["routed"] += result.routed
        summary.counts["unrouted"] += result.unrouted
        summary.counts["opted_out"] += result.opted_out
        summary.counts["withheld"] += result.withheld
        summary.per_recipient.update(result.per_recipient)
        summary.suppressed_tlp.update(result.suppressed_tlp)
        rows = [
            (path.name, o.index + 1, "quarantined", _named(o.id, o.message), None) for o in result.rejected
        ]
        # Accepted and stored, delivered to nobody: why is for the operator who runs the ingest.
        rows += [(path.name, index + 1, "withheld", why, None) for index, _id, why in result.withheld_objects]
        self._record_rows(summary.run_id, sorted(rows, key=lambda r: r[1]))

    def _ingest_file(
        self,
        summary: RunSummary,
        mapping: Mapping | None,
        partner: str,
        path: Path,
        context_file: Path | None,
        progress: Callable[[int], None] | None,
        code_adapter: Adapter | None = None,
    ) -> None:
        try:
            if code_adapter is not None:
                adapter: Adapter = code_adapter
            else:
                assert mapping is not None
                context = load_context(mapping, path, context_file)
                default_tlp = self.config.partner(partner).default_tlp
                adapter = MappedAdapter(mapping, partner, context, path.name, default_tlp)
            stream = path.open("rb")
        except (InputError, OSError) as exc:
            message = str(exc) if isinstance(exc, InputError) else f"{path}: {exc.strerror}"
            summary.input_errors.append(message)
            self._record_rows(summary.run_id, [(path.name, 0, "input-error", message, None)])
            log.error("input not ingested", extra={"input": str(path), "reason": message})
            return
        batch: list[tuple[Notification, str]] = []  # with its evidence's JSON
        rows: list[tuple[str, int, str, str, str | None]] = []
        keep_raw = (
            mapping.keep_raw_in_quarantine
            if mapping is not None
            else getattr(code_adapter, "keep_raw_in_quarantine", False)
        )
        transaction = _Transaction(self.store, summary, self.commit_every, self.commit_seconds)
        try:
            with stream:
                for row in adapter.rows(stream):
                    summary.counts["read"] += 1
                    self._take(summary, adapter, row, path.name, keep_raw, batch, rows)
                    if len(batch) >= self.batch_size:
                        self._flush(summary, batch, transaction.writer())
                        transaction.wrote(len(batch))
                        batch = []
                        if progress:
                            progress(stream.tell())
                    if len(rows) >= self.batch_size:
                        self._record_rows(summary.run_id, rows, transaction.writer())
                        transaction.wrote(len(rows))  # a file of faults must not hold the lock either
                        rows = []
                if batch:
                    self._flush(summary, batch, transaction.writer())
                if rows:
                    self._record_rows(summary.run_id, rows, transaction.writer())
            summary.counts["padded"] += getattr(adapter, "padded_rows", 0)
            summary.warnings += [f"{path.name}: {said}" for said in read_warnings(adapter)]
        except BaseException:
            transaction.abort()
            raise
        transaction.commit()
        self._mark_gone(summary, mapping)
        if progress:
            progress(path.stat().st_size)

    def _mark_gone(self, summary: RunSummary, mapping: Mapping | None) -> None:
        """An input that covers its case (feed): what it no longer reports is gone."""
        seen, earliest = self.cache.kinds_seen, self.cache.earliest
        self.cache.kinds_seen, self.cache.earliest = set(), None
        if mapping is None or mapping.coverage is None or earliest is None:
            return
        summary.counts["gone"] += feedback.mark_gone(
            self.store, kinds=seen, run_id=summary.run_id, since=earliest
        )

    @staticmethod
    def _take(
        summary: RunSummary,
        adapter: Adapter,
        row: RawRecord | RowError,
        label: str,
        keep_raw: bool,
        batch: list[tuple[Notification, str]],
        rows: list[tuple[str, int, str, str, str | None]],
    ) -> None:
        """One input row: its notifications into the batch, or a run row saying why not."""
        try:
            if isinstance(row, RowError):
                if row.unreadable:  # an input error, as a file that cannot be opened is
                    summary.input_errors.append(f"{label}: {row.reason}")
                    rows.append((label, row.line, "input-error", row.reason, None))
                    return
                if row.skipped:
                    raise RowSkipped(row.reason)
                raise RowRejected(row.reason)
            outcome = record_outcome(adapter, row)
            kept, faults = _storable(outcome.notifications)
            batch += kept
            if faults:
                outcome = RecordOutcome([n for n, _ in kept], [*outcome.faults, *faults], outcome.skipped)
            # Faulty parts of a good record (a MISP event's attributes): quarantined beside it,
            # never with the raw record (it holds their values).
            summary.counts["attributes_quarantined"] += len(outcome.faults)
            summary.counts["attributes_skipped"] += outcome.skipped
            rows += [(label, row.line, "quarantined", fault, None) for fault in outcome.faults]
        except RowSkipped as skip:
            summary.counts["skipped"] += 1
            rows.append((label, row.line, "skipped", str(skip), None))
        except RowRejected as bad:
            summary.counts["quarantined"] += 1
            raw = row.raw[:RAW_EXCERPT] if keep_raw else None
            rows.append((label, row.line, "quarantined", str(bad), raw))

    def _record_rows(
        self, run_id: int, rows: list[tuple[str, int, str, str, str | None]], writer: Writer | None = None
    ) -> None:
        if not rows:
            return
        values = [
            (
                run_id,
                f,
                line,
                kind,
                _storable_text(reason, REASON_MAX),
                None if raw is None else _storable_text(raw, RAW_EXCERPT),
            )
            for f, line, kind, reason, raw in rows
        ]
        self.store.record_rows(values, writer)

    def _flush(self, summary: RunSummary, batch: list[tuple[Notification, str]], writer: Writer) -> None:
        summary.counts["notifications"] += len(batch)
        BatchRecorder(
            config=self.config,
            store=self.store,
            router=self.router,
            writer=writer,
            summary=summary,
            cache=self.cache,
            now=self.clock(),
            misp_group_by=self.misp_group_by,
        ).record(batch)


def _storable_text(text: str, limit: int) -> str:
    """A run row's text as the store can hold it: at most `limit` characters, NUL written as
    `\\x00` (PostgreSQL text cannot hold a NUL, and refusing the row would fail the run over
    the very fault it records), and any byte a reader could not decode as U+FFFD."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return readable(text).replace("\x00", "\\x00")


def _storable(notifications: list[Notification]) -> tuple[list[tuple[Notification, str]], list[str]]:
    """The notifications the store can hold, each with its evidence's JSON, and a fault for each
    other one; RowRejected when none of them is storable (the record is then quarantined
    whole, like any faulty record)."""
    if len(notifications) == 1:  # most records: one notification, most often storable
        problem, body = storable(notifications[0])
        if problem is None:
            return [(notifications[0], body)], []
        raise RowRejected(problem)
    checked = [(n, *storable(n)) for n in notifications]
    bad = [problem for _n, problem, _body in checked if problem is not None]
    if not bad:
        return [(n, body) for n, _problem, body in checked], []
    if len(bad) == len(notifications):
        raise RowRejected("; ".join(dict.fromkeys(bad)))
    faults = [f"one of the record's notifications not made: {problem}" for problem in bad]
    return [(n, body) for n, problem, body in checked if problem is None], faults


# A large ingest refreshes the store's statistics (PostgreSQL) once its first rows are in, and
# then every so many rows: the planner must not go on taking a growing table for a small one.
ANALYSE_FIRST = 20_000
ANALYSE_EVERY = 200_000


def _named(object_id: str | None, message: str) -> str:
    """A rejected object's reason, its id in front once (the validator's messages may start
    with it already)."""
    name = object_id or "object"
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


class _Transaction:
    """One write transaction held open across several batches. Committed after `limit`
    notifications and run rows, once open `seconds`, at the end of the input, or rolled back
    with it on an error."""

    def __init__(self, store: Store, summary: RunSummary, limit: int, seconds: float) -> None:
        self._store = store
        self._summary = summary
        self._limit = limit
        self._seconds = seconds
        self._context: AbstractContextManager[Writer] | None = None
        self._writer: Writer | None = None
        self._pending = 0
        self._opened = 0.0
        self._unanalysed = 0  # rows committed since the store last refreshed its statistics
        self._analyse_at = ANALYSE_FIRST

    def writer(self) -> Writer:
        if self._writer is None:
            self._context = self._store.writing()
            self._writer = self._context.__enter__()
            self._opened = time.monotonic()
        return self._writer

    def wrote(self, rows: int) -> None:
        self._pending += rows
        if self._pending >= self._limit or time.monotonic() - self._opened >= self._seconds:
            self.commit()

    def commit(self) -> None:
        pending = self._pending
        if self._close(None, None, None):
            self._summary.checkpoint()
            self._unanalysed += pending
            if self._unanalysed >= self._analyse_at:
                self._store.refresh_statistics()
                self._unanalysed, self._analyse_at = 0, ANALYSE_EVERY

    def abort(self) -> None:
        self._close(*sys.exc_info())

    def _close(self, *exc_info: Any) -> bool:
        context, self._context, self._writer, self._pending = self._context, None, None, 0
        if context is None:
            return False
        context.__exit__(*exc_info)  # commits, or rolls back when given the exception
        return True
