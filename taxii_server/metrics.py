"""Prometheus metrics of the TAXII server (prometheus-client).

Two kinds:

- What this process did: requests by endpoint template and status, their latency, objects
  served, login failures. With several workers (`server.workers`), each process writes these
  to files in a directory shared by the workers (prometheus-client's multiprocess mode,
  $PROMETHEUS_MULTIPROC_DIR, set up by `meldpunt serve`), and a scrape sums every process's.
- What the store holds: ingest rows by outcome, runs by status, the MISP outbox's pending and
  failed entries, the scheduler's jobs. Read from the database at each scrape (StoreCollector),
  so every process answers alike and nothing needs sharing.

Labels are bounded: an endpoint is its route template (`/{api_root}/collections/
{collection_id}/objects/`), never the path asked for, and a path no route matched is
`unmatched`; collections and users are not labels (thousands of recipients).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.store import Store

log = logging.getLogger("meldpunt.metrics")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess() -> bool:
    """Whether this process writes its metrics to the shared directory (several workers)."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


class StoreCollector(Collector):
    """Metrics read from the store at scrape time. A store that cannot be read makes
    `meldpunt_store_up` 0 and leaves the rest out, rather than failing the scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("meldpunt_store_up", "1 when the store answered this scrape, else 0.")
        try:
            families = list(self._families())
        except Exception:
            log.warning("metrics: the store could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        rows = GaugeMetricFamily(
            "meldpunt_ingest_rows",
            "Rows and notifications of every ingest run so far, by partner, format and outcome "
            "(read, new, updated, quarantined, routed, ...): a counter in all but type, since it "
            "is read from the store.",
            labels=["partner", "format", "outcome"],
        )
        quarantined = GaugeMetricFamily(
            "meldpunt_ingest_quarantined",
            "Records quarantined by ingest runs so far (whole records and faulty attributes), by partner.",
            labels=["partner"],
        )
        by_partner: dict[str, int] = {}
        for (partner, fmt, outcome), value in sorted(self.store.ingest_totals().items()):
            rows.add_metric([partner, fmt, outcome], value)
            if outcome in ("quarantined", "attributes_quarantined"):
                by_partner[partner] = by_partner.get(partner, 0) + value
        for partner, value in sorted(by_partner.items()):
            quarantined.add_metric([partner], value)
        yield rows
        yield quarantined
        runs = GaugeMetricFamily("meldpunt_ingest_runs", "Ingest runs by status.", labels=["status"])
        for status, value in sorted(self.store.runs_by_status().items()):
            runs.add_metric([status], value)
        yield runs
        outbox = GaugeMetricFamily(
            "meldpunt_misp_outbox_entries",
            "MISP outbox entries not delivered: pending (the depth) and failed (waiting for "
            "`meldpunt misp retry`), by recipient.",
            labels=["recipient", "status"],
        )
        for (recipient, status), value in sorted(self.store.outbox_open().items()):
            outbox.add_metric([recipient, status], value)
        yield outbox
        yield from job_families(self.store.job_states())


def job_families(states: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """The scheduler's jobs (connector/scheduler): last success, last failure, last outcome."""
    success = GaugeMetricFamily(
        "meldpunt_job_last_success_timestamp_seconds",
        "When each job of `meldpunt run` last ended successfully (Unix time).",
        labels=["job"],
    )
    failure = GaugeMetricFamily(
        "meldpunt_job_last_failure_timestamp_seconds",
        "When each job of `meldpunt run` last failed (Unix time).",
        labels=["job"],
    )
    ok = GaugeMetricFamily("meldpunt_job_ok", "1 when the job's last run succeeded, else 0.", labels=["job"])
    for job, state in sorted(states.items()):
        if state.get("last_success") is not None:
            success.add_metric([job], float(state["last_success"]))
        if state.get("last_failure") is not None:
            failure.add_metric([job], float(state["last_failure"]))
        ok.add_metric([job], 1.0 if state.get("ok") else 0.0)
    yield success
    yield failure
    yield ok


class ServerMetrics:
    """The process's own metrics, and the registry a scrape reads (this process's, or with
    several workers every process's from the shared directory), with the store's."""

    def __init__(self, store: Store) -> None:
        self.multiprocess = multiprocess()
        self._own = CollectorRegistry()
        # In multiprocess mode the values live in the shared files; the objects register nowhere.
        target = None if self.multiprocess else self._own
        self.requests = Counter(
            "meldpunt_http_requests",
            "HTTP requests answered, by method, endpoint template and status.",
            ["method", "endpoint", "status"],
            registry=target,
        )
        self.latency = Histogram(
            "meldpunt_http_request_duration_seconds",
            "Time to answer a request, by method and endpoint template.",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self.objects_served = Counter(
            "meldpunt_taxii_objects_served",
            "STIX objects (or manifest entries, versions) served, by TAXII endpoint.",
            ["endpoint"],
            registry=target,
        )
        self.login_failures = Counter(
            "meldpunt_login_failures",
            "Logins that failed (wrong credentials) or were refused unchecked (back-off, no free "
            "verification slot), by reason.",
            ["reason"],
            registry=target,
        )
        self.store_collector = StoreCollector(store)
        if not self.multiprocess:
            self._own.register(self.store_collector)

    def registry(self) -> CollectorRegistry:
        if not self.multiprocess:
            return self._own
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        registry.register(self.store_collector)
        return registry

    def render(self) -> bytes:
        return generate_latest(self.registry())


def token_matches(authorization: str | None, expected: str) -> bool:
    """`Authorization: Bearer <token>` with the configured token (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by its route template. Innermost
    of the application's middleware, so that the scope it reads the matched route from is the
    one the router wrote it to."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - began)
