"""Overdue notifications offered to the parent (issue #13, item 5), on SQLite and PostgreSQL.

The DIVD sample is served; nobody fetches anything. Offering what is overdue puts a STIX note in
Z-CERT's collection for each notification of its hospital (deliver_to_parent true), read over
TAXII with taxii2-client and valid by stix2-validator; nothing for the municipality, whose link
organisation does not receive its notifications (deliver_to_parent false), nor for recipients
without a parent; and personal data is never offered, even where the parent link delivers up.
"""

from __future__ import annotations

import json
from pathlib import Path

from stix2validator import ValidationOptions, validate_parsed_json

from connector import stats
from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, recipient_collection_id
from connector.config import Config, parse_config
from connector.escalation import ALREADY, NOT_OFFERED, OFFERED, offer_to_parents
from connector.feedback import give
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import DIVD_SCAN, RunningServer
from tests.record_view import notification_rows
from tests.test_credentials import SAMPLE as CREDENTIALS
from tests.test_credentials import credentials_raw
from tests.test_feedback import poll, sample_cli


def reader_of(config: Config, recipient: str) -> str:
    return next(u.username for u in config.users if u.recipient == recipient and not u.operator)


def test_overdue_notifications_are_offered_to_a_parent_that_receives_them(
    taxii: RunningServer,
    store: Store,
    sample_config: Config,
) -> None:
    rows = notification_rows(store)
    hospital = {r["sighting_id"] for r in rows if "ziekenhuis-noord" in r["recipients"]}
    municipality = {r["sighting_id"] for r in rows if "gemeente-voorbeeld" in r["recipients"]}
    assert hospital and municipality
    # The hospital acknowledged one: it is no longer overdue, so not offered.
    acknowledged = sorted(hospital)[0]
    give(store, "ziekenhuis-noord", acknowledged, "acknowledged", source="cli", actor="op")
    wanted = [r.id for r in sample_config.recipients]
    overdue = stats.escalations(store, wanted, 0)
    offers = offer_to_parents(sample_config, store, overdue)
    by = {(o.recipient, o.sighting): o for o in offers}

    offered = {s for (rid, s), o in by.items() if rid == "ziekenhuis-noord" and o.outcome == OFFERED}
    assert offered == hospital - {acknowledged}
    assert {o.parent for o in offers if o.recipient == "ziekenhuis-noord"} == {"zcert"}
    for sighting in municipality:
        o = by[("gemeente-voorbeeld", sighting)]
        assert (o.outcome, o.parent) == (NOT_OFFERED, "ibd")
        assert o.reason == "gemeente-voorbeeld has deliver_to_parent false"
    assert {o.reason for o in offers if o.recipient in ("zcert", "ibd")} == {"it has no parent"}

    # Z-CERT reads the offers over TAXII, in its own collection: a note per notification,
    # referring to its sighting, with the notification's marking, valid STIX 2.1.
    zcert = poll(taxii, reader_of(sample_config, "zcert"), "zcert")
    notes = [o for o in zcert if o["type"] == "note" and o.get("labels") == ["escalation"]]
    assert {n["object_refs"][0] for n in notes} == offered
    sightings = {o["id"]: o for o in zcert if o["type"] == "sighting"}
    for n in notes:
        assert n["object_marking_refs"] == sightings[n["object_refs"][0]]["object_marking_refs"]
        assert "Ziekenhuis Noord" in n["abstract"]
    bundle = {"type": "bundle", "id": "bundle--6e1d1b49-4b4e-4a57-9f7b-1c1d1c1d1c1d", "objects": zcert}
    result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]
    # Offering again adds nothing; Z-CERT's collection is unchanged.
    again = offer_to_parents(sample_config, store, stats.escalations(store, wanted, 0))
    assert {o.outcome for o in again if o.recipient == "ziekenhuis-noord"} == {ALREADY}
    assert len(poll(taxii, reader_of(sample_config, "zcert"), "zcert")) == len(zcert)

    # Nobody else gets a note: not the hospital itself, not the IBD, not the municipality.
    for rid in ("ziekenhuis-noord", "ibd", "gemeente-voorbeeld"):
        assert not [o for o in poll(taxii, reader_of(sample_config, rid), rid) if o["type"] == "note"], rid
    # The hospital has fetched them now (that poll), still without acknowledging: a later
    # state, offered anew with what it is waiting for now.
    later = offer_to_parents(sample_config, store, stats.escalations(store, wanted, 0))
    assert {o.sighting for o in later if o.outcome == OFFERED} == offered
    zcert = poll(taxii, reader_of(sample_config, "zcert"), "zcert")
    fetched = [o for o in zcert if o["type"] == "note" and "has not acknowledged" in o["abstract"]]
    assert {n["object_refs"][0] for n in fetched} == offered


def test_personal_data_is_never_offered_to_the_parent(store: Store) -> None:
    """Leaked credentials go to the direct owner only, even where every link delivers up."""
    config = parse_config(credentials_raw(), source="escalation test config")
    store.sync_collections(collection_rows(config))
    ingestor = Ingestor(config, store, load_mappings())
    assert ingestor.run("divd", "divd-credentials", [CREDENTIALS]).ok
    overdue = stats.escalations(store, ["school", "ziekenhuis-noord", "gemeente-voorbeeld"], 0)
    assert overdue
    offers = offer_to_parents(config, store, overdue)
    assert {o.outcome for o in offers} == {NOT_OFFERED}
    assert {o.reason for o in offers} == {"personal data goes to the direct owner only"}
    with store.reading() as reader:
        for parent in ("onderwijs-cert", "zcert", "ibd"):
            collection = recipient_collection_id(parent)
            assert reader.stored_page(collection, after=None, limit=10, types=("note",)) == [], parent


def test_the_command_line_offers_and_reports(tmp_path: Path) -> None:
    meldpunt, _database = sample_cli(tmp_path)
    assert meldpunt("ingest", "--partner", "divd", "--format", "divd-nuclei", str(DIVD_SCAN)).exit_code == 0
    first = meldpunt("escalations", "--older-than", "0", "--offer-to-parent", "--json")
    assert first.exit_code == 0, first.output
    offers = json.loads(first.stdout)
    assert {o["outcome"] for o in offers if o["recipient"] == "ziekenhuis-noord"} == {OFFERED}
    text = meldpunt(
        "escalations", "--older-than", "0", "--offer-to-parent", "--recipient", "ziekenhuis-noord"
    )
    assert text.exit_code == 0, text.output
    count = sum(1 for o in offers if o["recipient"] == "ziekenhuis-noord")
    assert f"{count} {ALREADY}" in text.stdout and "zcert" in text.stdout
