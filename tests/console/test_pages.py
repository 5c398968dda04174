"""The console's later pages and actions against the running API (conftest): a request's own
page (everything about it, the approvals so far, its actions, its live part), the request
form's picker of the live schema, extending a grant within policy and giving one back from
the Access page, an audit event's full detail, the console switch in the config, and the
notifications' links to a request's page. Each with its role checks, CSRF and hostile input."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.api.app import create_app
from proxy.config import ConfigError, load_config
from proxy.notify.slack import render as slack_render
from proxy.notify.webhook import console_link, slack_payload
from proxy.store.base import RequestStatus
from tests.audit.test_search_api import Verifier
from tests.console.conftest import ADMIN, AUDITOR, DEV, HOSTILE, HOSTILE_TABLE, OWNER, Console, csrf_of, post
from tests.console.test_console import ask, assert_strict
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]


def approved(console: Console, dev: httpx.Client, table: str = "salary", privileges: str = "SELECT") -> str:
    """A request of dev's, approved (by olga, and ada for writes); its id."""
    answer = post(dev, "/console/requests", db="hr_prod", tables=table, privileges=privileges, duration="1h",
                  reason="INC-10 " + table)
    assert answer.status_code == 303, answer.text
    (request,) = [r for r in console.store.requests() if r.status is RequestStatus.PENDING]
    for token in (OWNER, ADMIN) if privileges != "SELECT" else (OWNER,):
        assert post(console.signed_in(token), f"/console/requests/{request.id}/approve").status_code == 303
    assert console.store.get_request(request.id).status is RequestStatus.APPROVED
    return request.id


def no_markup(html: str) -> None:
    """Nothing people or databases named became markup."""
    assert "<script>alert" not in html and "<img src=x" not in html


# -- a request's own page ---------------------------------------------------------------------------


def test_a_requests_page_shows_everything_about_it_and_its_approvals_so_far(console: Console) -> None:
    dev, olga = console.signed_in(DEV), console.signed_in(OWNER)
    answer = post(dev, "/console/requests", db="hr_prod", tables="salary", privileges="UPDATE", duration="1h",
                  reason="INC-11 " + HOSTILE)
    assert answer.status_code == 303
    (request,) = console.store.requests()
    assert f'href="/console/requests/{request.id}"' in olga.get("/console/requests").text  # the list links to it
    page = olga.get(f"/console/requests/{request.id}")
    assert page.status_code == 200
    html = page.text
    assert "0 of 2 approvals, needs one from group:dba" in html
    assert "prod: UPDATE: 2 approval(s) from group:dba, group:owner (one of them group:dba)" in html  # the policy
    assert "<code>hr_prod.salary</code>" in html and "1h from the approval" in html and "UPDATE" in html
    assert f"/console/requests/{request.id}/approve" in html  # olga may decide
    no_markup(html)
    assert "INC-11 &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html

    decided = olga.post(f"/console/requests/{request.id}/approve",
                        data={"csrf": csrf_of(html), "comment": HOSTILE, "back": f"requests/{request.id}"})
    assert decided.status_code == 303 and decided.headers["location"] == f"/console/requests/{request.id}"
    html = olga.get(f"/console/requests/{request.id}").text
    assert "1 of 2 approvals, needs one from group:dba" in html and "approve</strong> by olga" in html
    assert f"/console/requests/{request.id}/approve" not in html  # she has approved: nothing more for her
    no_markup(html)
    mine = dev.get(f"/console/requests/{request.id}").text  # the requester: no approving, a Cancel
    assert "/approve" not in mine and f"/console/requests/{request.id}/cancel" in mine
    refused = dev.post(f"/console/requests/{request.id}/approve",
                       data={"csrf": csrf_of(mine), "back": f"requests/{request.id}"})
    assert refused.status_code == 403 and "nobody approves or denies their own request" in refused.text
    assert "<h1>Request <code>" in refused.text  # the request's page again, with why

    ada = console.signed_in(ADMIN)
    assert post(ada, f"/console/requests/{request.id}/approve", f"/console/requests/{request.id}").status_code == 303
    html = dev.get(f"/console/requests/{request.id}").text
    assert "approved</strong>" in html and f"/console/requests/{request.id}/release" in html  # give it back
    assert re.search(r"<code>g-[0-9a-f]+</code>", html)  # its grant


