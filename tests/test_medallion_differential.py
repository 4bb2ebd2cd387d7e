"""Differential tests: our TAXII server against the OASIS reference server medallion 3.0.0.

Both peers hold the same 31 object versions in one collection: 28 indicators and one malware
object in 3 versions, which arrive out of order (v1, v3, v2). medallion is given the very
date_added values our store assigned, so both must order, filter and page identically.

Where the TAXII 2.1 specification (OASIS TAXII Version 2.1, OASIS Standard, June 2021) has one
answer, the two servers must agree. Where they differ, a test below names the section that
decides, asserts that our server gives the specification's answer, and pins medallion's
(documented) answer so this file stays true if either server changes.

Both peers are configured with a page size of at most 10, so paging is exercised everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.medallion_peer import (
    TAXII_MEDIA_TYPE,
    MedallionPeer,
    OurPeer,
    Peer,
    indicator,
    load_our_server,
    start_medallion,
)

PAGE = 10
MALWARE_ID = "malware--0a2b7d2c-3f1e-4c5a-9d8e-7b6a5c4d3e2f"
V1, V2, V3 = "2024-01-01T00:00:00.000Z", "2024-02-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z"
UNKNOWN_ID = "indicator--ffffffff-0000-4000-8000-ffffffffffff"
Json = dict[str, Any]


def malware(modified: str) -> Json:
    return {
        "type": "malware",
        "spec_version": "2.1",
        "id": MALWARE_ID,
        "created": V1,
        "modified": modified,
        "name": f"peer malware ({modified[:7]})",
        "is_family": False,
    }


def dataset() -> list[Json]:
    """28 indicators with the malware versions interleaved, arriving as v1, v3, v2."""
    out: list[Json] = []
    for n in range(28):
        out.append(indicator(n))
        if n == 4:
            out.append(malware(V1))
        elif n == 12:
            out.append(malware(V3))
        elif n == 20:
            out.append(malware(V2))
    return out


OBJECTS = dataset()
INDICATOR_IDS = {o["id"] for o in OBJECTS if o["type"] == "indicator"}
ALL_IDS = INDICATOR_IDS | {MALWARE_ID}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OurPeer, MedallionPeer]]:
    db: Path = tmp_path_factory.mktemp("differential") / "meldpunt.db"
    ours = load_our_server(OBJECTS, f"sqlite:///{db}", page_size_max=PAGE)
    try:
        medallion = start_medallion(
            OBJECTS,
            date_added=ours.date_added,
            collection_id=ours.collection_id,
            api_root=ours.api_root,
            max_page_size=PAGE,
            session_timeout=600,
        )
    except BaseException:
        ours.stop()
        raise
    try:
        yield ours, medallion
    finally:
        medallion.stop()
        ours.stop()


@pytest.fixture(scope="module")
def ours(peers: tuple[OurPeer, MedallionPeer]) -> OurPeer:
    return peers[0]


@pytest.fixture(scope="module")
def medallion(peers: tuple[OurPeer, MedallionPeer]) -> MedallionPeer:
    return peers[1]


# --- helpers --------------------------------------------------------------------------------


def parse_ts(value: str) -> datetime:
    """An RFC 3339 UTC timestamp of any precision: '...00.000Z' and '...00.000000Z' are equal."""
    head, _, frac = value.rstrip("Zz").partition(".")
    moment = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return moment.replace(microsecond=int((frac + "000000")[:6])) if frac else moment


def get(peer: Peer, path: str, params: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
    with peer.session() as s:
        return s.get(peer.collection_url + path, params=params, timeout=30, **kwargs)


def media_type(resp: requests.Response) -> str:
    """The Content-Type without spaces and with the type in lower case, for comparison."""
    kind, *params = [p.strip() for p in resp.headers.get("Content-Type", "").split(";")]
    return ";".join([kind.lower(), *sorted(p.replace(" ", "") for p in params if p)])


def pages(peer: Peer, path: str, params: dict[str, str] | None = None) -> list[requests.Response]:
    """Every page of a listing at limit=10, following `next` until `more` is false."""
    base = {**(params or {}), "limit": str(PAGE)}
    query = dict(base)
    out: list[requests.Response] = []
    for _ in range(50):
        resp = get(peer, path, query)
        assert resp.status_code == 200, f"{peer.name} {path} {query}: {resp.status_code} {resp.text[:300]}"
        out.append(resp)
        body = resp.json()
        if not body.get("more"):
            return out
        assert body.get("next"), f"{peer.name}: more is true but there is no next"
        query = {**base, "next": body["next"]}
    raise AssertionError(f"{peer.name}: paging did not end")


def listed_objects(peer: Peer, path: str = "objects/", params: dict[str, str] | None = None) -> list[tuple]:
    """(id, modified) of every object over all pages, in the order served."""
    out = []
    for resp in pages(peer, path, params):
        objects = resp.json().get("objects", [])
        assert len(objects) <= PAGE
        out += [(o["id"], parse_ts(o["modified"])) for o in objects]
    return out


def listed_manifest(peer: Peer, params: dict[str, str] | None = None) -> list[tuple]:
    out = []
    for resp in pages(peer, "manifest/", params):
        out += [
            (e["id"], parse_ts(e["version"]), parse_ts(e["date_added"]), e["media_type"])
            for e in resp.json().get("objects", [])
        ]
    return out


def date_headers(resp: requests.Response) -> tuple[datetime | None, datetime | None]:
    first = resp.headers.get("X-TAXII-Date-Added-First")
    last = resp.headers.get("X-TAXII-Date-Added-Last")
    return (parse_ts(first) if first else None, parse_ts(last) if last else None)


def is_taxii_error(resp: requests.Response, status: int) -> bool:
    """TAXII 2.1 section 3.6.1: an error message (title, http_status) as a TAXII body."""
    if resp.status_code != status or not media_type(resp).startswith("application/taxii+json"):
        return False
    body = resp.json()
    return isinstance(body.get("title"), str) and body.get("http_status") == str(status)


MEDALLION_CHANGED = "medallion no longer behaves as documented here: update this difference"


# --- where the specification has one answer, both servers must give it -------------------------


def test_all_objects_over_pages_agree(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 5.4 and 3.5.1: without match[version] only the latest version of each object,
    every object exactly once over all pages, in date_added order."""
    mine, theirs = listed_objects(ours), listed_objects(medallion)
    assert mine == theirs
    ids = [i for i, _ in mine]
    assert len(ids) == len(set(ids)) and set(ids) == ALL_IDS
    assert (MALWARE_ID, parse_ts(V3)) in mine


