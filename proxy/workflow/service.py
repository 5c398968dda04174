"""The just-in-time access workflow: requests, approvals, direct grants, expiry.

Synchronous and free of HTTP: the admin API (proxy.api) calls it in a worker thread, tests call
it directly. Every state change is one store transaction, then an audit event naming the person
who caused it, then (through `notify`) the approvers' webhooks. Who may do what:

- anyone with a token: create a request for themselves, cancel their own pending request, see
  their own requests and access;
- an approver of the policy that applies (proxy.workflow.approvals): approve or deny a pending
  request of somebody else (nobody approves their own, also not through a group);
- an admin (a member of `admin_groups`): everything, including direct grants and revocation.

Upstream instances: with `instances` configured (name -> environment), every request and direct
grant is for one of them (named, or implied when there is only one), and the grants it makes
apply on that instance only. The request's environment is its instance's, when the instance has
one, else its database's (the approval policies' `environments`). Without `instances` (no names
configured) everything is for "*", every instance, as before instances existed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from proxy.audit.events import AuditEmitter, EventType
from proxy.authz.model import Principal, Privilege
from proxy.authz.policy import PolicyError, split_object
from proxy.store.base import (
    ANY_INSTANCE,
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
)
from proxy.workflow.approvals import ApprovalPolicies, NoApprovalPolicy, Plan

_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
_SUBJECT = re.compile(r"^(user|group):[A-Za-z0-9._@-]{1,80}$")
SYSTEM = "jitproxy"
_NO_INSTANCES: Mapping[str, str | None] = MappingProxyType({})


class WorkflowError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(WorkflowError):
    status = 400


class Forbidden(WorkflowError):
    status = 403


class Missing(WorkflowError):
    status = 404


class StateConflict(WorkflowError):
    status = 409


@dataclass(frozen=True)
class Limits:
    pending_ttl: timedelta = timedelta(hours=24)  # a request nobody decides expires
    max_grant_duration: timedelta = timedelta(days=7)  # direct grants by admins
    min_reason_chars: int = 3


class AccessService:
    def __init__(
        self,
        store: Store,
        policies: Callable[[], ApprovalPolicies],
        audit: AuditEmitter,
        clock: Callable[[], datetime],
        *,
        admin_groups: frozenset[str] = frozenset(),
        notify: Callable[[str, dict[str, Any]], None] = lambda event, body: None,
        limits: Limits = Limits(),
        instances: Mapping[str, str | None] = _NO_INSTANCES,
    ) -> None:
        """`instances`: the upstream instances by name (configuration order) -> environment
        (None when the instance names none). Empty: no instances, everything is for "*"."""
        self.store = store
        self.policies = policies
        self.audit = audit
        self.clock = clock
        self.admin_groups = admin_groups
        self.notify = notify
        self.limits = limits
        self.instances: Mapping[str, str | None] = MappingProxyType(dict(instances))

    # -- roles ---------------------------------------------------------------------------------

    def is_admin(self, who: Principal) -> bool:
        return bool(self.admin_groups & set(who.groups))

    # -- requests ------------------------------------------------------------------------------

    def create_request(
        self,
        who: Principal,
        db: str,
        tables: list[str],
        privileges: list[str],
        reason: str,
        *,
        duration: timedelta | None = None,
        until: datetime | None = None,
        instance: str | None = None,
    ) -> AccessRequest:
        now = self.clock()
        reason = (reason or "").strip()
        if len(reason) < self.limits.min_reason_chars:
            raise Invalid("a reason is required (an incident or ticket id, what you need to do)")
        if not tables:
            raise Invalid("name at least one table (--table)")
        db = _name(db, "database")
        names = tuple(dict.fromkeys("*" if t == "*" else _name(t, "table") for t in tables))
        privs = _privileges(privileges or ["SELECT"])
        target = self._instance(instance)
        span = _span(now, duration, until)
        try:
            plan = self.policies().plan(db, privs, self._environment_of(target))
        except NoApprovalPolicy as e:
            raise Forbidden(str(e)) from None
        if span > plan.max_duration:
            raise Invalid(f"at most {_human(plan.max_duration)} in {plan.environment} for "
                          f"{', '.join(sorted(p.value for p in privs))}; ask for less")
        request = self.store.create_request(
            NewRequest(who.user, db, names, tuple(sorted(p.value for p in privs)), int(span.total_seconds()),
                       reason, plan.environment, now + self.limits.pending_ttl, instance=target),
            now,
        )
        self._event(EventType.REQUEST_CREATED, who, request, policy=plan.describe())
        if plan.auto_approve:
            request = self._conclude(request, Decision(
                Approval(SYSTEM, (), "approve", f"auto-approved by policy for {plan.environment}", now),
                RequestStatus.APPROVED, now + span, self._grants_for(request, now, SYSTEM),
            ), now)
            self._event(EventType.REQUEST_APPROVED, None, request, actor=SYSTEM, auto=True)
        return request

    def approve(self, who: Principal, request_id: str, comment: str = "") -> AccessRequest:
        request, plan = self._pending_for_decision(who, request_id)
        now = self.clock()
        approval = Approval(who.user, tuple(who.groups), "approve", comment.strip(), now)
        approvals = (*request.approvals, approval)
        if plan.satisfied(approvals, request.requester):
            done = self._conclude(request, Decision(
                approval, RequestStatus.APPROVED, now + timedelta(seconds=request.duration_s),
                self._grants_for(request, now, who.user),
            ), now)
            self._event(EventType.REQUEST_APPROVED, who, done)
            return done
        done = self._conclude(request, Decision(approval), now)
        self._event(EventType.REQUEST_APPROVAL, who, done, still_needed=plan.describe())
        return done

    def deny(self, who: Principal, request_id: str, comment: str = "") -> AccessRequest:
        request, _ = self._pending_for_decision(who, request_id)
        now = self.clock()
        done = self._conclude(request, Decision(
            Approval(who.user, tuple(who.groups), "deny", comment.strip(), now), RequestStatus.DENIED,
        ), now)
        self._event(EventType.REQUEST_DENIED, who, done)
        return done

    def cancel(self, who: Principal, request_id: str) -> AccessRequest:
        request = self._get(request_id)
        if request.requester != who.user and not self.is_admin(who):
            raise Forbidden("only the requester or an admin can cancel a request")
        if request.status is not RequestStatus.PENDING:
            raise StateConflict(f"request {request_id} is {request.status.value}, not pending")
        done = self._conclude(request, Decision(None, RequestStatus.CANCELLED, by=who.user), self.clock())
        self._event(EventType.REQUEST_CANCELLED, who, done)
        return done

    def expire_pending(self) -> list[AccessRequest]:
        """Pending requests past their deadline become EXPIRED (called periodically)."""
        now = self.clock()
        out = []
        for request in self.store.requests(status=RequestStatus.PENDING, limit=10_000):
            if request.pending_until > now:
                continue
            try:
                done = self.store.record_decision(
                    request.id, Decision(None, RequestStatus.EXPIRED, by=SYSTEM), now
                )
            except (Conflict, NotFound):
                continue  # another replica got there first
            self._event(EventType.REQUEST_EXPIRED, None, done, actor=SYSTEM)
            out.append(done)
        return out

    def get_request(self, who: Principal, request_id: str) -> AccessRequest:
        request = self._get(request_id)
        if request.requester != who.user and not self.is_admin(who) and not self._may_decide(who, request):
            raise Missing(f"no request {request_id}")  # not "forbidden": ids are not an oracle
        return request

    def list_requests(self, who: Principal, status: RequestStatus | None = None, mine: bool = False) -> list[AccessRequest]:
        found = self.store.requests(status=status, requester=who.user if mine else None)
        if mine or self.is_admin(who):
            return found
        return [r for r in found if r.requester == who.user or self._may_decide(who, r)]

    # -- direct grants ---------------------------------------------------------------------------

    def add_grants(
        self,
        who: Principal,
        subject: str,
        objects: list[str],
        privileges: list[str],
        reason: str,
        *,
        duration: timedelta | None = None,
        until: datetime | None = None,
        instance: str | None = None,
    ) -> list[StoredGrant]:
        self._admin(who)
        if not _SUBJECT.match(subject or ""):
            raise Invalid("subject must be user:NAME or group:NAME")
        if not objects:
            raise Invalid("name at least one db.table or db.*")
        target = self._instance(instance)
        now = self.clock()
        span = _span(now, duration, until)
        if span > self.limits.max_grant_duration:
            raise Invalid(f"direct grants last at most {_human(self.limits.max_grant_duration)}; "
                          "put lasting grants in the policy files")
        privs = tuple(sorted(p.value for p in _privileges(privileges or ["SELECT"])))
        targets = [_object(obj) for obj in objects]  # all valid before any is granted
        out = []
        for db, table in targets:
            grant = self.store.add_grant(
                NewGrant(subject, db, table, privs, now + span, who.user, (reason or "").strip(),
                         instance=target),
                now,
            )
            self.audit.emit(EventType.GRANT_ADDED, None, **_actor(who), **grant_fields(grant))
            out.append(grant)
        return out

    def revoke_grant(self, who: Principal, grant_id: str) -> StoredGrant:
        self._admin(who)
        try:
            grant = self.store.revoke_grant(grant_id, who.user, self.clock())
        except NotFound:
            raise Missing(f"no grant {grant_id}") from None
        except Conflict:
            raise StateConflict(f"grant {grant_id} is already revoked") from None
        self.audit.emit(EventType.GRANT_REVOKED, None, **_actor(who), **grant_fields(grant))
        return grant

    def list_grants(self, who: Principal, everyone: bool = False) -> list[StoredGrant]:
        now = self.clock()
        if everyone:
            self._admin(who)
            return self.store.grants(active_at=now)
        subjects = set(who.subjects)
        return [g for g in self.store.grants(active_at=now) if g.subject in subjects]

    # -- helpers -------------------------------------------------------------------------------

    def _admin(self, who: Principal) -> None:
        if not self.is_admin(who):
            raise Forbidden(f"admins only (members of {', '.join(sorted(self.admin_groups)) or 'no group'})")

    def _instance(self, name: str | None) -> str:
        """The instance a request or grant is for: `name` if it is configured, the only one when
        there is one and no name, "*" when no instances are configured."""
        known = list(self.instances)
        if not known:
            if name in (None, "", ANY_INSTANCE):
                return ANY_INSTANCE
            raise Invalid(f"unknown instance {name[:80]!r}: this proxy names no upstream instances; "
                          "leave out --instance")
        if name is None or name == "":
            if len(known) == 1:
                return known[0]
            raise Invalid(f"name the instance: --instance <one of {', '.join(known)}>")
        if name not in self.instances:
            raise Invalid(f"unknown instance {name[:80]!r}: --instance <one of {', '.join(known)}>")
        return name

    def _environment_of(self, instance: str) -> str | None:
        """The instance's configured environment; None: its database's decides."""
        return self.instances.get(instance)

    def _get(self, request_id: str) -> AccessRequest:
        request = self.store.get_request(request_id)
        if request is None:
            raise Missing(f"no request {request_id}")
        return request

    def _plan(self, request: AccessRequest) -> Plan | None:
        try:
            return self.policies().plan(request.db, [Privilege.parse(p) for p in request.privileges],
                                        self._environment_of(request.instance))
        except NoApprovalPolicy:
            return None

    def _may_decide(self, who: Principal, request: AccessRequest) -> bool:
        plan = self._plan(request)
        return plan is not None and plan.may_decide(who)

    def _pending_for_decision(self, who: Principal, request_id: str) -> tuple[AccessRequest, Plan]:
        request = self._get(request_id)
        if request.requester == who.user:
            raise Forbidden("nobody approves or denies their own request")
        plan = self._plan(request)
        if plan is None or not plan.may_decide(who):
            raise Forbidden(f"you are not an approver for {request.environment} "
                            f"({plan.describe() if plan else 'no approval policy applies any more'})")
        if request.status is not RequestStatus.PENDING:
            raise StateConflict(f"request {request_id} is {request.status.value}, not pending")
        if any(a.approver == who.user for a in request.approvals):
            raise StateConflict(f"you already approved request {request_id}")
        return request, plan

    def _conclude(self, request: AccessRequest, decision: Decision, now: datetime) -> AccessRequest:
        try:
            return self.store.record_decision(request.id, decision, now)
        except Conflict:
            raise StateConflict(f"request {request.id} changed meanwhile; look again") from None
        except NotFound:
            raise Missing(f"no request {request.id}") from None

    def _grants_for(self, request: AccessRequest, now: datetime, by: str) -> tuple[NewGrant, ...]:
        until = now + timedelta(seconds=request.duration_s)
        return tuple(
            NewGrant(f"user:{request.requester}", request.db, table, request.privileges, until, by,
                     request.reason, request.id, instance=request.instance)
            for table in request.tables
        )

    def _event(self, event_type: str, who: Principal | None, request: AccessRequest, **extra: Any) -> None:
        body = request_fields(request)
        actor = _actor(who) if who is not None else {}
        self.audit.emit(event_type, None, **actor, **body, **extra)
        note = {**body, "actor": who.user if who else extra.get("actor", SYSTEM)}
        if request.status is RequestStatus.PENDING:
            note["approve_command"] = f"jitproxy request approve {request.id}"
        self.notify(event_type, note)


# -- shapes shared with the API ----------------------------------------------------------------


def request_fields(r: AccessRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "requester": r.requester,
        "instance": r.instance,
        "db": r.db,
        "tables": list(r.tables),
        "privileges": list(r.privileges),
        "duration_s": r.duration_s,
        "reason": r.reason,
        "environment": r.environment,
        "status": r.status.value,
        "created_at": r.created_at.isoformat(),
        "pending_until": r.pending_until.isoformat(),
        "access_until": r.access_until.isoformat() if r.access_until else None,
        "approvals": [
            {"approver": a.approver, "decision": a.decision, "comment": a.comment, "at": a.at.isoformat()}
            for a in r.approvals
        ],
        "grant_ids": list(r.grant_ids),
        "status_by": r.status_by,
    }


def grant_fields(g: StoredGrant) -> dict[str, Any]:
    return {
        "grant_id": g.id,
        "subject": g.subject,
        "instance": g.instance,
        "object": f"{g.db}.{g.table}",
        "privileges": list(g.privileges),
        "expires_at": g.expires_at.isoformat(),
        "created_by": g.created_by,
        "reason": g.reason,
        "request_id": g.request_id,
        "revoked_at": g.revoked_at.isoformat() if g.revoked_at else None,
        "revoked_by": g.revoked_by,
    }


def _actor(who: Principal) -> dict[str, Any]:
    """The person acting is the event's person (`user`, `groups`) and its `actor`."""
    return {"actor": who.user, "actor_groups": list(who.groups), "user": who.user, "groups": list(who.groups)}


