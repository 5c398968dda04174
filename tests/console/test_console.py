"""The web console against a running admin API (uvicorn over TLS, the real workflow service and
audit trail), driven by httpx clients that keep cookies as a browser does: sign-in and the
session cookie, CSRF on every POST, the workflow's role checks shown as refusals, session
expiry, hostile input shown escaped, the audit search, export and chain, the dry run, and the
page headers (CSP, no inline script)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from proxy.authz.model import Principal
from proxy.console.routes import CSP
from proxy.console.session import COOKIE, Sessions, SessionExpired, session_key
from proxy.store.base import RequestStatus
from tests.console.conftest import ADMIN, AUDITOR, DEV, OWNER, Console, csrf_of, post, sign_in

STATIC = Path(__file__).resolve().parents[2] / "proxy" / "console" / "static"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"  # VENDORED.md


def ask(browser: httpx.Client, table: str = "salary", reason: str = "INC-1 payroll check") -> str:
    """File a request through the console's form; its id."""
    answer = post(browser, "/console/requests", db="hr_prod", tables=table, privileges="SELECT", duration="1h",
                  reason=reason)
    assert answer.status_code == 303, answer.text
    page = browser.get("/console/requests").text
    assert "request r-" in page  # the flash says which
    return re.search(r"request (r-[0-9a-f]+)", page).group(1)  # type: ignore[union-attr]


# -- signing in ---------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_session_cookie_and_the_token_goes_nowhere(console: Console) -> None:
    browser = console.browser()
    answer = sign_in(browser, DEV)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/requests"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE + "="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags) and any(f.startswith("max-age=") for f in flags)
    page = browser.get("/console/requests")
    assert page.status_code == 200 and "Signed in as <strong>dev</strong>" in page.text
    everything = page.text + cookie + answer.headers["location"] + json.dumps(console.calls)
    assert DEV not in everything.replace("dev:devs", "")  # sanity: the token is "dev:devs"
    assert "dev:devs" not in everything  # the token: not in the page, the cookie, a URL or the audit trail
    assert [c["path"] for c in console.calls if c["method"] == "POST"] == ["/console/login"]
    assert console.calls[-1]["user"] == "dev"  # page views are admin.api_call events naming the person


def test_a_wrong_token_is_refused_and_not_echoed(console: Console) -> None:
    browser = console.browser()
    answer = sign_in(browser, "bad")
    assert answer.status_code == 401 and "token rejected (bad_signature)" in answer.text
    assert ">bad<" not in answer.text
    sessions = [c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE + "=")]
    assert all(c.startswith(COOKIE + '=""') for c in sessions)  # none set (only cleared)
    assert browser.get("/console/requests").status_code == 303  # still signed out


def test_pages_need_a_session_and_a_poll_is_sent_to_the_sign_in_page(console: Console) -> None:
    browser = console.browser()
    for path in ("/console/requests", "/console/access", "/console/audit", "/console/policies"):
        answer = browser.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login", path
    poll = browser.get("/console/requests/list", headers={"HX-Request": "true"})
    assert poll.status_code == 204 and poll.headers["HX-Redirect"] == "/console/login"
    claims = base64.urlsafe_b64encode(json.dumps({"u": "ada", "g": ["dba"]}, separators=(",", ":")).encode())
    browser.cookies.set(COOKIE, claims.rstrip(b"=").decode() + ".forged", domain="127.0.0.1")
    assert browser.get("/console/requests").status_code == 303  # a forged cookie is no session


def test_sign_out_ends_the_session(console: Console) -> None:
    browser = console.signed_in(DEV)
    assert post(browser, "/console/logout").status_code == 303
    assert browser.get("/console/requests").status_code == 303


# -- CSRF ---------------------------------------------------------------------------------------


