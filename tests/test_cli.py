"""The `meldpunt` command line, driven as operators drive it: a real process, real files.

Each command runs as `python -m connector.cli ...` in a subprocess (the same code the
`meldpunt` console script calls), with a config written to a temporary directory whose store
is a SQLite file there, so nothing outside tmp is read or written. Expected ingest counts are
derived from the sample scan and the config rather than copied from the program's output, so
a routing or parsing regression cannot "agree with itself".
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import stix2
import yaml

from connector.collections import recipient_collection_id
from connector.counts import COUNT_NAMES
from connector.passwords import hash_password, verify_password
from connector.render.collection import CollectionView
from connector.store import Store
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, password_for

# --- helpers ---------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "connector.cli"]
TIMEOUT = 60  # seconds: a hung command (e.g. `serve` that did start) fails instead of hanging
CASE_YAML = DIVD_SCAN.with_name(DIVD_SCAN.name.split(".", 1)[0] + ".yaml")


def cli_env(config: Path | None, *, columns: int | None = 200) -> dict[str, str]:
    """The caller's environment minus anything that could point at a real deployment.

    COLUMNS is set wide because rich lays tables out to the terminal width (80 when piped);
    wide rows keep one table row on one line, which is what the parsers below expect.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MELDPUNT_") and k not in ("COLUMNS", "LINES")
    }
    if config is not None:
        env["MELDPUNT_CONFIG"] = str(config)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return env


