"""STIX 2.1 submissions at library level (connector.submission), on SQLite and PostgreSQL.

Objects are written by hand (or with the `stix2` library) from the STIX 2.1 specification;
what each recipient must receive is derived here from the configured constituencies with
Python's `ipaddress` and plain suffix matching, never from the project's router. What the
validator says about an object is asked of `stix2validator` directly, so the messages the
submission reports are checked against the validator itself.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import stix2
from sqlalchemy import func, select
from stix2validator import ValidationOptions, validate_instance

from connector.adapters.mapping import load_mappings
from connector.collections import collection_rows, inbox_collection_id, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.render.collection import CollectionView
from connector.stix.ids import located_id, located_subject
from connector.store import Store, VersionFilter
from connector.store import schema as t
from connector.submission import SubmissionResult, Submissions
from tests.conftest import DIVD_SCAN, REPO
from tests.record_view import all_objects

Json = dict[str, Any]

T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-02-01T00:00:00.000Z"
PARTNER = "researcher-1"
RECIPIENTS = ("zcert", "ziekenhuis-noord", "ibd", "gemeente-voorbeeld")

# The OASIS TLP 2.0 marking definitions (STIX 2.1 section 7.2.1.4), spelled out here.
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2 = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


def official_tlp2(level: str) -> Json:
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP2[level],
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{level.upper()}",
        "extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}},
    }


# --- object builders ------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{kind}--{uuid.uuid4()}"


def serialized(obj: Any) -> Json:
    return dict(json.loads(obj.serialize()))


def ipv4(value: str, **extra: Any) -> Json:
    return serialized(stix2.IPv4Address(value=value, **extra))


def indicator(address: str, **extra: Any) -> Json:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": new_id("indicator"),
        "created": T0,
        "modified": T0,
        "name": f"Vulnerable host {address}",
        "pattern": f"[ipv4-addr:value = '{address}']",
        "pattern_type": "stix",
        "valid_from": T0,
        **extra,
    }


def observed_data(refs: list[str], **extra: Any) -> Json:
    return {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": new_id("observed-data"),
        "created": T0,
        "modified": T0,
        "first_observed": T0,
        "last_observed": T0,
        "number_observed": 1,
        "object_refs": refs,
        **extra,
    }


def identity(name: str, **extra: Any) -> Json:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": new_id("identity"),
        "created": T0,
        "modified": T0,
        "name": name,
        "identity_class": "individual",
        **extra,
    }


def vulnerability(name: str) -> Json:
    return {
        "type": "vulnerability",
        "spec_version": "2.1",
        "id": new_id("vulnerability"),
        "created": T0,
        "modified": T0,
        "name": name,
        "external_references": [{"source_name": "cve", "external_id": name}],
    }


def sighting(of_ref: str, observed: list[str], **extra: Any) -> Json:
    return {
        "type": "sighting",
        "spec_version": "2.1",
        "id": new_id("sighting"),
        "created": T0,
        "modified": T0,
        "sighting_of_ref": of_ref,
        "observed_data_refs": observed,
        **extra,
    }


# --- store helpers ---------------------------------------------------------------------------


def submit(store: Store, config: Config, objects: list[Any], partner: str = PARTNER) -> SubmissionResult:
    return Submissions(config, store).submit(
        partner=partner, objects=objects, inbox_collection=inbox_collection_id(partner)
    )


def collection(store: Store, collection_id: str) -> dict[str, Json]:
    members = CollectionView(store).page(
        collection_id, after=None, limit=100_000, versions=VersionFilter(all=True)
    )
    out: dict[str, Json] = {}
    for m in members:
        out.setdefault(m.stix_id, json.loads(m.body))
    return out


def delivered(store: Store) -> dict[str, set[str]]:
    """Recipient -> the STIX ids in its collection."""
    return {rid: set(collection(store, recipient_collection_id(rid))) for rid in RECIPIENTS}


def receivers_of(store: Store, stix_id: str) -> set[str]:
    return {rid for rid, ids in delivered(store).items() if stix_id in ids}


def stored_bodies(store: Store, stix_id: str) -> list[Json]:
    """Every version of the object the store holds, rendered from the record or stored."""
    found = [o for o in all_objects(store) if o["id"] == stix_id]
    return sorted(found, key=lambda o: o.get("modified", ""))


def count_stored(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.stix_objects)).scalar_one())


def validator_errors(obj: Json) -> list[str]:
    result = validate_instance(obj, ValidationOptions(version="2.1"))
    assert not result.is_valid
    return [str(e) for e in result.errors]


# --- brute-force entitlement from the configuration -----------------------------------------


def _chain(config: Config, owner: str) -> set[str]:
    out = {owner}
    current = config.recipient(owner)
    while current.parent is not None and current.deliver_to_parent:
        current = config.recipient(current.parent)
        out.add(current.id)
    return out


def entitled(config: Config, kind: str, value: str) -> set[str]:
    """Recipients that may see an observable: its most specific owner and the parents that
    owner delivers to. Linear scan over the configuration, no radix tree."""
    if kind == "url":
        host = urlsplit(value).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            kind, value = "domain-name", host
        else:
            kind, value = "ipv4-addr", host
    if kind in ("ipv4-addr", "ipv6-addr"):
        # An address, or a network (CIDR): a claim must hold all of it.
        network = ipaddress.ip_network(value, strict=True)
        claims = [
            (net.prefixlen, r.id)
            for r in config.recipients
            for net in r.constituency.networks
            if net.version == network.version and network.subnet_of(net)  # type: ignore[arg-type]
        ]
    else:
        host = (value.rpartition("@")[2] if kind == "email-addr" else value).lower().rstrip(".")
        claims = [
            (len(d), r.id)
            for r in config.recipients
            for d in r.constituency.domains
            if host == d or host.endswith("." + d)
        ]
    if not claims:
        return set()
    return _chain(config, max(claims)[1])


def assert_no_foreign_observables(store: Store, config: Config) -> None:
    """No recipient's collection holds an address, domain, URL or e-mail address of which it is
    not entitled to know: the whole point of a clearinghouse with separate constituencies."""
    for rid in RECIPIENTS:
        for obj in collection(store, recipient_collection_id(rid)).values():
            if obj["type"] in ("ipv4-addr", "ipv6-addr", "domain-name", "url", "email-addr"):
                allowed = entitled(config, obj["type"], obj["value"])
                assert rid in allowed, f"{rid} received {obj['type']} {obj['value']} (entitled: {allowed})"


def test_the_example_constituencies_are_what_these_tests_assume(sample_config: Config) -> None:
    assert entitled(sample_config, "ipv4-addr", "198.51.100.33") == {"gemeente-voorbeeld"}
    assert entitled(sample_config, "ipv4-addr", "198.51.100.30") == {"ibd"}
    assert entitled(sample_config, "ipv4-addr", "192.0.2.17") == {"ziekenhuis-noord", "zcert"}
    assert entitled(sample_config, "ipv4-addr", "192.0.2.10") == {"zcert"}
    assert entitled(sample_config, "ipv4-addr", "203.0.113.9") == set()
    assert entitled(sample_config, "url", "https://www.example.nl/x") == {"ibd"}
    assert entitled(sample_config, "email-addr", "a@example.org") == {"zcert"}
    assert {r.max_tlp for r in sample_config.recipients} == {"amber"}
    assert sample_config.partner(PARTNER).default_tlp == "amber"


# ==============================================================================================
# Validation, per object
# ==============================================================================================


def test_invalid_objects_are_rejected_with_the_validators_message_valid_ones_kept(
    store: Store, sample_config: Config
) -> None:
    good = indicator("198.51.100.33")
    good_sco = ipv4("203.0.113.9")
    bad_id = dict(indicator("198.51.100.34"), id="indicator--not-a-uuid")
    no_pattern = {k: v for k, v in indicator("198.51.100.35").items() if k != "pattern"}
    bad_time = dict(indicator("198.51.100.36"), created="2024-01-01")
    bad_pattern = dict(indicator("198.51.100.37"), pattern="[ipv4-addr:value = '198.51.100.37'")
    no_id = {"type": "indicator", "spec_version": "2.1", "pattern": "[ipv4-addr:value = '1.2.3.4']"}
    same_version = dict(good, name="a different body, the same id and modified")
    objects: list[Any] = [
        good,  # 0
        bad_id,  # 1
        42,  # 2
        no_pattern,  # 3
        no_id,  # 4
        "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",  # 5
        bad_time,  # 6
        good,  # 7 duplicate
        bad_pattern,  # 8
        same_version,  # 9 same version again
        good_sco,  # 10
        good_sco,  # 11 duplicate SCO
        None,  # 12
        [good],  # 13
    ]
    result = submit(store, sample_config, objects)

    assert [o.index for o in result.outcomes] == list(range(len(objects)))
    assert {o.index for o in result.accepted} == {0, 10}
    assert [(o.id, o.version) for o in result.accepted] == [(good["id"], T0), (good_sco["id"], "")]
    messages = {o.index: o.message or "" for o in result.outcomes}
    for index, obj in ((1, bad_id), (3, no_pattern), (6, bad_time), (8, bad_pattern)):
        for error in validator_errors(obj):
            assert error in messages[index], (index, error, messages[index])
        assert result.outcomes[index].id == obj["id"]
    assert "required property" in messages[3] and "pattern" in messages[3]
    for index in (2, 4, 5, 12, 13):
        assert "not a STIX object" in messages[index], messages[index]
        assert result.outcomes[index].id is None
    for index in (7, 9, 11):
        assert "twice" in messages[index], messages[index]

    # The valid objects are stored and routed, the first occurrence's body wins.
    assert stored_bodies(store, good["id"]) == [good]
    assert stored_bodies(store, good_sco["id"]) == [good_sco]
    assert count_stored(store) == 2
    inbox = collection(store, inbox_collection_id(PARTNER))
    assert set(inbox) == {good["id"], good_sco["id"]}
    assert receivers_of(store, good["id"]) == {"gemeente-voorbeeld"}
    for obj in (bad_id, no_pattern, bad_time, bad_pattern):
        assert stored_bodies(store, obj["id"]) == []


def test_a_bundle_inside_a_submission_is_rejected(store: Store, sample_config: Config) -> None:
    inner = indicator("198.51.100.33")
    bundle = serialized(stix2.Bundle(objects=[stix2.parse(inner)]))
    result = submit(store, sample_config, [bundle, inner])
    assert [o.ok for o in result.outcomes] == [False, True]
    assert "bundle" in (result.outcomes[0].message or "")
    assert stored_bodies(store, bundle["id"]) == []


@pytest.mark.parametrize(
    "item",
    [
        {"type": 5, "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"},
        {"type": ["indicator"], "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"},
        {"type": "indicator", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "created": 5},
    ],
    ids=["type-int", "type-list", "created-int"],
)
def test_type_confused_objects_are_rejected_not_raised(
    store: Store, sample_config: Config, item: Json
) -> None:
    """Outside input with the wrong JSON types is one rejected object, not an exception that
    loses the whole submission (and is a 500 on the TAXII inbox)."""
    good = indicator("198.51.100.33")
    result = submit(store, sample_config, [item, good])
    assert [o.ok for o in result.outcomes] == [False, True]
    assert receivers_of(store, good["id"]) == {"gemeente-voorbeeld"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spec_version": "2.0"}, "only STIX 2.1 objects"),
        (
            {"type": "x-" + "a" * 70, "id": "x-" + "a" * 70 + "--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"},
            "too long",
        ),
        (
            {"type": "x-" + "a" * 100, "id": "x-" + "a" * 100 + "--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"},
            "too long",
        ),
    ],
    ids=["spec-version-2.0", "type-over-64", "id-over-128"],
)
def test_objects_the_store_or_stix2_cannot_take_are_rejected(
    store: Store, sample_config: Config, changes: Json, message: str
) -> None:
    """A `spec_version: "2.0"` SDO passed the 2.1 validator and was served though stix2.parse
    refuses it; a custom type or id longer than the store's columns passed too and PostgreSQL
    then refused the insert, losing the whole submission."""
    item = {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid4()}",
        "created": "2024-09-01T00:00:00.000Z",
        "modified": "2024-09-01T00:00:00.000Z",
        "name": "x",
        "identity_class": "individual",
    } | changes
    good = indicator("198.51.100.33")
    result = submit(store, sample_config, [item, good])
    assert [o.ok for o in result.outcomes] == [False, True]
    assert message in (result.outcomes[0].message or "")
    assert receivers_of(store, good["id"]) == {"gemeente-voorbeeld"}


# ==============================================================================================
# Routing by observables
# ==============================================================================================


def test_indicator_pattern_routes_to_the_municipality_not_its_link_organisation(
    store: Store, sample_config: Config
) -> None:
    ind = indicator("198.51.100.33")
    result = submit(store, sample_config, [ind])
    assert [o.ok for o in result.outcomes] == [True]
    assert receivers_of(store, ind["id"]) == {"gemeente-voorbeeld"}  # ibd: deliver_to_parent false
    assert dict(result.per_recipient) == {"gemeente-voorbeeld": 1}
    assert (result.routed, result.unrouted) == (1, 0)
    assert collection(store, recipient_collection_id("gemeente-voorbeeld"))[ind["id"]] == ind
    assert_no_foreign_observables(store, sample_config)


def test_observed_data_goes_to_the_hospital_and_its_cert_with_the_sco(
    store: Store, sample_config: Config
) -> None:
    sco = ipv4("192.0.2.17")
    od = observed_data([sco["id"]])
    result = submit(store, sample_config, [od, sco])
    assert all(o.ok for o in result.outcomes)
    got = delivered(store)
    assert got["ziekenhuis-noord"] == got["zcert"] == {od["id"], sco["id"]}
    assert got["ibd"] == got["gemeente-voorbeeld"] == set()
    assert collection(store, recipient_collection_id("zcert"))[sco["id"]] == sco
    assert_no_foreign_observables(store, sample_config)


def test_a_sighting_delivers_its_whole_closure(store: Store, sample_config: Config) -> None:
    author = identity("Researcher One")
    vuln = vulnerability("CVE-2024-4577")
    sco = ipv4("192.0.2.18")
    od = observed_data([sco["id"]], created_by_ref=author["id"])
    sight = sighting(
        vuln["id"],
        [od["id"]],
        created_by_ref=author["id"],
        where_sighted_refs=[author["id"]],
        object_marking_refs=[TLP2["amber"]],
    )
    unrelated = identity("Not referenced by anything routed")
    result = submit(store, sample_config, [sight, unrelated, od, vuln, sco, author])
    assert all(o.ok for o in result.outcomes)
    closure = {sight["id"], od["id"], vuln["id"], sco["id"], author["id"], TLP2["amber"]}
    got = delivered(store)
    assert got["ziekenhuis-noord"] == closure
    assert got["zcert"] == closure
    assert got["ibd"] == got["gemeente-voorbeeld"] == set()
    noord = collection(store, recipient_collection_id("ziekenhuis-noord"))
    assert noord[TLP2["amber"]] == official_tlp2("amber")  # official, though not submitted
    dangling = {r for o in noord.values() for r in _refs(o) if r not in noord}
    assert not dangling
    # Stored and in the inbox even where not delivered.
    assert unrelated["id"] in collection(store, inbox_collection_id(PARTNER))
    assert result.unrouted == 1
    assert_no_foreign_observables(store, sample_config)


def _refs(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith("_ref") and isinstance(value, str):
                yield value
            elif key.endswith("_refs") and isinstance(value, list):
                yield from value
            elif isinstance(value, dict | list):
                yield from _refs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _refs(item)


def test_url_and_email_route_by_host_and_domain(store: Store, sample_config: Config) -> None:
    url = serialized(stix2.URL(value="https://www.example.nl/x"))
    mail = serialized(stix2.EmailAddress(value="a@example.org"))
    sub_domain = serialized(stix2.DomainName(value="mail.example.org"))
    ip_url = serialized(stix2.URL(value="https://198.51.100.34:8443/login"))
    result = submit(store, sample_config, [url, mail, sub_domain, ip_url])
    assert all(o.ok for o in result.outcomes)
    assert receivers_of(store, url["id"]) == {"ibd"}
    assert receivers_of(store, mail["id"]) == {"zcert"}
    assert receivers_of(store, sub_domain["id"]) == {"zcert"}
    assert receivers_of(store, ip_url["id"]) == {"gemeente-voorbeeld"}
    assert_no_foreign_observables(store, sample_config)


def test_an_object_about_two_recipients_is_accepted_and_delivered_nowhere(
    store: Store, sample_config: Config
) -> None:
    """Accepted, as every valid object is, so that the answer tells the submitter nothing about
    who owns the addresses (issue #14, item 14); kept in the inbox, delivered to nobody."""
    a, b = ipv4("192.0.2.10"), ipv4("198.51.100.30")
    od = observed_data([a["id"], b["id"]])
    ind = indicator(
        "192.0.2.10", pattern="[ipv4-addr:value = '192.0.2.10' OR ipv4-addr:value = '198.51.100.30']"
    )
    result = submit(store, sample_config, [od, a, b, ind])
    assert all(o.ok for o in result.outcomes)
    for withheld in (od, ind):
        assert receivers_of(store, withheld["id"]) == set()
        assert stored_bodies(store, withheld["id"]) == [withheld]
        assert withheld["id"] in collection(store, inbox_collection_id(PARTNER))
    assert result.withheld == 2
    assert {why for _, _, why in result.withheld_objects} == {
        "its observables belong to more than one recipient"
    }
    # Each address on its own is fine and goes to its owner.
    assert receivers_of(store, a["id"]) == {"zcert"}
    assert receivers_of(store, b["id"]) == {"ibd"}
    assert_no_foreign_observables(store, sample_config)


def test_an_unclaimed_address_is_stored_but_unrouted(store: Store, sample_config: Config) -> None:
    sco = ipv4("203.0.113.9")
    od = observed_data([sco["id"]])
    result = submit(store, sample_config, [od, sco])
    assert all(o.ok for o in result.outcomes)
    assert (result.routed, result.unrouted) == (0, 2)
    assert not result.per_recipient
    assert set(collection(store, inbox_collection_id(PARTNER))) == {od["id"], sco["id"]}
    assert stored_bodies(store, od["id"]) == [od]
    assert all(not ids for ids in delivered(store).values())


def test_a_network_goes_to_the_claim_that_holds_all_of_it(store: Store, sample_config: Config) -> None:
    # 192.0.2.16/29 lies inside Ziekenhuis Noord's 192.0.2.16/28; 192.0.2.0/24 is wider than
    # every claim (Z-CERT holds only its first half): routing it by its first address would
    # tell Z-CERT about addresses that are not its own.
    inside, wider = ipv4("192.0.2.16/29"), ipv4("192.0.2.0/24")
    assert entitled(sample_config, "ipv4-addr", "192.0.2.16/29") == entitled(
        sample_config, "ipv4-addr", "192.0.2.17"
    )
    assert entitled(sample_config, "ipv4-addr", "192.0.2.0/24") == set()
    result = submit(store, sample_config, [inside, wider])
    assert all(o.ok for o in result.outcomes)
    assert receivers_of(store, inside["id"]) == entitled(sample_config, "ipv4-addr", "192.0.2.16/29")
    assert receivers_of(store, wider["id"]) == set()
    assert (result.routed, result.unrouted) == (1, 1)
    assert_no_foreign_observables(store, sample_config)


def _domain_resolving_elsewhere() -> tuple[list[Json], str]:
    # www.example.nl (IBD's domain) resolves to 192.0.2.18 (Ziekenhuis Noord's address).
    foreign = ipv4("192.0.2.18")
    domain = serialized(stix2.DomainName(value="www.example.nl", resolves_to_refs=[foreign["id"]]))
    return [domain, foreign], foreign["id"]


def _mail_from_elsewhere() -> tuple[list[Json], str]:
    # An observation of the municipality's host that carries an e-mail from example.org (Z-CERT).
    sender = serialized(stix2.EmailAddress(value="a@example.org"))
    message = {
        "type": "email-message",
        "spec_version": "2.1",
        "id": new_id("email-message"),
        "is_multipart": False,
        "from_ref": sender["id"],
        "subject": "hello",
    }
    host = ipv4("198.51.100.33")
    od = observed_data([host["id"], message["id"]])
    return [od, host, message, sender], sender["id"]


@pytest.mark.parametrize("shape", [_domain_resolving_elsewhere, _mail_from_elsewhere])
def test_a_closure_never_carries_another_recipients_observable(
    store: Store, sample_config: Config, shape: Any
) -> None:
    """Routing looks at some references (object_refs, src_ref, ...); delivery ships every
    reference. An observable reached only through the others must not travel with the object
    to a recipient that may not see it: refuse the object, or leave the observable out."""
    objects, foreign_id = shape()
    submit(store, sample_config, objects)
    assert_no_foreign_observables(store, sample_config)
    assert all(
        foreign_id not in ids for rid, ids in delivered(store).items() if rid in {"ibd", "gemeente-voorbeeld"}
    )


# ==============================================================================================
# TLP
# ==============================================================================================


def _config_with(
    sample_config: Config, *, zcert_max: str | None = None, default_tlp: str | None = None
) -> Config:
    recipients = [
        r.model_copy(update={"max_tlp": zcert_max}) if r.id == "zcert" and zcert_max else r
        for r in sample_config.recipients
    ]
    partners = [
        p.model_copy(update={"default_tlp": default_tlp}) if p.id == PARTNER and default_tlp else p
        for p in sample_config.partners
    ]
    return sample_config.model_copy(update={"recipients": recipients, "partners": partners})


def test_tlp_red_is_suppressed_for_amber_recipients(store: Store, sample_config: Config) -> None:
    red = indicator("192.0.2.17", object_marking_refs=[TLP2["red"]])
    strict = indicator("192.0.2.20", object_marking_refs=[TLP2["amber+strict"]])
    amber = indicator("192.0.2.21", object_marking_refs=[TLP2["amber"]])
    result = submit(store, sample_config, [red, strict, amber])
    assert all(o.ok for o in result.outcomes)
    assert receivers_of(store, red["id"]) == set()
    assert receivers_of(store, strict["id"]) == set()
    assert receivers_of(store, amber["id"]) == {"ziekenhuis-noord", "zcert"}
    assert dict(result.suppressed_tlp) == {"ziekenhuis-noord": 2, "zcert": 2}
    assert result.routed == 1
    assert {red["id"], strict["id"], amber["id"]} <= set(collection(store, inbox_collection_id(PARTNER)))
    assert all(TLP2["red"] not in ids for ids in delivered(store).values())


def test_a_granular_tlp_red_marking_is_not_delivered_to_amber_recipients(
    store: Store, sample_config: Config
) -> None:
    """STIX 2.1 section 7.2.3: a granular marking marks the selected properties. A pattern
    marked TLP:RED must not reach a recipient whose ceiling is amber."""
    ind = indicator("192.0.2.17", granular_markings=[{"marking_ref": TLP2["red"], "selectors": ["pattern"]}])
    result = submit(store, sample_config, [ind])
    assert all(o.ok for o in result.outcomes)
    assert receivers_of(store, ind["id"]) == set()


def test_tlp_1_0_markings_map_to_their_2_0_levels(store: Store, sample_config: Config) -> None:
    config = _config_with(sample_config, zcert_max="green")  # Z-CERT: green; the hospital: amber
    cases = {
        "tlp1-white": (stix2.TLP_WHITE.id, {"zcert", "ziekenhuis-noord"}),
        "tlp1-green": (stix2.TLP_GREEN.id, {"zcert", "ziekenhuis-noord"}),
        "tlp1-amber": (stix2.TLP_AMBER.id, {"ziekenhuis-noord"}),
        "tlp1-red": (stix2.TLP_RED.id, set()),
        "tlp2-green": (TLP2["green"], {"zcert", "ziekenhuis-noord"}),
    }
    objects = {name: indicator("192.0.2.17", object_marking_refs=[mid]) for name, (mid, _) in cases.items()}
    result = submit(store, config, list(objects.values()))
    assert all(o.ok for o in result.outcomes)
    for name, (_, want) in cases.items():
        assert receivers_of(store, objects[name]["id"]) == want, name
    noord = collection(store, recipient_collection_id("ziekenhuis-noord"))
    assert noord[stix2.TLP_GREEN.id] == serialized(stix2.TLP_GREEN)  # as stix2 ships it
    assert noord[stix2.TLP_AMBER.id] == serialized(stix2.TLP_AMBER)
    assert stix2.TLP_RED.id not in noord
    assert dict(result.suppressed_tlp) == {"zcert": 2, "ziekenhuis-noord": 1}


def test_a_recipient_receives_the_marking_definitions_of_what_it_receives(
    store: Store, sample_config: Config
) -> None:
    """A TLP marking definition is not itself confidential: a recipient whose ceiling is below
    the partner's default TLP must still get the definitions its objects reference."""
    config = _config_with(sample_config, zcert_max="green")
    green1 = indicator("192.0.2.10", object_marking_refs=[stix2.TLP_GREEN.id])
    green2 = indicator("192.0.2.11", object_marking_refs=[TLP2["green"]])
    submit(store, config, [green1, green2])
    zcert = collection(store, recipient_collection_id("zcert"))
    assert {green1["id"], green2["id"]} <= set(zcert)
    dangling = {r for o in zcert.values() for r in _refs(o) if r not in zcert}
    assert not dangling, f"zcert receives objects whose markings it does not receive: {dangling}"


@pytest.mark.parametrize(
    ("default_tlp", "zcert_max", "want"),
    [
        ("amber", "amber", {"zcert"}),
        ("amber", "green", set()),
        ("green", "green", {"zcert"}),
        ("red", "amber", set()),
    ],
)
def test_unmarked_objects_take_the_partners_default_tlp(
    store: Store, sample_config: Config, default_tlp: str, zcert_max: str, want: set[str]
) -> None:
    config = _config_with(sample_config, zcert_max=zcert_max, default_tlp=default_tlp)
    ind = indicator("192.0.2.10")
    result = submit(store, config, [ind])
    assert result.outcomes[0].ok
    assert receivers_of(store, ind["id"]) == want
    assert dict(result.suppressed_tlp) == ({} if want else {"zcert": 1})


@pytest.mark.parametrize(
    "alteration",
    [
        {"name": "TLP:CLEAR"},
        {"extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": "clear"}}},
        {"created": "2023-06-01T00:00:00.000Z"},
    ],
    ids=["name", "extension", "created"],
)
def test_an_altered_official_marking_is_replaced_by_the_official_one(
    store: Store, sample_config: Config, alteration: Json
) -> None:
    fake = {**official_tlp2("amber"), **alteration}
    ind = indicator("192.0.2.10", object_marking_refs=[TLP2["amber"]])
    result = submit(store, sample_config, [fake, ind])
    assert result.outcomes[1].ok  # accepting or refusing the look-alike itself are both fine
    assert stored_bodies(store, TLP2["amber"]) == [official_tlp2("amber")]
    assert collection(store, recipient_collection_id("zcert"))[TLP2["amber"]] == official_tlp2("amber")
    assert collection(store, inbox_collection_id(PARTNER))[TLP2["amber"]] == official_tlp2("amber")


