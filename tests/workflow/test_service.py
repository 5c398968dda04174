"""The workflow service on a real SQLite store: every refusal it can give, the expiry sweep, and
the fail-closed poller (store grants stop counting when the store stays unreachable)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from jitproxy_demo.inprocess import MutableClock
from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.decide import GrantSet
from proxy.authz.model import Principal
from proxy.store import open_store
from proxy.store.base import RequestStatus, StoreError
from proxy.workflow.approvals import ApprovalPolicies, rules_from_document
from proxy.workflow.grants import EffectiveGrants
from proxy.workflow.runtime import Poller
from proxy.workflow.service import AccessService, Forbidden, Invalid, Missing, StateConflict
from tests.helpers import HR_ENVIRONMENTS, environments

DOC = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvers": ["group:owner"], "max_duration": "8h"},
        {"environment": "test", "privileges": ["SELECT"], "auto_approve": True, "max_duration": "1d"},
    ],
}
DEV, OWNER, OTHER, ADMIN = Principal("dev"), Principal("olga", ("owner",)), Principal("eve"), Principal("ada", ("dba",))


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def service(tmp_path, clock) -> AccessService:
    rules = rules_from_document(DOC, "a.yaml")
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    audit = AuditEmitter([MemorySink()], instance="test")
    return AccessService(store, lambda: ApprovalPolicies(tuple(rules)), audit, clock,
                         admin_groups=frozenset({"dba"}), environments=environments(HR_ENVIRONMENTS))


def _request(service: AccessService, db: str = "hr_prod", **kw):
    args = {"duration": timedelta(hours=1), **kw}
    return service.create_request(DEV, db, ["salary"], ["SELECT"], "INC-1 check", **args)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "", duration=timedelta(hours=1)),
     Invalid, "reason is required"),
    (lambda s: s.create_request(DEV, "hr_prod", [], ["SELECT"], "INC-1", duration=timedelta(hours=1)),
     Invalid, "at least one table"),
    (lambda s: s.create_request(DEV, "hr prod", ["salary"], ["SELECT"], "INC-1", duration=timedelta(hours=1)),
     Invalid, "database name"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["GRANT"], "INC-1", duration=timedelta(hours=1)),
     Invalid, "unknown privilege"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["DELETE"], "INC-1", duration=timedelta(hours=1)),
     Forbidden, "no approval policy"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-1", duration=timedelta(hours=9)),
     Invalid, "at most 8h"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-1"), Invalid, "not both"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-1", until=datetime(2020, 1, 1)),
     Invalid, "time zone"),
    (lambda s: s.create_request(DEV, "hr_prod", ["salary"], ["SELECT"], "INC-1",
                                until=datetime(2020, 1, 1, tzinfo=timezone.utc)), Invalid, "before it starts"),
    (lambda s: s.add_grants(DEV, "user:dev", ["hr_prod.salary"], ["SELECT"], "x", duration=timedelta(hours=1)),
     Forbidden, "admins only"),
    (lambda s: s.add_grants(ADMIN, "dev", ["hr_prod.salary"], ["SELECT"], "x", duration=timedelta(hours=1)),
     Invalid, "user:NAME"),
    (lambda s: s.add_grants(ADMIN, "user:dev", ["*.*"], ["SELECT"], "x", duration=timedelta(hours=1)),
     Invalid, "policy files"),
    (lambda s: s.add_grants(ADMIN, "user:dev", ["salary"], ["SELECT"], "x", duration=timedelta(hours=1)),
     Invalid, "db.table"),
    (lambda s: s.add_grants(ADMIN, "user:dev", ["hr_prod.salary"], ["SELECT"], "x", duration=timedelta(days=8)),
     Invalid, "at most 7d"),
    (lambda s: s.revoke_grant(ADMIN, "g-000000000000"), Missing, "no grant"),
    (lambda s: s.list_grants(DEV, everyone=True), Forbidden, "admins only"),
    (lambda s: s.get_request(DEV, "r-000000000000"), Missing, "no request"),
])
def test_refusals(service, call, error, message):
    with pytest.raises(error, match=message):
        call(service)


def test_decisions_on_a_request_are_refused_to_the_wrong_people_and_in_the_wrong_state(service):
    r = _request(service)
    with pytest.raises(Forbidden, match="their own"):
        service.deny(DEV, r.id)
    with pytest.raises(Forbidden, match="not an approver"):
        service.deny(OTHER, r.id)
    with pytest.raises(Forbidden, match="requester or an admin"):
        service.cancel(OTHER, r.id)
    with pytest.raises(Missing):  # someone unrelated cannot even see it (ids are no oracle)
        service.get_request(OTHER, r.id)
    assert service.deny(OWNER, r.id, "no").status is RequestStatus.DENIED
    with pytest.raises(StateConflict, match="not pending"):
        service.approve(OWNER, r.id)
    with pytest.raises(StateConflict, match="not pending"):
        service.cancel(DEV, r.id)


def test_cancel_then_expiry_sweep_and_auto_approval(service, clock):
    cancelled = _request(service)
    assert service.cancel(DEV, cancelled.id).status is RequestStatus.CANCELLED
    waiting = _request(service)
    assert service.expire_pending() == []
    clock.advance(timedelta(hours=25))
    assert [r.id for r in service.expire_pending()] == [waiting.id]
    assert service.get_request(DEV, waiting.id).status is RequestStatus.EXPIRED
    auto = _request(service, db="hr_test")
    assert auto.status is RequestStatus.APPROVED and len(auto.grant_ids) == 1


def test_revoking_twice_is_a_conflict(service):
    (grant,) = service.add_grants(ADMIN, "user:dev", ["hr_prod.salary"], ["SELECT"], "pairing",
                                  duration=timedelta(hours=1))
    service.revoke_grant(ADMIN, grant.id)
    with pytest.raises(StateConflict, match="already revoked"):
        service.revoke_grant(ADMIN, grant.id)


class _BrokenStore:
    def revision(self) -> int:
        raise StoreError("down")


def test_store_grants_stop_counting_when_the_store_stays_unreachable(service, clock):
    service.add_grants(ADMIN, "user:dev", ["hr_prod.salary"], ["SELECT"], "x", duration=timedelta(hours=1))
    grants = EffectiveGrants(lambda: GrantSet(()), service.store, clock)
    poller = Poller(grants, interval_s=0.5, expire=None, max_staleness_s=30)

    async def run() -> None:
        await poller.poll_once(0.0)
        assert grants().for_principal(DEV, clock())  # the store's grant counts
        grants.store = _BrokenStore()  # type: ignore[assignment]
        await poller.poll_once(10.0)
        assert grants().for_principal(DEV, clock())  # a short outage: kept
        await poller.poll_once(31.0)
        assert grants().for_principal(DEV, clock()) == []  # too long: fail closed

    asyncio.run(run())
