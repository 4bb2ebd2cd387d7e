"""Constituency self-service through the portal (issue #16, item 2), on SQLite and PostgreSQL:
a recipient proposes, an operator approves, and the next ingest routes by the claim; a sub-range
of what the recipient holds approves itself; conflicts are shown to the operator only; an exact
duplicate of another's claim cannot be approved; bad values are refused; nobody else reaches
these pages; every form needs its CSRF token."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector import claims
from connector.config import Config
from connector.ingest import Ingestor
from connector.routing import Router
from connector.store import Store
from taxii_server.portal import data
from tests.conftest import DIVD_SCAN, RunningServer, serving, start_server
from tests.portal_client import PortalUser, csrf_of

SAMPLE_HOST = "192.0.2.10"


@pytest.fixture
def running(taxii: RunningServer) -> RunningServer:
    return taxii  # the DIVD sample, served (tests/conftest.py)


def scan_of(directory: Path, address: str) -> Path:
    """The sample's first finding, about `address` instead, with the sample's case file."""
    directory.mkdir(parents=True, exist_ok=True)
    line = DIVD_SCAN.read_text(encoding="utf-8").splitlines()[0].replace(SAMPLE_HOST, address)
    scan = directory / DIVD_SCAN.name
    scan.write_text(line + "\n", encoding="utf-8")
    case = DIVD_SCAN.with_name("DIVD-2024-00012.yaml")
    (directory / case.name).write_text(case.read_text(encoding="utf-8"), encoding="utf-8")
    return scan


def propose(portal: PortalUser, recipient: str, kind: str, value: str):  # type: ignore[no-untyped-def]
    return portal.post_form(f"/recipients/{recipient}/claims/", {"kind": kind, "value": value})


def pending_pk(store: Store, value: str) -> int:
    return next(c.pk for c in claims.claims(store, claims.PENDING) if c.value == value)


def test_approved_claim_routes_the_next_ingest(
    running: RunningServer,
    store: Store,
    sample_config: Config,
    mappings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    gemeente = PortalUser(running.url).logged_in("gemeente-poller")
    assert propose(gemeente, "gemeente-voorbeeld", "network", "203.0.113.0/24").status_code == 303
    page = gemeente.get(gemeente.url("/recipients/gemeente-voorbeeld/claims/")).text
    assert 'data-value="203.0.113.0/24" data-status="pending"' in page

    before = Ingestor(sample_config, store, mappings).run(
        "divd", "divd-nuclei", [scan_of(tmp_path / "a", "203.0.113.5")]
    )
    assert before.ok and before.counts["unrouted"] == 1

    operator = PortalUser(running.url).logged_in("operator-1")
    review = operator.get(operator.url("/operations/claims/"))
    assert review.status_code == 200 and "203.0.113.0/24" in review.text
    pk = pending_pk(store, "203.0.113.0/24")
    decided = operator.post(
        operator.url(f"/operations/claims/{pk}"),
        data={"csrf": csrf_of(review.text), "decision": "approve", "reason": "RIPE object checked"},
        allow_redirects=False,
    )
    assert decided.status_code == 303
    assert (
        'data-status="approved"' in gemeente.get(gemeente.url("/recipients/gemeente-voorbeeld/claims/")).text
    )

    after = Ingestor(sample_config, store, mappings).run(
        "divd", "divd-nuclei", [scan_of(tmp_path / "b", "203.0.113.6")]
    )
    assert after.ok and after.counts["routed"] == 1 and after.counts["unrouted"] == 0
    assert "203.0.113.6" in {i.ip for i in data.items(store, "gemeente-voorbeeld")}
    # What was routed before stays where it was (unrouted): routing happens at ingest.
    assert "203.0.113.5" not in {i.ip for i in data.items(store, "gemeente-voorbeeld")}


def test_a_sub_range_of_ones_own_approves_itself(running: RunningServer, store: Store) -> None:
    gemeente = PortalUser(running.url).logged_in("gemeente-poller")
    assert propose(gemeente, "gemeente-voorbeeld", "network", "198.51.100.36/30").status_code == 303
    assert [c.status for c in claims.claims(store, None, "gemeente-voorbeeld")] == ["approved"]
    # Again: already claimed.
    again = propose(gemeente, "gemeente-voorbeeld", "network", "198.51.100.36/30")
    assert again.status_code == 400 and "already" in again.text


def test_conflicts_are_for_the_operator_and_duplicates_cannot_be_approved(
    running: RunningServer, store: Store
) -> None:
    ibd = PortalUser(running.url).logged_in("ibd-poller")
    assert propose(ibd, "ibd", "network", "192.0.2.0/26").status_code == 303  # inside Z-CERT's /25
    assert propose(ibd, "ibd", "domain", "example.org").status_code == 303  # Z-CERT's domain
    own_page = ibd.get(ibd.url("/recipients/ibd/claims/")).text
    assert "zcert" not in own_page.lower() and "Z-CERT" not in own_page and "ziekenhuis" not in own_page
    assert own_page.count('data-status="pending"') == 2

    operator = PortalUser(running.url).logged_in("operator-1")
    review = operator.get(operator.url("/operations/claims/")).text
    assert "zcert: 192.0.2.0/25 (configuration)" in review
    assert "ziekenhuis-noord: 192.0.2.16/28 (configuration)" in review
    assert "zcert: example.org (configuration)" in review
    duplicate = operator.post(
        operator.url(f"/operations/claims/{pending_pk(store, 'example.org')}"),
        data={"csrf": csrf_of(review), "decision": "approve"},
        allow_redirects=False,
    )
    assert duplicate.status_code == 409 and "held by zcert" in duplicate.text
    assert claims.claims(store, claims.APPROVED) == []
    refused = operator.post(
        operator.url(f"/operations/claims/{pending_pk(store, 'example.org')}"),
        data={"csrf": csrf_of(review), "decision": "refuse", "reason": "Z-CERT's"},
        allow_redirects=False,
    )
    assert refused.status_code == 303
    assert (
        'data-value="example.org" data-status="refused"' in ibd.get(ibd.url("/recipients/ibd/claims/")).text
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("network", "203.0.113.1/24"),
        ("network", "::ffff:192.0.2.0/120"),
        ("domain", "nl"),
        ("domain", "co.uk"),
        ("domain", "bad name.nl"),
        ("domain", "exämple.nl"),  # IDNs in their xn-- form, as in the configuration
        ("domain", "-x.example.nl"),
        ("network", "2001:db8:10::%eth0/64"),  # approved, it stopped every router being built
        ("asn", "ASx"),
        ("asn", "AS²"),  # a digit to isdigit(), not to int(): was a 500
        ("asn", "0"),
        ("colour", "red"),
    ],
)
def test_bad_claims_are_refused(running: RunningServer, store: Store, kind: str, value: str) -> None:
    ibd = PortalUser(running.url).logged_in("ibd-poller")
    answer = propose(ibd, "ibd", kind, value)
    assert answer.status_code == 400 and 'id="claim-error"' in answer.text
    assert claims.claims(store) == []


def test_claims_pages_are_their_owners_and_need_the_token(running: RunningServer, store: Store) -> None:
    ibd = PortalUser(running.url).logged_in("ibd-poller")
    for page in ("/recipients/zcert/claims/", "/operations/claims/"):
        assert ibd.get(ibd.url(page)).status_code == 404
    token = csrf_of(ibd.get(ibd.url("/recipients/ibd/claims/")).text)
    foreign = ibd.post(
        ibd.url("/recipients/zcert/claims/"),
        data={"csrf": token, "kind": "asn", "value": "64999"},
        allow_redirects=False,
    )
    assert foreign.status_code == 404
    bare = ibd.post(
        ibd.url("/recipients/ibd/claims/"), data={"kind": "asn", "value": "64999"}, allow_redirects=False
    )
    assert bare.status_code == 403
    assert propose(ibd, "ibd", "asn", "AS64999").status_code == 303
    operator = PortalUser(running.url).logged_in("operator-1")
    pk = pending_pk(store, "64999")
    assert (
        operator.post(
            operator.url(f"/operations/claims/{pk}"), data={"decision": "approve"}, allow_redirects=False
        ).status_code
        == 403
    )
    # An operator cannot claim for a recipient (it does not speak for one).
    token = csrf_of(operator.get(operator.url("/operations/claims/")).text)
    assert (
        operator.post(
            operator.url("/recipients/ibd/claims/"),
            data={"csrf": token, "kind": "asn", "value": "64998"},
            allow_redirects=False,
        ).status_code
        == 404
    )
    assert [c.value for c in claims.claims(store)] == ["64999"]


def test_another_server_process_routes_by_a_claim_approved_elsewhere(
    running: RunningServer, store: Store, sample_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one store: a claim approved through the first reaches the second's router
    (inbox submissions) within its refresh interval, without a restart."""
    from taxii_server.router_refresh import RouterRefresher

    monkeypatch.setattr(RouterRefresher, "INTERVAL", 0.1)
    _other, server, thread = start_server(sample_config, store)
    try:
        state = server.config.app.state.meldpunt  # type: ignore[attr-defined]
        assert state.router.lookup_owner("203.0.113.9") is None
        ibd = PortalUser(running.url).logged_in("ibd-poller")
        assert propose(ibd, "ibd", "network", "203.0.113.0/24").status_code == 303
        operator = PortalUser(running.url).logged_in("operator-1")
        review = operator.get(operator.url("/operations/claims/")).text
        operator.post(
            operator.url(f"/operations/claims/{pending_pk(store, '203.0.113.0/24')}"),
            data={"csrf": csrf_of(review), "decision": "approve"},
            allow_redirects=False,
        )
        deadline = time.monotonic() + 20
        while state.router.lookup_owner("203.0.113.9") != "ibd":
            assert time.monotonic() < deadline, "the other server never rebuilt its router"
            time.sleep(0.1)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_routers_are_built_with_approved_claims(store: Store, sample_config: Config) -> None:
    assert Router(claims.with_claims(sample_config, store)).lookup_owner("203.0.113.9") is None
    claim = claims.propose(sample_config, store, "ibd", "network", "203.0.113.0/24", "ibd-poller")
    assert claim.status == claims.PENDING
    assert Router(claims.with_claims(sample_config, store)).lookup_owner("203.0.113.9") is None
    claims.decide(sample_config, store, claim.pk, True, "operator-1")
    assert Router(claims.with_claims(sample_config, store)).lookup_owner("203.0.113.9") == "ibd"
    with pytest.raises(claims.ClaimError):
        claims.decide(sample_config, store, claim.pk, False, "operator-1")  # decided already