def run_cli(
    *args: str,
    cwd: Path,
    config: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env if env is not None else cli_env(config),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """Failure message with both streams: a bare exit code says nothing."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def example_raw() -> dict[str, Any]:
    data = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@cache
def known_password_hash(username: str) -> str:
    """argon2 is slow on purpose (~0.2 s a hash): hash each test password once per session."""
    return hash_password(password_for(username))


def write_config(directory: Path, raw: dict[str, Any] | None = None) -> Path:
    """The example deployment with its store in `directory` and known test passwords."""
    raw = raw if raw is not None else example_raw()
    raw["database"] = f"sqlite:///{directory / 'meldpunt.db'}"
    for u in raw["users"]:
        u["password_hash"] = known_password_hash(u["username"])
    path = directory / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_COUNT_ROW = re.compile(r"^│\s*(\w+)\s*│\s*(\d+)\s*│$", re.MULTILINE)
_RUN_ROW = re.compile(
    r"^│\s*(\S+)\s*│\s*(\d+)\s*│\s*(quarantined|input-error)\s*│\s*(.*?)\s*│$", re.MULTILINE
)


def counts_of(stdout: str) -> dict[str, int]:
    """The two-column counts table printed by `ingest`."""
    counts = {name: int(value) for name, value in _COUNT_ROW.findall(stdout) if name in COUNT_NAMES}
    assert set(counts) == set(COUNT_NAMES), f"counts table incomplete:\n{stdout}"
    return counts


def not_ingested_rows(stdout: str) -> dict[int, str]:
    """line -> reason, from the `not ingested` table."""
    return {int(line): reason for _input, line, _kind, reason in _RUN_ROW.findall(stdout)}


def delivered(stdout: str) -> dict[str, int]:
    """recipient -> delivered, from the per-recipient table of `ingest` (delivered, suppressed...)."""
    rows = re.findall(r"^│\s*([a-z0-9][\w.-]*)\s*│\s*(\d+)\s*│(?:\s*\d+\s*│)+$", stdout, re.MULTILINE)
    return {rid: int(n) for rid, n in rows}


def section(stdout: str, title: str) -> str:
    """Text from a table title to the end: where that table's rows are."""
    assert title in stdout, f"no {title!r} in:\n{stdout}"
    return stdout[stdout.index(title) :]


@dataclass
class ScanExpectation:
    """What ingesting the scan must report, worked out independently of the ingest code."""

    read: int = 0
    skipped: int = 0
    quarantined: dict[int, str] = field(default_factory=dict)  # line -> reason fragment
    notifications: int = 0
    keys: set[tuple[str, int, str, str]] = field(default_factory=set)  # (ip, port, cve, day)
    unrouted: set[tuple[str, int, str, str]] = field(default_factory=set)

    @property
    def unrouted_ips(self) -> set[str]:
        return {key[0] for key in self.unrouted}


def _claimed(ip: str | None, host: str | None, raw_config: dict[str, Any]) -> bool:
    networks = [
        ipaddress.ip_network(n)
        for r in raw_config["recipients"]
        for n in r.get("constituency", {}).get("networks", [])
    ]
    domains = [
        d.lower() for r in raw_config["recipients"] for d in r.get("constituency", {}).get("domains", [])
    ]
    if ip is not None and any(ipaddress.ip_address(ip) in net for net in networks):
        return True
    return bool(host) and any(host == d or host.endswith("." + d) for d in domains)


def expect_from_scan(scan: Path, raw_config: dict[str, Any]) -> ScanExpectation:
    """Classify each line the way the DIVD mapping says, with json/ipaddress, not the product."""
    exp = ScanExpectation()
    lines = scan.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw_line in enumerate(lines, start=1):
        exp.read += 1
        text = raw_line.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            exp.skipped += 1
            continue
        if not text.lstrip().startswith("{"):
            exp.quarantined[number] = "not a JSON object"
            continue
        try:
            data = json.loads(text)
        except ValueError:
            exp.quarantined[number] = "not valid JSON"
            continue
        if (data.get("info") or {}).get("severity") == "info":
            exp.skipped += 1
            continue
        ip = data.get("ip")
        if not ip:
            exp.quarantined[number] = "ip: missing"
            continue
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            exp.quarantined[number] = f"invalid IP address {ip!r}"
            continue
        exp.notifications += 1
        host = urlsplit(data.get("host") or "").hostname
        if host is not None and _is_ip(host):
            host = None
        cve = (data["info"]["classification"].get("cve-id") or [data["template-id"]])[0]
        day = datetime.fromisoformat(data["timestamp"]).astimezone(UTC).date().isoformat()
        key = (ip, int(data.get("port") or 0), cve.upper(), day)
        exp.keys.add(key)
        if not _claimed(ip, host, raw_config):
            exp.unrouted.add(key)
    return exp


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass
class Deployment:
    """One temporary deployment after the DIVD sample was ingested twice."""

    directory: Path
    config: Path
    database: str
    expected: ScanExpectation
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


INGEST_DIVD = ("ingest", "--partner", "divd", "--format", "divd-nuclei")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Ingesting is the slow part: done once per module, read by several tests."""
    directory = tmp_path_factory.mktemp("deployment")
    raw = example_raw()
    config = write_config(directory, raw)
    first = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=directory, config=config)
    second = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=directory, config=config)
    return Deployment(
        directory,
        config,
        f"sqlite:///{directory / 'meldpunt.db'}",
        expect_from_scan(DIVD_SCAN, raw),
        first,
        second,
    )


@pytest.fixture
def fresh_config(tmp_path: Path) -> Path:
    """A deployment of its own, for tests that must not share the module's store."""
    return write_config(tmp_path)


# --- the entry point itself ------------------------------------------------------------------


def test_console_script_runs_the_same_app(tmp_path: Path) -> None:
    """The installed `meldpunt` script (pyproject [project.scripts]) is what operators type."""
    script = Path(sys.executable).parent / "meldpunt"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run(
        [str(script), "--help"],
        cwd=tmp_path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, explain(result)
    assert "ingest" in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("", ["hash-password", "ingest", "serve", "export", "demo"]),
        ("hash-password", []),
        ("ingest", ["--partner", "--format", "--case", "--config"]),
        ("serve", ["--host", "--port", "--config"]),
        ("export", ["--recipient", "--out", "--config"]),
        ("demo", ["--workdir", "--port", "--no-serve"]),
    ],
)
def test_every_command_has_help(tmp_path: Path, command: str, options: list[str]) -> None:
    """`python -m connector.cli` is the entry point; every command explains itself."""
    result = run_cli(*filter(None, [command]), "--help", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert "Usage" in result.stdout
    for option in options:
        assert option in result.stdout, f"{command} --help does not mention {option}"


# --- hash-password ---------------------------------------------------------------------------


def test_hash_password_from_stdin(tmp_path: Path) -> None:
    """Piped, as in `meldpunt hash-password < pw.txt >> notes`: the output must be exactly one
    line holding the whole hash, or the pasted config line is broken. No COLUMNS: the width
    rich sees when stdout is a pipe is the default one."""
    password = "correct horse battery staple"
    result = run_cli("hash-password", cwd=tmp_path, stdin=password + "\n", env=cli_env(None, columns=None))
    assert result.returncode == 0, explain(result)
    assert password not in result.stdout
    assert password not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"hash printed over {len(lines)} lines: {lines!r}"
    assert lines[0].startswith("$argon2id$")
    assert verify_password(lines[0], password)
    assert not verify_password(lines[0], password + "x")


def test_hash_password_empty_input_fails(tmp_path: Path) -> None:
    result = run_cli("hash-password", cwd=tmp_path, stdin="\n")
    assert result.returncode != 0
    assert "empty password" in result.stderr


# --- ingest ----------------------------------------------------------------------------------


def test_ingest_prints_counts(deployment: Deployment) -> None:
    result, exp = deployment.first, deployment.expected
    assert result.returncode == 0, explain(result)
    counts = counts_of(result.stdout)
    assert counts["read"] == exp.read
    assert counts["skipped"] == exp.skipped
    assert counts["quarantined"] == len(exp.quarantined)
    assert counts["notifications"] == exp.notifications
    assert counts["read"] == counts["notifications"] + counts["quarantined"] + counts["skipped"]
    assert counts["new"] == len(exp.keys)
    assert counts["updated"] == counts["unchanged"] == 0
    assert counts["unrouted"] == len(exp.unrouted)
    assert counts["routed"] + counts["unrouted"] + counts["suppressed_tlp"] == counts["new"]


def test_ingest_reports_the_sample_as_documented(deployment: Deployment) -> None:
    """The sample scan's known shape (README): a check that the derivation above is right."""
    counts = counts_of(deployment.first.stdout)
    assert (
        counts["read"],
        counts["notifications"],
        counts["quarantined"],
        counts["skipped"],
        counts["unrouted"],
    ) == (36, 26, 4, 6, 3)


def test_ingest_lists_quarantined_lines_with_reasons(deployment: Deployment) -> None:
    rows = not_ingested_rows(deployment.first.stdout)
    assert {8, 13, 16, 23} <= set(rows)
    assert set(rows) == set(deployment.expected.quarantined)
    for line, fragment in deployment.expected.quarantined.items():
        assert fragment in rows[line], f"line {line}: {rows[line]!r} lacks {fragment!r}"


def test_ingest_lists_unrouted_hosts(deployment: Deployment) -> None:
    unrouted = section(deployment.first.stdout, "unrouted (no recipient claims these)")
    assert deployment.expected.unrouted_ips
    for ip in deployment.expected.unrouted_ips:
        assert ip.startswith("203.0.113.")
        assert f"{ip}:" in unrouted


def test_second_ingest_changes_nothing(deployment: Deployment) -> None:
    result = deployment.second
    assert result.returncode == 0, explain(result)
    counts = counts_of(result.stdout)
    assert counts["new"] == 0
    assert counts["updated"] == 0
    assert counts["unchanged"] == len(deployment.expected.keys)
    assert counts["quarantined"] == len(deployment.expected.quarantined)


def test_ingest_unknown_partner(tmp_path: Path, fresh_config: Path) -> None:
    result = run_cli(
        "ingest",
        "--partner",
        "nosuch",
        "--format",
        "divd-nuclei",
        str(DIVD_SCAN),
        cwd=tmp_path,
        config=fresh_config,
    )
    assert result.returncode != 0
    assert "unknown partner 'nosuch'" in result.stderr
    assert "divd" in result.stderr  # the known ones are listed
    assert "Traceback" not in result.stderr


def test_ingest_unknown_format(tmp_path: Path, fresh_config: Path) -> None:
    result = run_cli(
        "ingest",
        "--partner",
        "divd",
        "--format",
        "shadowserver-xyz",
        str(DIVD_SCAN),
        cwd=tmp_path,
        config=fresh_config,
    )
    assert result.returncode != 0
    assert "unknown format 'shadowserver-xyz'" in result.stderr
    assert "divd-nuclei" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_missing_input_file(tmp_path: Path, fresh_config: Path) -> None:
    result = run_cli(*INGEST_DIVD, str(tmp_path / "absent.jsonl"), cwd=tmp_path, config=fresh_config)
    assert result.returncode != 0
    assert "absent.jsonl" in result.stderr


def test_ingest_without_case_sidecar_fails(tmp_path: Path, fresh_config: Path) -> None:
    scan = tmp_path / "input" / DIVD_SCAN.name
    scan.parent.mkdir()
    shutil.copy(DIVD_SCAN, scan)
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, config=fresh_config)
    assert result.returncode == 1, explain(result)
    assert f"metadata file {CASE_YAML.name} was not found" in result.stderr
    assert counts_of(result.stdout)["notifications"] == 0


