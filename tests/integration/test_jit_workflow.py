"""The tutorial flow end to end, through the real CLI, API, proxy and MariaDB: denied → request
→ approved by someone else → the *same open session's* next statement works → the access
expires → the next statement is denied. Self-approval refused; prod and test policies differ;
revocation bites on the next statement. One proxy of its own: its databases have environments
(upstream.environments), as the demo's do."""

from __future__ import annotations

import json
import re
import ssl
from datetime import timedelta

import httpx
import pymysql
import pytest

from jitproxy_demo.inprocess import RunningProxy
from tests.helpers import HR_ENVIRONMENTS, api_cli, eventually, run_cli
from tests.integration.conftest import POLICY, client_ssl, local_proxy_config

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
  - {environment: prod, privileges: [INSERT, UPDATE, DELETE], approvals: 2,
     approvers: ["group:project-owner", "group:dba"], require: ["group:dba"], max_duration: 2h}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
  - {environment: prod, break_glass: true, who: ["group:oncall"], privileges: [SELECT, UPDATE], max_duration: 2h,
     reviewers: ["group:sre-lead"]}
"""


@pytest.fixture(scope="module")
def jit_proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials):
    policies = tmp_path_factory.mktemp("jit-policies")
    (policies / "base.yaml").write_text(POLICY)
    (policies / "approvals.yaml").write_text(APPROVALS)
    cfg = local_proxy_config(tmp_path_factory.mktemp("jit-proxy"), mariadb, tls_files, upstream_credentials, policies,
                             extra={"upstream": {"environments": HR_ENVIRONMENTS}})
    running = RunningProxy(cfg)
    yield running
    running.stop()


@pytest.fixture
def workflow(jit_proxy, tls_files, monkeypatch):
    monkeypatch.setenv("JITPROXY_API", f"https://127.0.0.1:{jit_proxy.server.api.port}")
    monkeypatch.setenv("JITPROXY_CA", str(tls_files.ca_cert))
    offset = jit_proxy.clock.offset
    yield jit_proxy
    jit_proxy.clock.offset = offset


def cli(monkeypatch, capsys, proxy, user: str, groups: tuple[str, ...], *argv: str) -> tuple[int, str]:
    return api_cli(monkeypatch, capsys, proxy, user, groups, *argv)


def _session(proxy, tls_files, user="wfdev"):
    """No default database: a person with no grant at all may not select hr_prod (1044)."""
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=proxy.token(user),
                           ssl=client_ssl(tls_files), autocommit=True)


def test_request_approve_use_expire_in_one_open_session(workflow, tls_files, monkeypatch, capsys):
    # the clock moves past the grant's end, and so past the token's: the session must outlive it
    monkeypatch.setattr(workflow.ctx, "on_token_expiry", "allow_until_idle")
    proxy = workflow
    session = _session(proxy, tls_files)
    cur = session.cursor()
    with pytest.raises(pymysql.MySQLError) as e:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
    hint = e.value.args[1]
    assert "jitproxy request create --db hr_prod --table salary --privilege SELECT" in hint

    code, out = cli(monkeypatch, capsys, proxy, "wfdev", (), "request", "create", "--db", "hr_prod",
                    "--table", "salary", "--for", "1h", "--reason", "INC-1234 payroll check")
    assert code == 0 and "pending" in out, out
    request_id = re.search(r"request (r-[0-9a-f]+)", out).group(1)

    code, out = cli(monkeypatch, capsys, proxy, "wfdev", ("project-owner",), "request", "approve", request_id)
    assert code == 1 and "nobody approves or denies their own request" in out  # not even through a group
    code, out = cli(monkeypatch, capsys, proxy, "eve", ("developers",), "request", "approve", request_id)
    assert code == 1 and "not an approver" in out
    code, out = cli(monkeypatch, capsys, proxy, "olga", ("project-owner",), "request", "approve", request_id,
                    "--comment", "ok for INC-1234")
    assert code == 0 and "approved" in out, out

    cur.execute("SELECT COUNT(*) FROM hr_prod.salary")  # the same open session, the very next statement
    assert cur.fetchone()[0] > 0
    code, out = cli(monkeypatch, capsys, proxy, "wfdev", (), "access")
    assert "hr_prod.salary" in out and f"request {request_id}" in out

    proxy.clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(pymysql.MySQLError) as e:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
    assert e.value.args[0] == 1142
    session.close()

    types = [ev["type"] for ev in proxy.events if ev.get("id") == request_id]
    assert types == ["request.created", "request.approved"]
    approved = next(ev for ev in proxy.events if ev.get("id") == request_id and ev["type"] == "request.approved")
    assert approved["actor"] == "olga" and approved["requester"] == "wfdev"


def test_test_is_auto_approved_and_prod_writes_need_a_dba(workflow, tls_files, monkeypatch, capsys):
    proxy = workflow
    code, out = cli(monkeypatch, capsys, proxy, "wfdev2", (), "request", "create", "--db", "hr_test",
                    "--table", "employee", "--privilege", "UPDATE", "--for", "2h", "--reason", "fix test data")
    assert code == 0 and "approved" in out, out
    code, out = cli(monkeypatch, capsys, proxy, "wfdev2", (), "request", "create", "--db", "hr_prod",
                    "--table", "employee", "--privilege", "UPDATE", "--for", "4h", "--reason", "INC-9")
    assert code == 1 and "at most 2h" in out
    code, out = cli(monkeypatch, capsys, proxy, "wfdev2", (), "request", "create", "--json", "--db", "hr_prod",
                    "--table", "employee", "--privilege", "UPDATE", "--for", "1h", "--reason", "INC-9")
    request_id = json.loads(out)["id"]
    cli(monkeypatch, capsys, proxy, "olga", ("project-owner",), "request", "approve", request_id)
    code, out = cli(monkeypatch, capsys, proxy, "otto", ("project-owner",), "request", "approve", request_id)
    assert "pending" in out  # two owners, no dba yet
    code, out = cli(monkeypatch, capsys, proxy, "dana", ("dba",), "request", "approve", request_id)
    assert code == 0 and "approved" in out


def test_revocation_bites_on_the_next_statement(workflow, tls_files, monkeypatch, capsys):
    proxy = workflow
    code, out = cli(monkeypatch, capsys, proxy, "root-admin", ("dba",), "grant", "add", "--user", "wfdev3",
                    "--grant", "hr_prod.title", "--for", "1h", "--reason", "pairing")
    assert code == 0, out
    grant_id = re.search(r"(g-[0-9a-f]+)", out).group(1)
    session = _session(proxy, tls_files, "wfdev3")
    cur = session.cursor()
    cur.execute("SELECT COUNT(*) FROM hr_prod.title")
    code, out = cli(monkeypatch, capsys, proxy, "wfdev3", (), "grant", "revoke", grant_id)
    assert code == 1 and "admins only" in out
    code, out = cli(monkeypatch, capsys, proxy, "root-admin", ("dba",), "grant", "revoke", grant_id)
    assert code == 0 and "revoked" in out
    with pytest.raises(pymysql.MySQLError) as e:
        cur.execute("SELECT COUNT(*) FROM hr_prod.title")
    assert e.value.args[0] == 1142
    session.close()


def test_until_ends_access_exactly_then_and_a_release_bites_at_once(workflow, tls_files, monkeypatch, capsys):
    """--until is an absolute end however late the approval; `request show` then says expired;
    a person giving access back loses it on their open session's very next statement."""
    monkeypatch.setattr(workflow.ctx, "on_token_expiry", "allow_until_idle")
    proxy = workflow

    def as_(user: str, *argv: str, groups: tuple[str, ...] = ()) -> str:
        # Tokens that outlive the clock's moves (the API checks them against the proxy's clock).
        monkeypatch.setenv("JITPROXY_TOKEN", proxy.token(user, groups, ttl=timedelta(hours=6)))
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, out + err
        return out

    end = (proxy.clock() + timedelta(hours=2)).replace(microsecond=0)
    out = as_("wfend", "request", "create", "--db", "hr_prod", "--table", "salary", "--until", end.isoformat(),
              "--reason", "INC-77 exact end")
    request_id = re.search(r"request (r-[0-9a-f]+)", out).group(1)
    proxy.clock.advance(timedelta(minutes=30))  # a slow approver
    as_("olga", "request", "approve", request_id, groups=("project-owner",))
    session = _session(proxy, tls_files, "wfend")
    try:
        cur = session.cursor()
        proxy.clock.advance(end - proxy.clock() - timedelta(seconds=1))
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")  # a second before the end
        proxy.clock.advance(timedelta(seconds=2))
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        assert e.value.args[0] == 1142
        out = as_("wfend", "request", "show", request_id)
        assert f"{request_id}  expired" in out and f"ended {end.astimezone().isoformat()}" in out, out

        out = as_("wfend", "request", "create", "--json", "--db", "hr_prod", "--table", "salary", "--for", "1h",
                  "--reason", "INC-78 one more look")
        again = json.loads(out)["id"]
        as_("olga", "request", "approve", again, groups=("project-owner",))
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        out = as_("wfend", "request", "release", again, "--reason", "done")
        assert f"request {again}: released" in out, out
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        assert e.value.args[0] == 1142
    finally:
        session.close()
    released = [ev for ev in proxy.events if ev.get("id") == again and ev["type"] == "request.released"]
    assert [(ev["status"], ev["status_by"], ev["status_reason"]) for ev in released] == [("released", "wfend", "done")]


