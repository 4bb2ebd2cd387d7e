"""`forget` finds a value in every form and case it is stored in, and nothing else.

Found by a retention review (4 December 2026), each on both engines: a capitalised host name in
a quarantined raw line stayed after forget; a trailing dot, which the command line accepts,
found nothing; forgetting 192.0.2.1 deleted 192.0.2.10's quarantined row; a file name naming
the value stayed in the run's rows; forgetting 2001:db8::1 removed 2001:db8::1:5's notification.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.retention import forget
from connector.store import Store
from tests.conftest import DIVD_SCAN
from tests.test_credentials import credentials_raw, dump_text

CASE = DIVD_SCAN.with_name("DIVD-2024-00012.yaml")


@pytest.fixture
def config() -> Config:
    return parse_config(credentials_raw(), source="forget test config")


def divd_line(**changes: object) -> str:
    row = json.loads(DIVD_SCAN.read_text().splitlines()[0], strict=False)
    row.update(changes)
    return json.dumps(row)


def divd_file(directory: Path, lines: list[str], name: str = "DIVD-2024-00012") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.nuclei.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (directory / f"{name}.yaml").write_text(CASE.read_text())
    return path


def ingest(config: Config, store: Store, path: Path) -> None:
    store.sync_collections(collection_rows(config))
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [path])


def notification_ips(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SELECT ip FROM notifications"))


def test_a_capitalised_host_name_is_forgotten(store: Store, config: Config, tmp_path: Path) -> None:
    host = "https://WWW.Jansen-Thuis.Example.NL"
    ingest(config, store, divd_file(tmp_path, [divd_line(ip="192.0.2.77", host=host, port="not a port")]))
    assert "www.jansen-thuis.example.nl" in dump_text(store).lower()  # the quarantined raw line
    forget(store, config, "www.jansen-thuis.example.nl")
    assert "www.jansen-thuis.example.nl" not in dump_text(store).lower()


def test_a_host_name_with_a_trailing_dot_is_forgotten(store: Store, config: Config, tmp_path: Path) -> None:
    ingest(
        config,
        store,
        divd_file(tmp_path, [divd_line(ip="192.0.2.78", host="https://www.jansen-thuis.example.nl")]),
    )
    assert "www.jansen-thuis.example.nl" in dump_text(store)
    report = forget(store, config, "www.jansen-thuis.example.nl.")
    assert report.counts["notifications"] >= 1
    assert "www.jansen-thuis.example.nl" not in dump_text(store)


def test_another_addresss_quarantined_row_is_kept(store: Store, config: Config, tmp_path: Path) -> None:
    ingest(config, store, divd_file(tmp_path, [divd_line(ip="192.0.2.10", port="not a port")]))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM run_rows").scalar() == 1
    assert forget(store, config, "192.0.2.1", dry_run=True).counts["run_rows"] == 0
    report = forget(store, config, "192.0.2.1")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM run_rows").scalar() == 1, dict(report.counts)
    assert "192.0.2.10" in dump_text(store)


def test_a_file_name_naming_the_value_is_redacted(store: Store, config: Config, tmp_path: Path) -> None:
    address = "2001:db8::77"
    lines = [
        divd_line(ip="192.0.2.79", port="not a port"),
        divd_line(ip=address, host=f"https://[{address}]"),
    ]
    ingest(config, store, divd_file(tmp_path, lines, name=f"DIVD-2024-00012-{address}"))
    assert address in dump_text(store)
    forget(store, config, address)
    assert address not in dump_text(store)
    with store.engine.connect() as conn:  # the row quoting 192.0.2.79 stays, its file renamed
        [(name, raw)] = conn.exec_driver_sql("SELECT input, raw FROM run_rows").all()
    assert "[removed at a data subject's request]" in name and "192.0.2.79" in raw


def test_an_ipv6_address_is_not_found_in_a_longer_one(store: Store, config: Config, tmp_path: Path) -> None:
    lines = [
        divd_line(ip=ip, host=f"https://[{ip}]", **{"matched-at": f"https://[{ip}]/php-cgi/php-cgi.exe"})
        for ip in ("2001:db8::1", "2001:db8::1:5")
    ]
    ingest(config, store, divd_file(tmp_path, lines))
    assert notification_ips(store) == ["2001:db8::1", "2001:db8::1:5"]
    assert forget(store, config, "2001:db8::1", dry_run=True).counts["notifications"] == 1
    forget(store, config, "2001:db8::1")
    assert notification_ips(store) == ["2001:db8::1:5"]


def test_redaction_covers_overlapping_mentions_once() -> None:
    """Mentions may overlap (every start is tried): they are redacted as one stretch, and a
    longer token is left as it is."""
    from connector.retention import REDACTED, _redactor

    redact = _redactor(["a.nl/a.nl", "192.0.2.1"])
    text = "see xa.nl/a.nl/a.nl and a.nl/a.nl, 192.0.2.10 192.0.2.1 DIVD-1-192.0.2.1.jsonl"
    assert redact(text) == (
        f"see xa.nl/{REDACTED} and {REDACTED}, 192.0.2.10 {REDACTED} DIVD-1-{REDACTED}.jsonl"
    )
