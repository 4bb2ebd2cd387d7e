"""Bad input never crashes an ingest run, on either engine: each test feeds a real sample with
one fault planted beside good rows and checks the fault is quarantined with its line and reason
while the good rows become notifications."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.mapping import load_mappings
from connector.config import Config, parse_config
from connector.ingest import Ingestor, RunSummary
from connector.store import Store
from connector.yamlfile import load_yaml
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA

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


@pytest.mark.parametrize(
    ("report", "old", "new", "reason"),
    [
        # Phishing URLs run long; the natural key's observable column is 300 characters wide.
        ("phish_url", "/Postal-/acec6/", "/Postal-/acec6/" + "x" * 400, "observable: 449 characters"),
        ("special", "cyclops-blink", "cyclops-blink" + "y" * 200, "identifier: 213 characters"),
        ("special", "cyclops-blink", "cyclops\x00-blink", "identifier: contains a NUL character"),
    ],
)
def test_a_value_the_store_cannot_hold_is_quarantined_beside_good_rows(
    tmp_path: Path, store: Store, config: Config, report: str, old: str, new: str, reason: str
) -> None:
    """PostgreSQL refused the row (value too long for its column, NUL in text) and failed the
    whole run with a traceback; SQLite stored it. Now both quarantine it."""
    path = report_with(tmp_path, report, 1, old, new)
    good = len((SHADOWSERVER / f"{report}.csv").read_text(encoding="utf-8").splitlines()) - 2
    summary = ingest(store, config, "shadowserver", "shadowserver", path)
    assert summary.counts["quarantined"] == 1
    assert summary.counts["notifications"] == good
    [row] = run_rows(store, summary)
    assert row["line"] == 2 and row["reason"].startswith(reason)


def test_a_misp_event_whose_info_is_too_long_for_an_identifier_is_quarantined(
    tmp_path: Path, store: Store, config: Config
) -> None:
    event = json.loads(MISP_EVENT.read_text(encoding="utf-8"))
    body = event.get("Event", event)
    body["info"] = "OSINT - " + "a long description of the campaign " * 8
    good = json.loads(MISP_EVENT.read_text(encoding="utf-8"))
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(event) + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    summary = ingest(store, config, "connect2trust", "misp-event", path)
    assert summary.counts["quarantined"] == 1 and summary.counts["notifications"] > 0
    [row] = run_rows(store, summary)
    assert row["line"] == 1 and row["reason"].startswith("identifier: ")


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
