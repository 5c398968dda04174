"""The person at the IdP's sign-in page: what a browser does when someone opens the URL that
`jitproxy login` prints, types a user name and presses Approve (the page of the local IdP,
jitproxy_demo.oidc_provider). For tests that run the printed commands as a person would (the
demo's lines, the README's examples): the page is fetched, its form filled in and submitted."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx

# `jitproxy login` prints the IdP's page and code, then the page with the code in it:
#   To sign in, open http://127.0.0.1:41427/activate and enter the code 3F2A-91BC
#     (or open http://127.0.0.1:41427/activate?user_code=3F2A-91BC)
PRINTED_PAGE = re.compile(r"\(or open (https?://\S+)\)")


class _Form(HTMLParser):
    """The page's first form: its action and its named inputs' values."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and self.action is None:
            self.action, self._in_form = found.get("action") or "", True
        elif tag == "input" and self._in_form and found.get("name"):
            self.fields[str(found["name"])] = found.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def sign_in_at_printed_page(printed: str, user: str) -> bool:
    """Open the page `printed` names, type `user` and Approve. False while no page is printed yet."""
    match = PRINTED_PAGE.search(printed)
    if not match:
        return False
    page = httpx.get(match.group(1), timeout=10)
    assert page.status_code == 200, page.text
    form = _Form()
    form.feed(page.text)
    assert form.action is not None and "username" in form.fields and form.fields.get("user_code"), page.text
    answer = httpx.post(urljoin(match.group(1), form.action), data={**form.fields, "username": user}, timeout=10)
    assert answer.status_code == 200 and f"Signed in as {user}" in answer.text, answer.text
    return True


class SignInMeanwhile:
    """`Shell.run(..., meanwhile=SignInMeanwhile("dev"))`: signs in once, as soon as the page is printed."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.done = False

    def __call__(self, printed: str) -> None:
        if not self.done:
            self.done = sign_in_at_printed_page(printed, self.user)
