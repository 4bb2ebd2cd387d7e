"""Mapping files: the declarative, per-feed knowledge of how input fields become notifications.

A mapping is data (YAML under `mappings/`), validated against the schema below when loaded; a
bad mapping is an error naming the file and the key. The engine that applies a mapping lives
in `engine.py` and knows no feed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connector.adapters.converters import CONVERTERS
from connector.adapters.readers import READER_OPTIONS, READERS
from connector.rsit import check_category
from connector.yamlfile import YamlFileError, load_yaml

DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"

# The notification fields a mapping may fill (see connector.notification.Notification).
TARGET_FIELDS = (
    "ip",
    "port",
    "protocol",
    "hostname",
    "url",
    "email",
    "asn",
    "observed_at",
    "vulnerability",
    "severity",
    "identifier",
    "case_id",
    "tlp",
)


_CAMEL_CASE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def column_words(name: str) -> set[str]:
    """The words of a column name, lower-cased: split at anything not a letter or digit and
    at camelCase humps, plus each two neighbours joined (`api_key`, `apiKey`, `API-KEY` all
    give `apikey`)."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", _CAMEL_CASE.sub("_", name).lower()) if t]
    return set(tokens) | {a + b for a, b in itertools.pairwise(tokens)}


def secret_column(name: str, words: Iterable[str]) -> bool:
    """Whether a column holds credentials by its name: one of its words is one of `words`
    (a mapping's `secret_columns`). Words, not substrings: `bypass` is no `pass`."""
    return not column_words(name).isdisjoint(words)


class MappingError(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"mapping {source}: " + "; ".join(problems))


def known_converter(name: str) -> str:
    """Mapping files may only name converters from the allow-list in converters.py."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown converter {name!r}; allowed: {', '.join(sorted(CONVERTERS))}")
    return name


def check_targets(fields: dict[str, Any]) -> None:
    """Field specs may only name notification fields (a mapping's own, or a rule's)."""
    unknown = sorted(set(fields) - set(TARGET_FIELDS))
    if unknown:
        raise ValueError(f"unknown target field(s) {unknown}; allowed: {', '.join(TARGET_FIELDS)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """Where a notification field comes from: a record path, the file's context, or a constant.

    `from` takes a dotted path into the record (`info.classification.cve-id`) or a list of
    paths tried in order; the first present and non-empty one is used.
    """

    source: str | list[str] | None = Field(None, alias="from")
    context: str | None = None
    value: Any = None
    convert: str | None = None
    required: bool = False
    # Personal data (a password): never echoed in an error message or a quarantine record.
    secret: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("convert")
    @classmethod
    def _known_converter(cls, value: str | None) -> str | None:
        return None if value is None else known_converter(value)

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = [x is not None for x in (self.source, self.context, self.value)]
        if sum(given) != 1:
            raise ValueError("give exactly one of `from`, `context` or `value`")
        return self

    def paths(self) -> list[str]:
        if self.source is None:
            return []
        return [self.source] if isinstance(self.source, str) else list(self.source)


class EvidenceSpec(_Strict):
    """Evidence taken through a converter: the only way a secret column may reach the output
    (`{from: password, convert: mask_secret}`)."""

    source: str = Field(alias="from")
    convert: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("convert")
    @classmethod
    def _known_converter(cls, value: str) -> str:
        return known_converter(value)


class SkipRule(_Strict):
    """Records that are not notifications at all (an informational detection): counted, kept
    in the run's record with the reason, never turned into STIX."""

    field: str
    equals: list[Any]
    reason: str


