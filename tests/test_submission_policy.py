"""What a submission may carry and where it goes (issue #14, items 12, 13, 14, 15, 20, 24).

Each test is a way content of one recipient could reach another, personal data could reach a
parent, a submitter could borrow somebody else's name or learn who owns an address, or valid
STIX could be refused or lost. What each recipient may see is worked out here from the
configuration by brute force (tests/test_submission.py: `entitled`), never by the router; every
test ends by checking every collection against it, through every string of every object, not
only the observables' values.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import stix2
from taxii2client.v21 import Collection

from connector.collections import collection_rows, inbox_collection_id, recipient_collection_id
from connector.config import Config, parse_config
from connector.ingest import Ingestor
from connector.stix.build import CLEARINGHOUSE_IDENTITY_ID, partner_identity_id
from connector.store import Store
from tests.conftest import DIVD_SCAN, RunningServer, password_for
from tests.record_view import all_objects
from tests.test_submission import (
    PARTNER,
    T0,
    collection,
    entitled,
    identity,
    indicator,
    ipv4,
    new_id,
    observed_data,
    serialized,
    sighting,
    stored_bodies,
    submit,
    vulnerability,
)
from tests.test_taxii_write import inbox, post, session_for

Json = dict[str, Any]
THIRD_PARTY = Path(__file__).parent / "data" / "stix" / "third-party"
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
IBD_HOST = "198.51.100.66"  # IBD's (198.51.100.0/24, outside the municipality's /29)


def recipients_of(config: Config) -> list[str]:
    return [r.id for r in config.recipients]


def delivered_to(store: Store, config: Config, stix_id: str) -> set[str]:
    return {
        rid for rid in recipients_of(config) if stix_id in collection(store, recipient_collection_id(rid))
    }


# --- every string of every delivered object, checked against the configuration ----------------

_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?(?!\.?\d)")
_HOST = re.compile(r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}(?![\w-])", re.I | re.A)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def assert_no_foreign_text(store: Store, config: Config) -> None:
    """No recipient holds an object any of whose strings names an address or host name that
    belongs to a recipient it is not entitled to see (whatever property it is in)."""
    for rid in recipients_of(config):
        for obj in collection(store, recipient_collection_id(rid)).values():
            for text in _strings(obj):
                for token in _IPV4.findall(text):
                    try:
                        ipaddress.ip_network(token, strict=False)
                    except ValueError:
                        continue
                    allowed = entitled(config, "ipv4-addr", str(ipaddress.ip_network(token, strict=False)))
                    assert not allowed or rid in allowed, f"{rid} holds {token} in {obj['id']}"
                for host in _HOST.findall(text):
                    allowed = entitled(config, "domain-name", host)
                    assert not allowed or rid in allowed, f"{rid} holds {host} in {obj['id']}"


def with_recipients(config: Config, *extra: Json, partners: tuple[Json, ...] = ()) -> Config:
    raw = config.model_dump(mode="json")
    raw["recipients"] += list(extra)
    raw["partners"] += list(partners)
    return parse_config(raw)


CHILD = {
    "id": "child",
    "name": "Child of Z-CERT",
    "kind": "organisation",
    "parent": "zcert",
    "deliver_to_parent": True,
    "constituency": {"domains": ["child.example.org"]},
}
RESEARCHER_2 = {"id": "researcher-2", "name": "Researcher 2", "default_tlp": "amber", "formats": ["stix"]}


@pytest.fixture
def child_config(store: Store, sample_config: Config) -> Config:
    config = with_recipients(sample_config, CHILD, partners=(RESEARCHER_2,))
    store.sync_collections(collection_rows(config))
    return config


def url_sco(value: str) -> Json:
    return serialized(stix2.URL(value=value))


def custom_indicator(pattern: str, **extra: Any) -> Json:
    return indicator("unused", pattern=pattern, **extra)


# ==============================================================================================
# Item 12: personal data in patterns and URLs
# ==============================================================================================


@pytest.mark.parametrize(
    "pattern",
    [
        "[email-addr:value = 'jan@child.example.org']",
        "[email-message:from_ref.value = 'jan@child.example.org']",
        "[user-account:account_login = 'jan' AND domain-name:value = 'child.example.org']",
    ],
    ids=["email-addr", "email-message-from", "user-account"],
)
def test_personal_data_in_a_pattern_goes_to_the_direct_owner_only(
    store: Store, child_config: Config, pattern: str
) -> None:
    """E-mail addresses and accounts are personal data: the direct owner only, never its parent
    (the SCO rule, which patterns bypassed: zcert received these)."""
    ind = custom_indicator(pattern)
    result = submit(store, child_config, [ind])
    assert result.outcomes[0].ok, result.outcomes[0].message
    assert delivered_to(store, child_config, ind["id"]) == {"child"}


def test_a_url_with_user_info_is_masked_and_for_the_direct_owner_only_over_http(
    taxii: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`https://jan:Secret-Pass@192.0.2.18/login` (the hospital's address, whose CERT gets what
    it gets): the hospital only, the password masked as DIVD masks credentials, anywhere in
    the submission; the raw password is nowhere in the store, the status, or the log."""
    secret = "Secret-Pass"
    masked = "Se*******ss"  # 11 characters: the first 2 and the last 2
    url = url_sco(f"https://jan:{secret}@192.0.2.18/login")
    od = observed_data([url["id"]])
    pattern = custom_indicator(
        f"[url:value = 'https://jan:{secret}@192.0.2.18/']",
        description=f"Seen at https://jan:{secret}@192.0.2.18/login, token URL https://tok3n-abcdef1234@192.0.2.18/",
    )
    caplog.set_level(logging.DEBUG)
    resp = post(session_for(PARTNER), inbox(taxii), {"objects": [url, od, pattern]})
    assert resp.status_code == 202 and resp.json()["success_count"] == 3, resp.text[:500]
    assert secret not in resp.text

    config, store = taxii.config, taxii.store
    want_url = f"https://jan:{masked}@192.0.2.18/login"
    masked_id = "url--" + str(
        uuid.uuid5(SCO_NAMESPACE, json.dumps({"value": want_url}, separators=(",", ":")))
    )
    noord = collection(store, recipient_collection_id("ziekenhuis-noord"))
    assert noord[masked_id]["value"] == want_url
    assert noord[od["id"]]["object_refs"] == [masked_id]
    assert noord[pattern["id"]]["pattern"] == f"[url:value = 'https://jan:{masked}@192.0.2.18/']"
    assert "https://to************34@192.0.2.18/" in noord[pattern["id"]]["description"]
    for obj_id in (masked_id, od["id"], pattern["id"]):
        assert delivered_to(store, config, obj_id) == {"ziekenhuis-noord"}, obj_id
    everything = json.dumps(all_objects(store))
    assert secret not in everything and "tok3n-abcdef1234" not in everything
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT body FROM stix_objects").all()
        rows += conn.exec_driver_sql("SELECT body FROM statuses").all()
    assert not any(secret in r[0] for r in rows)
    assert secret not in caplog.text


