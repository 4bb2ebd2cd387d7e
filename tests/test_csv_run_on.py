"""A stray quote in a CSV row must not swallow the rows after it.

Found by a first-time operator's review (4 December 2026): an unclosed `"` in one row of a
Shadowserver report made the csv module read every later line into that row's last cell, up to
the end of the file. The run said "read 10" for a file of 100 rows, padding turned the short
record into a valid row, and the swallowed rows (other organisations' hosts) were delivered as
its evidence to the first row's recipient. Now the row that opened the quote is quarantined and
the lines after it are read as the rows they are.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from connector.adapters.mapping import load_mappings
from connector.adapters.readers import RawRecord, RowError, read_csv
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.store import Store
from connector.yamlfile import load_yaml
from tests.conftest import SAMPLE_CONFIG, SHARED_DATA
from tests.record_view import notification_rows

HEADER = "timestamp,ip,port,server"
CREDENTIALS = SHARED_DATA / "credentials" / "DIVD-2024-00037.credentials.csv"


def read(*lines: str, pad: bool = True) -> list[RawRecord | RowError]:
    return list(read_csv(io.BytesIO(("\n".join(lines) + "\n").encode()), pad_short_rows=pad))


def good(rows: list[RawRecord | RowError]) -> list[tuple[int, str]]:
    return [(r.line, r.data["ip"]) for r in rows if isinstance(r, RawRecord)]


def faults(rows: list[RawRecord | RowError]) -> list[RowError]:
    return [r for r in rows if isinstance(r, RowError)]


@pytest.mark.parametrize("pad", [True, False])
def test_an_unclosed_quote_to_the_end_of_the_file_hides_no_row(pad: bool) -> None:
    rows = read(
        HEADER,
        "2024-06-01,192.0.2.1,80,nginx",
        '2024-06-01,192.0.2.2,80,"nginx',  # the quote is never closed
        "2024-06-01,192.0.2.3,80,nginx",
        "2024-06-01,198.51.100.4,80,apache",
        "2024-06-01,198.51.100.5,80,iis",
        pad=pad,
    )
    assert good(rows) == [(2, "192.0.2.1"), (4, "192.0.2.3"), (5, "198.51.100.4"), (6, "198.51.100.5")]
    [fault] = faults(rows)
    assert fault.line == 3
    assert fault.raw == '2024-06-01,192.0.2.2,80,"nginx'
    assert "a quoted field opened on line 3 runs on to line 6" in fault.reason
    assert "4 fields where the header has 4" not in fault.reason


def test_a_stray_quote_closed_by_a_later_one_hides_no_row() -> None:
    rows = read(
        HEADER,
        '2024-06-01,192.0.2.1,80,"nginx',  # opened here...
        "2024-06-01,192.0.2.2,80,nginx",
        '2024-06-01,192.0.2.3,80,apache"x',  # ...closed here: one record of 7 fields
        "2024-06-01,192.0.2.4,80,iis",
    )
    assert good(rows) == [(3, "192.0.2.2"), (4, "192.0.2.3"), (5, "192.0.2.4")]
    assert [(f.line, "runs on to line 4" in f.reason) for f in faults(rows)] == [(2, True)]


def test_a_quoted_line_break_in_a_row_of_the_right_width_is_one_row() -> None:
    rows = read(
        HEADER,
        '2024-06-01,192.0.2.1,80,"nginx\nbanner line two"',
        "2024-06-01,192.0.2.2,80,apache",
        "2024-06-01,192.0.2.3,80",  # short: padded
    )
    assert good(rows) == [(2, "192.0.2.1"), (4, "192.0.2.2"), (5, "192.0.2.3")]
    first = rows[0]
    assert isinstance(first, RawRecord) and first.data["server"] == "nginx\nbanner line two"
    assert faults(rows) == []


def test_a_run_on_past_the_field_size_limit_hides_no_row() -> None:
    """The csv module refuses a field over its limit (131,072 characters) part-way through the
    swallowed lines: the lines after the row that opened the quote are read again all the same."""
    filler = ["2024-06-01,192.0.2.9,80," + "x" * 1000] * 200  # 200 KB of good rows
    rows = read(HEADER, '2024-06-01,192.0.2.1,80,"nginx', *filler, "2024-06-01,198.51.100.7,80,iis")
    assert len(good(rows)) == 201 and good(rows)[-1] == (203, "198.51.100.7")
    [fault] = faults(rows)
    assert fault.line == 2 and "field larger than field limit" in fault.reason
    assert csv.field_size_limit() == 131_072  # what the test relies on


def test_rows_after_a_run_on_keep_their_line_numbers() -> None:
    rows = read(
        HEADER,
        '2024-06-01,192.0.2.1,80,"a',
        '2024-06-01,192.0.2.2,80,"b',  # a second stray quote inside the first's run
        "2024-06-01,192.0.2.3,80,c",
    )
    # line 2's quote is closed by line 3's: one record over lines 2-3 of 7 fields, a fault; line
    # 3 read again runs on to the end, another; line 4 a row.
    assert [f.line for f in faults(rows)] == [2, 3]
    assert good(rows) == [(4, "192.0.2.3")]


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> Config:
    raw = load_yaml(SAMPLE_CONFIG)
    raw["partners"] += [
        {"id": "shadowserver", "name": "Shadowserver Foundation", "formats": ["shadowserver"]}
    ]
    return parse_config(raw, source="example config + shadowserver")


SHADOWSERVER_HEADER = '"timestamp","ip","protocol","port","hostname","tag","asn","server","http_code"'


def test_a_stray_quote_delivers_nobody_elses_rows(tmp_path: Path, config: Config, store: Store) -> None:
    """Z-CERT's host with the stray quote first, then IBD's hosts: each reaches its own
    recipient, and the row with the quote is quarantined."""
    rows = ['"2024-06-01 10:00:00","192.0.2.10","tcp",80,,"http",64500,"nginx,200']  # no closing quote
    rows += [
        f'"2024-06-01 10:00:00","198.51.100.{i}","tcp",80,,"http",64501,"apache",200' for i in range(1, 21)
    ]
    path = tmp_path / "2024-06-01-scan_http-nl.csv"
    path.write_text("\n".join([SHADOWSERVER_HEADER, *rows]) + "\n", encoding="utf-8")
    summary = Ingestor(config, store, load_mappings()).run("shadowserver", "shadowserver", [path])
    assert (summary.counts["read"], summary.counts["notifications"], summary.counts["quarantined"]) == (
        21,
        20,
        1,
    )
    quarantine = [r for r in store.run_rows(summary.run_id) if r["kind"] == "quarantined"]
    assert [q["line"] for q in quarantine] == [2], quarantine
    # the next line's first quote closes it: before, that line was lost with it
    assert "runs on to line 3" in quarantine[0]["reason"], quarantine
    delivered = {row["observable"]: row["recipients"] for row in notification_rows(store)}
    assert len(delivered) == 20
    assert all(recipients == ["ibd"] for recipients in delivered.values())


def test_a_stray_quote_in_personal_data_hides_no_account(
    tmp_path: Path, config: Config, store: Store
) -> None:
    """divd-credentials pads no row: before, the record of the quote was a fault and the
    accounts after it vanished, counted nowhere."""
    lines = CREDENTIALS.read_text(encoding="utf-8").splitlines()
    accounts = len(lines) - 1
    first = lines[3].split(",")
    first[1] = '"' + first[1]
    lines[3] = ",".join(first)
    path = tmp_path / CREDENTIALS.name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = Ingestor(config, store, load_mappings()).run("divd", "divd-credentials", [path])
    quarantine = [r for r in store.run_rows(summary.run_id) if r["kind"] == "quarantined"]
    assert [q["line"] for q in quarantine] == [4, 26]  # 26: the sample's own bad row ("not-an-email")
    assert summary.counts["read"] == accounts
    assert summary.counts["notifications"] + summary.counts["quarantined"] == accounts


def test_an_empty_input_is_no_failure_but_is_said(tmp_path: Path, config: Config, store: Store) -> None:
    """A 0-byte report is usually a failed download: the run succeeds, with a warning naming it
    (found by a new operator's review: it passed in silence)."""
    empty = tmp_path / "2024-06-01-scan_http-nl.csv"
    empty.write_bytes(b"")
    summary = Ingestor(config, store, load_mappings()).run("shadowserver", "shadowserver", [empty])
    assert summary.ok and summary.counts["read"] == 0
    assert summary.warnings == [
        f"{empty.name}: the input is empty, not even a header line (a failed download?)"
    ]