# ==============================================================================================
# Ownership of ids
# ==============================================================================================


def _two_partner_config(sample_config: Config) -> Config:
    raw = sample_config.model_dump(mode="json")
    raw["partners"].append(
        {"id": "researcher-2", "name": "Researcher 2", "default_tlp": "amber", "formats": ["stix"]}
    )
    return parse_config(raw)


def test_another_partner_cannot_publish_a_version_of_a_partners_object(
    store: Store, sample_config: Config
) -> None:
    config = _two_partner_config(sample_config)
    store.sync_collections(collection_rows(config))
    x = identity("Object X of researcher-1")
    assert submit(store, config, [x]).outcomes[0].ok

    newer = dict(x, modified=T1, name="researcher-2 rewrites X")
    for attempt in (newer, x):  # neither a newer version nor the same one
        outcome = submit(store, config, [attempt], partner="researcher-2").outcomes[0]
        assert not outcome.ok
        assert "cannot be accepted from this source" in (outcome.message or ""), outcome.message
    assert stored_bodies(store, x["id"]) == [x]
    assert x["id"] not in collection(store, inbox_collection_id("researcher-2"))

    # The owner may publish a newer version; researcher-2 may publish its own objects.
    own_newer = dict(x, modified=T1, name="X, revised by its author")
    assert submit(store, config, [own_newer]).outcomes[0].ok
    assert stored_bodies(store, x["id"]) == [x, own_newer]
    y = identity("Object Y of researcher-2")
    assert submit(store, config, [y], partner="researcher-2").outcomes[0].ok


