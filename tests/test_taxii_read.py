"""The TAXII 2.1 read path, end to end over HTTP, on SQLite and PostgreSQL.

Positive paths go through the real `taxii2client.v21` client, so the server is proven to work
with the client recipients actually use; negative cases use raw `requests`, so each status
code, header and error body is seen exactly as the server sent it.

Nothing the server computes is used as its own oracle: which hosts each recipient must see is
derived here by brute force from the sample file and the configured networks (Python's
`ipaddress`, no radix tree), and every page is checked against a single big page or the
manifest rather than against fixed numbers.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from taxii2client.exceptions import AccessError
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from connector.collections import inbox_collection_id, recipient_collection_id
from connector.config import Config, ConfigError, UserConfig, load_config
from connector.ingest import Ingestor
from tests.conftest import DIVD_SCAN, SAMPLE_CONFIG, RunningServer, divd_scan_as, password_for, start_server

# The media types are spelled out from the TAXII 2.1 specification on purpose: importing the
# server's constants would let a typo there pass unnoticed.
TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
STIX_MEDIA_TYPE = "application/stix+json;version=2.1"
DATE_FIRST = "X-TAXII-Date-Added-First"
DATE_LAST = "X-TAXII-Date-Added-Last"
CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
SMALL_PAGE = 5
# The extension of the standard TLP 2.0 marking definitions (STIX 2.1 section 7.2.1.4 and the
# OASIS TLP 2.0 objects): well known, never shipped in a collection, so it need not resolve.
TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Json = dict[str, Any]


# --- credentials and HTTP helpers ----------------------------------------------------------


def session_for(username: str | None) -> requests.Session:
    """A keep-alive session with the user's test credentials (None: no credentials at all).

    trust_env is off so that a proxy or a ~/.netrc on the test machine cannot add or change
    credentials behind the test's back.
    """
    s = requests.Session()
    s.trust_env = False
    s.headers["Accept"] = TAXII_MEDIA_TYPE
    if username is not None:
        s.auth = (username, password_for(username))
    return s


def assert_taxii_error(resp: requests.Response, status: int) -> Json:
    """The status, and a TAXII 2.1 error message (section 3.6.1) as the body, never a stack."""
    assert resp.status_code == status, f"{resp.request.url}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE
    body = resp.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("title"), str) and body["title"], body
    assert body.get("http_status") == str(status), body
    assert "objects" not in body and "versions" not in body, body
    return body


def parse_ts(value: str) -> datetime:
    """An RFC 3339 UTC timestamp of any precision, so '...409Z' and '...409000Z' compare equal."""
    head, _, frac = value.rstrip("Zz").partition(".")
    moment = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return moment.replace(microsecond=int((frac + "000000")[:6])) if frac else moment


def objects_of(body: Json) -> list[Json]:
    """A TAXII envelope's objects; the key is omitted when there are none (section 3.7)."""
    return list(body.get("objects", []))


@contextmanager
def taxii_collection(taxii: RunningServer, username: str, collection_id: str) -> Iterator[Collection]:
    with Collection(
        taxii.collection_url(collection_id), user=username, password=password_for(username)
    ) as coll:
        yield coll


def poll_with_client(
    taxii: RunningServer, username: str, collection_id: str, per_request: int = SMALL_PAGE, **filters: Any
) -> list[Json]:
    """Everything in a collection the way a recipient's poller reads it: taxii2client pages."""
    out: list[Json] = []
    with taxii_collection(taxii, username, collection_id) as coll:
        for envelope in as_pages(coll.get_objects, per_request=per_request, **filters):
            assert len(objects_of(envelope)) <= per_request
            out.extend(objects_of(envelope))
    return out


def raw_pages(
    session: requests.Session, url: str, params: dict[str, Any], max_pages: int = 1000
) -> list[requests.Response]:
    """Follow `next` until `more` is false; every response is kept for header checks."""
    pages: list[requests.Response] = []
    query = dict(params)
    for _ in range(max_pages):
        resp = session.get(url, params=query)
        assert resp.status_code == 200, resp.text[:300]
        pages.append(resp)
        body = resp.json()
        if not body["more"]:
            return pages
        query = {**params, "next": body["next"]}
    raise AssertionError(f"paging did not end within {max_pages} pages")


def manifest_dates(session: requests.Session, taxii: RunningServer, collection_id: str) -> dict[str, str]:
    """id -> date_added from a single manifest page (asserted complete)."""
    resp = session.get(
        taxii.collection_url(collection_id) + "manifest/", params={"limit": taxii.config.server.page_size_max}
    )
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    assert body["more"] is False, "the sample must fit one maximal page"
    return {e["id"]: e["date_added"] for e in body["objects"]}


# --- configuration-derived facts --------------------------------------------------------------


def all_collection_ids(config: Config) -> list[str]:
    return [recipient_collection_id(r.id) for r in config.recipients] + [
        inbox_collection_id(p.id) for p in config.partners
    ]


def reading_users(config: Config) -> list[UserConfig]:
    """Pollers of one recipient (operators, who read everything, are not recipients)."""
    return [u for u in config.users if u.recipient and not u.operator]