FILTER_CASES: list[tuple[dict[str, str], int]] = [
    ({"match[type]": "indicator"}, 28),
    ({"match[type]": "malware"}, 1),
    ({"match[type]": "malware,indicator"}, 29),
    ({"match[type]": "campaign"}, 0),
    ({"match[id]": indicator(7)["id"]}, 1),
    ({"match[id]": f"{indicator(3)['id']},{MALWARE_ID}"}, 2),
    ({"match[id]": UNKNOWN_ID}, 0),
    ({"match[id]": MALWARE_ID, "match[version]": "all"}, 3),
    ({"match[id]": MALWARE_ID, "match[version]": "first"}, 1),
    ({"match[id]": MALWARE_ID, "match[version]": "last"}, 1),
    ({"match[id]": MALWARE_ID, "match[version]": "first,last"}, 2),
    ({"match[id]": MALWARE_ID, "match[version]": V2}, 1),
    ({"match[id]": MALWARE_ID, "match[version]": "2024-02-01T00:00:00Z"}, 1),
    ({"match[version]": "all"}, 31),
    ({"match[version]": "first"}, 29),
    ({"match[type]": "malware", "match[version]": "all"}, 3),
    ({"match[spec_version]": "2.1"}, 29),
    ({"match[spec_version]": "2.0"}, 0),
]


