"""The web portal over HTTP (issue #16), against a real server on 127.0.0.1, on SQLite and
PostgreSQL: login and logout with the TAXII users, CSRF refusals, deny by default, the 404 for
every recipient's pages and notifications seen by every other recipient's user, acknowledging
through the portal and seeing it in the statistics and over TAXII, the CSV export, the
researcher's upload (the inbox's own status resource), the operator's page, both languages.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import requests

from connector import stats
from connector.collections import recipient_collection_id
from connector.config import Config
from connector.ingest import Ingestor
from connector.store import Store
from connector.store import states as st
from taxii_server.portal import data
from taxii_server.portal.i18n import MESSAGES
from tests.conftest import DIVD_SCAN, REPO, RunningServer, password_for, start_server
from tests.portal_client import PortalUser, csrf_of

BUNDLE = REPO / "samples" / "stix" / "researcher-1.bundle.json"


@pytest.fixture
def running(taxii: RunningServer) -> RunningServer:
    return taxii  # the DIVD sample, served (tests/conftest.py)


def reader_of(config: Config, recipient: str) -> str:
    return next(u.username for u in config.users if u.recipient == recipient)


def propose_claim(portal: PortalUser, recipient: str, kind: str, value: str):  # type: ignore[no-untyped-def]
    return portal.post_form(f"/recipients/{recipient}/claims/", {"kind": kind, "value": value})


def user(running: RunningServer, username: str) -> PortalUser:
    return PortalUser(running.url).logged_in(username)


# --- login, logout, sessions, CSRF ----------------------------------------------------------


def test_login_sets_a_strict_httponly_session_and_logout_ends_it(running: RunningServer) -> None:
    for path in ("/portal/", "/portal/recipients/zcert/", "/portal/operations/", "/portal/no/such/page"):
        anonymous = requests.get(running.url + path, allow_redirects=False)
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/portal/login", path

    portal = PortalUser(running.url)
    answer = portal.login("zcert-poller")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "meldpunt_portal=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/portal" in cookie and "Secure" not in cookie  # http here: no public_url
    stolen = portal.cookies.get("meldpunt_portal")
    home = portal.get(portal.url("/"))
    assert home.url.endswith("/portal/recipients/zcert/") and "zcert-poller" in home.text
    assert "default-src 'self'" in home.headers["content-security-policy"]

    page = portal.get(portal.url("/recipients/zcert/"))
    logout = portal.post(portal.url("/logout"), data={"csrf": csrf_of(page.text)}, allow_redirects=False)
    assert logout.status_code == 303 and logout.headers["location"] == "/portal/login"
    assert portal.get(portal.url("/recipients/zcert/"), allow_redirects=False).status_code == 303
    # The old cookie, replayed after logout, is no session any more.
    replay = requests.get(
        running.url + "/portal/recipients/zcert/", cookies={"meldpunt_portal": stolen}, allow_redirects=False
    )
    assert replay.status_code == 303


def test_logout_ends_the_users_sessions_in_every_server_process(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    """Two servers on one store (two `serve` processes): a session works on both; logging out
    on one ends it, and the user's other sessions, on the other too; a new login works."""
    other, server, thread = start_server(sample_config, store)
    try:
        first = user(running, "zcert-poller")
        second = user(running, "zcert-poller")  # another browser of the same user
        cookie = {"meldpunt_portal": first.cookies["meldpunt_portal"]}
        elsewhere = other.url + "/portal/recipients/zcert/"
        assert requests.get(elsewhere, cookies=cookie, allow_redirects=False).status_code == 200
        page = first.get(first.url("/recipients/zcert/"))
        assert (
            first.post(
                first.url("/logout"), data={"csrf": csrf_of(page.text)}, allow_redirects=False
            ).status_code
            == 303
        )
        assert requests.get(elsewhere, cookies=cookie, allow_redirects=False).status_code == 303
        assert second.get(second.url("/recipients/zcert/"), allow_redirects=False).status_code == 303
        again = PortalUser(other.url).logged_in("zcert-poller")
        assert again.get(again.url("/recipients/zcert/"), allow_redirects=False).status_code == 200
        # Another user's sessions are not touched.
        ibd = user(running, "ibd-poller")
        assert ibd.get(ibd.url("/recipients/ibd/"), allow_redirects=False).status_code == 200
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


