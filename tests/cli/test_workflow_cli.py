"""The just-in-time workflow through the real `jitproxy` CLI against a running admin API
(uvicorn over TLS, the real service on a SQLite store, policy files read by the real loaders):
exact ends, true statuses, giving access back, break glass, requests checked before they are
stored, and the CLI's paste failures (version, whoami, closed pipes, an untrusted certificate,
/docs). The clock is the real one plus an offset the tests move (the CLI reads local times)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import MutableClock
from proxy.api.app import create_app
from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.decide import GrantSet
from proxy.authz.policy import load_policy_dir
from proxy.store import open_store
from proxy.store.base import Store
from proxy.workflow.approvals import load_approval_policies
from proxy.workflow.grants import EffectiveGrants
from proxy.workflow.service import AccessService
from tests.audit.test_audit_cli import RunningApi
from tests.audit.test_search_api import Verifier
from tests.helpers import HR_ENVIRONMENTS, environments, run_cli

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:owner"], max_duration: 8h,
     wildcard_tables: true}
  - {environment: prod, privileges: [UPDATE], approvals: 2, approvers: ["group:owner", "group:dba"],
     require: ["group:dba"], max_duration: 2h}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
grants:
  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT]}
  - {subject: user:ada, grant: "*.*", privileges: ALL}
"""
DEV, OWNER, ADMIN = "dev:devs", "olga:owner", "ada:dba"


@dataclass
class Workflow:
    store: Store
    service: AccessService
    clock: MutableClock
    api: RunningApi
    events: list[dict[str, Any]]
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def workflow_policy() -> str:
    """The policy file of `workflow` (a test module may override this fixture)."""
    return POLICY


@pytest.fixture
def workflow(tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch,
             workflow_policy: str) -> Iterator[Workflow]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "base.yaml").write_text(workflow_policy)
    approvals, policy_grants = load_approval_policies([policies]), GrantSet(load_policy_dir(policies).grants)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock, sink = MutableClock(), MemorySink()
    notes: list[tuple[str, dict[str, Any]]] = []
    service = AccessService(store, lambda: approvals, AuditEmitter([sink], instance="test"), clock,
                            admin_groups=frozenset({"dba"}), notify=lambda event, body: notes.append((event, body)),
                            environments=environments(HR_ENVIRONMENTS))
    grants = EffectiveGrants(lambda: policy_grants, store, clock)
    app = create_app(service, Verifier(), access=grants.held_by,  # type: ignore[arg-type]
                     on_change=lambda: grants.refresh(force=True))
    api = RunningApi(app, tls_files)
    asyncio.run_coroutine_threadsafe(grants.refresh(force=True), api.loop).result(10)
    monkeypatch.setenv("JITPROXY_API", api.url)
    monkeypatch.setenv("JITPROXY_CA", str(tls_files.ca_cert))
    yield Workflow(store, service, clock, api, sink.events, notes)
    api.stop()
    store.close()



def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str,
        *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("JITPROXY_TOKEN", token)
    return run_cli(capsys, *argv)


def ok(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str, *argv: str) -> str:
    code, out, err = cli(monkeypatch, capsys, token, *argv)
    assert code == 0, out + err
    return out


def shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], request_id: str) -> dict[str, Any]:
    return json.loads(ok(monkeypatch, capsys, ADMIN, "request", "show", request_id, "--json"))


def ask(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *span: str,
        table: str = "salary") -> str:
    """dev asks for SELECT on hr_prod.`table`; the new request's id."""
    out = ok(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", table, *span,
             "--reason", "INC-1 payroll")
    return re.search(r"request (r-[0-9a-f]+)", out).group(1)


def approved(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *span: str) -> str:
    request_id = ask(monkeypatch, capsys, *span)
    ok(monkeypatch, capsys, OWNER, "request", "approve", request_id)
    return request_id


# -- time --------------------------------------------------------------------------------------------


