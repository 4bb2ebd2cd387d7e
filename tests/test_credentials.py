"""DIVD leaked credentials (mappings/divd-credentials.yaml) end to end, on SQLite and PostgreSQL.

The sample (shared data, credentials/DIVD-2024-00037.credentials.csv) is personal data in
all but name: every test here is about where its raw passwords and its unowned addresses must
NOT end up. Expectations are derived from the CSV and from the routing table below, never
from the program's own output.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import stix2
import yaml
from stix2validator import ValidationOptions, validate_parsed_json

from connector.adapters.mapping import Mapping, MappingError, load_mapping, load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.counts import RunSummary
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.routing import Match, Policy, Router
from connector.store import Store, VersionFilter
from tests.conftest import REPO, SAMPLE_CONFIG, SHARED_DATA
from tests.record_view import all_objects, notification_rows

MAPPING_FILE = REPO / "mappings" / "divd-credentials.yaml"
FORMAT = "divd-credentials"


def _credentials_sample() -> Path:
    candidates = [SHARED_DATA / "credentials", REPO.parent / "shared" / "data" / "credentials"]
    for directory in candidates:
        if (directory / "DIVD-2024-00037.credentials.csv").is_file():
            return directory / "DIVD-2024-00037.credentials.csv"
    pytest.skip(
        "leaked-credentials sample not found (shared data credentials/DIVD-2024-00037.credentials.csv; "
        "set MELDPUNT_SHARED_DATA)",
        allow_module_level=True,
    )


SAMPLE = _credentials_sample()

# Who owns which mail domain in the test deployment, and the parent each owner would pass its
# notifications on to (deliver_to_parent: true) if the data were not personal.
OWNERS = {
    "school.example.net": ("school", "onderwijs-cert"),
    "gemeente-voorbeeld.example": ("gemeente-voorbeeld", "ibd"),
    "hospital.example.org": ("ziekenhuis-noord", "zcert"),
    "example.nl": ("ibd", None),
}
CONSUMER_DOMAIN = "mail.example.com"  # a consumer mail provider: nobody's, never distributed
FLAGS = ("has_name", "has_dob", "has_addr", "has_phone", "has_cc", "has_bankacc", "has_ssn", "has_ip")
# Shorter strings cannot be searched for in a database file without matching by chance.
MIN_SEARCHABLE = 6
CLI_TIMEOUT = 60

# --- expectations, from the CSV alone --------------------------------------------------------

_EMAIL_RE = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")


@dataclass(frozen=True)
class Row:
    line: int
    data: dict[str, str]

    @property
    def password(self) -> str:
        return self.data["password"]

    @property
    def email(self) -> str:
        return self.data["username"].strip().lower()

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    @property
    def valid(self) -> bool:
        try:
            datetime.fromisoformat(self.data["ts_found"].strip().replace("Z", "+00:00"))
        except ValueError:
            return False
        return bool(_EMAIL_RE.match(self.email))

    @property
    def owner(self) -> str | None:
        for domain, (owner, _) in OWNERS.items():
            if self.domain == domain or self.domain.endswith("." + domain):
                return owner
        return None


def read_rows(path: Path) -> list[Row]:
    """The CSV's data rows with their line numbers (the sample has no multi-line fields)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [Row(number, row) for number, row in enumerate(csv.DictReader(handle), start=2)]


ROWS = read_rows(SAMPLE)
VALID = [r for r in ROWS if r.valid]
FAULTY = [r for r in ROWS if not r.valid]
ROUTED = [r for r in VALID if r.owner is not None]
UNOWNED = [r for r in VALID if r.owner is None]


def divd_mask(password: str) -> str:
    """DIVD's public masking policy, written out independently of the converter."""
    if len(password) >= 10:
        return password[:2] + "*" * (len(password) - 4) + password[-2:]
    return password[0] + "*" * (len(password) - 2) + password[-1]