def inbox_only_users(config: Config) -> list[UserConfig]:
    return [u for u in config.users if u.inbox and not u.recipient and not u.operator]


def readable_by(u: UserConfig, config: Config) -> set[str]:
    """What the configuration says a user may read: its recipient's collection; all for operators."""
    if u.operator:
        return set(all_collection_ids(config))
    return {recipient_collection_id(u.recipient)} if u.recipient else set()


def writable_by(u: UserConfig) -> set[str]:
    """Its partner's inbox; and its recipient's collection, which takes its feedback (opinions
    and notes on its notifications, docs/feedback.md)."""
    out = {inbox_collection_id(u.inbox)} if u.inbox else set()
    if u.recipient:
        out.add(recipient_collection_id(u.recipient))
    return out


# --- brute-force expectation from the sample ------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One vulnerable host as the sample states it, read without the project's adapter."""

    ip: IPAddress
    port: str
    hostname: str | None
    cve: str
    day: str


def _cve_of(record: Json) -> str | None:
    info = record.get("info") if isinstance(record.get("info"), dict) else {}
    classification = info.get("classification") or {}
    for candidate in [*(classification.get("cve-id") or []), record.get("template-id", "")]:
        if isinstance(candidate, str) and CVE_RE.fullmatch(candidate):
            return candidate.upper()
    return None


def _hostname(url: str) -> str | None:
    host = requests.utils.urlparse(url).hostname
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    return None


def sample_findings(path: Path = DIVD_SCAN) -> list[Finding]:
    """Lines that are JSON, have a valid IP, a CVE template and a severity other than info."""
    out: list[Finding] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or (record.get("info") or {}).get("severity") == "info":
            continue
        cve = _cve_of(record)
        try:
            ip = ipaddress.ip_address(str(record.get("ip", "")))
        except ValueError:
            continue
        if cve is None:
            continue
        day = datetime.fromisoformat(record["timestamp"]).astimezone(UTC).date().isoformat()
        out.append(Finding(ip, str(record.get("port", "")), _hostname(str(record.get("host", ""))), cve, day))
    return out


def owner_by_brute_force(ip: IPAddress, config: Config) -> str | None:
    """The recipient with the longest configured prefix containing ip, tried one by one."""
    best: tuple[int, str] | None = None
    for r in config.recipients:
        for net in r.constituency.networks:
            network = ipaddress.ip_network(str(net))
            if (
                network.version == ip.version
                and ip in network
                and (best is None or network.prefixlen > best[0])
            ):
                best = (network.prefixlen, r.id)
    return best[1] if best else None


def receivers(owner: str, config: Config) -> list[str]:
    """The owner, then each parent for as long as the child has deliver_to_parent set."""
    by_id = {r.id: r for r in config.recipients}
    out, current = [owner], by_id[owner]
    while current.parent and current.deliver_to_parent and current.parent not in out:
        current = by_id[current.parent]
        out.append(current.id)
    return out


def expected_findings(config: Config) -> dict[str, set[Finding]]:
    """recipient id -> the findings its collection must hold (and no others)."""
    out: dict[str, set[Finding]] = {r.id: set() for r in config.recipients}
    for finding in sample_findings():
        owner = owner_by_brute_force(finding.ip, config)
        if owner is None:
            # The brute force follows addresses only; that is complete only while no unclaimed
            # host carries a host name under a configured domain (the router's fallback).
            claimed = [d for r in config.recipients for d in r.constituency.domains]
            host = finding.hostname or ""
            assert not any(host == d or host.endswith("." + d) for d in claimed), finding
            continue
        for rid in receivers(owner, config):
            out[rid].add(finding)
    return out


# --- STIX graph helpers -----------------------------------------------------------------------


