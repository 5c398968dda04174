"""The Store contract (proxy.store.base), run against every backend: each test takes `store`
(or more objects on the same store from `open_stores`) once per backend, on an empty store."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from proxy.store.base import (
    AccessRequest,
    Approval,
    Conflict,
    Decision,
    NewGrant,
    NewRequest,
    NotFound,
    RequestStatus,
    Store,
    StoredGrant,
    StoreError,
)
from proxy.store.migrations import MIGRATIONS
from tests.store.conftest import run_sql, unmigrated_store

NOW = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
GRANT_ID = re.compile(r"g-[0-9a-f]{12}")
REQUEST_ID = re.compile(r"r-[0-9a-f]{12}")
ALL_VERSIONS = [(migration.version,) for migration in MIGRATIONS]


def new_grant(subject: str = "user:alice", *, expires_at: datetime = NOW + HOUR, **changes: Any) -> NewGrant:
    grant = NewGrant(subject, "hr_prod", "employees", ("SELECT",), expires_at, created_by="admin")
    return replace(grant, **changes)


def new_request(requester: str = "alice", **changes: Any) -> NewRequest:
    request = NewRequest(
        requester=requester,
        db="hr_prod",
        tables=("employees", "salaries"),
        privileges=("SELECT", "UPDATE"),
        duration_s=3600,
        reason="incident 42",
        environment="prod",
        pending_until=NOW + 2 * HOUR,
    )
    return replace(request, **changes)


def approval(approver: str = "bob", decision: str = "approve", at: datetime = NOW) -> Approval:
    return Approval(approver, ("group:dba",), decision, f"{decision}d by {approver}", at)


def approve_with_grants(request: AccessRequest, approver: str = "bob", at: datetime = NOW) -> Decision:
    """What the workflow writes when the last approval arrives: one grant per table."""
    grants = tuple(
        NewGrant(f"user:{request.requester}", request.db, table, request.privileges, at + HOUR,
                 approver, request.reason, request.id, instance=request.instance)
        for table in request.tables
    )
    return Decision(approval(approver, at=at), RequestStatus.APPROVED, at + HOUR, grants)


def ids(items: list[StoredGrant] | list[AccessRequest]) -> list[str]:
    return [item.id for item in items]


# -- schema ---------------------------------------------------------------------------------------


def test_migrate_again_is_a_noop(store: Store, store_url: str) -> None:
    grant = store.add_grant(new_grant(), NOW)
    revision = store.revision()
    store.migrate()
    store.migrate()
    assert store.revision() == revision
    assert store.get_grant(grant.id) == grant
    assert run_sql(store_url, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS


def test_concurrent_migrations_of_a_fresh_store_all_succeed(store_url: str) -> None:
    """Replicas starting together on a new store: each opens it and migrates at the same time."""
    start = threading.Barrier(4)

    def open_and_migrate() -> int:
        start.wait()
        store = unmigrated_store(store_url)
        try:
            store.migrate()
            return store.revision()
        finally:
            store.close()

    with ThreadPoolExecutor(start.parties) as pool:
        futures = [pool.submit(open_and_migrate) for _ in range(start.parties)]
    assert [future.result() for future in futures] == [0] * start.parties
    assert run_sql(store_url, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS


def test_a_schema_newer_than_this_code_is_refused(store: Store, store_url: str) -> None:
    run_sql(store_url, "INSERT INTO schema_migrations (version, applied_at) VALUES (99, CURRENT_TIMESTAMP)")
    with pytest.raises(StoreError, match="version 99"):
        store.migrate()


def _v1_store(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store at `url` what jitproxy wrote before schema version 2 (instances)."""
    import proxy.store.migrations as migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:1])
        patch.setattr(migrations, "LATEST_VERSION", 1)
        old = unmigrated_store(url)
        try:
            old.migrate()
        finally:
            old.close()
    assert run_sql(url, "SELECT version FROM schema_migrations") == [(1,)]


def _sql_list(url: str, values: list[str]) -> str:
    """A list literal in the store's dialect (JSON text in SQLite, text[] in PostgreSQL)."""
    if url.startswith("sqlite:///"):
        return "'" + json.dumps(values) + "'"
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]::text[]"