def test_user_info_is_masked_in_refusals_too(
    store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    """A validator message quotes the value it refuses; refusals are stored (status resource,
    run rows), so the password in it is masked as well."""
    bad = dict(indicator(KNOWN), labels="https://jan:Secret-Pass@192.0.2.18/")  # labels must be a list
    result = submit(store, sample_config, [bad])
    message = result.outcomes[0].message or ""
    assert "labels" in message and "Secret-Pass" not in message and "Se*******ss" in message
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [bad]}))
    summary = ingestor.run(PARTNER, "stix", [path])
    assert all("Secret-Pass" not in r["reason"] for r in store.run_rows(summary.run_id))


# ==============================================================================================
# Item 13: nobody writes in another's name
# ==============================================================================================


def test_an_object_naming_the_meldpunt_or_another_partner_as_its_source_is_refused(
    store: Store, child_config: Config
) -> None:
    config = child_config
    others = identity("Researcher 2 itself")
    assert submit(store, config, [others], partner="researcher-2").outcomes[0].ok
    mine_before = identity("Researcher 1 itself")
    assert submit(store, config, [mine_before]).outcomes[0].ok

    forged = [
        indicator("198.51.100.33", created_by_ref=CLEARINGHOUSE_IDENTITY_ID),
        indicator("198.51.100.33", created_by_ref=partner_identity_id("divd")),
        indicator("198.51.100.33", created_by_ref=others["id"]),
        sighting(
            vulnerability("CVE-2024-4577")["id"],
            [observed_data([ipv4("198.51.100.33")["id"]])["id"]],
            where_sighted_refs=[partner_identity_id("divd")],
        ),
    ]
    in_submission = identity("Researcher 1, another name")
    fine = [
        indicator("198.51.100.33", created_by_ref=partner_identity_id(PARTNER)),
        indicator("198.51.100.33", created_by_ref=mine_before["id"]),
        indicator("198.51.100.33", created_by_ref=in_submission["id"]),
    ]
    result = submit(store, config, [*forged, *fine, in_submission])
    outcomes = {o.id: o for o in result.outcomes}
    for obj in forged:
        message = outcomes[obj["id"]].message or ""
        assert not outcomes[obj["id"]].ok and "identity" in message, (obj["id"], message)
        assert delivered_to(store, config, obj["id"]) == set()
    messages = {(outcomes[o["id"]].message or "").split(":", 1)[1] for o in forged}
    assert len(messages) == 1  # one reason, whoever's name it was (nothing to probe)
    for obj in fine:
        assert outcomes[obj["id"]].ok, outcomes[obj["id"]].message
        assert delivered_to(store, config, obj["id"]) == {"gemeente-voorbeeld"}