def test_a_clearinghouse_object_cannot_be_replaced_but_equal_scos_are_accepted(
    store: Store, sample_config: Config, ingestor: Ingestor
) -> None:
    assert ingestor.run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    objects = all_objects(store)
    original = next(o for o in objects if o["type"] == "sighting")
    address = next(o for o in objects if o["type"] == "ipv4-addr")
    before = stored_bodies(store, original["id"])
    later = dict(original, modified="2099-01-01T00:00:00.000Z", count=999)
    sco = ipv4(address["value"])
    assert sco["id"] == address["id"]  # content-addressed: the same value gives the same id

    result = submit(store, sample_config, [later, sco])
    assert not result.outcomes[0].ok
    assert "cannot be accepted from this source" in (result.outcomes[0].message or "")
    assert result.outcomes[1].ok, result.outcomes[1].message
    assert stored_bodies(store, original["id"]) == before
    assert stored_bodies(store, sco["id"]) == [address]


def test_a_located_id_is_refused_alike_whether_its_notification_exists_or_not(
    store: Store, sample_config: Config, ingestor: Ingestor
) -> None:
    """Located ids (connector/stix/ids.py) are worked out from a notification's natural key,
    which an outsider can guess: a submitter must neither take the id a future notification will
    get nor learn from the answer whether a notification exists. A random UUIDv4 is accepted."""
    assert ingestor.run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    sighting = next(o for o in all_objects(store) if o["type"] == "sighting")
    subject = located_subject(sighting["id"])
    assert subject is not None
    existing = dict(sighting, modified="2099-01-01T00:00:00.000Z", count=999)
    future = dict(existing, id=located_id("sighting", subject, "divd", "x", "y", "z", "2099-01-01"))
    unknown = dict(existing, id=located_id("sighting", subject + 1, "divd", "x", "y", "z", "2099-01-01"))
    messages = []
    for obj in (existing, future, unknown):
        outcome = submit(store, sample_config, [obj]).outcomes[0]
        assert not outcome.ok
        messages.append((outcome.message or "").replace(obj["id"], "ID"))
    assert len(set(messages)) == 1 and "cannot be accepted from this source" in messages[0], messages
    assert stored_bodies(store, future["id"]) == [] and stored_bodies(store, unknown["id"]) == []
    mine = indicator("192.0.2.10")  # a random UUIDv4 of its own
    assert located_subject(mine["id"]) is None and submit(store, sample_config, [mine]).outcomes[0].ok


