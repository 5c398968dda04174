"""Writes racing on one store, on every backend: two replicas (store objects) or two threads of
one, started together, end as if one had gone after the other: one revocation wins and the other
gets Conflict, both approvals land in order, each session password is ended once. PostgreSQL gets
this from the row locks of proxy.store.sql (SELECT ... FOR UPDATE under READ COMMITTED), SQLite
from its write lock; the race of two decisions is in test_contract.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import pytest

from proxy.store.base import Conflict, Decision, NewSessionPassword, Store, StoredGrant
from tests.store.test_contract import HOUR, NOW, approval, new_grant, new_request

T = TypeVar("T")
ROUNDS = 3  # each round is a new race


def race(first: Callable[[], T], second: Callable[[], T]) -> list[T | BaseException]:
    """Run both at once (a barrier lines them up); their results, or what they raised."""
    start = threading.Barrier(2)

    def run(work: Callable[[], T]) -> T:
        start.wait()
        return work()

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, first), pool.submit(run, second)]
    return [future.exception() or future.result() for future in futures]


@pytest.fixture(params=[1, 2], ids=["one-object", "two-objects"])
def pair(request: pytest.FixtureRequest, open_stores: Callable[[], Store]) -> tuple[Store, Store]:
    stores = [open_stores() for _ in range(request.param)]
    return stores[0], stores[-1]


def test_concurrent_revocations_of_one_grant_exactly_one_wins(pair: tuple[Store, Store]) -> None:
    first, second = pair
    for _ in range(ROUNDS):
        grant = first.add_grant(new_grant(), NOW)
        revision = first.revision()
        outcomes = race(partial(first.revoke_grant, grant.id, "bob", NOW),
                        partial(second.revoke_grant, grant.id, "carol", NOW, released=True))
        winners = [o for o in outcomes if isinstance(o, StoredGrant)]
        assert len(winners) == 1 and sum(isinstance(o, Conflict) for o in outcomes) == 1, outcomes
        assert second.get_grant(grant.id) == winners[0]
        assert first.revision() == revision + 1


def test_concurrent_approvals_of_one_request_are_both_recorded_in_order(pair: tuple[Store, Store]) -> None:
    """Approvals that leave the request pending do not conflict: each takes the next position."""
    first, second = pair
    for _ in range(ROUNDS):
        request = first.create_request(new_request(), NOW)
        outcomes = race(partial(first.record_decision, request.id, Decision(approval("bob")), NOW),
                        partial(second.record_decision, request.id, Decision(approval("carol")), NOW))
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        final = second.get_request(request.id)
        assert final is not None and sorted(a.approver for a in final.approvals) == ["bob", "carol"]
        # The later write saw the earlier one's approval (it waited for it).
        assert max(outcomes, key=lambda o: len(o.approvals)) == final  # type: ignore[union-attr]


def password(n: int, person: str = "alice") -> NewSessionPassword:
    return NewSessionPassword(id=f"sp-{n:016x}", secret_hash=f"{n:064x}", person=person, groups=("eng",),
                              instance="*", client_address=None, token_id="jti-1", expires_at=NOW + HOUR)


def test_concurrent_revocations_of_session_passwords_end_each_once(pair: tuple[Store, Store]) -> None:
    first, second = pair
    for round_ in range(ROUNDS):
        added = [first.add_session_password(password(10 * round_ + n), NOW) for n in range(3)]
        outcomes: list[Any] = race(partial(first.revoke_session_passwords, "alice", "alice", NOW),
                                   partial(second.revoke_session_passwords, "alice", "admin", NOW))
        ended = [p for outcome in outcomes for p in outcome]
        assert sorted(p.id for p in ended) == sorted(p.id for p in added), outcomes
        assert second.session_passwords("alice", active_at=NOW) == []


def test_revoking_session_passwords_one_or_all(store: Store) -> None:
    one, two, bobs = (store.add_session_password(p, NOW) for p in (password(1), password(2), password(3, "bob")))
    expired = store.add_session_password(replace(password(4), expires_at=NOW - timedelta(seconds=1)), NOW - HOUR)
    assert store.session_password_by_hash(two.secret_hash) == two
    assert store.session_password_by_hash("0" * 64) is None
    assert store.session_passwords("alice") == [one, two, expired]
    assert store.session_passwords("alice", active_at=NOW) == [one, two]

    later = NOW + timedelta(minutes=1)
    revision = store.revision()
    (ended,) = store.revoke_session_passwords("alice", "admin", later, password_id=two.id)
    assert ended == replace(two, revoked_at=later, revoked_by="admin")
    assert ended.revoked_at is not None and ended.revoked_at.utcoffset() == timedelta(0)
    assert [p.id for p in store.revoke_session_passwords("alice", "alice", later)] == [one.id]  # not the expired
    assert store.revoke_session_passwords("alice", "alice", later) == []
    assert store.session_passwords("bob", active_at=later) == [bobs]
    assert store.revision() == revision + 3  # every call is a write, also one that ends nothing