def test_ingest_with_explicit_case_file(tmp_path: Path, fresh_config: Path) -> None:
    scan = tmp_path / "input" / DIVD_SCAN.name
    scan.parent.mkdir()
    shutil.copy(DIVD_SCAN, scan)
    case = tmp_path / "cases" / "case-metadata.yaml"
    case.parent.mkdir()
    shutil.copy(CASE_YAML, case)
    result = run_cli(*INGEST_DIVD, "--case", str(case), str(scan), cwd=tmp_path, config=fresh_config)
    assert result.returncode == 0, explain(result)
    expected = expect_from_scan(DIVD_SCAN, example_raw())
    assert counts_of(result.stdout)["notifications"] == expected.notifications


# --- configuration errors --------------------------------------------------------------------


@pytest.fixture
def broken_config(tmp_path: Path) -> Path:
    raw = example_raw()
    noord = next(r for r in raw["recipients"] if r["id"] == "ziekenhuis-noord")
    noord["parent"] = "no-such-cert"
    return write_config(tmp_path, raw)


BROKEN_KEY = "recipients[1](ziekenhuis-noord).parent"

CONFIGURED_COMMANDS = {
    "ingest": [*INGEST_DIVD, str(DIVD_SCAN)],
    "serve": ["serve", "--port", "9"],  # must never get as far as binding
    "export": ["export", "--recipient", "zcert"],
}