def test_an_sco_id_that_does_not_match_its_value_is_refused(store: Store, sample_config: Config) -> None:
    """SCO ids are UUIDv5 of their contents (STIX 2.1 section 2.9), which is why an existing SCO id
    is accepted from anyone. The id must then really match the value: here the id of Ziekenhuis
    Noord's 192.0.2.17 with the municipality's 198.51.100.33 as value."""
    real = ipv4("192.0.2.17")
    assert submit(store, sample_config, [real]).outcomes[0].ok
    forged = dict(real, value="198.51.100.33")
    result = submit(store, sample_config, [forged])
    assert_no_foreign_observables(store, sample_config)
    assert receivers_of(store, real["id"]) == {"ziekenhuis-noord", "zcert"}
    assert not result.outcomes[0].ok


# ==============================================================================================
# The STIX file ingest path
# ==============================================================================================


def test_stix_file_ingest_records_counts_and_quarantined_rows(
    store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    routed = indicator("198.51.100.33")
    unrouted = ipv4("203.0.113.9")
    invalid = dict(indicator("198.51.100.34"), id="indicator--nope")
    bundle = {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid4()}",
        "objects": [routed, invalid, 7, unrouted],
    }
    path = tmp_path / "submission.json"
    path.write_bytes(orjson.dumps(bundle))

    summary = ingestor.run(PARTNER, "stix", [path])
    assert summary.ok
    counts = summary.as_dict()
    assert {k: counts[k] for k in ("read", "new", "quarantined", "routed", "unrouted")} == {
        "read": 4,
        "new": 2,
        "quarantined": 2,
        "routed": 1,
        "unrouted": 1,
    }
    assert counts["per_recipient"] == {"gemeente-voorbeeld": 1}
    run = store.run(summary.run_id)
    assert run is not None and run["status"] == "done"
    assert run["counts"]["quarantined"] == 2
    rows = store.run_rows(summary.run_id)
    assert [(r["kind"], r["input"], r["line"]) for r in rows] == [
        ("quarantined", path.name, 2),
        ("quarantined", path.name, 3),
    ]
    assert "indicator--nope" in rows[0]["reason"]
    for error in validator_errors(invalid):
        assert error in rows[0]["reason"]
    assert "not a STIX object" in rows[1]["reason"]
    assert receivers_of(store, routed["id"]) == {"gemeente-voorbeeld"}
    assert set(collection(store, inbox_collection_id(PARTNER))) == {routed["id"], unrouted["id"]}


