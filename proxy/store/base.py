"""The state store: JIT grants, access requests and their approvals. One interface, two backends
(SQLite, the embedded default; PostgreSQL for several proxy replicas sharing state).

The interface is synchronous and every method is one short transaction: the proxy calls it off
the event loop (asyncio.to_thread), never on the statement path. Sessions decide against an
in-memory snapshot (proxy.authz.decide.GrantSet) that is rebuilt when `revision()` changes;
every write bumps the revision in the same transaction, so a replica polling it sees every
change (approval, revocation) within its poll interval.

Times are timezone-aware UTC datetimes in and out (microseconds kept).

The store also keeps the audit trail (`append_audit`, `search_audit`, `audit_chain`): events
are appended in batches by the audit sink's writer thread and searched by the admin API. Those
writes do not bump the revision: it tells replicas that grants changed, and audit events change
no grant.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from proxy.audit.query import AUDIT_MAX_LIMIT, AuditQuery  # what an audit search is: the store answers it


# A grant or request for every upstream instance; also what rows written before instances
# existed read as (schema version 2 added the column with this default).
ANY_INSTANCE = "*"


class RequestStatus(str, enum.Enum):
    """What the store records. What people are shown also says how an approved request's
    access ended (expired, revoked, released): proxy.workflow.status derives it from the grants."""

    PENDING = "pending"
    APPROVED = "approved"  # its grants exist (they end on their own at `access_until`)
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # pending for too long, never decided


class StoreError(RuntimeError):
    """The store cannot be reached or answered unexpectedly (the message names no secret)."""


class Conflict(StoreError):
    """A compare-and-set lost: the row is not in the state the caller expected."""


class NotFound(StoreError):
    pass


@dataclass(frozen=True)
class NewGrant:
    subject: str  # user:NAME or group:NAME
    db: str
    table: str  # a table name or "*"
    privileges: tuple[str, ...]  # Privilege values, e.g. ("SELECT",)
    expires_at: datetime  # store grants always end
    created_by: str
    reason: str = ""
    request_id: str | None = None
    instance: str = ANY_INSTANCE  # the upstream instance (config name) it applies to
    break_glass: bool = False  # longer than its environment allows, on an admin's stated reason


@dataclass(frozen=True)
class StoredGrant:
    id: str  # "g-" + 12 hex
    subject: str
    db: str
    table: str
    privileges: tuple[str, ...]
    expires_at: datetime
    created_at: datetime
    created_by: str
    reason: str = ""
    request_id: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    instance: str = ANY_INSTANCE
    revoke_reason: str | None = None  # why it was ended early
    released: bool = False  # ended early by the person holding it (revoked_by), not an admin
    break_glass: bool = False

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True)
class NewRequest:
    requester: str  # the person (token subject)
    db: str
    tables: tuple[str, ...]  # table names of `db` (or ("*",))
    privileges: tuple[str, ...]
    duration_s: int  # access length once approved
    reason: str
    environment: str  # e.g. "prod", "test": the approval policy that applies
    pending_until: datetime  # a request still pending then becomes EXPIRED
    instance: str = ANY_INSTANCE  # the upstream instance its grants will apply to
    ends_at: datetime | None = None  # an absolute end (--until); None: duration_s from approval
    break_glass: bool = False  # an on-call person's: approved at once, reviewed after the fact


@dataclass(frozen=True)
class Approval:
    approver: str
    roles: tuple[str, ...]  # the approver's groups that the policy counted
    decision: str  # "approve" or "deny"
    comment: str
    at: datetime


@dataclass(frozen=True)
class AccessRequest:
    id: str  # "r-" + 12 hex
    requester: str
    db: str
    tables: tuple[str, ...]
    privileges: tuple[str, ...]
    duration_s: int
    reason: str
    environment: str
    status: RequestStatus
    created_at: datetime
    updated_at: datetime
    pending_until: datetime
    access_until: datetime | None = None  # set when approved
    approvals: tuple[Approval, ...] = ()  # in the order they were recorded
    grant_ids: tuple[str, ...] = ()  # the grants its approval created
    status_by: str | None = None  # who approved (the last approval), denied or cancelled it
    instance: str = ANY_INSTANCE
    ends_at: datetime | None = None  # the absolute end asked for (--until), whenever approved
    break_glass: bool = False  # approved at once for an on-call person; its review is in `approvals`


@dataclass(frozen=True)
class Decision:
    """What `record_decision` writes, atomically."""

    approval: Approval | None  # recorded first (None: a status change only, e.g. cancel, expire)
    new_status: RequestStatus | None = None  # None: the request stays pending
    access_until: datetime | None = None
    grants: tuple[NewGrant, ...] = field(default=())  # created with the status change
    by: str | None = None  # status_by when there is no approval (the requester cancelling, "system")


@dataclass(frozen=True)
class NewSessionPassword:
    """A short password standing for a personal token (proxy.identity.session_passwords): the
    store keeps the hash of its secret, never the secret."""

    id: str
    secret_hash: str
    person: str
    groups: tuple[str, ...]
    instance: str  # "*": any instance
    client_address: str | None  # None: from any address
    token_id: str | None
    expires_at: datetime


@dataclass(frozen=True)
class SessionPassword(NewSessionPassword):
    created_at: datetime = datetime.min
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


class Store(Protocol):
    def migrate(self) -> None:
        """Create or upgrade the schema (versioned migrations; idempotent, safe to race)."""

    def revision(self) -> int:
        """A counter bumped by every write: replicas poll it."""

    def add_grant(self, grant: NewGrant, now: datetime) -> StoredGrant: ...

    def revoke_grant(self, grant_id: str, by: str, now: datetime, *, reason: str | None = None,
                     released: bool = False) -> StoredGrant:
        """End the grant now: `by` revoked it (`released`: `by` holds it and gave it back),
        for `reason`. Raises NotFound; Conflict if it was already revoked or released."""

    def get_grant(self, grant_id: str) -> StoredGrant | None: ...

    def grants(self, *, active_at: datetime | None = None, subject: str | None = None,
               ids: Sequence[str] | None = None) -> list[StoredGrant]:
        """All grants (oldest first); with `active_at`, only those not revoked and not expired
        then; with `subject`, only that subject's; with `ids`, only those (ids not found are
        left out)."""

    def create_request(self, request: NewRequest, now: datetime) -> AccessRequest: ...

    def get_request(self, request_id: str) -> AccessRequest | None: ...

    def requests(
        self, *, status: RequestStatus | None = None, requester: str | None = None, limit: int = 200
    ) -> list[AccessRequest]:
        """Newest first."""

    def record_decision(
        self, request_id: str, decision: Decision, now: datetime, *, expected: RequestStatus = RequestStatus.PENDING
    ) -> AccessRequest:
        """In one transaction: check the request is `expected` (else Conflict; NotFound if
        missing), append the approval (if any), and when `new_status` is set, change the status
        (status_by = the approval's approver, else `decision.by`), set access_until and create
        the grants (their ids land in `grant_ids`). Bumps the revision."""

    # -- the audit trail ----------------------------------------------------------------------

    def append_audit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Store a batch of sealed audit events in one transaction (all or none). Each needs
        `event_id`, `time` (ISO-8601 with a zone) and `type` (else ValueError, nothing
        written). Idempotent on `event_id`: events already stored are skipped, so a batch
        retried after a lost answer neither fails nor duplicates. The body is kept as given
        (its JSON), for `audit verify` to recompute the hashes. Does not bump the revision."""

    def search_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        """The bodies of the events matching `query`, newest first (or oldest first)."""

    def audit_chain(self, proxy_instance: str, after_seq: int = 0, limit: int = AUDIT_MAX_LIMIT) -> list[dict[str, Any]]:
        """The bodies of `proxy_instance`'s events with seq > `after_seq`, in seq order, at most
        `limit` (1..AUDIT_MAX_LIMIT): page with after_seq = the last seq returned."""

    def add_session_password(self, password: NewSessionPassword, now: datetime) -> SessionPassword: ...

    def session_password_by_hash(self, secret_hash: str) -> SessionPassword | None: ...

    def session_passwords(self, person: str, *, active_at: datetime | None = None) -> list[SessionPassword]: ...

    def revoke_session_passwords(self, person: str, by: str, now: datetime, *,
                                 password_id: str | None = None) -> list[SessionPassword]:
        """End the person's active session passwords (one: `password_id`); returns those ended."""
        ...

    def close(self) -> None: ...