def test_the_sample_exercises_what_the_tests_claim() -> None:
    """Guards the expectations: messy addresses, unowned ones, a faulty row, android URLs."""
    assert len(ROWS) == 25
    assert any(r.data["username"] != r.email for r in VALID), "no untrimmed/upper-case address"
    assert {r.domain for r in UNOWNED} == {CONSUMER_DOMAIN}
    assert {r.domain for r in ROUTED} == set(OWNERS)
    assert [r.line for r in FAULTY] == [26]
    assert any(r.data["url"].startswith("android://") for r in ROUTED)
    assert len({r.email for r in VALID}) == len(VALID)  # one notification per row expected
    # Passwords too short to search for safely: only the faulty row's, whose raw line is not kept.
    assert {r.line for r in ROWS if len(r.password) < MIN_SEARCHABLE} <= {r.line for r in FAULTY}


# --- the test deployment ---------------------------------------------------------------------


def credentials_raw(database: str | None = None) -> dict[str, Any]:
    """The example deployment plus owners for the sample's organisational mail domains.

    Every owner has a parent with deliver_to_parent true, so a parent receiving anything is a
    routing fault, not a configuration accident.
    """
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    divd = next(p for p in raw["partners"] if p["id"] == "divd")
    divd["formats"] = ["divd-nuclei", FORMAT]
    recipients = {r["id"]: r for r in raw["recipients"]}
    gemeente = recipients["gemeente-voorbeeld"]
    gemeente["deliver_to_parent"] = True
    gemeente["constituency"]["domains"] = ["gemeente-voorbeeld.example"]
    recipients["ziekenhuis-noord"]["constituency"]["domains"] = ["hospital.example.org"]
    raw["recipients"] += [
        {
            "id": "onderwijs-cert",
            "name": "Onderwijs CERT",
            "kind": "sector-cert",
            "max_tlp": "amber",
            "constituency": {"domains": ["example.net"]},
        },
        {
            "id": "school",
            "name": "School",
            "kind": "organisation",
            "parent": "onderwijs-cert",
            "deliver_to_parent": True,
            "max_tlp": "amber",
            "constituency": {"domains": ["school.example.net"]},
        },
    ]
    if database is not None:
        raw["database"] = database
    return raw


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(credentials_raw(), source="credentials test config")


@pytest.fixture
def cstore(store: Store, config: Config) -> Store:
    """The shared `store` fixture (SQLite and PostgreSQL) with this deployment's collections."""
    store.sync_collections(collection_rows(config))
    return store


def ingest(store: Store, config: Config, path: Path = SAMPLE) -> RunSummary:
    return Ingestor(config, store, load_mappings()).run("divd", FORMAT, [path])


# --- reading the store back ------------------------------------------------------------------