def test_until_is_the_exact_end_however_late_the_approval(workflow: Workflow, monkeypatch, capsys) -> None:
    end = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    request_id = ask(monkeypatch, capsys, "--until", end.strftime("%Y-%m-%dT%H:%M:%SZ"))
    workflow.clock.advance(timedelta(minutes=45))  # a slow approver
    ok(monkeypatch, capsys, OWNER, "request", "approve", request_id)
    r = shown(monkeypatch, capsys, request_id)
    assert r["status"] == "approved" and datetime.fromisoformat(r["access_until"]) == end
    assert [workflow.store.get_grant(g).expires_at for g in r["grant_ids"]] == [end]
    assert r["ends_at"] == end.isoformat()
    out = ok(monkeypatch, capsys, DEV, "request", "show", request_id)
    assert f"until {end.astimezone().isoformat()}" in out.splitlines()[0]


def test_a_request_whose_end_has_passed_cannot_be_approved(workflow: Workflow, monkeypatch, capsys) -> None:
    end = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    request_id = ask(monkeypatch, capsys, "--until", end.isoformat())
    workflow.clock.advance(timedelta(minutes=15))
    code, out, err = cli(monkeypatch, capsys, OWNER, "request", "approve", request_id)
    assert code == 1
    assert f"refused (409): request {request_id} asked for access until {end.isoformat()}, which has passed" in err
    assert workflow.store.grants() == []
    assert [r.id for r in workflow.service.expire_pending()] == [request_id]  # and it does not linger
    assert shown(monkeypatch, capsys, request_id)["status"] == "expired"


def test_until_takes_a_clock_time_and_a_local_time_and_says_which_zone(
        workflow: Workflow, local_zone: None, monkeypatch, capsys) -> None:
    target = (datetime.now().astimezone() + timedelta(hours=1)).replace(second=0, microsecond=0)
    clock_time = target.strftime("%H:%M")
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                         "--until", clock_time, "--reason", "INC-2 check")
    assert code == 0, out + err
    day = "today" if target.date() == datetime.now().astimezone().date() else "tomorrow"
    assert f"--until {clock_time} read as {target.isoformat()} ({day}, your local zone" in err
    assert "UTC+05:30" in err
    (request,) = workflow.store.requests()
    assert request.ends_at == target

    local = (datetime.now().astimezone() + timedelta(hours=2)).replace(second=0, microsecond=0)
    naive = local.strftime("%Y-%m-%dT%H:%M")
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "title",
                         "--until", naive, "--reason", "INC-2 check")
    assert code == 0, out + err
    assert f"--until {naive} read as {local.isoformat()} (your local zone" in err
    assert workflow.store.requests()[0].ends_at == local


@pytest.mark.parametrize(("value", "message"), [
    ("14:75", "not a time of day"),
    ("2026-12-07", "a day, not a time"),
    ("next week", "is not a time"),
])
def test_an_unreadable_until_is_explained_never_a_raw_422(workflow: Workflow, monkeypatch, capsys, value: str,
                                                          message: str) -> None:
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                         "--until", value, "--reason", "INC-3 check")
    assert code == 1 and message in err and "422" not in err
    with httpx.Client(base_url=workflow.api.url, verify=ssl.create_default_context(cafile=os.environ["JITPROXY_CA"]),
                      headers={"Authorization": f"Bearer {DEV}"}) as api:
        answer = api.post("/v1/requests", json={"db": "hr_prod", "tables": ["salary"], "reason": "INC-3 check",
                                                "until": value})
    assert answer.status_code == 400 and message in answer.json()["detail"]


def test_durations_need_a_unit_and_short_ones_show_their_seconds(workflow: Workflow, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                         "--for", "90", "--reason", "INC-4 check")
    assert code == 1 and "--for: '90' has no unit: add one, e.g. 90m for minutes or 90s for seconds" in err
    assert workflow.store.requests() == []
    out = ok(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
             "--for", "30s", "--reason", "INC-4 check")
    assert "(SELECT on hr_prod.{salary} for 30s once approved)" in out
    assert " for 30s " in ok(monkeypatch, capsys, DEV, "request", "list")


# -- statuses that are true -------------------------------------------------------------------------