def references(value: Any) -> set[str]:
    """Every id an object points at: *_ref and *_refs at any depth, and the ids of the
    extensions it uses (except the well-known TLP 2.0 one)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_ref") and isinstance(item, str):
                found.add(item)
            elif key.endswith("_refs") and isinstance(item, list):
                found.update(x for x in item if isinstance(x, str))
            elif key == "extensions" and isinstance(item, dict):
                found.update(
                    k for k in item if k.startswith("extension-definition--") and k != TLP2_EXTENSION_ID
                )
            found |= references(item)
    elif isinstance(value, list):
        for item in value:
            found |= references(item)
    return found


def address_values(objects: list[Json]) -> set[IPAddress]:
    return {ipaddress.ip_address(o["value"]) for o in objects if o["type"] in ("ipv4-addr", "ipv6-addr")}


def sighted_addresses(objects: list[Json]) -> dict[str, set[IPAddress]]:
    """sighting id -> addresses reached through observed_data_refs -> object_refs."""
    by_id = {o["id"]: o for o in objects}
    out: dict[str, set[IPAddress]] = {}
    for s in (o for o in objects if o["type"] == "sighting"):
        refs = [r for od in s["observed_data_refs"] for r in by_id[od]["object_refs"]]
        out[s["id"]] = {
            ipaddress.ip_address(by_id[r]["value"])
            for r in refs
            if by_id[r]["type"] in ("ipv4-addr", "ipv6-addr")
        }
    return out


# ==============================================================================================
# 1. Discovery and API root
# ==============================================================================================


def test_discovery_and_api_root_through_taxii2client(taxii: RunningServer) -> None:
    """Every user finds the one API root and its TAXII 2.1 version with the stock client."""
    server_cfg = taxii.config.server
    for u in taxii.config.users:
        with Server(f"{taxii.url}/taxii2/", user=u.username, password=password_for(u.username)) as srv:
            assert srv.title == server_cfg.title
            assert [r.url for r in srv.api_roots] == [taxii.api_root]
            assert srv.default is not None and srv.default.url == taxii.api_root
        with ApiRoot(taxii.api_root, user=u.username, password=password_for(u.username)) as root:
            assert isinstance(root.title, str) and root.title
            assert TAXII_MEDIA_TYPE in root.versions
            assert root.max_content_length == server_cfg.max_content_length


def test_discovery_and_api_root_content_type_is_exactly_taxii_21(taxii: RunningServer) -> None:
    """Clients match the media type literally; a charset or a 2.0 type would break them."""
    s = session_for(taxii.config.users[0].username)
    for url in (f"{taxii.url}/taxii2/", taxii.api_root, taxii.api_root + "collections/"):
        resp = s.get(url)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE
    assert_taxii_error(s.get(f"{taxii.url}/no-such-root/"), 404)


# ==============================================================================================
# 2. Collections per user
# ==============================================================================================


def test_each_user_lists_exactly_its_own_collections(taxii: RunningServer) -> None:
    """A recipient's poller sees one readable collection; the researcher only its inbox."""
    for u in taxii.config.users:
        with ApiRoot(taxii.api_root, user=u.username, password=password_for(u.username)) as root:
            seen = {c.id: c for c in root.collections}
        readable = readable_by(u, taxii.config)
        assert set(seen) == readable | writable_by(u), u.username
        for cid, coll in seen.items():
            assert coll.can_read is (cid in readable), (u.username, cid)
            assert coll.can_write is (cid in writable_by(u)), (u.username, cid)
            assert STIX_MEDIA_TYPE in coll.media_types


def test_researcher_sees_only_the_write_only_inbox(taxii: RunningServer) -> None:
    """An inbox-only user (researcher-1) may submit to its inbox but read nothing, not even
    that inbox."""
    researchers = inbox_only_users(taxii.config)
    assert "researcher-1" in {u.username for u in researchers}
    for researcher in researchers:
        inbox = inbox_collection_id(researcher.inbox or "")
        with ApiRoot(
            taxii.api_root, user=researcher.username, password=password_for(researcher.username)
        ) as root:
            collections = root.collections
        assert [(c.id, c.can_read, c.can_write) for c in collections] == [(inbox, False, True)]
        with taxii_collection(taxii, researcher.username, inbox) as coll, pytest.raises(AccessError):
            coll.get_objects()  # the client itself refuses: can_read is false


# ==============================================================================================
# 3. What each recipient receives
# ==============================================================================================


def _check_collection_graph(username: str, objects: list[Json]) -> None:
    ids = Counter(o["id"] for o in objects)
    assert not [i for i, n in ids.items() if n > 1], f"{username}: duplicate ids"
    sightings = [o for o in objects if o["type"] == "sighting"]
    assert sightings, username
    for s in sightings:
        for key in ("observed_data_refs", "where_sighted_refs", "object_marking_refs"):
            assert s.get(key), (username, s["id"], key)
        assert s.get("sighting_of_ref") and s.get("created_by_ref"), (username, s["id"])
    dangling = {(o["id"], r) for o in objects for r in references(o) if r not in ids}
    assert not dangling, f"{username}: references leaving the collection: {sorted(dangling)[:5]}"


def test_each_recipient_receives_exactly_its_hosts(taxii: RunningServer) -> None:
    """Polled in small pages with taxii2client, each collection holds exactly the hosts the
    brute force assigns, every reference resolves inside it, and shared sightings occur only
    where both recipients are entitled to the host."""
    expected = expected_findings(taxii.config)
    assert any(expected.values()), "the sample must route to somebody"
    polled: dict[str, list[Json]] = {}
    for u in reading_users(taxii.config):
        rid = u.recipient or ""
        objects = poll_with_client(taxii, u.username, recipient_collection_id(rid))
        polled[rid] = objects
        _check_collection_graph(u.username, objects)
        want = {f.ip for f in expected[rid]}
        assert address_values(objects) == want, u.username
        sighted = sighted_addresses(objects)
        assert set().union(*sighted.values()) == want, u.username
        assert all(len(ips) == 1 for ips in sighted.values()), u.username
        keys = {(f.ip, f.port, f.cve, f.day) for f in expected[rid]}
        assert len(sighted) == len(keys), u.username
        names = {o["value"] for o in objects if o["type"] == "domain-name"}
        assert names == {f.hostname for f in expected[rid] if f.hostname}, u.username
    addresses = {rid: sighted_addresses(objects) for rid, objects in polled.items()}
    for a, b in ((a, b) for a in addresses for b in addresses if a < b):
        for sid in addresses[a].keys() & addresses[b].keys():
            ips = addresses[a][sid]
            assert ips <= {f.ip for f in expected[a]} & {f.ip for f in expected[b]}, (a, b, sid)


