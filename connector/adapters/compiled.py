"""A mapping's field and evidence specs written out as one Python function each.

Why: a record used to be read through a closure per field (the look-up, the presence check and
the conversion each a call of their own), and at a million rows a day those calls were a third
of the mapping's time (bench/ingest.py). Written out as straight-line code, compiled once per
outcome of the classifier and input file, a row costs one call plus its conversions.

What the code does is what engine._finisher describes for one field: an absent or empty value
is None (RowRejected when the field is required), a present one goes through its converter,
whose ValueError becomes RowRejected naming the field and where it came from, the value
withheld where it may be personal data. Fields are read in the specs' order, so a record with
two faults is rejected for the first, as before.

Safety: mapping files are data from many hands. Nothing of them is written into the source
text: paths, names, messages and converters reach the function as entries of its namespace
(`K3`, `F2`), and the source holds only those generated names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from connector.adapters.converters import CONVERSION_ERRORS
from connector.adapters.paths import MISSING, lookup

Field = Callable[[dict[str, Any]], Any]
# (path, converter, reason when missing or None, reason for a conversion fault)
FlatPlan = tuple[str, Callable[[Any], Any] | None, str | None, Callable[[Exception], str]]


class _Source:
    """The lines of one generated function and the namespace its names refer to."""

    def __init__(self, empty: Callable[[Any], bool], rejected: type[Exception]) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "MISSING": MISSING,
            "CONVERSION_ERRORS": CONVERSION_ERRORS,
            "_empty": empty,
            "RowRejected": rejected,
            "lookup": lookup,
        }

    def constant(self, value: Any) -> str:
        name = f"K{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def read(self, path: str) -> None:
        """`raw` = the record's value at `path` (MISSING when absent)."""
        if "." in path:
            self.add(1, f"raw = lookup(data, {self.constant(path)})")
        else:  # a flat column: one dict access (a record's data is always a dict)
            self.add(1, f"raw = data.get({self.constant(path)}, MISSING)")

    def function(self, name: str, parameters: str) -> Callable[..., Any]:
        source = "\n".join([f"def {name}({parameters}):", *self.lines])
        code = compile(source, f"<mapping {name}>", "exec")
        exec(code, self.namespace)  # generated text: names only
        return self.namespace[name]  # type: ignore[no-any-return]


def field_reader(
    fields: Sequence[tuple[str, Any]],
    order: Sequence[str],
    *,
    flat: Callable[[str, Any], FlatPlan | None],
    closure: Callable[[str, Any], Field],
    empty: Callable[[Any], bool],
    rejected: type[Exception],
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """read(data) -> the values of `order`'s fields (None for those not in `fields`).

    `flat(name, spec)`, for a field read from one path: (the path, its converter or None, the
    reason to reject a record without it or None when it is optional, the reason for a
    conversion fault made from the converter's exception). None for any other field (a
    constant, a context value, several paths): that one is read by its engine closure,
    `closure(name, spec)`."""
    src = _Source(empty, rejected)
    local = {name: f"v{i}" for i, name in enumerate(order)}
    for name in order:
        if name not in dict(fields):
            src.add(1, f"{local[name]} = None")
    for name, spec in fields:
        target = local[name]
        plan = flat(name, spec)
        if plan is None:
            src.add(1, f"{target} = {src.constant(closure(name, spec))}(data)")
            continue
        path, convert, missing, fault = plan
        src.read(path)
        src.add(1, "if (raw.__class__ is str and raw) or not _empty(raw):")
        if convert is None:
            src.add(2, f"{target} = raw")
        else:
            src.add(2, "try:")
            src.add(3, f"{target} = {src.constant(convert)}(raw)")
            src.add(2, "except CONVERSION_ERRORS as exc:")
            src.add(3, f"raise RowRejected({src.constant(fault)}(exc)) from None")
        src.add(1, "else:")
        if missing is None:
            src.add(2, f"{target} = None")
        else:
            src.add(2, f"raise RowRejected({src.constant(missing)})")
    src.add(1, f"return ({', '.join(local[name] for name in order)},)")
    return src.function("read_fields", "data")


def evidence_reader(
    columns: Sequence[tuple[str, str, Callable[[Any], Any] | None]],
    *,
    fault: Callable[[str], str],
    rest: Callable[[dict[str, Any], list[str]], dict[str, Any]] | None,
    empty: Callable[[Any], bool],
    rejected: type[Exception],
) -> Callable[[dict[str, Any], list[str]], dict[str, Any]]:
    """evidence(data, secrets) -> the record's evidence: each (name, path, converter) column
    that is present and not empty (converted; a conversion fault rejects the record with
    `fault(name)`, which quotes no value), then `rest(data, secrets)` under "unmapped" when it
    gives anything, then the withheld credential columns' names."""
    src = _Source(empty, rejected)
    src.add(1, "evidence = {}")
    for name, path, convert in columns:
        src.read(path)
        src.add(1, "if (raw.__class__ is str and raw) or not _empty(raw):")
        if convert is not None:
            src.add(2, "try:")
            src.add(3, f"raw = {src.constant(convert)}(raw)")
            src.add(2, "except CONVERSION_ERRORS:")
            src.add(3, f"raise RowRejected({src.constant(fault(name))}) from None")
        src.add(2, f"evidence[{src.constant(name)}] = raw")
    if rest is not None:
        src.add(1, f"unmapped = {src.constant(rest)}(data, secrets)")
        src.add(1, "if unmapped:")
        src.add(2, "evidence['unmapped'] = unmapped")
    src.add(1, "if secrets:")
    src.add(2, "evidence['columns_withheld'] = secrets")
    src.add(1, "return evidence")
    return src.function("read_evidence", "data, secrets")
