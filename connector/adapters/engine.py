"""Applies a mapping to records: the only place where input fields become notification fields."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from connector.adapters.converters import CONVERTERS
from connector.adapters.mapping import FieldSpec, Mapping
from connector.adapters.readers import RawRecord, RowError, reader_with_options
from connector.adapters.rules import Classifier
from connector.notification import Classification, Notification, SourceRef

_MISSING = object()


class RowRejected(Exception):
    """The record is faulty: quarantine it with this reason."""


class RowSkipped(Exception):
    """The record is valid input but not a notification (a skip rule matched)."""


class InputError(Exception):
    """The whole input cannot be read as this format (no case file, unreadable file)."""


def lookup(data: Any, path: str) -> Any:
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _empty(value: Any) -> bool:
    return value is _MISSING or value is None or value == "" or value == []


@dataclass(frozen=True)
class FileContext:
    """Metadata for one input file (a DIVD case), loaded from its sidecar."""

    values: dict[str, Any]
    source: str | None = None


def load_context(mapping: Mapping, path: Path, explicit: Path | None = None) -> FileContext:
    if mapping.context is None:
        return FileContext({})
    prefix = path.name.split(".", 1)[0]
    sidecar = explicit or path.with_name(mapping.context.sidecar.format(prefix=prefix))
    try:
        values = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except OSError:
        where = (
            f"{sidecar} was not found"
            if explicit
            else f"its metadata file {sidecar.name} was not found beside it"
        )
        raise InputError(
            f"{path}: {where} (the {mapping.format} format needs it for TLP and case id)"
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{sidecar}: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise InputError(f"{sidecar}: must be a mapping of keys")
    missing = [k for k in mapping.context.required if _empty(values.get(k, _MISSING))]
    if missing:
        raise InputError(f"{sidecar}: required key(s) missing: {', '.join(missing)}")
    return FileContext(values, str(sidecar))


class MappedAdapter:
    """Turns the records of one input file into notifications, following one mapping."""

    def __init__(
        self,
        mapping: Mapping,
        partner: str,
        context: FileContext,
        file_label: str,
        default_tlp: str = "amber",
    ):
        self.mapping = mapping
        self.partner = partner
        self.context = context
        self.file_label = file_label
        self.default_tlp = default_tlp
        self._reader = reader_with_options(mapping.reader, mapping.reader_options.given())
        self._classify = Classifier(mapping)
        named = {p.split(".", 1)[0] for spec in mapping.field_specs() for p in spec.paths()}
        named |= {(p if isinstance(p, str) else p.source).split(".", 1)[0] for p in mapping.evidence.values()}
        self._not_unmapped = named | set(mapping.drop)

    def rows(self, stream: Any) -> Iterator[RawRecord | RowError]:
        return self._reader(stream)

    def notifications(self, record: RawRecord) -> list[Notification]:
        return [self.notification(record)]

    def notification(self, record: RawRecord) -> Notification:
        """The record as a notification; raises RowSkipped or RowRejected."""
        for rule in self.mapping.skip:
            if lookup(record.data, rule.field) in rule.equals:
                raise RowSkipped(rule.reason)
        c, specs = self._classify(record.data)
        values = {name: self._value(name, spec, record.data) for name, spec in specs.items()}
        for needed in ("identifier", "observed_at"):
            if values.get(needed) is None:
                raise RowRejected(f"{needed}: missing")
        if not any(values.get(k) for k in ("ip", "url", "email", "hostname")):
            raise RowRejected("no address, host name, URL or e-mail address: nothing to notify about")
        evidence = {}
        for name, spec in self.mapping.evidence.items():
            value = lookup(record.data, spec if isinstance(spec, str) else spec.source)
            if _empty(value):
                continue
            if not isinstance(spec, str):
                try:
                    value = CONVERTERS[spec.convert](value)
                except ValueError:
                    raise RowRejected(f"evidence {name}: not usable (value withheld)") from None
            evidence[name] = value
        if self.mapping.keep_unmapped:
            unmapped = {k: v for k, v in record.data.items() if k not in self._not_unmapped and not _empty(v)}
            if unmapped:
                evidence["unmapped"] = unmapped
        return Notification(
            partner=self.partner,
            feed=self.mapping.format,
            classification=Classification(c.taxonomy, c.type, values.pop("identifier")),
            observed_at=values.pop("observed_at"),
            tlp=values.pop("tlp", None) or self.default_tlp,
            evidence=evidence,
            source=SourceRef(self.file_label, record.line),
            direct_owner_only=self.mapping.direct_owner_only,
            discard_unrouted=self.mapping.discard_unrouted,
            **values,
        )

    def _value(self, name: str, spec: FieldSpec, data: dict[str, Any]) -> Any:
        raw: Any = _MISSING
        where = name
        if spec.value is not None:
            raw = spec.value
        elif spec.context is not None:
            raw = self.context.values.get(spec.context, _MISSING)
            where = f"case metadata {spec.context!r}"
        else:
            for path in spec.paths():
                candidate = lookup(data, path)
                if not _empty(candidate):
                    raw, where = candidate, path
                    break
        if _empty(raw):
            if spec.required:
                paths = " or ".join(spec.paths()) or where
                raise RowRejected(f"{name}: missing ({paths} absent or empty)")
            return None
        if spec.convert is None:
            return raw
        try:
            return CONVERTERS[spec.convert](raw)
        except ValueError as exc:
            # A value that is present but wrong is a fault even where the field is optional:
            # dropping it silently would turn a bad row into a misleading notification.
            detail = "not usable (value withheld: personal data)" if spec.secret else str(exc)
            raise RowRejected(f"{name}: {detail} (from {where})") from None