def test_request_show_after_revocation_says_revoked_by_whom_when_why(workflow: Workflow, monkeypatch, capsys) -> None:
    request_id = approved(monkeypatch, capsys, "--for", "1h")
    (grant_id,) = shown(monkeypatch, capsys, request_id)["grant_ids"]
    assert ok(monkeypatch, capsys, ADMIN, "grant", "revoke", grant_id).startswith(f"revoked {grant_id}")
    r = shown(monkeypatch, capsys, request_id)
    assert r["status"] == "revoked" and (r["status_by"], r["status_reason"]) == ("ada", None)
    line = ok(monkeypatch, capsys, DEV, "request", "show", request_id).splitlines()[0]
    assert re.search(rf"{request_id}  revoked .* revoked \S+ by ada  —", line), line

    request_id = approved(monkeypatch, capsys, "--for", "1h")  # again, ended with a reason
    (grant_id,) = shown(monkeypatch, capsys, request_id)["grant_ids"]
    ok(monkeypatch, capsys, ADMIN, "grant", "revoke", grant_id, "--reason", "INC-1 closed")
    r = shown(monkeypatch, capsys, request_id)
    assert (r["status"], r["status_by"], r["status_reason"]) == ("revoked", "ada", "INC-1 closed")
    line, *details = ok(monkeypatch, capsys, DEV, "request", "show", request_id).splitlines()
    assert re.search(rf"{request_id}  revoked .* revoked \S+ by ada: INC-1 closed", line), line
    assert "approved" not in line and " until " not in line
    assert any(f"grant {grant_id} hr_prod.salary: revoked" in d for d in details)
    listed = ok(monkeypatch, capsys, DEV, "request", "list", "--status", "revoked").splitlines()
    assert len(listed) == 2 and listed[0].startswith(request_id)
    assert ok(monkeypatch, capsys, DEV, "request", "list", "--status", "approved").strip() == "no requests"
    # The same words in the events.
    assert [(e["status"], e["revoke_reason"]) for e in workflow.of_type("grant.revoked")] == [
        ("revoked", None), ("revoked", "INC-1 closed")]
    assert [(e["status"], e["status_by"]) for e in workflow.of_type("request.revoked")] == [
        ("revoked", "ada"), ("revoked", "ada")]


def test_request_show_after_expiry_says_expired(workflow: Workflow, monkeypatch, capsys) -> None:
    request_id = approved(monkeypatch, capsys, "--for", "1h")
    assert shown(monkeypatch, capsys, request_id)["status"] == "approved"
    workflow.clock.advance(timedelta(hours=1, seconds=1))
    r = shown(monkeypatch, capsys, request_id)
    assert r["status"] == "expired" and r["status_at"] == r["access_until"]
    line = ok(monkeypatch, capsys, DEV, "request", "show", request_id).splitlines()[0]
    end = datetime.fromisoformat(r["access_until"]).astimezone().isoformat(timespec="seconds")
    assert "expired   dev" in line and f"ended {end}" in line
    assert "approved" not in line


# -- giving access back, break glass ------------------------------------------------------------------


def test_a_person_releases_their_request_early(workflow: Workflow, monkeypatch, capsys) -> None:
    request_id = approved(monkeypatch, capsys, "--for", "1h")
    assert "hr_prod.salary" in ok(monkeypatch, capsys, DEV, "access")
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "cancel", request_id)
    assert code == 1 and f"to give its access back, run jitproxy request release {request_id}" in err
    code, out, err = cli(monkeypatch, capsys, OWNER, "request", "release", request_id)
    assert code == 1 and "only dev can give back their own access; admins revoke its grants" in err
    code, out, err = cli(monkeypatch, capsys, "eve", "request", "release", request_id)
    assert code == 1 and f"refused (404): no request {request_id}" in err  # ids are no oracle
    out = ok(monkeypatch, capsys, DEV, "request", "release", request_id, "--reason", "done early")
    assert re.match(rf"request {request_id}: released \S+ by dev: done early", out), out
    assert "hr_prod.salary" not in ok(monkeypatch, capsys, DEV, "access")
    r = shown(monkeypatch, capsys, request_id)
    assert (r["status"], r["status_by"], r["status_reason"]) == ("released", "dev", "done early")
    assert [e["status"] for e in workflow.of_type("grant.released")] == ["released"]
    assert [(e["id"], e["actor"]) for e in workflow.of_type("request.released")] == [(request_id, "dev")]
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "release", request_id)
    assert code == 1 and "is released: it grants nothing now" in err