def test_every_post_needs_this_sessions_csrf_token(console: Console) -> None:
    dev, owner = console.signed_in(DEV), console.signed_in(OWNER)
    request_id = ask(dev)
    approve = f"/console/requests/{request_id}/approve"
    assert owner.post(approve, data={"comment": "ok"}).status_code == 403  # none
    assert owner.post(approve, data={"csrf": "x" * 32}).status_code == 403  # a wrong one
    dev_token = csrf_of(dev.get("/console/requests").text)
    assert owner.post(approve, data={"csrf": dev_token}).status_code == 403  # another session's
    refused = owner.post(approve, data={"csrf": csrf_of(owner.get("/console/requests").text)},
                         headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "Origin check failed" in refused.text
    assert owner.post(approve, json={"csrf": dev_token}).status_code == 415  # forms only
    for path in (f"/console/requests/{request_id}/deny", "/console/requests", "/console/logout",
                 "/console/grants/g-1/revoke", "/console/policies/check"):
        assert owner.post(path, data={"reason": "x"}).status_code == 403, path
    assert console.store.get_request(request_id).status is RequestStatus.PENDING  # nothing was decided
    assert post(owner, approve, comment="ok").status_code == 303
    assert console.store.get_request(request_id).status is RequestStatus.APPROVED


def test_the_sign_in_form_needs_its_own_csrf_token(console: Console) -> None:
    browser = console.browser()
    answer = browser.post("/console/login", data={"token": ADMIN})  # a cross-site sign-in as someone else
    assert answer.status_code == 403 and browser.get("/console/requests").status_code == 303


# -- roles: the workflow service decides ---------------------------------------------------------


def test_a_developer_cannot_approve(console: Console) -> None:
    olga, dev = console.signed_in(OWNER), console.signed_in(DEV)
    request_id = ask(olga, table="title", reason="INC-2 titles")
    page = dev.get("/console/requests").text
    assert request_id not in page  # not theirs to see
    refused = post(dev, f"/console/requests/{request_id}/approve", comment="me too")
    assert refused.status_code == 403 and "you are not an approver for prod" in refused.text
    assert console.store.get_request(request_id).status is RequestStatus.PENDING


def test_an_approver_cannot_approve_their_own_request(console: Console) -> None:
    olga = console.signed_in(OWNER)
    request_id = ask(olga, table="title", reason="INC-3 titles")
    page = olga.get("/console/requests").text
    assert f"/console/requests/{request_id}/approve" not in page  # no button for one's own request ...
    refused = post(olga, f"/console/requests/{request_id}/approve")  # ... and the service refuses it
    assert refused.status_code == 403 and "nobody approves or denies their own request" in refused.text
    assert console.store.get_request(request_id).status is RequestStatus.PENDING


def test_an_auditor_cannot_revoke_and_an_admin_can(console: Console) -> None:
    dev, olga, ines, ada = (console.signed_in(t) for t in (DEV, OWNER, AUDITOR, ADMIN))
    request_id = ask(dev)
    assert post(olga, f"/console/requests/{request_id}/approve", comment="ok").status_code == 303
    (grant_id,) = console.store.get_request(request_id).grant_ids
    assert "Everyone's" not in ines.get("/console/access").text
    refused = post(ines, f"/console/grants/{grant_id}/revoke", "/console/access", reason="curious")
    assert refused.status_code == 403 and "admins only" in refused.text
    assert console.store.get_grant(grant_id).revoked_at is None
    access = ada.get("/console/access").text
    assert f"/console/grants/{grant_id}/revoke" in access and "request " + request_id in access
    done = post(ada, f"/console/grants/{grant_id}/revoke", "/console/access", reason="INC-1 closed")
    assert done.status_code == 303 and done.headers["location"] == "/console/access"
    assert "revoked" in ada.get("/console/access").text
    grant = console.store.get_grant(grant_id)
    assert grant.revoked_by == "ada" and grant.revoke_reason == "INC-1 closed"


def test_approval_progress_and_giving_access_back(console: Console) -> None:
    dev, olga = console.signed_in(DEV), console.signed_in(OWNER)
    answer = post(dev, "/console/requests", db="hr_prod", tables="salary", privileges="UPDATE", duration="1h",
                  reason="INC-4 fix a salary")
    assert answer.status_code == 303
    (request,) = console.store.requests()
    assert "0 of 2 approvals, needs one from group:dba" in olga.get("/console/requests").text  # Plan.progress
    assert post(olga, f"/console/requests/{request.id}/approve").status_code == 303
    assert "1 of 2 approvals, needs one from group:dba" in olga.get("/console/requests").text
    ada = console.signed_in(ADMIN)
    assert post(ada, f"/console/requests/{request.id}/approve", comment="dba ok").status_code == 303
    page = dev.get("/console/requests").text
    assert f"/console/requests/{request.id}/release" in page  # the requester may give it back
    assert post(dev, f"/console/requests/{request.id}/release", comment="done").status_code == 303
    assert "released" in dev.get("/console/requests").text
    assert "hr_prod.salary" not in dev.get("/console/access").text.split("Grants in effect for dev")[1]


def test_a_refused_request_says_why(console: Console) -> None:
    dev = console.signed_in(DEV)
    for fields, status, words in [
        ({"db": "hr_prod", "tables": "salary", "duration": "90", "reason": "INC-5 x"}, 400, "unit"),
        ({"db": "hr_prod", "tables": "salary", "duration": "9h", "reason": "INC-5 x"}, 400, "at most 8h"),
        ({"db": "hr_prod", "tables": "salary", "duration": "1h", "reason": ""}, 400, "a reason is required"),
    ]:
        answer = post(dev, "/console/requests", **fields)
        assert answer.status_code == status and words in answer.text, answer.text[-600:]


# -- session expiry -------------------------------------------------------------------------------


def test_a_session_ends_after_its_time(console: Console) -> None:
    browser = console.signed_in(OWNER)
    csrf = csrf_of(browser.get("/console/requests").text)
    console.clock.advance(timedelta(hours=8, seconds=1))
    page = browser.get("/console/requests")
    assert page.status_code == 401 and "your session has ended" in page.text
    assert browser.post("/console/requests", data={"csrf": csrf, "db": "hr_prod"}).status_code == 401
    assert browser.get("/console/requests/list", headers={"HX-Request": "true"}).headers["HX-Redirect"]
    assert sign_in(browser, OWNER).status_code == 303  # and signing in again works
    assert browser.get("/console/requests").status_code == 200


def test_a_session_never_outlives_its_token() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    clock = {"now": now}
    sessions = Sessions(b"k" * 32, clock=lambda: clock["now"])
    value, session = sessions.issue(Principal("dev", ("devs",), token_expires_at=now + timedelta(minutes=20)))
    assert session.expires_at == now + timedelta(minutes=20) and sessions.max_age(session) == 1200
    assert sessions.read(value).who == Principal("dev", ("devs",))  # type: ignore[union-attr]
    clock["now"] = now + timedelta(minutes=20)
    with pytest.raises(SessionExpired):
        sessions.read(value)
    assert Sessions(b"x" * 32, clock=lambda: now).read(value) is None  # another key: not genuine
    login_cookie, _ = sessions.login_form()
    assert sessions.read(login_cookie) is None  # a sign-in form's cookie is never a session
    payload, mac = value.split(".")
    assert sessions.read(payload[:-2] + "xx." + mac) is None


def test_the_session_key_is_derived_not_the_secret(tmp_path: Path) -> None:
    secret = tmp_path / "key.pem"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\nabc\n")
    key = session_key(secret)
    assert key == session_key(secret) and len(key) == 32 and b"abc" not in key


# -- hostile input --------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_hostile_text_is_shown_escaped_everywhere(console: Console) -> None:
    dev, olga, ada = console.signed_in(DEV), console.signed_in(OWNER), console.signed_in(ADMIN)
    request_id = ask(dev, reason="INC-6 " + HOSTILE)
    assert post(olga, f"/console/requests/{request_id}/deny", comment=HOSTILE).status_code == 303
    # statements and table names come from people's SQL: put some in the audit trail
    console.service.audit.emit("statement.denied", None, user="dev", statement=f"SELECT '{HOSTILE}' FROM `<b>x`",
                               tables=["hr_prod.<b>x</b>"], decision="deny", reason_code="missing_grant")
    checked = post(ada, "/console/policies/check", "/console/policies", sql=f"SELECT '{HOSTILE}'", db="hr_prod")
    pages = [olga.get("/console/requests").text, ada.get("/console/audit", params={"user": "dev"}).text,
             checked.text, post(dev, "/console/requests", db="<i>db</i>", tables="<b>t", duration="1h",
                                reason="INC-7 x").text]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>x" not in html
        assert "<i>db" not in html and "<b>t" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[0]  # the reason and comment, escaped
    assert "hr_prod.&lt;b&gt;x&lt;/b&gt;" in pages[1] and "&lt;img src=x onerror=alert(1)&gt;" in pages[1]
    assert "&lt;script&gt;" in pages[2]
    assert "&lt;b&gt;t" in pages[3] or "&lt;i&gt;db" in pages[3]  # the service's refusal names it, escaped


def assert_strict(answer: httpx.Response) -> None:
    """A console page's headers (strict CSP, no sniffing, framing or caching) and HTML (scripts
    from the console's own static files only, no inline script, handler or style, nothing from
    elsewhere)."""
    path = answer.request.url.path
    assert answer.headers["content-security-policy"] == CSP, path
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store" and answer.headers["x-frame-options"] == "DENY"
    html = answer.text
    assert all(' src="/console/static/' in tag for tag in re.findall(r"<script[^>]*>", html)), path
    bare = re.sub(r'="[^"]*"', '=""', html)  # the markup without its (escaped) attribute values
    assert not re.search(r"<style|<[^>]*\s(style|on[a-z]+)=", bare, re.I), path
    assert not re.search(r'(href|src|action|formaction)="\s*javascript:', html, re.I), path
    assert not re.search(r'(src|href)="(https?:)?//', html), path  # nothing from elsewhere


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(console: Console) -> None:
    ada = console.signed_in(ADMIN)
    ask(console.signed_in(DEV))
    for path in ("/console/login", "/console/requests", "/console/access", "/console/audit", "/console/policies"):
        assert_strict((console.browser() if path.endswith("login") else ada).get(path))
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP


def test_htmx_is_served_from_here_as_vendored(console: Console) -> None:
    answer = console.browser().get("/console/static/htmx.min.js")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/javascript")
    assert hashlib.sha256(answer.content).hexdigest() == HTMX_SHA256
    assert hashlib.sha256((STATIC / "htmx.min.js").read_bytes()).hexdigest() == HTMX_SHA256
    assert "Zero-Clause BSD" in (STATIC / "htmx.LICENSE").read_text()
    assert console.browser().get("/console/static/..%2Fsession.py").status_code == 404
    assert not [c for c in console.calls if "/static/" in c["path"]]  # not audited, as health checks


# -- live list -----------------------------------------------------------------------------------


def test_the_requests_poll_swaps_only_when_something_changed(console: Console) -> None:
    dev, olga = console.signed_in(DEV), console.signed_in(OWNER)
    ask(dev)
    first = olga.get("/console/requests/list", headers={"HX-Request": "true"})
    seen = re.search(r"seen=([0-9a-f]+)", first.text).group(1)  # type: ignore[union-attr]
    assert olga.get("/console/requests/list", params={"seen": seen}).status_code == 204
    ask(dev, table="title", reason="INC-8 titles")
    again = olga.get("/console/requests/list", params={"seen": seen})
    assert again.status_code == 200 and again.text.count("status-pending") == 2
    assert not [c for c in console.calls if c["path"] == "/console/requests/list"]  # polls are not audited


# -- audit --------------------------------------------------------------------------------------


def test_audit_search_export_and_chain(console: Console) -> None:
    dev, ines = console.signed_in(DEV), console.signed_in(AUDITOR)
    request_id = ask(dev)
    console.service.audit.emit("statement.denied", None, user="dev", statement="SELECT * FROM salary",
                               tables=["hr_prod.salary"], decision="deny", reason_code="missing_grant")
    refused = dev.get("/console/audit")
    assert refused.status_code == 403 and "for admins and auditors" in refused.text
    assert ">Audit<" not in dev.get("/console/requests").text  # no link either
    page = ines.get("/console/audit", params={"user": "dev", "table": "hr_prod.salary", "decision": "deny"})
    assert page.status_code == 200 and "SELECT * FROM salary" in page.text and request_id not in page.text
    assert ines.get("/console/audit", params={"since": "yesterday-ish"}).status_code == 400
    exported = ines.get("/console/audit/export.csv", params={"user": "dev", "table": "hr_prod.salary"})
    assert exported.headers["content-disposition"].startswith('attachment; filename="jitproxy-audit-')
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {r["type"] for r in rows} == {"statement.denied", "request.created"}
    events = ines.get("/console/audit/export.json", params={"user": "dev"}).json()
    assert {e["type"] for e in events} >= {"statement.denied", "request.created"}
    assert ines.get("/console/audit/export.exe").status_code == 404
    assert "Verify the chain of test:1" in page.text
    chain = ines.get("/console/audit/chain", params={"proxy_instance": "test:1"}, headers={"HX-Request": "true"})
    assert chain.status_code == 200 and "test:1: seq 1.." in chain.text and "ends without a seal" in chain.text
    assert "<html" not in chain.text  # a fragment for htmx; a page without it
    assert "<html" in ines.get("/console/audit/chain", params={"proxy_instance": "test:1"}).text


# -- policies ------------------------------------------------------------------------------------


def test_policies_show_rules_grants_and_a_dry_run(console: Console) -> None:
    dev, ada = console.signed_in(DEV), console.signed_in(ADMIN)
    page = dev.get("/console/policies").text
    assert "1, one from group:dba" not in page and "group:dba, group:owner" in page and "approved at once" in page
    assert "user:dev" in page and "user:olga" not in page  # a person sees their own grants ...
    assert "user:olga" in ada.get("/console/policies").text  # ... an admin everyone's
    allowed = post(dev, "/console/policies/check", "/console/policies", sql="SELECT * FROM employee",
                   db="hr_prod")
    assert allowed.status_code == 200 and "ALLOW" in allowed.text and "granted by: user:dev" in allowed.text
    denied = dev.post("/console/policies/check", headers={"HX-Request": "true"},  # htmx: the result alone
                      data={"csrf": csrf_of(dev.get("/console/policies").text), "sql": "SELECT * FROM salary",
                            "db": "hr_prod"})
    assert "DENY" in denied.text and "missing_grant" in denied.text and "<html" not in denied.text