def test_rows_written_before_version_2_apply_to_every_instance(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _v1_store(store_url, monkeypatch)
    at, until = NOW.isoformat(), (NOW + HOUR).isoformat()
    # Rows as the version-1 code wrote them: an approved request, its approval and its grant.
    run_sql(store_url, f"""INSERT INTO requests (id, requester, db, tables, privileges, duration_s, reason,
            environment, status, created_at, updated_at, pending_until, access_until, grant_ids, status_by)
        VALUES ('r-00000000000a', 'alice', 'hr_prod', {_sql_list(store_url, ["employees"])},
            {_sql_list(store_url, ["SELECT"])}, 3600, 'incident 42', 'prod', 'approved', '{at}', '{at}',
            '{until}', '{until}', {_sql_list(store_url, ["g-00000000000a"])}, 'bob')""")
    run_sql(store_url, f"""INSERT INTO approvals (request_id, position, approver, roles, decision, comment, at)
        VALUES ('r-00000000000a', 1, 'bob', {_sql_list(store_url, ["group:dba"])}, 'approve', 'ok', '{at}')""")
    run_sql(store_url, f"""INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
            created_by, reason, request_id)
        VALUES ('g-00000000000a', 'user:alice', 'hr_prod', 'employees', {_sql_list(store_url, ["SELECT"])},
            '{until}', '{at}', 'bob', 'incident 42', 'r-00000000000a')""")

    store = unmigrated_store(store_url)
    try:
        store.migrate()
        assert run_sql(store_url, "SELECT version FROM schema_migrations ORDER BY version") == ALL_VERSIONS
        assert store.get_grant("g-00000000000a") == StoredGrant(
            id="g-00000000000a", subject="user:alice", db="hr_prod", table="employees",
            privileges=("SELECT",), expires_at=NOW + HOUR, created_at=NOW, created_by="bob",
            reason="incident 42", request_id="r-00000000000a", instance="*",
        )
        assert store.get_request("r-00000000000a") == AccessRequest(
            id="r-00000000000a", requester="alice", db="hr_prod", tables=("employees",),
            privileges=("SELECT",), duration_s=3600, reason="incident 42", environment="prod",
            status=RequestStatus.APPROVED, created_at=NOW, updated_at=NOW, pending_until=NOW + HOUR,
            access_until=NOW + HOUR, approvals=(Approval("bob", ("group:dba",), "approve", "ok", NOW),),
            grant_ids=("g-00000000000a",), status_by="bob", instance="*",
        )
        # Old and new rows side by side after the upgrade.
        new = store.add_grant(new_grant(instance="hr-test"), NOW)
        assert [(g.id, g.instance) for g in store.grants(active_at=NOW)] == [
            ("g-00000000000a", "*"), (new.id, "hr-test"),
        ]
        assert [r.instance for r in store.requests()] == ["*"]
    finally:
        store.close()


def test_a_version_1_store_with_no_rows_upgrades_and_takes_instances(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _v1_store(store_url, monkeypatch)
    store = unmigrated_store(store_url)
    try:
        store.migrate()
        request = store.create_request(new_request(instance="hr-prod"), NOW)
        assert store.get_request(request.id) == request and request.instance == "hr-prod"
        assert store.revision() == 1
    finally:
        store.close()


# -- revision -------------------------------------------------------------------------------------


def test_revision_bumps_on_every_write_and_never_on_reads_or_failed_writes(store: Store) -> None:
    assert store.revision() == 0
    grant = store.add_grant(new_grant(), NOW)
    store.revoke_grant(grant.id, "admin", NOW)
    request = store.create_request(new_request(), NOW)
    store.record_decision(request.id, Decision(approval()), NOW)
    store.record_decision(request.id, Decision(None, RequestStatus.CANCELLED, by="alice"), NOW)
    assert store.revision() == 5

    store.get_grant(grant.id)
    store.grants()
    store.grants(active_at=NOW, subject="user:alice")
    store.get_request(request.id)
    store.requests(status=RequestStatus.PENDING, requester="alice")
    with pytest.raises(Conflict):
        store.revoke_grant(grant.id, "admin", NOW)
    with pytest.raises(NotFound):
        store.revoke_grant("g-000000000000", "admin", NOW)
    with pytest.raises(Conflict):
        store.record_decision(request.id, Decision(approval("carol")), NOW)
    with pytest.raises(NotFound):
        store.record_decision("r-000000000000", Decision(approval()), NOW)
    assert store.revision() == 5


# -- grants ---------------------------------------------------------------------------------------


def test_add_grant_returns_what_get_grant_reads(store: Store) -> None:
    wanted = new_grant(reason="on call", request_id="r-0123456789ab", privileges=("SELECT", "UPDATE"))
    grant = store.add_grant(wanted, NOW)
    assert GRANT_ID.fullmatch(grant.id)
    assert grant == StoredGrant(
        id=grant.id, subject="user:alice", db="hr_prod", table="employees",
        privileges=("SELECT", "UPDATE"), expires_at=NOW + HOUR, created_at=NOW,
        created_by="admin", reason="on call", request_id="r-0123456789ab",
    )
    assert store.get_grant(grant.id) == grant
    assert store.get_grant("g-000000000000") is None


def test_grants_are_oldest_first_and_filter_by_activity_and_subject(store: Store) -> None:
    later = store.add_grant(new_grant(table="later"), NOW + SECOND)
    active = store.add_grant(new_grant(table="active"), NOW)
    expired = store.add_grant(new_grant(table="expired", expires_at=NOW - SECOND), NOW - HOUR)
    ends_now = store.add_grant(new_grant(table="ends_now", expires_at=NOW), NOW - HOUR)
    revoked = store.add_grant(new_grant(table="revoked"), NOW)
    store.revoke_grant(revoked.id, "admin", NOW)
    group = store.add_grant(new_grant("group:dba", table="group"), NOW)  # same time: insertion order

    assert ids(store.grants()) == ids([expired, ends_now, active, revoked, group, later])
    # Active means not revoked and `at < expires_at`: a grant ending at NOW is over at NOW.
    assert ids(store.grants(active_at=NOW)) == ids([active, group, later])
    # Revoked is revoked at any time; creation time does not matter.
    assert ids(store.grants(active_at=NOW - 2 * SECOND)) == ids([expired, ends_now, active, group, later])
    assert ids(store.grants(subject="group:dba")) == ids([group])
    assert ids(store.grants(active_at=NOW, subject="user:alice")) == ids([active, later])
    assert store.grants(subject="user:nobody") == []


def test_revoke_once_then_conflict_and_unknown_is_not_found(store: Store) -> None:
    grant = store.add_grant(new_grant(), NOW)
    revoked = store.revoke_grant(grant.id, "carol", NOW + SECOND)
    assert revoked == replace(grant, revoked_at=NOW + SECOND, revoked_by="carol")
    assert store.get_grant(grant.id) == revoked
    with pytest.raises(Conflict):
        store.revoke_grant(grant.id, "dave", NOW + 2 * SECOND)
    assert store.get_grant(grant.id) == revoked  # the loser changed nothing
    with pytest.raises(NotFound):
        store.revoke_grant("g-000000000000", "carol", NOW)


# -- requests -------------------------------------------------------------------------------------


def test_create_request_returns_what_get_request_reads(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    assert REQUEST_ID.fullmatch(request.id)
    assert request == AccessRequest(
        id=request.id, requester="alice", db="hr_prod", tables=("employees", "salaries"),
        privileges=("SELECT", "UPDATE"), duration_s=3600, reason="incident 42",
        environment="prod", status=RequestStatus.PENDING, created_at=NOW, updated_at=NOW,
        pending_until=NOW + 2 * HOUR,
    )
    assert store.get_request(request.id) == request
    assert store.get_request("r-000000000000") is None


def test_requests_are_newest_first_and_filter_by_status_and_requester(store: Store) -> None:
    first = store.create_request(new_request("alice"), NOW)
    second = store.create_request(new_request("bob"), NOW + SECOND)
    third = store.create_request(new_request("alice"), NOW + 2 * SECOND)
    fourth = store.create_request(new_request("carol"), NOW + 2 * SECOND)  # a tie: insertion order
    denied = store.record_decision(second.id, Decision(approval("dave", "deny"), RequestStatus.DENIED), NOW)

    assert ids(store.requests()) == ids([fourth, third, second, first])
    assert ids(store.requests(status=RequestStatus.PENDING)) == ids([fourth, third, first])
    assert ids(store.requests(requester="alice")) == ids([third, first])
    assert ids(store.requests(status=RequestStatus.PENDING, requester="alice")) == ids([third, first])
    assert store.requests(status=RequestStatus.DENIED, requester="alice") == []
    assert ids(store.requests(limit=2)) == ids([fourth, third])
    assert store.requests(limit=0) == []
    assert store.requests(status=RequestStatus.DENIED) == [denied]  # approvals come along


# -- record_decision ------------------------------------------------------------------------------


def test_approvals_accumulate_in_order_while_the_request_stays_pending(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    first, second = approval("bob", at=NOW + SECOND), approval("carol", at=NOW + 2 * SECOND)
    store.record_decision(request.id, Decision(first), NOW + SECOND)
    after = store.record_decision(request.id, Decision(second), NOW + 2 * SECOND)
    assert after == replace(request, approvals=(first, second), updated_at=NOW + 2 * SECOND)
    assert store.get_request(request.id) == after


def test_approving_creates_the_grants_in_the_same_write(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    at = NOW + 5 * SECOND
    decision = approve_with_grants(request, "bob", at)
    done = store.record_decision(request.id, decision, at)

    assert done.status is RequestStatus.APPROVED
    assert (done.access_until, done.status_by, done.updated_at) == (at + HOUR, "bob", at)
    assert done.approvals == (decision.approval,)
    assert len(done.grant_ids) == 2 and all(GRANT_ID.fullmatch(gid) for gid in done.grant_ids)
    grants = store.grants()
    assert ids(grants) == list(done.grant_ids)  # in the decision's order
    for grant, wanted in zip(grants, decision.grants, strict=True):
        assert grant == StoredGrant(
            id=grant.id, subject="user:alice", db="hr_prod", table=wanted.table,
            privileges=("SELECT", "UPDATE"), expires_at=at + HOUR, created_at=at,
            created_by="bob", reason="incident 42", request_id=request.id,
        )
    assert ids(store.grants(active_at=at)) == list(done.grant_ids)
    assert store.get_request(request.id) == done
    assert store.revision() == 2  # create, decide: the grants were part of the decision's write


def test_a_status_change_without_approval_is_credited_to_decision_by(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    done = store.record_decision(request.id, Decision(None, RequestStatus.CANCELLED, by="alice"), NOW + SECOND)
    assert done == replace(request, status=RequestStatus.CANCELLED, status_by="alice", updated_at=NOW + SECOND)


def test_the_approver_is_credited_over_decision_by(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    denial = approval("dave", "deny")
    done = store.record_decision(request.id, Decision(denial, RequestStatus.DENIED, by="system"), NOW)
    assert (done.status, done.status_by, done.approvals) == (RequestStatus.DENIED, "dave", (denial,))
    assert (done.access_until, done.grant_ids) == (None, ())


def test_a_decision_on_a_request_not_in_the_expected_status_conflicts_and_writes_nothing(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    cancelled = store.record_decision(request.id, Decision(None, RequestStatus.CANCELLED, by="alice"), NOW)
    revision = store.revision()
    for late in (Decision(approval()), approve_with_grants(request)):
        with pytest.raises(Conflict):
            store.record_decision(request.id, late, NOW + SECOND)
    with pytest.raises(Conflict):
        store.record_decision(request.id, Decision(None, RequestStatus.EXPIRED, by="system"), NOW,
                              expected=RequestStatus.APPROVED)
    assert store.get_request(request.id) == cancelled
    assert store.grants() == []
    assert store.revision() == revision


def test_expected_lets_a_decided_request_change_again(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    approved = store.record_decision(request.id, approve_with_grants(request), NOW)
    ended = store.record_decision(request.id, Decision(None, RequestStatus.CANCELLED, by="admin"), NOW + SECOND,
                                  expected=RequestStatus.APPROVED)
    assert ended.status is RequestStatus.CANCELLED and ended.status_by == "admin"
    # What the approval wrote stays: its grants (ended separately, by revocation) and its deadline.
    assert (ended.grant_ids, ended.access_until) == (approved.grant_ids, approved.access_until)


def test_a_decision_on_an_unknown_request_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.record_decision("r-000000000000", Decision(None, RequestStatus.EXPIRED, by="system"), NOW)


def test_a_decision_that_fails_halfway_writes_nothing(store: Store) -> None:
    request = store.create_request(new_request(), NOW)
    decision = approve_with_grants(request)
    # The second grant cannot be stored (a naive time): the approval and first grant must go too.
    broken = replace(decision, grants=(decision.grants[0], replace(decision.grants[1], expires_at=datetime(2030, 1, 1))))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_decision(request.id, broken, NOW)
    assert store.get_request(request.id) == request
    assert store.grants() == []
    assert store.revision() == 1


@pytest.mark.parametrize(
    "decision",
    [
        Decision(None),
        Decision(approval(), access_until=NOW),
        Decision(approval(), grants=(new_grant(),)),
    ],
    ids=["nothing", "access_until-without-status", "grants-without-status"],
)
def test_a_decision_that_says_nothing_coherent_is_refused(store: Store, decision: Decision) -> None:
    request = store.create_request(new_request(), NOW)
    with pytest.raises(ValueError):
        store.record_decision(request.id, decision, NOW)
    assert store.get_request(request.id) == request


# -- instances ------------------------------------------------------------------------------------


def test_instance_defaults_to_every_instance() -> None:
    assert new_grant().instance == "*" and new_request().instance == "*"


def test_the_instance_of_a_grant_round_trips(store: Store) -> None:
    anywhere = store.add_grant(new_grant(table="anywhere"), NOW)
    on_test = store.add_grant(new_grant(instance="hr-test"), NOW)
    on_prod = store.add_grant(new_grant(instance="hr-prod"), NOW)  # same db.table, other instance
    assert (anywhere.instance, on_test.instance, on_prod.instance) == ("*", "hr-test", "hr-prod")
    assert on_test == StoredGrant(
        id=on_test.id, subject="user:alice", db="hr_prod", table="employees", privileges=("SELECT",),
        expires_at=NOW + HOUR, created_at=NOW, created_by="admin", instance="hr-test",
    )
    assert store.get_grant(on_test.id) == on_test
    assert [(g.table, g.instance) for g in store.grants(active_at=NOW, subject="user:alice")] == [
        ("anywhere", "*"), ("employees", "hr-test"), ("employees", "hr-prod"),
    ]
    assert store.revoke_grant(on_test.id, "admin", NOW).instance == "hr-test"


def test_the_instance_of_a_request_round_trips_and_its_grants_keep_theirs(store: Store) -> None:
    request = store.create_request(new_request(instance="hr-test", environment="test"), NOW)
    assert request.instance == "hr-test"
    assert store.get_request(request.id) == request
    assert [r.instance for r in store.requests(requester="alice")] == ["hr-test"]
    done = store.record_decision(request.id, approve_with_grants(request), NOW)
    assert done.instance == "hr-test" and store.get_request(request.id) == done
    assert [g.instance for g in store.grants()] == ["hr-test", "hr-test"]
    # The store writes what each NewGrant says; tying them to the request is the workflow's job.
    other = store.create_request(new_request(), NOW)
    mixed = replace(approve_with_grants(other), grants=(replace(new_grant(), instance="hr-prod"),))
    store.record_decision(other.id, mixed, NOW)
    assert store.get_request(other.id).instance == "*"  # type: ignore[union-attr]
    assert store.grants()[-1].instance == "hr-prod"


# -- values ---------------------------------------------------------------------------------------


def test_times_round_trip_exactly_as_aware_utc(store: Store) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    at = datetime(2031, 6, 7, 8, 9, 10, 123457, tzinfo=india)  # microseconds, not UTC
    added = store.add_grant(new_grant(expires_at=at + HOUR), at)
    store.revoke_grant(added.id, "admin", at + SECOND)
    request = store.create_request(new_request(pending_until=at + 2 * HOUR), at)
    store.record_decision(request.id, approve_with_grants(request, "bob", at), at)

    grant, done = store.get_grant(added.id), store.get_request(request.id)
    assert grant is not None and done is not None
    moments = {
        "created_at": grant.created_at, "expires_at": grant.expires_at, "revoked_at": grant.revoked_at,
        "request.created_at": done.created_at, "pending_until": done.pending_until,
        "access_until": done.access_until, "approval.at": done.approvals[0].at,
    }
    for name, moment in moments.items():
        assert moment is not None and moment.utcoffset() == timedelta(0), name
    utc_at = at.astimezone(UTC)
    assert grant.created_at.isoformat() == "2031-06-07T02:39:10.123457+00:00"
    assert (grant.created_at, grant.expires_at, grant.revoked_at) == (utc_at, utc_at + HOUR, utc_at + SECOND)
    assert (done.created_at, done.pending_until, done.access_until) == (utc_at, utc_at + 2 * HOUR, utc_at + HOUR)
    assert done.approvals[0].at == utc_at


def test_naive_times_are_refused(store: Store) -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.add_grant(new_grant(), naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.grants(active_at=naive)
    assert store.revision() == 0


def test_unicode_text_round_trips(store: Store) -> None:
    reason = "Größenänderung für 数据库 — “incident” 🚒\nline two\t✓"
    request = store.create_request(new_request("josé", reason=reason, tables=("straße", "表")), NOW)
    decision = replace(approve_with_grants(request, "zoë"),
                       approval=Approval("zoë", ("group:ops-ü",), "approve", "ok 👍", NOW))
    done = store.record_decision(request.id, decision, NOW)
    again = store.get_request(request.id)
    assert again == done
    assert (again.requester, again.reason, again.tables) == ("josé", reason, ("straße", "表"))
    assert again.approvals[0].comment == "ok 👍" and again.approvals[0].roles == ("group:ops-ü",)
    assert [grant.table for grant in store.grants(subject="user:josé")] == ["straße", "表"]


def test_a_closed_store_refuses_work(open_stores: Callable[[], Store]) -> None:
    closing = open_stores()
    closing.close()
    with pytest.raises(StoreError):
        closing.revision()


# -- several store objects on one store (replicas) -----------------------------------------------


def test_replicas_see_each_others_writes(open_stores: Callable[[], Store]) -> None:
    one, two = open_stores(), open_stores()
    grant = one.add_grant(new_grant(), NOW)
    assert two.revision() == one.revision() == 1
    assert two.get_grant(grant.id) == grant
    request = two.create_request(new_request(), NOW)
    assert one.get_request(request.id) == request
    two.revoke_grant(grant.id, "admin", NOW)
    assert one.grants(active_at=NOW) == []
    assert one.revision() == two.revision() == 3


@pytest.mark.parametrize("replicas", [1, 2], ids=["one-object", "two-objects"])
def test_concurrent_decisions_on_one_request_exactly_one_wins(
    open_stores: Callable[[], Store], replicas: int
) -> None:
    stores = [open_stores() for _ in range(replicas)]
    first, second = stores[0], stores[-1]
    request = first.create_request(new_request(), NOW)
    start = threading.Barrier(2)

    def decide(store: Store, approver: str) -> AccessRequest:
        start.wait()
        return store.record_decision(request.id, approve_with_grants(request, approver), NOW)

    with ThreadPoolExecutor(2) as pool:
        futures: list[Future[AccessRequest]] = [
            pool.submit(decide, first, "bob"), pool.submit(decide, second, "carol")
        ]
    outcomes = [future.exception() or future.result() for future in futures]
    winners = [outcome for outcome in outcomes if isinstance(outcome, AccessRequest)]
    assert len(winners) == 1, outcomes
    assert sum(isinstance(outcome, Conflict) for outcome in outcomes) == 1, outcomes
    final = first.get_request(request.id)
    assert final == winners[0]
    assert [a.approver for a in final.approvals] == [final.status_by]
    assert ids(first.grants()) == list(final.grant_ids)
    assert first.revision() == 2
