"""Adapters written in code, for formats a mapping file cannot describe (nested reports,
MISP events): each registers a factory under its format name.

An adapter has the same two methods as the mapping-driven one (`engine.MappedAdapter`):
`rows(stream)` yields RawRecord or RowError, streaming; `notifications(record)` returns the
record's notifications (several for a MISP event) or raises RowRejected / RowSkipped. Feed
tables such adapters need (category maps) live in `mappings/tables/`, as data.

A record made of parts (a MISP event's attributes) can be good in part. Such an adapter also
has `outcome(record)` -> RecordOutcome: the notifications, plus the reason of every part that
is faulty (quarantined beside the good parts, counted as `attributes_quarantined`) and the
number of parts that are not notifications by design (counted as `attributes_skipped`).
`record_outcome` calls it where it exists; adapters without it need not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from connector.adapters.readers import RawRecord, RowError
from connector.notification import Notification

TABLES_DIR = Path(__file__).resolve().parents[2] / "mappings" / "tables"


class Adapter(Protocol):
    def rows(self, stream: Any) -> Iterator[RawRecord | RowError]: ...

    def notifications(self, record: RawRecord) -> list[Notification]: ...


@dataclass(frozen=True)
class AdapterContext:
    partner: str
    default_tlp: str
    file_label: str
    path: Path


@dataclass(slots=True)  # one per input record: a frozen dataclass's __init__ cost 0.4 µs more
class RecordOutcome:
    """A record's notifications, and what became of its other parts.

    `faults`: one reason per faulty part, naming the part but never its value (it may be
    personal data or another recipient's host). `skipped`: parts that are not notifications
    by design (context such as comments, hashes, ports).
    """

    notifications: list[Notification]
    faults: list[str] = field(default_factory=list)
    skipped: int = 0


def record_outcome(adapter: Adapter, record: RawRecord) -> RecordOutcome:
    """The record's outcome: the adapter's own `outcome` where it has one, else its notifications."""
    outcome = getattr(adapter, "outcome", None)
    if outcome is not None:
        return outcome(record)  # type: ignore[no-any-return]
    return RecordOutcome(adapter.notifications(record))


def read_warnings(adapter: Adapter) -> list[str]:
    """What the adapter's reader noticed about the input it read last, as sentences for the
    run's warnings (a mapped CSV feed: rows read with missing trailing cells empty, counted in
    `MappedAdapter.padded_rows`); [] for adapters that note nothing. Call it once the adapter's
    rows are all read: they are streamed."""
    warnings = getattr(adapter, "read_warnings", None)
    return list(warnings()) if warnings is not None else []


AdapterFactory = Callable[[AdapterContext], Adapter]
CODE_ADAPTERS: dict[str, AdapterFactory] = {}


@dataclass(frozen=True)
class AdapterInfo:
    """What the README's table of feeds says about a code adapter."""

    title: str
    reader: str
    classification: str


ADAPTER_INFO: dict[str, AdapterInfo] = {}


def register(fmt: str, info: AdapterInfo | None = None) -> Callable[[AdapterFactory], AdapterFactory]:
    def decorate(factory: AdapterFactory) -> AdapterFactory:
        CODE_ADAPTERS[fmt] = factory
        ADAPTER_INFO[fmt] = info or AdapterInfo(fmt, "code", "per record")
        return factory

    return decorate


def load_code_adapters() -> None:
    """Import the modules that register code adapters (kept explicit: no plugin discovery)."""
    for module in ADAPTER_MODULES:
        __import__(module)


# Each module registers itself with @register("format").
ADAPTER_MODULES: list[str] = ["connector.adapters.misp", "connector.adapters.xarf"]