# ==============================================================================================
# 4. Access matrix
# ==============================================================================================

ENDPOINTS = {
    "collection": "",
    "objects": "objects/",
    "manifest": "manifest/",
    "object": "objects/{oid}/",
    "versions": "objects/{oid}/versions/",
}


def _real_objects(taxii: RunningServer) -> dict[str, str]:
    """A real sighting id in each recipient collection, read by that recipient's own user."""
    out: dict[str, str] = {}
    for u in reading_users(taxii.config):
        cid = recipient_collection_id(u.recipient or "")
        params = {"match[type]": "sighting", "limit": 1}
        body = session_for(u.username).get(taxii.collection_url(cid) + "objects/", params=params).json()
        out[cid] = objects_of(body)[0]["id"]
    return out


def _expected_status(u: UserConfig, config: Config, cid: str, endpoint: str, real: bool) -> int:
    """From the configuration alone: read your own, see (not read) your inbox, nothing else."""
    if cid in readable_by(u, config):
        return 404 if endpoint in ("object", "versions") and not real else 200
    if cid in writable_by(u):
        return 200 if endpoint == "collection" else 403
    return 404


def _check_allowed(resp: requests.Response, endpoint: str, cid: str, oid: str) -> None:
    assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE
    body = resp.json()
    if endpoint == "collection":
        assert body["id"] == cid
        return
    assert isinstance(body["more"], bool)
    if endpoint == "object":
        assert [o["id"] for o in objects_of(body)] == [oid]
    elif endpoint == "versions":
        assert body["versions"]


def test_access_matrix_every_user_every_collection_every_endpoint(taxii: RunningServer) -> None:
    """Deny by default: only a user's own collection answers; anything else is
    indistinguishable from a collection that does not exist, so ids leak nothing."""
    real = _real_objects(taxii)
    made_up = f"sighting--{uuid.uuid4()}"
    nowhere = str(uuid.uuid4())
    for u in taxii.config.users:
        s = session_for(u.username)
        visible = readable_by(u, taxii.config) | writable_by(u)
        for cid in all_collection_ids(taxii.config):
            oid = real.get(cid, made_up)
            for endpoint, path in ENDPOINTS.items():
                suffix = path.format(oid=oid)
                resp = s.get(taxii.collection_url(cid) + suffix)
                status = _expected_status(u, taxii.config, cid, endpoint, cid in real)
                where = (u.username, cid, endpoint)
                if status == 200:
                    assert resp.status_code == 200, (where, resp.text[:300])
                    _check_allowed(resp, endpoint, cid, oid)
                    continue
                body = assert_taxii_error(resp, status)
                if cid not in visible:
                    absent = s.get(taxii.collection_url(nowhere) + suffix)
                    assert body == assert_taxii_error(absent, 404), where


def test_other_users_collection_is_not_found_through_taxii2client(taxii: RunningServer) -> None:
    """The stock client, given another recipient's collection URL, gets an HTTP 404."""
    users = reading_users(taxii.config)
    for a in users:
        for b in (b for b in users if b.recipient != a.recipient):
            with (
                taxii_collection(taxii, a.username, recipient_collection_id(b.recipient or "")) as c,
                pytest.raises(requests.HTTPError) as err,
            ):
                c.get_objects()
            assert err.value.response is not None and err.value.response.status_code == 404


# ==============================================================================================
# 5. Authentication (the server sleeps with back-off on failures: few failing requests here)
# ==============================================================================================


def test_authentication_failures_are_401_with_a_challenge(taxii: RunningServer) -> None:
    """No, wrong, unknown or malformed credentials: 401 with a Basic challenge, never data."""
    url = taxii.api_root + "collections/"
    known = taxii.config.users[0].username
    anonymous = session_for(None)
    wrong = session_for(None)
    wrong.auth = (known, password_for(known) + "x")
    unknown = session_for(None)
    unknown.auth = ("nobody-" + uuid.uuid4().hex[:8], password_for(known))
    cases: list[tuple[requests.Session, dict[str, str]]] = [
        (anonymous, {}),
        (wrong, {}),
        (unknown, {}),
        (anonymous, {"Authorization": "Basic !!not-base64!!"}),
    ]
    for s, headers in cases:
        resp = s.get(url, headers=headers)
        assert_taxii_error(resp, 401)
        assert resp.headers.get("WWW-Authenticate", "").lower().startswith("basic"), resp.headers
    # The right password still works afterwards (and resets this client's back-off).
    assert session_for(known).get(url).status_code == 200


# ==============================================================================================
# 6. Pagination
# ==============================================================================================


