"""The portal in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by selenium, against a real server on 127.0.0.1 (issue #16, "How it must be shown").

A recipient logs in with the keyboard, filters, opens a notification and acknowledges it, and
the store (what TAXII and `meldpunt stats` read) has the new state; a researcher uploads the
sample bundle and sees the inbox's per-object result; a recipient typing another recipient's
URL gets "not found"; a form stripped of its CSRF token is refused; the operator's page shows
its chart. Each view is photographed: into $MELDPUNT_PORTAL_SCREENSHOTS when set (the README's
pictures in docs/portal/ are made so), else into the test's temporary directory.

Selenium is given the driver and browser paths, so selenium-manager downloads nothing. Without
/usr/bin/chromium these tests are skipped, unless MELDPUNT_REQUIRE_BROWSER=1 (set by .ci/run),
which makes a missing browser a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from taxii2client.v21 import Collection, as_pages

from connector import stats
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.ingest import Ingestor
from connector.store import Store
from connector.store import states as st
from taxii_server.portal import data
from tests.conftest import REPO, RunningServer, password_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BUNDLE = REPO / "samples" / "stix" / "researcher-1.bundle.json"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if os.environ.get("MELDPUNT_REQUIRE_BROWSER") == "1":
        raise RuntimeError(
            "MELDPUNT_REQUIRE_BROWSER=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing"
        )
    pytest.skip(
        "no chromium/chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the HTTP tests (tests/test_portal.py) cover both engines; a browser adds
    nothing an engine changes, and each browser test costs seconds."""
    yield f"sqlite:///{tmp_path / 'meldpunt.db'}"


@pytest.fixture
def running(taxii: RunningServer) -> RunningServer:
    return taxii  # the DIVD sample, served (tests/conftest.py)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("MELDPUNT_PORTAL_SCREENSHOTS") or tmp_path / "shots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, css: str, timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def shoot(driver: WebDriver, path: Path) -> None:
    """The whole page (up to 4,000 pixels high), not just the window."""
    height = min(int(driver.execute_script("return document.documentElement.scrollHeight")), 4000)
    driver.set_window_size(1280, max(height, 800))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)


def log_in(driver: WebDriver, running: RunningServer, username: str, shots: Path | None = None) -> None:
    """With the keyboard only: type, Tab to the password, Enter."""
    driver.get(running.url + "/portal/login")
    field = wait(driver, "#username")
    assert driver.switch_to.active_element == field  # focused on arrival
    field.send_keys(username)
    field.send_keys(Keys.TAB)
    driver.switch_to.active_element.send_keys(password_for(username))
    if shots is not None:
        shoot(driver, shots / "login.png")
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    WebDriverWait(driver, 20).until(lambda d: "/portal/login" not in d.current_url)
    assert wait(driver, "#username").text == username