def test_access_release_gives_back_direct_grants_but_not_a_groups(workflow: Workflow, monkeypatch, capsys) -> None:
    out = ok(monkeypatch, capsys, ADMIN, "grant", "add", "--user", "dev", "--grant", "hr_prod.title", "--for", "1h",
             "--reason", "pairing")
    mine = re.search(r"(g-[0-9a-f]+)", out).group(1)
    out = ok(monkeypatch, capsys, ADMIN, "grant", "add", "--group", "devs", "--grant", "hr_prod.salary",
             "--for", "1h", "--reason", "team")
    team = re.search(r"(g-[0-9a-f]+)", out).group(1)
    held = ok(monkeypatch, capsys, DEV, "access").splitlines()
    assert [line.split()[0] for line in held] == ["hr_prod.employee", "hr_prod.title", "hr_prod.salary"]
    assert "no expiry" in held[0] and "policy file " in held[0] and held[0].endswith("base.yaml")
    assert held[1].endswith(f"grant {mine} by ada")
    code, out, err = cli(monkeypatch, capsys, DEV, "grant", "revoke", mine)
    assert code == 1 and f"admins only (members of dba); to give back your own access: jitproxy access release {mine}" in err
    code, out, err = cli(monkeypatch, capsys, DEV, "access", "release", team)
    assert code == 1 and "group:devs's, not yours alone: an admin can revoke it" in err
    out = ok(monkeypatch, capsys, DEV, "access", "release", "--all", "--reason", "pairing over")
    assert re.fullmatch(rf"grant {mine} hr_prod.title: released \S+ by dev: pairing over\n", out), out
    assert [line.split()[0] for line in ok(monkeypatch, capsys, DEV, "access").splitlines()] == [
        "hr_prod.employee", "hr_prod.salary"]
    assert ok(monkeypatch, capsys, DEV, "access", "release", "--all").startswith("nothing to give back")


def test_direct_grants_obey_the_environment_maximum_unless_glass_is_broken(
        workflow: Workflow, monkeypatch, capsys) -> None:
    grant = ("grant", "add", "--user", "dev", "--grant", "hr_prod.salary")
    code, out, err = cli(monkeypatch, capsys, ADMIN, *grant, "--for", "30h", "--reason", "INC-9")
    assert code == 1 and "at most 8h in prod for SELECT (its approval policy); for an emergency, --break-glass" in err
    code, out, err = cli(monkeypatch, capsys, ADMIN, "grant", "add", "--user", "dev", "--grant", "hr_test.salary",
                         "--for", "30h")
    assert code == 1 and "at most 1d in test" in err
    code, out, err = cli(monkeypatch, capsys, ADMIN, *grant, "--for", "10h", "--break-glass")
    assert code == 1 and "--break-glass needs --reason: at least 3 characters" in err
    assert workflow.store.grants() == []
    out = ok(monkeypatch, capsys, ADMIN, *grant, "--for", "10h", "--break-glass", "--reason", "INC-9 outage")
    assert "(break glass)" in out
    (stored,) = workflow.store.grants()
    assert stored.break_glass and stored.expires_at - stored.created_at == timedelta(hours=10)
    (event,) = workflow.of_type("grant.break_glass")
    assert (event["actor"], event["subject"], event["environment"], event["max_duration_s"], event["duration_s"],
            event["reason"]) == ("ada", "user:dev", "prod", 8 * 3600, 10 * 3600, "INC-9 outage")
    assert [(kind, body["grant_ids"]) for kind, body in workflow.notes] == [("grant.break_glass", [stored.id])]
    # Within the maximum: no glass to break.
    assert ok(monkeypatch, capsys, ADMIN, "grant", "add", "--user", "dev2", "--grant", "hr_prod.salary",
              "--for", "8h").startswith("granted ")
    assert len(workflow.of_type("grant.break_glass")) == 1


def test_grant_list_shows_the_policy_files_grants_with_their_source(workflow: Workflow, monkeypatch, capsys) -> None:
    rows = ok(monkeypatch, capsys, ADMIN, "grant", "list", "--all").splitlines()
    assert [row.split()[:3] for row in rows] == [["policy", "user:dev", "hr_prod.employee"],
                                                 ["policy", "user:ada", "*.*"]]
    assert all("until no expiry  policy file " in row and row.endswith("base.yaml") for row in rows)
    approved(monkeypatch, capsys, "--for", "1h")
    mine = ok(monkeypatch, capsys, DEV, "grant", "list").splitlines()
    assert [row.split()[2] for row in mine] == ["hr_prod.employee", "hr_prod.salary"]
    assert mine[1].endswith(f"request {workflow.store.requests()[0].id}")