def table_dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (on PostgreSQL: every column, text or not), in a stable order."""
    from sqlalchemy import inspect

    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for name in sorted(inspect(conn).get_table_names()):
            rows = conn.exec_driver_sql(f'SELECT * FROM "{name}"').fetchall()
            out[name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def dump_text(store: Store) -> str:
    return "\n".join(
        str(value)
        for rows in table_dump(store).values()
        for row in rows
        for value in row
        if value is not None
    )


def found(passwords: Iterable[str], haystack: str | bytes) -> list[str]:
    """The passwords present in the haystack, case-insensitively (a lower-cased copy is a leak too)."""
    if isinstance(haystack, bytes):
        low = haystack.lower()
        return [p for p in passwords if p.lower().encode() in low]
    text = haystack.lower()
    return [p for p in passwords if p.lower() in text]


def stored_objects(store: Store) -> list[dict[str, Any]]:
    return all_objects(store)


def collection(store: Store, recipient: str) -> list[dict[str, Any]]:
    members = CollectionView(store).page(
        recipient_collection_id(recipient), after=None, limit=100_000, versions=VersionFilter(all=True)
    )
    return [json.loads(m.body) for m in members]


def emails_in(objects: Iterable[dict[str, Any]]) -> set[str]:
    return {o["value"] for o in objects if o["type"] == "email-addr"}


def sighting_evidence(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """E-mail address -> the evidence of its sighting."""
    by_id = {o["id"]: o for o in objects}
    out: dict[str, dict[str, Any]] = {}
    for s in (o for o in objects if o["type"] == "sighting"):
        observed = by_id[s["observed_data_refs"][0]]
        (address,) = [
            by_id[ref]["value"] for ref in observed["object_refs"] if ref.startswith("email-addr--")
        ]
        (extension,) = s["extensions"].values()
        out[address] = extension["evidence"]
    return out


def sqlite_file_bytes(store: Store) -> bytes:
    """The database file and its -wal and -shm companions, read after the store is closed."""
    database = store.engine.url.database
    assert database
    store.close()
    files = [Path(database + suffix) for suffix in ("", "-wal", "-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


def log_text(records: Iterable[logging.LogRecord]) -> str:
    """Messages and every attribute (the JSON formatter writes the `extra` fields too)."""
    return "\n".join(
        record.getMessage() + " " + " ".join(str(v) for v in vars(record).values()) for record in records
    )


# --- the mapping -----------------------------------------------------------------------------


def test_mapping_declares_the_personal_data_rules() -> None:
    mapping = load_mappings()[FORMAT]
    assert mapping.reader == "csv"
    assert (mapping.classification.taxonomy, mapping.classification.type) == (
        "information-content-security",
        "data-leak",
    )
    assert mapping.direct_owner_only and mapping.discard_unrouted
    assert not mapping.keep_raw_in_quarantine and not mapping.keep_unmapped
    assert {"password", "extra_data"} <= set(mapping.drop)
    assert mapping.fields["email"].secret and mapping.fields["email"].required
    assert "url" not in mapping.fields  # evidence: see the mapping's header
    sources = {
        n: (s, None) if isinstance(s, str) else (s.source, s.convert) for n, s in mapping.evidence.items()
    }
    assert {n: c for n, (src, c) in sources.items() if src == "password"} == {
        "password_masked": "mask_secret"
    }
    assert not any(src == "extra_data" for src, _ in sources.values())


@pytest.mark.parametrize(
    "evidence",
    [{"password": "password"}, {"password": {"from": "password", "convert": "text"}}],
    ids=["copied", "through-another-converter"],
)
def test_schema_refuses_the_raw_password_as_evidence(tmp_path: Path, evidence: dict[str, Any]) -> None:
    raw = yaml.safe_load(MAPPING_FILE.read_text(encoding="utf-8"))
    raw["evidence"].update(evidence)
    path = tmp_path / f"{FORMAT}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    assert any("only mask_secret may read it" in p for p in info.value.problems)


# --- (a) addresses normalised, evidence as intended -----------------------------------------


def test_addresses_are_trimmed_and_lower_cased(cstore: Store, config: Config) -> None:
    summary = ingest(cstore, config)
    assert summary.ok
    objects = stored_objects(cstore)
    assert emails_in(objects) == {r.email for r in ROUTED}
    observables = {r["observable"] for r in notification_rows(cstore)}
    assert observables == {r.email for r in ROUTED}
    indicators = [o for o in objects if o["type"] == "indicator"]
    assert sorted(o["pattern"] for o in indicators) == sorted(
        f"[email-addr:value = '{r.email}']" for r in ROUTED
    )
    # The address is the only observable: its domain routes it (no separate domain-name object).
    assert not [o for o in objects if o["type"] == "domain-name"]


def test_evidence_is_the_masked_password_and_what_else_leaked(cstore: Store, config: Config) -> None:
    ingest(cstore, config)
    evidence = sighting_evidence(stored_objects(cstore))
    assert set(evidence) == {r.email for r in ROUTED}
    for row in ROUTED:
        expected = {
            "password_masked": divd_mask(row.password),
            "url": row.data["url"],
            "ts_leaked": row.data["ts_leaked"],
            **{flag: int(row.data[flag]) for flag in FLAGS},
        }
        assert evidence[row.email] == expected, row.line


# --- (b) the raw passwords go nowhere ----------------------------------------------------------


def test_raw_passwords_reach_no_table_no_log_no_quarantine_reason(
    cstore: Store, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = [r.password for r in ROWS if len(r.password) >= MIN_SEARCHABLE]
    assert len(passwords) == len(ROWS) - 1  # all but the faulty row's one-character password
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy keeps its loggers at WARNING unless asked: asked here, every statement and its
    # parameters (everything sent to the database) is in the captured log too.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    summary = ingest(cstore, config)
    assert summary.counts["quarantined"] == len(FAULTY)
    assert any(r.name == "meldpunt.ingest" for r in caplog.records)
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)
    assert found(passwords, log_text(caplog.records) + caplog.text) == []
    rows = cstore.run_rows(summary.run_id)
    assert rows and all(r["raw"] is None for r in rows)
    assert found(passwords, " ".join(r["reason"] for r in rows)) == []
    # Every column of every table (on PostgreSQL, the brief's "every text column" and more).
    assert found(passwords, dump_text(cstore)) == []
    if cstore.dialect == "sqlite":
        assert found(passwords, sqlite_file_bytes(cstore)) == []


def cli_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MELDPUNT_") and k not in ("COLUMNS", "LINES")
    }
    env["COLUMNS"] = "200"
    return env


def test_cli_at_debug_level_prints_and_logs_no_raw_password(
    cstore: Store, store_url: str, tmp_path: Path
) -> None:
    """The operator's path: `meldpunt --log-level debug ingest`, stdout, stderr and the store."""
    config_file = tmp_path / "meldpunt.yaml"
    config_file.write_text(yaml.safe_dump(credentials_raw(database=store_url)), encoding="utf-8")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "connector.cli", "--log-level", "debug", "ingest"),
            *("--partner", "divd", "--format", FORMAT, "--config", str(config_file), str(SAMPLE)),
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The logs are on stderr (JSON lines; the ingest logs nothing at debug level of its own).
    assert '"logger":"meldpunt.ingest"' in result.stderr, result.stderr
    assert re.search(rf"\bdiscarded\s*│?\s*{len(UNOWNED)}\b", result.stdout), result.stdout
    assert "withheld" in result.stdout  # the quarantined row is listed, without its value
    passwords = [r.password for r in ROWS if len(r.password) >= MIN_SEARCHABLE]
    assert found(passwords, result.stdout) == []
    assert found(passwords, result.stderr) == []
    assert CONSUMER_DOMAIN not in result.stdout.lower()
    assert found(passwords, dump_text(cstore)) == []
    if cstore.dialect == "sqlite":
        assert found(passwords, sqlite_file_bytes(cstore)) == []


