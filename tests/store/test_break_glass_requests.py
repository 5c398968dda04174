"""Schema version 6 on both backends: a break-glass request (an on-call person's, approved at
once) keeps its flag through its approval, its review (an approval row recorded while it is
approved) and a listing; a version-5 store upgrades with its requests read as not break glass."""

from __future__ import annotations

import pytest

from proxy.store.base import Approval, Conflict, Decision, RequestStatus, Store
from tests.store.conftest import insert_old_request, migrate_to, unmigrated_store
from tests.store.test_contract import HOUR, NOW, SECOND, approval, new_grant, new_request


def test_a_break_glass_request_round_trips_through_approval_and_review(store: Store) -> None:
    request = store.create_request(new_request(break_glass=True), NOW)
    assert request.break_glass and store.get_request(request.id) == request
    assert store.create_request(new_request(), NOW).break_glass is False

    at_once = Approval("jitproxy", (), "approve", "break glass in prod for group:oncall", NOW)
    done = store.record_decision(request.id, Decision(at_once, RequestStatus.APPROVED, NOW + HOUR,
                                                      (new_grant(break_glass=True, request_id=request.id),)), NOW)
    assert done.break_glass and done.status is RequestStatus.APPROVED
    (grant,) = store.grants(ids=done.grant_ids)
    assert grant.break_glass and grant.request_id == request.id

    # The review after the fact: an approval row on the approved request, its status unchanged.
    review = Approval("olga", ("dba",), "deny", "not an incident", NOW + SECOND)
    reviewed = store.record_decision(request.id, Decision(review), NOW + SECOND, expected=RequestStatus.APPROVED)
    assert reviewed.status is RequestStatus.APPROVED and reviewed.approvals == (at_once, review)
    assert reviewed.grant_ids == done.grant_ids and reviewed.break_glass
    assert store.get_request(request.id) == reviewed
    assert [r.id for r in store.requests(requester=request.requester) if r.break_glass] == [request.id]
    with pytest.raises(Conflict, match="is approved, not pending"):
        store.record_decision(request.id, Decision(approval()), NOW + 2 * SECOND)


def test_a_version_5_store_upgrades_and_its_requests_are_not_break_glass(store_url: str, monkeypatch) -> None:
    migrate_to(store_url, 5, monkeypatch)
    insert_old_request(store_url, "r-00000000000d", NOW.isoformat(), (NOW + HOUR).isoformat())
    store = unmigrated_store(store_url)
    try:
        store.migrate()
        request = store.get_request("r-00000000000d")
        assert request is not None and request.break_glass is False and request.status is RequestStatus.PENDING
        assert store.create_request(new_request(break_glass=True), NOW).break_glass
    finally:
        store.close()