def test_a_recipient_filters_acknowledges_and_the_state_changes(
    browser: WebDriver, running: RunningServer, store: Store, shots: Path
) -> None:
    log_in(browser, running, "zcert-poller", shots)
    assert browser.current_url.endswith("/portal/recipients/zcert/")
    everything = data.items(store, "zcert")
    assert wait(browser, "#total").text == str(len(everything))
    shoot(browser, shots / "recipient-notifications.png")

    search = browser.find_element(By.ID, "f-q")
    search.send_keys("2001:db8:10::/48")
    Select(browser.find_element(By.ID, "f-state")).select_by_value("routed")
    browser.find_element(By.ID, "filter-button").click()
    ipv6 = [i for i in everything if i.ip and ":" in i.ip]
    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "total").text == str(len(ipv6))
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#notifications tbody tr")
    assert {r.get_attribute("data-sighting") for r in rows} == {i.sighting for i in ipv6}
    shoot(browser, shots / "recipient-filtered.png")

    chosen = rows[0].get_attribute("data-sighting")
    rows[0].find_element(By.TAG_NAME, "a").click()
    assert wait(browser, "#sighting-id").text == chosen
    # Opened by the recipient's own user: delivered (as a TAXII fetch would make it).
    assert browser.find_element(By.ID, "state").get_attribute("data-state") == "delivered"
    browser.find_element(By.ID, "note").send_keys("patched tonight")
    shoot(browser, shots / "recipient-notification.png")
    browser.find_element(By.ID, "say-acknowledged").click()
    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "acknowledged"
    )
    assert "patched tonight" in browser.find_element(By.ID, "history").text

    # The store holds it, as TAXII feedback and `meldpunt stats` read it.
    assert stats.recipient(store, "zcert").acknowledged == 1
    number = store.collection_number(recipient_collection_id("zcert"))
    with store.reading() as reader:
        pks = reader.notification_pks_by_id([chosen]).popitem()[1]
        state = st.of(reader.conn, number, pks)
    assert [s.state for s in state.values()] == ["acknowledged"]
    # Over TAXII the recipient fetches it (taxii2-client): delivered now, and still acknowledged.
    with Collection(
        running.collection_url(recipient_collection_id("zcert")),
        user="zcert-poller",
        password=password_for("zcert-poller"),
    ) as collection:
        ids = {o["id"] for page in as_pages(collection.get_objects, per_request=50) for o in page["objects"]}
    assert chosen in ids
    figures = stats.recipient(store, "zcert")
    assert figures.acknowledged == 1 and figures.fetched == figures.reached

    # The list shows the new state under the state filter.
    browser.get(running.url + "/portal/recipients/zcert/?state=acknowledged")
    rows = browser.find_elements(By.CSS_SELECTOR, "#notifications tbody tr")
    assert [r.get_attribute("data-sighting") for r in rows] == [chosen]


def test_a_researcher_uploads_the_sample_bundle(
    browser: WebDriver, running: RunningServer, store: Store, shots: Path
) -> None:
    log_in(browser, running, "researcher-1")
    assert browser.current_url.endswith("/portal/submissions/")
    browser.find_element(By.ID, "bundle").send_keys(str(BUNDLE))
    browser.find_element(By.ID, "upload-button").click()
    status_id = wait(browser, "#status-id").text
    saved = store.status(status_id)
    assert saved is not None
    _owner, status = saved
    rows = browser.find_elements(By.CSS_SELECTOR, "#outcomes tbody tr")
    assert len(rows) == status["success_count"] + len(status.get("failures", []))
    shown = {
        r.find_element(By.TAG_NAME, "code").text for r in rows if "ok" in (r.get_attribute("class") or "")
    }
    assert shown == {s["id"] for s in status.get("successes", [])}
    assert browser.find_element(By.ID, "success-count").text == str(status["success_count"])
    shoot(browser, shots / "researcher-upload.png")


def test_a_recipient_cannot_reach_another_recipients_pages(
    browser: WebDriver, running: RunningServer, store: Store, shots: Path
) -> None:
    log_in(browser, running, "ibd-poller")
    foreign = data.items(store, "zcert")[0].sighting
    for path in (
        "/portal/recipients/zcert/",
        f"/portal/recipients/ibd/notifications/{foreign}",
        f"/portal/recipients/zcert/notifications/{foreign}",
        "/portal/operations/",
    ):
        browser.get(running.url + path)
        assert wait(browser, "#error").text == "Not found.", path
        assert foreign not in browser.page_source
    shoot(browser, shots / "not-found.png")


def test_a_form_without_its_csrf_token_is_refused(
    browser: WebDriver, running: RunningServer, store: Store
) -> None:
    log_in(browser, running, "ibd-poller")
    sighting = data.items(store, "ibd")[0].sighting
    browser.get(f"{running.url}/portal/recipients/ibd/notifications/{sighting}")
    wait(browser, "#say-resolved")
    browser.execute_script("document.querySelector('.actions input[name=csrf]').remove()")
    browser.find_element(By.ID, "say-resolved").click()
    assert "Refused" in wait(browser, "#error").text
    assert stats.recipient(store, "ibd").closed == {}


