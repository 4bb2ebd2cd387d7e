"""Objects (TAXII 2.1 section 5.4), object (5.6), versions (5.8) and manifest (5.3).

Pagination is a keyset on the strictly increasing date_added: each page is one indexed range
query, the same cost on page 1 and page 10,000, and a page boundary can never skip or repeat
an object however many share a second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from connector.store import Member, VersionFilter
from connector.store.times import timestamp_to_us, us_to_timestamp
from taxii_server.auth import Principal
from taxii_server.context import is_head, principal, state
from taxii_server.errors import TaxiiError, not_found
from taxii_server.media import STIX_MEDIA_TYPE, raw_envelope_response, taxii_response
from taxii_server.params import storable
from taxii_server.routes.collections import visible_collection

router = APIRouter()


@dataclass(frozen=True)
class ObjectQuery:
    added_after: int | None
    limit: int
    next: str | None
    types: tuple[str, ...]
    ids: tuple[str, ...]
    versions: VersionFilter | None
    spec_versions: tuple[str, ...]

    @property
    def spec_version_matches(self) -> bool:
        """Whether match[spec_version] admits what the store holds: every stored object is STIX
        2.1, so a filter without 2.1 selects nothing (for GET and DELETE alike)."""
        return not self.spec_versions or "2.1" in self.spec_versions

    def fingerprint_parts(self) -> tuple[object, ...]:
        v = self.versions or VersionFilter()
        return (self.added_after, self.types, self.ids, v.last, v.first, v.all, v.exact, self.spec_versions)


_BLANK = " \t\n\v\f\r"


def _split(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    # ASCII white space only, as the OpenAPI document says (openapi.py, _VALUES).
    parts = tuple(sorted({part.strip(_BLANK) for part in value.split(",") if part.strip(_BLANK)}))
    if not parts:
        # A filter given with no values is not the same as no filter: refuse, do not widen.
        raise TaxiiError(400, "Empty filter", "A match[...] parameter was given without any value.")
    return parts


def _versions(value: str | None) -> VersionFilter | None:
    """None when the parameter is absent: each endpoint has its own default (last; DELETE all)."""
    if value is None:
        return None
    last = first = every = False
    exact: list[str] = []
    for part in _split(value):
        if part == "last":
            last = True
        elif part == "first":
            first = True
        elif part == "all":
            every = True
        else:
            try:
                exact.append(us_to_timestamp(timestamp_to_us(part)))  # strict: user input
            except (ValueError, OverflowError):  # Overflow: an offset carries it past 1..9999 in UTC
                raise TaxiiError(
                    400, "Invalid match[version]", f"{part!r} is not last, first, all or a timestamp."
                ) from None
    return VersionFilter(last=last, first=first, all=every, exact=tuple(exact))


def object_query(
    request: Request,
    added_after: str | None = Query(None),
    limit: str | None = Query(None),
    next_token: str | None = Query(None, alias="next"),
    match_type: str | None = Query(None, alias="match[type]"),
    match_id: str | None = Query(None, alias="match[id]"),
    match_version: str | None = Query(None, alias="match[version]"),
    match_spec_version: str | None = Query(None, alias="match[spec_version]"),
) -> ObjectQuery:
    server = state(request).config.server
    for name, value in (
        ("added_after", added_after),
        ("limit", limit),
        ("next", next_token),
        ("match[type]", match_type),
        ("match[id]", match_id),
        ("match[version]", match_version),
        ("match[spec_version]", match_spec_version),
    ):
        if value is not None and not storable(value):
            raise TaxiiError(400, f"Invalid {name}", f"{name} holds a NUL or another character no value has.")
    after = None
    if added_after is not None:
        try:
            after = timestamp_to_us(added_after)
        except ValueError as exc:
            raise TaxiiError(400, "Invalid added_after", str(exc)) from None
    size = min(server.page_size_default, server.page_size_max)
    if limit is not None:
        text = limit  # as the OpenAPI document says: digits only
        digits = text.lstrip("0")
        if not (text.isascii() and text.isdecimal()) or not digits:
            raise TaxiiError(400, "Invalid limit", f"limit must be a positive integer, not {limit[:40]!r}.")
        # Any long number is over the maximum; int() would refuse one of over 4300 digits (a 500).
        size = server.page_size_max if len(digits) > 18 else min(int(digits), server.page_size_max)
    return ObjectQuery(
        after,
        size,
        next_token,
        _split(match_type),
        _split(match_id),
        _versions(match_version),
        _split(match_spec_version),
    )


@dataclass
class Page:
    members: list[Member]
    more: bool
    next: str | None

    def headers(self) -> dict[str, str]:
        if not self.members:
            return {}
        return {
            "X-TAXII-Date-Added-First": us_to_timestamp(self.members[0].date_added),
            "X-TAXII-Date-Added-Last": us_to_timestamp(self.members[-1].date_added),
        }


def fetch_page(
    request: Request,
    who: Principal,
    api_root: str,
    collection_id: str,
    q: ObjectQuery,
    endpoint: str,
    object_id: str | None = None,
) -> Page:
    visible_collection(request, api_root, collection_id, who)
    s = state(request)
    if collection_id not in who.readable:
        raise TaxiiError(403, "Forbidden", "This user may write to this collection but not read it.")
    ids = (object_id,) if object_id else q.ids
    # Bound to every filter but added_after, which the token carries apart (pagination.py).
    filters = replace(q, added_after=None).fingerprint_parts()
    fingerprint = s.tokens.query_fingerprint(endpoint, object_id, *filters)
    after = q.added_after
    if q.next:
        after = s.tokens.decode(q.next, who.username, collection_id, fingerprint, q.added_after)
    if not q.spec_version_matches:
        members: list[Member] = []
    else:
        members = s.view.page(
            collection_id, after=after, limit=q.limit + 1, types=q.types, ids=ids, versions=q.versions
        )
    more = len(members) > q.limit
    members = members[: q.limit]
    token = (
        s.tokens.encode(who.username, collection_id, fingerprint, members[-1].date_added, q.added_after)
        if more
        else None
    )
    # A notification's sighting served to the recipient delivers it (not a manifest entry, nor
    # a version listing: those say what there is, not what it is).
    # Nor a HEAD's page: its body is never sent.
    head = is_head(request)
    delivering = endpoint in ("objects", "object") and not head
    s.store.record_read(
        username=who.username,
        action=f"{endpoint} (HEAD)" if head else endpoint,
        collection_id=collection_id,
        objects=len(members),
        delivered=[(m.notification, m.stamp) for m in members if delivering and m.notification and m.stamp],
    )
    s.metrics.objects_served.labels(endpoint).inc(len(members))
    return Page(members, more, token)


def _envelope(page: Page) -> Response:
    head: dict[str, object] = {"more": page.more}
    if page.next:
        head["next"] = page.next
    if not page.members:
        return taxii_response(head)
    prefix = orjson.dumps(head)[:-1] + b',"objects":['
    return raw_envelope_response(prefix, [m.body for m in page.members], b"]}", page.headers())


def _require_exists(request: Request, collection_id: str, object_id: str) -> None:
    if not state(request).view.page(
        collection_id, after=None, limit=1, ids=(object_id,), versions=VersionFilter(all=True)
    ):
        raise not_found("object")


@router.get("/{api_root}/collections/{collection_id}/objects/")
def get_objects(
    request: Request,
    api_root: str,
    collection_id: str,
    who: Principal = Depends(principal),
    q: ObjectQuery = Depends(object_query),
) -> Response:
    return _envelope(fetch_page(request, who, api_root, collection_id, q, "objects"))


@router.get("/{api_root}/collections/{collection_id}/objects/{object_id}/")
def get_object(
    request: Request,
    api_root: str,
    collection_id: str,
    object_id: str,
    who: Principal = Depends(principal),
    q: ObjectQuery = Depends(object_query),
) -> Response:
    page = fetch_page(request, who, api_root, collection_id, q, "object", object_id)
    if not page.members and not q.next:
        _require_exists(request, collection_id, object_id)
    return _envelope(page)


@router.get("/{api_root}/collections/{collection_id}/objects/{object_id}/versions/")
def get_versions(
    request: Request,
    api_root: str,
    collection_id: str,
    object_id: str,
    who: Principal = Depends(principal),
    q: ObjectQuery = Depends(object_query),
) -> Response:
    q = ObjectQuery(q.added_after, q.limit, q.next, (), (), VersionFilter(all=True), q.spec_versions)
    page = fetch_page(request, who, api_root, collection_id, q, "versions", object_id)
    if not page.members and not q.next:
        _require_exists(request, collection_id, object_id)
    return _listing(page, "versions", [_version(m) for m in page.members])


@router.get("/{api_root}/collections/{collection_id}/manifest/")
def get_manifest(
    request: Request,
    api_root: str,
    collection_id: str,
    who: Principal = Depends(principal),
    q: ObjectQuery = Depends(object_query),
) -> Response:
    page = fetch_page(request, who, api_root, collection_id, q, "manifest")
    return _listing(
        page,
        "objects",
        [
            {
                "id": m.stix_id,
                "date_added": us_to_timestamp(m.date_added),
                "version": _version(m),
                "media_type": STIX_MEDIA_TYPE,
            }
            for m in page.members
        ],
    )


def _listing(page: Page, key: str, items: list[object]) -> Response:
    """A versions or manifest resource: `more`, `next` when there is more, then the items."""
    body: dict[str, object] = {"more": page.more}
    if page.next:
        body["next"] = page.next
    if items:
        body[key] = items
    return taxii_response(body, headers=page.headers())


def _version(member: Member) -> str:
    """An object's version: modified, else created; for SCOs (neither), when it was added."""
    return member.version or us_to_timestamp(member.date_added)
