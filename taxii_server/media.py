"""TAXII media type handling: content negotiation and JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

MEDIA_TYPE = "application/taxii+json;version=2.1"
STIX_MEDIA_TYPE = "application/stix+json;version=2.1"


def _acceptable(media_range: str) -> bool:
    parts = [p.strip() for p in media_range.split(";")]
    kind = parts[0].lower()
    params = {}
    for p in parts[1:]:
        name, _, value = p.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    if params.get("q") is not None:
        try:
            if float(params["q"]) <= 0:
                return False
        except ValueError:
            return False
    if kind in ("*/*", "application/*"):
        return True
    if kind == "application/taxii+json":
        return params.get("version", "2.1") == "2.1"
    return False


def accepts_taxii(accept_header: str | None) -> bool:
    """True when the Accept header admits TAXII 2.1 JSON (absent means anything)."""
    if accept_header is None or not accept_header.strip():
        return True
    return any(_acceptable(r) for r in accept_header.split(",") if r.strip())


def taxii_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def raw_envelope_response(
    prefix: bytes, object_bodies: list[str], suffix: bytes, headers: dict[str, str]
) -> Response:
    """An envelope assembled from stored JSON without re-parsing each object."""
    content = prefix + b",".join(b.encode() for b in object_bodies) + suffix
    return Response(content=content, status_code=200, media_type=MEDIA_TYPE, headers=headers)


def json_response(body: Any, status: int = 200) -> Response:
    """Plain JSON, for the resources beside TAXII (statistics)."""
    return Response(content=orjson.dumps(body), status_code=status, media_type="application/json")