def test_a_request_is_not_shown_to_whoever_may_not_see_it(console: Console) -> None:
    olga, dev = console.signed_in(OWNER), console.signed_in(DEV)
    request_id = ask(olga, table="title", reason="INC-12 titles")
    assert dev.get(f"/console/requests/{request_id}").status_code == 404  # not theirs: no oracle either
    assert dev.get("/console/requests/r-000000000000").status_code == 404
    odd = dev.get("/console/requests/" + "%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert odd.status_code == 404
    no_markup(odd.text)
    assert dev.get("/console/requests/list", params={"id": request_id}).status_code == 404
    assert console.browser().get(f"/console/requests/{request_id}").status_code == 303  # signed out: sign in


def test_a_requests_page_follows_the_request_by_itself(console: Console) -> None:
    dev, olga = console.signed_in(DEV), console.signed_in(OWNER)
    request_id = ask(dev)
    page = dev.get(f"/console/requests/{request_id}").text
    poll = re.search(r'hx-get="(/console/requests/list\?[^"]+)" hx-trigger="every 5s"', page).group(1)  # type: ignore[union-attr]
    poll = poll.replace("&amp;", "&")
    assert dev.get(poll).status_code == 204  # nothing changed: nothing to swap
    assert post(olga, f"/console/requests/{request_id}/approve", comment="ok").status_code == 303
    changed = dev.get(poll, headers={"HX-Request": "true"})
    assert changed.status_code == 200 and "approved</strong>" in changed.text and "<html" not in changed.text
    assert not [c for c in console.calls if c["path"] == "/console/requests/list"]  # polls are not audited


# -- the request form's picker -------------------------------------------------------------------


def test_the_form_offers_only_what_the_live_schema_holds(console: Console) -> None:
    dev = console.signed_in(DEV)
    page = dev.get("/console/requests").text
    form = page.split('id="ask"')[1]
    assert re.findall(r"<option>([^<]+)</option>", form) == ["hr_prod", "hr_test"]  # not mysql, information_schema
    assert 'hx-get="/console/schema/tables"' in form and "Choose a database" in form
    tables = dev.get("/console/schema/tables", params={"db": "hr_prod"}, headers={"HX-Request": "true"})
    assert tables.status_code == 200 and "<html" not in tables.text
    assert re.findall(r'name="tables" value="([^"]+)"', tables.text) == [
        "&lt;img src=x onerror=alert(2)&gt;", "employee", "salary", "title"]
    no_markup(tables.text)
    assert "Choose a database" in dev.get("/console/schema/tables", params={"db": "nope"}).text
    assert "csrf" not in tables.text  # GETs carry no CSRF token (nor put one in a URL)
    # ticking two tables files one request for both
    answer = dev.post("/console/requests", data={"csrf": csrf_of(page), "db": "hr_prod", "tables": ["salary", "title"],
                                                 "privileges": "SELECT", "duration": "1h", "reason": "INC-13 both"})
    assert answer.status_code == 303, answer.text
    (request,) = console.store.requests()
    assert request.tables == ("salary", "title")


def test_a_refused_request_keeps_the_form_as_filled(console: Console) -> None:
    dev = console.signed_in(DEV)
    odd = post(dev, "/console/requests", db="hr_prod", tables=["salary", HOSTILE_TABLE], duration="1h",
               reason="INC-14 x")
    assert odd.status_code == 400 and "table name &#39;&lt;img&#39;: letters, digits" in odd.text  # the service's rule
    no_markup(odd.text)
    refused = post(dev, "/console/requests", db="hr_prod", tables=["salary"], privileges="SELECT",
                   duration="9h", reason="INC-14 " + HOSTILE)
    assert refused.status_code == 400 and "at most 8h" in refused.text
    html = refused.text
    no_markup(html)
    assert "INC-14 &lt;script&gt;" in html and 'value="9h"' in html
    assert re.search(r'value="salary" checked', html) and re.search(r'value="title">', html)


def test_without_a_live_schema_the_names_are_typed(console: Console) -> None:
    console.schema.down = True
    dev = console.signed_in(DEV)
    page = dev.get("/console/requests").text
    assert '<input id="db" name="db"' in page and '<input id="tables" name="tables"' in page
    assert "did not answer: TimeoutError: type the names instead" in page
    answer = post(dev, "/console/requests", db="hr_prod", tables="salary", duration="1h", reason="INC-15 x")
    assert answer.status_code == 503 and "could not be checked against the database" in answer.text


def test_ask_for_more_time_fills_the_form(console: Console) -> None:
    dev = console.signed_in(DEV)
    approved(console, dev)
    access = dev.get("/console/access").text
    link = re.search(r'href="(/console/requests\?[^"]+)#ask">Ask for more time', access).group(1)  # type: ignore[union-attr]
    form = dev.get(link.replace("&amp;", "&")).text.split('id="ask"')[1]
    assert "<option selected>hr_prod</option>" in form and 'value="salary" checked' in form
    assert 'value="SELECT" checked' in form and 'value="UPDATE" checked' not in form


# -- Access: extend within policy, give back --------------------------------------------------------


def test_an_approver_extends_within_policy_and_nobody_extends_their_own(console: Console) -> None:
    dev, olga, ines = console.signed_in(DEV), console.signed_in(OWNER), console.signed_in(AUDITOR)
    request_id = approved(console, dev)
    (grant_id,) = console.store.get_request(request_id).grant_ids
    page = olga.get(f"/console/requests/{request_id}").text
    assert f"/console/grants/{grant_id}/extend" in page  # an approver of prod SELECT, on the request's page
    assert f"/console/grants/{grant_id}/extend" not in dev.get(f"/console/requests/{request_id}").text

    def extend(browser: httpx.Client, until: str, reason: str = "INC-10 still at it", at: str = "") -> httpx.Response:
        return browser.post(f"/console/grants/{grant_id}/extend", data={
            "csrf": csrf_of(browser.get(at or f"/console/requests/{request_id}").text), "until": until,
            "reason": reason, "back": f"requests/{request_id}"})

    refused = extend(dev, "2h")
    assert refused.status_code == 403 and "nobody extends their own access" in refused.text
    assert extend(ines, "2h", at="/console/access").status_code == 403  # an auditor: not an approver
    too_long = extend(olga, "9h")
    assert too_long.status_code == 400 and "at most 8h in prod" in too_long.text
    assert extend(olga, "soon").status_code == 400
    assert olga.post(f"/console/grants/{grant_id}/extend", data={"until": "2h", "reason": "x"}).status_code == 403  # CSRF
    done = extend(olga, "3h", reason="INC-10 " + HOSTILE)
    assert done.status_code == 303 and done.headers["location"] == f"/console/requests/{request_id}"
    grants = console.store.grants(subject="user:dev")
    extension = next(g for g in grants if g.id != grant_id)
    assert extension.reason.startswith(f"extends {grant_id} of request {request_id}: INC-10 ")
    assert extension.created_by == "olga" and extension.expires_at > console.store.get_grant(grant_id).expires_at
    html = olga.get(f"/console/requests/{request_id}").text
    assert f"<code>{extension.id}</code>" in html and "and the grants extending it" in html
    no_markup(html)
    assert "extended" in html  # the flash


def test_extending_an_extension_counts_from_the_first_grant(console: Console) -> None:
    """Each extension is a new grant; the environment's maximum still counts from the access's
    first start, however many extensions follow one another."""
    dev, olga = console.signed_in(DEV), console.signed_in(OWNER)
    request_id = approved(console, dev)
    (first,) = console.store.get_request(request_id).grant_ids

    def extend(grant_id: str, until: str) -> httpx.Response:
        return olga.post(f"/console/grants/{grant_id}/extend", data={
            "csrf": csrf_of(olga.get(f"/console/requests/{request_id}").text), "until": until,
            "reason": "INC-11 still at it", "back": f"requests/{request_id}"})

    console.clock.advance(timedelta(minutes=50))
    assert extend(first, "4h").status_code == 303  # until 4h50m after the first start
    second = next(g.id for g in console.store.grants(subject="user:dev") if g.id != first)
    console.clock.advance(timedelta(hours=3, minutes=30))
    refused = extend(second, "4h")  # 7h30m after the second's start, 8h20m after the first's
    assert refused.status_code == 400 and "at most 8h in prod" in refused.text
    assert extend(second, "3h").status_code == 303  # 7h20m after the first start


def test_one_approver_does_not_extend_what_needs_two(console: Console) -> None:
    dev, olga, ada = console.signed_in(DEV), console.signed_in(OWNER), console.signed_in(ADMIN)
    request_id = approved(console, dev, privileges="UPDATE")
    (grant_id,) = console.store.get_request(request_id).grant_ids
    refused = post(olga, f"/console/grants/{grant_id}/extend", "/console/access", until="90m", reason="INC-16 more")
    assert refused.status_code == 403 and "whose approval alone grants it" in refused.text
    access = ada.get("/console/access").text  # an admin: the extend form on everyone's grants
    assert f"/console/grants/{grant_id}/extend" in access
    assert post(ada, f"/console/grants/{grant_id}/extend", "/console/access", until="3h",
                reason="INC-16 more").status_code == 400  # prod UPDATE: at most 2h from its start
    done = post(ada, f"/console/grants/{grant_id}/extend", "/console/access", until="90m", reason="INC-16 more")
    assert done.status_code == 303 and done.headers["location"] == "/console/access"
    assert len(console.store.grants(subject="user:dev")) == 2


def test_a_person_gives_back_their_own_access_on_the_access_page(console: Console) -> None:
    dev = console.signed_in(DEV)
    request_id = approved(console, dev)
    (grant_id,) = console.store.get_request(request_id).grant_ids
    access = dev.get("/console/access").text
    assert f"/console/grants/{grant_id}/release" in access and "Everyone's" not in access
    assert f"/console/grants/{grant_id}/revoke" not in access and "/extend" not in access
    done = post(dev, f"/console/grants/{grant_id}/release", "/console/access", reason="INC-10 done")
    assert done.status_code == 303 and done.headers["location"] == "/console/access"
    grant = console.store.get_grant(grant_id)
    assert grant.released and grant.revoked_by == "dev"
    assert "given back" in dev.get("/console/access").text  # the flash
    olga = console.signed_in(OWNER)
    refused = post(olga, f"/console/grants/{grant_id}/release", "/console/access", reason="not mine")
    assert refused.status_code == 404  # somebody else's: no such grant of hers


# -- Audit: an event's full detail -----------------------------------------------------------------


def test_an_events_full_detail_has_its_own_page(console: Console) -> None:
    dev, ines = console.signed_in(DEV), console.signed_in(AUDITOR)
    request_id = ask(dev)
    console.service.audit.emit("statement.denied", None, user="dev", statement=f"SELECT '{HOSTILE}' FROM salary",
                               tables=[f"hr_prod.{HOSTILE_TABLE}"], decision="deny", reason_code="missing_grant",
                               rows=0)
    def links() -> list[str]:  # (the store sink writes in batches)
        found = re.findall(r'href="(/console/audit/event\?[^"]+)">full detail',
                           ines.get("/console/audit", params={"user": "dev"}).text)
        return found if len(found) >= 2 else []

    links = eventually(links)
    assert len(links) >= 2
    statement = ines.get(links[0].replace("&amp;", "&"))  # newest first: the statement
    assert statement.status_code == 200 and "statement.denied" in statement.text and "missing_grant" in statement.text
    no_markup(statement.text)
    assert "&lt;script&gt;alert(&#34;x&#34;)" in statement.text and "hr_prod.&lt;img src=x" in statement.text
    assert "verify the chain of test:1" in statement.text
    created = ines.get(links[-1].replace("&amp;", "&")).text
    assert "request.created" in created and f'href="/console/requests/{request_id}"' in created
    assert dev.get(links[0].replace("&amp;", "&")).status_code == 403  # a developer reads no trail
    assert ines.get("/console/audit/event", params={"proxy_instance": "test:1", "seq": 99999}).status_code == 404


# -- configuration: the console switch, links in notifications --------------------------------------


def _config(tmp_path: Path, **sections: object) -> Path:
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    raw.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_console_section_of_the_config(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.console.enabled and cfg.console.session_ttl == timedelta(hours=8) and cfg.console_url() is None
    cfg = load_config(_config(tmp_path, console={"public_url": "https://jitproxy.example.com:8443/",
                                                 "session_ttl": "1h"}))
    assert cfg.console_url() == "https://jitproxy.example.com:8443" and cfg.console.session_ttl == timedelta(hours=1)
    oidc = {"issuer": "https://idp.example.com", "client_id": "jitproxy",
            "redirect_uri": "https://jit.example.com:8443/v1/login/callback"}
    with_oidc = load_config(_config(tmp_path, oidc=oidc, identity={
        **yaml.safe_load((ROOT / "config.example.yaml").read_text())["identity"],
        "signing": {"private_key_file": "k.pem", "issuer": "jitproxy", "audience": "jitproxy"}}))
    assert with_oidc.console_url() == "https://jit.example.com:8443"  # the API's address the IdP knows
    off = load_config(_config(tmp_path, console={"enabled": False, "public_url": "https://x.example.com"}))
    assert off.console_url() is None  # no console: no links to it
    for bad in ("javascript:alert(1)", "https://x.example.com/<b>", "https://a|b"):
        with pytest.raises(ConfigError, match="console.public_url"):
            load_config(_config(tmp_path, console={"public_url": bad}))


def test_the_console_can_be_switched_off(console: Console) -> None:
    app = create_app(console.service, Verifier(), console=False)  # type: ignore[arg-type]

    async def status(path: str, **headers: str) -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="https://testserver") as client:
            return (await client.get(path, headers=headers)).status_code

    assert asyncio.run(status("/console/login")) == 404 and asyncio.run(status("/console/requests")) == 404
    assert asyncio.run(status("/v1/whoami", Authorization="Bearer dev:devs")) == 200
    shorter = create_app(console.service, Verifier(), console_ttl=timedelta(minutes=5))  # type: ignore[arg-type]
    assert shorter.state.console.sessions.ttl == timedelta(minutes=5)  # console.session_ttl


def test_notifications_link_to_the_requests_page(console: Console) -> None:
    sent: list[tuple[str, dict[str, object]]] = []
    console.service.notify = lambda event, body: sent.append((event, body))
    request_id = ask(console.signed_in(DEV))
    url = f"https://jitproxy.example.com:8443/console/requests/{request_id}"
    ((event, body),) = sent
    assert event == "request.created" and body["console_url"] == url  # the JSON webhooks' field
    blocks = slack_payload(event, body)["blocks"]
    assert blocks[-1]["text"]["text"] == f"<{url}|Open request {request_id} in the console>"  # Slack webhooks
    _, message = slack_render({**console.service.view(console.store.get_request(request_id)), "console_url": url})
    assert any(f"<{url}|" in str(b) for b in message)  # the Slack app's message
    assert console_link({"id": "r-1", "console_url": "https://x.example.com/console/requests/r-1|<!channel>"}) is None
    assert console_link({"id": "r-1"}) is None


def test_the_new_pages_are_as_strict_as_the_others(console: Console) -> None:
    dev, ines = console.signed_in(DEV), console.signed_in(AUDITOR)
    request_id = ask(dev)
    event = eventually(lambda: re.findall(r'href="(/console/audit/event\?[^"]+)">full detail',
                                          ines.get("/console/audit").text))
    for browser, path in [(dev, f"/console/requests/{request_id}"), (dev, "/console/schema/tables?db=hr_prod"),
                          (dev, "/console/schema/databases"), (dev, "/console/requests?db=hr_prod&tables=salary"),
                          (ines, event[0].replace("&amp;", "&"))]:
        answer = browser.get(path)
        assert answer.status_code == 200, path
        assert_strict(answer)
