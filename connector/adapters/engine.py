"""Applies a mapping to records: the only place where input fields become notification fields."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from connector.adapters.compiled import FlatPlan, evidence_reader, field_reader
from connector.adapters.converters import CONVERSION_ERRORS, CONVERTERS
from connector.adapters.mapping import TARGET_FIELDS, FieldSpec, Mapping, report_type_of, secret_column
from connector.adapters.paths import MISSING, lookup
from connector.adapters.readers import RawRecord, ReadStats, RowError, reader_with_options
from connector.adapters.rules import Classifier
from connector.notification import Classification, Notification, SourceRef


class RowRejected(Exception):
    """The record is faulty: quarantine it with this reason."""


class RowSkipped(Exception):
    """The record is valid input but not a notification (a skip rule matched)."""


class InputError(Exception):
    """The whole input cannot be read as this format (no case file, unreadable file)."""


def _empty(value: Any) -> bool:
    return value is MISSING or value is None or value == "" or value == []


@dataclass(frozen=True)
class FileContext:
    """Metadata for one input file (a DIVD case), loaded from its sidecar."""

    values: dict[str, Any]
    source: str | None = None


def load_context(mapping: Mapping, path: Path, explicit: Path | None = None) -> FileContext:
    """The file's context: what its family and its name give (family_context), and the values
    of its sidecar file where the mapping declares one (`explicit`: the one the operator
    named), completed from the sidecar's name (ContextSpec.from_file_name)."""
    facts = family_context(mapping, path)
    spec = mapping.context
    if spec is None:
        return FileContext(facts)
    sidecar = explicit or _sidecar_beside(mapping, path)
    try:
        values = yaml.safe_load(front_matter(sidecar.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(
            f"{path}: {sidecar} was not found (the {mapping.format} format needs its case metadata)"
        ) from None
    except OSError as exc:  # a directory, no permission
        raise InputError(f"{path}: its case metadata {sidecar} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{sidecar}: not valid UTF-8") from None
    except yaml.YAMLError as exc:
        # On one line, where it is (line, column) included: a run's table shows one line.
        said = " ".join(str(exc).replace('in "<unicode string>", ', "").split())
        raise InputError(f"{sidecar}: not valid YAML: {said}") from None
    if not isinstance(values, dict):
        raise InputError(f"{sidecar}: must be a mapping of keys")
    for key, pattern in spec.from_file_name.items():
        match = re.match(pattern, sidecar.name)
        if _empty(values.get(key, MISSING)) and match:
            values[key] = match.group(1 if match.re.groups else 0)
    missing = [k for k in spec.required if _empty(values.get(k, MISSING))]
    if missing:
        named = " (not in the file, nor in its name)" if set(missing) & set(spec.from_file_name) else ""
        raise InputError(f"{sidecar}: required key(s) missing: {', '.join(missing)}{named}")
    return FileContext({**facts, **values}, str(sidecar))


def _sidecar_beside(mapping: Mapping, path: Path) -> Path:
    """The first of the mapping's sidecar names that exists beside the input; InputError
    naming them when none does."""
    assert mapping.context is not None
    prefix = path.name.split(".", 1)[0]
    candidates = [path.with_name(p.format(prefix=prefix)) for p in mapping.context.sidecars()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    others = f" (nor {', '.join(c.name for c in candidates[1:])})" if len(candidates) > 1 else ""
    raise InputError(
        f"{path}: its metadata file {candidates[0].name} was not found beside it{others} "
        f"(the {mapping.format} format needs its case metadata; --case FILE names one elsewhere)"
    )


def front_matter(text: str) -> str:
    """The YAML front matter of a Markdown file (between its first two `---` lines, as Jekyll
    and DIVD's public case files have it); any other text whole (a YAML file)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return text
    for number, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return "".join(lines[1:number])
    return text


def family_context(mapping: Mapping, path: Path) -> dict[str, Any]:
    """`report_type` for a file of a report family (mapping.FAMILY_CONTEXT): the mapping's own,
    or for the family's fallback the one the file's name gives. The fallback's notifications
    are told apart by it (their identifier): without it, reports of two types about the same
    host and port on one day (scan_ldap_tcp, scan_ldap_udp) became one notification. A
    fallback file whose name gives no report type cannot be read: InputError."""
    if mapping.family is None:
        return {}
    if mapping.report_type != "*":
        return {"report_type": mapping.report_type}
    found = report_type_of(path.name, mapping.family)
    if found is None:
        raise InputError(
            f"{path}: the file name gives no report type (name it as {mapping.family} does: "
            f"2024-06-01-<report_type>-nl.csv); the {mapping.format} fallback needs it to keep "
            "report types apart"
        )
    return {"report_type": found}


class MappedAdapter:
    """Turns the records of one input file into notifications, following one mapping.

    The mapping is compiled once per file into one small function per field, so a row costs
    only its own lookups and conversions: ingest runs through millions of rows a day.
    """

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
        self.read_stats = ReadStats()
        self._classify = Classifier(mapping, lambda specs: self._field_reader(specs, personal=False))
        # Records with credential columns (mapping.secret_columns) are read by fields that
        # quote no value in a reason: in such a report any cell may hold a password fragment.
        self._secret_words = frozenset(mapping.secret_columns)
        self._secret: dict[str, bool] = {}  # column name -> holds credentials
        self._header_secrets: tuple[list[str], list[str]] | None = None
        self._classify_personal = (
            Classifier(mapping, lambda specs: self._field_reader(specs, personal=True))
            if self._secret_words
            else self._classify
        )
        named = {p.split(".", 1)[0] for spec in mapping.field_specs() for p in spec.paths()}
        named |= {(p if isinstance(p, str) else p.source).split(".", 1)[0] for p in mapping.evidence.values()}
        self._not_unmapped = frozenset(named | set(mapping.drop))
        self._header_unmapped: tuple[Any, list[str]] | None = None
        self._read_evidence = evidence_reader(
            [
                (name, spec, None) if isinstance(spec, str) else (name, spec.source, CONVERTERS[spec.convert])
                for name, spec in mapping.evidence.items()
            ],
            fault=lambda name: f"evidence {name}: not usable (value withheld)",
            rest=self._unmapped_of if mapping.keep_unmapped else None,
            empty=_empty,
            rejected=RowRejected,
        )
        self._skip = [(rule.field, rule.equals, rule.reason) for rule in mapping.skip]
        # What every notification of the file takes from the mapping, read once.
        self._feed = mapping.format
        self._owner_only = mapping.direct_owner_only
        self._discard = mapping.discard_unrouted
        self._volatile = tuple(mapping.volatile_evidence)
        self._classifications: dict[tuple[str, str, str], Classification] = {}

    def rows(self, stream: Any) -> Iterator[RawRecord | RowError]:
        """The input's records, streaming; `padded_rows` and `read_warnings()` tell what the
        reader noticed once they are all read."""
        self.read_stats = ReadStats()
        rows = self._reader(stream, stats=self.read_stats)
        return self._raw_withheld(rows) if self._secret_words else rows

    def _raw_withheld(self, rows: Iterator[RawRecord | RowError]) -> Iterator[RawRecord | RowError]:
        """The rows, with the raw line withheld ("") wherever it may hold credentials: a record
        with a credential column, and a faulty row of such an input (or of one whose columns
        are not known: a JSON line)."""
        for row in rows:
            if isinstance(row, RawRecord):
                personal = bool(self._secrets_in(row.data))
            else:
                header = self.read_stats.header
                personal = header is None or bool(self._secrets_in(dict.fromkeys(header)))
            yield replace(row, raw="") if personal and row.raw else row

    def _secrets_in(self, data: dict[str, Any]) -> list[str]:
        """The record's columns that hold credentials by their names (sorted); [] without any,
        and for a mapping that names no secret_columns. Worked out once per CSV header."""
        if not self._secret_words:
            return []
        header = self.read_stats.header
        if header is not None and len(data) == len(header):
            if self._header_secrets is None or self._header_secrets[0] is not header:
                self._header_secrets = (header, self._secret_names(header))
            return self._header_secrets[1]
        return self._secret_names(data)

    def _secret_names(self, names: Iterable[str]) -> list[str]:
        found = []
        for name in names:
            secret = self._secret.get(name)
            if secret is None:
                secret = self._secret[name] = secret_column(name, self._secret_words)
            if secret:
                found.append(name)
        return sorted(found)

    @property
    def padded_rows(self) -> int:
        """Rows of the last input read with missing trailing cells taken as empty (complete
        once `rows` is exhausted): for the run's counts."""
        return self.read_stats.padded_rows

    def read_warnings(self) -> list[str]:
        """What the reader noticed about the last input, as sentences for the run's warnings."""
        return self.read_stats.warnings()

    def notifications(self, record: RawRecord) -> list[Notification]:
        return [self.notification(record)]

    def notification(self, record: RawRecord) -> Notification:
        """The record as a notification; raises RowSkipped or RowRejected."""
        data = record.data
        for path, equals, reason in self._skip:
            if lookup(data, path) in equals:
                raise RowSkipped(reason)
        secrets = self._secrets_in(data)
        c, read_fields = (self._classify_personal if secrets else self._classify)(data)
        (
            ip,
            port,
            protocol,
            hostname,
            url,
            email,
            asn,
            observed_at,
            vulnerability,
            severity,
            identifier,
            case_id,
            tlp,
        ) = read_fields(data)
        if identifier is None:
            raise RowRejected("identifier: missing")
        if observed_at is None:
            raise RowRejected("observed_at: missing")
        if not (ip or url or email or hostname):
            raise RowRejected("no address, host name, URL or e-mail address: nothing to notify about")
        evidence = self._read_evidence(data, secrets)
        personal = bool(secrets)
        return Notification(
            partner=self.partner,
            feed=self._feed,
            classification=self._classification(c.taxonomy, c.type, identifier),
            observed_at=observed_at,
            tlp=tlp or self.default_tlp,
            ip=ip,
            port=port,
            protocol=protocol,
            hostname=hostname,
            url=url,
            email=email,
            asn=asn,
            vulnerability=vulnerability,
            severity=severity,
            case_id=case_id,
            evidence=evidence,
            source=SourceRef(self.file_label, record.line),
            direct_owner_only=self._owner_only or personal,
            discard_unrouted=self._discard or personal,
            volatile=self._volatile,
        )

    def _classification(self, taxonomy: str, type_: str, identifier: str) -> Classification:
        """One (immutable) Classification per distinct value, shared by the notifications that
        have it: most feeds give every row the same one. Bounded: an identifier may vary per
        row (a CVE id, a malware family)."""
        key = (taxonomy, type_, identifier)
        found = self._classifications.get(key)
        if found is None:
            if len(self._classifications) >= 4096:
                self._classifications.clear()
            found = self._classifications[key] = Classification(taxonomy, type_, identifier)
        return found

    def _unmapped_of(self, data: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
        """The record's cells no spec names (mapping.keep_unmapped), empty ones left out; never a
        credential column: those are named in the evidence's `columns_withheld` instead."""
        return {
            k: value
            for k in self._unmapped_columns(data, secrets)
            # a cell with text (every CSV value is a str) is not empty: skip _empty() for it
            if ((value := data[k]).__class__ is str and value) or not _empty(value)
        }

    def _unmapped_columns(self, data: dict[str, Any], secrets: list[str]) -> list[str]:
        """The record's keys no field, evidence or drop rule names, nor a credential column:
        worked out once per CSV header (most rows), else per record."""
        header = self.read_stats.header
        if header is not None and not secrets and len(data) == len(header):
            if self._header_unmapped is None or self._header_unmapped[0] is not header:
                self._header_unmapped = (header, [k for k in header if k not in self._not_unmapped])
            return self._header_unmapped[1]
        skip = self._not_unmapped.union(secrets) if secrets else self._not_unmapped
        return [k for k in data if k not in skip]

    def _field_reader(
        self, specs: dict[str, FieldSpec], *, personal: bool
    ) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        """One function reading the specs' fields of a record, in TARGET_FIELDS order
        (connector/adapters/compiled.py); `personal` as for _compile."""

        def flat(name: str, spec: FieldSpec) -> FlatPlan | None:
            paths = spec.paths()
            if spec.value is not None or spec.context is not None or len(paths) != 1:
                return None
            path = paths[0]
            missing = f"{name}: missing ({path} absent or empty)" if spec.required else None
            if spec.secret or not self.mapping.keep_raw_in_quarantine or personal:
                withheld = f"{name}: not usable (value withheld: personal data) (from {path})"
                return path, _converter(spec), missing, lambda _exc: withheld
            return path, _converter(spec), missing, lambda exc: f"{name}: {exc} (from {path})"

        return field_reader(
            list(specs.items()),
            TARGET_FIELDS,
            flat=flat,
            closure=lambda name, spec: self._compile(name, spec, personal),
            empty=_empty,
            rejected=RowRejected,
        )

    def _compile(self, name: str, spec: FieldSpec, personal: bool = False) -> Callable[[dict[str, Any]], Any]:
        """One field's value from a record: converted, None when absent, RowRejected when wrong.
        `personal`: for records with credential columns (mapping.secret_columns)."""
        paths = spec.paths()
        # A mapping whose raw lines may not be kept (they hold personal data) quotes no value
        # in a reason either, secret or not: a password with an unquoted comma shifts the row's
        # cells, so any column may hold password text or a `user:password@` URL. So does a
        # record with a credential column.
        withhold = spec.secret or not self.mapping.keep_raw_in_quarantine or personal
        if spec.value is not None or spec.context is not None:
            if spec.value is not None:
                raw, where = spec.value, name
            else:
                raw, where = (
                    self.context.values.get(spec.context, MISSING),
                    f"case metadata {spec.context!r}",
                )
            return _constant_field(_finisher(name, spec, where, withhold), raw, where)
        finish = _finisher(name, spec, name, withhold)
        if len(paths) == 1:
            path = paths[0]
            if "." not in path:
                # A flat column (every CSV field): one dict access. A record's data is a dict
                # (the readers yield nothing else), so lookup() would answer the same.
                return lambda data: finish(data.get(path, MISSING), path)
            return lambda data: finish(lookup(data, path), path)

        def first_present(data: dict[str, Any]) -> Any:
            for path in paths:
                candidate = lookup(data, path)
                if not _empty(candidate):
                    return finish(candidate, path)
            return finish(MISSING, name)

        return first_present


def _converter(spec: FieldSpec) -> Callable[[Any], Any] | None:
    return CONVERTERS[spec.convert] if spec.convert is not None else None


def _finisher(name: str, spec: FieldSpec, where_absent: str, withhold: bool) -> Callable[[Any, str], Any]:
    """Checks presence and converts: the part of every field that is the same for any source.
    With `withhold`, a reason names the fault but never quotes the value."""
    convert = _converter(spec)
    missing = f"{name}: missing ({' or '.join(spec.paths()) or where_absent} absent or empty)"

    def finish(raw: Any, where: str) -> Any:
        # A cell with text in it, the common case, is not empty: _empty() is four comparisons.
        if not (raw.__class__ is str and raw) and _empty(raw):
            if spec.required:
                raise RowRejected(missing)
            return None
        if convert is None:
            return raw
        try:
            return convert(raw)
        except CONVERSION_ERRORS as exc:
            # A value that is present but wrong is a fault even where the field is optional:
            # dropping it silently would turn a bad row into a misleading notification.
            detail = "not usable (value withheld: personal data)" if withhold else str(exc)
            raise RowRejected(f"{name}: {detail} (from {where})") from None

    return finish


def _constant_field(
    finish: Callable[[Any, str], Any], raw: Any, where: str
) -> Callable[[dict[str, Any]], Any]:
    """A constant or file-context field: the same for every row, so worked out once."""
    try:
        constant = finish(raw, where)
    except RowRejected as fault:
        reason = str(fault)

        def rejected(_data: dict[str, Any]) -> Any:
            raise RowRejected(reason)

        return rejected
    return lambda _data: constant