async def _sweep(proxy):
    return proxy.ctx.sweep_sessions()


def test_on_expiry_disconnect_closes_sessions_whose_last_grant_ended(workflow, tls_files, monkeypatch, capsys):
    """on_expiry: disconnect: the session of a person whose last grant expired is closed and
    told why; a person who still holds a grant, or who never held one (connected to ask for
    access), keeps their session."""
    # the clock moves past the grant's end, and so past the token's: the session must outlive it
    monkeypatch.setattr(workflow.ctx, "on_token_expiry", "allow_until_idle")
    proxy = workflow
    monkeypatch.setattr(proxy.ctx, "on_expiry", "disconnect")
    for user, duration in (("wfexp", "1h"), ("wfkeep", "3h")):
        code, out = cli(monkeypatch, capsys, proxy, "root-admin", ("dba",), "grant", "add", "--user", user,
                        "--grant", "hr_prod.title", "--for", duration, "--reason", "INC-7")
        assert code == 0, out
    proxy.call(proxy.ctx.grants.refresh())
    expiring, keeping, asking = (_session(proxy, tls_files, u) for u in ("wfexp", "wfkeep", "wfnone"))
    for s in (expiring, keeping):
        s.cursor().execute("SELECT COUNT(*) FROM hr_prod.title")
    assert proxy.call(_sweep(proxy)) == []  # everybody still holds what they held

    proxy.clock.advance(timedelta(hours=2))
    ended = proxy.call(_sweep(proxy))
    assert ended == [expiring.thread_id()]
    with pytest.raises(pymysql.MySQLError) as e:
        expiring.cursor().execute("SELECT 1")
    assert e.value.args[0] == 2013  # PyMySQL's reading of an error sent with sequence 0 (as at shutdown)
    assert eventually(lambda: [e for e in proxy.events if e["type"] == "session.end"
                              and e.get("user") == "wfexp" and e.get("reason") == "access_ended"])
    keeping.cursor().execute("SELECT COUNT(*) FROM hr_prod.title")
    asking.cursor().execute("SELECT 1")
    assert proxy.call(_sweep(proxy)) == []
    keeping.close()
    asking.close()


