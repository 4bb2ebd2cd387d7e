"""X-ARF v4 abuse reports (NBIP CleanNetworks): the code adapter for format `xarf`.

Input: one report (a JSON object, pretty-printed or not), a JSON array of reports, or JSON
lines with one report per line. JSON lines are streamed; a single document (object, array,
or several objects one after the other) is small and read whole.

Each report is validated against the X-ARF v4 JSON schemas kept in the repository
(`mappings/tables/xarf-schemas/`, MIT licence): an invalid report is quarantined with the
schema's own message for its most relevant error, prefixed with the JSON path. A valid report
becomes one notification, classified and filled by the data table `mappings/tables/xarf.yaml`
(category/type -> RSIT class, identifier, observable fields, evidence kept). The table is
loaded and checked at import; a valid report whose category/type has no entry there (a schema
update without a table update) is quarantined, never a crash.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import orjson

from connector.adapters import converters
from connector.adapters.engine import RowRejected
from connector.adapters.paths import MISSING, lookup
from connector.adapters.readers import NOT_UTF8, RawRecord, Row, RowError, read_jsonl, readable, utf8_fault
from connector.adapters.registry import TABLES_DIR, AdapterContext, AdapterInfo, register
from connector.normalize import canonical_domain, canonical_ip, is_ip
from connector.notification import Classification, Notification, SourceRef
from connector.rsit import RSIT
from connector.yamlfile import YamlFileError, load_yaml

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

log = logging.getLogger("meldpunt.adapters.xarf")

FORMAT = "xarf"
TABLE_PATH = TABLES_DIR / "xarf.yaml"
SCHEMA_DIR = TABLES_DIR / "xarf-schemas" / "v4"
MASTER_SCHEMA = "xarf-v4-master.json"
MAX_DOCUMENT = 64 * 1024 * 1024  # a single JSON document is read whole; beyond this: JSON lines
MAX_MESSAGE = 300  # schema messages repeat the offending value: keep quarantine reasons short
OBSERVABLES = ("ip", "url", "email", "hostname")


class XarfTableError(Exception):
    """mappings/tables/xarf.yaml (or the schemas beside it) cannot be used; the message says why."""


# --- schemas -----------------------------------------------------------------------------------


def load_schemas(directory: Path = SCHEMA_DIR) -> dict[str, dict[str, Any]]:
    """Every schema in the directory by its `$id` (the master's `$ref`s resolve among them)."""
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise XarfTableError(f"{path}: not a readable JSON schema: {exc}") from None
        if not isinstance(schema, dict) or not isinstance(schema.get("$id"), str):
            raise XarfTableError(f"{path}: a schema needs an `$id`")
        schemas[schema["$id"]] = schema
    return schemas


def master_schema(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for schema_id, schema in schemas.items():
        if schema_id.rsplit("/", 1)[-1] == MASTER_SCHEMA:
            return schema
    raise XarfTableError(f"{MASTER_SCHEMA} not found among the X-ARF schemas")


@cache
def validator() -> Draft202012Validator:
    """The master schema's validator, `$ref`s resolved from the repository's copies only
    (nothing is ever fetched), formats checked. Built on first use: jsonschema is slow to
    import, and only X-ARF input needs it."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    master = master_schema(SCHEMAS)
    Draft202012Validator.check_schema(master)
    # jsonschema checks a format only when its helper package is installed; without one, values
    # of that format pass unchecked (jsonschema[format-nongpl] brings them all).
    unchecked = sorted(_formats(SCHEMAS) - set(Draft202012Validator.FORMAT_CHECKER.checkers))
    if unchecked:
        log.warning("X-ARF formats not checked (helper packages missing)", extra={"formats": unchecked})
    registry = Registry().with_resources((i, Resource.from_contents(s)) for i, s in SCHEMAS.items())
    return Draft202012Validator(master, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _formats(node: Any) -> set[str]:
    """Every `format` a schema (or schemas) uses."""
    if isinstance(node, dict):
        found = {node["format"]} if isinstance(node.get("format"), str) else set()
        return found.union(*(_formats(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_formats(v) for v in node))
    return set()


def schema_pairs(master: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (category, type) the master schema accepts: its anyOf of category/type combinations."""
    pairs: set[tuple[str, str]] = set()
    for part in master.get("allOf", []):
        for option in part.get("anyOf", []):
            props = option.get("properties", {})
            category = props.get("category", {}).get("const")
            types = props.get("type", {}).get("enum", [])
            if isinstance(category, str):
                pairs.update((category, t) for t in types if isinstance(t, str))
    return pairs


# --- the table ---------------------------------------------------------------------------------


def slug(value: Any) -> str:
    """`Command_and_Control` -> `command-and-control`: a stable identifier from free text."""
    text = re.sub(r"[\W_]+", "-", str(value).strip().lower()).strip("-")[:100]
    if not text:
        raise ValueError(f"no usable text in {value!r}")
    return text


IDENTIFIER_CONVERTERS: dict[str, Callable[[Any], str]] = {
    "slug": slug,
    "lower": converters.lower,
    "text": converters.text,
    "cve_id": converters.cve_id,
}


@dataclass(frozen=True)
class EvidenceSpec:
    path: str
    keep: tuple[str, ...] | None = None  # an object (or list of objects) reduced to these keys


@dataclass(frozen=True)
class IdentifierSpec:
    value: str | None = None  # a fixed identifier, or:
    sources: tuple[str, ...] = ()
    convert: str = "text"
    prefix: str = ""
    default: str | None = None


@dataclass(frozen=True)
class TypeRule:
    category: str
    type: str
    taxonomy: str
    rsit_type: str
    identifier: IdentifierSpec
    fields: dict[str, tuple[str, ...]]
    evidence: dict[str, EvidenceSpec]
    refine_field: str | None = None
    refine: dict[str, tuple[str, str]] = field(default_factory=dict)
    direct_owner_only: bool = False
    discard_unrouted: bool = False


@dataclass(frozen=True)
class XarfTable:
    observed_at: tuple[str, ...]
    tlp_field: str | None
    tlp_tag: str | None
    rules: dict[tuple[str, str], TypeRule]


_FLAGS = ("direct_owner_only", "discard_unrouted")
_LEVEL_KEYS = {"fields", "evidence", *_FLAGS}
_COMMON_KEYS = _LEVEL_KEYS | {"observed_at", "tlp"}
_CATEGORY_KEYS = _LEVEL_KEYS | {"types"}
_TYPE_KEYS = _LEVEL_KEYS | {"rsit", "identifier", "refine"}


class _Checker:
    """Reads the table's pieces, collecting every problem rather than stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def mapping(self, value: Any, where: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, "must be a mapping")
            return {}
        for key in value:
            if allowed is not None and key not in allowed:
                self.fail(where, f"unknown key {key!r} (known: {', '.join(sorted(allowed))})")
        return value

    def paths(self, value: Any, where: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            self.fail(where, "must be a field name or a non-empty list of field names")
            return ()
        return tuple(items)

    def rsit(self, value: Any, where: str) -> tuple[str, str]:
        taxonomy, _, type_ = value.partition("/") if isinstance(value, str) else ("", "", "")
        if type_ not in RSIT.get(taxonomy, ()):
            self.fail(where, f"{value!r} is not an RSIT taxonomy/type (connector/rsit.py)")
        return taxonomy, type_

    def fields(self, value: Any, where: str) -> dict[str, tuple[str, ...]]:
        raw = self.mapping(value, where, set(FIELD_CONVERTERS))
        return {name: self.paths(paths, f"{where}.{name}") for name, paths in raw.items()}

    def evidence(self, value: Any, where: str) -> dict[str, EvidenceSpec]:
        out = {}
        for name, spec in self.mapping(value, where).items():
            if isinstance(spec, str) and spec:
                out[name] = EvidenceSpec(spec)
                continue
            spec = self.mapping(spec, f"{where}.{name}", {"from", "keep"})
            path, keep = spec.get("from"), spec.get("keep")
            if not isinstance(path, str) or not path:
                self.fail(f"{where}.{name}", "needs a field name, or {from: field, keep: [subfields]}")
                continue
            out[name] = EvidenceSpec(path, self.paths(keep, f"{where}.{name}.keep") if keep else None)
        return out

    def identifier(self, value: Any, where: str) -> IdentifierSpec:
        if isinstance(value, str) and value:
            return IdentifierSpec(value=value)
        spec = self.mapping(value, where, {"from", "convert", "prefix", "default"})
        if not spec:
            self.fail(where, "needs a fixed identifier or {from: [fields], convert: ...}")
            return IdentifierSpec(value="?")
        convert = spec.get("convert", "text")
        if convert not in IDENTIFIER_CONVERTERS:
            self.fail(where, f"unknown convert {convert!r} (known: {', '.join(IDENTIFIER_CONVERTERS)})")
        prefix, default = spec.get("prefix", ""), spec.get("default")
        if not isinstance(prefix, str) or not (default is None or (isinstance(default, str) and default)):
            self.fail(where, "prefix and default must be text")
        return IdentifierSpec(None, self.paths(spec.get("from"), f"{where}.from"), convert, prefix, default)

    def refine(self, value: Any, where: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
        spec = self.mapping(value, where, {"field", "values"})
        if not spec:
            return None, {}
        name = spec.get("field")
        if not isinstance(name, str) or not name:
            self.fail(where, "needs a field")
        out = {}
        for key, value in self.mapping(spec.get("values"), f"{where}.values").items():
            try:
                out[slug(key)] = self.rsit(value, f"{where}.values.{key}")
            except ValueError as exc:
                self.fail(f"{where}.values", str(exc))
        return name, out

    def flag(self, levels: list[dict[str, Any]], name: str, where: str) -> bool:
        value = False
        for level in levels:
            value = level.get(name, value)
        if not isinstance(value, bool):
            self.fail(where, f"{name} must be true or false")
        return bool(value)

    def rule(self, category: str, type_: str, levels: list[dict[str, Any]], where: str) -> TypeRule:
        spec = levels[-1]
        for key in ("rsit", "identifier"):
            if key not in spec:
                self.fail(where, f"{key} is missing")
        fields: dict[str, tuple[str, ...]] = {}
        evidence: dict[str, EvidenceSpec] = {}
        for level, level_where in zip(levels, ("common", f"categories.{category}", where), strict=True):
            fields.update(self.fields(level.get("fields"), f"{level_where}.fields"))
            evidence.update(self.evidence(level.get("evidence"), f"{level_where}.evidence"))
        taxonomy, rsit_type = self.rsit(spec.get("rsit"), f"{where}.rsit")
        refine_field, refine = self.refine(spec.get("refine"), f"{where}.refine")
        return TypeRule(
            category,
            type_,
            taxonomy,
            rsit_type,
            self.identifier(spec.get("identifier"), f"{where}.identifier"),
            fields,
            evidence,
            refine_field,
            refine,
            self.flag(levels, "direct_owner_only", where),
            self.flag(levels, "discard_unrouted", where),
        )


def load_table(path: Path, pairs: set[tuple[str, str]]) -> XarfTable:
    """The table, checked: RSIT classes, converters, field names, and that every entry is a
    category/type the schemas define. Raises XarfTableError naming every problem."""
    try:
        raw = load_yaml(path)
    except YamlFileError as exc:
        raise XarfTableError(f"{path}: {exc}") from None
    check = _Checker()
    top = check.mapping(raw, "top level", {"common", "categories"})
    common = check.mapping(top.get("common"), "common", _COMMON_KEYS)
    tlp = check.mapping(common.get("tlp"), "common.tlp", {"field", "tag"})
    if not all(isinstance(v, str) and v for v in tlp.values()):
        check.fail("common.tlp", "field and tag must be names")
    observed_at = check.paths(common.get("observed_at"), "common.observed_at")
    rules: dict[tuple[str, str], TypeRule] = {}
    for category, cat in check.mapping(top.get("categories"), "categories").items():
        cat = check.mapping(cat, f"categories.{category}", _CATEGORY_KEYS)
        for type_, spec in check.mapping(cat.get("types"), f"categories.{category}.types").items():
            where = f"categories.{category}.types.{type_}"
            spec = check.mapping(spec, where, _TYPE_KEYS)
            rules[(category, type_)] = check.rule(category, type_, [common, cat, spec], where)
            if (category, type_) not in pairs:
                check.fail(where, "not a category/type the X-ARF schemas define")
    if check.problems:
        # Problems of common and category entries show once, not once per type.
        raise XarfTableError(f"{path}: " + "; ".join(dict.fromkeys(check.problems)))
    return XarfTable(observed_at, tlp.get("field"), tlp.get("tag"), rules)


# --- field values ------------------------------------------------------------------------------

_IPV4_LIKE = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def _empty(value: Any) -> bool:
    return value is MISSING or value is None or value == "" or value == [] or value == {}


@dataclass(frozen=True)
class Endpoint:
    """What an identifier names: a host (address or name), and the port and URL form it was
    given in. `source_identifier` is "IP address, domain, or other identifier" (the schema
    takes any string): senders write `192.0.2.1`, `2001:db8::1`, `host.example`, and also
    `host.example:8080`, `192.0.2.1:25`, `[2001:db8::1]:443` or a URL (xarf-python's v3
    converter copies a v3 content report's Source URL there)."""

    host: str
    port: int | None = None
    url: bool = False

    @property
    def plain(self) -> bool:
        """Just a host: nothing more than the address or host name is given."""
        return self.port is None and not self.url


def endpoint(value: str) -> Endpoint:
    """The identifier split into host, port and form; ValueError for a port that is not one
    (`host:99999`) or brackets that do not close."""
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid port in URL {value!r}") from None
        if port == 0:
            raise ValueError(f"invalid port in URL {value!r}")
        return Endpoint(parts.hostname or "", port, url=True)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid IP address {value!r}")
        return Endpoint(host, converters.port(rest[1:]) if rest else None)
    if text.count(":") == 1:  # host:port; an IPv6 address has two colons or more
        host, _, number = text.partition(":")
        return Endpoint(host, converters.port(number))
    return Endpoint(text)


def ip_or_none(value: Any) -> str | None:
    """An IP address (of an identifier in any form `endpoint` reads); None for a host name or
    other identifier; ValueError for a malformed address (`999.12.1.4`), which must not pass
    as a host name, or a malformed port."""
    if not isinstance(value, str):
        return None
    host = endpoint(value).host
    if is_ip(host):
        return canonical_ip(host)
    if ":" in host or _IPV4_LIKE.match(host):
        raise ValueError(f"invalid IP address {value!r}")
    return None


def host_or_none(value: Any) -> str | None:
    """A host name (lower-case, IDNA), from a bare name, `name:port` or a URL; None for an IP
    address or anything that is not a dotted name (an e-mail address, an AS number)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "://" in text:
        return converters.url_host_name(text)
    try:
        host = endpoint(text).host
    except ValueError:
        return None  # not a host name: the address field says what is wrong with it
    if (
        "." not in host
        or ":" in host
        or "@" in host
        or _IPV4_LIKE.match(host)
        or any(c.isspace() for c in host)
    ):
        return None
    return canonical_domain(host)


def port_or_none(value: Any) -> int | None:
    """A port: a number, or the port an identifier names (`host:8080`, a URL with a port);
    None for an identifier without one."""
    if isinstance(value, str) and not value.strip().isdigit():
        return endpoint(value).port
    return converters.port(value)


FIELD_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "ip": ip_or_none,
    "hostname": host_or_none,
    "url": converters.url,
    "email": converters.email,
    "port": port_or_none,
    "asn": converters.asn,
    "severity": converters.lower,
    "vulnerability": converters.cve_id,
}


def _field(name: str, paths: tuple[str, ...], report: dict[str, Any]) -> Any:
    """The first of the paths whose value is present and usable, converted."""
    for path in paths:
        raw = lookup(report, path)
        if _empty(raw):
            continue
        try:
            value = FIELD_CONVERTERS[name](raw)
        except converters.CONVERSION_ERRORS as exc:
            raise RowRejected(f"{name}: {exc} (from {path})") from None
        if value is not None:
            return value
    return None


def _evidence(spec: EvidenceSpec, report: dict[str, Any]) -> Any:
    value = lookup(report, spec.path)
    if _empty(value) or spec.keep is None:
        return value
    if isinstance(value, dict):
        return {k: value[k] for k in spec.keep if k in value}
    if isinstance(value, list):
        return [{k: i[k] for k in spec.keep if k in i} for i in value if isinstance(i, dict)]
    return MISSING  # not the shape the table expects: nothing to keep


# --- schema errors -----------------------------------------------------------------------------

_ALTERNATIVES = ("anyOf", "oneOf")


def _most_relevant(errors: list[ValidationError]) -> ValidationError:
    """jsonschema's best_match, steered away from anyOf/oneOf errors, whose message repeats the
    whole report: a specific error beside them wins; inside the category/type alternatives, the
    one alternative whose category matched tells what is wrong (the type)."""
    from jsonschema.exceptions import best_match

    specific = [e for e in errors if e.validator not in _ALTERNATIVES]
    best = best_match(specific or errors)
    while best.validator in _ALTERNATIVES and best.context:
        branches: dict[Any, list[ValidationError]] = {}
        for error in best.context:
            branches.setdefault(error.relative_schema_path[0], []).append(error)
        selected = [b for b in branches.values() if not any(e.validator == "const" for e in b)]
        if len(selected) != 1:
            break
        best = best_match(selected[0])
    return best


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def schema_problem(checker: Draft202012Validator, report: dict[str, Any]) -> str | None:
    """None for a valid report; else `<json path>: <the schema's message>` for the most
    relevant error, with a count of the other problems."""
    errors = list(checker.iter_errors(report))
    if not errors:
        return None
    best = _most_relevant(errors)
    if best.validator in _ALTERNATIVES:  # its message would be the whole report
        message = best.schema.get("description") or "matches none of the allowed alternatives"
    else:
        message = best.message
    reason = f"{best.json_path}: {_short(message)}"
    others = len({(e.json_path, e.message) for e in errors} - {(best.json_path, best.message)})
    if others:
        reason += f" (and {others} more schema error{'s' if others > 1 else ''})"
    return reason


# --- reading -----------------------------------------------------------------------------------


def _strip_bom(lines: Iterable[bytes]) -> Iterator[bytes]:
    for number, line in enumerate(lines):
        yield line.removeprefix(b"\xef\xbb\xbf") if number == 0 else line


def _is_json_lines(stream: BinaryIO) -> bool:
    """JSON lines unless the input is an array, or an object spread over several lines (its
    first line is not a whole object and its next line does not start another one)."""
    start = stream.tell()
    first: bytes | None = None
    try:
        for raw in _strip_bom(stream):
            text = raw.strip()
            if not text:
                continue
            if first is not None:
                return text.startswith(b"{")
            first = text
            if text.startswith(b"["):
                return False
            if not text.startswith(b"{"):
                return True  # noise: the line reader reports it
            try:
                return isinstance(orjson.loads(text), dict)
            except orjson.JSONDecodeError:
                continue
        return first is None
    finally:
        stream.seek(start)


_RAW_KEEP = 10_000  # of an unreadable rest of a document: the ingest keeps 2,000 characters


class _Document:
    """One JSON document: objects (one after another) or arrays of them, with line numbers."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.decoder = json.JSONDecoder()
        self._line, self._at = 1, 0

    def line(self, pos: int) -> int:
        if pos < self._at:
            self._line, self._at = 1, 0
        self._line += self.text.count("\n", self._at, pos)
        self._at = pos
        return self._line

    def skip(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in " \t\r\n":
            pos += 1
        return pos

    def rows(self) -> Iterator[Row]:
        pos = self.skip(0)
        while pos < len(self.text):
            if self.text[pos] == "[":
                end = yield from self._array(pos)
            else:
                end = yield from self._value(pos)
            if end is None:
                return  # unreadable JSON: nothing after it can be trusted
            pos = self.skip(end)

    def _value(self, pos: int) -> Iterator[Row]:
        try:
            value, end = self.decoder.raw_decode(self.text, pos)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON: {exc.msg} (column {exc.colno})"
            yield RowError(exc.lineno, reason, readable(self.text[pos : pos + _RAW_KEEP]))
            return None
        except RecursionError:  # the json module's decoder recurses per level of nesting
            yield RowError(self.line(pos), "not readable JSON: nested too deeply", "")
            return None
        raw = self.text[pos:end]
        if utf8_fault(raw):  # the JSON is whole: the next report can be read
            yield RowError(self.line(pos), NOT_UTF8, readable(raw))
            return end
        if isinstance(value, dict):
            yield RawRecord(self.line(pos), value, raw)
        else:
            yield RowError(self.line(pos), "not a JSON object (an X-ARF report is an object)", raw)
        return end

    def _array(self, pos: int) -> Iterator[Row]:
        pos = self.skip(pos + 1)
        if self.text.startswith("]", pos):
            return pos + 1
        while True:
            end = yield from self._value(pos)
            if end is None:
                return None
            pos = self.skip(end)
            if self.text.startswith(",", pos):
                pos = self.skip(pos + 1)
            elif self.text.startswith("]", pos):
                return pos + 1
            else:
                yield RowError(self.line(pos), "not valid JSON: expected ',' or ']' in the array", "")
                return None


def read_reports(stream: BinaryIO) -> Iterator[Row]:
    """The reports of an input, as records (or row errors), whatever its layout."""
    if _is_json_lines(stream):
        yield from read_jsonl(_strip_bom(stream))  # type: ignore[arg-type]
        return
    data = stream.read(MAX_DOCUMENT + 1)
    if len(data) > MAX_DOCUMENT:
        reason = f"a single JSON document over {MAX_DOCUMENT // 2**20} MiB: deliver JSON lines instead"
        yield RowError(1, reason, "")
        return
    yield from _Document(data.decode("utf-8-sig", errors="surrogateescape")).rows()


# --- the adapter -------------------------------------------------------------------------------

SCHEMAS = load_schemas()
SCHEMA_PAIRS = schema_pairs(master_schema(SCHEMAS))
TABLE = load_table(TABLE_PATH, SCHEMA_PAIRS)
for _category, _type in sorted(SCHEMA_PAIRS - set(TABLE.rules)):
    log.warning(
        "X-ARF type without a table entry: reports of it will be quarantined",
        extra={"category": _category, "type": _type, "table": str(TABLE_PATH)},
    )


class XarfAdapter:
    def __init__(self, context: AdapterContext, table: XarfTable = TABLE) -> None:
        self.context = context
        self.table = table

    def rows(self, stream: BinaryIO) -> Iterator[Row]:
        return read_reports(stream)

    def notifications(self, record: RawRecord) -> list[Notification]:
        report = record.data
        problem = schema_problem(validator(), report)
        if problem:
            raise RowRejected(problem)
        category, type_ = report["category"], report["type"]
        rule = self.table.rules.get((category, type_))
        if rule is None:
            raise RowRejected(
                f"$.type: X-ARF {category}/{type_} is valid but has no entry in "
                f"{TABLE_PATH.relative_to(TABLES_DIR.parents[1])}: not classified"
            )
        return [self.notification(rule, report, record.line)]

    def notification(self, rule: TypeRule, report: dict[str, Any], line: int) -> Notification:
        values = {name: _field(name, paths, report) for name, paths in rule.fields.items()}
        if not any(values.get(name) for name in OBSERVABLES):
            raise RowRejected(
                f"no observable: source_identifier {report.get('source_identifier')!r} is neither "
                f"an IP address nor a host name, and no {'/'.join(self._observable_paths(rule))} is given"
            )
        observed_at = _field_required("observed_at", self.table.observed_at, report, converters.timestamp)
        evidence = {name: _evidence(spec, report) for name, spec in rule.evidence.items()}
        evidence["source_identifier"] = _source_given(report)
        return Notification(
            partner=self.context.partner,
            feed=FORMAT,
            classification=self.classification(rule, report),
            observed_at=observed_at,
            tlp=self.tlp(report) or self.context.default_tlp,
            evidence={k: v for k, v in evidence.items() if not _empty(v)},
            source=SourceRef(self.context.file_label, line),
            direct_owner_only=rule.direct_owner_only,
            discard_unrouted=rule.discard_unrouted,
            **values,
        )

    @staticmethod
    def _observable_paths(rule: TypeRule) -> list[str]:
        paths = {p for name in OBSERVABLES for p in rule.fields.get(name, ()) if p != "source_identifier"}
        return sorted(paths) or ["url/domain/e-mail"]

    def classification(self, rule: TypeRule, report: dict[str, Any]) -> Classification:
        taxonomy, rsit_type = rule.taxonomy, rule.rsit_type
        if rule.refine_field:
            value = lookup(report, rule.refine_field)
            if isinstance(value, str) and value.strip():
                taxonomy, rsit_type = rule.refine.get(slug(value), (taxonomy, rsit_type))
        return Classification(taxonomy, rsit_type, _identifier(rule.identifier, report))

    def tlp(self, report: dict[str, Any]) -> str | None:
        """The report's own TLP: a `tlp` member, or a `tlp:<level>` tag."""
        candidates: list[tuple[str, Any]] = []
        if self.table.tlp_field:
            candidates.append((self.table.tlp_field, lookup(report, self.table.tlp_field)))
        if self.table.tlp_tag:
            prefix = f"{self.table.tlp_tag}:"
            tags = report.get("tags") if isinstance(report.get("tags"), list) else []
            candidates += [
                ("tags", t[len(prefix) :]) for t in tags if isinstance(t, str) and t.startswith(prefix)
            ]
        for where, value in candidates:
            if _empty(value):
                continue
            try:
                return converters.tlp(value)
            except converters.CONVERSION_ERRORS as exc:
                raise RowRejected(f"tlp: {exc} (from {where})") from None
        return None


def _source_given(report: dict[str, Any]) -> Any:
    """The source identifier as given, where it says more than the host the notification is
    routed by (its port, its URL): kept, not lost. MISSING (not kept) for a plain one."""
    value = report.get("source_identifier")
    if not isinstance(value, str):
        return MISSING
    try:
        return MISSING if endpoint(value).plain else value
    except ValueError:
        return MISSING


def _field_required(
    name: str, paths: tuple[str, ...], report: dict[str, Any], convert: Callable[[Any], Any]
) -> Any:
    for path in paths:
        raw = lookup(report, path)
        if _empty(raw):
            continue
        try:
            return convert(raw)
        except converters.CONVERSION_ERRORS as exc:
            raise RowRejected(f"{name}: {exc} (from {path})") from None
    raise RowRejected(f"{name}: missing ({' or '.join(paths)} absent or empty)")


def _identifier(spec: IdentifierSpec, report: dict[str, Any]) -> str:
    if spec.value is not None:
        return spec.value
    for path in spec.sources:
        raw = lookup(report, path)
        if _empty(raw):
            continue
        try:
            return spec.prefix + IDENTIFIER_CONVERTERS[spec.convert](raw)
        except converters.CONVERSION_ERRORS as exc:
            if spec.default is None:
                raise RowRejected(f"identifier: {exc} (from {path})") from None
    if spec.default is not None:
        return spec.default
    raise RowRejected(f"identifier: missing ({' or '.join(spec.sources)} absent or empty)")


@register(
    FORMAT,
    AdapterInfo(
        "NBIP CleanNetworks: X-ARF v4 abuse reports (JSON, JSON lines)",
        "json",
        "per category/type, `mappings/tables/xarf.yaml`",
    ),
)
def xarf_adapter(context: AdapterContext) -> XarfAdapter:
    return XarfAdapter(context)