def test_a_stix_file_goes_through_the_same_versioning_and_counting_as_any_feed(
    store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    """Ingested again, a bundle's objects are unchanged, not new again, and routed nowhere anew;
    a later version of one of them is an update."""
    routed, unrouted = indicator("198.51.100.33"), ipv4("203.0.113.9")
    path = tmp_path / "submission.json"
    path.write_bytes(
        orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [routed, unrouted]})
    )
    first = ingestor.run(PARTNER, "stix", [path]).counts
    assert (first["new"], first["updated"], first["unchanged"], first["routed"], first["unrouted"]) == (
        2,
        0,
        0,
        1,
        1,
    )
    again = ingestor.run(PARTNER, "stix", [path])
    counts = again.counts
    assert (counts["new"], counts["updated"], counts["unchanged"], counts["routed"], counts["unrouted"]) == (
        0,
        0,
        2,
        0,
        0,
    )
    assert again.per_recipient == {}
    later = dict(routed, modified="2024-07-01T00:00:00.000Z")
    path.write_bytes(orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [later]}))
    counts = ingestor.run(PARTNER, "stix", [path]).counts
    assert (counts["new"], counts["updated"], counts["routed"]) == (0, 1, 1)


def test_an_opt_out_covering_a_bundle_is_counted_as_opted_out_not_unrouted(
    tmp_path: Path, sample_config: Config
) -> None:
    raw = sample_config.model_dump(mode="json")
    raw["opt_out"] = {"networks": ["198.51.100.32/29"], "domains": []}
    config = parse_config(raw)
    store = Store.open(f"sqlite:///{tmp_path / 'o.db'}")
    path = tmp_path / "submission.json"
    path.write_bytes(
        orjson.dumps(
            {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [indicator("198.51.100.33")]}
        )
    )
    counts = Ingestor(config, store, load_mappings()).run(PARTNER, "stix", [path]).counts
    assert (counts["opted_out"], counts["unrouted"], counts["routed"]) == (1, 0, 0)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe garbage", b"42", b'{"type": "bundle"}'])