# --- (c) the direct owner only -----------------------------------------------------------------


def test_the_parent_links_are_live_in_the_test_deployment(config: Config) -> None:
    """Control: without the personal-data rule every owner's parent would receive it too."""
    router = Router(config)
    for domain, (owner, parent) in OWNERS.items():
        match = router.owner_of_domain(domain)
        assert match == Match(owner, f"domain {domain}")
        chain = router.decide(match, Policy("amber")).recipients
        assert chain == [owner] + ([parent] if parent else [])
        assert router.decide(match, Policy("amber", direct_owner_only=True)).recipients == [owner]


def test_routed_by_mail_domain_to_the_owner_never_to_its_parent(cstore: Store, config: Config) -> None:
    summary = ingest(cstore, config)
    expected: dict[str, set[str]] = {r.id: set() for r in config.recipients}
    for row in ROUTED:
        assert row.owner is not None
        expected[row.owner].add(row.email)
    assert summary.counts["routed"] == len(ROUTED)
    assert dict(summary.per_recipient) == {rid: len(v) for rid, v in expected.items() if v}
    for rid, emails in expected.items():
        assert emails_in(collection(cstore, rid)) == emails, rid
    # The parents hold nothing of it (ibd owns example.nl, so it holds exactly those).
    for parent in ("onderwijs-cert", "zcert"):
        assert collection(cstore, parent) == [], parent
    routed = {r["observable"]: r["recipients"] for r in notification_rows(cstore)}
    assert routed == {r.email: [r.owner] for r in ROUTED}


# --- (d) unowned addresses are discarded -------------------------------------------------------


def test_addresses_nobody_owns_are_counted_and_stored_nowhere(cstore: Store, config: Config) -> None:
    summary = ingest(cstore, config)
    assert summary.counts["discarded"] == summary.counts["unrouted"] == len(UNOWNED) == 4
    assert summary.counts["notifications"] == len(VALID)
    assert summary.counts["new"] == len(ROUTED)
    assert cstore.unrouted(summary.run_id) == []
    everything = dump_text(cstore).lower()
    assert CONSUMER_DOMAIN not in everything
    for row in UNOWNED:
        assert row.email.partition("@")[0] + "@" not in everything, row.line
    assert len(notification_rows(cstore)) == len(ROUTED)


# --- (e) faulty rows ---------------------------------------------------------------------------


