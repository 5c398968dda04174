"""The statuses people are shown (proxy.workflow.status) on a real SQLite store through the
service: how an approved request's access ended, per grant and for the request, and an
auto-approved `--until` request ending exactly then."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jitproxy_demo.inprocess import MutableClock
from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.model import Principal
from proxy.store import open_store
from proxy.workflow.approvals import ApprovalPolicies, rules_from_document
from proxy.workflow.service import AccessService, StateConflict
from tests.helpers import HR_ENVIRONMENTS, environments

DOC = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvers": ["group:owner"], "max_duration": "8h"},
        {"environment": "test", "privileges": ["SELECT"], "auto_approve": True, "max_duration": "1d"},
    ],
}
DEV, OWNER, ADMIN = Principal("dev"), Principal("olga", ("owner",)), Principal("ada", ("dba",))
HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def service(tmp_path, clock):
    rules = rules_from_document(DOC, "a.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield AccessService(store, lambda: ApprovalPolicies(tuple(rules)), AuditEmitter([MemorySink()], instance="test"), clock,
                        admin_groups=frozenset({"dba"}), environments=environments(HR_ENVIRONMENTS))
    store.close()


def _two_tables(service: AccessService):
    r = service.create_request(DEV, "hr_prod", ["salary", "title"], ["SELECT"], "INC-1 check", duration=HOUR)
    return service.approve(OWNER, r.id)


def test_a_request_stays_approved_while_one_of_its_grants_is_in_effect(service, clock) -> None:
    r = _two_tables(service)
    salary, title = r.grant_ids
    service.revoke_grant(ADMIN, salary, "too much")
    view = service.view(r)
    assert view["status"] == "approved"
    assert [(g["grant_id"], g["status"]) for g in view["grants"]] == [(salary, "revoked"), (title, "active")]
    clock.advance(HOUR)
    view = service.view(r)  # the rest ran out: an admin's early end is what the request shows
    assert (view["status"], view["status_by"], view["status_reason"]) == ("revoked", "ada", "too much")
    assert [g["status"] for g in view["grants"]] == ["revoked", "expired"]


def test_a_revocation_outranks_a_release(service) -> None:
    r = _two_tables(service)
    salary, title = r.grant_ids
    service.release_grant(DEV, salary, "done with it")
    assert service.view(r)["status"] == "approved"
    service.revoke_grant(ADMIN, title)
    assert service.view(r)["status"] == "revoked"


def test_releasing_every_grant_releases_the_request(service) -> None:
    r = _two_tables(service)
    for grant_id in r.grant_ids:
        service.release_grant(DEV, grant_id)
    view = service.view(r)
    assert (view["status"], view["status_by"]) == ("released", "dev")
    with pytest.raises(StateConflict, match="already released"):
        service.release_grant(DEV, r.grant_ids[0])


def test_an_auto_approved_until_request_ends_exactly_then(service, clock) -> None:
    end = (clock() + 3 * HOUR).replace(microsecond=0)
    r = service.create_request(DEV, "hr_test", ["salary"], ["SELECT"], "INC-2 fixture", until=end)
    assert r.access_until == end and service.store.get_grant(r.grant_ids[0]).expires_at == end
    clock.advance(3 * HOUR)
    assert service.view(service.store.get_request(r.id))["status"] == "expired"


def test_a_pending_until_request_stops_waiting_at_its_end(service, clock) -> None:
    end = clock() + HOUR
    r = service.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-3 check", until=end)
    assert r.pending_until == end  # not the 24 h every other request may wait
