"""Hardening of STIX submissions against what a hostile or careless poster sends (issue #14):
floods of objects, status resources that grow with the input, objects nested deeper than the
store can write, and timestamps at the ends of the calendar.

Every case is posted over real HTTP (raw `requests`, so each status code and body is seen as
sent) and, where the path exists, ingested as a file with `meldpunt ingest --format stix`:
both must refuse the one bad object with a reason and keep the good ones beside it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import orjson

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import Config
from connector.ingest import Ingestor
from connector.store import Store
from tests.conftest import RunningServer, serving
from tests.test_submission import collection
from tests.test_taxii_write import (
    RESEARCHER,
    assert_taxii_error,
    footprint,
    inbox,
    indicator,
    post,
    session_for,
)

Json = dict[str, Any]
T0 = "2024-01-01T00:00:00.000Z"


def with_server(config: Config, **changes: Any) -> Config:
    return config.model_copy(update={"server": config.server.model_copy(update=changes)})


def status_of(resp: Any) -> Json:
    assert resp.status_code == 202, f"{resp.status_code} {resp.text[:500]}"
    return dict(resp.json())


def gemeente_ids(store: Store) -> set[str]:
    return set(collection(store, recipient_collection_id("gemeente-voorbeeld")))


# ==============================================================================================
# Item 2: a POST is not amplified
# ==============================================================================================


def test_the_default_cap_on_objects_per_post_is_10000(sample_config: Config) -> None:
    assert sample_config.server.max_objects_per_post == 10_000


def test_a_post_with_more_objects_than_allowed_is_413_and_stores_nothing(
    store: Store, sample_config: Config
) -> None:
    """`{"objects": [0, 0, ...]}` made one failure detail per element: 10 MB of zeros became a
    644 MB status resource. More objects than `server.max_objects_per_post` is refused whole,
    before any is validated, as a TAXII error; the cap itself is accepted."""
    config = with_server(sample_config, max_objects_per_post=5)
    with serving(config, store) as taxii:
        researcher = session_for(RESEARCHER)
        before = footprint(store)
        body = assert_taxii_error(post(researcher, inbox(taxii), {"objects": [0] * 6}), 413)
        assert "5" in body.get("description", ""), body
        too_many = [indicator("198.51.100.33") for _ in range(6)]
        assert_taxii_error(post(researcher, inbox(taxii), {"objects": too_many}), 413)
        assert footprint(store) == before
        ok = status_of(post(researcher, inbox(taxii), {"objects": too_many[:5]}))
        assert ok["success_count"] == 5
        assert {o["id"] for o in too_many[:5]} <= gemeente_ids(store)


def test_zeros_beyond_the_default_cap_are_413(taxii: RunningServer) -> None:
    before = footprint(taxii.store)
    assert_taxii_error(post(session_for(RESEARCHER), inbox(taxii), {"objects": [0] * 10_001}), 413)
    assert footprint(taxii.store) == before


def test_repeated_failures_are_summarised_with_a_count_and_the_first_indexes(
    taxii: RunningServer,
) -> None:
    """5,000 identical failures are one entry naming how many and where, not 5,000 entries;
    the counts stay exact and the good object beside them is accepted and listed."""
    good = indicator("198.51.100.33")
    objects: list[Any] = [0] * 2500 + [good] + [0] * 2500
    resp = post(session_for(RESEARCHER), inbox(taxii), {"objects": objects})
    status = status_of(resp)
    assert (status["total_count"], status["success_count"], status["failure_count"]) == (5001, 1, 5000)
    assert status["successes"] == [{"id": good["id"], "version": T0}]
    assert len(resp.content) < 4096, len(resp.content)
    [failure] = status["failures"]
    assert failure["id"] == "objects[0]"
    assert "5000 objects" in failure["message"], failure
    assert "objects[1]" in failure["message"] and "objects[2501]" not in failure["message"], failure
    # The stored status resource is the same small document.
    stored = session_for(RESEARCHER).get(f"{taxii.api_root}status/{status['id']}/")
    assert stored.json() == status


def test_one_error_of_many_objects_is_summarised_though_each_message_names_its_object(
    taxii: RunningServer,
) -> None:
    """The validator's messages start with the object's id, so no two are identical: they are
    summarised by what they say about their object."""
    broken = [dict(indicator("198.51.100.33"), pattern="[ipv4-addr:value = ") for _ in range(300)]
    status = status_of(post(session_for(RESEARCHER), inbox(taxii), {"objects": broken}))
    assert status["failure_count"] == 300
    [failure] = status["failures"]
    assert failure["id"] == broken[0]["id"]
    assert "300 objects" in failure["message"]


def test_the_status_resource_has_a_size_cap(taxii: RunningServer) -> None:
    """A validator message can quote the value it refuses (here 2,000 characters each), and
    messages that differ are not summarised: the status resource stays bounded anyway, each
    message cut and the list ended with a count of the failures it leaves out."""
    objects = []
    for i in range(1200):
        objects.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--{uuid.uuid4()}",
                "created": T0,
                "modified": T0,
                "pattern": "[ipv4-addr:value = '198.51.100.33']",
                "pattern_type": "stix",
                "valid_from": T0,
                "labels": f"{i}-" + "v" * 2000,  # a list is required: the validator quotes it
            }
        )
    resp = post(session_for(RESEARCHER), inbox(taxii), {"objects": objects})
    status = status_of(resp)
    assert status["failure_count"] == 1200
    assert len(resp.content) <= 1_100_000, len(resp.content)
    messages = [f["message"] for f in status["failures"]]
    assert all(len(m) <= 1000 for m in messages), max(len(m) for m in messages)
    assert "not listed" in messages[-1], messages[-1]
    listed = len(messages) - 1
    assert f"{1200 - listed} further failures" in messages[-1], messages[-1]


# ==============================================================================================
# Item 6: an object nested deeper than can be stored is refused on its own
# ==============================================================================================


def nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"x": value}
    return value


def deep_objects() -> tuple[Json, Json, Json]:
    deep = indicator("198.51.100.34", x_deep=nested(300))
    listed = indicator("198.51.100.35", x_deep_list=json.loads("[" * 300 + "]" * 300))
    good = indicator("198.51.100.33")
    return deep, listed, good


def test_a_deeply_nested_object_is_refused_and_the_others_kept_over_http(taxii: RunningServer) -> None:
    deep, listed, good = deep_objects()
    resp = post(session_for(RESEARCHER), inbox(taxii), {"objects": [deep, listed, good]})
    status = status_of(resp)
    assert (status["success_count"], status["failure_count"]) == (1, 2)
    [failure] = status["failures"]  # one reason, summarised
    assert failure["id"] == deep["id"]
    assert "nested" in failure["message"] and "objects[0], objects[1]" in failure["message"], failure
    assert good["id"] in gemeente_ids(taxii.store)


def test_nesting_far_beyond_what_a_parser_builds_is_refused_without_building_it(
    taxii: RunningServer,
) -> None:
    """100,000 levels in 200 KB: building it would take gigabytes (or the parser's stack)."""
    good = indicator("198.51.100.33")
    deep = orjson.dumps(indicator("198.51.100.34"))[:-1] + b',"x_deep":' + b"[" * 100_000 + b"]" * 100_000
    body = b'{"objects":[' + deep + b"}," + orjson.dumps(good) + b"]}"
    status = status_of(post(session_for(RESEARCHER), inbox(taxii), body))
    assert (status["success_count"], status["failure_count"]) == (1, 1)
    assert "nested" in status["failures"][0]["message"]


def test_a_deeply_nested_object_in_a_stix_file_is_quarantined_and_the_run_goes_on(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    deep, listed, good = deep_objects()
    path = tmp_path / "deep.json"
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [deep, listed, good]}
    path.write_text(json.dumps(bundle))  # orjson itself writes no more than 255 levels
    summary = ingestor.run(RESEARCHER, "stix", [path])
    assert summary.ok
    assert (summary.counts["quarantined"], summary.counts["new"], summary.counts["routed"]) == (2, 1, 1)
    reasons = [r["reason"] for r in store.run_rows(summary.run_id)]
    assert len(reasons) == 2 and all("nested" in r for r in reasons), reasons
    assert good["id"] in gemeente_ids(store)


def test_an_object_nested_beyond_what_a_parser_takes_in_a_stix_file_is_refused_alone(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    """2,000 levels: orjson refused the whole file (its limit is 1,024), losing the good
    objects beside it; the file is now read object by object as the inbox is."""
    good = indicator("198.51.100.33")
    deep = orjson.dumps(indicator("198.51.100.34"))[:-1] + b',"x_deep":' + b"[" * 2000 + b"]" * 2000
    path = tmp_path / "deeper.json"
    path.write_bytes(b'{"type":"bundle","id":"bundle--' + str(uuid.uuid4()).encode() + b'","objects":[')
    with path.open("ab") as handle:
        handle.write(deep + b"}," + orjson.dumps(good) + b"]}")
    summary = ingestor.run(RESEARCHER, "stix", [path])
    assert summary.ok, summary.input_errors
    assert (summary.counts["read"], summary.counts["quarantined"], summary.counts["routed"]) == (2, 1, 1)
    assert good["id"] in gemeente_ids(store)


def big_integer_body(*objects: Json) -> bytes:
    """An envelope whose first object holds an integer beyond 64 bits, as raw JSON text (the C
    parser refused such a document whole: "integer overflow")."""
    big = orjson.dumps(indicator("198.51.100.34"))[:-1] + b',"x_count":158671242786873573376}'
    return b'{"objects":[' + b",".join([big, *(orjson.dumps(o) for o in objects)]) + b"]}"


def test_an_integer_beyond_64_bits_is_refused_alone_over_http(taxii: RunningServer) -> None:
    """Found by schemathesis: a valid JSON envelope answered 400 "Invalid JSON"."""
    good = indicator("198.51.100.33")
    status = status_of(post(session_for(RESEARCHER), inbox(taxii), big_integer_body(good)))
    assert (status["success_count"], status["failure_count"]) == (1, 1), status
    assert "64-bit" in status["failures"][0]["message"], status
    assert good["id"] in gemeente_ids(taxii.store)


def test_an_integer_beyond_64_bits_in_a_stix_file_is_refused_alone(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    good = indicator("198.51.100.33")
    body = big_integer_body(good)
    path = tmp_path / "big.json"
    path.write_bytes(b'{"type":"bundle","id":"bundle--' + str(uuid.uuid4()).encode() + b'",' + body[1:])
    summary = ingestor.run(RESEARCHER, "stix", [path])
    assert summary.ok, summary.input_errors
    assert (summary.counts["read"], summary.counts["quarantined"], summary.counts["routed"]) == (2, 1, 1)
    assert good["id"] in gemeente_ids(store)


def test_an_integer_json_cannot_store_is_refused_on_its_own(store: Store, sample_config: Config) -> None:
    """The same class: anything that cannot be serialised is found per object, not when the
    whole submission is written."""
    from tests.test_submission import submit

    big = indicator("198.51.100.34", x_count=2**70)
    infinite = indicator("198.51.100.35", x_size=float("inf"))  # orjson writes it as null
    good = indicator("198.51.100.33")
    result = submit(store, sample_config, [big, infinite, good])
    assert [o.ok for o in result.outcomes] == [False, False, True]
    assert "JSON" in (result.outcomes[0].message or "")
    assert "out of range" in (result.outcomes[1].message or "")
    assert good["id"] in gemeente_ids(store)


# ==============================================================================================
# Out-of-range timestamps: a per-object refusal (or acceptance), never a 500
# ==============================================================================================

EDGES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00.000Z",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:30:00-00:30",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999+01:00",
    "0000-01-01T00:00:00.000Z",
    "10000-01-01T00:00:00.000Z",
]


def timestamp_cases() -> list[Json]:
    ip = "198.51.100.33"
    sco_ref = "ipv4-addr--" + str(
        uuid.uuid5(
            uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7"),
            json.dumps({"value": ip}, separators=(",", ":")),
        )
    )
    cases: list[Json] = []
    for value in EDGES:
        cases += [
            indicator(ip, created=value, modified=value),
            indicator(ip, valid_from=value),
            indicator(ip, valid_until=value),
            {
                "type": "observed-data",
                "spec_version": "2.1",
                "id": f"observed-data--{uuid.uuid4()}",
                "created": T0,
                "modified": T0,
                "first_observed": value,
                "last_observed": value,
                "number_observed": 1,
                "object_refs": [sco_ref],
            },
            {
                "type": "sighting",
                "spec_version": "2.1",
                "id": f"sighting--{uuid.uuid4()}",
                "created": T0,
                "modified": T0,
                "sighting_of_ref": f"indicator--{uuid.uuid4()}",
                "first_seen": value,
            },
            {"type": "x-thing", "spec_version": "2.1", "id": f"x-thing--{uuid.uuid4()}", "created": value},
            {
                "type": "network-traffic",
                "spec_version": "2.1",
                "id": f"network-traffic--{uuid.uuid4()}",
                "dst_ref": sco_ref,
                "protocols": ["tcp"],
                "start": value,
            },
        ]
    return cases


def test_timestamps_at_the_ends_of_the_calendar_are_per_object_outcomes_over_http(
    taxii: RunningServer,
) -> None:
    cases = timestamp_cases()
    good = indicator("198.51.100.33")
    researcher = session_for(RESEARCHER)
    for start in range(0, len(cases), 7):
        batch = [*cases[start : start + 7], good]
        status = status_of(post(researcher, inbox(taxii), {"objects": batch}))
        assert status["total_count"] == len(batch)
        for failure in status.get("failures", []):
            assert failure["message"], failure
    # Everything accepted can be read back by its recipient (no 500 on the read side either).
    url = taxii.collection_url(recipient_collection_id("gemeente-voorbeeld"))
    poller = session_for("gemeente-poller")
    for params in ({}, {"match[version]": "all"}, {"match[version]": "first"}):
        assert poller.get(url + "objects/", params=params).status_code == 200
        assert poller.get(url + "manifest/", params=params).status_code == 200
    operator = session_for("operator-1")
    assert operator.get(taxii.collection_url(inbox_collection_id(RESEARCHER)) + "objects/").status_code == 200


def test_timestamps_at_the_ends_of_the_calendar_never_fail_a_stix_file(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    cases = timestamp_cases()
    good = indicator("198.51.100.33")
    path = tmp_path / "times.json"
    path.write_bytes(
        orjson.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": [*cases, good]})
    )
    summary = ingestor.run(RESEARCHER, "stix", [path])
    assert summary.ok
    assert summary.counts["read"] == len(cases) + 1
    assert good["id"] in gemeente_ids(store)
    # Offsets and years outside 0001..9999 are not STIX timestamps: refused, each on its own.
    reasons = " ".join(r["reason"] for r in store.run_rows(summary.run_id))
    for case in cases:
        text = json.dumps(case)
        if "+01:00" in text or "-01:00" in text or "0000-01-01" in text or "10000-01-01" in text:
            assert case["id"] in reasons, case
