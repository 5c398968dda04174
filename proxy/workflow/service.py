"""The just-in-time access workflow: requests, approvals, direct grants, expiry, giving access
back early.

Synchronous and free of HTTP: the admin API (proxy.api) calls it in a worker thread, tests call
it directly. Every state change is one store transaction, then an audit event naming the person
who caused it, then (through `notify`) the approvers' webhooks. Who may do what:

- anyone with a token: create a request for themselves, cancel their own pending request,
  release (give back early) their own access, see their own requests and access;
- an approver of the policy that applies (proxy.workflow.approvals): approve or deny a pending
  request of somebody else (nobody approves their own, also not through a group);
- an admin (a member of `admin_groups`): everything, including direct grants and revocation.

Time: a request asks for a duration (`--for 1h`: from its approval) or an absolute end
(`--until 14:50`: its access ends then, however late it is approved; once that end has passed
it can no longer be approved). Direct grants end within their environment's maximum (the
approval policies' `max_duration`) unless an admin breaks glass: a stated reason, audited
(`grant.break_glass`) and notified.

Requests are checked before they are stored: the database and the tables must exist on the
instance (read live through `schema`, proxy.workflow.live_schema.LiveSchema; a name that does not is refused
with the closest ones; a database that cannot be asked refuses the request with 503 rather than
storing what nobody could check); `*` (every table) only where the approval policy allows it
(`wildcard_tables`); one asking again for what a pending request of the same person already
asks is answered with that request; one for access the person already holds until at least the
end asked for (policy files, requests, direct grants) is refused with what they hold.

Break glass, for on-call people: a request with `break_glass` (`jitproxy request create
--break-glass --reason ...`) by someone a break-glass entry of the database's environment names
(proxy.workflow.approvals.BreakGlassRule: who, privileges, max_duration) is approved at once, its
grants marked `break_glass`, audited and notified loudly (`request.break_glass`). Its reviewers
(the entry's `reviewers`, else the environment's approvers; admins too; never the requester)
review it after the fact with `approve` (it stays: "reviewed") or `deny` (what it still grants is
revoked at once), audited as `request.reviewed`; a review is an approval row recorded on the
approved request, so the view's `review` says "pending", "approved by X" or "denied by X".

Statuses are those of proxy.workflow.status: `view(request)` is a request as it is shown
(derived from its grants and the clock), in the API and in every audit event.

Upstream instances: with `instances` named (the config's `upstreams`), every request and direct
grant is for one of them (named, or implied when there is only one), and the grants it makes
apply on that instance only. Without (one `upstream:`), everything is for "*", every instance,
as before instances existed. A request's environment, and so its approval policy, is its
database's on its instance (`environments`, proxy.environments): what its statements say too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from proxy.audit.events import AuditEmitter, EventType
from proxy.authz.model import Grant, Principal, Privilege
from proxy.authz.policy import PolicyError, split_object
from proxy.environments import Environments
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
from proxy.timespec import format_duration
from proxy.workflow.approvals import ApprovalPolicies, NoApprovalPolicy, NoBreakGlass, Plan, request_plan
from proxy.workflow.grants import covering, grant_fields, policy_row, stored_row, to_grant
from proxy.workflow.status import (
    RELEASED,
    REQUEST_STATUSES,
    REVOKED,
    SYSTEM,
    grant_status,
    request_objects,
    request_status,
    review_of,
    review_text,
)

__all__ = ["AccessService", "Forbidden", "Invalid", "Limits", "Missing", "Schema", "SchemaUnavailable",
           "StateConflict", "Unavailable", "WorkflowError", "grant_fields", "request_fields"]

_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
EXTENDS = "extends "  # how an extension's reason begins: "extends g-... [of request r-...]: why"
_SUBJECT = re.compile(r"^(user|group):[A-Za-z0-9._@-]{1,80}$")
# Statuses the store records as such; the others are derived from an approved request's grants.
_STORED = {status.value: status for status in (RequestStatus.PENDING, RequestStatus.DENIED, RequestStatus.CANCELLED)}
# A request whose access ended early, by its status: the event that says so.
_ENDED_EARLY = {REVOKED: EventType.REQUEST_REVOKED, RELEASED: EventType.REQUEST_RELEASED}


class WorkflowError(Exception):
    status = 400

    def __init__(self, message: str, existing: Any = None) -> None:
        """`existing`: what is already there (a request, grants), for the API's answer."""
        super().__init__(message)
        self.message = message
        self.existing = existing


class Invalid(WorkflowError):
    status = 400


class Forbidden(WorkflowError):
    status = 403


class Missing(WorkflowError):
    status = 404


class StateConflict(WorkflowError):
    status = 409


