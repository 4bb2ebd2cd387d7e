"""The command line tells the truth (operations issue #15, item 5).

Every message shows the text it was given, square brackets included; the store a command reads
is the one its configuration names, wherever the command runs; arguments that name nothing
(an impossible address, a 40-bit AS number, an unknown category, user or recipient) are refused
instead of being answered for something else; exit codes say what happened; errors name the
file they are about. Each command runs as a real process, as in tests/test_cli.py.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.collections import recipient_collection_id
from connector.render.collection import CollectionView
from connector.store import Store
from tests.conftest import DIVD_SCAN, REPO
from tests.test_cli import (
    CASE_YAML,
    INGEST_DIVD,
    cli_env,
    counts_of,
    explain,
    run_cli,
    write_config,
)

# --- helpers ---------------------------------------------------------------------------------


def divd_input(directory: Path, lines: list[dict[str, Any] | str], name: str = "DIVD-2024-00012") -> Path:
    """A DIVD scan of the given lines (objects become JSON lines) with the sample case file
    beside it, so every row is judged on its own."""
    directory.mkdir(parents=True, exist_ok=True)
    scan = directory / f"{name}.nuclei.jsonl"
    scan.write_text(
        "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines),
        encoding="utf-8",
    )
    shutil.copy(CASE_YAML, directory / f"{name}.yaml")
    return scan


def sample_finding(**changes: Any) -> dict[str, Any]:
    """The first CVE finding of the DIVD sample, with `changes` applied."""
    for line in DIVD_SCAN.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        severity = data.get("info", {}).get("severity") if isinstance(data, dict) else None
        if severity not in (None, "info") and data.get("ip"):
            return {**data, **changes}
    raise AssertionError("no CVE finding in the DIVD sample")


def ingested(directory: Path) -> Path:
    """A deployment in `directory` with the DIVD sample ingested; its config path."""
    config = write_config(directory)
    result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=directory, config=config)
    assert result.returncode == 0, explain(result)
    return config


def edit_config(path: Path, change: Any) -> Path:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# --- a. square brackets are text, not markup -------------------------------------------------


def test_recipients_import_without_recipient_files_names_the_key_to_add(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    incoming = tmp_path / "incoming.csv"
    incoming.write_text("id,name,kind\nnew-org,New,organisation\n", encoding="utf-8")
    result = run_cli("recipients", "import", str(incoming), cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "`recipient_files: [recipients.csv]`" in result.stderr, explain(result)


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--recipient"],
        ["misp", "sync", "--recipient"],
        ["misp", "retry", "--recipient"],
    ],
)
def test_an_unknown_recipient_is_shown_as_typed(tmp_path: Path, command: list[str]) -> None:
    config = ingested(tmp_path)
    result = run_cli(*command, "[red]zz", cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "unknown recipient '[red]zz'" in result.stderr, explain(result)


def test_bracketed_values_in_quarantine_reasons_and_file_names_are_printed_whole(tmp_path: Path) -> None:
    """Data-derived text (a partner's value in a reason, an input's name) reaches the tables
    as it is: `[b]` must not turn into bold and vanish."""
    config = write_config(tmp_path)
    scan = divd_input(
        tmp_path / "in[put]",
        [sample_finding(), sample_finding(ip="[b]192.0.2.999")],
        name="DIVD-2024-00012",
    )
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, config=config)
    assert result.returncode == 0, explain(result)
    assert "'[b]192.0.2.999'" in result.stdout, explain(result)


def test_no_console_message_interpolates_text_into_markup() -> None:
    """The class of the bug above, for every message in the cli*.py modules and demo.py: a rich `print` of
    an f-string with values in it parses those values as markup. Messages are built as `Text`
    (or printed with markup=False); table cells go through `plain_cells`, and tables through
    `print_table`, which never cuts a cell (see test_runs_list_is_whole_when_piped)."""
    offenders = []
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "connector").glob("cli*.py"))
    for module in [*modules, "connector/demo.py"]:
        tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
        tables = {  # names bound to a Table(...) anywhere in the module
            t.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "Table"
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        exempt = [
            (node.lineno, node.end_lineno or node.lineno)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == "print_table"
        ]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            plain = any(k.arg == "markup" and getattr(k.value, "value", None) is False for k in node.keywords)
            if name == "print" and not plain:
                for arg in node.args:
                    if isinstance(arg, ast.JoinedStr) and any(
                        isinstance(v, ast.FormattedValue) for v in arg.values
                    ):
                        offenders.append(f"{module}:{node.lineno}: print of an f-string")
            if name == "add_row" and not (len(node.args) == 1 and isinstance(node.args[0], ast.Starred)):
                offenders.append(f"{module}:{node.lineno}: add_row without plain_cells")
            inside_print_table = any(start <= node.lineno <= end for start, end in exempt)
            tabled = any(isinstance(a, ast.Name) and a.id in tables for a in node.args)
            if name == "print" and tabled and not inside_print_table:
                offenders.append(f"{module}:{node.lineno}: a table printed without print_table")
    assert not offenders, "\n".join(offenders)


# --- b. the store is the one the configuration names, and read-only commands never make one ---


def relative_store_config(directory: Path, database: str | None = "sqlite:///meldpunt.db") -> Path:
    """The example deployment in `directory` with a relative SQLite path (or none at all)."""
    config = write_config(directory)

    def relative(raw: dict[str, Any]) -> None:
        if database is None:
            del raw["database"]
        else:
            raw["database"] = database

    return edit_config(config, relative)


@pytest.mark.parametrize("database", ["sqlite:///meldpunt.db", "sqlite:///data/../meldpunt.db", None])
def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path, database: str | None) -> None:
    """`cd elsewhere && meldpunt export -c ../deployment/meldpunt.yaml` read (and created) an
    empty store in `elsewhere` and exported 0 objects, with success. The default store (no
    `database` key) is beside the config file too."""
    deployment, elsewhere = tmp_path / "deployment", tmp_path / "elsewhere"
    deployment.mkdir()
    (deployment / "data").mkdir()
    elsewhere.mkdir()
    config = relative_store_config(deployment, database)
    done = run_cli(*INGEST_DIVD, str(DIVD_SCAN), "-c", str(config), cwd=elsewhere, config=None)
    assert done.returncode == 0, explain(done)
    assert (deployment / "meldpunt.db").exists()
    assert not (elsewhere / "meldpunt.db").exists()

    result = run_cli(
        "export", "--recipient", "zcert", "-c", "../deployment/meldpunt.yaml", cwd=elsewhere, config=None
    )
    assert result.returncode == 0, explain(result)
    bundle = json.loads(result.stdout)
    assert any(o["type"] == "sighting" for o in bundle["objects"]), explain(result)
    assert not (elsewhere / "meldpunt.db").exists()


def test_a_relative_sqlite_path_in_the_environment_is_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    """$MELDPUNT_DATABASE_URL belongs to the shell it is set in, not to the file (README)."""
    deployment, work = tmp_path / "deployment", tmp_path / "work"
    deployment.mkdir()
    work.mkdir()
    config = write_config(deployment)
    env = {**cli_env(config), "MELDPUNT_DATABASE_URL": "sqlite:///from-env.db"}
    result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=work, env=env)
    assert result.returncode == 0, explain(result)
    assert (work / "from-env.db").exists()
    assert not (deployment / "from-env.db").exists()


READ_ONLY_COMMANDS = {
    "export": ["export", "--recipient", "zcert"],
    "route explain": ["route", "explain", "sighting--00000000-0000-5000-8000-000000000000"],
    "runs list": ["runs", "list"],
    "runs mark-failed": ["runs", "mark-failed", "1"],
    "misp status": ["misp", "status"],
    "misp sync": ["misp", "sync"],
    "misp retry": ["misp", "retry"],
    "misp export-feed": ["misp", "export-feed", "feeds"],
    "store upgrade --check": ["store", "upgrade", "--check"],
    "store backup": ["store", "backup", "copy.db"],
    "run --status": ["run", "--status"],
    "purge": ["purge"],
    "forget": ["forget", "192.0.2.17"],
    "audit": ["audit"],
}


def with_feed(raw: dict[str, Any]) -> None:
    """zcert gets a MISP feed (no push), so `misp export-feed` has something to export."""
    next(r for r in raw["recipients"] if r["id"] == "zcert")["misp"] = {"feed": True}


@pytest.mark.parametrize("command", sorted(READ_ONLY_COMMANDS))
def test_commands_that_read_a_store_refuse_one_that_does_not_exist(tmp_path: Path, command: str) -> None:
    config = edit_config(write_config(tmp_path), with_feed)
    result = run_cli(*READ_ONLY_COMMANDS[command], cwd=tmp_path, config=config)
    assert result.returncode == 1, explain(result)
    store = tmp_path / "meldpunt.db"
    assert f"the store {store} does not exist" in result.stderr, explain(result)
    assert "meldpunt ingest" in result.stderr and "relative to the configuration file" in result.stderr
    assert not store.exists(), f"{command} created an empty store"


# --- c. route explain answers for what was asked, or refuses ---------------------------------


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("192.0.2.999", "invalid IP address '192.0.2.999'"),
        ("1.2", "invalid IP address '1.2'"),
        ("2001:db8::zz", "invalid IP address '2001:db8::zz'"),
        ("192.0.2.1/24", "has host bits set"),
        ("192.0.2.0/33", "invalid IP network '192.0.2.0/33'"),
        ("AS99999999999", "AS numbers are 32-bit"),
        ("AS4294967296", "AS numbers are 32-bit"),
        ("4294967296", "AS numbers are 32-bit"),
        ("AS0", "AS numbers are 32-bit"),
        ("https://192.0.2.999/login", "invalid IP address '192.0.2.999'"),
        ("ciso@192.0.2.999", "invalid IP address '192.0.2.999'"),
        ("www.example.123", "no top-level domain is numeric"),
        ("AS-FOO", "a domain name has at least two labels"),
    ],
)
def test_route_explain_refuses_what_is_no_address_as_number_or_domain(
    tmp_path: Path, target: str, fragment: str
) -> None:
    """`192.0.2.999` and `AS99999999999` were explained as domain names ("no claim on it"),
    `AS4294967296` as an AS number nobody claims: answers about something that cannot exist."""
    config = write_config(tmp_path)
    result = run_cli("route", "explain", target, cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert fragment in result.stderr, explain(result)
    assert "no claim" not in result.stdout and "claimed by nobody" not in result.stdout


@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("AS4294967295", "asn AS4294967295: claimed by nobody"),
        ("as64500", "asn AS64500: claimed by zcert"),
        ("64500", "asn AS64500: claimed by zcert"),
        ("198.51.100.0/24", "network 198.51.100.0/24: claimed by ibd"),
        ("[2001:db8:10::1]", "claimed by zcert"),
        ("Example.NL.", "domain example.nl: claimed by ibd"),
        ("https://x.example.nl/", "url: routes by its host x.example.nl"),
        ("ciso@example.nl", "e-mail address: routes by its domain example.nl"),
    ],
)
def test_route_explain_still_explains_valid_targets(tmp_path: Path, target: str, line: str) -> None:
    config = write_config(tmp_path)
    result = run_cli("route", "explain", target, cwd=tmp_path, config=config)
    assert result.returncode == 0, explain(result)
    assert line in result.stdout, explain(result)


@pytest.mark.parametrize(
    ("category", "fragment"),
    [
        ("vulnerable/no-such-type", "unknown RSIT type 'no-such-type' in vulnerable"),
        ("nonsense/vulnerable-system", "unknown RSIT taxonomy 'nonsense'"),
        ("vulnerable", "taxonomy/type"),
    ],
)
def test_route_explain_refuses_an_unknown_category(tmp_path: Path, category: str, fragment: str) -> None:
    config = write_config(tmp_path)
    result = run_cli("route", "explain", "192.0.2.17", "--category", category, cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert fragment in result.stderr and "--category" in result.stderr, explain(result)


def test_route_explain_applies_a_known_category(tmp_path: Path) -> None:
    """A recipient that accepts only another category is named as suppressed by it."""

    def zcert_takes_phishing_only(raw: dict[str, Any]) -> None:
        next(r for r in raw["recipients"] if r["id"] == "zcert")["categories"] = ["fraud/phishing"]

    config = edit_config(write_config(tmp_path), zcert_takes_phishing_only)
    result = run_cli(
        "route",
        "explain",
        "192.0.2.1",
        "--category",
        "vulnerable/vulnerable-system",
        cwd=tmp_path,
        config=config,
    )
    assert result.returncode == 0, explain(result)
    assert "policy: zcert not delivered: category vulnerable/vulnerable-system" in result.stdout, explain(
        result
    )


# --- d. exit codes say what happened ---------------------------------------------------------


def test_an_ingest_whose_every_row_is_quarantined_fails(tmp_path: Path) -> None:
    """A wrong format or a broken export gives nothing but quarantined rows: that is no success."""
    config = write_config(tmp_path)
    scan = divd_input(tmp_path / "in", [sample_finding(ip="192.0.2.999"), "log noise", sample_finding(ip="")])
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, config=config)
    assert result.returncode == 1, explain(result)
    counts = counts_of(result.stdout)
    assert counts["notifications"] == 0 and counts["quarantined"] == 3
    assert "no notification" in result.stderr and "all 3 quarantined" in result.stderr, explain(result)


def test_an_ingest_of_only_informational_findings_succeeds(tmp_path: Path) -> None:
    """Rows that are not notifications by design (skipped) are no failure: nothing was wrong."""
    config = write_config(tmp_path)
    info = sample_finding(info={**sample_finding()["info"], "severity": "info"})
    scan = divd_input(tmp_path / "in", [info, ""])
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, config=config)
    assert result.returncode == 0, explain(result)
    counts = counts_of(result.stdout)
    assert counts["notifications"] == 0 and counts["skipped"] == 2


def test_an_ingest_with_some_rows_quarantined_succeeds(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    scan = divd_input(tmp_path / "in", [sample_finding(), "log noise"])
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, config=config)
    assert result.returncode == 0, explain(result)
    assert counts_of(result.stdout)["quarantined"] == 1


@pytest.mark.parametrize("where", ["absent", "a-directory"])
def test_an_input_that_cannot_be_read_exits_1_as_documented(tmp_path: Path, where: str) -> None:
    """README: exit 1 when an input could not be read; 2 is for configuration errors."""
    config = write_config(tmp_path)
    missing = tmp_path / "absent.nuclei.jsonl"
    if where == "a-directory":
        missing.mkdir()
    result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), str(missing), cwd=tmp_path, config=config)
    assert result.returncode == 1, explain(result)
    assert str(missing) in result.stderr, explain(result)
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr, explain(result)


def test_misp_export_feed_without_a_feed_recipient_says_so(tmp_path: Path) -> None:
    config = ingested(tmp_path)

    def no_feeds(raw: dict[str, Any]) -> None:
        for r in raw["recipients"]:
            r.pop("misp", None)

    edit_config(config, no_feeds)
    result = run_cli("misp", "export-feed", str(tmp_path / "feeds"), cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "no recipient has a MISP feed" in result.stderr and "misp.feed: true" in result.stderr


def test_misp_export_feed_refuses_an_unknown_recipient_and_one_without_a_feed(tmp_path: Path) -> None:
    config = ingested(tmp_path)
    edit_config(config, with_feed)
    typo = run_cli("misp", "export-feed", "feeds", "--recipient", "zcrt", cwd=tmp_path, config=config)
    assert typo.returncode == 2, explain(typo)
    assert "unknown recipient 'zcrt'" in typo.stderr, explain(typo)
    no_feed = run_cli("misp", "export-feed", "feeds", "--recipient", "ibd", cwd=tmp_path, config=config)
    assert no_feed.returncode == 2, explain(no_feed)
    assert "recipient 'ibd' has no MISP feed" in no_feed.stderr, explain(no_feed)
    done = run_cli("misp", "export-feed", "feeds", "--recipient", "zcert", cwd=tmp_path, config=config)
    assert done.returncode == 0, explain(done)
    assert (tmp_path / "feeds" / "zcert" / "manifest.json").exists()


def test_create_token_refuses_an_unknown_user(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("create-token", "--user", "nobody", cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "unknown user 'nobody'" in result.stderr and "zcert-poller" in result.stderr, explain(result)
    assert "$argon2" not in result.stdout
    known = run_cli("create-token", "--user", "zcert-poller", cwd=tmp_path, config=config)
    assert known.returncode == 0, explain(known)
    assert 'hash: "$argon2' in known.stdout


MISP_KEY_ENV = "MELDPUNT_TEST_MISP_KEY"  # cli_env drops MELDPUNT_*: never the developer's own


def misp_deployment(directory: Path, fake: Any) -> Path:
    """The example deployment with zcert pushing to `fake`, the DIVD sample ingested."""

    def zcert_pushes(raw: dict[str, Any]) -> None:
        zcert = next(r for r in raw["recipients"] if r["id"] == "zcert")
        zcert["misp"] = {"url": fake.url, "key_env": MISP_KEY_ENV, "verify_tls": False}

    config = edit_config(write_config(directory), zcert_pushes)
    done = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=directory, config=config)
    assert done.returncode == 0, explain(done)
    return config


@pytest.fixture
def misp_instance():  # type: ignore[no-untyped-def]
    from tests.misp_fake import MispFake

    fake = MispFake().start()
    yield fake
    fake.stop()


def test_a_misp_key_set_after_a_sync_without_it_is_used_by_the_next_sync(
    tmp_path: Path, misp_instance
) -> None:  # type: ignore[no-untyped-def]
    """A sync without the key marked every entry failed for good, and after the operator set
    the key the next sync said "nothing due". Now the sync refuses to start for that recipient,
    naming the variable, and leaves its entries queued for the sync that has the key."""

    config = misp_deployment(tmp_path, misp_instance)

    without = run_cli("misp", "sync", cwd=tmp_path, config=config)
    assert without.returncode == 2, explain(without)
    assert MISP_KEY_ENV in without.stderr and "zcert" in without.stderr, explain(without)
    assert not misp_instance.events

    env = {**cli_env(config), MISP_KEY_ENV: misp_instance.key}
    with_key = run_cli("misp", "sync", cwd=tmp_path, env=env)
    assert with_key.returncode == 0, explain(with_key)
    assert "nothing due" not in with_key.stdout, explain(with_key)
    assert misp_instance.events, explain(with_key)


def test_nothing_due_names_the_failed_deliveries_that_wait_for_retry(
    tmp_path: Path,
    misp_instance,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries failed earlier (here: by the library's sync without a key, as the command did
    before) are not retried by a sync. "nothing due" alone read as "all delivered"."""
    from connector.channels.misp_sync import MispSync
    from connector.config import load_config

    config = misp_deployment(tmp_path, misp_instance)
    monkeypatch.delenv(MISP_KEY_ENV, raising=False)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    try:
        failed = MispSync(load_config(config), store).run()
    finally:
        store.close()
    assert failed.counts["failed"] > 0

    env = {**cli_env(config), MISP_KEY_ENV: misp_instance.key}
    result = run_cli("misp", "sync", cwd=tmp_path, env=env)
    assert result.returncode == 0, explain(result)
    assert "nothing due" in result.stdout, explain(result)
    waiting = f"zcert: {failed.counts['failed']} failed MISP delivery(ies) wait for `meldpunt misp retry"
    assert waiting in result.stderr and "is not set" in result.stderr, explain(result)

    retry = run_cli("misp", "retry", "--recipient", "zcert", cwd=tmp_path, env=env)
    assert retry.returncode == 0, explain(retry)
    again = run_cli("misp", "sync", cwd=tmp_path, env=env)
    assert again.returncode == 0, explain(again)
    assert misp_instance.events and "failed MISP delivery" not in again.stderr, explain(again)