def test_a_claim_inside_another_recipients_as_is_shown_to_the_operator(
    store: Store, sample_config: Config, tmp_path: Path
) -> None:
    """Routing tries addresses, then AS numbers: a network claim inside space Z-CERT receives
    through its AS 64500 is no same-kind conflict, yet approving it would move Z-CERT's
    notifications there. The operator sees who that space routes to today."""
    table = tmp_path / "ipasn.dat"
    table.write_text("203.0.113.0/24\t64500\n", encoding="utf-8")
    config = sample_config.model_copy(update={"asn_table": table})
    with serving(config, store) as info:
        gemeente = PortalUser(info.url).logged_in("gemeente-poller")
        assert propose(gemeente, "gemeente-voorbeeld", "network", "203.0.113.0/28").status_code == 303
        operator = PortalUser(info.url).logged_in("operator-1")
        review = operator.get(operator.url("/operations/claims/")).text
        assert "zcert: asn AS64500 (routes there today)" in review, review
        # Bad decisions: no decision is no refusal; a claim that does not exist is not found;
        # a CSRF token that is not ASCII is refused, not a 500.
        pk = pending_pk(store, "203.0.113.0/28")
        url = operator.url(f"/operations/claims/{pk}")
        assert operator.post(url, data={"csrf": csrf_of(review)}, allow_redirects=False).status_code == 400
        missing = operator.url(f"/operations/claims/{pk + 1000}")
        answer = operator.post(missing, data={"csrf": csrf_of(review), "decision": "approve"})
        assert answer.status_code == 404
        bad = operator.post(url, data={"csrf": "é", "decision": "approve"}, allow_redirects=False)
        assert bad.status_code == 403
        assert [c.status for c in claims.claims(store, None, "gemeente-voorbeeld")] == ["pending"]


