"""Approval policies, pure: which rules apply, who counts, what satisfies them, how far a request
has got, where `*` may be asked for."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from proxy.authz.model import Principal, Privilege
from proxy.authz.policy import PolicyError
from proxy.store.base import Approval
from proxy.workflow.approvals import ApprovalPolicies, NoApprovalPolicy, rules_from_document

AT = datetime(2026, 11, 21, tzinfo=timezone.utc)
DOC = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvals": 1,
         "approvers": ["group:project-owner", "group:dba"], "max_duration": "8h"},
        {"environment": "prod", "privileges": ["INSERT", "UPDATE", "DELETE"], "approvals": 2,
         "approvers": ["group:project-owner", "group:dba"], "require": ["group:dba"], "max_duration": "2h"},
        {"environment": "test", "privileges": "ALL", "auto_approve": True, "max_duration": "1d"},
    ],
}
S, U = Privilege.SELECT, Privilege.UPDATE


def _policies() -> ApprovalPolicies:
    return ApprovalPolicies(tuple(rules_from_document(DOC, "a.yaml")))


def _ok(who: str, *groups: str) -> Approval:
    return Approval(who, groups, "approve", "", AT)


def test_prod_select_needs_one_owner_and_never_the_requester():
    plan = _policies().plan("prod", [S])
    assert plan.environment == "prod" and not plan.auto_approve and plan.max_duration == timedelta(hours=8)
    assert not plan.satisfied([_ok("dev", "project-owner")], requester="dev")  # self-approval
    assert not plan.satisfied([_ok("eve", "developers")], requester="dev")  # not an approver
    assert plan.satisfied([_ok("olga", "project-owner")], requester="dev")
    assert plan.may_decide(Principal("olga", ("project-owner",)))
    assert not plan.may_decide(Principal("eve", ("developers",)))


def test_prod_writes_need_two_people_one_of_them_a_dba_and_the_shortest_duration():
    plan = _policies().plan("prod", [S, U])
    assert len(plan.rules) == 2 and plan.max_duration == timedelta(hours=2)
    owners = [_ok("olga", "project-owner"), _ok("otto", "project-owner")]
    assert not plan.satisfied(owners, "dev")  # two people, no dba
    assert not plan.satisfied([_ok("dana", "dba")], "dev")  # a dba alone is one approval
    assert not plan.satisfied([_ok("dana", "dba"), _ok("dana", "dba")], "dev")  # one person twice
    assert plan.satisfied([_ok("olga", "project-owner"), _ok("dana", "dba")], "dev")


def test_test_environment_auto_approves_and_no_environment_has_no_policy():
    assert _policies().plan("test", [U]).auto_approve
    with pytest.raises(NoApprovalPolicy, match="billing on hr-prod is in no environment, so no approval policy"):
        _policies().plan(None, [S], "billing on hr-prod")  # undeclared: never taken for some environment


def test_an_environments_map_in_a_policy_file_says_where_it_belongs_now():
    with pytest.raises(PolicyError, match="environment is set in the config now.*upstream.environments"):
        rules_from_document({"environments": {"hr_prod": "prod"}, **DOC}, "a.yaml")


def test_every_table_may_be_asked_for_only_outside_prod_unless_the_policy_says():
    assert not _policies().plan("prod", [S]).wildcard_tables
    assert _policies().plan("test", [S]).wildcard_tables
    opened = [{**DOC["approval_policies"][0], "wildcard_tables": True}]
    assert ApprovalPolicies(tuple(rules_from_document({"approval_policies": opened}, "a.yaml"))).plan(
        "prod", [S]).wildcard_tables
    # a request under two rules needs both to allow it
    assert not _policies().plan("prod", [S, U]).wildcard_tables


def test_progress_counts_distinct_approvers_and_names_the_required_group():
    plan = _policies().plan("prod", [U])
    assert plan.progress([], "dev") == "0 of 2 approvals, needs one from group:dba"
    assert plan.progress([_ok("olga", "project-owner")], "dev") == "1 of 2 approvals, needs one from group:dba"
    assert plan.progress([_ok("olga", "project-owner")] * 2, "dev") == "1 of 2 approvals, needs one from group:dba"
    assert plan.progress([_ok("dana", "dba")], "dev") == "1 of 2 approvals"
    assert plan.progress([_ok("dev", "dba")], "dev") == "0 of 2 approvals, needs one from group:dba"  # self
    assert plan.progress([Approval("eve", ("project-owner",), "deny", "", AT)], "dev").startswith("0 of 2")
    assert _policies().plan("test", [U]).progress([], "dev") == ""  # nobody is waited for


def test_progress_of_a_request_under_two_rules_names_each():
    plan = _policies().plan("prod", [S, U])
    assert plan.progress([_ok("olga", "project-owner")], "dev") == (
        "SELECT: 1 of 1 approval; DELETE,INSERT,UPDATE: 1 of 2 approvals, needs one from group:dba")


def test_a_privilege_no_policy_covers_cannot_be_requested():
    with pytest.raises(NoApprovalPolicy, match="DROP"):
        _policies().plan("prod", [S, Privilege.DROP])
    with pytest.raises(NoApprovalPolicy):
        ApprovalPolicies(()).plan("prod", [S])


@pytest.mark.parametrize(("entry", "message"), [
    ({"environment": "Prod", "approvers": ["group:x"]}, "lower-case"),
    ({"environment": "prod"}, "approvers are needed"),
    ({"environment": "prod", "approvers": ["x"]}, "user:NAME"),
    ({"environment": "prod", "approvers": ["group:x"], "approvals": 0}, "positive"),
    ({"environment": "prod", "approvers": ["group:x"], "max_duration": "forever"}, "max_duration"),
    ({"environment": "prod", "approvers": ["group:x"], "who": 1}, "keys"),
])
def test_bad_policies_are_refused_at_load(entry, message):
    with pytest.raises(PolicyError, match=message):
        rules_from_document({"approval_policies": [entry]}, "a.yaml")
