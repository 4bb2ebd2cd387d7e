"""Retention and a data subject's request (issue #15, item 4), on SQLite and PostgreSQL.

`purge` removes notifications past their classification's retention (leaked credentials after
30 days by default, the rest after 400) everywhere they live; `forget` removes everything about
one address. Afterwards the whole database is searched for the removed values (every row of
every table; on SQLite also the file's bytes after a checkpoint and VACUUM). TAXII paging
across a purge neither serves a removed object again nor moves anything else: a client's cursor
from before continues exactly where it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from connector.adapters.mapping import load_mappings
from connector.channels.misp_feed import refresh_feeds
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, ConfigError, parse_config
from connector.feedback import give
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.retention import forget, purge
from connector.store import Store, VersionFilter
from tests.conftest import DIVD_SCAN, divd_scan_as
from tests.record_view import every_version
from tests.test_cli import cli_env, explain, run_cli, write_config
from tests.test_credentials import SAMPLE as CREDENTIALS
from tests.test_credentials import credentials_raw, dump_text, sqlite_file_bytes

DAY = 86400


@pytest.fixture
def config() -> Config:
    """The credentials deployment, with MISP channels (never pushed: the outbox is what counts)
    for a recipient of scans and one of leaked credentials."""
    raw = credentials_raw()
    recipients = {r["id"]: r for r in raw["recipients"]}
    for rid in ("zcert", "school"):
        recipients[rid]["misp"] = {
            "url": "https://misp.example.org",
            "key_env": "MISP_KEY_UNUSED",
            "feed": True,  # stored feed files hold what the events hold
        }
    return parse_config(raw, source="retention test config")


@pytest.fixture
def filled(store: Store, config: Config) -> Store:
    store.sync_collections(collection_rows(config))
    ingestor = Ingestor(config, store, load_mappings())
    assert ingestor.run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    assert ingestor.run("divd", "divd-credentials", [CREDENTIALS]).ok
    return store


def members(store: Store, recipient: str) -> list[tuple[int, str]]:
    """(date_added, id) of every object version the recipient's collection serves, in order."""
    page = CollectionView(store).page(
        recipient_collection_id(recipient), after=None, limit=1_000_000, versions=VersionFilter(all=True)
    )
    return [(m.date_added, m.stix_id) for m in page]


def paged(store: Store, recipient: str, after: int | None, limit: int = 3) -> list[tuple[int, str]]:
    """The same, page by page from `after`, as a client with a cursor reads it."""
    out: list[tuple[int, str]] = []
    view = CollectionView(store)
    while True:
        page = view.page(
            recipient_collection_id(recipient), after=after, limit=limit, versions=VersionFilter(all=True)
        )
        out += [(m.date_added, m.stix_id) for m in page]
        if len(page) < limit:
            return out
        after = page[-1].date_added


def records(store: Store) -> list[dict[str, Any]]:
    """Every notification: pk, classification, its observables and its evidence."""
    out = []
    for n, v, kind in store.iter_notifications():
        with store.reading() as reader:
            evidence = json.loads(reader.evidence([v.evidence_of(n)])[v.evidence_of(n)])
        out.append(
            {
                "pk": n.pk,
                "classification": kind.classification,
                "ip": n.ip,
                "email": n.email,
                "evidence": evidence,
            }
        )
    return out


def leaked(store: Store) -> dict[str, Any]:
    """What the leaked-credential notifications hold that nothing else does: their e-mail
    addresses, masked passwords and the URLs of their evidence."""
    rows = [r for r in records(store) if r["classification"] == "information-content-security/data-leak"]
    assert rows, "the credentials sample made no notification"
    emails = {r["email"] for r in rows}
    evidence = [r["evidence"] for r in rows]
    masked = {e["password_masked"] for e in evidence if e.get("password_masked")}
    urls = {e["url"] for e in evidence if e.get("url")}
    return {"pks": {r["pk"] for r in rows}, "emails": emails, "masked": masked, "urls": urls, "rows": rows}


def absent(store: Store, values: set[str]) -> list[str]:
    """The values still found anywhere in the database (every column of every row)."""
    text = dump_text(store).lower()
    return sorted(v for v in values if v.lower() in text)


