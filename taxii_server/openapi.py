"""The framework's OpenAPI document, completed for TAXII: media types, schemas, errors, auth.

FastAPI describes every route as application/json with a 422 validation error; a TAXII client
sees application/taxii+json;version=2.1 bodies and TAXII error messages. This rewrites the
generated document accordingly, so tools (and schemathesis) test what the server really does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from taxii_server.media import MEDIA_TYPE

_STR = {"type": "string"}
_OBJ_LIST = {"type": "array", "items": {"type": "object"}}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": _STR,
            "description": _STR,
            "error_id": _STR,
            "error_code": _STR,
            "http_status": _STR,
            "external_details": _STR,
            "details": {"type": "object"},
        },
    },
    "Discovery": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": _STR,
            "description": _STR,
            "contact": _STR,
            "default": _STR,
            "api_roots": {"type": "array", "items": _STR},
        },
    },
    "ApiRoot": {
        "type": "object",
        "required": ["title", "versions", "max_content_length"],
        "properties": {
            "title": _STR,
            "description": _STR,
            "versions": {"type": "array", "items": _STR},
            "max_content_length": {"type": "integer"},
        },
    },
    "Collection": {
        "type": "object",
        "required": ["id", "title", "can_read", "can_write"],
        "properties": {
            "id": _STR,
            "title": _STR,
            "description": _STR,
            "alias": _STR,
            "can_read": {"type": "boolean"},
            "can_write": {"type": "boolean"},
            "media_types": {"type": "array", "items": _STR},
        },
    },
    "Collections": {
        "type": "object",
        "properties": {
            "collections": {"type": "array", "items": {"$ref": "#/components/schemas/Collection"}}
        },
    },
    "Envelope": {
        "type": "object",
        "properties": {"more": {"type": "boolean"}, "next": _STR, "objects": _OBJ_LIST},
    },
    # What a POST must hold: `more` and `next` mean nothing in a request and are ignored.
    "EnvelopeIn": {"type": "object", "properties": {"objects": _OBJ_LIST}},
    "Manifest": {
        "type": "object",
        "properties": {
            "more": {"type": "boolean"},
            "next": _STR,
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "date_added", "version"],
                    "properties": {"id": _STR, "date_added": _STR, "version": _STR, "media_type": _STR},
                },
            },
        },
    },
    "Versions": {
        "type": "object",
        "properties": {
            "more": {"type": "boolean"},
            "next": _STR,
            "versions": {"type": "array", "items": _STR},
        },
    },
    "Status": {
        "type": "object",
        "required": ["id", "status", "total_count", "success_count", "failure_count", "pending_count"],
        "properties": {
            "id": _STR,
            "status": {"type": "string", "enum": ["pending", "complete"]},
            "request_timestamp": _STR,
            "total_count": {"type": "integer"},
            "success_count": {"type": "integer"},
            "failure_count": {"type": "integer"},
            "pending_count": {"type": "integer"},
            "successes": _OBJ_LIST,
            "failures": _OBJ_LIST,
            "pendings": _OBJ_LIST,
        },
    },
}

# (path suffix, method) -> (success status, schema name)
_SUCCESS = {
    ("/taxii2/", "get"): ("200", "Discovery"),
    ("/{api_root}/", "get"): ("200", "ApiRoot"),
    ("/collections/", "get"): ("200", "Collections"),
    ("/{collection_id}/", "get"): ("200", "Collection"),
    ("/objects/", "get"): ("200", "Envelope"),
    ("/objects/", "post"): ("202", "Status"),
    ("/{object_id}/", "get"): ("200", "Envelope"),
    ("/{object_id}/", "delete"): ("200", None),
    ("/versions/", "get"): ("200", "Versions"),
    ("/manifest/", "get"): ("200", "Manifest"),
    ("/{status_id}/", "get"): ("200", "Status"),
}
_ERRORS = {
    "400": "Bad request",
    "401": "Authentication required or failed",
    "403": "Not allowed for this user",
    "404": "Not found (or not visible to this user)",
    "406": "Accept does not admit TAXII 2.1",
}
_POST_ERRORS = {"413": "Body larger than max_content_length", "415": "Content-Type is not TAXII 2.1"}


# What the server accepts in each query parameter (routes/objects.py refuses anything else with
# 400). FastAPI declares them as any string; then an empty `added_after=` is "valid" by the
# document and a client generated from it (schemathesis) is told 400 for a request it was
# promised works. A list parameter is described by its single-value form.
_TIMESTAMP = {"type": "string", "format": "date-time"}
# A comma-separated filter: any text with a value in it (a value that names nothing matches
# nothing); not only commas and ASCII white space (400 "Empty filter"), no NUL (params.py).
_VALUES = {"type": "string", "pattern": "^[^\\u0000]*[^\\u0000\\t\\n\\v\\f\\r ,][^\\u0000]*$"}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "added_after": _TIMESTAMP,
    "limit": {"type": "string", "pattern": "^[0-9]*[1-9][0-9]*$"},
    # Only a token this server issued works; the pattern says which text can be one.
    "next": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "match[type]": _VALUES,
    "match[id]": _VALUES,
    "match[version]": {"anyOf": [{"type": "string", "enum": ["last", "first", "all"]}, _TIMESTAMP]},
    "match[spec_version]": _VALUES,
}


def _content(schema: str) -> dict[str, Any]:
    return {MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _success_for(path: str, method: str) -> tuple[str, str | None]:
    for (suffix, verb), value in _SUCCESS.items():
        if verb == method and (path == suffix or path.endswith(suffix)):
            return value
    return "200", None


def taxii_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {})
    components["schemas"] = SCHEMAS
    components["securitySchemes"] = {
        "basic": {"type": "http", "scheme": "basic"},
        "bearer": {"type": "http", "scheme": "bearer", "description": "API token mpt_<id>_<secret>"},
    }
    spec["security"] = [{"basic": []}, {"bearer": []}]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            status, schema = _success_for(path, method)
            responses: dict[str, Any] = {status: {"description": "Success"}}
            if schema:
                responses[status]["content"] = _content(schema)
            errors = {**_ERRORS, **(_POST_ERRORS if method == "post" else {})}
            for code, text in errors.items():
                responses[code] = {"description": text, "content": _content("Error")}
            operation["responses"] = responses
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter["name"] in _PARAMETERS:
                    parameter["schema"] = _PARAMETERS[parameter["name"]]
            if method == "post":
                operation["requestBody"] = {"required": True, "content": _content("EnvelopeIn")}
    app.openapi_schema = spec
    return spec