# --- e. errors name their file; `runs list` is whole when piped, and JSON on request ----------


def test_a_yaml_syntax_error_in_the_config_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "meldpunt.yaml"
    config.write_text("partners: [unclosed\nserver: {}\n", encoding="utf-8")
    result = run_cli("runs", "list", cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert f'in "{config}", line 1, column 11' in result.stderr, explain(result)
    assert "<unicode string>" not in result.stderr, explain(result)


def test_a_duplicate_key_in_a_mapping_file_names_the_file(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    broken = mappings / "divd-nuclei.yaml"
    broken.write_text(broken.read_text(encoding="utf-8") + "\nformat: again\n", encoding="utf-8")
    config = edit_config(write_config(tmp_path), lambda raw: raw.update(mappings_dir=str(mappings)))
    result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=tmp_path, config=config)
    assert result.returncode == 2, explain(result)
    assert "duplicate key 'format'" in result.stderr and f'in "{broken}"' in result.stderr, explain(result)
    assert "<unicode string>" not in result.stderr, explain(result)


def runs_deployment(directory: Path) -> tuple[Path, int]:
    """A store with one finished DIVD run and one long-named run left running; (config, its id)."""
    config = ingested(directory)
    store = Store.open(f"sqlite:///{directory / 'meldpunt.db'}")
    try:
        long_one = store.start_run("divd", "shadowserver-scan_http_vulnerable", ["a-long-input-name.csv"])
    finally:
        store.close()
    return config, long_one


def test_runs_list_is_whole_when_piped(tmp_path: Path) -> None:
    """Piped (no terminal, no COLUMNS: 80 columns), rich cut the cells to fit: `2026-12-0…`,
    `quarantin…`. Every value must be there, each run on one line, to be grepped."""
    config, long_one = runs_deployment(tmp_path)
    result = run_cli("runs", "list", cwd=tmp_path, env=cli_env(config, columns=None))
    assert result.returncode == 0, explain(result)
    assert "…" not in result.stdout, explain(result)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    try:
        runs = {run["id"]: run for run in store.runs(10)}
    finally:
        store.close()
    lines = {
        line.split()[1]: line
        for line in result.stdout.splitlines()
        if line.split()[1:2] and line.split()[1].isdigit()
    }
    assert set(lines) == {str(i) for i in runs}, explain(result)
    for run_id, run in runs.items():
        line = lines[str(run_id)]
        for value in (run["partner"], run["format"], run["status"], run["started_at"]):
            assert value in line, f"{value!r} not whole in {line!r}"
    done = lines[str(long_one - 1)]
    counts = runs[long_one - 1]["counts"]
    assert f"quarantined {counts['quarantined']}" in done and runs[long_one - 1]["finished_at"] in done


def test_runs_list_json(tmp_path: Path) -> None:
    config, long_one = runs_deployment(tmp_path)
    result = run_cli("runs", "list", "--json", "--limit", "5", cwd=tmp_path, config=config)
    assert result.returncode == 0, explain(result)
    listed = json.loads(result.stdout)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    try:
        expected = store.runs(5)
    finally:
        store.close()
    assert [r["id"] for r in listed] == [r["id"] for r in expected] == [long_one, long_one - 1]
    keys = ("id", "partner", "format", "status", "started_at", "finished_at", "inputs", "counts", "error")
    for got, want in zip(listed, expected, strict=True):
        assert set(got) == set(keys)
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert listed[1]["counts"]["read"] == 36 and listed[0]["finished_at"] is None


def test_ingest_tables_are_whole_when_piped(tmp_path: Path) -> None:
    """The same for every table: a quarantine reason longer than 80 columns stays whole."""
    config = write_config(tmp_path)
    long_ip = "192.0.2." + "9" * 90
    scan = divd_input(tmp_path / "in", [sample_finding(), sample_finding(ip=long_ip)])
    result = run_cli(*INGEST_DIVD, str(scan), cwd=tmp_path, env=cli_env(config, columns=None))
    assert result.returncode == 0, explain(result)
    assert "…" not in result.stdout, explain(result)
    assert any(f"invalid IP address '{long_ip}'" in line for line in result.stdout.splitlines()), explain(
        result
    )


@pytest.mark.parametrize("key", ["mappings_dir", "misp.ca_bundle"])
def test_every_file_the_config_names_is_relative_to_the_config_file(tmp_path: Path, key: str) -> None:
    """As `recipient_files`, `asn_table` and a SQLite `database` are: run from elsewhere, the
    same configuration must mean the same files."""
    from connector.config import load_config

    deployment, elsewhere = tmp_path / "deployment", tmp_path / "elsewhere"
    deployment.mkdir()
    elsewhere.mkdir()
    config = write_config(deployment)
    if key == "mappings_dir":
        shutil.copytree(REPO / "mappings", deployment / "feeds")
        edit_config(config, lambda raw: raw.update(mappings_dir="feeds"))
        result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=elsewhere, config=config)
        assert result.returncode == 0, explain(result)
        assert counts_of(result.stdout)["notifications"] > 0
        # One that does not exist is a configuration error, not "unknown format" for every format.
        edit_config(config, lambda raw: raw.update(mappings_dir="absent"))
        result = run_cli(*INGEST_DIVD, str(DIVD_SCAN), cwd=elsewhere, config=config)
        assert result.returncode == 2, explain(result)
        assert "mappings_dir: no such directory" in result.stderr and "absent" in result.stderr, explain(
            result
        )
    else:
        (deployment / "ca.pem").write_text("", encoding="utf-8")

        def with_ca(raw: dict[str, Any]) -> None:
            zcert = next(r for r in raw["recipients"] if r["id"] == "zcert")
            zcert["misp"] = {"url": "https://misp.example.org", "key_env": "K", "ca_bundle": "ca.pem"}

        edit_config(config, with_ca)
        loaded = load_config(config)
        ca_bundle = loaded.recipient("zcert").misp.ca_bundle  # type: ignore[union-attr]
        assert ca_bundle is not None and ca_bundle.resolve() == (deployment / "ca.pem").resolve()
        (deployment / "ca.pem").unlink()
        result = run_cli("misp", "status", cwd=elsewhere, config=config)
        assert result.returncode == 2, explain(result)
        assert "misp.ca_bundle: no such file" in result.stderr, explain(result)