def _largest_reader(taxii: RunningServer) -> tuple[UserConfig, str]:
    """The reading user with the largest collection, so paging has several pages."""
    expected = expected_findings(taxii.config)
    u = max(reading_users(taxii.config), key=lambda x: len(expected[x.recipient or ""]))
    return u, recipient_collection_id(u.recipient or "")


def test_paging_with_limit_covers_one_big_page_exactly(taxii: RunningServer) -> None:
    """limit=3 pages, followed through `next`, are the single big page split up: same order,
    no gaps, no repeats; `next` iff more; the date headers bracket each page."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    whole = s.get(url, params={"limit": taxii.config.server.page_size_max}).json()
    assert whole["more"] is False and "next" not in whole
    everything = [o["id"] for o in objects_of(whole)]
    assert len(everything) > 3 * 2, "need several pages"
    dates = manifest_dates(s, taxii, cid)
    pages = raw_pages(s, url, {"limit": 3})
    paged: list[str] = []
    for i, resp in enumerate(pages):
        body = resp.json()
        ids = [o["id"] for o in objects_of(body)]
        assert ("next" in body) is body["more"] is (i < len(pages) - 1)
        assert (len(ids) == 3) if body["more"] else (1 <= len(ids) <= 3), i
        first, last = parse_ts(resp.headers[DATE_FIRST]), parse_ts(resp.headers[DATE_LAST])
        assert (first, last) == (parse_ts(dates[ids[0]]), parse_ts(dates[ids[-1]])), i
        assert first <= last
        paged += ids
    assert len(paged) == len(set(paged))
    assert paged == everything


def test_added_after_last_date_of_page_one_returns_the_rest(taxii: RunningServer) -> None:
    """The documented incremental poll: added_after = X-TAXII-Date-Added-Last of a page
    continues exactly where that page ended."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    big = {"limit": taxii.config.server.page_size_max}
    everything = [o["id"] for o in objects_of(s.get(url, params=big).json())]
    first = s.get(url, params={"limit": 3})
    assert [o["id"] for o in objects_of(first.json())] == everything[:3]
    rest = s.get(url, params={**big, "added_after": first.headers[DATE_LAST]})
    assert [o["id"] for o in objects_of(rest.json())] == everything[3:]


def test_next_token_is_bound_to_user_collection_and_query(taxii: RunningServer) -> None:
    """A token is refused (400, no objects) when replayed by another user on that user's
    collection, when altered, or with another filter: never somebody else's objects."""
    a, cid_a = _largest_reader(taxii)
    b = next(x for x in reading_users(taxii.config) if x.recipient != a.recipient)
    cid_b = recipient_collection_id(b.recipient or "")
    sa, sb = session_for(a.username), session_for(b.username)
    page = sa.get(taxii.collection_url(cid_a) + "objects/", params={"limit": 3}).json()
    token = page["next"]
    assert (
        sa.get(taxii.collection_url(cid_a) + "objects/", params={"limit": 3, "next": token}).status_code
        == 200
    )
    assert_taxii_error(
        sb.get(taxii.collection_url(cid_b) + "objects/", params={"limit": 3, "next": token}), 400
    )
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    assert_taxii_error(
        sa.get(taxii.collection_url(cid_a) + "objects/", params={"limit": 3, "next": tampered}), 400
    )
    assert_taxii_error(
        sa.get(
            taxii.collection_url(cid_a) + "objects/",
            params={"limit": 3, "next": token, "match[type]": "sighting"},
        ),
        400,
    )
    assert_taxii_error(
        sa.get(taxii.collection_url(cid_a) + "manifest/", params={"limit": 3, "next": token}), 400
    )


# ==============================================================================================
# 7. Filters, single objects, versions, manifest
# ==============================================================================================


def test_match_type_filters(taxii: RunningServer) -> None:
    """match[type] with one and with two types returns exactly those objects of the whole."""
    u, cid = _largest_reader(taxii)
    everything = poll_with_client(taxii, u.username, cid)
    for types in (["sighting"], ["sighting", "ipv4-addr"]):
        got = poll_with_client(taxii, u.username, cid, type=types)
        assert got, types
        assert {o["type"] for o in got} <= set(types)
        assert [o["id"] for o in got] == [o["id"] for o in everything if o["type"] in types]


def test_match_id_and_spec_version(taxii: RunningServer) -> None:
    """match[id] selects one object; match[spec_version]=2.0 selects nothing (all is 2.1)."""
    u, cid = _largest_reader(taxii)
    sightings = poll_with_client(taxii, u.username, cid, type="sighting")
    with taxii_collection(taxii, u.username, cid) as coll:
        one = coll.get_objects(id=sightings[1]["id"])
        assert objects_of(one) == [sightings[1]] and one["more"] is False
        none = coll.get_objects(spec_version="2.0")
        assert objects_of(none) == [] and none["more"] is False
        some = coll.get_objects(spec_version="2.1", limit=1)
        assert len(objects_of(some)) == 1


