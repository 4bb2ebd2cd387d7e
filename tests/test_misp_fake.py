"""The strict MISP fake (tests/misp_fake.py), driven by the real PyMISP client.

Every MISP rule the fake claims to enforce is checked here both ways: the valid request is
accepted and the invalid one is refused with MISP's status and message, and nothing is stored.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from openapi_spec_validator import validate as validate_spec
from pymisp import MISPEvent, MISPObject, PyMISP
from pymisp.exceptions import MISPServerError, PyMISPError

from tests.misp_fake import (
    ALREADY_EXISTS,
    AUTH_FAILED,
    NOT_NEWER,
    PYMISP_DATA,
    SPEC_FIXES,
    MispFake,
    _default_openapi_path,
    _Schemas,
    load_openapi,
)

logging.getLogger("pymisp").setLevel(logging.CRITICAL)  # refused requests are logged as errors


@pytest.fixture
def fake() -> Iterator[MispFake]:
    with MispFake() as running:
        yield running


@pytest.fixture
def misp(fake: MispFake) -> PyMISP:
    return PyMISP(fake.url, fake.key, ssl=False, timeout=10)


def _headers(fake: MispFake) -> dict[str, str]:
    return {"Authorization": fake.key, "Accept": "application/json", "Content-Type": "application/json"}


def _event(info: str = "Phishing campaign against members", **kwargs: object) -> MISPEvent:
    event = MISPEvent()
    event.info = info
    for key, value in kwargs.items():
        setattr(event, key, value)
    return event


def _full_event() -> MISPEvent:
    event = _event(distribution=1, threat_level_id=2, analysis=1)
    event.add_attribute("url", "https://login-update.example.nl/secure/owa/", comment="phishing page")
    event.add_attribute("domain", "login-update.example.nl")
    event.add_attribute("ip-dst", "192.0.2.77", Tag=['rsit:fraud="phishing"'])
    event.add_tag("tlp:amber")
    event.add_tag('rsit:fraud="phishing"')
    ip_port = MISPObject("ip-port")
    ip_port.add_attribute("ip", "2001:db8:10::99")
    ip_port.add_attribute("dst-port", 443)
    event.add_object(ip_port)
    return event


# ------------------------------------------------------------------------------ reference data


def test_openapi_is_fixed_in_memory_only() -> None:
    path = _default_openapi_path()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    with pytest.raises(Exception, match="non-unique"):
        validate_spec(raw)  # the document on disk keeps its duplicate `text`
    fixed = load_openapi()
    assert fixed["components"]["schemas"]["AttributesRestSearchReturnFormat"]["enum"].count("text") == 1
    assert any("AttributesRestSearchReturnFormat" in fix and "'text'" in fix for fix in SPEC_FIXES)
    assert raw["components"]["schemas"]["AttributesRestSearchReturnFormat"]["enum"].count("text") == 2


def test_pymisp_connects_and_gets_its_own_describe_types(fake: MispFake, misp: PyMISP) -> None:
    shipped = json.loads((PYMISP_DATA / "describeTypes.json").read_text(encoding="utf-8"))["result"]
    assert misp.describe_types == shipped
    assert misp.describe_types_remote == shipped
    assert [(r.method, r.path) for r in fake.requests[:3]] == [
        ("GET", "/servers/getVersion"),
        ("GET", "/users/view/me"),
        ("GET", "/attributes/describeTypes.json"),
    ]
    for path in ("servers/getVersion.json", "users/view/me.json"):
        answer = requests.get(f"{fake.url}/{path}", headers={"Authorization": fake.key}, timeout=5)
        assert answer.status_code == 200, path


def test_every_request_needs_the_key_and_json(fake: MispFake) -> None:
    for headers in ({}, {"Authorization": "wrong", "Accept": "application/json"}):
        answer = requests.get(f"{fake.url}/servers/getVersion", headers=headers, timeout=5)
        assert answer.status_code == 403
        assert answer.json() == {"name": AUTH_FAILED, "message": AUTH_FAILED, "url": "/servers/getVersion"}
    answer = requests.head(f"{fake.url}/events/view/1", timeout=5)
    assert answer.status_code == 403
    answer = requests.get(f"{fake.url}/servers/getVersion", headers={"Authorization": fake.key}, timeout=5)
    assert answer.status_code == 406  # not a REST request
    with pytest.raises(PyMISPError):
        PyMISP(fake.url, "x" * 40, ssl=False)
    assert not fake.mutations


# ------------------------------------------------------------------------------ the happy path


def test_add_get_exists_search_publish_tag(fake: MispFake, misp: PyMISP) -> None:
    event = _full_event()
    added = misp.add_event(event, pythonify=True)
    assert isinstance(added, MISPEvent), added
    assert added.uuid == event.uuid and int(added.id) == 1
    assert added.published is False
    assert {a.value for a in added.attributes} == {
        "https://login-update.example.nl/secure/owa/",
        "login-update.example.nl",
        "192.0.2.77",
    }
    assert {t.name for t in added.tags} == {"tlp:amber", 'rsit:fraud="phishing"'}
    ip_attr = next(a for a in added.attributes if a.type == "ip-dst")
    assert [t.name for t in ip_attr.tags] == ['rsit:fraud="phishing"']
    (obj,) = added.objects
    assert obj.name == "ip-port" and obj.uuid == event.objects[0].uuid
    assert {(a.object_relation, a.type, a.value) for a in obj.attributes} == {
        ("ip", "ip-dst", "2001:db8:10::99"),
        ("dst-port", "port", "443"),
    }
    assert all(a.uuid for a in obj.attributes)

    fetched = misp.get_event(event.uuid, pythonify=True)
    assert isinstance(fetched, MISPEvent)
    assert fetched.to_dict() == misp.get_event(1, pythonify=True).to_dict()
    assert misp.event_exists(event.uuid) and misp.event_exists(1)
    assert not misp.event_exists(str(uuid.uuid4())) and not misp.event_exists(99)
    assert misp.get_event(str(uuid.uuid4()))["errors"][0] == 404

    stored = fake.events[event.uuid]
    assert stored["id"] == "1" and stored["published"] is False and stored["attribute_count"] == "5"
    assert stored["timestamp"].isdigit()
    assert {a["uuid"] for a in stored["Object"][0]["Attribute"]} == {
        a.uuid for a in event.objects[0].attributes
    }

    hits = misp.search(uuid=event.uuid, pythonify=True)
    assert [h.uuid for h in hits] == [event.uuid]

    published = misp.publish(event.uuid)
    assert published["name"] == "Publish" and published["id"] == "1"
    assert fake.events[event.uuid]["published"] is True
    assert fake.events[event.uuid]["publish_timestamp"] != "0"

    tagged = misp.tag(event.uuid, "meldpunt:notified")
    assert tagged["saved"] is True
    after = fake.events[event.uuid]
    assert "meldpunt:notified" in {t["name"] for t in after["Tag"]}
    assert after["published"] is False  # a global tag unpublishes, as in MISP
    attr_uuid = ip_attr.uuid
    assert misp.tag(attr_uuid, "tlp:clear")["saved"] is True
    assert misp.tag(attr_uuid, "tlp:clear")["errors"][0] == 403  # already attached
    assert misp.tag(str(uuid.uuid4()), "tlp:clear")["errors"][0] == 405  # Invalid Target.

    changed = [(r.method, r.path.split("/")[1:3]) for r in fake.mutations]
    assert changed == [
        ("POST", ["events", "add"]),
        ("POST", ["events", "publish"]),
        ("POST", ["tags", "attachTagToObject"]),
        ("POST", ["tags", "attachTagToObject"]),
    ]
    reads = [r for r in fake.requests if r.method in ("GET", "HEAD")]
    assert reads and not any(r.changed for r in reads)


def test_answers_have_misps_documented_shape(fake: MispFake, misp: PyMISP) -> None:
    schemas = _Schemas(load_openapi())
    event = _full_event()
    misp.add_event(event)
    misp.tag(event.uuid, "tlp:amber", local=True)
    for path in (f"events/view/{event.uuid}", "events/view/1"):
        answer = requests.get(f"{fake.url}/{path}", headers=_headers(fake), timeout=5).json()
        assert schemas.errors("EditedEvent", answer) == {}
    search = requests.post(
        f"{fake.url}/events/restSearch", headers=_headers(fake), json={"returnFormat": "json"}, timeout=5
    ).json()
    assert schemas.errors("EventRestSearchList", search["response"]) == {}


def test_update_event_round_trip(fake: MispFake, misp: PyMISP) -> None:
    event = _full_event()
    misp.add_event(event)
    fetched = misp.get_event(event.uuid, pythonify=True)
    fetched.add_attribute("email-src", "noreply@login-update.example.nl")
    fetched.info = "Phishing campaign against members (update)"
    updated = misp.update_event(fetched, pythonify=True)
    assert isinstance(updated, MISPEvent), updated
    assert updated.info.endswith("(update)") and len(updated.attributes) == 4
    assert fake.events[event.uuid]["attribute_count"] == "6"
    # PUT and the REST resource route /events/<id> are edits too; an edit that does not say
    # `published` unpublishes the event (Event::_edit).
    misp.publish(event.uuid)
    body = {"info": "via PUT", "timestamp": str(int(time.time()) + 100)}
    answer = requests.put(f"{fake.url}/events/edit/1", headers=_headers(fake), json=body, timeout=5)
    assert answer.status_code == 200 and answer.json()["Event"]["info"] == "via PUT"
    assert fake.events[event.uuid]["published"] is False
    body = {"info": "via resource route", "timestamp": str(int(time.time()) + 200)}
    answer = requests.post(f"{fake.url}/events/1", headers=_headers(fake), json=body, timeout=5)
    assert answer.status_code == 200 and answer.json()["Event"]["info"] == "via resource route"
    assert misp.update_event(_event(uuid=str(uuid.uuid4())), event_id=77)["errors"][0] == 404


def test_search_filters(fake: MispFake, misp: PyMISP) -> None:
    clock = [1_700_000_000.0]
    fake._clock = lambda: clock[0]
    old = _event("Old DIVD case", distribution=1)
    old.add_attribute("ip-dst", "198.51.100.7")
    old.add_tag("divd:case")
    misp.add_event(old)
    misp.publish(old.uuid)
    clock[0] += 86_400 * 3
    new = _event("New CSIRT notification", distribution=1)
    new.add_attribute("domain", "evil.example", Tag=["tlp:red"])
    misp.add_event(new)

    def uuids(**query: object) -> list[str]:
        found = misp.search(**query)
        assert isinstance(found, list), found
        return [e["Event"]["uuid"] for e in found]

    assert uuids() == [old.uuid, new.uuid]
    assert uuids(uuid=new.uuid) == [new.uuid]
    assert uuids(uuid=new.attributes[0].uuid) == [new.uuid]  # attribute uuids select their event
    assert uuids(eventinfo="%divd%") == [old.uuid]
    assert uuids(eventinfo="old divd case") == [old.uuid]
    assert uuids(tags="divd:case") == [old.uuid]
    assert uuids(tags="tlp:red") == [new.uuid]  # attribute tags count for events
    assert uuids(event_tags="tlp:red") == []
    assert uuids(tags=["!divd:case"]) == [new.uuid]
    assert uuids(tags={"AND": ["divd:case", "tlp:red"]}) == []
    assert uuids(timestamp=int(clock[0]) - 3600) == [new.uuid]
    assert uuids(timestamp="1d") == [new.uuid]
    assert uuids(last="4d") == [old.uuid]  # PyMISP sends publish_timestamp
    assert uuids(org="MELDPUNT-TEST") == [old.uuid, new.uuid]
    assert uuids(org="1") == [old.uuid, new.uuid]
    assert uuids(org="Someone else") == []
    assert uuids(published=True) == [old.uuid]
    assert uuids(value="198.51.100.7") == [old.uuid]
    assert uuids(type_attribute="domain") == [new.uuid]
    assert uuids(limit=1, page=2) == [new.uuid]
    metadata_only = misp.search(uuid=old.uuid, metadata=True)[0]["Event"]
    assert "Attribute" not in metadata_only
    with pytest.raises(MISPServerError):
        misp.search(quick_filter="anything")  # not implemented: the fake says so (501)


# ------------------------------------------------------------------------------ MISP's rules


def test_duplicate_uuid_on_add_is_404_with_location(fake: MispFake, misp: PyMISP) -> None:
    event = _full_event()
    misp.add_event(event)
    again = misp.add_event(event)
    assert again["errors"][0] == 404
    assert again["errors"][1]["name"] == ALREADY_EXISTS
    body = {"info": "same uuid", "uuid": event.uuid}
    answer = requests.post(f"{fake.url}/events/add", headers=_headers(fake), json=body, timeout=5)
    assert answer.status_code == 404
    assert answer.headers["Location"] == f"{fake.url}/events/1"  # MISP: $this->baseurl . '/events/' . $add
    assert answer.json() == {"name": ALREADY_EXISTS, "message": ALREADY_EXISTS, "url": "/events/add"}
    followed = requests.get(answer.headers["Location"], headers=_headers(fake), timeout=5)
    assert followed.status_code == 200 and followed.json()["Event"]["uuid"] == event.uuid
    assert len(fake.events) == 1
    assert fake.events[event.uuid]["info"] == event.info

    with MispFake(location_style="view") as other:
        requests.post(f"{other.url}/events/add", headers=_headers(other), json=body, timeout=5)
        answer = requests.post(f"{other.url}/events/add", headers=_headers(other), json=body, timeout=5)
        assert answer.status_code == 404
        assert answer.headers["Location"] == f"{other.url}/events/view/1"


def test_edit_must_be_newer(fake: MispFake, misp: PyMISP) -> None:
    event = _full_event()
    misp.add_event(event)
    stored_ts = int(fake.events[event.uuid]["timestamp"])
    unchanged = misp.get_event(event.uuid, pythonify=True)
    refused = misp.update_event(unchanged)  # PyMISP keeps the timestamp of an unedited event
    assert refused["errors"][0] == 403
    assert refused["errors"][1] == {
        "saved": False,
        "name": "Could not edit Event",
        "message": "Could not edit Event",
        "url": "/events/edit/1",
        "errors": NOT_NEWER,
        "id": "1",
    }
    for stamp in (stored_ts, stored_ts - 10):
        body = {"info": "older", "timestamp": str(stamp)}
        answer = requests.post(f"{fake.url}/events/edit/1", headers=_headers(fake), json=body, timeout=5)
        assert answer.status_code == 403 and answer.json()["errors"] == NOT_NEWER
    assert fake.events[event.uuid]["info"] == event.info
    body = {"info": "newer", "timestamp": str(stored_ts + 1)}
    answer = requests.post(f"{fake.url}/events/edit/1", headers=_headers(fake), json=body, timeout=5)
    assert answer.status_code == 200 and fake.events[event.uuid]["info"] == "newer"
    assert fake.events[event.uuid]["timestamp"] == str(stored_ts + 1)


def test_attribute_uuid_reused_in_another_event_is_rejected(fake: MispFake, misp: PyMISP) -> None:
    first = _event("first")
    shared = first.add_attribute("ip-dst", "192.0.2.10")
    misp.add_event(first)
    second = _event("second")
    second.add_attribute("ip-dst", "192.0.2.11", uuid=shared.uuid)
    answer = misp.add_event(second)
    assert answer["errors"][0] == 403
    assert answer["errors"][1]["name"] == "Could not add Event"
    (problem,) = answer["errors"][1]["errors"]["Attribute"]
    assert problem["uuid"] == shared.uuid and "not unique" in problem["errors"]["uuid"][0]
    assert second.uuid not in fake.events

    ok = _event("second, own uuids")
    ok.add_attribute("ip-dst", "192.0.2.11")
    misp.add_event(ok)
    reuse = {"timestamp": str(int(time.time()) + 60), "Attribute": [shared.to_dict()]}
    answer = misp.direct_call(f"events/edit/{ok.uuid}", reuse)
    assert answer["errors"][0] == 403 and "Attribute" in answer["errors"][1]["errors"]
    assert len(fake.events[ok.uuid]["Attribute"]) == 1
    # Objects: an object uuid from another event is refused as well.
    stolen = MISPObject("ip-port")
    stolen.uuid = str(uuid.uuid4())
    stolen.add_attribute("ip", "192.0.2.12")
    carrier = _event("carrier")
    carrier.add_object(stolen)
    misp.add_event(carrier)
    thief = _event("thief")
    copy_of = MISPObject("ip-port")
    copy_of.uuid = stolen.uuid
    copy_of.add_attribute("ip", "192.0.2.13")
    thief.add_object(copy_of)
    assert misp.add_event(thief)["errors"][0] == 403


def test_drop_mode_does_what_misp_does(misp: PyMISP) -> None:
    with MispFake(invalid_attributes="drop") as lenient:
        client = PyMISP(lenient.url, lenient.key, ssl=False)
        first = _event("first")
        shared = first.add_attribute("ip-dst", "192.0.2.10")
        client.add_event(first)
        second = {
            "info": "second",
            "Attribute": [
                {"type": "ip-dst", "value": "192.0.2.20", "uuid": shared.uuid},
                {"type": "no-such-type", "value": "x"},
                {"type": "domain", "value": "kept.example"},
            ],
        }
        stored = client.direct_call("events/add", second)["Event"]
        assert [a["value"] for a in stored["Attribute"]] == ["kept.example"]
        assert [d["kind"] for d in lenient.dropped] == ["Attribute", "Attribute"]
        assert lenient.dropped[0]["uuid"] == shared.uuid
        edit = {"timestamp": str(int(time.time()) + 60), "Attribute": [{"type": "ip-dst", "value": "nope"}]}
        edited = client.direct_call(f"events/edit/{stored['id']}", edit)["Event"]
        assert [a["value"] for a in edited["Attribute"]] == ["kept.example"]
        assert len(lenient.dropped) == 3


def test_distribution_4_needs_a_sharing_group(fake: MispFake, misp: PyMISP) -> None:
    body = {"info": "for a sharing group", "distribution": "4"}
    answer = misp.direct_call("events/add", body)
    assert answer["errors"][0] == 405
    assert answer["errors"][1]["name"] == "Invalid Sharing Group or not authorised."
    answer = misp.direct_call("events/add", {**body, "sharing_group_id": "99"})
    assert answer["errors"][0] == 405
    assert not fake.events
    added = misp.direct_call("events/add", {**body, "sharing_group_id": "1"})["Event"]
    assert added["distribution"] == "4" and added["sharing_group_id"] == "1"

    plain = misp.direct_call("events/add", {"info": "community", "distribution": "1"})["Event"]
    edit = {"distribution": "4", "timestamp": str(int(time.time()) + 60)}
    answer = misp.direct_call(f"events/edit/{plain['id']}", edit)
    assert answer["errors"][0] == 403
    assert "no sharing group specified" in answer["errors"][1]["errors"]
    assert fake.event(plain["id"])["distribution"] == "1"
    attr = {"type": "domain", "value": "sg.example", "distribution": "4"}
    answer = misp.direct_call("events/add", {"info": "attribute for a sharing group", "Attribute": [attr]})
    assert answer["errors"][0] == 403
    assert "sharing_group_id" in answer["errors"][1]["errors"]["Attribute"][0]["errors"]


@pytest.mark.parametrize(
    ("attribute", "field"),
    [
        ({"type": "no-such-type", "value": "x"}, "type"),
        ({"type": "ip-dst", "value": "192.0.2.1", "category": "Financial fraud"}, "type"),
        ({"type": "ip-dst", "value": "192.0.2.1", "category": "No such category"}, "category"),
        ({"type": "ip-dst", "value": "not an ip"}, "value"),
        ({"type": "port", "value": "70000"}, "value"),
        ({"type": "sha256", "value": "abc"}, "value"),
        ({"type": "domain", "value": ""}, "value"),
        ({"type": "domain", "value": "ok.example", "distribution": "9"}, "distribution"),
        ({"type": "domain", "value": "ok.example", "uuid": "not-a-uuid"}, "uuid"),
    ],
)
def test_invalid_attributes_are_rejected(
    fake: MispFake, misp: PyMISP, attribute: dict[str, str], field: str
) -> None:
    answer = misp.direct_call("events/add", {"info": "bad attribute", "Attribute": [attribute]})
    assert answer["errors"][0] == 403, answer
    (problem,) = answer["errors"][1]["errors"]["Attribute"]
    assert field in problem["errors"], problem
    assert not fake.events


def test_schema_messages_are_reported(fake: MispFake, misp: PyMISP) -> None:
    content = [{"type": "domain", "value": "a.example"}]
    body = {"info": "x", "analysis": "7", "published": "maybe", "Attribute": content}
    answer = misp.direct_call("events/add", body)
    errors = answer["errors"][1]["errors"]["Event"]
    assert any("schema EventNoId: '7' is not one of ['0', '1', '2']" in m for m in errors["analysis"])
    assert errors["analysis"][0] == "Options : 0, 1, 2 (for Initial, Ongoing, Completed)"
    assert any("schema EventNoId" in m for m in errors["published"])
    assert misp.direct_call("events/add", {"info": "  "})["errors"][1]["errors"] == {
        "Event": {"info": ["Info cannot be empty."]}
    }
    bad = {"type": "domain", "value": "ok.example", "to_ids": "perhaps"}
    answer = misp.direct_call("events/add", {"info": "x", "Attribute": [bad]})
    messages = answer["errors"][1]["errors"]["Attribute"][0]["errors"]["to_ids"]
    assert any("schema Attribute: 'perhaps' is not of type 'boolean'" in m for m in messages)
    assert not fake.events


def test_object_template_is_enforced(fake: MispFake, misp: PyMISP) -> None:
    wrong_type = _event("object with a wrong type")
    obj = MISPObject("ip-port")
    obj.add_attribute("ip", "192.0.2.1")
    wrong_type.add_object(obj)
    payload = json.loads(wrong_type.to_json())
    payload["Object"][0]["Attribute"][0]["type"] = "ip-src"
    payload["Object"][0]["Attribute"][0]["category"] = "Network activity"
    answer = misp.direct_call("events/add", payload)
    assert answer["errors"][0] == 403
    assert "template gives 'ip' the type 'ip-dst'" in json.dumps(answer["errors"][1]["errors"])
    no_relation = json.loads(wrong_type.to_json())
    del no_relation["Object"][0]["Attribute"][0]["object_relation"]
    assert misp.direct_call("events/add", no_relation)["errors"][0] == 403
    unknown = {"info": "x", "Object": [{"name": "no-such-template", "Attribute": []}]}
    assert misp.direct_call("events/add", unknown)["errors"][0] == 403
    assert not fake.events


def test_published_empty_event_is_blocked(fake: MispFake, misp: PyMISP) -> None:
    answer = misp.direct_call("events/add", {"info": "empty", "published": True})
    assert answer["errors"][0] == 403
    assert answer["errors"][1]["errors"] == {
        "Event": "Received a published event that was empty. Event add process blocked."
    }


# ------------------------------------------------------------------------------ failure modes


def test_failure_modes(fake: MispFake, misp: PyMISP) -> None:
    event = _event("during an outage")
    event.add_attribute("domain", "outage.example")

    fake.fail_next(1, "500")
    with pytest.raises(MISPServerError):
        misp.add_event(event)
    fake.fail_next(1, "429", seconds=3)
    limited = requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert not fake.events

    fake.fail_next(1, "reset")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5)
    assert requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5).ok

    fake.fail_next(1, "refuse")
    assert fake.refusing
    with pytest.raises(requests.ConnectionError, match=r"(?i)refused"):
        requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5)
    with pytest.raises(requests.ConnectionError):
        misp.add_event(event)
    fake.resume()
    assert misp.event_exists(1) is False

    fake.fail_next(1, "refuse", seconds=0.3)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5)
    time.sleep(0.6)
    assert requests.get(f"{fake.url}/servers/getVersion", headers=_headers(fake), timeout=5).ok

    # slow: the client gives up, MISP (and the fake) still store the event.
    fake.fail_next(1, "slow", seconds=0.5)
    with pytest.raises(requests.Timeout):
        requests.post(f"{fake.url}/events/add", headers=_headers(fake), data=event.to_json(), timeout=0.2)
    time.sleep(0.6)
    assert event.uuid in fake.events
    retried = misp.add_event(event)
    assert retried["errors"][0] == 404  # the retry sees MISP's "already exists"

    injected = [(r.injected, r.status, r.changed) for r in fake.requests if r.injected]
    assert injected == [("500", 500, False), ("429", 429, False), ("reset", 0, False), ("slow", 200, True)]


def test_fail_next_validates_its_arguments(fake: MispFake) -> None:
    with pytest.raises(ValueError):
        fake.fail_next(1, "teapot")
    with pytest.raises(ValueError):
        fake.fail_next(0, "500")


def test_binds_only_to_loopback(fake: MispFake) -> None:
    assert fake.url.startswith("http://127.0.0.1:")
    assert (
        Path(__file__).with_name("misp_fake.py").read_text(encoding="utf-8").count('HOST = "127.0.0.1"') == 1
    )