@pytest.mark.parametrize(
    "params,count",
    FILTER_CASES,
    ids=["&".join(f"{k}={v[:24]}" for k, v in p.items()) for p, _ in FILTER_CASES],
)
def test_filters_agree(ours: OurPeer, medallion: MedallionPeer, params: dict[str, str], count: int) -> None:
    """TAXII 2.1 3.5 and 3.5.1 (match[type], match[id], match[version], match[spec_version]):
    the same objects, the same versions, in the same date_added order."""
    mine = listed_objects(ours, params=params)
    assert mine == listed_objects(medallion, params=params)
    assert len(mine) == count


@pytest.mark.parametrize(
    "version,expected", [("all", {V1, V2, V3}), ("first", {V1}), ("last", {V3}), ("first,last", {V1, V3})]
)
def test_object_endpoint_versions_agree(
    ours: OurPeer, medallion: MedallionPeer, version: str, expected: set[str]
) -> None:
    """TAXII 2.1 5.6 (Get an Object) with match[version] all / first / last: the versioned
    object arrived as v1, v3, v2; first and last are by `modified`, not by arrival."""
    path = f"objects/{MALWARE_ID}/"
    mine = listed_objects(ours, path, {"match[version]": version})
    assert mine == listed_objects(medallion, path, {"match[version]": version})
    assert {m for _, m in mine} == {parse_ts(v) for v in expected}