class ContextSpec(_Strict):
    """Metadata that applies to a whole input file, read from a sidecar file beside it: YAML,
    or the YAML front matter of a Markdown file (between its first two `---` lines, as DIVD
    publishes its case files).

    `from_file_name`: keys the sidecar's own file name gives where the file has no value for
    them (key -> a regular expression matched at the start of the name; its first group, or
    the whole match)."""

    sidecar: str | list[str] = Field(
        description="file name pattern(s), tried in order; {prefix} is the input name up to its first dot"
    )
    required: list[str] = []
    from_file_name: dict[str, str] = {}

    @field_validator("from_file_name")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for key, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{key}: not a valid regular expression: {exc}") from None
        return value

    def sidecars(self) -> list[str]:
        return [self.sidecar] if isinstance(self.sidecar, str) else list(self.sidecar)


class ClassificationSpec(_Strict):
    taxonomy: str
    type: str

    @model_validator(mode="after")
    def _is_rsit(self) -> ClassificationSpec:
        check_category(f"{self.taxonomy}/{self.type}")
        return self


class ReaderOptions(_Strict):
    """Options of the mapping's reader; each reader takes only its own (readers.READER_OPTIONS).

    pad_short_rows (csv): a row with fewer fields than the header is read with its missing
    trailing cells empty, instead of being quarantined. Rows with too many fields still are.
    """

    pad_short_rows: bool = False

    def given(self) -> dict[str, Any]:
        """The options that differ from the reader's defaults, as keyword arguments."""
        return self.model_dump(exclude_defaults=True)