@pytest.mark.parametrize("command", sorted(CONFIGURED_COMMANDS))
def test_config_error_stops_every_command(tmp_path: Path, broken_config: Path, command: str) -> None:
    result = run_cli(*CONFIGURED_COMMANDS[command], cwd=tmp_path, config=broken_config)
    assert result.returncode == 2, explain(result)
    assert BROKEN_KEY in result.stderr
    assert "unknown recipient 'no-such-cert'" in result.stderr
    assert str(broken_config) in result.stderr
    assert not (tmp_path / "meldpunt.db").exists(), "nothing may start on a bad config"


def test_config_option_wins_over_environment(tmp_path: Path, broken_config: Path) -> None:
    (tmp_path / "good").mkdir()
    good = write_config(tmp_path / "good")
    result = run_cli(
        "export", "--recipient", "zcert", "--config", str(broken_config), cwd=tmp_path, config=good
    )
    assert result.returncode == 2, explain(result)
    assert BROKEN_KEY in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("export", "--recipient", "zcert", cwd=tmp_path, config=tmp_path / "absent.yaml")
    assert result.returncode == 2, explain(result)
    assert "cannot read" in result.stderr


# --- export ----------------------------------------------------------------------------------


def test_export_writes_the_recipients_collection(deployment: Deployment) -> None:
    assert deployment.first.returncode == 0, explain(deployment.first)
    out = deployment.directory / "zcert-bundle.json"
    result = run_cli(
        "export",
        "--recipient",
        "zcert",
        "--out",
        str(out),
        cwd=deployment.directory,
        config=deployment.config,
    )
    assert result.returncode == 0, explain(result)

    bundle = stix2.parse(out.read_text(encoding="utf-8"), allow_custom=True)
    assert bundle.type == "bundle"
    exported = [o["id"] for o in bundle.objects]
    assert len(exported) == len(set(exported)), "an object appears twice in the bundle"

    store = Store.open(deployment.database)
    try:
        members = CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=1_000_000)
    finally:
        store.close()
    assert members, "the ingest put nothing in zcert's collection"
    assert set(exported) == {m.stix_id for m in members}
    assert f"{len(exported)} objects exported for zcert" in result.stderr
    sightings = [o for o in bundle.objects if o["type"] == "sighting"]
    assert len(sightings) == delivered(deployment.first.stdout)["zcert"]