def test_two_approvals_of_one_value_racing_leave_one_owner(
    store: Store, sample_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before approving reads, then writes: two approvals of the same prefix for two
    recipients at once would both pass it. The store's unique index refuses the second."""
    first = claims.propose(sample_config, store, "ibd", "network", "203.0.113.0/24", "op")
    second = claims.propose(sample_config, store, "gemeente-voorbeeld", "network", "203.0.113.0/24", "op")
    claims.decide(sample_config, store, first.pk, True, "operator-1")
    monkeypatch.setattr(claims, "holdings", lambda *_args: [])  # as if read before the first landed
    with pytest.raises(claims.ClaimError, match="held by another recipient"):
        claims.decide(sample_config, store, second.pk, True, "operator-1")
    assert [(c.recipient, c.value) for c in claims.claims(store, claims.APPROVED)] == [
        ("ibd", "203.0.113.0/24")
    ]


def test_route_explain_of_an_address_routes_by_approved_claims_as_ingest_does(tmp_path: Path) -> None:
    """Found by a review (4 December 2026): `route explain ADDRESS` opened no store, so it
    left approved claims out and said "unrouted" where ingest delivered to the claimant.
    Without a store it answers from the configuration and says so."""
    import shutil

    from typer.testing import CliRunner

    from connector.adapters.mapping import load_mappings
    from connector.cli import app
    from connector.collections import collection_rows
    from connector.config import load_config
    from tests.conftest import SAMPLE_CONFIG, divd_scan_as

    config_path = tmp_path / "meldpunt.yaml"
    shutil.copy(SAMPLE_CONFIG, config_path)  # its store: sqlite:///meldpunt.db beside it
    explain = ["route", "explain", "203.0.113.5", "--config", str(config_path)]
    before = CliRunner().invoke(app, explain)
    assert before.exit_code == 0, before.output
    assert "result: unrouted" in before.output
    assert "approved portal claims not consulted: the store" in before.output
    assert not (tmp_path / "meldpunt.db").exists()  # explain creates no store

    config = load_config(config_path)
    store = Store.open(f"sqlite:///{tmp_path / 'meldpunt.db'}")
    store.sync_collections(collection_rows(config))
    claim = claims.propose(config, store, "ibd", "network", "203.0.113.0/24", "ibd-poller")
    claims.decide(config, store, claim.pk, True, "operator-1")
    first = DIVD_SCAN.read_text().splitlines()[0].replace("192.0.2.10", "203.0.113.5")
    summary = Ingestor(config, store, load_mappings()).run(
        "divd", "divd-nuclei", [divd_scan_as(tmp_path, first + "\n")]
    )
    assert dict(summary.per_recipient) == {"ibd": 1}  # ingest routes by the claim
    store.close()

    after = CliRunner().invoke(app, explain)
    assert after.exit_code == 0, after.output
    assert "result: delivered to ibd" in after.output
    assert "not consulted" not in after.output