class Unavailable(WorkflowError):
    status = 503


class SchemaUnavailable(Exception):
    """The instance's database could not say what it holds (the message says why, naming no
    host or credential)."""


class Schema(Protocol):
    """What an instance's database holds, read live ("*": on every instance). Raises
    SchemaUnavailable."""

    def databases(self, instance: str) -> frozenset[str]: ...

    def tables(self, instance: str, db: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class Limits:
    pending_ttl: timedelta = timedelta(hours=24)  # a request nobody decides expires
    max_grant_duration: timedelta = timedelta(days=7)  # direct grants by admins, even breaking glass
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
        instances: Sequence[str] = (),
        environments: Environments = Environments(),
        schema: Schema | None = None,
        console_url: str | None = None,
    ) -> None:
        """`instances`: the names requests and grants must be for (configuration order); empty:
        everything is for "*". `environments`: every instance's (proxy.environments).
        `schema`: the live schema requests are checked against (None: not checked).
        `console_url`: where browsers reach the web console's host (config.Config.console_url):
        notifications link to each request's page there (None: no links)."""
        self.store = store
        self.policies = policies
        self.audit = audit
        self.clock = clock
        self.admin_groups = admin_groups
        self.notify = notify
        self.limits = limits
        self.instances = tuple(instances)
        self.environments = environments
        self.schema = schema
        self.console_url = console_url.rstrip("/") if console_url else None

    # -- roles ---------------------------------------------------------------------------------

    def is_admin(self, who: Principal) -> bool:
        return bool(self.admin_groups & set(who.groups))

    # -- requests ------------------------------------------------------------------------------

    def create_request(self, *args: Any, **kwargs: Any) -> AccessRequest:
        """`submit_request`'s request alone: the new one, or the person's pending request that
        already asks for all of it."""
        return self.submit_request(*args, **kwargs)[0]

    def submit_request(
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
        break_glass: bool = False,
    ) -> tuple[AccessRequest, bool]:
        """(request, True) when a request was made; (their pending request, False) when one
        already asks for all of it. StateConflict when they already hold it all, naming it.
        `break_glass`: an on-call person's, approved at once (`_break_glass_request`)."""
        now = self.clock()
        reason = self._reason(reason, "--break-glass needs --reason") if break_glass else self._reason(reason)
        if not tables:
            raise Invalid("name at least one table (--table)")
        db = _name(db, "database")
        names = _tables(tables)
        privs = _privileges(privileges or ["SELECT"])
        target = self._instance(instance)
        span, ends_at = _span(now, duration, until)
        self._check_schema(target, db, names)  # first: what does not exist has no environment either
        if break_glass:
            return self._break_glass_request(who, db, names, privs, reason, target, now, span, ends_at), True
        policies = self.policies()
        try:
            plan = self.plan_for(target, db, privs, policies)
        except NoApprovalPolicy as e:
            raise Forbidden(str(e)) from None
        if span > plan.max_duration:
            raise Invalid(f"at most {format_duration(plan.max_duration)} in {plan.environment} for "
                          f"{', '.join(sorted(p.value for p in privs))}; ask for less")
        if names == ("*",) and not plan.wildcard_tables:
            raise Forbidden(f"every table of {db} (--table '*') cannot be requested in {plan.environment}: name the "
                            "tables you need (its approval policy would allow it with wildcard_tables: true)")
        asked = tuple(sorted(p.value for p in privs))
        pending = self._pending_like(who, target, db, names, asked)
        if pending is not None:
            return pending, False
        self._refuse_if_held(who, policies, target, db, names, privs, now, now + span)
        pending_until = now + self.limits.pending_ttl
        if ends_at is not None:  # nobody can approve it after its end: no point waiting longer
            pending_until = min(pending_until, ends_at)
        request = self.store.create_request(
            NewRequest(who.user, db, names, asked, int(span.total_seconds()), reason, plan.environment,
                       pending_until, instance=target, ends_at=ends_at),
            now,
        )
        self._event(EventType.REQUEST_CREATED, who, request, policy=plan.describe())
        if plan.auto_approve:
            request = self._conclude(request, Decision(
                Approval(SYSTEM, (), "approve", f"auto-approved by policy for {plan.environment}", now),
                RequestStatus.APPROVED, _access_end(request, now), self._grants_for(request, now, SYSTEM),
            ), now)
            self._event(EventType.REQUEST_APPROVED, None, request, actor=SYSTEM, auto=True)
        return request, True

    def approve(self, who: Principal, request_id: str, comment: str = "") -> AccessRequest:
        if self._get(request_id).break_glass:  # approved already: this is its review
            return self._review(who, request_id, True, comment)
        request, plan = self._pending_for_decision(who, request_id)
        now = self.clock()
        if request.ends_at is not None and request.ends_at <= now:
            raise StateConflict(f"request {request_id} asked for access until {request.ends_at.isoformat()}, "
                                f"which has passed: it can no longer be approved ({request.requester} can ask again)")
        approval = Approval(who.user, tuple(who.groups), "approve", comment.strip(), now)
        approvals = (*request.approvals, approval)
        if plan.satisfied(approvals, request.requester):
            done = self._conclude(request, Decision(
                approval, RequestStatus.APPROVED, _access_end(request, now),
                self._grants_for(request, now, who.user),
            ), now)
            self._event(EventType.REQUEST_APPROVED, who, done)
            return done
        done = self._conclude(request, Decision(approval), now)
        self._event(EventType.REQUEST_APPROVAL, who, done, still_needed=plan.describe())
        return done

    def deny(self, who: Principal, request_id: str, comment: str = "") -> AccessRequest:
        if self._get(request_id).break_glass:  # approved already: denying it in review revokes it
            return self._review(who, request_id, False, comment)
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
        if request.status is RequestStatus.APPROVED:
            raise StateConflict(f"request {request_id} is already approved: to give its access back, run "
                                f"jitproxy request release {request_id}")
        if request.status is not RequestStatus.PENDING:
            raise StateConflict(f"request {request_id} is {request.status.value}, not pending")
        done = self._conclude(request, Decision(None, RequestStatus.CANCELLED, by=who.user), self.clock())
        self._event(EventType.REQUEST_CANCELLED, who, done)
        return done

    def release_request(self, who: Principal, request_id: str, reason: str = "") -> AccessRequest:
        """The requester gives back what their approved request still grants (audited)."""
        request = self.get_request(who, request_id)
        if request.requester != who.user:
            raise Forbidden(f"only {request.requester} can give back their own access; admins revoke its grants "
                            "(jitproxy grant revoke)")
        if request.status is RequestStatus.PENDING:
            raise StateConflict(f"request {request_id} is pending, not approved: jitproxy request cancel {request_id}")
        now = self.clock()
        active = [g for g in self.store.grants(ids=request.grant_ids) if g.active(now)]
        if request.status is not RequestStatus.APPROVED or not active:
            raise StateConflict(f"request {request_id} is {self.view(request)['status']}: it grants nothing now")
        for grant in active:
            self._end_grant(who, grant, reason, released=True)
        return self._get(request_id)

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

    def list_requests(self, who: Principal, status: str | None = None, mine: bool = False) -> list[dict[str, Any]]:
        """The requests `who` may see (theirs; those they may decide; admins: all), as shown,
        newest first; `status`: one of proxy.workflow.status.REQUEST_STATUSES."""
        if status is not None and status not in REQUEST_STATUSES:
            raise Invalid(f"status {status!r}: one of {', '.join(REQUEST_STATUSES)}")
        found = self.store.requests(status=_STORED.get(status or ""), requester=who.user if mine else None)
        if not (mine or self.is_admin(who)):
            found = [r for r in found if r.requester == who.user or self._may_decide(who, r)]
        return [v for v in self.views(found) if status is None or v["status"] == status]

    def view(self, request: AccessRequest) -> dict[str, Any]:
        """`request` as it is shown: its fields with the status its grants and the clock give."""
        return self.views([request])[0]

    def views(self, requests: Sequence[AccessRequest]) -> list[dict[str, Any]]:
        grants = self.store.grants(ids=[g for r in requests for g in r.grant_ids]) if requests else []
        now = self.clock()
        return [{**request_fields(r, grants, now), "progress": self._progress(r),
                 "reviewers": sorted(self._reviewers(r)) if r.break_glass else None} for r in requests]

    def request_url(self, request_id: str) -> str | None:
        """The request's page in the web console, for notifications (None: no console URL known)."""
        return f"{self.console_url}/console/requests/{request_id}" if self.console_url else None

    def plan_for(self, instance: str, db: str, privileges: Iterable[Privilege],
                 policies: ApprovalPolicies | None = None) -> Plan:
        """The approval rules for `privileges` on `db` on `instance` (approvals.request_plan);
        NoApprovalPolicy when nobody can request them."""
        return request_plan(policies or self.policies(), self.environments, instance, db, privileges)

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
        break_glass: bool = False,
    ) -> list[StoredGrant]:
        """Grants until the end given, within the environment's maximum (its approval
        policies' max_duration for these privileges) unless `break_glass`, which needs a reason
        and is audited and notified; never beyond `limits.max_grant_duration`."""
        self._admin(who)
        if not _SUBJECT.match(subject or ""):
            raise Invalid("subject must be user:NAME or group:NAME")
        if not objects:
            raise Invalid("name at least one db.table or db.*")
        reason = self._reason(reason, "--break-glass needs --reason") if break_glass else (reason or "").strip()
        target = self._instance(instance)
        now = self.clock()
        span, _ = _span(now, duration, until)
        if span > self.limits.max_grant_duration:
            raise Invalid(f"direct grants last at most {format_duration(self.limits.max_grant_duration)}; "
                          "put lasting grants in the policy files")
        privs = _privileges(privileges or ["SELECT"])
        targets = [_object(obj) for obj in objects]  # all valid before any is granted
        limits = [limit for limit in (self._environment_limit(db, privs, target) for db, _ in targets) if limit]
        over = [(env, most) for env, most in limits if span > most]
        if over and not break_glass:
            env, most = over[0]
            raise Invalid(f"at most {format_duration(most)} in {env} for "
                          f"{', '.join(sorted(p.value for p in privs))} (its approval policy); for an emergency, "
                          "--break-glass --reason '...' (audited and notified)")
        names = tuple(sorted(p.value for p in privs))
        out = []
        for db, table in targets:
            grant = self.store.add_grant(
                NewGrant(subject, db, table, names, now + span, who.user, reason, instance=target,
                         break_glass=break_glass),
                now,
            )
            self.audit.emit(EventType.GRANT_ADDED, None, **_actor(who), **self._grant_view(grant))
            out.append(grant)
        if break_glass:
            self._break_glass(who, out, span, (over or limits or [None])[0])
        return out

    def revoke_grant(self, who: Principal, grant_id: str, reason: str = "") -> StoredGrant:
        try:
            self._admin(who)
        except Forbidden as e:
            raise Forbidden(f"{e.message}; to give back your own access: jitproxy access release {grant_id}") from None
        return self._end_grant(who, self._grant(grant_id), reason, released=False)

    def release_grant(self, who: Principal, grant_id: str, reason: str = "") -> StoredGrant:
        """The person holding a grant gives it back early (a group's grant is not one member's
        to give back: an admin revokes it)."""
        grant = self._grant(grant_id)
        if grant.subject != f"user:{who.user}":
            if grant.subject.startswith("group:") and grant.subject in who.subjects:
                raise Forbidden(f"grant {grant_id} is {grant.subject}'s, not yours alone: an admin can revoke it")
            raise Missing(f"no grant {grant_id}")  # somebody else's: ids are not an oracle
        return self._end_grant(who, grant, reason, released=True)

    def extend_grant(self, who: Principal, grant_id: str, reason: str, *, duration: timedelta | None = None,
                     until: datetime | None = None) -> StoredGrant:
        """Let a person's active grant run longer, within policy: until `until` (or `duration`
        from now), no later than its environment's maximum (the approval policies' max_duration
        for its privileges) counted from the grant's start. By an admin, or an approver whose
        approval alone would have granted it (so a two-approval request is not extended by one
        approver); never one's own access (ask again instead). The store keeps a grant's end as
        it was made: a new grant by the extender continues it from now to the new end (same
        person, table, privileges and instance; its reason begins "extends <grant id>"), and the
        one extended runs out at its own end (or is revoked on its own). Audited (grant.added
        with `extends`)."""
        grant = self._grant(grant_id)
        now = self.clock()
        if grant.subject == f"user:{who.user}":
            raise Forbidden("nobody extends their own access: ask for more time with a new request")
        if not grant.active(now):
            raise StateConflict(f"grant {grant_id} is {grant_status(grant, now).word}: ask for new access instead")
        if grant.break_glass and grant.request_id:  # its review must be able to take all of it back
            raise StateConflict(f"grant {grant_id} is of break-glass request {grant.request_id}: it is not extended "
                                "(the person breaks glass again, or asks for access)")
        reason = self._reason(reason)
        span, _ = _span(now, duration, until)
        end = now + span
        if end <= grant.expires_at:
            raise Invalid(f"grant {grant_id} already runs until {grant.expires_at.isoformat()}: give a later end")
        try:
            plan = self.plan_for(grant.instance, grant.db, [Privilege.parse(p) for p in grant.privileges])
        except NoApprovalPolicy as e:
            raise Forbidden(f"{e}: it cannot be extended within policy (an admin can grant it anew: "
                            "jitproxy grant add)") from None
        person = grant.subject.partition(":")[2] if grant.subject.startswith("user:") else None
        alone = Approval(who.user, tuple(who.groups), "approve", reason, now)
        if not self.is_admin(who) and not (person and plan.may_decide(who) and plan.satisfied((alone,), person)):
            raise Forbidden(f"extending {grant.subject}'s access in {plan.environment} is for admins and approvers "
                            f"whose approval alone grants it ({plan.describe()})")
        began = self._first_of(grant).created_at  # an extension of an extension counts from the first
        if end - began > plan.max_duration:
            raise Invalid(f"at most {format_duration(plan.max_duration)} in {plan.environment} for "
                          f"{', '.join(sorted(grant.privileges))} from its start at {began.isoformat()}: "
                          f"until {(began + plan.max_duration).isoformat()} at the latest")
        if span > self.limits.max_grant_duration:
            raise Invalid(f"grants last at most {format_duration(self.limits.max_grant_duration)}")
        origin = f" of request {grant.request_id}" if grant.request_id else ""
        extension = self.store.add_grant(
            NewGrant(grant.subject, grant.db, grant.table, grant.privileges, end, who.user,
                     f"{EXTENDS}{grant.id}{origin}: {reason}", instance=grant.instance), now)
        self.audit.emit(EventType.GRANT_ADDED, None, **_actor(who), **self._grant_view(extension), extends=grant.id)
        return extension

    def list_grants(self, who: Principal, everyone: bool = False) -> list[StoredGrant]:
        now = self.clock()
        if everyone:
            self._admin(who)
            return self.store.grants(active_at=now)
        subjects = set(who.subjects)
        return [g for g in self.store.grants(active_at=now) if g.subject in subjects]

    def policy_grants(self, who: Principal, everyone: bool = False) -> list[Grant]:
        """The policy files' grants in effect now: `who`'s, or (admins) everyone's."""
        if everyone:
            self._admin(who)
        now = self.clock()
        subjects = set(who.subjects)
        return [g for g in self.policies().grants if g.active(now) and (everyone or g.subject in subjects)]

    def grant_rows(self, who: Principal, everyone: bool = False) -> list[dict[str, Any]]:
        """Every grant in effect, each with its source: the policy files' first, then the
        store's (requests and direct grants), for `jitproxy grant list`."""
        now = self.clock()
        return [*(policy_row(g) for g in self.policy_grants(who, everyone)),
                *(stored_row(g, now) for g in self.list_grants(who, everyone))]

    # -- break glass (on-call people) ----------------------------------------------------------

    def _break_glass_request(self, who: Principal, db: str, tables: tuple[str, ...],
                             privileges: frozenset[Privilege], reason: str, instance: str, now: datetime,
                             span: timedelta, ends_at: datetime | None) -> AccessRequest:
        """An on-call person's request under a break-glass entry of the database's environment:
        approved at once (its grants marked break_glass), audited and notified loudly
        (request.break_glass); reviewed afterwards (`approve`, `deny`)."""
        policies = self.policies()
        where = db if instance == ANY_INSTANCE else f"{db} on {instance}"
        try:
            rule = policies.break_glass_rule(self.environments.of(instance, db), who, privileges, where)
        except NoBreakGlass as e:
            raise Forbidden(str(e)) from None
        most = min(rule.max_duration, self.limits.max_grant_duration)
        if span > most:
            raise Invalid(f"break glass in {rule.environment} lasts at most {format_duration(most)} for "
                          f"{', '.join(sorted(p.value for p in privileges))}; ask for less")
        if tables == ("*",) and not rule.wildcard_tables:
            raise Forbidden(f"every table of {db} (--table '*') cannot be asked for by breaking glass in "
                            f"{rule.environment}: name the tables you need")
        self._refuse_if_held(who, policies, instance, db, tables, privileges, now, now + span)
        request = self.store.create_request(
            NewRequest(who.user, db, tables, tuple(sorted(p.value for p in privileges)), int(span.total_seconds()),
                       reason, rule.environment, now + span, instance=instance, ends_at=ends_at, break_glass=True),
            now,
        )
        request = self._conclude(request, Decision(
            Approval(SYSTEM, (), "approve", f"at once: {rule.describe()}", now), RequestStatus.APPROVED,
            _access_end(request, now), self._grants_for(request, now, who.user),
        ), now)
        self._event(EventType.REQUEST_BREAK_GLASS, who, request, policy=rule.describe(),
                    max_duration_s=int(most.total_seconds()))
        return request

    def _review(self, who: Principal, request_id: str, approve: bool, comment: str) -> AccessRequest:
        """A reviewer's decision on a break-glass request, after the fact (also once its access
        has ended): approving keeps it as it is; denying revokes what it still grants, at once.
        A deny whose revocations did not all happen (the store failed midway) finishes them
        when it is given again."""
        request = self._get(request_id)
        if request.requester == who.user:
            raise Forbidden("nobody reviews their own break-glass request")
        if not self.is_admin(who) and not self._may_review(who, request):
            reviewers = ", ".join(sorted(self._reviewers(request))) or "none named any more"
            raise Forbidden(f"you are not a reviewer of break glass in {request.environment} (reviewers: {reviewers}; "
                            "and admins)")
        if request.status is not RequestStatus.APPROVED:
            raise StateConflict(f"request {request_id} is {self.view(request)['status']}: nothing was granted to review")
        now = self.clock()
        active = [g for g in self.store.grants(ids=request.grant_ids) if g.active(now)]
        earlier = review_of(request)
        if earlier is None:
            decision = Approval(who.user, tuple(who.groups), "approve" if approve else "deny", comment.strip(), now)
            request = self._conclude(request, Decision(decision), now, expected=RequestStatus.APPROVED)
            self._event(EventType.REQUEST_REVIEWED, who, request, revokes=[] if approve else [g.id for g in active])
        elif approve or earlier.decision != "deny" or not active:
            raise StateConflict(f"request {request_id} is already reviewed: {review_text(request)}")
        if not approve:
            why = "break glass denied in review" + (f": {comment.strip()}" if comment.strip() else "")
            for grant in active:
                self._end_grant(who, grant, why, released=False)
        return self._get(request_id)

    def _reviewers(self, request: AccessRequest) -> frozenset[str]:
        """Who reviews a break-glass request (besides admins), by the policies in effect now."""
        return self.policies().reviewers(request.environment, [Privilege.parse(p) for p in request.privileges])

    def _may_review(self, who: Principal, request: AccessRequest) -> bool:
        return bool(self._reviewers(request) & set(who.subjects))

    # -- helpers -------------------------------------------------------------------------------

    def _admin(self, who: Principal) -> None:
        if not self.is_admin(who):
            raise Forbidden(f"admins only (members of {', '.join(sorted(self.admin_groups)) or 'no group'})")

    def _reason(self, text: str | None, what: str = "a reason is required") -> str:
        reason = (text or "").strip()
        least = self.limits.min_reason_chars
        if not reason:
            raise Invalid(f"{what}: at least {least} characters (an incident or ticket id, what you need to do)")
        if len(reason) < least:
            raise Invalid(f"the reason {reason!r} is too short: at least {least} characters "
                          "(an incident or ticket id, what you need to do)")
        return reason

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

    def _environment_limit(self, db: str, privileges: frozenset[Privilege], instance: str) -> tuple[str, timedelta] | None:
        """(environment, the longest a request for these privileges may last there); None when
        no approval policy lets anyone request them (only limits.max_grant_duration applies)."""
        try:
            plan = self.plan_for(instance, db, privileges)
        except NoApprovalPolicy:
            return None
        return plan.environment, plan.max_duration

    def _check_schema(self, instance: str, db: str, tables: tuple[str, ...]) -> None:
        """Invalid when `db` or one of `tables` does not exist on the instance, naming the
        closest names; Unavailable when its database cannot say."""
        if self.schema is None:
            return
        where = "" if instance == ANY_INSTANCE else f" on {instance}"
        try:
            databases = self.schema.databases(instance)
            if db not in databases:
                raise Invalid(f"no database {db!r}{where}{_closest(db, databases)}")
            if tables == ("*",):
                return
            present = self.schema.tables(instance, db)
        except SchemaUnavailable as e:
            raise Unavailable(f"the request was not stored: it could not be checked against the database{where} "
                              f"({e}); try again shortly") from None
        for table in tables:
            if table not in present:
                raise Invalid(f"no table {table!r} in {db}{where}{_closest(table, present)}")

    def _progress(self, request: AccessRequest) -> str | None:
        """How far a pending request has got (Plan.progress); None once it is decided, or when
        no person's approval is waited for."""
        plan = self._plan(request) if request.status is RequestStatus.PENDING else None
        return (plan.progress(request.approvals, request.requester) or None) if plan is not None else None

    def _get(self, request_id: str) -> AccessRequest:
        request = self.store.get_request(request_id)
        if request is None:
            raise Missing(f"no request {request_id}")
        return request

    def _first_of(self, grant: StoredGrant) -> StoredGrant:
        """The grant a chain of extensions began with (`grant` itself when it extends none)."""
        seen = {grant.id}
        while grant.reason.startswith(EXTENDS):
            prior = grant.reason[len(EXTENDS):].split(":", 1)[0].split(" ", 1)[0]
            found = self.store.get_grant(prior)
            if found is None or found.id in seen:
                break
            seen.add(found.id)
            grant = found
        return grant

    def _grant(self, grant_id: str) -> StoredGrant:
        grant = self.store.get_grant(grant_id)
        if grant is None:
            raise Missing(f"no grant {grant_id}")
        return grant

    def _plan(self, request: AccessRequest) -> Plan | None:
        try:
            return self.plan_for(request.instance, request.db, [Privilege.parse(p) for p in request.privileges])
        except NoApprovalPolicy:
            return None

    def _may_decide(self, who: Principal, request: AccessRequest) -> bool:
        if request.break_glass:
            return self._may_review(who, request)
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
            raise StateConflict(f"request {request_id} is {self.view(request)['status']}, not pending")
        if any(a.approver == who.user for a in request.approvals):
            raise StateConflict(f"you already approved request {request_id}")
        return request, plan

    def _pending_like(self, who: Principal, instance: str, db: str, tables: tuple[str, ...],
                      privileges: tuple[str, ...]) -> AccessRequest | None:
        """The person's pending request that already asks for all of this, if any."""
        for r in self.store.requests(status=RequestStatus.PENDING, requester=who.user):
            if (r.instance == instance and r.db == db and set(privileges) <= set(r.privileges)
                    and (r.tables == ("*",) or set(tables) <= set(r.tables))):
                return r
        return None

    def _refuse_if_held(self, who: Principal, policies: ApprovalPolicies, instance: str, db: str,
                        tables: tuple[str, ...], privileges: frozenset[Privilege], now: datetime,
                        until: datetime) -> None:
        """StateConflict naming the grants (any source) that already give all of it until `until`."""
        subjects = set(who.subjects)
        candidates: list[tuple[Grant, dict[str, Any]]] = [
            (g, policy_row(g)) for g in policies.grants if g.subject in subjects and g.active(now)]
        candidates += [(to_grant(s), stored_row(s, now)) for s in self.store.grants(active_at=now)
                       if s.subject in subjects]
        held = covering([g for g, _ in candidates], instance, db, tables, privileges, until)
        if held is None:
            return
        found = [row for g, row in candidates if any(g is h for h in held)]
        what = f"{', '.join(sorted(p.value for p in privileges))} on {request_objects(db, tables)}"
        raise StateConflict(f"you already hold {what}: " + "; ".join(_held_text(r) for r in found), existing=found)

    def _conclude(self, request: AccessRequest, decision: Decision, now: datetime,
                  expected: RequestStatus = RequestStatus.PENDING) -> AccessRequest:
        try:
            return self.store.record_decision(request.id, decision, now, expected=expected)
        except Conflict:
            raise StateConflict(f"request {request.id} changed meanwhile; look again") from None
        except NotFound:
            raise Missing(f"no request {request.id}") from None

    def _grants_for(self, request: AccessRequest, now: datetime, by: str) -> tuple[NewGrant, ...]:
        until = _access_end(request, now)
        return tuple(
            NewGrant(f"user:{request.requester}", request.db, table, request.privileges, until, by,
                     request.reason, request.id, instance=request.instance, break_glass=request.break_glass)
            for table in request.tables
        )

    def _end_grant(self, who: Principal, grant: StoredGrant, reason: str, *, released: bool) -> StoredGrant:
        """Revoke or release `grant` now; when that ends its request's last grant, the request's
        own event (request.revoked / request.released) follows the grant's."""
        try:
            ended = self.store.revoke_grant(grant.id, who.user, self.clock(), reason=(reason or "").strip() or None,
                                            released=released)
        except NotFound:
            raise Missing(f"no grant {grant.id}") from None
        except Conflict as e:
            raise StateConflict(str(e)) from None
        self.audit.emit(EventType.GRANT_RELEASED if released else EventType.GRANT_REVOKED, None, **_actor(who),
                        **self._grant_view(ended))
        if ended.request_id is not None:
            request = self._get(ended.request_id)
            status = self.view(request)["status"]
            if status in _ENDED_EARLY:
                self._event(_ENDED_EARLY[status], who, request)
        return ended

    def _grant_view(self, grant: StoredGrant) -> dict[str, Any]:
        return {**grant_fields(grant), **grant_status(grant, self.clock()).fields()}

    def _break_glass(self, who: Principal, grants: list[StoredGrant], span: timedelta,
                     limit: tuple[str, timedelta] | None) -> None:
        """One loud event for the audit trail and the notification targets. `limit`: the
        environment and its maximum that the grants go beyond (or would have been held to)."""
        first = grants[0]
        body = {
            "grant_ids": [g.id for g in grants],
            "subject": first.subject,
            "requester": first.subject.partition(":")[2],
            "instance": first.instance,
            "db": ",".join(dict.fromkeys(g.db for g in grants)),
            "tables": [f"{g.db}.{g.table}" for g in grants],
            "privileges": list(first.privileges),
            "duration_s": int(span.total_seconds()),
            "expires_at": first.expires_at.isoformat(),
            "environment": limit[0] if limit else None,
            "max_duration_s": int(limit[1].total_seconds()) if limit else None,
            "reason": first.reason,
            "status": "active",
        }
        self.audit.emit(EventType.GRANT_BREAK_GLASS, None, **_actor(who), **body)
        self.notify(EventType.GRANT_BREAK_GLASS, {**body, "id": ", ".join(body["grant_ids"]), "actor": who.user})

    def _event(self, event_type: str, who: Principal | None, request: AccessRequest, **extra: Any) -> None:
        body = self.view(request)
        actor = _actor(who) if who is not None else {}
        self.audit.emit(event_type, None, **actor, **body, **extra)
        note = {**body, "actor": who.user if who else extra.get("actor", SYSTEM)}
        if request.status is RequestStatus.PENDING:
            note["approve_command"] = f"jitproxy request approve {request.id}"
        elif body.get("review") == "pending":  # break glass: the reviewers' two answers
            note["review_command"] = f"jitproxy request approve {request.id}"
            note["revoke_command"] = f"jitproxy request deny {request.id} --comment '...'"
        if (url := self.request_url(request.id)) is not None:
            note["console_url"] = url
        self.notify(event_type, note)


