"""Approval policies, pure: which rules apply, who counts, what satisfies them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from proxy.authz.model import Principal, Privilege
from proxy.authz.policy import PolicyError
from proxy.store.base import Approval
from proxy.workflow.approvals import ApprovalPolicies, NoApprovalPolicy, rules_from_document

AT = datetime(2026, 11, 21, tzinfo=timezone.utc)
DOC = {
    "environments": {"hr_prod": "prod", "hr_test": "test", "*": "prod"},
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
    envs, rules = rules_from_document(DOC, "a.yaml")
    return ApprovalPolicies(envs, tuple(rules))


def _ok(who: str, *groups: str) -> Approval:
    return Approval(who, groups, "approve", "", AT)


def test_prod_select_needs_one_owner_and_never_the_requester():
    plan = _policies().plan("hr_prod", [S])
    assert plan.environment == "prod" and not plan.auto_approve and plan.max_duration == timedelta(hours=8)
    assert not plan.satisfied([_ok("dev", "project-owner")], requester="dev")  # self-approval
    assert not plan.satisfied([_ok("eve", "developers")], requester="dev")  # not an approver
    assert plan.satisfied([_ok("olga", "project-owner")], requester="dev")
    assert plan.may_decide(Principal("olga", ("project-owner",)))
    assert not plan.may_decide(Principal("eve", ("developers",)))


def test_prod_writes_need_two_people_one_of_them_a_dba_and_the_shortest_duration():
    plan = _policies().plan("hr_prod", [S, U])
    assert len(plan.rules) == 2 and plan.max_duration == timedelta(hours=2)
    owners = [_ok("olga", "project-owner"), _ok("otto", "project-owner")]
    assert not plan.satisfied(owners, "dev")  # two people, no dba
    assert not plan.satisfied([_ok("dana", "dba")], "dev")  # a dba alone is one approval
    assert not plan.satisfied([_ok("dana", "dba"), _ok("dana", "dba")], "dev")  # one person twice
    assert plan.satisfied([_ok("olga", "project-owner"), _ok("dana", "dba")], "dev")


def test_test_environment_auto_approves_and_unknown_databases_are_prod():
    assert _policies().plan("hr_test", [U]).auto_approve
    assert _policies().plan("billing", [S]).environment == "prod"


def test_a_privilege_no_policy_covers_cannot_be_requested():
    with pytest.raises(NoApprovalPolicy, match="DROP"):
        _policies().plan("hr_prod", [S, Privilege.DROP])
    with pytest.raises(NoApprovalPolicy):
        ApprovalPolicies({}, ()).plan("hr_prod", [S])


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