# ==============================================================================================
# Item 14: nothing tells a submitter who owns what
# ==============================================================================================

KNOWN = "198.51.100.33"  # the municipality's
PROBES = {
    "same-owner": "198.51.100.34",
    "other-recipient": "192.0.2.10",
    "the-owners-parent": "198.51.100.30",
    "a-child-of-another": "192.0.2.18",
    "nobody": "203.0.113.9",
}


def _probe_objects(probe: str) -> list[Json]:
    a, b = ipv4(KNOWN), ipv4(probe)
    return [
        a,
        b,
        observed_data([a["id"], b["id"]]),
        custom_indicator(f"[ipv4-addr:value = '{KNOWN}'] OR [ipv4-addr:value = '{probe}']"),
        dict(indicator(KNOWN), description=f"also seen on {probe}"),
    ]


def test_what_a_submitter_is_told_does_not_depend_on_who_owns_the_addresses(taxii: RunningServer) -> None:
    """Pairing a known address with a probe revealed whether the probe was claimed and by whom
    ("belong to different recipients"). Every probe now gets the same answer, object by object."""
    answers = {}
    for name, probe in PROBES.items():
        resp = post(session_for(PARTNER), inbox(taxii), {"objects": _probe_objects(probe)})
        assert resp.status_code == 202, resp.text[:300]
        status = resp.json()
        answers[name] = (
            status["success_count"],
            status["failure_count"],
            [(f["message"].split(":", 1)[-1]) for f in status.get("failures", [])],
        )
    assert len(set(map(json.dumps, answers.values()))) == 1, answers
    assert answers["nobody"][:2] == (5, 0)


def test_an_object_about_two_owners_is_delivered_to_neither(store: Store, sample_config: Config) -> None:
    objects = _probe_objects(PROBES["other-recipient"])
    result = submit(store, sample_config, objects)
    assert all(o.ok for o in result.outcomes)
    a, b, od, pattern, described = objects
    assert delivered_to(store, sample_config, a["id"]) == {"gemeente-voorbeeld"}
    assert delivered_to(store, sample_config, b["id"]) == {"zcert"}
    for obj in (od, pattern, described):
        assert delivered_to(store, sample_config, obj["id"]) == set(), obj["type"]
        assert obj["id"] in collection(store, inbox_collection_id(PARTNER))  # kept, for operators
    assert_no_foreign_text(store, sample_config)