# -- shapes shared with the API ----------------------------------------------------------------


def request_fields(r: AccessRequest, grants: Sequence[StoredGrant] = (), now: datetime | None = None) -> dict[str, Any]:
    """The request's fields; with its grants and `now`, its status as shown (status, status_by,
    status_at, status_reason: proxy.workflow.status), else the status the store recorded."""
    fields = {
        "id": r.id,
        "requester": r.requester,
        "instance": r.instance,
        "db": r.db,
        "tables": list(r.tables),
        "objects": request_objects(r.db, r.tables),
        "privileges": list(r.privileges),
        "duration_s": r.duration_s,
        "ends_at": r.ends_at.isoformat() if r.ends_at else None,
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
        "break_glass": r.break_glass,
        "review": review_text(r),  # break glass: "pending", "approved by X", "denied by X"; else None
    }
    if now is not None:
        own = [g for g in grants if g.id in r.grant_ids]
        fields.update(request_status(r, own, now).fields())
        fields["grants"] = [{**grant_fields(g), **grant_status(g, now).fields()} for g in own]
    return fields


def _access_end(request: AccessRequest, approved_at: datetime) -> datetime:
    """The absolute end it asked for, else its duration from the approval."""
    return request.ends_at or approved_at + timedelta(seconds=request.duration_s)