def test_object_and_versions_endpoints(taxii: RunningServer) -> None:
    """An object by id, its versions (its `modified`), and 404 for ids not in the
    collection, including ids that exist in another recipient's collection."""
    u, cid = _largest_reader(taxii)
    sightings = poll_with_client(taxii, u.username, cid, type="sighting")
    target = sightings[0]
    with taxii_collection(taxii, u.username, cid) as coll:
        assert objects_of(coll.get_object(target["id"])) == [target]
        versions = coll.object_versions(target["id"])
    assert versions["more"] is False
    assert [parse_ts(v) for v in versions["versions"]] == [parse_ts(target["modified"])]
    expected = expected_findings(taxii.config)
    other = next(
        x
        for x in reading_users(taxii.config)
        if not expected[x.recipient or ""] & expected[u.recipient or ""]
    )
    foreign = poll_with_client(
        taxii, other.username, recipient_collection_id(other.recipient or ""), type="sighting"
    )
    s = session_for(u.username)
    for oid in (foreign[0]["id"], f"sighting--{uuid.uuid4()}"):
        assert_taxii_error(s.get(taxii.collection_url(cid) + f"objects/{oid}/"), 404)
        assert_taxii_error(s.get(taxii.collection_url(cid) + f"objects/{oid}/versions/"), 404)


def test_manifest_entries_describe_the_objects(taxii: RunningServer) -> None:
    """Manifest entries (section 5.3) carry id, date_added, version and media_type, list the
    same objects in the same order as the objects endpoint, with date_added increasing."""
    u, cid = _largest_reader(taxii)
    everything = poll_with_client(taxii, u.username, cid)
    entries: list[Json] = []
    with taxii_collection(taxii, u.username, cid) as coll:
        media_types = coll.media_types
        for envelope in as_pages(coll.get_manifest, per_request=SMALL_PAGE):
            entries += objects_of(envelope)
    assert [e["id"] for e in entries] == [o["id"] for o in everything]
    for e in entries:
        assert {"id", "date_added", "version", "media_type"} <= e.keys(), e
        assert e["media_type"] == STIX_MEDIA_TYPE and e["media_type"] in media_types
        parse_ts(e["version"])
    added = [parse_ts(e["date_added"]) for e in entries]
    assert added == sorted(added) and len(set(added)) == len(added)


def test_manifest_version_is_modified_else_created(taxii: RunningServer) -> None:
    """TAXII 2.1 (manifest `version`): the STIX `modified`; for an unversioned object the
    `created` timestamp MUST be used. Marking definitions have `created` but no `modified`."""
    u, cid = _largest_reader(taxii)
    by_id = {o["id"]: o for o in poll_with_client(taxii, u.username, cid)}
    with taxii_collection(taxii, u.username, cid) as coll:
        entries = objects_of(coll.get_manifest(limit=taxii.config.server.page_size_max))
    wrong = []
    for e in entries:
        obj = by_id[e["id"]]
        spec = obj.get("modified") or obj.get("created")
        if spec is not None and parse_ts(e["version"]) != parse_ts(spec):
            wrong.append((e["id"], e["version"], spec))
    assert not wrong, f"manifest version is not modified/created for: {wrong}"


def test_match_version_selects_the_version_the_manifest_advertises(taxii: RunningServer) -> None:
    """A client that reads a version from the manifest must be able to fetch exactly that
    version with match[version]; for objects without `modified` it cannot."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    manifest = s.get(
        taxii.collection_url(cid) + "manifest/", params={"limit": taxii.config.server.page_size_max}
    ).json()
    assert manifest["more"] is False
    missing = []
    for e in objects_of(manifest):
        resp = s.get(
            taxii.collection_url(cid) + f"objects/{e['id']}/", params={"match[version]": e["version"]}
        )
        assert resp.status_code == 200, resp.text[:300]
        if [o["id"] for o in objects_of(resp.json())] != [e["id"]]:
            missing.append((e["id"].split("--")[0], e["version"]))
    assert not missing, f"match[version]=<manifest version> returns nothing for: {missing}"


# ==============================================================================================
# 8. Bad input and content negotiation
# ==============================================================================================


def test_bad_parameters_are_400_taxii_errors(taxii: RunningServer) -> None:
    """Garbage in the query is the client's error (400 with a TAXII body), never a 500."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    for params in (
        {"added_after": "garbage"},
        {"added_after": "2024-01-01T00:00:00"},
        {"limit": "0"},
        {"limit": "abc"},
        {"limit": "-1"},
        {"match[version]": "garbage"},
        {"next": "garbage"},
    ):
        assert_taxii_error(s.get(url, params=params), 400)


def test_limit_with_a_non_ascii_digit_is_400_not_500(taxii: RunningServer) -> None:
    """'²' passes str.isdigit() but int() rejects it: it must still be a 400."""
    u, cid = _largest_reader(taxii)
    resp = session_for(u.username).get(taxii.collection_url(cid) + "objects/", params={"limit": "\u00b2"})
    assert_taxii_error(resp, 400)