def test_a_stix_file_counts_and_lists_what_it_withholds_for_the_operator(
    store: Store, sample_config: Config, ingestor: Ingestor, tmp_path: Path
) -> None:
    """The operator who runs `ingest --format stix` sees what went to nobody and why (never a
    value); the submitter through the inbox sees only that it was accepted."""
    objects = _probe_objects(PROBES["other-recipient"])
    path = tmp_path / "two-owners.json"
    path.write_text(json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}))
    summary = ingestor.run(PARTNER, "stix", [path])
    assert summary.ok
    assert (summary.counts["withheld"], summary.counts["quarantined"], summary.counts["routed"]) == (3, 0, 2)
    rows = store.run_rows(summary.run_id, "withheld")
    assert [r["line"] for r in rows] == [3, 4, 5]
    assert all(KNOWN not in r["reason"] and PROBES["other-recipient"] not in r["reason"] for r in rows)


# ==============================================================================================
# Item 15: every place an address can hide is checked
# ==============================================================================================


def _hex(address: str) -> str:
    return ipaddress.ip_address(address).packed.hex()


def test_hex_and_binary_pattern_literals_are_read_as_the_addresses_they_are(
    store: Store, sample_config: Config
) -> None:
    b64 = base64.b64encode(ipaddress.ip_address(IBD_HOST).packed).decode()
    text_hex = IBD_HOST.encode().hex()
    hidden = [
        custom_indicator(f"[ipv4-addr:value = '192.0.2.10'] OR [ipv4-addr:value = h'{_hex(IBD_HOST)}']"),
        custom_indicator(f"[ipv4-addr:value = '192.0.2.10'] OR [ipv4-addr:value = b'{b64}']"),
        custom_indicator(f"[ipv4-addr:value = '192.0.2.10'] OR [ipv4-addr:value = h'{text_hex}']"),
        custom_indicator(
            f"[ipv4-addr:value = '192.0.2.10'] OR [network-traffic:dst_ref.value = h'{_hex(IBD_HOST)}']"
        ),
    ]
    alone = custom_indicator(f"[ipv4-addr:value = h'{_hex(IBD_HOST)}']")
    result = submit(store, sample_config, [*hidden, alone])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes]
    for obj in hidden:
        assert delivered_to(store, sample_config, obj["id"]) == set(), obj["pattern"]
    assert delivered_to(store, sample_config, alone["id"]) == {"ibd"}


def test_addresses_in_custom_properties_and_free_text_keep_an_object_from_other_recipients(
    store: Store, sample_config: Config
) -> None:
    zcert_ip = ipv4("192.0.2.10")
    cases = [
        observed_data([zcert_ip["id"]], x_also_seen_on=IBD_HOST),
        observed_data([zcert_ip["id"]], x_notes={"hosts": [{"name": "www.example.nl"}]}),
        dict(indicator("192.0.2.10"), description="The same panel runs on https://www.example.nl/admin"),
        dict(
            indicator("192.0.2.10"), external_references=[{"source_name": "x", "url": f"http://{IBD_HOST}/"}]
        ),
    ]
    same_owner = dict(indicator("192.0.2.10"), description="and on 192.0.2.11, www.example.org, 203.0.113.7")
    result = submit(store, sample_config, [zcert_ip, *cases, same_owner])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes]
    for obj in cases:
        assert delivered_to(store, sample_config, obj["id"]) == set(), obj
    assert delivered_to(store, sample_config, same_owner["id"]) == {"zcert"}
    assert_no_foreign_text(store, sample_config)


def test_a_non_stix_pattern_linked_by_a_relationship_carries_no_address_past_routing(
    store: Store, sample_config: Config
) -> None:
    zcert_ip = ipv4("192.0.2.10")
    od = observed_data([zcert_ip["id"]])
    snort = dict(
        indicator("unused"),
        pattern_type="snort",
        pattern=f'alert tcp any any -> {IBD_HOST} 443 (msg:"panel"; sid:1000001;)',
    )
    relation = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": new_id("relationship"),
        "created": T0,
        "modified": T0,
        "relationship_type": "related-to",
        "source_ref": snort["id"],
        "target_ref": od["id"],
    }
    result = submit(store, sample_config, [zcert_ip, od, snort, relation])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes]
    assert delivered_to(store, sample_config, od["id"]) == {"zcert"}
    assert delivered_to(store, sample_config, relation["id"]) == set()
    assert delivered_to(store, sample_config, snort["id"]) == set()
    assert_no_foreign_text(store, sample_config)