def _closest(name: str, names: Iterable[str]) -> str:
    """": did you mean salary, salaries?" (by likeness, case aside), or "" when none is close."""
    by_lower = {n.lower(): n for n in sorted(names)}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(by_lower[f] for f in found)}?" if found else ""


def _held_text(row: Mapping[str, Any]) -> str:
    until = row["expires_at"] or "no expiry"
    return f"{row['object']} {','.join(row['privileges'])} until {until} ({row['source']})"


def _actor(who: Principal) -> dict[str, Any]:
    """The person acting is the event's person (`user`, `groups`) and its `actor`."""
    return {"actor": who.user, "actor_groups": list(who.groups), "user": who.user, "groups": list(who.groups)}


def _name(text: str, what: str) -> str:
    if not isinstance(text, str) or not _NAME.match(text):
        raise Invalid(f"{what} name {text!r}: letters, digits, _ $ - only")
    return text


def _tables(tables: Iterable[str]) -> tuple[str, ...]:
    """The tables asked for, once each in the order given; "*" (every table) alone swallows the rest."""
    names = tuple(dict.fromkeys("*" if t == "*" else _name(t, "table") for t in tables))
    return ("*",) if "*" in names else names


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


def _span(now: datetime, duration: timedelta | None, until: datetime | None) -> tuple[timedelta, datetime | None]:
    """(how long from now, the absolute end or None when a duration was given)."""
    if (duration is None) == (until is None):
        raise Invalid("give a duration (--for 4h) or an end time (--until), not both")
    if until is not None:
        if until.tzinfo is None or until.utcoffset() is None:
            raise Invalid("--until needs a time zone, e.g. 2026-11-21T18:00:00Z")
        span = until - now
    else:
        assert duration is not None
        span = duration
    if span <= timedelta(0):
        raise Invalid("the access would end before it starts" + (f" ({until.isoformat()} has passed)" if until else ""))
    return span, until
