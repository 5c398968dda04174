"""Break glass for on-call people through the real `jitproxy` CLI and the admin API (uvicorn over
TLS, the real service on a SQLite store, policy files read by the real loaders): `request create
--break-glass` granted at once and shown so, every refusal in words, the review after the fact
(`request approve` keeps it, `request deny` revokes it, never one's own), and the API's own
`break_glass` field."""

from __future__ import annotations

import json
import re
import ssl

import httpx
import pytest

from jitproxy_demo.certs import TlsFiles
from tests.cli.test_workflow_cli import POLICY, Workflow, cli, ok, workflow  # noqa: F401 - the fixture

BREAK_GLASS = """\
  - environment: prod
    break_glass: true
    who: [group:oncall]
    privileges: [SELECT, UPDATE]
    max_duration: 2h
    reviewers: [group:sre-lead]
"""
ONCALL, LEAD, OWNER, ADMIN, DEV = "carl:oncall", "lena:sre-lead", "olga:owner", "ada:dba", "dev:devs"
CREATE = ("request", "create", "--db", "hr_prod", "--table", "salary", "--break-glass")


@pytest.fixture
def workflow_policy() -> str:
    """test_workflow_cli's policy file with a break-glass entry among its approval policies."""
    return POLICY.replace("grants:", BREAK_GLASS + "grants:", 1)


def _id(out: str) -> str:
    return re.search(r"request (r-[0-9a-f]+)", out).group(1)


def test_an_on_call_person_breaks_glass_and_a_reviewer_keeps_it(workflow: Workflow, monkeypatch, capsys) -> None:
    out = ok(monkeypatch, capsys, ONCALL, *CREATE, "--privilege", "UPDATE", "--for", "1h",
             "--reason", "INC-123 payroll stuck")
    request_id = _id(out)
    assert re.match(rf"request {request_id}: approved — break glass, review pending \(access until \S+; your next "
                    r"statement can use it\)\n", out), out
    assert (f"a reviewer (group:sre-lead) keeps it with jitproxy request approve {request_id} or revokes it with "
            f"jitproxy request deny {request_id} --comment '...'") in out
    held = ok(monkeypatch, capsys, "carl:oncall", "access")
    assert "hr_prod.salary" in held and f"request {request_id} (break glass)" in held
    (event,) = workflow.of_type("request.break_glass")
    assert (event["actor"], event["review"], event["privileges"]) == ("carl", "pending", ["UPDATE"])
    assert [kind for kind, _ in workflow.notes] == ["request.break_glass"]

    line = ok(monkeypatch, capsys, LEAD, "request", "list")
    assert line.startswith(f"{request_id}  approved  carl") and "[break glass, review pending]" in line, line
    code, out, err = cli(monkeypatch, capsys, "carl:oncall,sre-lead", "request", "approve", request_id)
    assert code == 1 and "refused (403): nobody reviews their own break-glass request" in err
    code, out, err = cli(monkeypatch, capsys, OWNER, "request", "approve", request_id)
    assert code == 1 and "refused (403): you are not a reviewer of break glass in prod (reviewers: group:sre-lead; " \
                         "and admins)" in err
    out = ok(monkeypatch, capsys, LEAD, "request", "approve", request_id, "--comment", "INC-123 is real")
    assert out == f"request {request_id}: approved — break glass, reviewed by lena\n"
    shown = json.loads(ok(monkeypatch, capsys, ADMIN, "request", "show", request_id, "--json"))
    assert (shown["status"], shown["break_glass"], shown["review"], shown["reviewers"]) == (
        "approved", True, "approved by lena", ["group:sre-lead"])
    assert [(a["approver"], a["decision"]) for a in shown["approvals"]] == [("jitproxy", "approve"),
                                                                            ("lena", "approve")]
    code, out, err = cli(monkeypatch, capsys, LEAD, "request", "deny", request_id)
    assert code == 1 and "refused (409): request " in err and "is already reviewed: approved by lena" in err


def test_a_deny_in_review_revokes_it_at_once(workflow: Workflow, monkeypatch, capsys) -> None:
    request_id = _id(ok(monkeypatch, capsys, ONCALL, *CREATE, "--for", "30m", "--reason", "INC-124 look"))
    out = ok(monkeypatch, capsys, LEAD, "request", "deny", request_id, "--comment", "no incident open")
    assert out == f"request {request_id}: revoked — break glass, denied in review by lena\n"
    assert "hr_prod.salary" not in ok(monkeypatch, capsys, ONCALL, "access")
    line = ok(monkeypatch, capsys, ONCALL, "request", "show", request_id).splitlines()[0]
    assert "revoked" in line and "by lena: break glass denied in review: no incident open" in line
    assert "[break glass, denied in review by lena]" in line
    assert [e["type"] for e in workflow.events if e.get("id") == request_id or e.get("request_id") == request_id] == [
        "request.break_glass", "request.reviewed", "grant.revoked", "request.revoked"]


@pytest.mark.parametrize(("token", "argv", "message"), [
    (DEV, ("--for", "1h", "--reason", "INC-1"),
     "refused (403): dev is not on call for prod: break glass there is for group:oncall; ask for access without "
     "--break-glass"),
    (ONCALL, ("--privilege", "DELETE", "--for", "1h", "--reason", "INC-1"),
     "refused (403): break glass in prod covers SELECT, UPDATE for carl, not DELETE"),
    (ONCALL, ("--for", "3h", "--reason", "INC-1"),
     "refused (400): break glass in prod lasts at most 2h for SELECT; ask for less"),
    (ONCALL, ("--for", "1h", "--reason", "ab"),
     "refused (400): the reason 'ab' is too short: at least 3 characters"),
    (ONCALL, ("--for", "1h", "--reason", " "),
     "refused (400): --break-glass needs --reason: at least 3 characters"),
])
def test_refusals_in_words(workflow: Workflow, monkeypatch, capsys, token: str, argv: tuple[str, ...],
                           message: str) -> None:
    code, out, err = cli(monkeypatch, capsys, token, *CREATE, *argv)
    assert code == 1 and message in err, err
    assert workflow.store.requests() == [] and workflow.notes == []


def test_the_api_takes_break_glass_and_says_the_review(workflow: Workflow, tls_files: TlsFiles) -> None:
    verify = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    with httpx.Client(base_url=workflow.api.url, verify=verify, headers={"Authorization": f"Bearer {ONCALL}"}) as client:
        answer = client.post("/v1/requests", json={"db": "hr_prod", "tables": ["salary"], "reason": "INC-125 api",
                                                   "duration": "45m", "break_glass": True})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert (body["status"], body["break_glass"], body["review"], body["reviewers"]) == (
            "approved", True, "pending", ["group:sre-lead"])
        assert [g["break_glass"] for g in body["grants"]] == [True]
        plain = client.post("/v1/requests", json={"db": "hr_prod", "tables": ["employee"], "reason": "INC-125",
                                                  "duration": "45m"}).json()
        assert (plain["status"], plain["break_glass"], plain["review"]) == ("pending", False, None)