def test_wrong_password_and_unknown_user_are_refused_alike(running: RunningServer) -> None:
    for username, password in (("zcert-poller", "wrong"), ("nobody", "wrong")):
        answer = PortalUser(running.url).login(username, password)
        assert answer.status_code in (401, 429)
        assert "meldpunt_portal=" not in answer.headers.get("set-cookie", "")
        assert MESSAGES["en"]["login_failed"] in answer.text or MESSAGES["en"]["login_busy"] in answer.text


def test_forms_without_the_csrf_token_are_refused(running: RunningServer, store: Store) -> None:
    # Login form without its token, or with another session's: 403, nobody logged in.
    bare = requests.post(
        running.url + "/portal/login",
        data={"username": "zcert-poller", "password": password_for("zcert-poller")},
        allow_redirects=False,
    )
    assert bare.status_code == 403 and "meldpunt_portal=" not in bare.headers.get("set-cookie", "")

    portal = user(running, "zcert-poller")
    target = data.items(store, "zcert")[0].sighting
    path = f"/recipients/zcert/notifications/{target}"
    for token in (None, "", "forged", csrf_of(user(running, "noord-poller").get(portal.url("/")).text)):
        form = {"state": "acknowledged"} | ({"csrf": token} if token is not None else {})
        refused = portal.post(portal.url(path), data=form, allow_redirects=False)
        assert refused.status_code == 403, token
    assert stats.recipient(store, "zcert").acknowledged == 0
    logout = portal.post(portal.url("/logout"), data={}, allow_redirects=False)
    assert logout.status_code == 403
    assert portal.get(portal.url("/recipients/zcert/")).status_code == 200  # still logged in


def test_form_bodies_are_bounded(running: RunningServer) -> None:
    """A form is read only when its declared length is small (an upload: up to the inbox's
    limit); an undeclared (chunked) or larger body is refused before it is read."""
    portal = PortalUser(running.url)
    token = csrf_of(portal.get(portal.url("/login")).text)
    huge = portal.post(
        portal.url("/login"),
        data={"csrf": token, "username": "x" * 100_000, "password": "y"},
        allow_redirects=False,
    )
    assert huge.status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        yield f"csrf={token}&username=zcert-poller&password=x".encode()

    chunked = portal.post(
        portal.url("/login"),
        data=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
    )
    assert chunked.status_code == 413


def test_a_tampered_session_cookie_is_no_session(running: RunningServer) -> None:
    portal = user(running, "zcert-poller")
    value = portal.cookies["meldpunt_portal"]
    body, signature = value.split(".")
    for forged in (body + "." + signature[::-1], body[:-2] + "." + signature, "x.y", ""):
        answer = requests.get(
            running.url + "/portal/recipients/zcert/",
            cookies={"meldpunt_portal": forged},
            allow_redirects=False,
        )
        assert answer.status_code == 303, forged


def test_the_session_cookie_is_secure_behind_https(store: Store, sample_config: Config) -> None:
    config = sample_config.model_copy(
        update={"server": sample_config.server.model_copy(update={"public_url": "https://meldpunt.example/"})}
    )
    info, server, thread = start_server(config, store)
    try:
        form = requests.get(info.url + "/portal/login")
        assert "Secure" in form.headers["set-cookie"]
        # A browser sends a Secure cookie over https only; here it is handed over by hand.
        login_cookie = form.headers["set-cookie"].split(";")[0]
        answer = requests.post(
            info.url + "/portal/login",
            data={
                "csrf": csrf_of(form.text),
                "username": "zcert-poller",
                "password": password_for("zcert-poller"),
            },
            headers={"Cookie": login_cookie},
            allow_redirects=False,
        )
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)


# --- who sees what ----------------------------------------------------------------------------