def _name(text: str, what: str) -> str:
    if not isinstance(text, str) or not _NAME.match(text):
        raise Invalid(f"{what} name {text!r}: letters, digits, _ $ - only")
    return text


def _object(text: str) -> tuple[str, str]:
    """db.table or db.* by the policy files' own rule; *.* is for the policy files only."""
    try:
        db, table = split_object(text)
    except PolicyError as e:
        raise Invalid(str(e)) from None
    if db == "*":
        raise Invalid(f"{text!r}: name db.table or db.* (use the policy files for *.*)")
    _name(db, "database")
    if table != "*":
        _name(table, "table")
    return db, table


def _privileges(values: list[str]) -> frozenset[Privilege]:
    try:
        return frozenset(Privilege.parse(v) for v in values)
    except ValueError as e:
        raise Invalid(str(e)) from None


def _span(now: datetime, duration: timedelta | None, until: datetime | None) -> timedelta:
    if (duration is None) == (until is None):
        raise Invalid("give a duration (--for 4h) or an end time (--until), not both")
    if until is not None:
        if until.tzinfo is None:
            raise Invalid("--until needs a time zone, e.g. 2026-11-21T18:00:00Z")
        duration = until - now
    assert duration is not None
    if duration <= timedelta(0):
        raise Invalid("the access would end before it starts")
    return duration


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"