# -- requests are checked --------------------------------------------------------------------------------


def test_asking_again_is_answered_with_the_pending_request(workflow: Workflow, monkeypatch, capsys) -> None:
    first = ask(monkeypatch, capsys, "--for", "1h")
    out = ok(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary", "--for", "2h",
             "--reason", "INC-1 again")
    assert out.startswith(f"request {first}: pending (SELECT on hr_prod.{{salary}} for 1h): you asked for this "
                          "already at ")
    assert f"cancel it first: jitproxy request cancel {first}" in out
    assert [r.id for r in workflow.store.requests()] == [first]
    assert len(workflow.of_type("request.created")) == 1


def test_access_already_held_is_answered_with_what_holds_it(workflow: Workflow, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "employee",
                         "--for", "1h", "--reason", "INC-5 check")
    assert code == 1
    assert "refused (409): you already hold SELECT on hr_prod.{employee}: hr_prod.employee SELECT until no expiry " \
           "(policy file " in err
    request_id = approved(monkeypatch, capsys, "--for", "2h")
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                         "--for", "1h", "--reason", "INC-5 again")
    assert code == 1 and f"(request {request_id})" in err
    # Longer than what is held: a new request (to extend it) is fine.
    assert ask(monkeypatch, capsys, "--for", "3h") != request_id
    assert len(workflow.store.requests()) == 2


def test_every_table_is_shown_as_written(workflow: Workflow, monkeypatch, capsys) -> None:
    out = ok(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "*", "--for", "1h",
             "--reason", "INC-6 audit")
    assert "SELECT on hr_prod.* for 1h" in out and "{*}" not in out
    listed = ok(monkeypatch, capsys, DEV, "request", "list")
    assert " hr_prod.* SELECT for 1h " in listed and "{" not in listed


def test_approvers_are_told_how_far_a_multi_approver_request_has_got(workflow: Workflow, monkeypatch,
                                                                    capsys) -> None:
    """Plan.progress, the line Slack shows, in the CLI (approve, show, list) and the API's view."""
    request_id = json.loads(ok(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                               "--privilege", "UPDATE", "--for", "1h", "--reason", "INC-9 fix a salary", "--json"))["id"]
    assert shown(monkeypatch, capsys, request_id)["progress"] == "0 of 2 approvals, needs one from group:dba"
    out = ok(monkeypatch, capsys, OWNER, "request", "approve", request_id)
    assert out.strip() == f"request {request_id}: pending (1 of 2 approvals, needs one from group:dba)"
    first = ok(monkeypatch, capsys, OWNER, "request", "show", request_id).splitlines()[0]
    assert "UPDATE for 1h (1 of 2 approvals, needs one from group:dba)  — INC-9" in first
    listed = ok(monkeypatch, capsys, ADMIN, "request", "list", "--status", "pending")
    assert f"{request_id}  pending" in listed and "(1 of 2 approvals, needs one from group:dba)" in listed
    assert shown(monkeypatch, capsys, request_id)["progress"] == "1 of 2 approvals, needs one from group:dba"
    out = ok(monkeypatch, capsys, ADMIN, "request", "approve", request_id)
    assert out.strip() == f"request {request_id}: approved"
    assert shown(monkeypatch, capsys, request_id)["progress"] is None


@pytest.mark.parametrize(("reason", "message"), [
    ("ab", "the reason 'ab' is too short: at least 3 characters"),
    ("   ", "a reason is required: at least 3 characters"),
])
def test_the_reason_rule_is_stated(workflow: Workflow, monkeypatch, capsys, reason: str, message: str) -> None:
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "create", "--db", "hr_prod", "--table", "salary",
                         "--for", "1h", "--reason", reason)
    assert code == 1 and message in err


# -- the CLI pasted as printed ---------------------------------------------------------------------------


def test_version_and_whoami(workflow: Workflow, monkeypatch, capsys) -> None:
    code, out, _ = cli(monkeypatch, capsys, DEV, "--version")
    assert code == 0 and re.fullmatch(r"jitproxy \d+\.\d+\.\d+\S*\n", out), out
    me = ok(monkeypatch, capsys, ADMIN, "whoami").splitlines()
    assert me[0] == f"ada (groups: dba; admin: yes) at {workflow.api.url}"
    rest = me[1:]
    if rest and rest[0].startswith("token until 20"):  # the token's end, when it has one
        rest = rest[1:]
    assert rest[0] == "access:" and any("*.*" in line and "policies/" in line for line in rest[1:]), me
    dev = ok(monkeypatch, capsys, "dev", "whoami")
    assert dev.startswith("dev (groups: none; admin: no)") and "\naccess:\n  hr_prod.employee" in dev, dev


