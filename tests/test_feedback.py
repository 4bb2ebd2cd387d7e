"""Closing the loop, end to end on SQLite and PostgreSQL.

The DIVD sample is ingested and served; every recipient polls its collection with taxii2-client
(delivered); some acknowledge through TAXII opinions, one marks a false positive, one says a
host is not its own (a note), an operator records a resolution; then a second scan of the same
case, a day later, omits some hosts (gone). Every figure of `stats case` and `stats recipient`
is checked against what the test did, worked out without the statistics code.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taxii2client.v21 import Collection, as_pages

from connector import feedback, stats
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import DIVD_SCAN, RunningServer, password_for, start_server
from tests.record_view import notification_rows
from tests.test_taxii_read import reading_users, session_for

CASE = "DIVD-2024-00012"
OMITTED = ("192.0.2.13", "198.51.100.31", "2001:db8:10::3")  # not found by the second scan
T0 = "2024-06-20T10:00:00.000Z"


@pytest.fixture
def running(taxii: RunningServer) -> RunningServer:
    return taxii  # the DIVD sample, served


def poll(taxii: RunningServer, username: str, recipient: str) -> list[dict[str, Any]]:
    with Collection(
        taxii.collection_url(recipient_collection_id(recipient)),
        user=username,
        password=password_for(username),
    ) as collection:
        return [
            o for page in as_pages(collection.get_objects, per_request=7) for o in page.get("objects", [])
        ]


def opinion(ref: str, value: str) -> dict[str, Any]:
    return {
        "type": "opinion",
        "spec_version": "2.1",
        "id": f"opinion--{uuid.uuid4()}",
        "created": T0,
        "modified": T0,
        "opinion": value,
        "object_refs": [ref],
    }


def note(ref: str, label: str | None, content: str) -> dict[str, Any]:
    out = {
        "type": "note",
        "spec_version": "2.1",
        "id": f"note--{uuid.uuid4()}",
        "created": T0,
        "modified": T0,
        "content": content,
        "object_refs": [ref],
    }
    if label:
        out["labels"] = [label]
    return out


def post(
    taxii: RunningServer, username: str, recipient: str, objects: list[dict[str, Any]]
) -> dict[str, Any]:
    s = session_for(username)
    s.headers["Content-Type"] = "application/taxii+json;version=2.1"
    resp = s.post(
        taxii.collection_url(recipient_collection_id(recipient)) + "objects/",
        data=json.dumps({"objects": objects}),
    )
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


def second_scan(tmp_path: Path) -> Path:
    """The same case scanned again later, the omitted hosts no longer found."""
    lines = [
        re.sub(r'"timestamp": "2024-06-\d\d', '"timestamp": "2024-06-20', line)
        for line in DIVD_SCAN.read_text().splitlines()
        if not any(f'"ip": "{ip}"' in line for ip in OMITTED)
    ]
    scan = tmp_path / DIVD_SCAN.name
    scan.write_text("\n".join(lines) + "\n")
    (tmp_path / f"{CASE}.yaml").write_text((DIVD_SCAN.parent / f"{CASE}.yaml").read_text())
    return scan


def host_of(row: dict[str, Any]) -> str:
    observable = row["observable"]
    return observable[1:].partition("]")[0] if observable.startswith("[") else observable.rpartition(":")[0]


def test_the_loop_end_to_end_with_exact_figures(
    running: RunningServer, store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    rows = notification_rows(store)
    pairs = {(r["sighting_id"], rid) for r in rows for rid in r["recipients"]}
    by_recipient: dict[str, list[str]] = {}
    for sighting, rid in sorted(pairs):
        by_recipient.setdefault(rid, []).append(sighting)

    # 1. Every recipient polls: everything it holds is delivered.
    pollers = {u.recipient: u.username for u in reading_users(sample_config)}
    for rid, username in pollers.items():
        got = {o["id"] for o in poll(running, username, str(rid)) if o["type"] == "sighting"}
        assert got == set(by_recipient.get(str(rid), []))
    before_feedback = stats.case(store, CASE)
    assert before_feedback.delivered == len(pairs) and before_feedback.acknowledged == 0

    # 2. Feedback through TAXII, and an operator's word for one: a host the second scan will
    # not see again (one it sees again after it was resolved is open again: another test).
    omitted = {r["sighting_id"] for r in rows if host_of(r) in OMITTED}
    zcert = [s for s in by_recipient["zcert"] if s not in omitted]
    ibd = [s for s in by_recipient["ibd"] if s not in omitted]
    fixed = next(s for s in by_recipient["zcert"] if s in omitted)
    agreed = [opinion(zcert[0], "agree"), opinion(zcert[1], "strongly-agree")]
    assert post(running, pollers["zcert"], "zcert", agreed)["success_count"] == 2
    assert (
        post(running, pollers["zcert"], "zcert", [opinion(zcert[2], "strongly-disagree")])["success_count"]
        == 1
    )
    said = post(running, pollers["ibd"], "ibd", [note(ibd[0], "not-ours", "this address is our customer's")])
    assert said["success_count"] == 1
    feedback.give(store, "zcert", fixed, "resolved", source="cli", actor="operator", note="patched")
    closed_by_recipient = {(zcert[2], "zcert"), (ibd[0], "ibd"), (fixed, "zcert")}
    acknowledged = {(zcert[0], "zcert"), (zcert[1], "zcert")} | closed_by_recipient

    # 3. The second scan of the case: the omitted hosts are gone where nobody closed them.
    summary = ingestor.run("divd", "divd-nuclei", [second_scan(tmp_path)])
    gone = {(s, rid) for s, rid in pairs if s in omitted and (s, rid) not in closed_by_recipient}
    assert gone and summary.counts["gone"] == len(gone)

    figures = stats.case(store, CASE)
    routed = {r["sighting_id"] for r in rows if r["recipients"]}
    assert figures.as_dict() | {
        "median_seconds_to_delivery": None,
        "median_seconds_to_acknowledgement": None,
    } == {
        "notifications": len(rows),
        "routed": len(routed),
        "unrouted": len(rows) - len(routed),
        "deliveries": len(pairs),
        "delivered": len(pairs),
        "acknowledged": len(acknowledged),
        "resolved": 1,
        "false_positive": 1,
        "not_ours": 1,
        "gone": len(gone),
        "open": len(pairs) - len(gone) - 3,
        "median_seconds_to_delivery": None,
        "median_seconds_to_acknowledgement": None,
    }
    assert figures.median_seconds_to_delivery is not None and figures.median_seconds_to_delivery >= 0
    assert figures.median_seconds_to_acknowledgement is not None

    for rid in by_recipient:
        mine = {s for s, r in pairs if r == rid}
        closed = {s for s, r in closed_by_recipient | gone if r == rid}
        got = stats.recipient(store, rid)
        assert (got.reached, got.fetched, got.open) == (len(mine), len(mine), len(mine - closed)), rid
        assert got.acknowledged == len({s for s, r in acknowledged if r == rid}), rid
        assert sum(got.closed.values()) == len(closed), rid
        assert (got.oldest_open is None) == (not mine - closed), rid

    # 4. The misrouting is listed for the operators.
    misrouted = stats.misrouted(store)
    assert [(m.recipient, m.sighting, m.note) for m in misrouted] == [
        ("ibd", ibd[0], "this address is our customer's")
    ]


def test_a_resolved_notification_seen_again_is_open_again(
    running: RunningServer, store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    rows = notification_rows(store)
    row = next(r for r in rows if r["recipients"] and host_of(r) not in OMITTED)
    rid = row["recipients"][0]
    poll(running, {u.recipient: u.username for u in reading_users(sample_config)}[rid], rid)
    feedback.give(store, rid, row["sighting_id"], "resolved", source="cli", actor="operator")
    ingestor.run("divd", "divd-nuclei", [second_scan(tmp_path)])  # the host is still there
    with store.reading() as reader:
        from connector.store import states

        number = store.collection_number(recipient_collection_id(rid))
        assert number is not None
        state = states.of(reader.conn, number, [row["pk"]])[row["pk"]]
        history = [e.state for e in states.events(reader.conn, [row["pk"]]) if e.collection == number]
    assert state.state == "routed" and state.closed_at is None
    assert history == ["delivered", "resolved", "routed"]


def test_feedback_on_what_is_not_ones_own_is_refused_as_if_it_did_not_exist(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    """Another recipient's sighting and a made-up id get the same refusal, word for word; and a
    reference to an object of one's own beside it does not make the object pass."""
    rows = notification_rows(store)
    zcert_pollers = {u.recipient: u.username for u in reading_users(sample_config)}
    theirs = next(r["sighting_id"] for r in rows if r["recipients"] == ["ibd"])
    mine = next(r["sighting_id"] for r in rows if "zcert" in r["recipients"])
    made_up = f"sighting--{uuid.uuid4()}"
    body = post(
        running,
        zcert_pollers["zcert"],
        "zcert",
        [
            opinion(theirs, "agree"),
            opinion(made_up, "agree"),
            {**opinion(mine, "agree"), "object_refs": [mine, theirs]},
        ],
    )
    assert body["success_count"] == 0
    assert body["failure_count"] == 3
    # The status resource states a repeated failure once, naming every position it applies to.
    messages = [f["message"] for f in body["failures"]]
    assert messages == [f"{feedback.NOT_HERE} [the same for 3 objects: objects[0], objects[1], objects[2]]"]
    assert stats.case(store, CASE).acknowledged == 0
    with pytest.raises(feedback.NotFound):
        feedback.give(store, "zcert", theirs, "acknowledged", source="cli", actor="t")


