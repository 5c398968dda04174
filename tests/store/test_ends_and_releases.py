"""Schema version 4 on both backends: a request's absolute end (`--until`), why a grant ended
early and whether its holder gave it back (released) or an admin revoked it, break-glass
grants, grants read by id; and a version-3 store upgrading with its rows intact."""

from __future__ import annotations

import pytest

from proxy.store.base import Conflict, Decision, RequestStatus, Store
from tests.store.conftest import insert_old_request, migrate_to, run_sql, sql_list, unmigrated_store
from tests.store.test_contract import HOUR, NOW, SECOND, approval, new_grant, new_request


def test_a_request_keeps_its_absolute_end_through_approval(store: Store) -> None:
    request = store.create_request(new_request(ends_at=NOW + 3 * HOUR), NOW)
    assert request.ends_at == NOW + 3 * HOUR and store.get_request(request.id) == request
    done = store.record_decision(request.id, Decision(approval(), RequestStatus.APPROVED, NOW + 3 * HOUR), NOW + HOUR)
    assert (done.ends_at, done.access_until) == (NOW + 3 * HOUR, NOW + 3 * HOUR)
    assert store.create_request(new_request(), NOW).ends_at is None


def test_a_release_and_a_revocation_keep_who_when_and_why(store: Store) -> None:
    released = store.add_grant(new_grant(), NOW)
    revoked = store.add_grant(new_grant("user:bob"), NOW)
    assert (released.released, released.revoke_reason) == (False, None)
    ended = store.revoke_grant(released.id, "alice", NOW + SECOND, reason="done early", released=True)
    assert (ended.released, ended.revoked_by, ended.revoked_at, ended.revoke_reason) == (
        True, "alice", NOW + SECOND, "done early")
    assert store.get_grant(released.id) == ended
    assert store.revoke_grant(revoked.id, "admin", NOW + SECOND).released is False
    with pytest.raises(Conflict, match="already released"):
        store.revoke_grant(released.id, "admin", NOW + 2 * SECOND)
    with pytest.raises(Conflict, match="already revoked"):
        store.revoke_grant(revoked.id, "alice", NOW + 2 * SECOND, released=True)
    assert store.grants(active_at=NOW + 2 * SECOND) == []


def test_break_glass_round_trips(store: Store) -> None:
    grant = store.add_grant(new_grant(break_glass=True, reason="INC-9 outage"), NOW)
    assert grant.break_glass and store.get_grant(grant.id) == grant
    assert store.add_grant(new_grant(), NOW).break_glass is False


def test_grants_are_read_by_id(store: Store) -> None:
    first, second, third = (store.add_grant(new_grant(f"user:u{i}"), NOW) for i in range(3))
    assert store.grants(ids=[third.id, first.id]) == [first, third]  # oldest first, as always
    assert store.grants(ids=[]) == []
    assert store.grants(ids=["g-000000000000", second.id]) == [second]
    assert store.grants(ids=[first.id, second.id], subject="user:u1") == [second]


def test_a_version_3_store_upgrades_and_its_rows_read_as_before(store_url: str, monkeypatch) -> None:
    migrate_to(store_url, 3, monkeypatch)
    at, until = NOW.isoformat(), (NOW + HOUR).isoformat()
    run_sql(store_url, f"""INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
            created_by, reason, revoked_at, revoked_by, instance)
        VALUES ('g-00000000000c', 'user:alice', 'hr_prod', 'salary', {sql_list(store_url, "SELECT")}, '{until}',
            '{at}', 'bob', 'x', '{at}', 'bob', '*')""")
    insert_old_request(store_url, "r-00000000000c", at, until)
    store = unmigrated_store(store_url)
    try:
        store.migrate()
        grant = store.get_grant("g-00000000000c")
        assert grant is not None and (grant.revoked_by, grant.released, grant.revoke_reason, grant.break_glass) == (
            "bob", False, None, False)
        request = store.get_request("r-00000000000c")
        assert request is not None and request.ends_at is None and request.status is RequestStatus.PENDING
    finally:
        store.close()
