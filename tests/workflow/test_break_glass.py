"""Break glass for on-call people: the `break_glass: true` entries of the approval policies
(parsed strictly, like the approval rules), and the workflow on a real SQLite store: a request
granted at once, every refusal it can give, and the review after the fact (approve keeps it,
deny revokes it; never one's own)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from jitproxy_demo.inprocess import MutableClock
from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.model import Principal, Privilege
from proxy.authz.policy import PolicyError, load_policy_dir
from proxy.store import open_store
from proxy.store.base import RequestStatus, StoreError
from proxy.workflow.approvals import (
    ApprovalPolicies,
    NoBreakGlass,
    break_glass_from_document,
    check_break_glass,
    load_approval_policies,
    rules_from_document,
)
from proxy.workflow.service import AccessService, Forbidden, Invalid, StateConflict
from tests.helpers import HR_ENVIRONMENTS, environments

S, I, U, D = Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE, Privilege.DELETE
DOC: dict[str, Any] = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvers": ["group:owner"], "max_duration": "8h"},
        {"environment": "prod", "privileges": ["INSERT", "UPDATE", "DELETE"], "approvals": 2,
         "approvers": ["group:owner", "group:dba"], "require": ["group:dba"], "max_duration": "2h"},
        {"environment": "test", "privileges": "ALL", "auto_approve": True, "max_duration": "1d"},
        {"environment": "prod", "break_glass": True, "who": ["group:oncall"],
         "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"], "max_duration": "2h", "reviewers": ["group:sre-lead"]},
        {"environment": "prod", "break_glass": True, "who": ["user:pat"], "max_duration": "30m"},  # SELECT; approvers
    ],
}
ONCALL, PAT = Principal("carl", ("oncall",)), Principal("pat")
LEAD, OWNER, DEV, ADMIN = Principal("lena", ("sre-lead",)), Principal("olga", ("owner",)), Principal("dev"), \
    Principal("ada", ("dba",))


def _policies(doc: dict[str, Any] = DOC) -> ApprovalPolicies:
    return ApprovalPolicies(tuple(rules_from_document(doc, "a.yaml")), break_glass=tuple(
        break_glass_from_document(doc, "a.yaml")))


# -- the policy entries -----------------------------------------------------------------------------


def test_break_glass_entries_are_no_approval_rules_and_take_their_defaults() -> None:
    policies = _policies()
    assert [r.environment for r in policies.rules] == ["prod", "prod", "test"]  # the entries are not rules
    oncall, pat = policies.break_glass
    assert (oncall.who, oncall.privileges, oncall.max_duration, oncall.reviewers) == (
        frozenset({"group:oncall"}), frozenset({S, I, U, D}), timedelta(hours=2), frozenset({"group:sre-lead"}))
    assert (pat.privileges, pat.reviewers, pat.wildcard_tables) == (frozenset({S}), frozenset(), False)
    assert oncall.describe() == "break glass in prod for group:oncall: DELETE,INSERT,SELECT,UPDATE up to 2h"
    # A plain request never meets them: prod SELECT still needs an owner.
    assert not policies.plan("prod", [S]).auto_approve


def test_who_may_break_glass_for_what() -> None:
    policies = _policies()
    assert policies.break_glass_rule("prod", ONCALL, [S, U]).max_duration == timedelta(hours=2)
    assert policies.break_glass_rule("prod", PAT, [S]).max_duration == timedelta(minutes=30)
    # In both entries: the one allowing the longest.
    both = Principal("pat", ("oncall",))
    assert policies.break_glass_rule("prod", both, [S]).max_duration == timedelta(hours=2)
    with pytest.raises(NoBreakGlass, match="dev is not on call for prod: break glass there is for group:oncall, "
                                           "user:pat; ask for access without --break-glass"):
        policies.break_glass_rule("prod", DEV, [S])
    with pytest.raises(NoBreakGlass, match="break glass in prod covers SELECT for pat, not UPDATE"):
        policies.break_glass_rule("prod", PAT, [S, U])
    with pytest.raises(NoBreakGlass, match="nobody can break glass in test"):
        policies.break_glass_rule("test", ONCALL, [S])
    with pytest.raises(NoBreakGlass, match="billing is in no environment"):
        policies.break_glass_rule(None, ONCALL, [S], "billing")


def test_reviewers_are_named_or_else_the_environments_approvers() -> None:
    policies = _policies()
    assert policies.reviewers("prod", [S]) == {"group:sre-lead", "group:owner"}  # both entries cover SELECT
    assert policies.reviewers("prod", [S, U]) == {"group:sre-lead"}
    assert policies.default_reviewers("prod", [U]) == {"group:owner", "group:dba"}
    assert policies.reviewers("test", [S]) == frozenset()


@pytest.mark.parametrize(("entry", "message"), [
    ({"who": ["group:oncall"]}, "max_duration is required for break glass"),
    ({"max_duration": "2h"}, "who is required"),
    ({"who": [], "max_duration": "2h"}, "who is required"),
    ({"who": ["oncall"], "max_duration": "2h"}, "who must be a list of user:NAME / group:NAME"),
    ({"who": ["group:oncall"], "max_duration": "2h", "reviewers": "group:dba"}, "reviewers must be a list"),
    ({"who": ["group:oncall"], "max_duration": "ever"}, "max_duration: 'ever' is not a duration"),
    ({"who": ["group:oncall"], "max_duration": 0}, "max_duration must be positive"),
    ({"who": ["group:oncall"], "max_duration": "2h", "privileges": ["GRANT"]}, "unknown privilege"),
    ({"who": ["group:oncall"], "max_duration": "2h", "privileges": []}, "privileges must be a non-empty list"),
    ({"who": ["group:oncall"], "max_duration": "2h", "approvers": ["group:dba"]},
     r"a break_glass entry has the keys .* \(unknown: \['approvers'\]\)"),
    ({"who": ["group:oncall"], "max_duration": "2h", "break_glass": False}, "break_glass must be true"),
    ({"who": ["group:oncall"], "max_duration": "2h", "break_glass": "yes"}, "break_glass must be true"),
    ({"who": ["group:oncall"], "max_duration": "2h", "environment": "Prod"}, "environment must be a lower-case"),
    ({"who": ["group:oncall"], "max_duration": "2h", "wildcard_tables": "no"}, "wildcard_tables must be true"),
])
def test_bad_break_glass_entries_are_refused_at_load_with_where(entry: dict[str, Any], message: str) -> None:
    doc = {"approval_policies": [{"environment": "prod", "break_glass": True, **entry}]}
    with pytest.raises(PolicyError, match=message) as e:
        rules_from_document(doc, "a.yaml")  # the file fails as a whole
    assert str(e.value).startswith("a.yaml: approval_policies[0]: ")
    with pytest.raises(PolicyError, match=message):
        break_glass_from_document(doc, "a.yaml")


def test_an_entry_nobody_could_review_is_refused(tmp_path: Path) -> None:
    doc = {"approval_policies": [{"environment": "staging", "break_glass": True, "who": ["group:oncall"],
                                  "max_duration": "1h"}]}
    with pytest.raises(PolicyError, match="names no reviewers and no approval policy of staging names approvers"):
        check_break_glass(_policies(doc))
    (tmp_path / "p.yaml").write_text("approval_policies:\n  - {environment: staging, break_glass: true, "
                                     "who: [group:oncall], max_duration: 1h}\n")
    with pytest.raises(PolicyError, match="p.yaml: the break_glass entry for staging names no reviewers"):
        load_approval_policies([tmp_path])


def test_a_policy_file_with_break_glass_loads_for_grants_and_approvals(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("""
grants:
  - {subject: group:oncall, grant: hr_prod.employee, privileges: [SELECT]}
