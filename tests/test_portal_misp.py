"""The operator's MISP outbox in the portal: entries per recipient and status, MISP's error of a
failed delivery, and the retry button (`meldpunt misp retry --recipient`), against the strict
MISP test server (tests/misp_fake.py) refusing every push."""

from __future__ import annotations

from pathlib import Path

from connector.adapters.mapping import load_mappings
from connector.channels.misp_sync import MispSync
from connector.ingest import Ingestor
from connector.passwords import hash_password
from tests.conftest import DIVD_SCAN, password_for, start_server
from tests.portal_client import PortalUser, csrf_of
from tests.test_misp_sync import deployment


def test_failed_deliveries_are_shown_and_queued_again(tmp_path: Path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config, store = deployment(tmp_path, fakes, monkeypatch, max_attempts=1)
    users = [
        u.model_copy(update={"password_hash": hash_password(password_for(u.username))}) for u in config.users
    ]
    config = config.model_copy(update={"users": users})
    assert Ingestor(config, store, load_mappings()).run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    fakes[0].fail_next(1000, "500")
    MispSync(config, store).run("zcert")
    failed = {r["recipient"]: r for r in MispSync(config, store).status()}["zcert"]["failed"]
    assert failed > 0
    info, server, thread = start_server(config, store)
    try:
        operator = PortalUser(info.url).logged_in("operator-1")
        page = operator.get(operator.url("/operations/"))
        outbox = page.text[page.text.index('id="outbox"') :]
        assert f"failed: {failed}" in outbox and "500" in outbox and 'id="retry-zcert"' in outbox
        assert 'id="retry-ibd"' not in outbox  # nothing failed there
        bare = operator.post(
            operator.url("/operations/misp-retry"), data={"recipient": "zcert"}, allow_redirects=False
        )
        assert bare.status_code == 403
        retried = operator.post(
            operator.url("/operations/misp-retry"),
            data={"csrf": csrf_of(page.text), "recipient": "zcert"},
            allow_redirects=False,
        )
        assert retried.status_code == 303 and retried.headers["location"].endswith(f"retried={failed}#outbox")
        status = {r["recipient"]: r for r in MispSync(config, store).status()}["zcert"]
        assert status["failed"] == 0 and status["pending"] >= failed
        # A recipient's user has no such button, nor page.
        zcert = PortalUser(info.url).logged_in("zcert-poller")
        token = csrf_of(zcert.get(zcert.url("/recipients/zcert/")).text)
        assert (
            zcert.post(
                zcert.url("/operations/misp-retry"),
                data={"csrf": token, "recipient": "zcert"},
                allow_redirects=False,
            ).status_code
            == 404
        )
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        store.close()