def test_values_python_cannot_hold_are_never_a_500(taxii: RunningServer) -> None:
    """Well-formed values whose meaning falls outside what Python represents. A version
    timestamp whose offset carries it past year 9999 or before year 1 in UTC is the client's
    error (400); a limit of more digits than int() converts (4300) is a limit above the maximum
    (capped, like any other). Never a 500 in text/plain, on any endpoint that takes them."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    base = taxii.collection_url(cid)
    some_id = next(iter(manifest_dates(s, taxii, cid)))
    by_id = (f"objects/{some_id}/", f"objects/{some_id}/versions/")
    for version in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):  # years 10000 and 0 in UTC
        for endpoint in ("objects/", "manifest/", by_id[0]):
            assert_taxii_error(s.get(base + endpoint, params={"match[version]": version}), 400)
    for endpoint in ("objects/", "manifest/", *by_id):
        resp = s.get(base + endpoint, params={"limit": "9" * 5000})
        assert resp.status_code == 200, (endpoint, resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"] == TAXII_MEDIA_TYPE


@contextmanager
def serving(config: Config, taxii: RunningServer) -> Iterator[RunningServer]:
    """A second server on the same store with another configuration."""
    running, server, thread = start_server(config, taxii.store)
    try:
        yield running
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_limit_is_capped_at_page_size_max(taxii: RunningServer) -> None:
    """limit=100000 is answered, with at most page_size_max objects; with a small maximum
    the cap is visible and paging still reaches everything."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert taxii.config.server.page_size_max == raw["server"]["page_size_max"]
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    big = s.get(taxii.collection_url(cid) + "objects/", params={"limit": 100000})
    assert big.status_code == 200
    total = len(objects_of(big.json()))
    assert total <= taxii.config.server.page_size_max and big.json()["more"] is False
    small_max = 5
    server_cfg = taxii.config.server.model_copy(
        update={"page_size_max": small_max, "page_size_default": small_max}
    )
    with serving(taxii.config.model_copy(update={"server": server_cfg}), taxii) as capped:
        url = capped.collection_url(cid) + "objects/"
        body = s.get(url, params={"limit": 100000}).json()
        assert len(objects_of(body)) == small_max and body["more"] is True
        paged = [o for r in raw_pages(s, url, {"limit": 100000}) for o in objects_of(r.json())]
        assert len(paged) == total