def test_export_to_stdout(deployment: Deployment) -> None:
    result = run_cli(
        "export", "--recipient", "ziekenhuis-noord", cwd=deployment.directory, config=deployment.config
    )
    assert result.returncode == 0, explain(result)
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "bundle"
    assert any(o["type"] == "sighting" for o in bundle["objects"])


def test_export_unknown_recipient_fails(deployment: Deployment) -> None:
    out = deployment.directory / "nosuch.json"
    result = run_cli(
        "export",
        "--recipient",
        "nosuch",
        "--out",
        str(out),
        cwd=deployment.directory,
        config=deployment.config,
    )
    assert result.returncode != 0
    assert "unknown recipient 'nosuch'" in result.stderr
    assert not out.exists()


# --- demo ------------------------------------------------------------------------------------


def test_demo_without_serving(tmp_path: Path) -> None:
    port = free_port()
    workdir = tmp_path / "demo"
    result = run_cli("demo", "--no-serve", "--workdir", str(workdir), "--port", str(port), cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    out = result.stdout
    polled = section(out, "polled with taxii2-client")
    raw = example_raw()
    for u in raw["users"]:
        if u.get("recipient"):
            row = re.search(
                rf"^│\s*{re.escape(u['username'])}\s*│\s*{re.escape(u['recipient'])}"
                r"\s*│\s*(\d+)\s*│\s*(\d+)\s*│",
                polled,
                re.MULTILINE,
            )
            assert row, f"{u['username']} missing from the polled table:\n{polled}"
            assert int(row.group(1)) > 0
            assert int(row.group(2)) > 0
    credentials = section(out, "demo credentials")
    for u in raw["users"]:
        assert re.search(rf"^\s+{re.escape(u['username'])}\s+\S+\s+\(", credentials, re.MULTILINE), (
            f"no password shown for {u['username']}"
        )
        line = next(x for x in credentials.splitlines() if x.split()[:1] == [u["username"]])
        granted = [f"reads {u['recipient']}"] if u.get("recipient") else []
        granted += [f"writes inbox {u['inbox']}"] if u.get("inbox") else []
        granted += ["operator"] if u.get("operator") else []
        assert granted and all(g in line for g in granted), line
        assert "None" not in line, line
    assert f"http://127.0.0.1:{port}/" in out
    assert "0.0.0.0" not in out + result.stderr
    assert (workdir / "meldpunt.db").exists()


def test_demo_does_not_delete_an_existing_directory(tmp_path: Path) -> None:
    """`--workdir` names where the demo store goes; an operator typing `--workdir .` or an
    existing project directory must not lose its files. The demo may refuse, or keep them,
    but never wipe the directory."""
    workdir = tmp_path / "my-project"
    workdir.mkdir()
    precious = workdir / "notes.txt"
    precious.write_text("not the demo's\n", encoding="utf-8")
    result = run_cli(
        "demo", "--no-serve", "--workdir", str(workdir), "--port", str(free_port()), cwd=tmp_path
    )
    assert precious.exists(), f"demo deleted {workdir} with everything in it\n{explain(result)}"


# --- operator mistakes and broken surroundings: an error naming the problem, never a traceback


def test_unknown_log_level_is_an_error_not_a_traceback(tmp_path: Path, fresh_config: Path) -> None:
    result = run_cli(
        "--log-level", "bogus", "export", "--recipient", "zcert", cwd=tmp_path, config=fresh_config
    )
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert "'bogus'" in result.stderr and "--log-level" in result.stderr
    env = {**cli_env(fresh_config), "MELDPUNT_LOG_LEVEL": "loud"}
    result = run_cli("export", "--recipient", "zcert", cwd=tmp_path, env=env)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert "'loud'" in result.stderr and "MELDPUNT_LOG_LEVEL" in result.stderr


def _with_database(directory: Path, url: str) -> Path:
    raw = example_raw()
    path = write_config(directory, raw)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["database"] = url
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        ("not-a-directory", "a-file"),
        ("unreachable-postgresql", "Connection refused"),
    ],
)
def test_a_store_that_cannot_be_opened_is_an_error_not_a_traceback(
    tmp_path: Path, where: str, fragment: str
) -> None:
    if where == "not-a-directory":
        (tmp_path / "a-file").write_text("", encoding="utf-8")
        url = f"sqlite:///{tmp_path / 'a-file' / 'meldpunt.db'}"
    else:
        url = f"postgresql+psycopg://meldpunt:s3cret-pw@127.0.0.1:{free_port()}/meldpunt"
    config = _with_database(tmp_path, url)
    for command in (["export", "--recipient", "zcert"], [*INGEST_DIVD, str(DIVD_SCAN)], ["misp", "status"]):
        result = run_cli(*command, cwd=tmp_path, config=config)
        assert result.returncode != 0, explain(result)
        assert "Traceback" not in result.stderr, explain(result)
        assert "cannot open the store" in result.stderr and fragment in result.stderr, explain(result)
        assert "s3cret-pw" not in result.stderr + result.stdout