# --- f. the README's usage lines work on the shipped configuration and samples ----------------

# Lines that do not end by themselves; each is covered elsewhere (test_cli: demo --no-serve,
# a serve that fails to bind; the TAXII tests serve the same app; test_serve_shutdown and
# test_scheduler run `serve` and `run` until SIGTERM).
LONG_RUNNING = ("meldpunt serve", "meldpunt demo")
LONG_RUNNING_EXACTLY = ("meldpunt run",)


def usage_lines() -> list[str]:
    """The commands of the README's Usage block, comments removed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Usage\n") :]
    block = block[block.index("```sh\n") + 6 : block.index("\n```", block.index("```sh\n"))]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def test_readme_usage_lines_work_on_the_shipped_files(tmp_path: Path) -> None:
    """Each line runs, in order, from a copy of the checkout's config/ and samples/ (as from
    the checkout's root); optional parts ([...]) left out, every alternative (a | b) run,
    placeholders filled: ID a recipient, DIR a folder, RUN a run left running, FILE.csv the
    sample organisations, `sighting--...` a stored sighting, COMMAND `runs list`. The two lines
    whose comment names something to add to the example configuration first (recipient_files,
    a MISP feed) get it added first."""
    shutil.copytree(REPO / "config", tmp_path / "config", ignore=shutil.ignore_patterns("*.db*"))
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    config = tmp_path / "config" / "meldpunt.yaml"
    database = f"sqlite:///{tmp_path / 'config' / 'meldpunt.db'}"
    env = cli_env(None)
    ran = []
    for line in usage_lines():
        assert line.startswith("meldpunt "), line
        if line.startswith(LONG_RUNNING):
            continue
        stdin = None
        if "< " in line:
            line, _, _ = line.partition("< ")
            stdin = "a demo password\n"
        line = re.sub(r"\s*\[[^]]*\]", "", line).strip()
        if line in LONG_RUNNING_EXACTLY:
            continue
        line = line.replace(" PATH", f" {tmp_path / 'backup.db'}").replace(" ADDRESS-OR-EMAIL", " 192.0.2.17")
        if "export-feed" in line:  # its comment: add `misp: {feed: true}` to a recipient first
            edit_config(config, with_feed)
        if "FILE.csv" in line:
            edit_config(config, lambda raw: raw.update(recipient_files=["recipients.csv"]))
            (tmp_path / "config" / "recipients.csv").write_text("id,name,kind\n", encoding="utf-8")
            line = line.replace("FILE.csv", "samples/recipients/organisations.csv")
        if "RUN" in line.split():
            store = Store.open(database)
            try:
                run_id = store.start_run(
                    "divd", "divd-nuclei", ["killed.jsonl"]
                )  # as a killed process leaves it
            finally:
                store.close()
            line = line.replace("RUN", str(run_id))
        if "sighting--..." in line:
            store = Store.open(database)
            try:
                sighting = next(
                    o.stix_id
                    for o in CollectionView(store).page(
                        recipient_collection_id("zcert"), after=None, limit=1, types=("sighting",)
                    )
                )
            finally:
                store.close()
            line = line.replace("sighting--...", sighting)
        line = line.replace("COMMAND ...", "runs list").replace(" DIR", " feeds").replace(" ID", " zcert")
        head, _, alternatives = line.partition("route explain ")
        commands = (
            [head + "route explain " + a for a in alternatives.split(" | ")] if alternatives else [line]
        )
        for command in commands:
            args = command.split()[1:]
            result = run_cli(*args, cwd=tmp_path, env=env, stdin=stdin)
            assert result.returncode == 0, f"README line `{command}`:\n{explain(result)}"
            ran.append(command)
    assert any("shadowserver" in c for c in ran) and any("export-feed" in c for c in ran), ran
    from connector.config import load_config

    imported = {r.id for r in load_config(config).recipients}
    assert {"waterschap-voorbeeld", "ziekenhuis-zuid"} <= imported