def test_no_recipient_reaches_another_recipients_pages(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    """The full matrix: every recipient's user against every other recipient's list, export,
    notification pages (under the other's URL and under its own), and a made-up one."""
    recipients = [r.id for r in sample_config.recipients]
    own = {r: {i.sighting for i in data.items(store, r)} for r in recipients}
    assert all(own.values())
    for reader_recipient in recipients:
        portal = user(running, reader_of(sample_config, reader_recipient))
        assert portal.get(portal.url(f"/recipients/{reader_recipient}/")).status_code == 200
        for other in recipients:
            if other == reader_recipient:
                continue
            for page in (f"/recipients/{other}/", f"/recipients/{other}/export.csv"):
                assert portal.get(portal.url(page)).status_code == 404, (reader_recipient, page)
            foreign = sorted(own[other] - own[reader_recipient])
            for sighting in foreign[:3]:
                for page in (
                    f"/recipients/{other}/notifications/{sighting}",
                    f"/recipients/{reader_recipient}/notifications/{sighting}",
                ):
                    answer = portal.get(portal.url(page))
                    assert answer.status_code == 404, (reader_recipient, page)
                    assert sighting not in answer.text
                said = portal.post(
                    portal.url(f"/recipients/{reader_recipient}/notifications/{sighting}"),
                    data={
                        "csrf": csrf_of(portal.get(portal.url("/recipients/" + reader_recipient + "/")).text),
                        "state": "not-ours",
                    },
                    allow_redirects=False,
                )
                assert said.status_code == 404
        made_up = "sighting--00000000-0000-5000-8000-000000000000"
        answer = portal.get(portal.url(f"/recipients/{reader_recipient}/notifications/{made_up}"))
        assert answer.status_code == 404
        assert portal.get(portal.url("/recipients/no-such-recipient/")).status_code == 404
        unknown = portal.get(portal.url("/no/such/page"))
        assert unknown.status_code == 404 and 'id="error"' in unknown.text
        assert portal.get(portal.url("/operations/")).status_code == 404
        assert portal.get(portal.url("/submissions/")).status_code == 404
    # Nobody said anything of another's notification.
    for r in recipients:
        assert stats.recipient(store, r).closed == {}


def test_an_operator_sees_every_recipient_but_cannot_speak_for_one(
    running: RunningServer, store: Store
) -> None:
    portal = user(running, "operator-1")
    home = portal.get(portal.url("/"))
    assert home.status_code == 200 and "/portal/operations/" in home.text
    sighting = data.items(store, "ibd")[0].sighting
    page = portal.get(portal.url(f"/recipients/ibd/notifications/{sighting}"))
    assert page.status_code == 200 and 'name="state"' not in page.text
    assert 'data-state="routed"' in page.text  # an operator looking on delivers nothing
    assert stats.recipient(store, "ibd").fetched == 0
    said = portal.post(
        portal.url(f"/recipients/ibd/notifications/{sighting}"),
        data={"csrf": csrf_of(page.text), "state": "acknowledged"},
        allow_redirects=False,
    )
    assert said.status_code == 404
    assert stats.recipient(store, "ibd").acknowledged == 0


# --- the recipient's view -----------------------------------------------------------------------


def test_acknowledge_then_resolve_shows_in_stats_and_over_taxii(running: RunningServer, store: Store) -> None:
    portal = user(running, "ibd-poller")
    item = data.items(store, "ibd")[0]
    page = f"/recipients/ibd/notifications/{item.sighting}"
    shown = portal.get(portal.url(page))
    # Opened by the recipient's own user: delivered, as a TAXII fetch would make it.
    assert shown.status_code == 200 and item.sighting in shown.text and 'data-state="delivered"' in shown.text
    answer = portal.post_form(page, {"state": "acknowledged", "note": "looking into it"})
    assert answer.status_code == 303
    after = portal.get(portal.url(page))
    assert 'data-state="acknowledged"' in after.text and "looking into it" in after.text
    figures = stats.recipient(store, "ibd")
    assert figures.acknowledged == 1 and figures.closed == {}
    assert portal.post_form(page, {"state": "resolved"}).status_code == 303
    figures = stats.recipient(store, "ibd")
    assert (
        figures.acknowledged == 1
        and figures.closed == {"resolved": 1}
        and figures.open == figures.reached - 1
    )
    number = store.collection_number(recipient_collection_id("ibd"))
    with store.reading() as reader:
        events = [
            e
            for e in st.events(reader.conn, reader.notification_pks_by_id([item.sighting]).popitem()[1])
            if e.collection == number
        ]
    assert [(e.state, e.source, e.actor) for e in events] == [
        ("delivered", "portal", "ibd-poller"),
        ("acknowledged", "portal", "ibd-poller"),
        ("resolved", "portal", "ibd-poller"),
    ]
    # The case's statistics (what the reporter sees) count it too.
    case = stats.case(store, "DIVD-2024-00012")
    assert case.resolved == 1 and case.acknowledged == 1
    # Over TAXII the same notification is still served to the recipient; its state is the
    # recipient's own feedback, which the TAXII feedback channel refuses to repeat for others.
    taxii = requests.get(
        running.collection_url(recipient_collection_id("ibd")) + "objects/",
        params={"match[id]": item.sighting},
        auth=("ibd-poller", password_for("ibd-poller")),
        headers={"Accept": "application/taxii+json;version=2.1"},
    )
    assert taxii.status_code == 200 and taxii.json()["objects"][0]["id"] == item.sighting
    # Any state given is one of the four; another value is refused.
    assert portal.post_form(page, {"state": "gone"}).status_code == 400
    # Accountability: the audit log (`meldpunt audit`) has the login, the reads and the feedback.
    actions = [e["action"] for e in store.audit_entries() if e["username"] == "ibd-poller"]
    assert actions[0] == "portal-login" and actions.count("portal-feedback") == 2
    assert "portal-read" in actions


def test_what_an_operator_deleted_over_taxii_is_not_shown(running: RunningServer, store: Store) -> None:
    """A misrouted notification the operator took out of a collection (TAXII DELETE) is gone
    from that recipient's list, export, detail and buttons, as from its TAXII collection."""
    before = data.items(store, "ibd")
    gone = before[0].sighting
    deleted = requests.delete(
        running.collection_url(recipient_collection_id("ibd")) + f"objects/{gone}/",
        auth=("operator-1", password_for("operator-1")),
        headers={"Accept": "application/taxii+json;version=2.1"},
    )
    assert deleted.status_code == 200
    assert [i.sighting for i in data.items(store, "ibd")] == [i.sighting for i in before[1:]]
    portal = user(running, "ibd-poller")
    listing = portal.get(portal.url("/recipients/ibd/"))
    assert gone not in listing.text and f'<span id="total">{len(before) - 1}</span>' in listing.text
    assert gone not in portal.get(portal.url("/recipients/ibd/export.csv")).text
    assert portal.get(portal.url(f"/recipients/ibd/notifications/{gone}")).status_code == 404
    token = csrf_of(listing.text)
    said = portal.post(
        portal.url(f"/recipients/ibd/notifications/{gone}"),
        data={"csrf": token, "state": "resolved"},
        allow_redirects=False,
    )
    assert said.status_code == 404 and stats.recipient(store, "ibd").closed == {}
    kept = before[1].sighting
    assert portal.get(portal.url(f"/recipients/ibd/notifications/{kept}")).status_code == 200


def test_the_kept_list_follows_states_deliveries_and_deletions(
    running: RunningServer,
    store: Store,
    sample_config: Config,
    mappings,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """The server keeps a recipient's list while its collection is unchanged; what changes
    meanwhile still shows at once: a state given elsewhere (TAXII, another process), a new
    delivery, a deletion."""
    from connector import feedback
    from tests.test_portal_claims import scan_of

    portal = user(running, "ibd-poller")

    def total(**params: str) -> int:
        found = re.search(
            r'<span id="total">(\d+)</span>', portal.get(portal.url("/recipients/ibd/"), params=params).text
        )
        assert found
        return int(found.group(1))

    before = total()
    first = data.items(store, "ibd")[0].sighting
    feedback.give(store, "ibd", first, "acknowledged", source="taxii", actor="ibd-poller")
    assert total(state="acknowledged") == 1
    assert (
        Ingestor(sample_config, store, mappings)
        .run("divd", "divd-nuclei", [scan_of(tmp_path, "198.51.100.77")])
        .ok
    )
    assert total() == before + 1 and total(q="198.51.100.77") == 1
    deleted = requests.delete(
        running.collection_url(recipient_collection_id("ibd")) + f"objects/{first}/",
        auth=("operator-1", password_for("operator-1")),
        headers={"Accept": "application/taxii+json;version=2.1"},
    )
    assert deleted.status_code == 200
    assert total() == before and total(state="acknowledged") == 0


def test_kept_lists_are_bounded() -> None:
    lists = data.Lists(size=2, max_items=5)
    listed = [object()] * 3
    lists.put(("a", ()), (1,), listed)  # type: ignore[arg-type]
    lists.put(("b", ()), (1,), listed)  # type: ignore[arg-type]  # 6 items: "a" goes
    assert lists.get(("a", ()), (1,)) is None and lists.get(("b", ()), (1,)) is listed
    lists.put(("c", ()), (1,), [object()] * 6)  # type: ignore[arg-type]  # too large to keep
    assert lists.get(("c", ()), (1,)) is None and lists.get(("b", ()), (1,)) is listed
    assert lists.get(("b", ()), (2,)) is None  # the collection changed


def test_filters_paging_and_csv_export(running: RunningServer, store: Store) -> None:
    portal = user(running, "zcert-poller")
    everything = data.items(store, "zcert")
    listing = portal.get(portal.url("/recipients/zcert/"))
    assert re.search(rf'<span id="total">{len(everything)}</span>', listing.text)
    ipv6 = portal.get(portal.url("/recipients/zcert/"), params={"q": "2001:db8:10::/48"})
    expected = [i for i in everything if i.ip and ":" in i.ip]
    assert expected and f'<span id="total">{len(expected)}</span>' in ipv6.text
    domain = portal.get(portal.url("/recipients/zcert/"), params={"q": "example.org"})
    by_domain = [i for i in everything if (i.hostname or "").endswith("example.org")]
    assert f'<span id="total">{len(by_domain)}</span>' in domain.text
    none = portal.get(portal.url("/recipients/zcert/"), params={"state": "resolved"})
    assert '<span id="total">0</span>' in none.text
    # One day's notifications: those first seen that day.
    day = everything[0].first_seen[:10]
    that_day = [i for i in everything if i.first_seen.startswith(day)]
    assert (
        f'<span id="total">{len(that_day)}</span>'
        in portal.get(portal.url("/recipients/zcert/"), params={"since": day, "until": day}).text
    )
    assert (
        '<span id="total">0</span>'
        in portal.get(portal.url("/recipients/zcert/"), params={"until": "2000-01-01"}).text
    )
    exported = portal.get(portal.url("/recipients/zcert/export.csv"), params={"q": "2001:db8:10::/48"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["sighting"] for r in rows) == sorted(i.sighting for i in expected)
    assert {r["state"] for r in rows} == {"routed"}
    paged = [data.listing(everything, data.Filters(), p, size=4).items for p in (1, 2, 3, 4)]
    assert [i.sighting for part in paged for i in part] == [i.sighting for i in everything]


def test_a_parent_sees_which_child_organisation_each_notification_is_for(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    """Z-CERT receives what concerns Ziekenhuis Noord (deliver_to_parent): its list says so and
    filters by it; the IBD does not receive Gemeente Voorbeeld's (deliver_to_parent: false)."""
    noord = {i.sighting for i in data.items(store, "ziekenhuis-noord")}
    zcert = data.items(store, "zcert", sample_config)
    assert noord and {i.sighting for i in zcert if i.concerns == "ziekenhuis-noord"} == noord
    assert {i.concerns for i in zcert} == {"zcert", "ziekenhuis-noord"}
    portal = user(running, "zcert-poller")
    page = portal.get(portal.url("/recipients/zcert/"), params={"concerns": "ziekenhuis-noord"})
    assert f'<span id="total">{len(noord)}</span>' in page.text and '<label for="f-concerns">' in page.text
    rows = list(csv.DictReader(io.StringIO(portal.get(portal.url("/recipients/zcert/export.csv")).text)))
    assert {r["sighting"] for r in rows if r["concerns"] == "ziekenhuis-noord"} == noord
    ibd = data.items(store, "ibd", sample_config)
    assert {i.concerns for i in ibd} == {"ibd"}
    assert not {i.sighting for i in ibd} & {i.sighting for i in data.items(store, "gemeente-voorbeeld")}
    # A recipient without children has no such filter.
    leaf = user(running, "noord-poller").get(portal.url("/recipients/ziekenhuis-noord/"))
    assert 'id="f-concerns"' not in leaf.text


def test_stix_bundle_export_of_a_selection(running: RunningServer, store: Store) -> None:
    import stix2
    from stix2validator import ValidationOptions, validate_instance

    portal = user(running, "zcert-poller")
    everything = data.items(store, "zcert")
    expected = {i.sighting for i in everything if i.ip and ":" in i.ip}
    exported = portal.get(portal.url("/recipients/zcert/export.json"), params={"q": "2001:db8:10::/48"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/stix+json")
    body = exported.json()
    assert {o["id"] for o in body["objects"] if o["type"] == "sighting"} == expected
    assert len({o["id"] for o in body["objects"]}) == len(body["objects"])  # shared objects once
    result = validate_instance(body, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]
    stix2.parse(body, allow_custom=True)
    # The same objects TAXII serves the recipient for those notifications.
    taxii = requests.get(
        running.collection_url(recipient_collection_id("zcert")) + "objects/",
        params={"limit": 1000},
        auth=("zcert-poller", password_for("zcert-poller")),
        headers={"Accept": "application/taxii+json;version=2.1"},
    ).json()["objects"]
    served = {o["id"]: o for o in taxii}
    for obj in body["objects"]:
        assert served[obj["id"]] == obj
    assert user(running, "ibd-poller").get(portal.url("/recipients/zcert/export.json")).status_code == 404


def test_csv_cells_that_a_spreadsheet_would_run_are_text() -> None:
    assert data._cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and data._cell("example.nl") == "example.nl"


# --- researcher and operator --------------------------------------------------------------------


def test_a_researcher_uploads_a_bundle_and_sees_the_inbox_status(
    running: RunningServer, store: Store
) -> None:
    portal = user(running, "researcher-1")
    page = portal.get(portal.url("/submissions/"))
    assert page.status_code == 200
    with BUNDLE.open("rb") as handle:
        answer = portal.post(
            portal.url("/submissions/"),
            data={"csrf": csrf_of(page.text)},
            files={"bundle": ("bundle.json", handle, "application/json")},
        )
    assert answer.status_code == 200, answer.text[:500]
    status_id = re.search(r'<code id="status-id">([^<]+)</code>', answer.text).group(1)  # type: ignore[union-attr]
    saved = store.status(status_id)
    assert saved is not None
    owner, status = saved
    assert owner == "researcher-1"
    objects = json.loads(BUNDLE.read_text())["objects"]
    assert status["total_count"] == len(objects)
    for success in status.get("successes", []):
        assert success["id"] in answer.text
    assert f'<span id="success-count">{status["success_count"]}</span>' in answer.text
    # The same status over TAXII, for the same user.
    taxii = requests.get(
        f"{running.api_root}status/{status_id}/",
        auth=("researcher-1", password_for("researcher-1")),
        headers={"Accept": "application/taxii+json;version=2.1"},
    )
    assert taxii.status_code == 200 and taxii.json()["success_count"] == status["success_count"]
    # Not JSON: refused with a message, nothing stored; without the token: 403.
    bad = portal.post(
        portal.url("/submissions/"),
        data={"csrf": csrf_of(page.text)},
        files={"bundle": ("x.json", b"not json", "application/json")},
    )
    assert bad.status_code == 400 and 'id="upload-error"' in bad.text
    forged = portal.post(portal.url("/submissions/"), files={"bundle": ("b.json", b"{}", "application/json")})
    assert forged.status_code == 403


def test_a_researchers_statistics_name_no_recipient(
    running: RunningServer, store: Store, sample_config: Config
) -> None:
    # DIVD's cases, as its statistics: a user writing DIVD's inbox sees them, never a recipient.
    portal = user(running, "researcher-1")
    page = portal.get(portal.url("/submissions/")).text
    for r in sample_config.recipients:
        assert r.id not in page and r.name not in page


def test_the_operator_page(running: RunningServer, store: Store) -> None:
    ibd = user(running, "ibd-poller")
    sighting = data.items(store, "ibd")[0].sighting
    assert (
        ibd.post_form(f"/recipients/ibd/notifications/{sighting}", {"state": "not-ours"}).status_code == 303
    )
    portal = user(running, "operator-1")
    page = portal.get(portal.url("/operations/"))
    assert page.status_code == 200
    assert "<svg" in page.text and 'role="img"' in page.text and "<rect x=" in page.text  # bars
    assert "2024-06" in page.text  # the window ends at the latest day with notifications
    times = page.text[page.text.index('id="times-per-day"') :]
    assert re.search(r"<td>\d+\.\d\d</td>", times)  # ibd's delivery (opened in the portal)
    assert "<circle" in page.text
    empty = portal.get(portal.url("/operations/"), params={"until": "2001-01-31"})
    by_feed = portal.get(portal.url("/operations/"), params={"by": "feed"}).text
    assert "divd/divd-nuclei" in by_feed[: by_feed.index('id="times"')]
    first_plot = empty.text[: empty.text.index('id="times"')]
    assert empty.status_code == 200 and "<rect x=" not in first_plot and "2001-01-31" in first_plot
    assert 'id="runs"' in page.text and "divd-nuclei" in page.text
    unrouted = page.text[page.text.index('id="unrouted"') : page.text.index('id="misrouted"')]
    observables = [row["observable"] for run in store.runs(20) for row in store.unrouted(run["id"])]
    assert observables  # the sample has some nobody claims; each group shows up to 3
    for observable in observables:
        assert observable in unrouted
    misrouted = page.text[page.text.index('id="misrouted"') :]
    assert sighting in misrouted and "ibd" in misrouted and "198.51.100" in misrouted


def test_unrouted_observables_are_grouped_by_as_number_too(
    store: Store, sample_config: Config, ingestor: Ingestor, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The sample's unclaimed hosts (203.0.113.5-7) are in AS64496 by the IP-to-ASN table."""
    table = tmp_path / "ipasn.dat"
    table.write_text("203.0.113.0/24\t64496\n", encoding="utf-8")
    config = sample_config.model_copy(update={"asn_table": table})
    assert ingestor.run("divd", "divd-nuclei", [DIVD_SCAN]).ok
    info, server, thread = start_server(config, store)
    try:
        page = PortalUser(info.url).logged_in("operator-1").get(info.url + "/portal/operations/").text
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
    by_asn = page[page.index('id="unrouted-asn"') :]
    unrouted = [row for run in store.runs(5) for row in store.unrouted(run["id"])]
    assert re.search(rf"<td>AS64496</td><td>{len(unrouted)}</td>", by_asn), by_asn[:600]
    by_network = page[page.index('id="unrouted"') : page.index('id="unrouted-asn"')]
    assert "<td>203.0.113.0/24</td><td>AS64496</td>" in by_network


def test_unrouted_observables_are_grouped_by_network_or_domain() -> None:
    from taxii_server.portal.operator import group_of

    assert group_of("192.0.2.77:443") == "192.0.2.0/24"
    assert group_of("[2001:db8:99::5]:8443") == "2001:db8:99::/48"
    assert group_of("www.shop.example.co.uk") == "example.co.uk"
    assert group_of("https://a.b.example.nl/login") == "example.nl"


def test_delivery_and_acknowledgement_times_per_day() -> None:
    from datetime import date

    from taxii_server.portal.operator import times_per_day

    day = 19_000  # 2022-01-08
    at = day * 86_400_000
    hour = 3_600_000
    rows = [(at, at + 2 * hour, at + 5 * hour), (at, at + 4 * hour, None), (at + hour, None, None)]
    labels, series = times_per_day(rows, date(2022, 1, 9), 2)
    assert labels == ["2022-01-08", "2022-01-09"]
    assert series == {"delivery": [3.0, None], "acknowledgement": [3.0, None]}


def test_notifications_per_day_fill_the_days() -> None:
    from datetime import date

    from taxii_server.portal.operator import per_day

    today = date(2024, 6, 12)
    day = (today - date(1970, 1, 1)).days
    rows = [
        (day, "vulnerable", "vulnerable-system", "divd", "divd-nuclei", 5),
        (day, "vulnerable", "vulnerable-system", "shadowserver", "scan_http", 2),
        (day - 2, "fraud", "phishing", "shadowserver", "phish_url", 1),
        (day - 3, "fraud", "phishing", "shadowserver", "phish_url", 7),  # before the window
    ]
    labels, series = per_day(rows, today, 3)
    assert labels == ["2024-06-10", "2024-06-11", "2024-06-12"]
    assert series == {"fraud/phishing": [1, 0, 0], "vulnerable/vulnerable-system": [0, 0, 7]}
    _labels, by_feed = per_day(rows, today, 3, "feed")
    assert by_feed == {
        "divd/divd-nuclei": [0, 0, 5],
        "shadowserver/phish_url": [1, 0, 0],
        "shadowserver/scan_http": [0, 0, 2],
    }


# --- languages ------------------------------------------------------------------------------------


def test_dutch_by_accept_language_and_by_choice(running: RunningServer) -> None:
    nl = requests.get(running.url + "/portal/login", headers={"Accept-Language": "nl-NL,nl;q=0.9,en;q=0.5"})
    assert MESSAGES["nl"]["password"] in nl.text and 'lang="nl"' in nl.text
    portal = PortalUser(running.url)
    chosen = portal.get(portal.url("/login"), params={"lang": "nl"})
    assert MESSAGES["nl"]["password"] in chosen.text
    assert MESSAGES["nl"]["password"] in portal.get(portal.url("/login")).text  # kept in the cookie
    assert MESSAGES["en"]["password"] in portal.get(portal.url("/login"), params={"lang": "en"}).text


def test_the_api_root_cannot_take_the_portals_path() -> None:
    from connector.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="api_root 'portal'"):
        parse_config({"server": {"api_root": "portal"}})


def test_both_languages_hold_every_message() -> None:
    assert set(MESSAGES["en"]) == set(MESSAGES["nl"])


def test_every_page_is_labelled_and_titled(running: RunningServer, store: Store) -> None:
    """Every input and select has a label, every page a language, a title and one h1, every
    table header cell a scope: what a screen reader needs (issue #16, item 5)."""
    ibd = user(running, "ibd-poller")
    assert propose_claim(ibd, "ibd", "asn", "64999").status_code == 303
    sighting = data.items(store, "zcert")[0].sighting
    zcert, operator = user(running, "zcert-poller"), user(running, "operator-1")
    pages = [
        (zcert, "/recipients/zcert/"),
        (zcert, f"/recipients/zcert/notifications/{sighting}"),
        (zcert, "/recipients/zcert/claims/"),
        (user(running, "researcher-1"), "/submissions/"),
        (operator, "/"),
        (operator, "/operations/"),
        (operator, "/operations/claims/"),
        (PortalUser(running.url), "/login"),
        (zcert, "/no/such/page"),
    ]
    for portal, path in pages:
        html = portal.get(portal.url(path)).text
        assert re.search(r'<html lang="(en|nl)">', html) and "<title>" in html, path
        assert html.count("<h1") == 1, path
        fields = re.findall(r'<(?:input|select)(?![^>]*type="hidden")[^>]*\bid="([^"]+)"', html)
        for field in fields:
            assert f'<label for="{field}">' in html, (path, field)
        assert not re.search(r"<th[\s>](?![^>]*scope=)", html), path