def file_bytes_after_vacuum(store: Store) -> bytes:
    store.checkpoint()
    with store._write_engine.connect() as conn:
        conn.connection.driver_connection.execute("VACUUM")  # type: ignore[union-attr]
    store.checkpoint()
    return sqlite_file_bytes(store)


def test_purge_removes_leaked_credentials_after_30_days_everywhere(filled: Store, config: Config) -> None:
    store = filled
    before = leaked(store)
    # Personal data reaches the routing tables, the outbox and the delivery log before a purge.
    assert store.misp_events("school")
    school_before = members(store, "school")
    noord_before = members(store, "ziekenhuis-noord")
    zcert_before = members(store, "zcert")
    emails_at = [d for d, i in school_before if i.startswith("email-addr--")]
    assert emails_at
    # An operator deleted one of school's objects (TAXII DELETE): removals are recorded too.
    removed_id = next(i for _d, i in school_before if i.startswith("sighting--"))
    assert CollectionView(store).remove(
        recipient_collection_id("school"), removed_id, VersionFilter(all=True)
    )
    school_before = members(store, "school")
    # School acknowledged one of its notifications (a delivery state and its history), and its
    # MISP feed was built (stored files holding the addresses).
    acknowledged = next(i for _d, i in school_before if i.startswith("sighting--"))
    give(store, "school", acknowledged, "acknowledged", source="cli", actor="op", note="seen")
    assert refresh_feeds(config, store)["school"] > 0
    # A client in the middle of the hospital's collection (credentials and scans mixed there).
    cursor = noord_before[len(noord_before) // 3][0]

    dry = purge(store, config, dry_run=True, now=time.time() + 31 * DAY)
    assert dry.counts["notifications"] == len(before["pks"])
    assert leaked(store)["pks"] == before["pks"], "--dry-run removed something"

    report = purge(store, config, now=time.time() + 31 * DAY)
    assert report.counts["notifications"] == len(before["pks"])
    assert report.by_classification == {"information-content-security/data-leak": len(before["pks"])}
    assert report.counts["misp_event_members"] > 0 and report.counts["misp_outbox_entries"] > 0
    assert report.counts["removals"] >= 1 and report.counts["evidence"] > 0
    assert report.counts["run_rows"] > 0  # the runs' quarantined rows are over 30 days old then
    assert report.counts["delivery_states"] == 1 and report.counts["delivery_events"] == 1
    assert report.counts["misp_feed_events"] > 0

    # Gone from the record, and from every table: no address, masked password or URL left.
    assert not any(r["classification"].startswith("information-content") for r in records(store))
    assert absent(store, before["emails"] | before["masked"] | before["urls"]) == []
    assert store.misp_events("school") == []
    assert store.misp_events("zcert"), "the scans' MISP events went too"
    with store.engine.connect() as conn:
        versions = {v.notification for v in every_version(conn)}
        assert not versions & before["pks"], "version_blocks"
        for table in (
            "notifications",
            "observations",
            "misp_event_members",
            "delivery_states",
            "delivery_events",
        ):
            column = "pk" if table == "notifications" else "notification"
            rows = conn.exec_driver_sql(f"SELECT {column} FROM {table}").all()
            assert not {r[0] for r in rows} & before["pks"], table
        ids = {r[0] for r in conn.exec_driver_sql("SELECT notification FROM notification_ids")}
        assert not ids & before["pks"]
        assert conn.exec_driver_sql("SELECT count(*) FROM run_rows").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM removed_objects").scalar() == 0
        feed = "SELECT count(*) FROM misp_feed_events WHERE recipient = 'school'"
        assert conn.exec_driver_sql(feed).scalar() == 0

    # The scans are untouched: every object at the date_added it had.
    assert members(store, "zcert") == zcert_before
    # The hospital's collection: the credentials' objects gone, nothing moved, and a cursor
    # from before the purge continues with exactly what remains after it.
    noord_after = members(store, "ziekenhuis-noord")
    assert set(noord_after) <= set(noord_before)
    assert not any(i.startswith("email-addr--") for _d, i in noord_after)
    assert paged(store, "ziekenhuis-noord", cursor) == [m for m in noord_after if m[0] > cursor]
    # School received only credentials: what is left are the objects without personal data
    # (identities, markings, the extension definition) that its first entry brought, kept at
    # their date_added for objects that... nothing there refers to any more, but they hold
    # nothing about anybody.
    school_after = members(store, "school")
    assert set(school_after) <= set(school_before)
    assert {i.split("--")[0] for _d, i in school_after} <= {
        "identity",
        "marking-definition",
        "extension-definition",
    }

    again = purge(store, config, now=time.time() + 31 * DAY)
    assert not again.counts.get("notifications")

    if store.dialect == "sqlite":
        raw = file_bytes_after_vacuum(store)
        found = sorted(
            v
            for v in before["emails"] | before["masked"] | before["urls"]
            if v.lower().encode() in raw.lower()
        )
        assert found == []


def test_purge_keeps_what_is_within_its_retention(filled: Store, config: Config) -> None:
    before = records(filled)
    scans = len([r for r in before if r["classification"] == "vulnerable/vulnerable-system"])
    assert 0 < scans < len(before)
    assert not purge(filled, config, now=time.time() + 29 * DAY).counts.get("notifications")
    assert len(records(filled)) == len(before)
    # A longer period configured keeps the scans past 400 days; the credentials still go.
    retention = config.retention.model_copy(update={"default_days": 500})
    longer = config.model_copy(update={"retention": retention})
    report = purge(filled, longer, now=time.time() + 450 * DAY)
    assert report.counts["notifications"] == len(before) - scans
    report = purge(filled, config, now=time.time() + 401 * DAY)
    assert report.counts["notifications"] == scans
    assert records(filled) == []
    tables = ("version_blocks", "notification_ids", "observations", "evidence", "delivery_blocks")
    with filled.engine.connect() as conn:
        for table in tables:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 0, table
        rendered = conn.exec_driver_sql(
            "SELECT count(*) FROM collection_shared WHERE stored = false"
        ).scalar()
        assert rendered == 0, "a shared object still points at a removed entry"
    for recipient in ("zcert", "school"):
        kinds = {i.split("--")[0] for _d, i in members(filled, recipient)}
        assert kinds <= {"identity", "marking-definition", "extension-definition", "vulnerability"}, kinds


def test_forget_removes_an_address_everywhere(filled: Store, config: Config, tmp_path: Path) -> None:
    store = filled
    rows = records(store)
    address = "192.0.2.17"
    about = [r for r in rows if r["ip"] == address]
    assert about, "the DIVD sample has no notification about the address"
    # A researcher's bundle about it too (stored verbatim), and a quarantined line quoting it.
    from connector.submission import Submissions

    objects = _researcher_bundle(address)["objects"]
    result = Submissions(config, store).submit(partner="researcher-1", objects=objects)
    assert result.routed, result
    bad = tmp_path / "DIVD-2024-00012.nuclei.jsonl"
    bad.write_text(
        json.dumps({"ip": address, "port": "not a port", "timestamp": "2024-06-01T00:00:00Z"}) + "\n"
    )
    (tmp_path / "DIVD-2024-00012.yaml").write_text(
        Path(DIVD_SCAN).with_name("DIVD-2024-00012.yaml").read_text()
    )
    Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [bad])
    assert address in dump_text(store)
    others = [r for r in rows if r["ip"] not in (address, None) and address not in json.dumps(r["evidence"])]
    zcert_before = members(store, "zcert")
    # An analyst's note on another notification quotes the address; zcert's MISP feed is built.
    other = next(i for _d, i in zcert_before if i.startswith("sighting--"))
    give(store, "zcert", other, "acknowledged", source="cli", actor="op", note=f"not {address} but ours")
    assert refresh_feeds(config, store)["zcert"] > 0
    with store.engine.connect() as conn:
        bodies = [r[0] for r in conn.exec_driver_sql("SELECT body FROM misp_feed_events")]
    assert any(address in b for b in bodies), "the feed did not show the address"

    assert forget(store, config, address, dry_run=True).counts["feedback_notes"] == 1
    report = forget(store, config, address)
    assert report.counts["notifications"] >= len(about)
    assert report.counts["stored_objects"] >= 2 and report.counts["run_rows"] >= 1
    assert report.counts["feedback_notes"] == 1 and report.counts["misp_feed_events"] >= 1
    assert address not in dump_text(store)
    left = {r["pk"] for r in records(store)}
    assert {r["pk"] for r in others} <= left
    zcert_after = members(store, "zcert")
    assert set(zcert_after) <= set(zcert_before) and len(zcert_after) < len(zcert_before)
    assert forget(store, config, address).counts.get("notifications", 0) == 0
    if store.dialect == "sqlite":
        assert address.encode() not in file_bytes_after_vacuum(store)