def test_observables_embedded_in_observed_data_are_routed_and_checked(
    store: Store, sample_config: Config
) -> None:
    """The deprecated `objects` of observed-data (STIX 2.1 section 4.13) carries SCOs inline."""

    def embedded(*addresses: str) -> Json:
        od = observed_data([])
        del od["object_refs"]
        od["objects"] = {str(i): ipv4(a) for i, a in enumerate(addresses)}  # with ids, as OASIS's example
        return od

    one, two = embedded(KNOWN), embedded(KNOWN, "192.0.2.10")
    result = submit(store, sample_config, [one, two])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes]
    assert delivered_to(store, sample_config, one["id"]) == {"gemeente-voorbeeld"}
    assert delivered_to(store, sample_config, two["id"]) == set()
    assert_no_foreign_text(store, sample_config)


# ==============================================================================================
# Item 20: references to what the same source posted before
# ==============================================================================================


def test_stix2_sink_posting_one_object_per_request_delivers_the_sighting(taxii: RunningServer) -> None:
    """stix2's TAXIICollectionSink.add(list) posts each object in a request of its own: the
    sighting's references arrive in earlier requests and must resolve, from what this source
    itself sent."""
    author = identity("Researcher One")
    sco = ipv4(KNOWN)
    od = observed_data([sco["id"]], created_by_ref=author["id"])
    vuln = vulnerability("CVE-2024-4577")
    sight = sighting(vuln["id"], [od["id"]], created_by_ref=author["id"], where_sighted_refs=[author["id"]])
    with Collection(
        taxii.collection_url(inbox_collection_id(PARTNER)), user=PARTNER, password=password_for(PARTNER)
    ) as inbox_collection:
        sink = stix2.TAXIICollectionSink(inbox_collection)
        sink.add([author, sco, od, vuln, sight])
    with Collection(
        taxii.collection_url(recipient_collection_id("gemeente-voorbeeld")),
        user="gemeente-poller",
        password=password_for("gemeente-poller"),
    ) as polled:
        got = {o["id"] for o in polled.get_objects().get("objects", [])}
    assert {sight["id"], od["id"], sco["id"], vuln["id"], author["id"]} <= got
    assert sight["id"] not in collection(taxii.store, recipient_collection_id("ibd"))


def test_a_sighting_posted_before_its_references_is_delivered_when_posted_again(
    store: Store, sample_config: Config
) -> None:
    sco = ipv4(KNOWN)
    od = observed_data([sco["id"]])
    vuln = vulnerability("CVE-2024-4577")
    sight = sighting(vuln["id"], [od["id"]])
    submit(store, sample_config, [sight])
    assert delivered_to(store, sample_config, sight["id"]) == set()
    submit(store, sample_config, [sco, od, vuln])
    again = submit(store, sample_config, [sight])
    assert again.unchanged == 1
    assert delivered_to(store, sample_config, sight["id"]) == {"gemeente-voorbeeld"}


def test_references_never_resolve_to_another_sources_objects(
    store: Store, child_config: Config, ingestor: Ingestor
) -> None:
    config = child_config
    assert Ingestor(config, store, ingestor.mappings).run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    divd_observed = next(o for o in all_objects(store) if o["type"] == "observed-data")
    theirs = observed_data([ipv4(KNOWN)["id"]])
    assert submit(store, config, [ipv4(KNOWN), theirs], partner="researcher-2").outcomes[1].ok
    vuln = vulnerability("CVE-2024-4577")
    mine = [sighting(vuln["id"], [theirs["id"]]), sighting(vuln["id"], [divd_observed["id"]])]
    result = submit(store, config, [vuln, *mine])
    assert all(o.ok for o in result.outcomes)
    for obj in mine:
        assert delivered_to(store, config, obj["id"]) == set()