def test_a_stix_file_that_is_not_a_bundle_is_an_input_error(
    store: Store, ingestor: Ingestor, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    summary = ingestor.run(PARTNER, "stix", [path])
    assert not summary.ok
    assert summary.input_errors and str(path) in summary.input_errors[0]
    run = store.run(summary.run_id)
    assert run is not None and run["status"] == "failed" and run["error"]
    rows = store.run_rows(summary.run_id)
    assert [(r["kind"], r["input"]) for r in rows] == [("input-error", path.name)]
    assert count_stored(store) == 0


def test_a_quarantine_reason_names_the_object_once(ingestor: Ingestor, store: Store) -> None:
    """The sample bundle's invalid indicator: the validator's message starts with its id, and
    the reason said it twice ("indicator--5e4d...: indicator--5e4d...: Pattern ...")."""
    summary = ingestor.run(PARTNER, "stix", [REPO / "samples" / "stix" / "researcher-1.bundle.json"])
    reasons = [r["reason"] for r in store.run_rows(summary.run_id) if r["kind"] == "quarantined"]
    assert reasons
    for reason in reasons:
        name = reason.split(":", 1)[0]
        assert reason.count(f"{name}:") == 1, reason


def test_a_broken_bundle_file_says_where_and_quotes_none_of_it(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    """A new operator's review: "premature EOF" with no position made a large bundle impossible
    to mend, and a UTF-16 file's message was the parser's bytes with the text around the fault
    in it (the document may hold anything, secrets included)."""
    good = orjson.dumps(indicator("198.51.100.35"))
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(b'{"type": "bundle", "id": "bundle--1", "objects": [' + good + b", " + good[:40])
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes(('{"type": "bundle", "objects": [{"secret": "s3cret-value"}]}').encode("utf-16"))
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b'{"objects": [' + good + b"]} s3cret-value")
    said = {}
    for path in (truncated, utf16, garbage):
        summary = ingestor.run(PARTNER, "stix", [path])
        assert not summary.ok
        [said[path.name]] = summary.input_errors
    assert "after 1 whole object(s) of the list" in said["truncated.json"]
    assert "not UTF-8 (a UTF-16 file?" in said["utf16.json"]
    assert "trailing garbage" in said["garbage.json"]
    assert not any("s3cret" in message or "\\x" in message for message in said.values()), said