def test_break_glass_gives_access_on_the_next_statement_and_a_deny_in_review_takes_it_away(
        workflow, tls_files, monkeypatch, capsys):
    """An on-call person's break-glass request is granted at once: their open session's very
    next statement reads; a reviewer's deny after the fact revokes it: the next one is denied."""
    proxy = workflow
    session = _session(proxy, tls_files, "wfoncall")
    try:
        cur = session.cursor()
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        code, out = cli(monkeypatch, capsys, proxy, "wfdev4", (), "request", "create", "--db", "hr_prod", "--table",
                        "salary", "--break-glass", "--for", "1h", "--reason", "INC-321 payroll down")
        assert code == 1 and "wfdev4 is not on call for prod" in out
        code, out = cli(monkeypatch, capsys, proxy, "wfoncall", ("oncall",), "request", "create", "--db", "hr_prod",
                        "--table", "salary", "--break-glass", "--for", "3h", "--reason", "INC-321 payroll down")
        assert code == 1 and "break glass in prod lasts at most 2h" in out
        code, out = cli(monkeypatch, capsys, proxy, "wfoncall", ("oncall",), "request", "create", "--db", "hr_prod",
                        "--table", "salary", "--break-glass", "--for", "1h", "--reason", "INC-321 payroll down")
        assert code == 0 and "approved — break glass, review pending" in out, out
        request_id = re.search(r"request (r-[0-9a-f]+)", out).group(1)

        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")  # the same open session, the very next statement
        assert cur.fetchone()[0] > 0
        code, out = cli(monkeypatch, capsys, proxy, "wfoncall", ("oncall", "sre-lead"), "request", "deny", request_id)
        assert code == 1 and "nobody reviews their own break-glass request" in out
        code, out = cli(monkeypatch, capsys, proxy, "lena", ("sre-lead",), "request", "deny", request_id,
                        "--comment", "no incident INC-321")
        assert code == 0 and f"request {request_id}: revoked — break glass, denied in review by lena" in out, out
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        assert e.value.args[0] == 1142
    finally:
        session.close()
    events = [ev for ev in proxy.events if request_id in (ev.get("id"), ev.get("request_id"))]
    assert [ev["type"] for ev in events] == ["request.break_glass", "request.reviewed", "grant.revoked",
                                             "request.revoked"]
    assert events[0]["actor"] == "wfoncall" and events[0]["environment"] == "prod" and events[0]["review"] == "pending"
    assert (events[1]["actor"], events[1]["review"]) == ("lena", "denied by lena")
    allowed = [ev for ev in proxy.events if ev["type"] == "statement.completed" and ev.get("user") == "wfoncall"]
    assert any(f"request {request_id}" in json.dumps(ev.get("grants")) for ev in allowed), allowed


def test_api_requires_a_valid_token_and_publishes_openapi(workflow, tls_files):
    base = f"https://127.0.0.1:{workflow.server.api.port}"
    with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(tls_files.ca_cert))) as c:
        assert c.get("/v1/requests").status_code == 401
        assert c.get("/v1/requests", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        spec = c.get("/openapi.json").json()
        assert "/v1/requests/{request_id}/approve" in spec["paths"]