def test_a_store_of_a_newer_schema_is_an_error_not_a_traceback(tmp_path: Path, fresh_config: Path) -> None:
    """A store migrated by a newer release: say so instead of an Alembic traceback."""
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    store.close()
    result = run_cli("export", "--recipient", "zcert", cwd=tmp_path, config=fresh_config)
    assert result.returncode != 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert "cannot open the store" in result.stderr and "9999" in result.stderr, explain(result)


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_export_to_an_unwritable_path_is_an_error_not_a_traceback(
    tmp_path: Path, fresh_config: Path, where: str
) -> None:
    out = tmp_path / "absent" / "zcert.json" if where == "missing-directory" else tmp_path
    Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}").close()  # export reads a store, never makes one
    result = run_cli("export", "--recipient", "zcert", "--out", str(out), cwd=tmp_path, config=fresh_config)
    assert result.returncode != 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert "cannot write" in result.stderr and str(out) in result.stderr, explain(result)


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("port", ["70000", "0", "-1"])
def test_a_port_out_of_range_is_refused_before_serving(
    tmp_path: Path, fresh_config: Path, command: str, port: str
) -> None:
    """The OS takes 70000 as 70000 % 65536 = 4464: the server would listen somewhere else."""
    result = run_cli(command, "--port", port, cwd=tmp_path, config=fresh_config)
    assert result.returncode == 2, explain(result)
    assert "Invalid value for '--port'" in result.stderr, explain(result)
    assert not (tmp_path / "meldpunt.db").exists()