def _pw(tag: str) -> str:
    return f"Pw{tag}-{uuid.uuid4().hex[:12]}!"


def faulty_file(directory: Path) -> tuple[Path, dict[str, str], dict[int, tuple[str, ...]], list[int]]:
    """Sample-shaped rows, each carrying a unique searchable password: (path, passwords,
    expected reason fragments by quarantined line, lines that must be routed)."""
    pw = {k: _pw(k) for k in ("A", "B", "C", "D", "E", "F1", "F2", "G", "H", "I", "J1", "J2")}
    pw["C"] = pw["C"].lower()
    flags = ",".join("0" for _ in FLAGS)
    ts, leaked = "2024-09-20T10:00:00Z", "2024-08-30"
    buffer = io.StringIO()
    buffer.write(",".join(["username", "password", "url", "ts_found", "ts_leaked", *FLAGS, "extra_data"]))
    lines = [
        # 2: valid; the URL carries the password as user info, which must be stripped.
        f"user30@example.nl,{pw['A']},https://user30:{pw['A']}@portal.example.nl/login,{ts},{leaked},{flags},",
        # 3: not an e-mail address.
        f"user31.example.nl,{pw['B']},https://portal.example.nl/login,{ts},{leaked},{flags},",
        # 4: a combo-list username (user:password), no '@': the value must not be echoed.
        f"user32:{pw['C']},{pw['C']},https://portal.example.nl/login,{ts},{leaked},{flags},",
        # 5: no timestamp.
        f"user33@example.nl,{pw['D']},https://portal.example.nl/login,,{leaked},{flags},",
        # 6: an unreadable timestamp.
        f"user34@example.nl,{pw['E']},https://portal.example.nl/login,yesterday,{leaked},{flags},",
        # 7: an unquoted comma in the password: one field too many.
        f"user35@example.nl,{pw['F1']},{pw['F2']},https://portal.example.nl/login,{ts},{leaked},{flags},",
        # 8: a URL the converter cannot read (port out of range) with the password in it.
        f"user36@example.nl,{pw['G']},https://user36:{pw['G']}@portal.example.nl:99999/,{ts},{leaked},{flags},",
        # 9: valid; a quoted password with a comma and a quote in it.
        f'user37@example.nl,"{pw["H"]},""q",https://portal.example.nl/login,{ts},{leaked},{flags},',
        # 10: the password where the username belongs.
        f"{pw['I']},{pw['I']},https://portal.example.nl/login,{ts},{leaked},{flags},",
        # 11: an unquoted comma in the password of a row without its trailing empty cell: the
        # header's width, every cell shifted, the URL with the password where ts_found belongs.
        f"user38@example.nl,{pw['J1']},{pw['J2']},https://user38:{pw['J1']}@portal.example.nl/,{ts},{leaked},{flags}",
    ]
    buffer.write("\n" + "\n".join(lines) + "\n")
    path = directory / "DIVD-2024-00099.credentials.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    pw["H"] = f'{pw["H"]},"q'  # the password as the CSV reader sees it
    reasons = {
        3: ("email:", "withheld"),
        4: ("email:", "withheld"),
        5: ("observed_at: missing",),
        6: ("observed_at:", "withheld"),
        7: ("fields where the header has",),
        8: ("evidence url:", "withheld"),
        10: ("email:", "withheld"),
        11: ("observed_at:", "withheld"),
    }
    return path, pw, reasons, [2, 9]


def test_sample_faulty_row_is_quarantined_with_line_and_reason(cstore: Store, config: Config) -> None:
    summary = ingest(cstore, config)
    quarantined = cstore.run_rows(summary.run_id, "quarantined")
    assert [(r["line"], r["raw"]) for r in quarantined] == [(row.line, None) for row in FAULTY]
    (reason,) = [r["reason"] for r in quarantined]
    assert reason.startswith("email:") and "withheld" in reason
    assert "not-an-email" not in reason  # the username is personal data: never echoed