def test_purge_keeps_a_researchers_stored_sco_that_their_objects_refer_to(
    store: Store, config: Config, tmp_path: Path
) -> None:
    """A researcher's ipv4-addr, stored first, stays when a later notification about the same
    address (which did not bring it again) is purged: the researcher's observed-data refers to
    it. `forget` still removes it with the value."""
    from connector.submission import Submissions

    store.sync_collections(collection_rows(config))
    address = "192.0.2.17"
    bundle = _researcher_bundle(address)["objects"]
    sco, observed = bundle[0]["id"], bundle[1]["id"]
    result = Submissions(config, store).submit(partner="researcher-1", objects=bundle)
    assert result.routed, result
    for rid in result.per_recipient:
        assert sco in {i for _d, i in members(store, rid)}, rid
    line = json.loads(DIVD_SCAN.read_text().splitlines()[0])
    scan = divd_scan_as(tmp_path, json.dumps({**line, "ip": address}) + "\n")
    assert Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan]).ok

    report = purge(store, config, now=time.time() + 401 * DAY)
    assert report.counts["notifications"] == 1
    for rid in result.per_recipient:
        ids = {i for _d, i in members(store, rid)}
        assert observed in ids, rid
        assert sco in ids, f"the ipv4-addr the observed-data refers to was taken out of {rid}'s collection"

    dry = forget(store, config, address, dry_run=True)
    real = forget(store, config, address)
    assert real.counts["stored_objects"] == dry.counts["stored_objects"] >= 3
    for rid in result.per_recipient:
        assert not {sco, observed} & {i for _d, i in members(store, rid)}, rid


