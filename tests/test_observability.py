"""/healthz, /readyz and Prometheus metrics (issue #15, item 3).

Metrics are scraped and parsed with prometheus-client's own text parser: requests by endpoint
template and status, latency histograms, objects served, login failures, and what the store
holds (ingest rows by outcome, quarantined records, the MISP outbox, the scheduler's jobs).
They are off by default and never unguarded: with a token only for its bearer, with a port of
their own only there. With several workers the metrics of every worker are summed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connector.collections import recipient_collection_id
from connector.config import Config, MetricsConfig
from connector.ingest import Ingestor
from connector.store import Store
from connector.store import outbox as outbox_sql
from tests.conftest import DIVD_SCAN, RunningServer, start_server
from tests.serving import serving
from tests.test_cli import free_port, write_config
from tests.test_taxii_read import session_for

TOKEN_ENV = "MELDPUNT_TEST_METRICS_TOKEN"
TOKEN = "metrics-token-for-tests-0123456789"
Observed = tuple[RunningServer, dict[str, int]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as prometheus-client parses the exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def with_metrics(config: Config, **metrics: object) -> Config:
    server = config.server.model_copy(update={"metrics": MetricsConfig(**metrics)})  # type: ignore[arg-type]
    return config.model_copy(update={"server": server})


@pytest.fixture
def observed(
    store: Store, sample_config: Config, ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningServer, dict[str, int]]]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    summary = ingestor.run("divd", "divd-nuclei", [DIVD_SCAN])
    assert summary.ok
    config = with_metrics(sample_config, enabled=True, token_env=TOKEN_ENV)
    running, server, thread = start_server(config, store)
    try:
        yield running, dict(summary.counts)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def scrape(running: RunningServer, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(running.url + "/metrics", headers=headers, timeout=30)


def test_metrics_count_requests_objects_and_login_failures(
    observed: tuple[RunningServer, dict[str, int]],
) -> None:
    running, counts = observed
    collection = recipient_collection_id("zcert")
    poller = session_for("zcert-poller")
    served = 0
    for _ in range(3):
        page = poller.get(running.collection_url(collection) + "objects/", params={"limit": 5})
        assert page.status_code == 200
        served += len(page.json()["objects"])
    assert poller.get(running.url + "/taxii2/").status_code == 200
    wrong = requests.get(
        running.api_root,
        auth=("zcert-poller", "not the password"),
        headers={"Accept": poller.headers["Accept"]},
    )
    assert wrong.status_code == 401

    answer = scrape(running)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    objects = "/{api_root}/collections/{collection_id}/objects/"
    assert value(found, "meldpunt_http_requests_total", method="GET", endpoint=objects, status="200") == 3
    assert value(found, "meldpunt_http_requests_total", method="GET", endpoint="/taxii2/", status="200") == 1
    assert (
        value(found, "meldpunt_http_requests_total", method="GET", endpoint="/{api_root}/", status="401") == 1
    )
    assert value(found, "meldpunt_http_request_duration_seconds_count", method="GET", endpoint=objects) == 3
    assert (
        value(
            found, "meldpunt_http_request_duration_seconds_bucket", method="GET", endpoint=objects, le="+Inf"
        )
        == 3
    )
    assert value(found, "meldpunt_taxii_objects_served_total", endpoint="objects") == served == 15
    assert value(found, "meldpunt_login_failures_total", reason="failed") == 1
    # What the store holds: the DIVD sample's run, by outcome.
    assert value(found, "meldpunt_store_up") == 1
    for outcome in ("read", "notifications", "new", "quarantined", "routed"):
        got = value(found, "meldpunt_ingest_rows", partner="divd", format="divd-nuclei", outcome=outcome)
        assert got == counts[outcome], outcome
    assert value(found, "meldpunt_ingest_quarantined", partner="divd") == counts["quarantined"] > 0
    assert value(found, "meldpunt_ingest_runs", status="done") == 1
    # Paths nobody routes are one label, not one per path asked for.
    requests.get(running.url + "/no/such/path/1", timeout=30)
    requests.get(running.url + "/no/such/path/2", timeout=30)
    again = samples(scrape(running).text)
    unmatched = [
        k for k in again if k[0] == "meldpunt_http_requests_total" and ("endpoint", "unmatched") in k[1]
    ]
    assert len(unmatched) == 1 and again[unmatched[0]] == 2


def test_metrics_show_the_misp_outbox_and_the_scheduler_jobs(observed: Observed, store: Store) -> None:
    running, _counts = observed
    with store.writing() as w:
        outbox_sql.enqueue(
            w,
            [
                ("zcert", "3b2f1e9a-0000-4000-8000-000000000001", 1),
                ("ibd", "3b2f1e9a-0000-4000-8000-000000000002", 2),
            ],
            {
                ("zcert", "3b2f1e9a-0000-4000-8000-000000000001"): "case 1",
                ("ibd", "3b2f1e9a-0000-4000-8000-000000000002"): "case 2",
            },
        )
    entry = store.misp_due("ibd", include_later=True)[0]
    store.misp_mark(entry, {"status": "failed", "last_error": "MISP said no"})
    store.record_job("misp-sync", {"ok": True, "last_success": 1700000000.5, "last_run": 1700000000.5})
    store.record_job("spool", {"ok": False, "last_failure": 1700000100.0, "last_success": 1699990000.0})

    found = samples(scrape(running).text)
    assert value(found, "meldpunt_misp_outbox_entries", recipient="zcert", status="pending") == 1
    assert value(found, "meldpunt_misp_outbox_entries", recipient="ibd", status="failed") == 1
    assert value(found, "meldpunt_job_last_success_timestamp_seconds", job="misp-sync") == 1700000000.5
    assert value(found, "meldpunt_job_ok", job="misp-sync") == 1
    assert value(found, "meldpunt_job_ok", job="spool") == 0
    assert value(found, "meldpunt_job_last_failure_timestamp_seconds", job="spool") == 1700000100.0


def test_metrics_need_their_token(observed: Observed) -> None:
    running, _counts = observed
    assert scrape(running, token=None).status_code == 401
    assert scrape(running, token=TOKEN[:-1] + "x").status_code == 401
    # A TAXII user's credentials are not the metrics token.
    basic = requests.get(running.url + "/metrics", auth=("operator-1", "whatever"), timeout=30)
    assert basic.status_code == 401
    found = samples(scrape(running).text)
    assert value(found, "meldpunt_login_failures_total", reason="metrics-token") == 3


def test_metrics_are_off_by_default(taxii: RunningServer) -> None:
    answer = requests.get(taxii.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 404
    assert "meldpunt_" not in answer.text


def test_a_metrics_token_variable_that_is_not_set_stops_the_server(
    store: Store, sample_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taxii_server import create_app

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{TOKEN_ENV} is not set"):
        create_app(with_metrics(sample_config, enabled=True, token_env=TOKEN_ENV), store)


def test_enabled_metrics_need_a_port_or_a_token() -> None:
    from connector.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="never served unguarded"):
        parse_config({"server": {"metrics": {"enabled": True}}})
    with pytest.raises(ConfigError, match="is the TAXII port"):
        parse_config({"server": {"port": 6100, "metrics": {"enabled": True, "port": 6100}}})


def test_healthz_and_readyz(taxii: RunningServer, store: Store) -> None:
    assert requests.get(taxii.url + "/healthz", timeout=30).json() == {"status": "alive"}
    ready = requests.get(taxii.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    head = Store.head()
    with store._write_engine.begin() as conn:  # as if another process had not migrated it yet
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0006'")
    try:
        behind = requests.get(taxii.url + "/readyz", timeout=30)
        assert behind.status_code == 503
        assert behind.json() == {"status": "not ready", "reason": f"schema at 0006, code at {head}"}
        assert requests.get(taxii.url + "/healthz", timeout=30).status_code == 200  # alive all the same
    finally:
        with store._write_engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{head}'")
    assert requests.head(taxii.url + "/readyz", timeout=30).status_code == 200


def test_metrics_of_several_workers_on_a_port_of_their_own_are_summed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    port = free_port()
    raw["server"]["metrics"] = {"enabled": True, "port": port}
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    before = set(Path(tempfile.gettempdir()).glob("meldpunt-metrics-*"))
    with serving(config, tmp_path, "--workers", "2") as served:
        poller = session_for("zcert-poller")
        poller.headers["Connection"] = "close"  # a connection each: the workers share them out
        for _ in range(20):
            assert poller.get(served.url + "/taxii2/").status_code == 200
        assert requests.get(served.url + "/metrics", timeout=30).status_code == 404  # not on the TAXII port
        found = samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text)
        code, _out, _err = served.stop()
    assert code == 0
    assert value(found, "meldpunt_http_requests_total", method="GET", endpoint="/taxii2/", status="200") == 20
    assert value(found, "meldpunt_store_up") == 1
    # The workers' metric files went with the server.
    assert set(Path(tempfile.gettempdir()).glob("meldpunt-metrics-*")) == before