def test_only_opinions_and_notes_that_say_something_are_taken(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    rows = notification_rows(store)
    username = {u.recipient: u.username for u in reading_users(sample_config)}["zcert"]
    mine = next(r["sighting_id"] for r in rows if "zcert" in r["recipients"])
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": T0,
        "modified": T0,
        "pattern": "[ipv4-addr:value = '192.0.2.10']",
        "pattern_type": "stix",
        "valid_from": T0,
    }
    body = post(
        running, username, "zcert", [indicator, opinion(mine, "neutral"), note(mine, None, "looking into it")]
    )
    assert [f["message"].split(":")[0] for f in body["failures"]] == [
        feedback.REFUSED_TYPE.split(":")[0],
        "opinion 'neutral' says nothing the clearinghouse records",
    ]
    assert body["success_count"] == 1  # a note without a state label acknowledges
    assert stats.case(store, CASE).acknowledged == 1


def test_a_partners_statistics_never_name_a_recipient(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    """The partner endpoint gives DIVD its own feeds and cases; no recipient's id or name is in
    it, and a user that writes no partner's inbox gets "not found"."""
    from connector.passwords import hash_password

    divd_user = "divd-reporter"
    raw = sample_config.model_dump(mode="json")
    raw["users"].append(
        {"username": divd_user, "password_hash": hash_password(password_for(divd_user)), "inbox": "divd"}
    )
    from connector.config import parse_config

    config = parse_config(raw)
    info, server, thread = start_server(config, store)
    try:
        resp = session_for(divd_user).get(info.api_root + "stats/")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["partner"] == "divd" and CASE in body["cases"] and "divd-nuclei" in body["feeds"]
        assert body["cases"][CASE]["notifications"] == len(notification_rows(store))
        text = resp.text.lower()
        for r in config.recipients:
            assert r.id.lower() not in text and r.name.lower() not in text
        poller = next(u.username for u in reading_users(config))
        assert session_for(poller).get(info.api_root + "stats/").status_code == 404
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


# --- MISP sightings, and the command line ------------------------------------------------------


def test_misp_sightings_come_back_as_feedback_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An analyst at Z-CERT marks an attribute we pushed as a false positive (MISP sighting type
    1) and another as seen (type 0): the next `misp sync` records them on the notifications, and
    the one after records nothing again. Pushing the event delivered its notifications."""
    from connector.adapters.mapping import load_mappings
    from connector.channels.misp_sync import MispSync
    from tests.misp_fake import MispFake
    from tests.test_misp_sync import deployment

    fakes = [MispFake().start(), MispFake().start()]
    try:
        config, store = deployment(tmp_path, fakes, monkeypatch)
        Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
        assert not MispSync(config, store).run().errors
        figures = stats.recipient(store, "zcert")
        assert figures.fetched == figures.reached > 0  # the MISP took them: delivered
        event = next(iter(fakes[0].events.values()))
        attributes = [a for o in event["Object"] for a in o["Attribute"] if o["name"] == "ip-port"]
        first, second = (
            attributes[0],
            next(a for a in attributes if a["object_id"] != attributes[0]["object_id"]),
        )
        fakes[0].add_sighting(first["uuid"], "1")
        fakes[0].add_sighting(second["uuid"], "0")
        fakes[0].add_sighting(second["uuid"], "2")  # expiration: says nothing of it
        summary = MispSync(config, store).run()
        assert not summary.errors, summary.errors
        assert dict(summary.feedback) == {"false-positive": 1, "acknowledged": 1}
        after = stats.recipient(store, "zcert")
        assert (after.acknowledged, after.closed) == (2, {"false-positive": 1})
        again = MispSync(config, store).run()
        assert dict(again.feedback) == {}
        assert stats.recipient(store, "zcert").acknowledged == 2
        store.close()
    finally:
        for fake in fakes:
            fake.stop()


def sample_cli(tmp_path: Path) -> tuple[Callable[..., Any], str]:
    """`meldpunt ARGS` in-process on the example configuration with a store of its own; and
    that store's URL."""
    import yaml
    from typer.testing import CliRunner

    from connector.cli import app
    from tests.conftest import SAMPLE_CONFIG

    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["database"] = f"sqlite:///{tmp_path / 'loop.db'}"
    config_file = tmp_path / "meldpunt.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    runner = CliRunner()

    def meldpunt(*args: str) -> Any:
        return runner.invoke(app, [*args, "--config", str(config_file)])

    return meldpunt, raw["database"]


def test_the_command_line_records_feedback_and_lists_what_is_open(tmp_path: Path) -> None:
    meldpunt, database = sample_cli(tmp_path)
    assert meldpunt("ingest", "--partner", "divd", "--format", "divd-nuclei", str(DIVD_SCAN)).exit_code == 0
    store = Store.open(database)
    sighting = next(r["sighting_id"] for r in notification_rows(store) if r["recipients"] == ["ibd"])
    store.close()
    result = meldpunt("feedback", "ibd", sighting, "not-ours", "--note", "[not] our customer")
    assert result.exit_code == 0, result.output
    assert meldpunt("feedback", "zcert", sighting, "resolved").exit_code == 1  # not zcert's: not found
    assert meldpunt("feedback", "ibd", sighting, "fixed").exit_code == 2  # no such state
    case = json.loads(meldpunt("stats", "case", CASE, "--json").stdout)
    assert (case["not_ours"], case["acknowledged"], case["delivered"]) == (1, 1, 0)
    misrouted = json.loads(meldpunt("misrouted", "--json").stdout)
    assert [(m["recipient"], m["sighting"], m["note"]) for m in misrouted] == [
        ("ibd", sighting, "[not] our customer")
    ]
    assert misrouted[0]["explain"][-1].startswith("result: ")
    recipient = json.loads(meldpunt("stats", "recipient", "ibd", "--json").stdout)
    assert recipient["closed"] == {"not-ours": 1} and recipient["fetched"] == 0
    overdue = json.loads(meldpunt("escalations", "--older-than", "0", "--recipient", "ibd", "--json").stdout)
    assert {o["state"] for o in overdue} == {"routed"} and sighting not in {o["sighting"] for o in overdue}
    assert len(overdue) == recipient["open"]
    feeds = json.loads(meldpunt("stats", "feed", "divd", "--json").stdout)
    assert feeds["feeds"]["divd-nuclei"]["notifications"] == case["notifications"]
    assert meldpunt("stats", "feed", "nobody").exit_code == 2
