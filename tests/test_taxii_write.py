"""The TAXII 2.1 write path over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: inbox POST
with status resources, DELETE for operators, bearer API tokens, the audit log and the
OpenAPI document.

Raw `requests` sees each status code and error body exactly as sent; recipients poll what was
posted through `taxii2client.v21`, the client they really use. Media types and marking ids
are spelled out from the specifications rather than imported from the server.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from taxii2client.v21 import Collection

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import ApiToken, Config
from connector.passwords import new_token
from connector.store import Store
from connector.store import schema as t
from tests.conftest import RunningServer, password_for, serving

TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
T0 = "2024-01-01T00:00:00.000Z"
Json = dict[str, Any]

RESEARCHER = "researcher-1"
OPERATOR = "operator-1"
POLLERS = {
    "zcert": "zcert-poller",
    "ziekenhuis-noord": "noord-poller",
    "ibd": "ibd-poller",
    "gemeente-voorbeeld": "gemeente-poller",
}


# --- helpers ----------------------------------------------------------------------------------


def session_for(username: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxy or ~/.netrc may change credentials behind the test's back
    s.headers["Accept"] = TAXII_MEDIA_TYPE
    if username is not None:
        s.auth = (username, password_for(username))
    return s


def bearer_session(token: str) -> requests.Session:
    s = session_for(None)
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def assert_taxii_error(resp: requests.Response, status: int) -> Json:
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:300]}"
    )
    assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("title"), str) and body["title"], body
    assert body.get("http_status") == str(status), body
    assert "objects" not in body and "Traceback" not in resp.text, body
    return body


def post(
    session: requests.Session, url: str, body: Any, content_type: str | None = TAXII_MEDIA_TYPE
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    return session.post(url + "objects/", data=data, headers=headers)


def indicator(address: str, **extra: Any) -> Json:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": T0,
        "modified": T0,
        "name": f"Vulnerable host {address}",
        "pattern": f"[ipv4-addr:value = '{address}']",
        "pattern_type": "stix",
        "valid_from": T0,
        **extra,
    }


def ipv4_sco(value: str) -> Json:
    # The id is the STIX 2.1 UUIDv5 of {"value": ...}, computed by stix2 and checked below.
    import stix2

    return dict(json.loads(stix2.IPv4Address(value=value).serialize()))


def ids_in(session: requests.Session, taxii: RunningServer, collection_id: str) -> set[str]:
    resp = session.get(taxii.collection_url(collection_id) + "objects/", params={"limit": 1000})
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    assert body["more"] is False
    return {o["id"] for o in body.get("objects", [])}


def table_count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def footprint(store: Store) -> tuple[int, int, int, int]:
    """Everything a POST could leave behind."""
    return (
        table_count(store, t.stix_objects),
        table_count(store, t.collection_objects),
        table_count(store, t.statuses),
        table_count(store, t.object_sources),
    )


def inbox(taxii: RunningServer, partner: str = RESEARCHER) -> str:
    return taxii.collection_url(inbox_collection_id(partner))


def recipient(taxii: RunningServer, rid: str) -> str:
    return taxii.collection_url(recipient_collection_id(rid))


# ==============================================================================================
# POST to an inbox
# ==============================================================================================


def test_researcher_posts_to_its_inbox_and_only_the_owner_receives_it(taxii: RunningServer) -> None:
    ind = indicator("198.51.100.33")  # Gemeente Voorbeeld (its IBD has deliver_to_parent false)
    unrouted = ipv4_sco("203.0.113.9")
    bad = dict(indicator("198.51.100.34"), id="indicator--not-a-uuid")
    researcher = session_for(RESEARCHER)

    resp = post(researcher, inbox(taxii), {"objects": [ind, bad, unrouted, 42]})
    assert resp.status_code == 202, resp.text[:500]
    assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE
    status = resp.json()
    uuid.UUID(status["id"])
    assert status["status"] == "complete"
    assert status["request_timestamp"]
    assert (status["total_count"], status["success_count"], status["failure_count"]) == (4, 2, 2)
    assert status["pending_count"] == 0
    assert sorted((s["id"], s["version"]) for s in status["successes"]) == sorted(
        [(ind["id"], T0), (unrouted["id"], "")]
    )
    failures = {f["id"]: f for f in status["failures"]}
    assert set(failures) == {bad["id"], "objects[3]"}
    assert "id format" in failures[bad["id"]]["message"]
    assert "not a STIX object" in failures["objects[3]"]["message"]

    # The status resource: for the poster only; for anybody else it does not exist.
    status_url = f"{taxii.api_root}status/{status['id']}/"
    again = researcher.get(status_url)
    assert again.status_code == 200 and again.json() == status
    for username in [*POLLERS.values(), OPERATOR]:
        assert_taxii_error(session_for(username).get(status_url), 404)
    assert_taxii_error(researcher.get(f"{taxii.api_root}status/{uuid.uuid4()}/"), 404)

    # The owner polls it with taxii2client; nobody else receives it.
    coll_id = recipient_collection_id("gemeente-voorbeeld")
    with Collection(
        taxii.collection_url(coll_id), user="gemeente-poller", password=password_for("gemeente-poller")
    ) as coll:
        polled = coll.get_objects(id=ind["id"])
    assert polled["objects"] == [ind]
    for rid, username in POLLERS.items():
        seen = ids_in(session_for(username), taxii, recipient_collection_id(rid))
        assert (ind["id"] in seen) is (rid == "gemeente-voorbeeld"), rid
        assert unrouted["id"] not in seen and bad["id"] not in seen, rid

    # The researcher may write its inbox but not read it; an operator reads it.
    assert_taxii_error(researcher.get(inbox(taxii) + "objects/"), 403)
    assert ids_in(session_for(OPERATOR), taxii, inbox_collection_id(RESEARCHER)) == {
        ind["id"],
        unrouted["id"],
    }


def test_the_answer_does_not_tell_the_submitter_who_the_recipients_are(taxii: RunningServer) -> None:
    """Partners never learn who the recipients are (DESIGN.md). An object about hosts of two
    recipients is accepted like any other and delivered to neither: a refusal (with or without
    names) would let a researcher pair any address with one it knows and learn whether it is
    claimed, and so which organisation (a hospital, a municipality) is behind it."""
    two = indicator("192.0.2.10")  # Z-CERT
    two["pattern"] = "[ipv4-addr:value = '192.0.2.10'] OR [ipv4-addr:value = '198.51.100.33']"  # + Gemeente
    foreign = ipv4_sco("192.0.2.18")  # Ziekenhuis Noord
    domain = {
        "type": "domain-name",
        "spec_version": "2.1",
        "id": "domain-name--"
        + str(uuid.uuid5(uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7"), '{"value":"www.example.nl"}')),
        "value": "www.example.nl",  # IBD
        "resolves_to_refs": [foreign["id"]],
    }
    resp = post(session_for(RESEARCHER), inbox(taxii), {"objects": [two, domain, foreign]})
    assert resp.status_code == 202, resp.text[:500]
    assert (resp.json()["success_count"], resp.json()["failure_count"]) == (3, 0)
    names = {r.id for r in taxii.config.recipients} | {r.name for r in taxii.config.recipients}
    assert not any(name in resp.text for name in names)
    for rid, username in POLLERS.items():
        seen = ids_in(session_for(username), taxii, recipient_collection_id(rid))
        assert two["id"] not in seen and domain["id"] not in seen, rid
        assert (foreign["id"] in seen) is (rid in ("ziekenhuis-noord", "zcert")), rid


def test_writing_elsewhere_is_404_when_not_visible_and_403_when_read_only(taxii: RunningServer) -> None:
    envelope = {"objects": [indicator("198.51.100.33")]}
    before = footprint(taxii.store)
    researcher = session_for(RESEARCHER)
    assert_taxii_error(post(researcher, inbox(taxii, "divd"), envelope), 404)
    for rid in POLLERS:
        assert_taxii_error(post(researcher, recipient(taxii, rid), envelope), 404)
    for rid, username in POLLERS.items():
        poller = session_for(username)
        # Its own takes feedback only (opinions, notes): anything else is refused object by object.
        own = post(poller, recipient(taxii, rid), envelope)
        assert own.status_code == 202, own.text
        assert own.json()["failure_count"] == 1 and own.json()["success_count"] == 0
        assert "only opinion and note objects" in own.json()["failures"][0]["message"]
        assert_taxii_error(post(poller, inbox(taxii), envelope), 404)
        other = next(r for r in POLLERS if r != rid)
        assert_taxii_error(post(poller, recipient(taxii, other), envelope), 404)
    operator = session_for(OPERATOR)
    for url in (inbox(taxii), inbox(taxii, "divd"), recipient(taxii, "zcert")):
        assert_taxii_error(post(operator, url, envelope), 403)  # reads everything, writes nothing
    # Not visible stays 404 whatever else is wrong with the request.
    assert_taxii_error(post(researcher, recipient(taxii, "zcert"), b"{", "application/json"), 404)
    assert_taxii_error(post(researcher, taxii.collection_url(str(uuid.uuid4())), envelope), 404)
    after = footprint(taxii.store)
    # Nothing stored but the status resource of each poller's (refused) feedback POST.
    assert (after[0], after[1], after[2] - len(POLLERS), after[3]) == before


def test_wrong_media_type_and_malformed_bodies_are_4xx_and_store_nothing(taxii: RunningServer) -> None:
    researcher = session_for(RESEARCHER)
    envelope = {"objects": [indicator("198.51.100.33")]}
    before = footprint(taxii.store)
    audit_before = len(taxii.store.audit_entries())
    for content_type in (
        "application/json",
        "application/stix+json;version=2.1",
        "application/taxii+json;version=2.0",
        "text/plain",
        None,
    ):
        assert_taxii_error(post(researcher, inbox(taxii), envelope, content_type), 415)
    for body in (
        b"{not json",
        b"",
        b"\xff\xfe\x00",
        b'{"objects": [',
        b"[]",
        b'[{"type": "indicator"}]',
        b'"objects"',
        b"null",
        b"42",
        b'{"objects": {}}',
        b'{"objects": "indicator"}',
        b'{"objects": null}',
    ):
        assert_taxii_error(post(researcher, inbox(taxii), body), 400)
    assert footprint(taxii.store) == before
    assert len(taxii.store.audit_entries()) == audit_before


def test_an_envelope_with_type_confused_objects_is_a_failure_not_a_500(taxii: RunningServer) -> None:
    good = indicator("198.51.100.33")
    odd = {"type": 5, "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"}
    resp = post(session_for(RESEARCHER), inbox(taxii), {"objects": [odd, good]})
    assert resp.status_code == 202, f"{resp.status_code} {resp.text[:300]}"
    assert (resp.json()["success_count"], resp.json()["failure_count"]) == (1, 1)


def test_a_body_over_max_content_length_is_413(store: Store, sample_config: Config) -> None:
    limit = 2048
    config = sample_config.model_copy(
        update={"server": sample_config.server.model_copy(update={"max_content_length": limit})}
    )
    big = indicator("198.51.100.33", description="x" * (2 * limit))
    small = indicator("198.51.100.33")
    big_body = json.dumps({"objects": [big]}).encode()
    assert len(big_body) > limit
    with serving(config, store) as taxii:
        researcher = session_for(RESEARCHER)
        root = researcher.get(taxii.api_root)
        assert root.status_code == 200 and root.json()["max_content_length"] == limit
        before = footprint(store)
        assert_taxii_error(post(researcher, inbox(taxii), big_body), 413)
        chunked = researcher.post(
            inbox(taxii) + "objects/",
            data=(big_body[i : i + 512] for i in range(0, len(big_body), 512)),
            headers={"Content-Type": TAXII_MEDIA_TYPE},
        )
        assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
        assert_taxii_error(chunked, 413)
        assert footprint(store) == before
        ok = post(researcher, inbox(taxii), {"objects": [small]})
        assert ok.status_code == 202 and ok.json()["success_count"] == 1


# ==============================================================================================
# DELETE
# ==============================================================================================


def test_only_operators_delete_and_only_from_the_collection_named(taxii: RunningServer) -> None:
    noord, zcert = recipient_collection_id("ziekenhuis-noord"), recipient_collection_id("zcert")
    shared = ids_in(session_for("noord-poller"), taxii, noord) & ids_in(
        session_for("zcert-poller"), taxii, zcert
    )
    victim = sorted(i for i in shared if i.startswith("sighting--"))[0]
    object_url = recipient(taxii, "zcert") + f"objects/{victim}/"

    assert_taxii_error(session_for("zcert-poller").delete(object_url), 403)  # reads, may not delete
    assert_taxii_error(session_for("ibd-poller").delete(object_url), 404)  # not visible
    assert_taxii_error(session_for(RESEARCHER).delete(object_url), 404)
    assert_taxii_error(session_for(RESEARCHER).delete(inbox(taxii) + f"objects/{victim}/"), 403)
    assert session_for("zcert-poller").get(object_url).status_code == 200

    operator = session_for(OPERATOR)
    resp = operator.delete(object_url)
    assert resp.status_code == 200, resp.text[:300]
    assert_taxii_error(session_for("zcert-poller").get(object_url), 404)
    assert victim not in ids_in(session_for("zcert-poller"), taxii, zcert)
    assert victim in ids_in(session_for("noord-poller"), taxii, noord)  # other collections keep it

    assert_taxii_error(operator.delete(object_url), 404)  # already gone
    assert_taxii_error(
        operator.delete(recipient(taxii, "zcert") + f"objects/indicator--{uuid.uuid4()}/"), 404
    )
    assert_taxii_error(operator.delete(taxii.collection_url(str(uuid.uuid4())) + f"objects/{victim}/"), 404)


def test_delete_deletes_only_what_match_spec_version_selects(taxii: RunningServer) -> None:
    """DELETE takes match[spec_version] as well as match[version] (TAXII 2.1 5.7): only the
    versions of the object with that STIX version go. Every object here is STIX 2.1, so asking
    to delete the 2.0 versions deletes nothing (404, as GET answers with nothing for 2.0), and
    the object stays in the collection."""
    zcert = recipient_collection_id("zcert")
    held = ids_in(session_for("zcert-poller"), taxii, zcert)
    victim = sorted(i for i in held if i.startswith("sighting--"))[0]
    object_url = recipient(taxii, "zcert") + f"objects/{victim}/"
    operator = session_for(OPERATOR)
    for params in ({"match[spec_version]": "2.0"}, {"match[spec_version]": "2.0", "match[version]": "all"}):
        assert_taxii_error(operator.delete(object_url, params=params), 404)
        assert victim in ids_in(session_for("zcert-poller"), taxii, zcert), params
    assert operator.delete(object_url, params={"match[spec_version]": "2.0,2.1"}).status_code == 200
    assert victim not in ids_in(session_for("zcert-poller"), taxii, zcert)


# ==============================================================================================
# Bearer API tokens
# ==============================================================================================


def test_bearer_tokens_authenticate_as_their_user(taxii: RunningServer) -> None:
    poller_token, poller_id, poller_hash = new_token()
    writer_token, writer_id, writer_hash = new_token()
    tokens = {"zcert-poller": (poller_id, poller_hash), RESEARCHER: (writer_id, writer_hash)}
    users = [
        u.model_copy(update={"tokens": [ApiToken(id=tokens[u.username][0], hash=tokens[u.username][1])]})
        if u.username in tokens
        else u
        for u in taxii.config.users
    ]
    config = taxii.config.model_copy(update={"users": users})
    zcert = recipient_collection_id("zcert")
    expected = ids_in(session_for("zcert-poller"), taxii, zcert)
    assert expected

    with serving(config, taxii.store) as server:
        poller = bearer_session(poller_token)
        assert ids_in(poller, server, zcert) == expected
        assert_taxii_error(poller.get(recipient(server, "ibd") + "objects/"), 404)  # the user's rights
        resp = post(bearer_session(writer_token), inbox(server), {"objects": [indicator("198.51.100.33")]})
        assert resp.status_code == 202 and resp.json()["success_count"] == 1
        # The status belongs to the user, however it authenticated.
        status_url = f"{server.api_root}status/{resp.json()['id']}/"
        assert session_for(RESEARCHER).get(status_url).status_code == 200

        wrong_secret = f"mpt_{poller_id}_{poller_token.rsplit('_', 1)[1]}x"
        for bad in (wrong_secret, "mpt_short_secret"):
            err = assert_taxii_error(bearer_session(bad).get(server.collection_url(zcert) + "objects/"), 401)
            assert "objects" not in err
            assert poller.get(server.collection_url(zcert)).status_code == 200  # resets the back-off


# ==============================================================================================
# Audit log
# ==============================================================================================


def test_the_audit_log_records_reads_adds_and_deletes(taxii: RunningServer) -> None:
    zcert = recipient_collection_id("zcert")
    researcher_inbox = inbox_collection_id(RESEARCHER)
    start = len(taxii.store.audit_entries())
    poller = session_for("zcert-poller")
    victim = sorted(ids_in(poller, taxii, zcert))[0]
    assert poller.get(recipient(taxii, "zcert") + "manifest/").status_code == 200
    assert poller.get(recipient(taxii, "zcert") + f"objects/{victim}/").status_code == 200
    posted = post(session_for(RESEARCHER), inbox(taxii), {"objects": [indicator("198.51.100.33")]})
    assert posted.status_code == 202
    assert session_for(OPERATOR).delete(recipient(taxii, "zcert") + f"objects/{victim}/").status_code == 200
    assert session_for(RESEARCHER).get(inbox(taxii) + "objects/").status_code == 403

    entries = taxii.store.audit_entries()[start:]
    seen = [(e["username"], e["action"], e["collection_id"], e["status"]) for e in entries]
    assert seen == [
        ("zcert-poller", "objects", zcert, 200),
        ("zcert-poller", "manifest", zcert, 200),
        ("zcert-poller", "object", zcert, 200),
        (RESEARCHER, "add-objects", researcher_inbox, 202),
        (OPERATOR, "delete-object", zcert, 200),
    ]
    assert entries[3]["objects"] == 1 and entries[4]["objects"] >= 1
    assert all(e["at"] for e in entries)


# ==============================================================================================
# OpenAPI document
# ==============================================================================================


@pytest.mark.parametrize("authenticated", [False, True])
def test_the_openapi_document_is_public_at_taxii2_and_not_at_the_root(
    taxii: RunningServer, authenticated: bool
) -> None:
    """Current behaviour. /taxii2/openapi.json serves the document to anybody (it describes the
    API, not the data, and holds nothing of the deployment). /openapi.json is not served: the
    framework redirects it to /openapi.json/, which is an API-root lookup like any other path
    (401 without credentials, 404 with), never the document."""
    s = session_for(OPERATOR if authenticated else None)
    top = s.get(f"{taxii.url}/openapi.json", allow_redirects=False)
    assert top.status_code == 307
    assert top.headers["Location"].endswith("/openapi.json/")
    followed = s.get(f"{taxii.url}/openapi.json")
    assert_taxii_error(followed, 404 if authenticated else 401)

    for accept in (TAXII_MEDIA_TYPE, "application/json", None):
        s.headers.pop("Accept", None)
        if accept:
            s.headers["Accept"] = accept
        resp = s.get(f"{taxii.url}/taxii2/openapi.json")
        assert resp.status_code == 200, (accept, resp.status_code)
        assert resp.headers["Content-Type"] == "application/json"
    spec = resp.json()
    assert spec["openapi"].startswith("3.")
    assert "/{api_root}/collections/{collection_id}/objects/" in spec["paths"]
    for secret in [
        *(u.username for u in taxii.config.users),
        *(recipient_collection_id(r.id) for r in taxii.config.recipients),
        *(inbox_collection_id(p.id) for p in taxii.config.partners),
        taxii.config.server.api_root,
        "192.0.2.",
        "198.51.100.",
        "example.org",
        "$argon2",
    ]:
        assert secret not in resp.text, secret


def test_posts_do_not_rebuild_the_routing_tables(
    tmp_path, sample_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The routing tables (every recipient's networks, and the IP-to-ASN table: about a second
    for a national one) are built once when the server starts, not on the event loop at every
    POST, which stalled every other client meanwhile."""
    from connector import routing
    from connector.collections import collection_rows

    built: list[int] = []
    original = routing.Router.__init__

    def counting(self, config):  # type: ignore[no-untyped-def]
        built.append(1)
        original(self, config)

    monkeypatch.setattr(routing.Router, "__init__", counting)
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    store.sync_collections(collection_rows(sample_config))
    with serving(sample_config, store) as taxii:
        at_start = len(built)
        researcher = session_for(RESEARCHER)
        for address in ("198.51.100.33", "198.51.100.34", "192.0.2.20"):
            assert post(researcher, inbox(taxii), {"objects": [indicator(address)]}).status_code == 202
        assert len(built) == at_start <= 1
