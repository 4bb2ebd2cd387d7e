"""Recipients from CSV: how an operator brings in thousands of organisations at once.

Columns (header required, order free): id, name, kind, parent, deliver_to_parent, max_tlp,
categories, networks, asns, domains. Multi-valued cells separate values by spaces, `;` or `|`.
Every row is validated on its own (the problems name file and line), then together with the
rest of the configuration (duplicate ids, double claims, unknown parents).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

# A recipient's checks on its own (RecipientConfig.model_validate): given by the caller, since
# the configuration builds on this module (its `recipient_files`), not the other way round.
Validator = Callable[[dict[str, Any]], object]

COLUMNS = (
    "id",
    "name",
    "kind",
    "parent",
    "deliver_to_parent",
    "max_tlp",
    "categories",
    "networks",
    "asns",
    "domains",
)
REQUIRED = ("id", "name", "kind")
_SPLIT = re.compile(r"[\s;|,]+")
_TRUE, _FALSE = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}


def _values(cell: str | None) -> list[str]:
    return [v for v in _SPLIT.split(cell or "") if v]


def row_to_recipient(row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as the dict shape the YAML `recipients[]` entries have."""
    out: dict[str, Any] = {k: (row.get(k) or "").strip() for k in ("id", "name", "kind")}
    if (row.get("parent") or "").strip():
        out["parent"] = row["parent"].strip()
    flag = (row.get("deliver_to_parent") or "").strip().lower()
    if flag:
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"deliver_to_parent: {flag!r} is not true or false")
        out["deliver_to_parent"] = flag in _TRUE
    if (row.get("max_tlp") or "").strip():
        out["max_tlp"] = row["max_tlp"].strip().lower()
    if _values(row.get("categories")):
        out["categories"] = _values(row.get("categories"))
    constituency: dict[str, Any] = {}
    for key in ("networks", "domains"):
        if _values(row.get(key)):
            constituency[key] = _values(row.get(key))
    asns = _values(row.get("asns"))
    if asns:
        try:
            constituency["asns"] = [int(a.upper().removeprefix("AS")) for a in asns]
        except ValueError:
            raise ValueError(f"asns: {row.get('asns')!r} are not AS numbers") from None
    out["constituency"] = constituency
    return out


def read_recipient_rows(path: Path, validate: Validator) -> tuple[list[dict[str, Any]], list[str]]:
    """(recipients as config dicts, problems as 'file:line: ...'); rows `validate` refuses (with
    a ValueError) are not returned."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc.strerror}"]
    with handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            unknown = [c for c in header if c not in COLUMNS]
            missing = [c for c in REQUIRED if c not in header]
            if unknown or missing:
                detail = []
                if unknown:
                    detail.append(f"unknown column(s) {unknown}")
                if missing:
                    detail.append(f"missing column(s) {missing}")
                return [], [f"{path}:1: " + "; ".join(detail) + f" (columns: {', '.join(COLUMNS)})"]
            for row in reader:
                line = reader.line_num
                try:
                    candidate = row_to_recipient(row)
                    validate(candidate)
                except ValueError as exc:
                    problems.extend(_describe(path, line, exc))
                    continue
                rows.append(candidate)
        except (csv.Error, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not a readable CSV file: {exc}")
    return rows, problems


def _describe(path: Path, line: int, exc: ValueError) -> list[str]:
    if isinstance(exc, ValidationError):
        out = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"] if p not in ("IPv4Network", "IPv6Network"))
            out.append(f"{path}:{line}: {key}: " + str(e["msg"]).removeprefix("Value error, "))
        return out
    return [f"{path}:{line}: {exc}"]


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Add recipients to a CSV file, rewriting it with the full header (its rows are kept)."""
    existing: list[dict[str, str]] = []
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            existing = list(csv.DictReader(handle))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for old in existing:
            writer.writerow({k: old.get(k) or "" for k in COLUMNS})
        for r in rows:
            writer.writerow(_csv_row(r))
    temporary.replace(path)  # never a half-written constituency file


def _csv_row(r: dict[str, Any]) -> dict[str, str]:
    c = r.get("constituency", {})
    return {
        "id": r["id"],
        "name": r["name"],
        "kind": r["kind"],
        "parent": r.get("parent", ""),
        "deliver_to_parent": {True: "true", False: "false"}.get(r.get("deliver_to_parent"), ""),
        "max_tlp": r.get("max_tlp", ""),
        "categories": " ".join(r.get("categories", [])),
        "networks": " ".join(str(n) for n in c.get("networks", [])),
        "asns": " ".join(str(a) for a in c.get("asns", [])),
        "domains": " ".join(c.get("domains", [])),
    }