def test_serve_on_a_port_in_use_fails_with_a_structured_log_line(tmp_path: Path, fresh_config: Path) -> None:
    """Logs are one JSON object per line, the server's own (uvicorn's) included."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path, config=fresh_config
        )
    assert result.returncode != 0, explain(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, explain(result)
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    assert any("address already in use" in e["event"] for e in events if e["level"] == "error"), explain(
        result
    )


def _with_asn_table(directory: Path, table: str) -> Path:
    path = write_config(directory)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["asn_table"] = table
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_a_missing_asn_table_is_a_config_error(tmp_path: Path) -> None:
    config = _with_asn_table(tmp_path, "absent-ipasn.dat")
    result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert "asn_table" in result.stderr and "absent-ipasn.dat" in result.stderr, explain(result)


@pytest.mark.parametrize("command", ["ingest", "serve"])
def test_a_malformed_asn_table_is_an_error_naming_its_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "ipasn.dat").write_text("203.0.113.0/24\t64500\nnot a line\n", encoding="utf-8")
    config = _with_asn_table(tmp_path, "ipasn.dat")
    args = [*INGEST_DIVD, str(DIVD_SCAN)] if command == "ingest" else ["serve", "--port", str(free_port())]
    result = run_cli(*args, cwd=tmp_path, config=config)
    assert result.returncode != 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    assert "ipasn.dat:2" in result.stderr, explain(result)


@pytest.mark.parametrize("command", ["sync", "retry"])
def test_misp_commands_refuse_an_unknown_recipient(tmp_path: Path, fresh_config: Path, command: str) -> None:
    """A typo must not read as 'nothing due' / '0 queued again' with success."""
    result = run_cli("misp", command, "--recipient", "zcret", cwd=tmp_path, config=fresh_config)
    assert result.returncode == 2, explain(result)
    assert "unknown recipient 'zcret'" in result.stderr, explain(result)


def test_runs_list_and_mark_failed_end_a_run_whose_process_is_gone(tmp_path: Path) -> None:
    """A killed ingest (SIGKILL, a lost host) leaves its run `running` for ever; an operator
    needed SQL to see or end it."""
    config = write_config(tmp_path)
    ingest = ("ingest", "--partner", "divd", "--format", "divd-nuclei", str(DIVD_SCAN))
    done = run_cli(*ingest, cwd=tmp_path, config=config)
    assert done.returncode == 0, explain(done)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    killed = store.start_run("divd", "divd-nuclei", ["killed.jsonl"])  # as a process killed mid-run leaves it
    store.close()

    listed = run_cli("runs", "list", cwd=tmp_path, config=config)
    assert listed.returncode == 0, explain(listed)
    lines = {line.split()[1]: line for line in listed.stdout.splitlines() if re.match(r"^\W*\d+ ", line)}
    assert "running" in lines[str(killed)] and "done" in lines[str(killed - 1)]

    marked = run_cli("runs", "mark-failed", str(killed), cwd=tmp_path, config=config)
    assert marked.returncode == 0, explain(marked)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    run = store.run(killed)
    finished = store.run(killed - 1)
    store.close()
    assert run is not None and run["status"] == "failed" and "ingest the same input again" in run["error"]
    assert finished is not None and finished["status"] == "done"  # only the one named

    again = run_cli("runs", "mark-failed", str(killed), cwd=tmp_path, config=config)
    assert again.returncode == 2 and "is not running (failed)" in again.stderr, explain(again)
    unknown = run_cli("runs", "mark-failed", "999", cwd=tmp_path, config=config)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr, explain(unknown)