def test_added_after_agrees(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 3.4/5.4 added_after: only what was added strictly after the given time."""
    for position in (0, 9, 17, len(OBJECTS) - 2, len(OBJECTS) - 1):
        params = {"added_after": ours.date_added[position], "match[version]": "all"}
        mine = listed_objects(ours, params=params)
        assert mine == listed_objects(medallion, params=params)
        assert len(mine) == len(OBJECTS) - position - 1


def test_versions_endpoint_agrees(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 5.8 (Get Object Versions): the same three versions (order: see below)."""
    path = f"objects/{MALWARE_ID}/versions/"
    mine, theirs = get(ours, path), get(medallion, path)
    assert mine.status_code == theirs.status_code == 200
    assert media_type(mine) == media_type(theirs) == TAXII_MEDIA_TYPE
    assert mine.json()["more"] is theirs.json()["more"] is False
    as_set = [sorted(parse_ts(v) for v in r.json()["versions"]) for r in (mine, theirs)]
    assert as_set[0] == as_set[1] == sorted(parse_ts(v) for v in (V1, V2, V3))
    assert date_headers(mine) == date_headers(theirs)


@pytest.mark.parametrize("params", [{}, {"match[version]": "all"}, {"match[type]": "malware"}])
def test_manifest_agrees(ours: OurPeer, medallion: MedallionPeer, params: dict[str, str]) -> None:
    """TAXII 2.1 5.3 (Get Object Manifests): the same ids, versions, date_added and media types."""
    mine = listed_manifest(ours, params)
    assert mine == listed_manifest(medallion, params)
    assert {e[0] for e in mine} == ({MALWARE_ID} if params.get("match[type]") else ALL_IDS)


@pytest.mark.parametrize("path", [f"objects/{UNKNOWN_ID}/", f"objects/{UNKNOWN_ID}/versions/"])
def test_unknown_object_is_404_on_both(ours: OurPeer, medallion: MedallionPeer, path: str) -> None:
    """TAXII 2.1 5.6 and 5.8: 404 Not Found for an object that is not in the collection."""
    assert get(ours, path).status_code == get(medallion, path).status_code == 404


@pytest.mark.parametrize(
    "path", ["objects/", f"objects/{MALWARE_ID}/", f"objects/{MALWARE_ID}/versions/", "manifest/", ""]
)
def test_content_type_agrees(ours: OurPeer, medallion: MedallionPeer, path: str) -> None:
    """TAXII 2.1 media types: every TAXII answer is application/taxii+json;version=2.1."""
    mine, theirs = get(ours, path), get(medallion, path)
    assert mine.status_code == theirs.status_code == 200
    assert media_type(mine) == media_type(theirs) == TAXII_MEDIA_TYPE


def test_date_added_headers_agree(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 X-TAXII-Date-Added-First/-Last headers (3.4): the date_added of the first and last
    object of each page."""
    for params in ({}, {"match[version]": "all"}, {"added_after": ours.date_added[3]}):
        mine, theirs = pages(ours, "objects/", params), pages(medallion, "objects/", params)
        assert [date_headers(r) for r in mine] == [date_headers(r) for r in theirs]
        assert all(None not in date_headers(r) for r in mine)


def test_limit_above_maximum_is_capped_on_both(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 3.4: a server answers at most its own maximum page size, with more=true."""
    bodies = [get(p, "objects/", {"limit": "1000"}).json() for p in (ours, medallion)]
    assert [len(b["objects"]) for b in bodies] == [PAGE, PAGE]
    assert [b["more"] for b in bodies] == [True, True]
    assert [o["id"] for o in bodies[0]["objects"]] == [o["id"] for o in bodies[1]["objects"]]


def test_exact_page_has_more_false_on_both(ours: OurPeer, medallion: MedallionPeer) -> None:
    """`more` is false when the page holds exactly what is left (no empty trailing page)."""
    params = {"added_after": ours.date_added[len(OBJECTS) - PAGE - 1], "match[version]": "all"}
    for peer in (ours, medallion):
        body = get(peer, "objects/", {**params, "limit": str(PAGE)}).json()
        assert len(body["objects"]) == PAGE and body["more"] is False, peer.name


@pytest.mark.parametrize(
    "limit",
    [
        "0",
        "-1",
        "abc",
        "1.5",
        "\u00b2",  # SUPERSCRIPT TWO: str.isdigit() is true but int() refuses it (was a 500)
    ],
)
def test_invalid_limit_is_400_on_both(ours: OurPeer, medallion: MedallionPeer, limit: str) -> None:
    """TAXII 2.1 5.4 error codes: 400, the server did not understand the filter parameters."""
    assert get(ours, "objects/", {"limit": limit}).status_code == 400
    assert get(medallion, "objects/", {"limit": limit}).status_code == 400


def test_next_with_other_filters_is_400_on_both(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 3.4: `next` continues the original query, with the same query options."""
    for peer in (ours, medallion):
        token = get(peer, "objects/", {"limit": "5"}).json()["next"]
        resp = get(peer, "objects/", {"limit": "5", "next": token, "match[type]": "malware"})
        assert resp.status_code == 400, peer.name


@pytest.mark.parametrize("accept", ["application/json", "application/taxii+json;version=2.0"])
def test_unacceptable_media_type_is_406_on_both(ours: OurPeer, medallion: MedallionPeer, accept: str) -> None:
    """TAXII 2.1 content negotiation: 406 Not Acceptable for a media type it does not serve."""
    for peer in (ours, medallion):
        assert get(peer, "objects/", headers={"Accept": accept}).status_code == 406, peer.name


def test_missing_credentials_and_unknown_collection_agree(ours: OurPeer, medallion: MedallionPeer) -> None:
    """TAXII 2.1 authentication and 5.2: 401 without credentials, 404 for an unknown collection."""
    for peer in (ours, medallion):
        resp = requests.get(
            peer.collection_url + "objects/", headers={"Accept": TAXII_MEDIA_TYPE}, timeout=30
        )
        assert resp.status_code == 401, peer.name
        with peer.session() as s:
            other = f"{peer.api_root_url}collections/00000000-0000-4000-8000-000000000000/objects/"
            assert s.get(other, timeout=30).status_code == 404, peer.name


# --- where they differ: what the specification says, and that ours says it ----------------------


def test_empty_result_envelope(ours: OurPeer, medallion: MedallionPeer) -> None:
    """An empty result. TAXII 2.1 3.7 (Envelope): `more` is optional and its absence means
    false; `objects`, when present, holds one or more objects; `next` only with more content.
    So both `{}` (medallion) and `{"more": false}` (ours) conform. Ours states `more`
    explicitly (as medallion itself does on non-empty pages) and never sends an empty list;
    the same holds for the manifest (5.3) and versions (5.8) resources."""
    for path, params in (
        ("objects/", {"match[type]": "campaign"}),
        ("manifest/", {"match[id]": UNKNOWN_ID}),
        (f"objects/{MALWARE_ID}/versions/", {"added_after": ours.date_added[-1]}),
        (f"objects/{MALWARE_ID}/", {"added_after": ours.date_added[-1]}),
    ):
        mine, theirs = get(ours, path, params), get(medallion, path, params)
        assert mine.status_code == theirs.status_code == 200, path
        assert mine.json() == {"more": False}, path
        assert theirs.json() == {}, MEDALLION_CHANGED
        assert mine.headers.get("X-TAXII-Date-Added-First") is None


@pytest.mark.parametrize(
    "name,value",
    [
        ("added_after", "yesterday"),
        ("added_after", "2024-06-01"),
        ("added_after", "2024-06-01T00:00:00"),
        ("match[version]", "yesterday"),
    ],
)
def test_malformed_timestamp_is_400(ours: OurPeer, medallion: MedallionPeer, name: str, value: str) -> None:
    """A malformed added_after or match[version] timestamp. TAXII 2.1 5.4 (error status codes):
    400 Bad Request, "the server did not understand the request or filter parameters", with
    an error message (3.6.1) as the body; added_after and version values are TAXII timestamps
    (RFC 3339, UTC). medallion 3.0.0 lets strptime's ValueError escape: 500 with an HTML page
    (filters/basic_filter.py filter_by_added_after / filter_by_version)."""
    mine = get(ours, "objects/", {name: value})
    assert is_taxii_error(mine, 400), mine.text[:300]
    theirs = get(medallion, "objects/", {name: value})
    assert theirs.status_code == 500 and "text/html" in theirs.headers["Content-Type"], MEDALLION_CHANGED


def test_added_after_with_first_or_last(ours: OurPeer, medallion: MedallionPeer) -> None:
    """added_after together with match[version]=first or last, on the object that arrived as
    v1, v3, v2. TAXII 2.1 3.5/3.5.1: `last` is the latest version of an object, `first` its
    earliest, and the URL filters all apply together. After v3 arrived and before v2 did,
    nothing new is the latest version (v2 is older than v3), so ours returns no malware;
    medallion applies added_after first and then picks the "last" of what is left, so it
    serves the superseded v2 as if it were the latest, and v2 as the "first" version too.
    A poller that keeps the newest object per id would replace v3 by v2 there."""
    between_v3_and_v2 = ours.date_added[17]
    between_v1_and_v3 = ours.date_added[10]
    for after, version, expected in (
        (between_v3_and_v2, "last", []),
        (between_v3_and_v2, "first", []),
        (between_v1_and_v3, "first", []),
        (between_v1_and_v3, "last", [V3]),  # here both agree
    ):
        params = {"added_after": after, "match[version]": version, "match[type]": "malware"}
        mine = listed_objects(ours, params=params)
        assert mine == [(MALWARE_ID, parse_ts(v)) for v in expected], (after, version)
        theirs = listed_objects(medallion, params=params)
        want = [(MALWARE_ID, parse_ts(V3 if expected else V2))]
        assert theirs == want, MEDALLION_CHANGED
    path = f"objects/{MALWARE_ID}/"
    assert get(ours, path, {"added_after": between_v3_and_v2}).json() == {"more": False}
    theirs = get(medallion, path, {"added_after": between_v3_and_v2}).json()
    assert [o["modified"] for o in theirs["objects"]] == [V2], MEDALLION_CHANGED


def test_added_after_with_nanoseconds(ours: OurPeer, medallion: MedallionPeer) -> None:
    """A valid timestamp with more than six fractional digits. TAXII timestamps are RFC 3339
    with one or more sub-second digits, so this is a valid added_after and must be served
    (microsecond date_added: the extra digits cannot change the result). medallion parses
    with strptime's %f (at most 6 digits): 500."""
    exact = ours.date_added[9]
    longer = exact[:-1] + "000Z"  # ...123456000Z: the same instant, nine digits
    mine = listed_objects(ours, params={"added_after": longer})
    assert mine == listed_objects(ours, params={"added_after": exact})
    assert mine == listed_objects(medallion, params={"added_after": exact})
    assert get(medallion, "objects/", {"added_after": longer}).status_code == 500, MEDALLION_CHANGED


def test_next_token_is_safe_to_repeat(ours: OurPeer, medallion: MedallionPeer) -> None:
    """Repeating a `next` request. TAXII 2.1 3.4 lets a client continue a query with `next`;
    TAXII runs over HTTP, where GET is safe and idempotent (RFC 7231 4.2.1/4.2.2, a normative
    reference of TAXII 2.1): asking again (a lost response, a retry) must give the same page.
    medallion keeps a server-side snapshot and pops a page from it on every request, so a
    retried `next` silently skips a page, and the token disappears after the last page."""
    mine = get(ours, "objects/", {"limit": "5"}).json()["next"]
    first = get(ours, "objects/", {"limit": "5", "next": mine})
    again = get(ours, "objects/", {"limit": "5", "next": mine})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()

    theirs = get(medallion, "objects/", {"limit": "5"}).json()["next"]
    one = get(medallion, "objects/", {"limit": "5", "next": theirs}).json()
    two = get(medallion, "objects/", {"limit": "5", "next": theirs}).json()
    assert [o["id"] for o in one["objects"]] != [o["id"] for o in two["objects"]], MEDALLION_CHANGED
    assert [o["id"] for o in one["objects"]] == [o["id"] for o in first.json()["objects"]]


def test_next_token_without_limit(ours: OurPeer, medallion: MedallionPeer) -> None:
    """Continuing with `next` and no `limit` (limit is optional everywhere, TAXII 2.1 3.4 and
    5.4): the original query had no limit, so neither has its continuation. Ours serves the
    next page at the default size; medallion 3.0.0 answers 500 (KeyError on 'limit' in
    MemoryBackend.get_next)."""
    first = get(ours, "objects/").json()
    assert first["more"] is True and len(first["objects"]) == PAGE
    rest = get(ours, "objects/", {"next": first["next"]})
    assert rest.status_code == 200 and len(rest.json()["objects"]) == PAGE

    token = get(medallion, "objects/").json()["next"]
    assert get(medallion, "objects/", {"next": token}).status_code == 500, MEDALLION_CHANGED


def test_error_bodies_are_taxii_error_messages(ours: OurPeer, medallion: MedallionPeer) -> None:
    """401 without credentials. TAXII 2.1 3.6.1: an error answer carries an error message
    (title, http_status, ...) in the TAXII media type. Ours does; medallion's Flask-HTTPAuth
    answers text/html "Unauthorized Access"."""
    url = "objects/"
    mine = requests.get(ours.collection_url + url, headers={"Accept": TAXII_MEDIA_TYPE}, timeout=30)
    assert is_taxii_error(mine, 401) and "WWW-Authenticate" in mine.headers
    theirs = requests.get(medallion.collection_url + url, headers={"Accept": TAXII_MEDIA_TYPE}, timeout=30)
    assert theirs.status_code == 401 and not is_taxii_error(theirs, 401), MEDALLION_CHANGED


def test_versions_order_and_version_spelling(ours: OurPeer, medallion: MedallionPeer) -> None:
    """Two differences the specification leaves open, documented.

    Order of the versions list (5.8): the spec fixes none. medallion sorts each page newest
    `modified` first; ours lists in date_added order, the order its X-TAXII-Date-Added-First
    and -Last headers and `added_after` paging (3.4) describe, so a page's headers name its
    first and last entries.

    Spelling of a version (5.3 manifest `version`, 5.8): a TAXII timestamp, i.e. RFC 3339 in
    UTC with any fractional precision. medallion echoes the object's `modified` text
    ("...00.000Z"); ours normalises to microseconds ("...00.000000Z"): the same instant, and
    match[version] accepts either spelling on both servers (test_filters_agree)."""
    path = f"objects/{MALWARE_ID}/versions/"
    mine = get(ours, path).json()["versions"]
    theirs = get(medallion, path).json()["versions"]
    assert [parse_ts(v) for v in mine] == [parse_ts(v) for v in (V1, V3, V2)]  # arrival order
    assert theirs == [V3, V2, V1], MEDALLION_CHANGED
    assert all(v.endswith("Z") and len(v) == len("2024-01-01T00:00:00.000000Z") for v in mine)
