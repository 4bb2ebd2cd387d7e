"""Pick-up of files partners drop in the spool: `spool_dir/PARTNER/FORMAT/NAME`.

A file is picked up once it is finished. Two conventions say so, either is enough:
- upload as `NAME.part` (or any name starting with `.`) and rename it to NAME when complete
  (a rename within one file system is atomic): such names are never picked up;
- or just write it: a file is left alone until it has been unchanged (modification time) for
  `scheduler.settle_seconds`, so a file still being written (an upload, a copy) is not read
  half-way.

Each input is ingested as one run (`meldpunt runs list` shows it), then moved, by an atomic
rename within its folder, to `done/` (ingested, some rows may be quarantined) or `failed/`
(unreadable, or every row quarantined: a wrong format or a broken export), with the reason in
`failed/NAME.reason.txt`. A run the store could not take (the database down) leaves the file
where it is, to be tried again: nothing is lost. Sidecar files (a DIVD case file beside its
scan) are not inputs: they move with the input they describe. Files in done/ and failed/
older than `scheduler.keep_done_days` are deleted: they hold partners' raw data.

One `meldpunt run` per spool directory: it holds a lock file there (connector/scheduler/worker.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from connector.adapters.mapping import Mapping

log = logging.getLogger("meldpunt.scheduler")

DONE = "done"
FAILED = "failed"
REASON_SUFFIX = ".reason.txt"
_SKIPPED_SUFFIXES = (".part", ".tmp", REASON_SUFFIX)


def file_away(path: Path, run_id: int, failure: str | None) -> Path:
    """An input after its run: to done/ beside it, or to failed/ with the reason in
    NAME.reason.txt; named run<ID>-NAME. Returns where it went."""
    if failure is None:
        return move(path, path.parent / DONE, f"run{run_id}")
    moved = move(path, path.parent / FAILED, f"run{run_id}")
    moved.with_name(moved.name + REASON_SUFFIX).write_text(failure + "\n", encoding="utf-8")
    return moved


@dataclass
class SpoolOutcome:
    """What one pass over the spool did."""

    done: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    deferred: list[tuple[Path, str]] = field(default_factory=list)  # left in place, why
    problems: list[str] = field(default_factory=list)  # folders that name nothing
    deleted: int = 0


def is_candidate(path: Path) -> bool:
    """A name that may be an input: not hidden, not a partial upload, not our own note."""
    name = path.name
    return not name.startswith(".") and not name.endswith(_SKIPPED_SUFFIXES) and path.is_file()


def settled(path: Path, settle_seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= settle_seconds
    except FileNotFoundError:
        return False


def sidecar_names(mapping: Mapping | None, inputs: list[Path]) -> dict[Path, list[Path]]:
    """Input -> the files beside it that are its sidecars (case metadata), per the mapping."""
    if mapping is None or mapping.context is None or not mapping.context.sidecars():
        return {}
    out: dict[Path, list[Path]] = {}
    for path in inputs:
        prefix = path.name.split(".", 1)[0]
        names = [path.with_name(p.format(prefix=prefix)) for p in mapping.context.sidecars()]
        found = [n for n in names if n != path and n.is_file()]
        if found:
            out[path] = found
    return out


def folders(spool: Path) -> Iterator[tuple[str, str, Path]]:
    """(partner, format, folder) of every spool folder, in name order."""
    for partner_dir in sorted(p for p in spool.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for format_dir in sorted(
            p for p in partner_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            yield partner_dir.name, format_dir.name, format_dir


def move(path: Path, folder: Path, prefix: str) -> Path:
    """Rename `path` into `folder` (created; in the same file system: atomic), as PREFIX-NAME,
    never over another file."""
    folder.mkdir(exist_ok=True)
    target = folder / f"{prefix}-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{prefix}.{n}-{path.name}"
    os.replace(path, target)
    return target


def stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def delete_old(folder: Path, keep_days: int, now: float) -> int:
    """Files in done/ and failed/ older than keep_days: deleted; how many."""
    deleted = 0
    for sub in (folder / DONE, folder / FAILED):
        if not sub.is_dir():
            continue
        for path in sub.iterdir():
            try:
                if path.is_file() and now - path.stat().st_mtime > keep_days * 86400:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue
    return deleted


Ingest = Callable[[str, str, Path], tuple[int, str | None]]
"""(partner, format, input) -> (run id, why it failed or None); raises when the store could not
take it (the file then stays where it is)."""


def pass_over(
    spool: Path,
    *,
    formats: Callable[[str, str], str | None],
    mapping_of: Callable[[str], Mapping | None],
    ingest: Ingest,
    settle_seconds: float,
    keep_days: int,
    stopping: Callable[[], bool],
    now: Callable[[], float] = time.time,
) -> SpoolOutcome:
    """One pass: every settled input of every folder ingested and moved. `formats(partner,
    format)` says why a folder names nothing this deployment takes (None: it does)."""
    outcome = SpoolOutcome()
    for partner, fmt, folder in folders(spool):
        problem = formats(partner, fmt)
        if problem is not None:
            if any(is_candidate(p) for p in folder.iterdir()):
                outcome.problems.append(f"{folder}: {problem}; its files are left where they are")
            continue
        outcome.deleted += delete_old(folder, keep_days, now())
        _folder(partner, fmt, folder, mapping_of(fmt), ingest, settle_seconds, stopping, now, outcome)
        if stopping():
            break
    return outcome


def _folder(
    partner: str,
    fmt: str,
    folder: Path,
    mapping: Mapping | None,
    ingest: Ingest,
    settle_seconds: float,
    stopping: Callable[[], bool],
    now: Callable[[], float],
    outcome: SpoolOutcome,
) -> None:
    candidates = sorted(p for p in folder.iterdir() if is_candidate(p))
    sidecars = sidecar_names(mapping, candidates)
    sidecar_set = {s for found in sidecars.values() for s in found}
    finished: dict[Path, bool] = {}  # input -> ingested (True) or failed (False)
    for path in (p for p in candidates if p not in sidecar_set):
        if stopping():
            break
        if not all(settled(p, settle_seconds, now()) for p in [path, *sidecars.get(path, [])]):
            outcome.deferred.append((path, "still being written (changed less than settle_seconds ago)"))
            continue
        run_id, failure = ingest(partner, fmt, path)
        moved = file_away(path, run_id, failure)
        (outcome.done if failure is None else outcome.failed).append(moved)
        finished[path] = failure is None
    _move_sidecars(folder, sidecars, finished, now())


def _move_sidecars(
    folder: Path, sidecars: dict[Path, list[Path]], finished: dict[Path, bool], now: float
) -> None:
    """Sidecars go with their inputs: to done/ when one of the inputs they describe was
    ingested, else to failed/; one several inputs share, once the last of them is through."""
    users: dict[Path, list[Path]] = {}
    for input_path, own in sidecars.items():
        for sidecar in own:
            users.setdefault(sidecar, []).append(input_path)
    for sidecar, inputs in users.items():
        if not sidecar.exists() or any(i not in finished for i in inputs):
            continue
        ok = any(finished[i] for i in inputs)
        move(sidecar, folder / (DONE if ok else FAILED), stamp(now))