class ClassifyRule(_Strict):
    """A per-row classification: the first rule of `classify` whose condition holds for a
    record decides its classification, and may replace field specs for it (`fields`: a spec,
    or null for a field not read at all, e.g. a `vulnerability` that is required by default).

    The condition reads one record path (`field`) and takes exactly one test, on its value as
    text (each element of a list): `equals` (one value or a list), `contains` (a substring) or
    `matches` (a regular expression, searched). A missing or empty value matches no rule.
    """

    field: str
    equals: list[Any] | None = None
    contains: str | None = None
    matches: str | None = None
    classification: ClassificationSpec
    fields: dict[str, FieldSpec | None] = {}

    @field_validator("equals", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, list) else [value]

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("fields")
    @classmethod
    def _known_overrides(cls, value: dict[str, FieldSpec | None]) -> dict[str, FieldSpec | None]:
        check_targets(value)
        for needed in ("observed_at", "identifier"):
            if needed in value and value[needed] is None:
                raise ValueError(f"field {needed!r} cannot be dropped (null); give a spec")
        return value

    @model_validator(mode="after")
    def _one_test(self) -> ClassifyRule:
        given = [name for name in ("equals", "contains", "matches") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `equals`, `contains` or `matches`")
        if self.equals == [] or self.contains == "" or self.matches == "":
            raise ValueError(f"`{given[0]}` must not be empty")
        return self


class Mapping(_Strict):
    format: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str
    description: str = ""
    # A family of report types delivered under one format name (`shadowserver`): the report
    # type comes from each file's name; `report_type: "*"` is the family's fallback mapping.
    family: str | None = None
    report_type: str | None = None
    reader: str
    reader_options: ReaderOptions = ReaderOptions()
    classification: ClassificationSpec
    # Per-row classification rules, first match wins; no match: `classification` and `fields`.
    classify: list[ClassifyRule] = []
    context: ContextSpec | None = None
    skip: list[SkipRule] = []
    fields: dict[str, FieldSpec]
    evidence: dict[str, str | EvidenceSpec] = {}
    # Input columns no field or evidence names are kept (in evidence.unmapped), not dropped...
    keep_unmapped: bool = False
    # ...except these, which are never kept anywhere (a raw password, say).
    drop: list[str] = []
    # Evidence keys (a mapped evidence name, or an input column kept among the unmapped) whose
    # value changes with every observation by nature, saying nothing about the finding: a
    # server's clock (HTTP Date). A re-observation whose evidence differs from the stored only
    # in these keeps the stored evidence (connector/recording.py); any other difference stores
    # the new evidence, these keys with it.
    volatile_evidence: list[str] = []
    # Columns whose names hold one of these words hold credentials (secret_column): never kept,
    # and a record that has one is personal data (direct owner only, discarded when unrouted,
    # no raw line and no value in a quarantine reason). For layouts nobody has checked: the
    # Shadowserver fallback.
    secret_columns: list[str] = []
    keep_raw_in_quarantine: bool = True
    # Notifications nobody claims are counted and discarded, not stored (personal data).
    discard_unrouted: bool = False
    # Personal data (leaked credentials): deliver to the direct owner only, never to parents.
    direct_owner_only: bool = False
    # What one input of this feed covers: `case` (a scan of a whole case, DIVD) or `feed` (a
    # complete report of the feed). A notification of the same case (feed) that an input no
    # longer reports is then gone (connector/feedback.py mark_gone); without it, an input
    # that does not report a host says nothing about it (a report split over several files).
    coverage: Literal["case", "feed"] | None = None

    @field_validator("reader")
    @classmethod
    def _known_reader(cls, value: str) -> str:
        if value not in READERS:
            raise ValueError(f"unknown reader {value!r}; allowed: {', '.join(sorted(READERS))}")
        return value

    @model_validator(mode="after")
    def _reader_takes_options(self) -> Mapping:
        unknown = sorted(set(self.reader_options.given()) - READER_OPTIONS.get(self.reader, frozenset()))
        if unknown:
            raise ValueError(f"reader_options.{unknown[0]}: the {self.reader} reader does not take it")
        return self

    def field_specs(self) -> Iterator[FieldSpec]:
        """Every field spec the mapping may read with: its own and its rules' replacements."""
        yield from self.fields.values()
        for rule in self.classify:
            yield from (spec for spec in rule.fields.values() if spec is not None)

    @field_validator("fields")
    @classmethod
    def _known_targets(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        check_targets(value)
        for needed in ("observed_at", "identifier"):
            if needed not in value:
                raise ValueError(f"field {needed!r} must be mapped")
        return value

    @model_validator(mode="after")
    def _family_complete(self) -> Mapping:
        if (self.family is None) != (self.report_type is None):
            raise ValueError("family and report_type go together")
        secret_sources = {p for spec in self.field_specs() if spec.secret for p in spec.paths()}
        masks = any(not isinstance(e, str) and e.convert == "mask_secret" for e in self.evidence.values())
        if self.keep_raw_in_quarantine and (secret_sources or self.drop or masks):
            raise ValueError(
                "a mapping with secret fields, dropped columns or masked evidence must set "
                "keep_raw_in_quarantine: false (a raw line would hold them)"
            )
        if self.keep_unmapped and not secret_sources <= set(self.drop):
            raise ValueError(f"secret columns {sorted(secret_sources)} must be listed in drop")
        for name, spec in self.evidence.items():
            path = spec if isinstance(spec, str) else spec.source
            masked = not isinstance(spec, str) and spec.convert == "mask_secret"
            if (path in secret_sources or path in self.drop) and not masked:
                raise ValueError(f"evidence.{name}: column {path!r} is secret; only mask_secret may read it")
        return self

    @field_validator("secret_columns")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        bad = [w for w in value if not re.fullmatch(r"[a-z0-9]+", w)]
        if bad:
            raise ValueError(f"words are lower-case letters and digits (apikey, not api_key): {bad}")
        return value

    @model_validator(mode="after")
    def _secret_columns_unread(self) -> Mapping:
        """A column that holds credentials by its name is read only as a secret field, or as
        evidence through mask_secret."""
        if not self.secret_columns:
            return self
        fields: list[tuple[str, FieldSpec | None]] = [(f"fields.{n}", s) for n, s in self.fields.items()]
        fields += [
            (f"classify.{i}.fields.{n}", s) for i, r in enumerate(self.classify) for n, s in r.fields.items()
        ]
        for where, spec in fields:
            for path in spec.paths() if spec is not None and not spec.secret else []:
                if secret_column(path.split(".", 1)[0], self.secret_columns):
                    raise ValueError(
                        f"{where}: column {path!r} holds credentials (secret_columns); mark it secret"
                    )
        for name, evidence in self.evidence.items():
            path = evidence if isinstance(evidence, str) else evidence.source
            masked = not isinstance(evidence, str) and evidence.convert == "mask_secret"
            if not masked and secret_column(path.split(".", 1)[0], self.secret_columns):
                raise ValueError(
                    f"evidence.{name}: column {path!r} holds credentials (secret_columns); "
                    "only mask_secret may read it"
                )
        return self

    @model_validator(mode="after")
    def _context_keys_declared(self) -> Mapping:
        rules = [(f"classify.{i}.fields", rule.fields) for i, rule in enumerate(self.classify)]
        built_in = FAMILY_CONTEXT if self.family is not None else set()
        for where, specs in [("fields", self.fields), *rules]:
            for name, spec in specs.items():
                if spec is None or spec.context is None or spec.context in built_in:
                    continue
                if self.context is None:
                    raise ValueError(f"{where}.{name}: uses `context` but the mapping declares none")
        return self


def load_mapping(path: Path) -> Mapping:
    try:
        raw = load_yaml(path)
    except YamlFileError as exc:
        raise MappingError(str(path), [str(exc)]) from None
    if not isinstance(raw, dict):
        raise MappingError(str(path), ["top level must be a mapping of keys"])
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {str(msg).removeprefix('Value error, ')}")
        raise MappingError(str(path), problems) from None


def load_mappings(directory: Path | None = None) -> dict[str, Mapping]:
    """Every mapping under the directory (and its subfolders), by format name."""
    directory = directory or DEFAULT_MAPPINGS_DIR
    mappings: dict[str, Mapping] = {}
    for path in sorted(directory.rglob("*.yaml")):
        if "tables" in path.relative_to(directory).parts:
            continue  # data tables of code adapters, not mappings
        mapping = load_mapping(path)
        if mapping.format in mappings:
            raise MappingError(str(path), [f"format: {mapping.format!r} is defined twice"])
        mappings[mapping.format] = mapping
    return mappings


# Context every file of a family has without a sidecar: `report_type`, the mapping's own, or
# for the fallback (`report_type: "*"`) the one the file's name gives (report_type_of).
FAMILY_CONTEXT = {"report_type"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def report_type_of(file_name: str, family: str | None = None) -> str | None:
    """The report type a file's name gives: its first word (letters, digits and `_`, starting
    with a letter) that is not part of a date or the family's name. `2024-06-01-scan_ldap_udp-
    nl.csv`, `scan_ldap_udp.csv` and `scan_ldap_udp-2024-06-01.csv` give `scan_ldap_udp`, as
    Shadowserver names its files; None when the name gives none (`2024-06-01.csv`)."""
    stem = _DATE.sub(" ", file_name.lower().split(".", 1)[0])
    for token in re.split(r"[^a-z0-9_]+", stem):
        if token and token[0].isalpha() and token != family:
            return token
    return None


def family_mapping(mappings: dict[str, Mapping], family: str, file_name: str) -> tuple[Mapping, bool]:
    """The mapping for one file of a report family, and whether it is the generic fallback.

    `2024-06-01-scan_http-nl.csv`, `scan_http.csv` and `scan_http-2024-06-01.csv` all mean
    `scan_http`: the longest report type of the family named in the file name wins.
    """
    members = [m for m in mappings.values() if m.family == family]
    stem = file_name.lower().rsplit(".", 1)[0]
    tokens = set(re.split(r"[^a-z0-9_]+", stem))
    named = [m for m in members if m.report_type != "*" and m.report_type in tokens]
    if named:
        return max(named, key=lambda m: len(m.report_type or "")), False
    fallback = [m for m in members if m.report_type == "*"]
    if not fallback:
        raise KeyError(f"no mapping of family {family!r} for {file_name!r} and no fallback")
    return fallback[0], True


def families(mappings: dict[str, Mapping]) -> set[str]:
    return {m.family for m in mappings.values() if m.family}