def test_forget_counts_a_stored_sco_the_removal_took_as_its_dry_run_does(
    store: Store, config: Config, tmp_path: Path
) -> None:
    """A researcher's lone ipv4-addr nothing refers to goes with the notification about it
    (as a shared object nothing needs); the real run counts it under stored_objects, as the
    dry run does."""
    from connector.submission import Submissions

    store.sync_collections(collection_rows(config))
    address = "192.0.2.17"
    sco = _researcher_bundle(address)["objects"][0]
    result = Submissions(config, store).submit(partner="researcher-1", objects=[sco])
    assert result.routed, result
    line = json.loads(DIVD_SCAN.read_text().splitlines()[0])
    scan = divd_scan_as(tmp_path, json.dumps({**line, "ip": address}) + "\n")
    assert Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [scan]).ok

    dry = forget(store, config, address, dry_run=True)
    real = forget(store, config, address)
    assert dry.counts["stored_objects"] == real.counts["stored_objects"] == 1
    assert address not in dump_text(store)


def _researcher_bundle(address: str) -> dict[str, Any]:
    from stix2 import Bundle, IPv4Address, ObservedData, Sighting

    ip = IPv4Address(value=address)
    observed = ObservedData(
        first_observed="2024-06-01T00:00:00Z",
        last_observed="2024-06-01T00:00:00Z",
        number_observed=1,
        object_refs=[ip.id],
    )
    sighting = Sighting(
        sighting_of_ref="indicator--a932fcc6-e032-476c-826f-cb970a5a1ade", observed_data_refs=[observed.id]
    )
    return json.loads(Bundle(ip, observed, sighting, allow_custom=True).serialize())


def test_retention_defaults_and_settings() -> None:
    config = parse_config({})
    assert config.retention.days_for("information-content-security", "data-leak") == 30
    assert config.retention.days_for("vulnerable", "vulnerable-system") == 400
    assert config.retention.quarantine_days == 30
    tuned = parse_config(
        {"retention": {"default_days": 200, "classifications": {"vulnerable": 100, "fraud/phishing": 10}}}
    )
    assert tuned.retention.days_for("vulnerable", "vulnerable-system") == 100
    assert tuned.retention.days_for("fraud", "phishing") == 10
    assert tuned.retention.days_for("fraud", "scam") == 200
    assert tuned.retention.days_for("information-content-security", "data-leak") == 30  # kept short
    with pytest.raises(ConfigError, match="unknown RSIT taxonomy 'vulnerabel'"):
        parse_config({"retention": {"classifications": {"vulnerabel": 10}}})
    with pytest.raises(ConfigError, match=r"retention\.default_days"):
        parse_config({"retention": {"default_days": 0}})