def test_the_operator_sees_runs_misrouting_and_the_chart(
    browser: WebDriver, running: RunningServer, store: Store, shots: Path
) -> None:
    from tests.portal_client import PortalUser

    sighting = data.items(store, "ibd")[0].sighting
    ibd = PortalUser(running.url).logged_in("ibd-poller")
    assert (
        ibd.post_form(f"/recipients/ibd/notifications/{sighting}", {"state": "not-ours"}).status_code == 303
    )
    log_in(browser, running, "operator-1")
    browser.get(running.url + "/portal/operations/")
    assert wait(browser, "svg.plot rect")
    assert sighting in browser.find_element(By.ID, "misrouted").text
    assert "divd-nuclei" in browser.find_element(By.ID, "runs").text
    shoot(browser, shots / "operator.png")
    browser.get(running.url + "/portal/operations/?lang=nl")
    assert wait(browser, "h1").text == "Beheer"
    browser.get(running.url + "/portal/recipients/zcert/")
    assert wait(browser, "h1").text.startswith("Meldingen voor")  # the language stays chosen
    shoot(browser, shots / "operator-recipient-nl.png")


def test_an_operator_approves_a_claim_and_the_next_ingest_routes_by_it(
    browser: WebDriver,
    running: RunningServer,
    store: Store,
    sample_config: Config,
    mappings,  # type: ignore[no-untyped-def]
    shots: Path,
    tmp_path: Path,
) -> None:
    from tests.test_portal_claims import scan_of

    log_in(browser, running, "gemeente-poller")
    browser.get(running.url + "/portal/recipients/gemeente-voorbeeld/claims/")
    Select(wait(browser, "#claim-kind")).select_by_value("network")
    browser.find_element(By.ID, "claim-value").send_keys("203.0.113.0/24")
    browser.find_element(By.ID, "claim-button").click()
    row = wait(browser, '#claims tr[data-value="203.0.113.0/24"]')
    assert row.get_attribute("data-status") == "pending"
    shoot(browser, shots / "recipient-claims.png")
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    wait(browser, "#login-button")

    log_in(browser, running, "operator-1")
    browser.get(running.url + "/portal/operations/claims/")
    pending = wait(browser, "#pending-claims tbody tr")
    assert "203.0.113.0/24" in pending.text
    pk = pending.get_attribute("data-claim")
    browser.find_element(By.ID, f"reason-{pk}").send_keys("RIPE object checked")
    shoot(browser, shots / "operator-claims.png")
    browser.find_element(By.ID, f"approve-{pk}").click()
    assert "RIPE object checked" in wait(browser, "#decided-claims").text

    run = Ingestor(sample_config, store, mappings).run(
        "divd", "divd-nuclei", [scan_of(tmp_path / "scan", "203.0.113.7")]
    )
    assert run.ok and run.counts["routed"] == 1
    browser.find_element(By.CSS_SELECTOR, ".logout button").click()
    log_in(browser, running, "gemeente-poller")
    browser.get(running.url + "/portal/recipients/gemeente-voorbeeld/?q=203.0.113.0/24")
    assert wait(browser, "#total").text == "1"
    assert "203.0.113.7" in browser.find_element(By.ID, "notifications").text


def test_a_bundle_dropped_on_the_upload_field_is_sent(
    browser: WebDriver, running: RunningServer, store: Store
) -> None:
    """The portal's one script: a file dropped on the field becomes the field's file."""
    log_in(browser, running, "researcher-1")
    browser.execute_script(
        """
        const transfer = new DataTransfer();
        transfer.items.add(new File([arguments[0]], "dropped.json", {type: "application/json"}));
        const zone = document.querySelector(".drop");
        const how = {dataTransfer: transfer, bubbles: true, cancelable: true};
        zone.dispatchEvent(new DragEvent("dragover", how));
        zone.dispatchEvent(new DragEvent("drop", how));
        """,
        BUNDLE.read_text(encoding="utf-8"),
    )
    assert browser.execute_script("return document.getElementById('bundle').files[0].name") == "dropped.json"
    browser.find_element(By.ID, "upload-button").click()
    status_id = wait(browser, "#status-id").text
    saved = store.status(status_id)
    assert saved is not None and saved[1]["total_count"] > 0
