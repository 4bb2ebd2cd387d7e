"""Bad input never crashes an ingest run, on either engine: each test feeds a real sample with
one fault planted beside good rows and checks the fault is quarantined with its line and reason
while the good rows become notifications."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from connector.adapters.mapping import load_mappings
from connector.config import Config, parse_config
from connector.counts import RunSummary
from connector.ingest import Ingestor
from connector.store import Store
from connector.yamlfile import load_yaml
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA
from tests.record_view import notification_rows
from tests.test_membership_layout import alembic

SHADOWSERVER = SHARED_DATA / "shadowserver"
MISP_EVENT = SHARED_DATA / "misp" / "connect2trust-event.json"


@pytest.fixture(scope="module")
def config() -> Config:
    """The example deployment plus partners delivering Shadowserver reports and MISP events."""
    raw = load_yaml(SAMPLE_CONFIG)
    raw["partners"] += [
        {"id": "shadowserver", "name": "Shadowserver Foundation", "formats": ["shadowserver"]},
        {"id": "connect2trust", "name": "Connect2Trust", "formats": ["misp-event"]},
    ]
    return parse_config(raw, source="example config + shadowserver, connect2trust")


def ingest(store: Store, config: Config, partner: str, fmt: str, path: Path) -> RunSummary:
    return Ingestor(config, store, load_mappings()).run(partner, fmt, [path])


def run_rows(store: Store, summary: RunSummary) -> list[dict[str, Any]]:
    return [r for r in store.run_rows(summary.run_id) if r["kind"] == "quarantined"]


def report_with(tmp_path: Path, report: str, row: int, old: str, new: str) -> Path:
    """A copy of a Shadowserver sample (under a Shadowserver file name) with one row changed."""
    lines = (SHADOWSERVER / f"{report}.csv").read_text(encoding="utf-8").splitlines()
    assert old in lines[row]
    lines[row] = lines[row].replace(old, new)
    path = tmp_path / f"2024-06-01-{report}-nl.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_nul_character_the_store_cannot_hold_is_quarantined_beside_good_rows(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """PostgreSQL text cannot hold a NUL: the row failed the whole run with a traceback, while
    SQLite stored it. Now both quarantine it, and the rows beside it go in."""
    path = report_with(tmp_path, "special", 1, "cyclops-blink", "cyclops\x00-blink")
    good = len((SHADOWSERVER / "special.csv").read_text(encoding="utf-8").splitlines()) - 2
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["quarantined"] == 1
    assert summary.counts["notifications"] == good
    [row] = run_rows(store, summary)
    assert row["line"] == 2 and row["reason"] == "identifier: contains a NUL character"


@pytest.mark.parametrize(
    ("report", "old", "new"),
    [
        # Phishing URLs run long (these columns were 300 and 128 characters wide: migration 0005).
        ("phish_url", "/Postal-/acec6/", "/Postal-/acec6/" + "x" * 4000),
        ("special", "cyclops-blink", "cyclops-blink" + "y" * 1000),
    ],
)
def test_long_observables_and_identifiers_are_stored_whole(
    tmp_path: Path, store: Store, config: Config, report: str, old: str, new: str
) -> None:
    """PostgreSQL refused them (varchar) and failed the run; a valid notification must not be
    lost for its length, so it is stored whole, on both engines, and ingesting it again
    changes nothing."""
    path = report_with(tmp_path, report, 1, old, new)
    rows = len((SHADOWSERVER / f"{report}.csv").read_text(encoding="utf-8").splitlines()) - 1
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["quarantined"] == 0 and summary.counts["notifications"] == rows
    stored = [r for r in notification_rows(store) if new in r["observable"] or r["identifier"] == new]
    assert len(stored) == 1
    again = ingest(store, config, "shadowserver", "shadowserver", path)
    assert again.counts["new"] == 0 and again.counts["updated"] == 0


def test_a_misp_event_with_a_long_info_is_stored(tmp_path: Path, store: Store, config: Config) -> None:
    """A MISP event's `info` becomes identifiers; past 128 characters PostgreSQL refused it."""
    event = json.loads(MISP_EVENT.read_text(encoding="utf-8"))
    body = event.get("Event", event)
    body["info"] = "OSINT - " + "a long description of the campaign " * 8
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event) + "\n", encoding="utf-8")
    summary = ingest(store, config, "connect2trust", "misp-event", path)
    assert summary.counts["quarantined"] == 0 and summary.counts["notifications"] > 0
    longest = max(len(r["identifier"]) for r in notification_rows(store))
    assert longest > 128