def test_faulty_rows_are_quarantined_without_their_passwords(
    cstore: Store, config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, passwords, reasons, good = faulty_file(tmp_path)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    summary = ingest(cstore, config, path)
    assert summary.ok
    assert summary.counts["read"] == len(reasons) + len(good)
    assert summary.counts["new"] == summary.counts["routed"] == len(good)
    quarantined = cstore.run_rows(summary.run_id, "quarantined")
    assert {r["line"] for r in quarantined} == set(reasons)
    for r in quarantined:
        assert r["raw"] is None, r
        assert all(fragment in r["reason"] for fragment in reasons[r["line"]]), r
        assert found(passwords.values(), r["reason"]) == [], r
    assert found(passwords.values(), dump_text(cstore)) == []
    assert found(passwords.values(), log_text(caplog.records) + caplog.text) == []
    evidence = sighting_evidence(collection(cstore, "ibd"))
    assert evidence["user30@example.nl"]["url"] == "https://portal.example.nl/login"
    assert evidence["user37@example.nl"]["password_masked"] == divd_mask(passwords["H"])
    if cstore.dialect == "sqlite":
        assert found(passwords.values(), sqlite_file_bytes(cstore)) == []


# --- (f) valid STIX ----------------------------------------------------------------------------


def test_every_object_passes_the_validator_and_parses(cstore: Store, config: Config) -> None:
    ingest(cstore, config)
    objects = stored_objects(cstore)
    assert {"indicator", "email-addr", "observed-data", "sighting"} <= {o["type"] for o in objects}
    for obj in objects:
        bundle = {"type": "bundle", "id": "bundle--0d6c5ba3-4b9e-4a50-9c5f-1f2c3b4a5d6e", "objects": [obj]}
        result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
        assert stix2.parse(obj, allow_custom=False).id == obj["id"]
    for obj in (o for o in objects if o["type"] == "email-addr"):
        assert stix2.v21.EmailAddress(value=obj["value"]).id == obj["id"]


# --- (g) idempotence ---------------------------------------------------------------------------


def test_reingesting_the_file_changes_nothing(cstore: Store, config: Config) -> None:
    first = ingest(cstore, config)
    before = {k: v for k, v in table_dump(cstore).items() if k not in ("ingest_runs", "run_rows")}
    again = ingest(cstore, config)
    after = {k: v for k, v in table_dump(cstore).items() if k not in ("ingest_runs", "run_rows")}
    assert after == before
    assert again.counts["new"] == again.counts["updated"] == 0
    assert again.counts["unchanged"] == first.counts["new"] == len(ROUTED)
    assert again.counts["discarded"] == len(UNOWNED)
    assert again.counts["quarantined"] == len(FAULTY)


# --- combo-list usernames and tricky local parts (gaps found and fixed) -----------------------


def _one_row(directory: Path, username: str, password: str) -> Path:
    path = directory / "DIVD-2024-00098.credentials.csv"
    header = ",".join(["username", "password", "url", "ts_found", "ts_leaked", *FLAGS, "extra_data"])
    row = f"{username},{password},https://portal.example.nl/login,2024-09-20T10:00:00Z,2024-08-30"
    path.write_text(f"{header}\n{row},{','.join('0' for _ in FLAGS)},\n", encoding="utf-8")
    return path


@pytest.fixture
def sqlite_only(tmp_path: Path, config: Config) -> Store:
    store = Store.open(f"sqlite:///{tmp_path / 'gap.db'}")
    store.sync_collections(collection_rows(config))
    return store


def test_gap_combo_list_username_is_not_stored_as_an_address(
    sqlite_only: Store, config: Config, tmp_path: Path
) -> None:
    password = f"combo-{uuid.uuid4().hex[:12]}"
    summary = ingest(sqlite_only, config, _one_row(tmp_path, f"user40@example.nl:{password}", password))
    assert found([password], dump_text(sqlite_only)) == []
    assert summary.counts["quarantined"] == 1


def test_gap_address_is_routed_by_its_own_domain(sqlite_only: Store, config: Config, tmp_path: Path) -> None:
    path = _one_row(tmp_path, "portal.example.nl#@school.example.net", _pw("J"))
    ingest(sqlite_only, config, path)
    assert collection(sqlite_only, "ibd") == []  # example.nl's owner must not get school's address


def test_mapping_file_is_the_one_loaded() -> None:
    assert isinstance(load_mapping(MAPPING_FILE), Mapping)
    assert load_mapping(MAPPING_FILE) == load_mappings()[FORMAT]
