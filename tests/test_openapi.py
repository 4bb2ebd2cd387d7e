"""The served OpenAPI document describes the TAXII API as it really answers."""

from __future__ import annotations

import requests
from openapi_spec_validator import validate

from taxii_server.media import MEDIA_TYPE


def test_openapi_is_valid_and_speaks_taxii(taxii) -> None:  # type: ignore[no-untyped-def]
    response = requests.get(f"{taxii.url}/taxii2/openapi.json", timeout=10)
    assert response.status_code == 200  # public: it describes the API, it holds no data
    spec = response.json()
    validate(spec)
    assert {"basic", "bearer"} <= set(spec["components"]["securitySchemes"])
    operations = [(p, m, op) for p, ops in spec["paths"].items() for m, op in ops.items()]
    assert {(p, m) for p, m, _ in operations} >= {
        ("/taxii2/", "get"),
        ("/{api_root}/collections/{collection_id}/objects/", "get"),
        ("/{api_root}/collections/{collection_id}/objects/", "post"),
        ("/{api_root}/collections/{collection_id}/objects/{object_id}/", "delete"),
        ("/{api_root}/collections/{collection_id}/manifest/", "get"),
        ("/{api_root}/status/{status_id}/", "get"),
    }
    for path, method, op in operations:
        assert "422" not in op["responses"], (path, method)
        for code, response_spec in op["responses"].items():
            for media in response_spec.get("content", {}):
                assert media == MEDIA_TYPE, (path, method, code)
        assert op["responses"]["404"]["content"][MEDIA_TYPE]["schema"]["$ref"].endswith("/Error")


def test_interactive_docs_pages_are_not_served(taxii) -> None:  # type: ignore[no-untyped-def]
    # They would pull scripts from a CDN; the API itself answers every path with TAXII errors.
    response = requests.get(f"{taxii.url}/docs", timeout=10)
    assert response.status_code in (401, 404)