# --- the command line ----------------------------------------------------------------------------


def test_purge_forget_and_audit_on_the_command_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = cli_env(config)
    ingest = run_cli(
        "ingest", "--partner", "divd", "--format", "divd-nuclei", str(DIVD_SCAN), cwd=tmp_path, env=env
    )
    assert ingest.returncode == 0, explain(ingest)
    dry = run_cli("purge", "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0, explain(dry)
    assert "information-content-security/data-leak 30 days" in dry.stdout and "400 days" in dry.stdout
    assert "nothing to remove" in dry.stdout

    for bad in ("1", "not an address", "x@", "http://"):
        refused = run_cli("forget", bad, cwd=tmp_path, env=env)
        assert refused.returncode == 2, explain(refused)
    forgot = run_cli("forget", "192.0.2.17", cwd=tmp_path, env=env)
    assert forgot.returncode == 0, explain(forgot)
    assert "forget 192.0.2.17: removed" in forgot.stdout and "  notifications " in forgot.stdout

    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    try:
        zcert, ibd = recipient_collection_id("zcert"), recipient_collection_id("ibd")
        store.audit(username="zcert-poller", action="objects", collection_id=zcert, objects=5, status=200)
        store.audit(username="ibd-poller", action="manifest", collection_id=ibd, objects=2, status=200)
        store.audit(username="zcert-poller", action="objects", collection_id=zcert, objects=0, status=200)
    finally:
        store.close()
    everything = json.loads(run_cli("audit", "--json", cwd=tmp_path, env=env).stdout)
    assert [e["user"] for e in everything] == ["zcert-poller", "ibd-poller", "zcert-poller"]
    by_user = json.loads(run_cli("audit", "--user", "ibd-poller", "--json", cwd=tmp_path, env=env).stdout)
    assert [(e["action"], e["owner"], e["objects"]) for e in by_user] == [("manifest", "ibd", 2)]
    by_recipient = json.loads(
        run_cli("audit", "--recipient", "zcert", "--json", cwd=tmp_path, env=env).stdout
    )
    assert len(by_recipient) == 2 and {e["collection"] for e in by_recipient} == {zcert}
    future = run_cli("audit", "--since", "2999-01-01", "--json", cwd=tmp_path, env=env)
    assert json.loads(future.stdout) == []
    recent = json.loads(run_cli("audit", "--since", "1h", "--json", cwd=tmp_path, env=env).stdout)
    assert len(recent) == 3
    table = run_cli("audit", "--user", "zcert-poller", cwd=tmp_path, env=env)
    assert table.returncode == 0 and table.stdout.count("zcert-poller") == 2, explain(table)
    wrong = run_cli("audit", "--since", "yesterday", cwd=tmp_path, env=env)
    assert wrong.returncode == 2 and "--since" in wrong.stderr
    unknown = run_cli("audit", "--recipient", "nobody", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "unknown recipient 'nobody'" in unknown.stderr


@pytest.mark.parametrize("command", [["purge"], ["forget", "192.0.2.17"], ["audit"]])
def test_retention_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, cwd=tmp_path, config=write_config(tmp_path))
    assert result.returncode == 1, explain(result)
    assert not (tmp_path / "meldpunt.db").exists()


def test_the_readme_documents_every_retention_and_scheduler_key() -> None:
    from connector.config import MetricsConfig, MispPull, RetentionConfig, SchedulerConfig
    from tests.conftest import REPO

    table = (REPO / "README.md").read_text(encoding="utf-8").split("## Configuration", 1)[1]
    table = table.split("\n## ", 1)[0]
    expected = [f"`retention.{k}`" for k in RetentionConfig.model_fields]
    expected += [f"`scheduler.{k}`" for k in SchedulerConfig.model_fields]
    expected += [f"`server.metrics.{k}`" for k in MetricsConfig.model_fields]
    expected += [f"`partners[].misp_pull.{k}`" for k in MispPull.model_fields]
    assert [k for k in expected if k not in table] == []