def test_evidence_nested_too_deeply_to_store_is_quarantined(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """A DIVD finding whose `matched-at` is a 300-deep object: orjson refused it when the batch
    was written, failing the run."""
    sample = SHARED_DATA / "divd" / "DIVD-2024-00012.nuclei.jsonl"
    lines = sample.read_text(encoding="utf-8").splitlines()
    finding = json.loads(next(line for line in lines if '"matched-at"' in line and "CVE-" in line))
    finding |= {
        "ip": "192.0.2.99",
        "host": "192.0.2.99",
        "matched-at": json.loads('{"a":' * 300 + "1" + "}" * 300),
    }
    path = tmp_path / sample.name
    path.write_text("\n".join([*lines, json.dumps(finding)]) + "\n", encoding="utf-8")
    (tmp_path / "DIVD-2024-00012.yaml").write_bytes((sample.parent / "DIVD-2024-00012.yaml").read_bytes())
    summary = ingest(store, config, "divd", "divd-nuclei", path)
    assert summary.ok
    deep = [r for r in run_rows(store, summary) if r["line"] == len(lines) + 1]
    assert deep and deep[0]["reason"].startswith("evidence: cannot be stored as JSON")
    assert summary.counts["notifications"] > 0


def test_a_quarantined_row_holding_a_nul_byte_is_recorded(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """The raw line of a row quarantined for its NUL-bearing host name: PostgreSQL refused the
    run row itself, so recording the fault failed the run."""
    path = report_with(tmp_path, "scan_http", 1, "c-75-74-78-113", "c-75\x00-74-78-113")
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["quarantined"] == 1 and summary.counts["notifications"] == 1
    [row] = run_rows(store, summary)
    assert "\x00" not in row["raw"] and "c-75\\x00-74" in row["raw"]


def test_a_quarantine_reason_quoting_a_huge_value_is_cut(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """A STIX object with a 1 MB id: the validator's message quotes it several times, and the
    run row held all of it (70 MB for a 10 MB id)."""
    bundle = json.loads((Path(__file__).parent / "data" / "stix" / "researcher-1.bundle.json").read_text())
    bundle["objects"].insert(0, {"type": "identity", "id": "identity--" + "z" * 1_000_000})
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    summary = Ingestor(config, store, load_mappings()).run("researcher-1", "stix", [path])
    huge = [r for r in run_rows(store, summary) if r["line"] == 1]
    assert huge and len(huge[0]["reason"]) <= 2000


def test_a_json_document_nested_too_deeply_is_quarantined_not_a_crash(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """An X-ARF array with a 100,000-deep value: the json module's RecursionError escaped the
    reader and failed the run with a traceback, losing the good report read before it."""
    raw = load_yaml(SAMPLE_CONFIG)
    raw["partners"].append({"id": "nbip", "name": "NBIP CleanNetworks", "formats": ["xarf"]})
    nbip = parse_config(raw, source="example config + nbip")
    report = (SHARED_DATA / "xarf" / "samples" / "connection-port-scan.json").read_text(encoding="utf-8")
    path = tmp_path / "reports.json"
    path.write_text("[" + report + "," + "[" * 100_000 + "]" * 100_000 + "]", encoding="utf-8")
    summary = ingest(store, nbip, "nbip", "xarf", path)
    assert summary.counts["notifications"] == 1 and summary.counts["quarantined"] == 1
    assert "nested too deeply" in run_rows(store, summary)[0]["reason"]


def test_a_misp_event_nested_too_deeply_in_a_list_is_quarantined_not_a_crash(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """orjson writes 255 levels at most: the reader's excerpt of a deeper event raised a
    TypeError that failed the run."""
    good = json.loads(MISP_EVENT.read_text(encoding="utf-8"))
    deep = {
        "Event": {
            "uuid": "5b8c6f3e-2f1a-4d0e-9a51-6a3c2b1d9e09",
            "info": "x",
            "x": json.loads("[" * 300 + "]" * 300),
        }
    }
    path = tmp_path / "events.json"
    path.write_text(json.dumps([good, deep]), encoding="utf-8")
    summary = ingest(store, config, "connect2trust", "misp-event", path)
    assert summary.counts["notifications"] > 0 and summary.counts["quarantined"] == 1
    [row] = run_rows(store, summary)
    assert row["line"] == 2


def test_migration_0005_keeps_notifications_both_ways(store_url: str) -> None:
    """The widening (0005) carries a store's notifications over and back unchanged; SQLite
    rebuilds the table to do it."""
    alembic(store_url, "upgrade", "0004")
    row = {
        "key": "k" * 64,
        "partner": "shadowserver",
        "feed": "shadowserver-special",
        "classification": "vulnerable/vulnerable-system",
        "identifier": "cyclops-blink",
        "observable": "192.0.2.1:443",
        "day": "2024-06-01",
        "tlp": "amber",
        "sighting_id": "sighting--00000000-0000-5000-8000-000000000000",
        "first_seen": 1,
        "last_seen": 2,
        "count": 2,
        "created": "2024-06-01T00:00:00.000Z",
        "modified": "2024-06-01T00:00:00.000Z",
        "recipients": '["zcert"]',
        "first_run": 1,
        "last_run": 1,
    }

    columns = ", ".join(row)

    def stored() -> list[dict[str, Any]]:
        engine = create_engine(store_url)
        with engine.connect() as conn:  # the columns 0005 knows (0006 adds more)
            rows = [dict(r._mapping) for r in conn.execute(text(f"SELECT {columns} FROM notifications"))]
        engine.dispose()
        return rows

    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO notifications ({columns}) VALUES ({', '.join(':' + k for k in row)})"), row
        )
    engine.dispose()
    alembic(store_url, "upgrade", "0006")
    assert stored() == [row]
    alembic(store_url, "downgrade", "0004")
    assert stored() == [row]
    Store.open(store_url).close()  # and on to the record (0007): the notification is kept
    store = Store.open(store_url)
    [kept] = notification_rows(store)
    store.close()
    assert (kept["observable"], kept["identifier"], kept["count"], kept["legacy"]) == (
        "192.0.2.1:443",
        "cyclops-blink",
        2,
        True,
    )


def latin1_report(tmp_path: Path, report: str, row: int, old: str, new: str) -> Path:
    """A copy of a Shadowserver sample whose one row has a value in Latin-1 bytes."""
    lines = (SHADOWSERVER / f"{report}.csv").read_bytes().splitlines()
    assert old.encode() in lines[row]
    lines[row] = lines[row].replace(old.encode(), new.encode("latin-1"))
    path = tmp_path / f"2024-06-01-{report}-nl.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_csv_row_that_is_not_utf8_is_quarantined_not_altered(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """It was read with each bad byte as U+FFFD and stored so, silently: `café.example.nl`
    in Latin-1 became a host name nobody has. Now the row is quarantined, naming the column,
    and the rows beside it go in."""
    path = latin1_report(tmp_path, "compromised_website", 1, '"example.com"', '"café.example.com"')
    rows = len((SHADOWSERVER / "compromised_website.csv").read_bytes().splitlines()) - 1
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["quarantined"] == 1 and summary.counts["notifications"] == rows - 1
    [row] = run_rows(store, summary)
    assert row["line"] == 2
    assert row["reason"].startswith("not valid UTF-8") and "hostname" in row["reason"]
    assert "caf\ufffd.example.com" in row["raw"]  # the excerpt shows where, and can be stored
    observables = [r["observable"] for r in notification_rows(store)]
    assert not any("\ufffd" in o for o in observables)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("utf-16", "unreadable header: not valid UTF-8"),
        ("duplicate", "unreadable header: column(s) named more than once: ip"),
    ],
)
def test_a_csv_whose_header_cannot_be_used_is_one_clear_fault(
    tmp_path: Path, store: Store, config: Config, content: str, reason: str
) -> None:
    """A UTF-16 file gave one "N fields where the header has M" per row; a header naming `ip`
    twice kept the second cell silently. Either is one fault at line 1 saying what is wrong."""
    text = (SHADOWSERVER / "compromised_website.csv").read_text(encoding="utf-8")
    path = tmp_path / "2024-06-01-compromised_website-nl.csv"
    if content == "utf-16":
        path.write_bytes(text.encode("utf-16"))
    else:
        header, rest = text.split("\n", 1)
        path.write_text(header.replace('"port"', '"ip"') + "\n" + rest, encoding="utf-8")
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["notifications"] == 0 and run_rows(store, summary) == []
    [row] = store.run_rows(summary.run_id)
    assert row["line"] == 1 and row["reason"].startswith(reason)
    # An input error (exit 1), also beside a good input: found by a new operator's review, the
    # run had counted it as one quarantined row and exited 0 when another input made notifications.
    assert row["kind"] == "input-error" and not summary.ok
    good = tmp_path / "good" / "2024-06-01-compromised_website-nl.csv"
    good.parent.mkdir()
    good.write_text(text, encoding="utf-8")
    both = Ingestor(config, store, load_mappings()).run("shadowserver", "shadowserver", [good, path])
    assert both.counts["notifications"] > 0 and not both.ok
    assert [e.startswith(f"{path.name}: {reason}") for e in both.input_errors] == [True]


def test_a_password_that_is_not_utf8_is_quarantined_without_its_value(
    tmp_path: Path, store: Store, config: Config
) -> None:
    """A leaked-credentials row in Latin-1: quarantined naming the column, no raw line kept."""
    sample = next((SHARED_DATA / "credentials").glob("*.csv"))
    lines = sample.read_bytes().splitlines()
    header = lines[0].decode().split(",")
    column = next(i for i, name in enumerate(header) if "password" in name)
    cells = lines[1].split(b",")
    cells[column] = "geheim-é-wachtwoord".encode("latin-1")
    lines[1] = b",".join(cells)
    path = tmp_path / sample.name
    path.write_bytes(b"\n".join(lines) + b"\n")
    for sidecar in sample.parent.glob("*.yaml"):
        (tmp_path / sidecar.name).write_bytes(sidecar.read_bytes())
    summary = ingest(store, config, "divd", "divd-credentials", path)
    [row] = [r for r in run_rows(store, summary) if r["line"] == 2]
    assert row["reason"].startswith("not valid UTF-8") and header[column] in row["reason"]
    assert row["raw"] is None
    assert "geheim" not in repr(store.run_rows(summary.run_id))


def test_jsonl_and_xarf_reports_that_are_not_utf8_are_quarantined(tmp_path: Path) -> None:
    """JSON lines said "not valid JSON (truncated line?)"; a document's report was altered."""
    from connector.adapters import xarf
    from connector.adapters.readers import NOT_UTF8, read_jsonl

    report = json.loads((SHARED_DATA / "xarf" / "samples" / "connection-port-scan.json").read_text())
    good = json.dumps(report).encode()
    bad = json.dumps(report | {"description": "caf\udce9"}, ensure_ascii=False).encode(
        "utf-8", "surrogateescape"
    )
    rows = list(read_jsonl(io.BytesIO(good + b"\n" + bad + b"\n")))
    assert [type(r).__name__ for r in rows] == ["RawRecord", "RowError"] and rows[1].reason == NOT_UTF8
    document = b"[" + good + b",\n" + bad + b",\n" + good + b"]"
    rows = list(xarf.read_reports(io.BytesIO(document)))
    assert [type(r).__name__ for r in rows] == ["RawRecord", "RowError", "RawRecord"]
    assert rows[1].reason == NOT_UTF8 and rows[1].line == 2 and "caf\ufffd" in rows[1].raw
