"""Liveness, readiness and metrics: for orchestrators and scrapers, not TAXII clients.

`/healthz` answers 200 while the process can answer at all (liveness: restart it when not).
`/readyz` answers 200 when the store answers and its schema is this code's, else 503 with the
reason (readiness: send it no traffic until then). Neither needs credentials, and neither says
more than that: no versions, URLs or driver messages.

`/metrics` (Prometheus) is here only when `server.metrics.token_env` is configured, and only
for a request with that bearer token; otherwise it is not found, like any other path
(`server.metrics.port` serves metrics on a listener of its own instead: taxii_server.server).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from taxii_server.context import state
from taxii_server.errors import not_found
from taxii_server.metrics import CONTENT_TYPE, token_matches

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> Response:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> Response:
    reason = state(request).store.readiness()
    if reason is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


def metrics_absent() -> APIRouter:
    """/metrics when it is not served on this port: not found, as any other path (without this
    the router would redirect it to /metrics/, an API root's URL)."""
    absent = APIRouter()

    @absent.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        raise not_found("resource")

    return absent


def metrics_router(token: str) -> APIRouter:
    """/metrics behind `Authorization: Bearer <token>`."""
    guarded = APIRouter()

    @guarded.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        s = state(request)
        if not token_matches(request.headers.get("authorization"), token):
            s.metrics.login_failures.labels("metrics-token").inc()
            return JSONResponse(
                {
                    "title": "Unauthorized",
                    "http_status": "401",
                    "description": "Metrics need the bearer token.",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return Response(s.metrics.render(), media_type=CONTENT_TYPE)

    return guarded