def test_a_closed_pipe_ends_the_command_quietly(workflow: Workflow, monkeypatch, capsys) -> None:
    """`jitproxy request list --json | head -1`: the reader goes away before the CLI writes."""
    ask(monkeypatch, capsys, "--for", "1h")
    read, write = os.pipe()
    env = {**os.environ, "JITPROXY_TOKEN": DEV, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "proxy.cli", "request", "list", "--json"], stdout=write,
                             stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(write)
    os.close(read)  # like head -1 having read its line and left
    _, err = child.communicate(timeout=60)
    assert child.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_an_untrusted_certificate_names_the_ca_option(workflow: Workflow, monkeypatch, capsys) -> None:
    monkeypatch.delenv("JITPROXY_CA")
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "list")
    assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err
    assert "give the CA bundle that signed it with --ca FILE or JITPROXY_CA=FILE" in err
    code, out, err = cli(monkeypatch, capsys, DEV, "request", "list", "--ca", "/nonexistent/ca.pem")
    assert code == 1 and "cannot read the CA bundle /nonexistent/ca.pem (--ca / JITPROXY_CA)" in err


def test_the_openapi_ui_is_at_docs(workflow: Workflow, tls_files: TlsFiles) -> None:
    with httpx.Client(base_url=workflow.api.url, verify=ssl.create_default_context(cafile=str(tls_files.ca_cert))) as c:
        page = c.get("/docs")
        spec = c.get("/openapi.json").json()
    assert page.status_code == 200 and "swagger-ui" in page.text and "/openapi.json" in page.text
    assert {"/v1/requests/{request_id}/release", "/v1/grants/{grant_id}/release", "/v1/whoami"} <= set(spec["paths"])


# -- commands that paste: one command's id for the next ----------------------------------------------


def test_quiet_prints_the_request_id_alone_for_the_next_command(workflow: Workflow, monkeypatch, capsys) -> None:
    """REQ=$(jitproxy request create ... --quiet): what the demo and the README paste."""
    argv = ("request", "create", "--db", "hr_prod", "--table", "salary", "--for", "1h", "--reason", "INC-1 payroll")
    out = ok(monkeypatch, capsys, DEV, *argv, "--quiet")
    assert re.fullmatch(r"r-[0-9a-f]+\n", out), out
    assert shown(monkeypatch, capsys, out.strip())["status"] == "pending"
    assert ok(monkeypatch, capsys, DEV, *argv, "-q") == out  # asked again: the same request


def test_grant_revoke_takes_a_request_id_and_says_how_the_grant_ended(workflow: Workflow, monkeypatch,
                                                                       capsys) -> None:
    request_id = approved(monkeypatch, capsys, "--for", "1h")
    (grant_id,) = shown(monkeypatch, capsys, request_id)["grant_ids"]
    out = ok(monkeypatch, capsys, ADMIN, "grant", "revoke", request_id, "--reason", "INC-1 closed")
    assert out.startswith(f"revoked {grant_id}"), out
    assert re.search(r"hr_prod\.salary +SELECT +revoked \S+ by ada: INC-1 closed", out), out
    assert " until " not in out  # not the end it no longer has
    r = shown(monkeypatch, capsys, request_id)
    assert (r["status"], r["status_by"], r["status_reason"]) == ("revoked", "ada", "INC-1 closed")
    code, out, err = cli(monkeypatch, capsys, ADMIN, "grant", "revoke", request_id)
    assert code == 1 and f"request {request_id} is revoked: no grant of it is in effect, nothing to revoke" in err
    request_id = approved(monkeypatch, capsys, "--for", "1h")
    code, out, err = cli(monkeypatch, capsys, DEV, "grant", "revoke", request_id)  # an admin's command
    assert code == 1 and "refused (403)" in err and "jitproxy access release" in err
    assert shown(monkeypatch, capsys, request_id)["status"] == "approved"
