"""A portal user over HTTP (requests), for the portal's tests: logs in through the login form
with its CSRF token, and reads the token of the page it is on for the next POST."""

from __future__ import annotations

import re

import requests

from tests.conftest import password_for

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


class PortalUser(requests.Session):
    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base.rstrip("/") + "/portal"

    def url(self, path: str) -> str:
        return self.base + path

    def login(self, username: str, password: str | None = None) -> requests.Response:
        form = self.get(self.url("/login"))
        assert form.status_code == 200
        return self.post(
            self.url("/login"),
            data={
                "csrf": csrf_of(form.text),
                "username": username,
                "password": password if password is not None else password_for(username),
            },
            allow_redirects=False,
        )

    def logged_in(self, username: str) -> PortalUser:
        answer = self.login(username)
        assert answer.status_code == 303, answer.text
        return self

    def post_form(self, page: str, data: dict[str, str], **kwargs: object) -> requests.Response:
        """POST to `page` with the CSRF token the page (GET) shows."""
        shown = self.get(self.url(page))
        assert shown.status_code == 200, shown.status_code
        return self.post(
            self.url(page), data={"csrf": csrf_of(shown.text), **data}, allow_redirects=False, **kwargs
        )  # type: ignore[arg-type]
