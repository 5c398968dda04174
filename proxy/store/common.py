"""Small helpers of the store (sql.py, audit.py) that need neither a dialect nor a connection."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from proxy.store.base import Decision


def new_grant_id() -> str:
    return "g-" + secrets.token_hex(6)


def new_request_id() -> str:
    return "r-" + secrets.token_hex(6)


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; ValueError for a naive datetime (its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"store times must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def check_decision(decision: Decision) -> None:
    """ValueError for a Decision that `record_decision` cannot apply as the interface says."""
    if decision.approval is None and decision.new_status is None:
        raise ValueError("a decision records an approval, a status change or both")
    if decision.new_status is None and (decision.grants or decision.access_until is not None):
        raise ValueError("grants and access_until come with a status change (new_status)")


def status_by(decision: Decision) -> str | None:
    """Who the status change is attributed to: the approval's approver, else `decision.by`."""
    return decision.approval.approver if decision.approval is not None else decision.by


def where(conditions: Sequence[str]) -> str:
    """The WHERE clause that ANDs `conditions`; "" when there are none."""
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""
