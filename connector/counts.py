"""An ingest run's counts: what became of every row, and where each notification went.

The names (COUNT_NAMES) are what `meldpunt ingest` prints and the run keeps in the store.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connector.routing import Decision


@dataclass
class RunSummary:
    run_id: int
    counts: Counter[str] = field(default_factory=Counter)
    per_recipient: Counter[str] = field(default_factory=Counter)
    suppressed_tlp: Counter[str] = field(default_factory=Counter)
    suppressed_category: Counter[str] = field(default_factory=Counter)
    input_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    committed: RunSummary | None = None  # a copy as of the last commit
    stamps: tuple[int, int] | None = None  # first and last stamp of the versions written

    def saw_stamp(self, stamp: int) -> None:
        self.stamps = (stamp, stamp) if self.stamps is None else (self.stamps[0], stamp)

    def checkpoint(self) -> None:
        """Everything counted so far is committed: remember it, for a run that fails later."""
        self.committed = None  # not copied into the copy
        self.committed = copy.deepcopy(self)

    def count_decision(self, decision: Decision) -> None:
        """One notification's routing outcome: exactly one of the outcome counts, plus per recipient."""
        if decision.match is None:
            self.counts["unrouted"] += 1
        elif decision.opted_out:
            self.counts["opted_out"] += 1
        elif decision.recipients:
            self.counts["routed"] += 1
        elif decision.suppressed_tlp:
            self.counts["suppressed_tlp"] += 1
        else:
            self.counts["suppressed_category"] += 1
        # Most decisions suppress nobody: Counter.update is not free, even for an empty list.
        if decision.suppressed_tlp:
            self.suppressed_tlp.update(decision.suppressed_tlp)
        if decision.suppressed_category:
            self.suppressed_category.update(decision.suppressed_category)

    @property
    def ok(self) -> bool:
        return not self.input_errors

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: self.counts.get(k, 0) for k in COUNT_NAMES},
            "per_recipient": dict(sorted(self.per_recipient.items())),
            "suppressed_tlp_per_recipient": dict(sorted(self.suppressed_tlp.items())),
            "suppressed_category_per_recipient": dict(sorted(self.suppressed_category.items())),
            "input_errors": self.input_errors,
            "warnings": self.warnings,
        }


COUNT_NAMES = (
    "read",
    "notifications",
    "new",
    "updated",
    "unchanged",
    "repeated",
    "quarantined",
    "padded",
    "skipped",
    "attributes_quarantined",
    "attributes_skipped",
    "routed",
    "unrouted",
    "suppressed_tlp",
    "suppressed_category",
    "opted_out",
    "discarded",
    "gone",
    "withheld",
)


def nothing_usable(counts: Mapping[str, int], fmt: str) -> str | None:
    """Why an ingest that ran to its end still failed: rows were quarantined and not one became
    a notification, which is what a wrong --format or a broken export looks like. Rows skipped
    by design (blank lines, informational findings) are no fault: an input of only those
    succeeds, as does an empty one."""
    bad = counts.get("quarantined", 0) + counts.get("attributes_quarantined", 0)
    if counts.get("notifications", 0) or not bad:
        return None
    return (
        f"no notification: all {bad} quarantined ({counts.get('read', 0)} row(s) read, "
        f"{counts.get('skipped', 0)} skipped); the reasons are listed above: is --format {fmt} "
        "right for this input?"
    )