# ==============================================================================================
# Item 24: valid STIX the policy refused
# ==============================================================================================


def test_an_sco_with_a_uuid4_id_is_accepted_routed_and_owned_by_its_source(
    store: Store, child_config: Config
) -> None:
    config = child_config
    sco = {"type": "ipv4-addr", "spec_version": "2.1", "id": f"ipv4-addr--{uuid.uuid4()}", "value": KNOWN}
    result = submit(store, config, [sco])
    assert result.outcomes[0].ok, result.outcomes[0].message
    assert delivered_to(store, config, sco["id"]) == {"gemeente-voorbeeld"}
    # Not content-addressed, so not anybody's: another source cannot reuse the id, and its own
    # source cannot give it other content (the stored one would be delivered in its place).
    assert not submit(store, config, [sco], partner="researcher-2").outcomes[0].ok
    moved = dict(sco, value="192.0.2.10")
    outcome = submit(store, config, [moved]).outcomes[0]
    assert not outcome.ok and "other content" in (outcome.message or "")
    assert delivered_to(store, config, sco["id"]) == {"gemeente-voorbeeld"}
    assert stored_bodies(store, sco["id"]) == [sco]


def test_patterns_beyond_value_equality_are_accepted_and_routed_where_they_can_be(
    store: Store, sample_config: Config
) -> None:
    sha = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"
    kept = [
        custom_indicator(f"[file:hashes.'SHA-256' = '{sha}']"),
        custom_indicator(
            "[x509-certificate:serial_number = '36:f7:d4:32:f4:ab:70:ea:d3:ce:98:6e:ea:99:93:49']"
        ),
        custom_indicator("[url:value MATCHES '^https://www\\\\.example\\\\.nl/']"),
        custom_indicator("[domain-name:value LIKE '%.example.nl']"),
        custom_indicator(f"[ipv4-addr:value != '{KNOWN}']"),
    ]
    routed = custom_indicator(
        f"[ipv4-addr:value = '{KNOWN}'] AND [file:hashes.MD5 = '1717b7fff97d37a1e1a0029d83492de1']"
    )
    network = custom_indicator("[ipv4-addr:value ISSUBSET '198.51.100.32/30']")
    result = submit(store, sample_config, [*kept, routed, network])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes]
    inbox_ids = set(collection(store, inbox_collection_id(PARTNER)))
    for obj in kept:
        assert obj["id"] in inbox_ids
        assert delivered_to(store, sample_config, obj["id"]) == set(), obj["pattern"]
    assert delivered_to(store, sample_config, routed["id"]) == {"gemeente-voorbeeld"}
    assert delivered_to(store, sample_config, network["id"]) == {"gemeente-voorbeeld"}


def test_third_party_stix_is_accepted_and_a_sighting_of_it_delivered(
    store: Store, sample_config: Config
) -> None:
    """OASIS's sighting-of-observed-data example and MITRE ATT&CK's T1190 with its identity and
    marking, as published: accepted whole; a researcher's sighting of T1190 on the municipality's
    host then reaches the municipality with the ATT&CK objects it references."""
    oasis = json.loads((THIRD_PARTY / "oasis-sighting-of-observed-data.json").read_text())["objects"]
    attack = json.loads((THIRD_PARTY / "mitre-attack-t1190.json").read_text())["objects"]
    result = submit(store, sample_config, [*oasis, *attack])
    assert all(o.ok for o in result.outcomes), [o.message for o in result.outcomes if not o.ok]
    technique = attack[2]
    host = ipv4(KNOWN)
    od = observed_data([host["id"]])
    sight = sighting(technique["id"], [od["id"]])
    assert all(o.ok for o in submit(store, sample_config, [host, od, sight]).outcomes)
    gemeente = collection(store, recipient_collection_id("gemeente-voorbeeld"))
    assert {sight["id"], od["id"], host["id"], technique["id"], attack[0]["id"], attack[1]["id"]} <= set(
        gemeente
    )
    assert gemeente[technique["id"]] == technique
    assert_no_foreign_text(store, sample_config)
