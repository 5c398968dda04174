"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright with no
browser download) against the real `jitproxy demo` (MariaDB, the proxy, its admin API): the
tutorial flow of issue 19. dev files a request with the CLI → admin (an approver) signs in,
sees it, opens its page, approves there → dev's next statement works in the same MySQL session
→ admin extends it within policy, then revokes on the Access page → dev's next statement is
denied → dev asks for hr_test access with the form's picker of the live schema and gives it
back on the Access page → an auditor finds both statements on the Audit page, opens one's full
detail, checks the chain and exports them. And "Sign in with SSO" against the local OIDC
provider (the IdP's redirect back is cross-site: the session cookie must still reach the
console). Screenshots of every page are written to docs/screenshots/ (the README shows them)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from tests.audit.test_search_demo import CMD, Demo, demo  # noqa: F401 - the module-scoped demo fixture
from tests.console.conftest import Console

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="no chromium (scripts/setup.sh installs Debian's)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "chromium is not installed: scripts/setup.sh installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _session(demo: Demo, user: str) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=demo.port, user=user, password=demo.token(user), database="hr_prod",
                           ssl=ssl.create_default_context(cafile=str(demo.directory / "ca.pem")), autocommit=True)


def _count_salary(conn: pymysql.connections.Connection) -> int | str:
    """dev's statement in the open session: the row count, or the error code when denied."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM salary")
            return cur.fetchone()[0]
    except pymysql.MySQLError as e:
        return f"error {e.args[0]}"


def _auditor_token(demo: Demo) -> str:
    """An auditor's token from the demo's issuer (the demo's api.auditor_groups: auditor)."""
    out = subprocess.run([*CMD, "token", "issue", "--config", str(demo.directory / "config.yaml"), "--user", "ines",
                          "--group", "auditor", "--ttl", "1h"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1]


def _page(chromium: object, where: Demo | str):  # type: ignore[no-untyped-def]
    """A new browser profile (its own cookies) on the console (the demo's, or at a URL); the
    demo's CA is its own, so the browser is told to accept its certificate."""
    base_url = where if isinstance(where, str) else where.api
    context = chromium.new_context(base_url=base_url, ignore_https_errors=True, accept_downloads=True,  # type: ignore[attr-defined]
                                   viewport={"width": 1280, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors  # CSP violations would show up here
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.urls = urls  # every URL the browser asked for (htmx's included): no secret in any
    return page


def _sign_in(page, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/console/")
    page.get_by_label("Personal token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/requests")


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_tutorial_flow_in_a_browser(demo: Demo, chromium: object, tmp_path: Path) -> None:  # noqa: F811
    dev_sql = _session(demo, "dev")
    assert _count_salary(dev_sql) == "error 1142"
    made = demo.cli("dev", "request", "create", "--db", "hr_prod", "--table", "salary", "--for", "1h", "--reason",
                    "INC-1234 payroll check <b>now</b>", "--quiet")
    assert made.returncode == 0, made.stderr
    request_id = made.stdout.strip()

    admin = _page(chromium, demo)
    admin.goto("/console/requests")
    admin.wait_for_url("**/console/login")
    _shot(admin, "login")
    _sign_in(admin, demo.token("admin"))
    row = admin.locator("tr", has_text=request_id)
    assert "pending" in row.inner_text().lower() and "0 of 1 approval" in row.inner_text()
    assert "INC-1234 payroll check <b>now</b>" in row.inner_text()  # shown as text, not markup
    _shot(admin, "requests")
    row.get_by_role("link", name=request_id).click()  # the request's own page (notifications link here)
    admin.wait_for_url(f"**/console/requests/{request_id}")
    detail = admin.locator("#request-detail")
    assert "0 of 1 approval" in detail.inner_text() and "prod: SELECT: 1 approval(s) from group:project-owner" in \
        detail.inner_text()
    detail.get_by_label("Comment").fill("ok for INC-1234")
    detail.get_by_role("button", name="Approve").click()
    admin.wait_for_selector("p.flash")
    assert f"request {request_id}: approved" in admin.locator("p.flash").inner_text()
    assert admin.url.endswith(f"/console/requests/{request_id}")  # back on its page

    assert _count_salary(dev_sql) == 600  # the same open session, no reconnect

    grants = admin.locator("#request-detail table tbody tr")
    grants.first.get_by_label("New end").fill("2h")  # extend within policy (prod SELECT: at most 8h)
    grants.first.get_by_label("Why").fill("INC-1234 takes longer")
    with admin.expect_navigation():  # (the page shows the approval's flash until then)
        grants.first.get_by_role("button", name="Extend").click()
    assert "extended" in admin.locator("p.flash").inner_text()
    assert admin.locator("#request-detail table tbody tr").count() == 2  # its grant and the one extending it
    _shot(admin, "request")

    admin.get_by_role("link", name="Access").click()
    admin.wait_for_url("**/console/access")
    _shot(admin, "access")
    for _ in range(2):  # the request's grant and its extension: both end
        grant_row = admin.locator("tr", has_text=request_id).filter(has=admin.get_by_role("button", name="Revoke"))
        grant_row.first.get_by_label("Reason").fill("INC-1234 closed")
        with admin.expect_navigation():
            grant_row.first.get_by_role("button", name="Revoke").click()
        assert "revoked" in admin.locator("p.flash").inner_text()
    assert admin.locator("tr", has_text=request_id).filter(has=admin.get_by_role("button", name="Revoke")).count() == 0

    assert _count_salary(dev_sql) == "error 1142"
    dev_sql.close()

    dev = _page(chromium, demo)  # dev asks with the form: the picker lists what the instance holds
    _sign_in(dev, demo.token("dev"))
    dev.get_by_label("Database").select_option("hr_test")
    dev.locator("#tables-field input[value=employee]").check()  # loaded by htmx from the live schema
    assert "salary" not in dev.locator("#tables-field").inner_text()  # hr_test has no salary
    dev.locator("#duration").fill("1h")
    dev.locator("#reason").fill("TEST-7 check the test data")
    _shot(dev, "request-form")
    dev.get_by_role("button", name="Ask").click()
    dev.wait_for_selector("p.flash")
    assert "filed" in dev.locator("p.flash").inner_text()  # test: approved at once by its policy
    dev.get_by_role("link", name="Access").click()
    dev.wait_for_url("**/console/access")
    mine = dev.locator("tr", has_text="hr_test.employee").filter(has=dev.get_by_role("button", name="Give back"))
    mine.wait_for()
    assert mine.get_by_role("link", name="Ask for more time").count() == 1
    _shot(dev, "access-mine")
    mine.get_by_label("Reason").fill("done")
    mine.get_by_role("button", name="Give back").click()
    dev.wait_for_selector("p.flash")
    assert "given back" in dev.locator("p.flash").inner_text()

    admin.get_by_role("link", name="Policies").click()
    admin.get_by_label("Current database").fill("hr_prod")
    admin.get_by_label("Statement", exact=True).fill("SELECT * FROM salary")
    admin.get_by_role("button", name="Check").click()
    admin.wait_for_selector("#check-result pre")
    assert "ALLOW" in admin.locator("#check-result").inner_text()
    _shot(admin, "policies")

    auditor = _page(chromium, demo)
    _sign_in(auditor, _auditor_token(demo))
    auditor.get_by_role("link", name="Audit").click()
    auditor.get_by_label("Person").fill("dev")
    auditor.get_by_label("Table").fill("hr_prod.salary")
    auditor.get_by_role("button", name="Search").click()
    auditor.wait_for_url("**/console/audit?*")
    statements = auditor.locator("table.events tbody tr", has_text="SELECT COUNT(*) FROM salary")
    kinds = " ".join(statements.all_inner_texts())
    assert "statement.completed" in kinds and "statement.denied" in kinds
    auditor.locator("ul.chains a").first.click()
    auditor.wait_for_selector("ul.chains p.chain")
    assert "seq 1.." in auditor.locator("ul.chains").inner_text()
    _shot(auditor, "audit")

    auditor.locator("table.events tbody tr", has_text="statement.denied").first.get_by_role(
        "link", name="full detail").click()  # an event's full detail, on its own page
    auditor.wait_for_url("**/console/audit/event?*")
    assert "statement.denied" in auditor.locator("dl.facts").inner_text()
    assert "SELECT COUNT(*) FROM salary" in auditor.locator("dl.facts").inner_text()
    _shot(auditor, "event")
    auditor.go_back()

    with auditor.expect_download() as download:
        auditor.get_by_role("link", name="CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    found = {(r["type"], r["statement"]) for r in rows}
    assert {("statement.completed", "SELECT COUNT(*) FROM salary"),
            ("statement.denied", "SELECT COUNT(*) FROM salary")} <= found
    with auditor.expect_download() as download:
        auditor.get_by_role("link", name="JSON", exact=True).click()
    events = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert {e["user"] for e in events} == {"dev"}

    auditor.get_by_role("link", name="Access").click()
    assert auditor.get_by_role("button", name="Revoke").count() == 0  # an auditor revokes nothing
    assert admin.errors == [] and auditor.errors == [] and dev.errors == []  # no CSP violation, no script error
    urls = " ".join(admin.urls + auditor.urls + dev.urls)
    assert "/console/schema/tables?db=hr_test" in urls  # the picker's htmx GET: the database only ...
    assert "csrf" not in urls and demo.token("admin") not in urls and demo.token("dev") not in urls  # ... no secret


def test_sign_in_with_sso_in_a_browser(sso_console: Console, chromium: object) -> None:
    """The IdP (http on another port: another site) redirects back to the console: the session
    cookie (SameSite=Strict) is set by the callback and sent on the page it moves on to."""
    page = _page(chromium, sso_console.api.url)
    page.goto("/console/requests")
    page.wait_for_url("**/console/login")
    _shot(page, "login-sso")
    page.get_by_role("link", name="Sign in with SSO").click()
    page.wait_for_url("**/console/requests")
    assert "Signed in as olga" in page.locator("header").inner_text()
    assert "approver" in page.locator("header").inner_text()  # the IdP's group owner
    assert page.errors == []
