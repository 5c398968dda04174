"""Signing in to the console with the company's IdP (proxy.console.sso): the authorization code
flow with PKCE against the local OIDC provider on loopback, followed redirect by redirect as a
browser does; the state bound to the browser that started it; the session is the mapped
person's, ends with the token the sign-in would issue, and no code, state or token is kept in
a page, a cookie or the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from proxy.audit.search import build_query
from proxy.console.session import COOKIE, SSO_COOKIE
from tests.console.conftest import HOSTILE, Console
from tests.console.test_console import assert_strict


def trail(console: Console) -> list[dict[str, Any]]:
    """Every event of the service's audit trail (the store sink's) of the last day."""
    return console.store.search_audit(build_query(now=datetime.now(UTC) + timedelta(hours=2), since="1d",
                                                  limit="10000"))


def to_idp(browser: httpx.Client) -> httpx.Response:
    """Click "Sign in with SSO": the console's 303 to the IdP."""
    login = browser.get("/console/login")
    assert login.status_code == 200 and 'href="/console/login/sso"' in login.text and "Sign in with SSO" in login.text
    answer = browser.get("/console/login/sso")
    assert answer.status_code == 303, answer.text
    return answer


def back_from_idp(started: httpx.Response) -> str:
    """The IdP's page: the person is signed in there, it redirects back with a code (the path
    and query of the console's callback)."""
    at_idp = httpx.get(started.headers["location"])
    assert at_idp.status_code == 302, at_idp.text
    back = urlparse(at_idp.headers["location"])
    return f"{back.path}?{back.query}"


def test_sign_in_with_sso_starts_a_session_for_the_mapped_person(sso_console: Console) -> None:
    browser = sso_console.browser()
    started = to_idp(browser)
    idp_url = urlparse(started.headers["location"])
    query = parse_qs(idp_url.query)
    assert f"{idp_url.scheme}://{idp_url.netloc}" == sso_console.idp.issuer  # type: ignore[union-attr]
    assert query["code_challenge_method"] == ["S256"] and query["state"] and query["nonce"]
    assert query["redirect_uri"] == [f"{sso_console.api.url}/console/login/callback"]  # the console's own
    cookie = next(c for c in started.headers.get_list("set-cookie") if c.startswith(SSO_COOKIE + "="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= flags  # Lax: the IdP's redirect back is cross-site
    assert query["state"][0] not in cookie  # only its digest, signed

    callback = back_from_idp(started)
    done = browser.get(callback)
    assert done.status_code == 200 and "Signed in as <strong>olga</strong>" in done.text
    assert_strict(done)
    # a page that moves on by itself (a same-site navigation carries the SameSite=Strict cookie)
    assert '<meta http-equiv="refresh" content="0; url=/console/requests">' in done.text
    session = next(c for c in done.headers.get_list("set-cookie") if c.startswith(COOKIE + "="))
    assert "samesite=strict" in session.lower()
    page = browser.get("/console/requests")
    assert page.status_code == 200 and "Signed in as <strong>olga</strong>" in page.text
    assert '<span class="role">approver</span>' in page.text  # group owner, from the IdP's groups claim

    code = parse_qs(urlparse(callback).query)["code"][0]
    kept = json.dumps(sso_console.calls) + json.dumps(trail(sso_console), default=str) + done.text + session + page.text
    assert code not in kept and query["state"][0] not in kept  # one-time values: in no event, page or cookie
    assert "/console/login/callback" in {c["path"] for c in sso_console.calls}  # the path only
    signed = [e for e in trail(sso_console) if e["type"] == "identity.signed_in"]
    assert [(e["user"], e["flow"]) for e in signed] == [("olga", "browser")]
    assert not any("?" in str(c["path"]) for c in sso_console.calls)
    again = browser.get(callback)  # the code and state are spent
    assert again.status_code == 403 and "not started in this browser" in again.text


def test_groups_are_mapped_and_roles_follow_them(sso_console: Console) -> None:
    sso_console.idp.browser_user = "dora"  # type: ignore[union-attr]  # IdP group "DB Admins" -> dba (admin)
    browser = sso_console.browser()
    assert browser.get(back_from_idp(to_idp(browser))).status_code == 200
    page = browser.get("/console/access").text
    assert "Signed in as <strong>dora</strong>" in page and "Everyone's" in page  # an admin's page


def test_a_callback_from_another_browser_signs_nobody_in(sso_console: Console) -> None:
    """Login CSRF: mallory starts a sign-in, then sends the callback link to a victim."""
    mallory, victim = sso_console.browser(), sso_console.browser()
    callback = back_from_idp(to_idp(mallory))
    answer = victim.get(callback)
    assert answer.status_code == 403 and "not started in this browser" in answer.text
    assert not [c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE + "=") and '=""' not in c]
    assert victim.get("/console/requests").status_code == 303  # still signed out
    forged = callback.replace("state=", "state=x")
    assert mallory.get(forged).status_code == 403  # a state that is not the one started
    assert mallory.get(callback).status_code == 200  # the real one still works, once


def test_the_idp_saying_no_is_shown_escaped_and_starts_nothing(sso_console: Console) -> None:
    browser = sso_console.browser()
    state = parse_qs(urlparse(to_idp(browser).headers["location"]).query)["state"][0]
    answer = browser.get("/console/login/callback", params={"state": state, "error": HOSTILE})
    assert answer.status_code == 401 and "your identity provider did not sign you in" in answer.text
    assert "<script>alert" not in answer.text and "&lt;script&gt;alert" in answer.text
    assert browser.get("/console/requests").status_code == 303


def test_a_refused_id_token_is_no_session(sso_console: Console) -> None:
    sso_console.idp.id_token_overrides = {"aud": "another-client"}  # type: ignore[union-attr]
    browser = sso_console.browser()
    answer = browser.get(back_from_idp(to_idp(browser)))
    assert answer.status_code == 401 and "sign-in refused" in answer.text and "wrong_audience" in answer.text
    assert browser.get("/console/requests").status_code == 303


def test_an_sso_session_ends_with_the_token_it_stands_for(sso_console: Console) -> None:
    """The provider's ID tokens last an hour: so does the token the sign-in issues, and the
    console session with it (not the console's 8 hours)."""
    browser = sso_console.browser()
    assert browser.get(back_from_idp(to_idp(browser))).status_code == 200
    csrf_page = browser.get("/console/requests")
    assert csrf_page.status_code == 200
    sso_console.clock.advance(timedelta(hours=1, seconds=1))
    ended = browser.get("/console/requests")
    assert ended.status_code == 401 and "your session has ended" in ended.text


def test_without_an_idp_there_is_no_sso(console: Console) -> None:
    browser = console.browser()
    assert "Sign in with SSO" not in browser.get("/console/login").text
    assert browser.get("/console/login/sso").status_code == 404
    assert browser.get("/console/login/callback", params={"code": "x", "state": "y"}).status_code == 404