approval_policies:
  - {environment: prod, privileges: [SELECT], approvers: [group:owner], max_duration: 8h}
  - environment: prod
    break_glass: true
    who: [group:oncall]
    max_duration: 2h
""")
    assert len(load_policy_dir(tmp_path).grants) == 1  # the grants' loader reads the same file
    loaded = load_approval_policies([tmp_path])
    assert len(loaded.rules) == 1 and loaded.break_glass[0].source == str(tmp_path / "p.yaml")
    assert loaded.reviewers("prod", [S]) == {"group:owner"}


# -- the workflow ------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def notes() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def service(tmp_path: Path, clock: MutableClock, sink: MemorySink, notes: list) -> AccessService:
    policies = _policies()
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    return AccessService(store, lambda: policies, AuditEmitter([sink], instance="test"), clock,
                         admin_groups=frozenset({"dba"}), notify=lambda event, body: notes.append((event, body)),
                         environments=environments(HR_ENVIRONMENTS))


def _break_glass(service: AccessService, who: Principal = ONCALL, privileges: tuple[str, ...] = ("SELECT", "UPDATE"),
                 duration: timedelta = timedelta(hours=1), reason: str = "INC-123 payroll down", db: str = "hr_prod",
                 tables: tuple[str, ...] = ("salary",)):
    return service.submit_request(who, db, list(tables), list(privileges), reason, duration=duration,
                                  break_glass=True)


def _types(sink: MemorySink) -> list[str]:
    return [e["type"] for e in sink.events]


def test_an_on_call_persons_request_is_granted_at_once_audited_and_notified(service, sink, notes, clock) -> None:
    request, created = _break_glass(service)
    assert created and request.break_glass and request.status is RequestStatus.APPROVED
    assert request.access_until == request.created_at + timedelta(hours=1)
    grants = service.store.grants(ids=request.grant_ids)
    assert [(g.subject, g.db, g.table, g.privileges, g.break_glass, g.created_by) for g in grants] == [
        ("user:carl", "hr_prod", "salary", ("SELECT", "UPDATE"), True, "carl")]
    view = service.view(request)
    assert (view["status"], view["break_glass"], view["review"], view["reviewers"]) == (
        "approved", True, "pending", ["group:sre-lead"])
    assert view["approvals"][0]["approver"] == "jitproxy" and "at once: break glass in prod" in view["approvals"][0]["comment"]
    assert _types(sink) == ["request.break_glass"]  # one loud event, no request.created / approved
    (event,) = sink.events
    assert (event["actor"], event["requester"], event["environment"], event["break_glass"], event["review"],
            event["max_duration_s"], event["reason"]) == ("carl", "carl", "prod", True, "pending", 7200,
                                                          "INC-123 payroll down")
    assert event["policy"] == "break glass in prod for group:oncall: DELETE,INSERT,SELECT,UPDATE up to 2h"
    ((kind, note),) = notes
    assert kind == "request.break_glass" and note["actor"] == "carl"
    assert note["review_command"] == f"jitproxy request approve {request.id}"
    assert note["revoke_command"] == f"jitproxy request deny {request.id} --comment '...'"
    assert "approve_command" not in note
    # The grants are in effect, marked, wherever grants are shown.
    (row,) = [r for r in service.grant_rows(ONCALL) if r["request_id"] == request.id]
    assert row["source"] == f"request {request.id} (break glass)" and row["break_glass"]


def test_until_is_an_exact_end_within_the_maximum(service, clock) -> None:
    end = clock() + timedelta(minutes=90)
    request, _ = service.submit_request(ONCALL, "hr_prod", ["salary"], ["SELECT"], "INC-124", until=end,
                                        break_glass=True)
    assert request.ends_at == end and request.access_until == end


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda s: _break_glass(s, who=DEV), Forbidden, "dev is not on call for prod: break glass there is for "
                                                     "group:oncall, user:pat"),
    (lambda s: _break_glass(s, who=PAT), Forbidden, "break glass in prod covers SELECT for pat, not UPDATE"),
    (lambda s: _break_glass(s, privileges=("DROP",)), Forbidden, "covers DELETE, INSERT, SELECT, UPDATE for carl, "
                                                                  "not DROP"),
    (lambda s: _break_glass(s, duration=timedelta(hours=3)), Invalid, "break glass in prod lasts at most 2h for "
                                                                      "SELECT, UPDATE; ask for less"),
    (lambda s: _break_glass(s, who=PAT, privileges=("SELECT",), duration=timedelta(minutes=31)), Invalid,
     "at most 30m"),
    (lambda s: _break_glass(s, reason=""), Invalid, "--break-glass needs --reason: at least 3 characters"),
    (lambda s: _break_glass(s, reason="ab"), Invalid, "the reason 'ab' is too short: at least 3 characters"),
    (lambda s: _break_glass(s, db="hr_test"), Forbidden, "nobody can break glass in test"),
    (lambda s: _break_glass(s, tables=("*",)), Forbidden, r"every table of hr_prod \(--table '\*'\) cannot be asked "
                                                          "for by breaking glass in prod"),
])
def test_refusals_say_why(service, sink, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(service)
    assert service.store.requests() == [] and sink.events == []


def test_access_already_held_is_refused_with_what_holds_it(service) -> None:
    _break_glass(service)
    with pytest.raises(StateConflict, match="you already hold SELECT on hr_prod.{salary}"):
        _break_glass(service, privileges=("SELECT",), duration=timedelta(minutes=30))


def test_a_reviewer_approves_it_afterwards_and_it_stays(service, sink, notes) -> None:
    request, _ = _break_glass(service)
    with pytest.raises(Forbidden, match="nobody reviews their own break-glass request"):
        service.approve(Principal("carl", ("oncall", "sre-lead")), request.id)  # not even as a reviewer
    with pytest.raises(Forbidden, match=r"you are not a reviewer of break glass in prod \(reviewers: "
                                        r"group:sre-lead; and admins\)"):
        service.approve(OWNER, request.id)
    reviewed = service.approve(LEAD, request.id, "INC-123 confirmed")
    view = service.view(reviewed)
    assert (reviewed.status, view["status"], view["review"]) == (RequestStatus.APPROVED, "approved", "approved by lena")
    assert all(g.active(service.clock()) for g in service.store.grants(ids=reviewed.grant_ids))
    assert _types(sink) == ["request.break_glass", "request.reviewed"]
    event = sink.events[-1]
    assert (event["actor"], event["review"], event["revokes"], event["status"]) == (
        "lena", "approved by lena", [], "approved")
    assert notes[-1][0] == "request.reviewed" and "review_command" not in notes[-1][1]
    for who in (LEAD, ADMIN):
        with pytest.raises(StateConflict, match=f"request {request.id} is already reviewed: approved by lena"):
            service.deny(who, request.id)


def test_a_deny_in_review_revokes_at_once(service, sink) -> None:
    request, _ = _break_glass(service)
    reviewed = service.deny(ADMIN, request.id, "no incident open")  # an admin reviews too
    view = service.view(reviewed)
    assert (view["status"], view["status_by"], view["status_reason"], view["review"]) == (
        "revoked", "ada", "break glass denied in review: no incident open", "denied by ada")
    assert not any(g.active(service.clock()) for g in service.store.grants(ids=request.grant_ids))
    assert _types(sink) == ["request.break_glass", "request.reviewed", "grant.revoked", "request.revoked"]
    assert sink.events[1]["revokes"] == list(request.grant_ids)
    with pytest.raises(StateConflict, match="already reviewed: denied by ada"):
        service.deny(LEAD, request.id)


def test_a_review_comes_after_the_fact_also_once_the_access_ended(service, clock) -> None:
    request, _ = _break_glass(service)
    clock.advance(timedelta(hours=2))
    assert service.view(request)["status"] == "expired"
    reviewed = service.deny(LEAD, request.id, "should have asked")
    assert service.view(reviewed)["review"] == "denied by lena"
    assert service.view(reviewed)["status"] == "expired"  # nothing left to revoke


def test_a_deny_whose_revocation_failed_finishes_when_given_again(service, monkeypatch) -> None:
    request, _ = _break_glass(service, tables=("salary", "employee"))

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("down")

    with monkeypatch.context() as patch:
        patch.setattr(service.store, "revoke_grant", down)
        with pytest.raises(StoreError):
            service.deny(LEAD, request.id, "no")
    assert service.view(service.store.get_request(request.id))["review"] == "denied by lena"
    assert all(g.active(service.clock()) for g in service.store.grants(ids=request.grant_ids))
    done = service.deny(LEAD, request.id, "no")
    assert service.view(done)["status"] == "revoked"
    assert [a.approver for a in done.approvals] == ["jitproxy", "lena"]  # one review, not two
    with pytest.raises(StateConflict, match="already reviewed"):
        service.approve(LEAD, request.id)


def test_reviewers_see_break_glass_requests_others_do_not(service) -> None:
    request, _ = _break_glass(service)
    assert [v["id"] for v in service.list_requests(LEAD)] == [request.id]
    assert service.get_request(LEAD, request.id).id == request.id
    assert service.list_requests(OWNER) == []  # an approver of prod, not a reviewer of this one
    mine = service.list_requests(ONCALL, mine=True)
    assert [(v["break_glass"], v["review"]) for v in mine] == [(True, "pending")]


def test_a_plain_request_has_no_review_and_the_requester_can_release_break_glass(service) -> None:
    plain = service.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-1", duration=timedelta(hours=1))
    view = service.view(plain)
    assert (view["break_glass"], view["review"], view["reviewers"]) == (False, None, None)
    request, _ = _break_glass(service)
    released = service.release_request(ONCALL, request.id, "fixed")
    assert service.view(released)["status"] == "released"
    assert service.view(service.approve(LEAD, request.id))["review"] == "approved by lena"


def test_the_commented_example_in_policies_example_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "policies" / "example.yaml").read_text()
    lines = text.splitlines()
    start = lines.index("# approval_policies:")
    block = [line[2:] for line in lines[start:] if line.startswith("# ")]
    doc = yaml.safe_load("\n".join(block))
    policies = _policies(doc)
    check_break_glass(policies)
    (rule,) = policies.break_glass
    assert (rule.who, rule.max_duration, rule.reviewers) == (frozenset({"group:oncall"}), timedelta(hours=2),
                                                            frozenset({"group:dba"}))
    assert policies.break_glass_rule("prod", ONCALL, [S, D]) == rule


def test_break_glass_access_is_not_extended_so_a_deny_in_review_takes_all_of_it(service) -> None:
    request, _ = _break_glass(service)
    (grant_id,) = request.grant_ids
    with pytest.raises(StateConflict, match=f"grant {grant_id} is of break-glass request {request.id}: it is not "
                                            "extended"):
        service.extend_grant(ADMIN, grant_id, "INC-123 still on", duration=timedelta(hours=2))


def test_the_events_match_the_audit_schema(service, sink) -> None:
    import json

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "audit-event.schema.json").read_text())
    kept, _ = _break_glass(service)
    denied, _ = _break_glass(service, who=PAT, privileges=("SELECT",), duration=timedelta(minutes=20),
                             tables=("employee",))
    service.approve(LEAD, kept.id)
    service.deny(OWNER, denied.id, "no")  # pat's entry names no reviewers: prod's approvers review it
    service.audit.close()
    assert {"request.break_glass", "request.reviewed", "grant.revoked", "request.revoked"} <= set(_types(sink))
    for event in sink.events:
        jsonschema.validate(event, schema)
    assert [e["code"] for e in sink.events if e["type"].startswith("request.b")] == ["JP3008", "JP3008"]
