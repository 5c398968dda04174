"""The status people are shown for a request or a grant: the same words in the CLI, the API
and the audit events.

    grant     active | expired | revoked | released
    request   pending | approved | denied | cancelled | expired | revoked | released

The store records what was decided (a request is pending, approved, denied, cancelled, or
expired undecided); how an approved request's access then ended is read from its grants and
the clock, so `request show` never says "approved ... until" about access that is over:

- approved: some of its grants are still in effect;
- revoked:  its grants are all over and an admin ended one of them early (by whom, when, why);
- released: its grants are all over and the requester gave them back early;
- expired:  its grants all ran to their end (or it was never decided in time).

A break-glass request (an on-call person's, approved at once) also has a `review`: "pending"
until a reviewer decides it after the fact, then "approved by X" (it stays as it is) or "denied
by X" (its grants were revoked: its status is then `revoked`, by X).

Pure: the caller passes the grants and `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from proxy.store.base import AccessRequest, Approval, RequestStatus, StoredGrant

ACTIVE, EXPIRED, REVOKED, RELEASED = "active", "expired", "revoked", "released"
REQUEST_STATUSES = ("pending", "approved", "denied", "cancelled", EXPIRED, REVOKED, RELEASED)
SYSTEM = "jitproxy"  # who ends what ends on its own


@dataclass(frozen=True)
class Status:
    """A status with who caused it, when, and why (None where it does not apply)."""

    word: str
    by: str | None = None
    at: datetime | None = None
    reason: str | None = None

    def fields(self) -> dict[str, str | None]:
        return {"status": self.word, "status_by": self.by, "status_at": self.at.isoformat() if self.at else None,
                "status_reason": self.reason}


def grant_status(grant: StoredGrant, now: datetime) -> Status:
    if grant.revoked_at is not None:
        return Status(RELEASED if grant.released else REVOKED, grant.revoked_by, grant.revoked_at, grant.revoke_reason)
    if now >= grant.expires_at:
        return Status(EXPIRED, SYSTEM, grant.expires_at)
    return Status(ACTIVE)


def request_status(request: AccessRequest, grants: Sequence[StoredGrant], now: datetime) -> Status:
    """`grants`: the request's own (others are ignored; missing ones count as ended)."""
    if request.status is not RequestStatus.APPROVED:
        return _decided(request)
    own = [g for g in grants if g.id in request.grant_ids]
    if any(g.active(now) for g in own):
        return Status(request.status.value, request.status_by, request.updated_at)
    ended = [grant_status(g, now) for g in own]
    for word in (REVOKED, RELEASED):  # an admin's revocation outranks a release
        early = [s for s in ended if s.word == word]
        if early:
            return max(early, key=lambda s: s.at or now)
    return Status(EXPIRED, SYSTEM, request.access_until)


def review_of(request: AccessRequest) -> Approval | None:
    """A break-glass request's review: the first decision recorded by a person (the approval at
    once is the system's); None while there is none, and for any other request."""
    if not request.break_glass:
        return None
    return next((a for a in request.approvals if a.approver != SYSTEM), None)


def review_text(request: AccessRequest) -> str | None:
    """"pending", "approved by olga", "denied by olga"; None for a request that is no break glass."""
    if not request.break_glass:
        return None
    review = review_of(request)
    if review is None:
        return "pending"
    return f"{'approved' if review.decision == 'approve' else 'denied'} by {review.approver}"


def request_objects(db: str, tables: Sequence[str]) -> str:
    """What a request is for, as written: hr_prod.* for every table, hr_prod.{salary,title}."""
    if list(tables) == ["*"]:
        return f"{db}.*"
    return f"{db}.{{{','.join(tables)}}}"


def _decided(request: AccessRequest) -> Status:
    reason = None
    if request.status is RequestStatus.DENIED:
        reason = next((a.comment for a in reversed(request.approvals) if a.decision == "deny"), None) or None
    return Status(request.status.value, request.status_by,
                  None if request.status is RequestStatus.PENDING else request.updated_at, reason)
