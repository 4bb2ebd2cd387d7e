"""Regression tests for faults a security review found: each proves one leak or crash is closed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests
import stix2
import yaml

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, inbox_collection_id, recipient_collection_id
from connector.config import parse_config
from connector.ingest import Ingestor
from connector.notification import Classification, Notification
from connector.render.collection import CollectionView
from connector.render.misp import load_notes
from connector.routing import Router
from connector.stix.build import vulnerability
from connector.store import Store, VersionFilter
from connector.submission import Submissions
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, divd_scan_as, password_for, start_server
from tests.record_view import notification_rows

T0 = "2024-01-01T00:00:00.000Z"


def submit(store: Store, config, objects, partner: str = "researcher-1"):  # type: ignore[no-untyped-def]
    return Submissions(config, store).submit(
        partner=partner, objects=objects, inbox_collection=inbox_collection_id(partner)
    )


def sdo_indicator(pattern: str) -> dict:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": T0,
        "modified": T0,
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": T0,
    }


def test_a_submission_cannot_pre_empt_a_clearinghouse_id(store, sample_config) -> None:  # type: ignore[no-untyped-def]
    forged = dict(vulnerability("CVE-2030-0001"), description="patch at https://evil.example/")
    never = dict(vulnerability("CVE-2030-0002"))
    outcomes = submit(store, sample_config, [forged, never]).outcomes
    assert not outcomes[0].ok and not outcomes[1].ok
    assert outcomes[0].message.split(":", 1)[1] == outcomes[1].message.split(":", 1)[1]  # no probing


def test_patterns_that_hide_other_hosts_are_delivered_to_nobody(store, sample_config) -> None:  # type: ignore[no-untyped-def]
    """Accepted (valid STIX, issue #14 item 24) but never delivered: the one names another
    recipient's host through a reference, the other an address a LIKE cannot route."""
    sneaky = sdo_indicator(
        "[ipv4-addr:value = '192.0.2.10'] OR [network-traffic:dst_ref.value = '198.51.100.7']"
    )
    like = sdo_indicator("[ipv4-addr:value = '192.0.2.10'] AND [domain-name:value LIKE 'secret.example.nl']")
    plain = sdo_indicator("[ipv4-addr:value = '192.0.2.10']")
    result = submit(store, sample_config, [sneaky, like, plain])
    assert [o.ok for o in result.outcomes] == [True, True, True]
    zcert = {
        m.stix_id for m in CollectionView(store).page(recipient_collection_id("zcert"), after=None, limit=100)
    }
    assert sneaky["id"] not in zcert and like["id"] not in zcert and plain["id"] in zcert
    assert result.withheld == 2


def test_observables_with_custom_properties_or_raw_credentials_are_refused(store, sample_config) -> None:  # type: ignore[no-untyped-def]
    noted = json.loads(stix2.IPv4Address(value="192.0.2.10").serialize())
    noted["x_note"] = "planted"
    account = {
        "type": "user-account",
        "spec_version": "2.1",
        "id": f"user-account--{uuid.uuid4()}",
        "account_login": "jan@example.org",
        "credential": "Hunter2Password!",
    }
    outcomes = submit(store, sample_config, [noted, account]).outcomes
    assert not outcomes[0].ok and not outcomes[1].ok
    assert "Hunter2Password!" not in json.dumps([o.message for o in outcomes])


def test_submitted_e_mail_addresses_go_to_the_direct_owner_only_and_honour_opt_out(tmp_path: Path) -> None:
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["recipients"].append(
        {
            "id": "child",
            "name": "Child",
            "kind": "organisation",
            "parent": "zcert",
            "constituency": {"domains": ["child.example.org"]},
        }
    )
    raw["recipients"].append(
        {
            "id": "quiet",
            "name": "Quiet",
            "kind": "organisation",
            "parent": "zcert",
            "constituency": {"domains": ["quiet.example.org"]},
        }
    )
    raw["opt_out"] = {"domains": ["quiet.example.org"]}
    config = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.sync_collections(collection_rows(config))
    addresses = [
        json.loads(stix2.EmailAddress(value=v).serialize())
        for v in ("jan@child.example.org", "piet@quiet.example.org")
    ]
    result = submit(store, config, addresses)
    assert result.per_recipient == {"child": 1}  # not zcert, the parent
    assert result.opted_out == 1


def test_domain_opt_out_applies_to_e_mail_notifications(sample_config) -> None:  # type: ignore[no-untyped-def]
    raw = sample_config.model_dump(mode="json")
    raw["opt_out"] = {"domains": ["example.nl"]}
    n = Notification(
        partner="divd",
        feed="t",
        classification=Classification("information-content-security", "data-leak", "leaked-credential"),
        observed_at=datetime(2024, 6, 1, tzinfo=UTC),
        tlp="amber",
        email="jan@example.nl",
    )
    assert Router(parse_config(raw)).route(n).recipients == []


def test_delete_with_match_version_last_removes_only_the_last(tmp_path: Path, sample_config) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.sync_collections(collection_rows(sample_config))
    ingestor = Ingestor(sample_config, store, load_mappings())
    line = DIVD_SCAN.read_text().splitlines()[0]
    for moment in ("04:48:41", "09:00:00"):
        ingestor.run("divd", "divd-nuclei", [divd_scan_as(tmp_path, line.replace("04:48:41", moment) + "\n")])
    zcert = recipient_collection_id("zcert")
    sighting = next(
        m.stix_id for m in CollectionView(store).page(zcert, after=None, limit=100, types=("sighting",))
    )
    running, server, thread = start_server(sample_config, store)
    try:
        url = f"{running.collection_url(zcert)}objects/{sighting}/"
        headers = {"Accept": "application/taxii+json;version=2.1"}
        auth = ("operator-1", password_for("operator-1"))
        assert (
            requests.delete(
                url, params={"match[version]": "last"}, auth=auth, headers=headers, timeout=10
            ).status_code
            == 200
        )
        left = CollectionView(store).page(
            zcert, after=None, limit=10, ids=(sighting,), versions=VersionFilter(all=True)
        )
        assert len(left) == 1  # the first version stays, and is the latest again
        assert (
            CollectionView(store).page(zcert, after=None, limit=10, ids=(sighting,))[0].version
            == left[0].version
        )
        ancient = requests.get(
            f"{running.collection_url(zcert)}objects/",
            headers=headers,
            params={"match[version]": "0001-01-01T00:00:00Z"},
            auth=("zcert-poller", password_for("zcert-poller")),
            timeout=10,
        )
        assert ancient.status_code == 200  # was a 500
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_misp_events_hold_what_the_recipient_was_given(tmp_path: Path, sample_config) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    store.sync_collections(collection_rows(sample_config))
    Ingestor(sample_config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN])
    keys = [row["pk"] for row in notification_rows(store)]
    held = {n.record.observable for n in load_notes(store, keys, "ibd")}
    assert held == {"198.51.100.30:443", "198.51.100.31:443"}  # not the municipality's, not zcert's
    zcert = recipient_collection_id("zcert")
    some = next(
        m.stix_id for m in CollectionView(store).page(zcert, after=None, limit=100, types=("sighting",))
    )
    CollectionView(store).remove(zcert, some, VersionFilter(all=True))
    assert some not in {n.sighting_id for n in load_notes(store, keys, "zcert")}


def test_two_spellings_of_one_version_are_the_same_version(store, sample_config) -> None:  # type: ignore[no-untyped-def]
    ident = f"identity--{uuid.uuid4()}"
    first = {
        "type": "identity",
        "spec_version": "2.1",
        "id": ident,
        "created": T0,
        "modified": T0,
        "name": "A",
    }
    again = dict(first, modified="2024-01-01T00:00:00.0000Z", name="B")  # the store keys both alike
    outcomes = submit(store, sample_config, [first, again]).outcomes
    assert [o.ok for o in outcomes] == [True, False]