def test_page_size_default_above_max_is_refused_or_capped(taxii: RunningServer, tmp_path: Path) -> None:
    """A deployment with page_size_default > page_size_max must either be rejected when
    loaded or have its default pages capped at the maximum."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    raw["server"].update(page_size_default=10, page_size_max=5)
    path = tmp_path / "meldpunt.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        loaded = load_config(path)
    except ConfigError:
        return  # refused at load: fine
    config = loaded.model_copy(update={"users": taxii.config.users})
    u, cid = _largest_reader(taxii)
    with serving(config, taxii) as running:
        body = session_for(u.username).get(running.collection_url(cid) + "objects/").json()
    assert len(objects_of(body)) <= config.server.page_size_max


def test_content_negotiation(taxii: RunningServer) -> None:
    """Only TAXII 2.1 JSON is served: XML and TAXII 2.0 get 406, a wildcard gets 2.1."""
    u, cid = _largest_reader(taxii)
    s = session_for(u.username)
    url = taxii.collection_url(cid) + "objects/"
    for accept in ("application/xml", "application/taxii+json;version=2.0"):
        assert_taxii_error(s.get(url, headers={"Accept": accept}), 406)
    for accept in ("*/*", TAXII_MEDIA_TYPE):
        resp = s.get(url, headers={"Accept": accept})
        assert resp.status_code == 200 and resp.headers["Content-Type"] == TAXII_MEDIA_TYPE


def test_an_unexpected_failure_is_a_500_taxii_error_message(
    taxii: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TAXII 2.1 3.6: an error status comes with an error message in the TAXII media type,
    the 500s of a failing database included (a connection lost, a lock not granted in time),
    not Starlette's text/plain "Internal Server Error"; and nothing of the failure's detail."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("database gone: postgresql://secret@db")

    monkeypatch.setattr(taxii.store, "reading", broken)
    u, cid = _largest_reader(taxii)
    resp = session_for(u.username).get(taxii.collection_url(cid) + "objects/")
    assert_taxii_error(resp, 500)
    assert "secret" not in resp.text and "Traceback" not in resp.text


# ==============================================================================================
# 9. Re-ingesting the same file
# ==============================================================================================


def test_reingesting_the_same_file_adds_nothing(taxii: RunningServer, ingestor: Ingestor) -> None:
    """Pollers continue from their last X-TAXII-Date-Added-Last; a repeated delivery of the
    same scan must not make them download anything again."""
    marks: dict[str, str] = {}
    for u in reading_users(taxii.config):
        s = session_for(u.username)
        cid = recipient_collection_id(u.recipient or "")
        pages = raw_pages(s, taxii.collection_url(cid) + "objects/", {"limit": 50})
        marks[u.username] = pages[-1].headers[DATE_LAST]
    summary = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    assert summary.ok and summary.counts["new"] == 0 and summary.counts["updated"] == 0
    for u in reading_users(taxii.config):
        cid = recipient_collection_id(u.recipient or "")
        for endpoint in ("objects/", "manifest/"):
            body = (
                session_for(u.username)
                .get(taxii.collection_url(cid) + endpoint, params={"added_after": marks[u.username]})
                .json()
            )
            assert objects_of(body) == [] and body["more"] is False, (u.username, endpoint)


# ==============================================================================================
# 10. Versions delivered after a TAXII DELETE
# ==============================================================================================

NOORD = recipient_collection_id("ziekenhuis-noord")


LATER = {1: "2024-06-2", 2: "2024-07-1", 3: "2024-07-2"}  # the sample's days are 2024-06-1x


def _later(step: int) -> str:
    """The sample scan with every observation moved on (10 days a step): the same hosts seen
    again, so each of their notifications gets a next version."""
    return DIVD_SCAN.read_text().replace("2024-06-1", LATER[step])


def _ingest_later(ingestor: Ingestor, directory: Path, step: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    assert ingestor.run("divd", "divd-nuclei", [divd_scan_as(directory, _later(step))]).ok


def _everything(session: requests.Session, url: str, params: dict[str, Any]) -> list[Json]:
    """The objects (or manifest entries) of every page, following `next`."""
    return [o for page in raw_pages(session, url, {**params, "limit": 50}) for o in objects_of(page.json())]


def _versions_served(reader: requests.Session, base: str, stix_id: str, version: str) -> list[Json]:
    """The versions of one object a filter gives, asked three ways that must agree: by id, in
    the listing of its type, and in the manifest of its type."""
    url = base + f"objects/{stix_id}/"
    held = reader.get(url, params={"match[version]": "all"}).status_code != 404  # none: not found
    by_object = _everything(reader, url, {"match[version]": version}) if held else []
    listing = {"match[type]": stix_id.split("--")[0], "match[version]": version}
    listed = [o for o in _everything(reader, base + "objects/", listing) if o["id"] == stix_id]
    manifest = [m for m in _everything(reader, base + "manifest/", listing) if m["id"] == stix_id]
    assert listed == by_object, version
    assert [parse_ts(m["version"]) for m in manifest] == [parse_ts(o["modified"]) for o in by_object], version
    return by_object


def test_first_after_deleting_every_version_and_a_new_one(
    taxii: RunningServer, ingestor: Ingestor, tmp_path: Path
) -> None:
    """A host seen again after an operator deleted its sighting: the new version is the only,
    so the first, version the collection holds, in the listings as for the object itself
    (the new entry's flags said an earlier version was there; it had been deleted)."""
    base = taxii.collection_url(NOORD)
    reader, operator = session_for("noord-poller"), session_for("operator-1")
    sighting = _everything(reader, base + "objects/", {"match[type]": "sighting"})[0]["id"]
    assert operator.delete(base + f"objects/{sighting}/").status_code == 200
    assert _everything(reader, base + "objects/", {"match[id]": sighting, "match[version]": "all"}) == []
    _ingest_later(ingestor, tmp_path / "later", 1)
    every = _everything(reader, base + "objects/", {"match[id]": sighting, "match[version]": "all"})
    assert len(every) == 1
    listed = _everything(reader, base + "objects/", {"match[type]": "sighting", "match[version]": "first"})
    manifest = _everything(reader, base + "manifest/", {"match[type]": "sighting", "match[version]": "first"})
    assert [o for o in listed if o["id"] == sighting] == every
    assert sighting in {m["id"] for m in manifest}
    for version in ("first", "last", "all"):
        assert _versions_served(reader, base, sighting, version) == every


@pytest.mark.parametrize("deleted", ["all", "first", "last"])
def test_the_endpoints_agree_on_versions_delivered_after_a_delete(
    taxii: RunningServer, ingestor: Ingestor, tmp_path: Path, deleted: str
) -> None:
    """Two versions, a DELETE of some of them, then two more: `first`, `last` and `all` give
    the same versions by id, in the listing and in the manifest, after each new version."""
    base = taxii.collection_url(NOORD)
    reader, operator = session_for("noord-poller"), session_for("operator-1")
    _ingest_later(ingestor, tmp_path / "1", 1)
    sighting = _everything(reader, base + "objects/", {"match[type]": "sighting"})[0]["id"]
    before = _versions_served(reader, base, sighting, "all")
    assert len(before) == 2
    resp = operator.delete(base + f"objects/{sighting}/", params={"match[version]": deleted})
    assert resp.status_code == 200
    kept = {"all": [], "first": before[1:], "last": before[:1]}[deleted]
    assert _versions_served(reader, base, sighting, "all") == kept
    for step in (2, 3):
        _ingest_later(ingestor, tmp_path / str(step), step)
        every = _versions_served(reader, base, sighting, "all")
        assert every[: len(kept)] == kept and len(every) == len(kept) + step - 1
        assert _versions_served(reader, base, sighting, "first") == every[:1]
        assert _versions_served(reader, base, sighting, "last") == every[-1:]
