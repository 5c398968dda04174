"""The admin API: JSON over HTTP(S), served by the proxy on its own port (FastAPI; the OpenAPI
document is at /openapi.json, browsable at /docs: Swagger UI, whose script and style the browser
loads from jsDelivr, FastAPI's default). Authenticated with the same personal tokens as MySQL logins
(`Authorization: Bearer <token>`); roles come from the token's groups. The `jitproxy` CLI is a
client of it, so nobody needs credentials for the state store.

Workflow calls are synchronous store transactions: they run in a worker thread so the proxy's
event loop keeps relaying statements meanwhile.

POST /v1/check is the proxy's dry run (ProxyContext.dry_run, proxy.workflow.check): a person may
ask about their own statement (with their token's groups), an admin about anyone's.

The audit trail, when the proxy keeps it where it can read it (an `audit_store`: the `store`
sink's state store, or else the `file` sink's JSON lines, proxy.audit.file_trail), is searchable
at GET /v1/audit and readable in chain order at GET /v1/audit/chain, by admins and members of
`auditor_groups`.

The web console (proxy.console) is served by this app at /console: the same service, tokens and
audit rule, as HTML pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from proxy.audit.file_trail import FileTrail, TrailUnreadable
from proxy.audit.search import SearchError, build_query, chain_params
from proxy.authz.model import Principal
from proxy.identity.personal_tokens import TokenError, TokenVerifier
from proxy.audit.query import AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT
from proxy.store.base import Store, StoreError
from proxy.timespec import TimeSpecError, parse_duration, parse_moment
from proxy.workflow.grants import stored_row
from proxy.workflow.service import AccessService, WorkflowError
from proxy.workflow.status import REQUEST_STATUSES

if TYPE_CHECKING:
    from proxy.notify.slack import SlackApprovals
    from proxy.api.oidc import SignIn

_bearer = HTTPBearer(auto_error=False)
# (person, sql, current db, instance, at) -> the dry run's report (proxy.workflow.check)
DryRun = Callable[[Principal, str, "str | None", "str | None", "datetime | None"], Awaitable[dict[str, Any]]]
_INSTANCE_HELP = ("the upstream instance (its configured name); may be left out when the proxy "
                  "has one instance")
# The statuses a request is shown with (an unknown one is FastAPI's 422, like any bad parameter).
RequestStatusName = Literal[REQUEST_STATUSES]  # type: ignore[valid-type]
_DURATION_HELP = "how long (from the approval, for a request): 30s, 15m, 4h, 2d, 1h30m (a unit is required)"
_UNTIL_HELP = ("the absolute end, however late the approval: ISO 8601 (2026-12-07T14:50:00+01:00; "
               "without a zone: UTC) or HH:MM (UTC, today or tomorrow)")


class RequestIn(BaseModel):
    db: str = Field(max_length=64)
    tables: list[str] = Field(min_length=1, max_length=50)
    privileges: list[str] = Field(default=["SELECT"], max_length=10)
    reason: str = Field(max_length=2000)
    duration: str | None = Field(default=None, max_length=40, description=_DURATION_HELP)
    until: str | None = Field(default=None, max_length=64, description=_UNTIL_HELP)
    instance: str | None = Field(default=None, max_length=64, description=_INSTANCE_HELP)
    break_glass: bool = Field(default=False, description=(
        "on call, in an emergency: granted at once if a break-glass policy of the database's environment names "
        "you and covers the privileges and the duration; audited (request.break_glass), notified, and reviewed "
        "after the fact (approve keeps it, deny revokes it)"))


class CheckIn(BaseModel):
    sql: str = Field(min_length=1, max_length=65536, description="the statement, as the client would send it")
    db: str | None = Field(default=None, max_length=64, description="the session's current database")
    instance: str | None = Field(default=None, max_length=64, description=_INSTANCE_HELP)
    at: str | None = Field(default=None, max_length=64, description=(
        "when (default: now): ISO 8601 (without a zone: UTC) or HH:MM (UTC, the next one)"))
    user: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._@-]{1,80}$",
                             description="someone else (admins only); default: you, with your token's groups")
    groups: list[str] = Field(default=[], max_length=50, description="that person's groups (with `user`)")


class DecisionIn(BaseModel):
    comment: str = Field(default="", max_length=2000)


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why the access ends early")


class GrantIn(BaseModel):
    subject: str = Field(description="user:NAME or group:NAME", max_length=90)
    objects: list[str] = Field(min_length=1, max_length=50, description="db.table or db.*")
    privileges: list[str] = Field(default=["SELECT"], max_length=10)
    reason: str = Field(default="", max_length=2000)
    duration: str | None = Field(default=None, max_length=40, description=_DURATION_HELP)
    until: str | None = Field(default=None, max_length=64, description=_UNTIL_HELP)
    instance: str | None = Field(default=None, max_length=64, description=_INSTANCE_HELP)
    break_glass: bool = Field(default=False, description=(
        "beyond the environment's maximum duration, for an emergency: needs a reason; audited "
        "(grant.break_glass) and notified"))


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The person behind `Authorization: Bearer <personal token>`."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "a personal token is required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    try:
        who = await verifier.verify_async(None, creds.credentials)
    except TokenError as e:
        raise HTTPException(401, f"token rejected ({e.code})", headers={"WWW-Authenticate": "Bearer"}) from None
    request.state.principal = who  # for the audit middleware's admin.api_call event
    return who


Who = Annotated[Principal, Depends(principal)]


def _duration(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text, "duration")
    except TimeSpecError as e:
        raise HTTPException(400, str(e)) from None


def _until(text: str | None, what: str = "until") -> datetime | None:
    """The API has no caller's zone to assume: a time without one is UTC (the CLI always sends
    the zone it read the time in)."""
    if text is None:
        return None
    try:
        return parse_moment(text, datetime.now(UTC), UTC, what).at
    except TimeSpecError as e:
        raise HTTPException(400, str(e)) from None


def _checked_person(who: Principal, body: CheckIn, is_admin: bool) -> Principal:
    """Whose statement a dry run decides: the caller's own, with their token's groups; another
    person's (with the groups the admin names) only for admins."""
    if body.user is None or body.user == who.user:
        if body.groups:
            raise HTTPException(400, "your groups come from your token: leave out `groups` (or name another `user`)")
        return who
    if not is_admin:
        raise HTTPException(403, f"a dry run for someone else ({body.user}) is for admins; leave out `user` to "
                                 "check your own statement")
    return Principal(body.user, tuple(body.groups))


def create_app(
    service: AccessService,
    verifier: TokenVerifier,
    *,
    access: Callable[[Principal], list[dict[str, Any]]] | None = None,
    check: DryRun | None = None,
    on_change: Callable[[], Awaitable[None]] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    ready: Callable[[], dict[str, Any]] | None = None,
    metrics: Callable[[], bytes] | None = None,
    audit_store: Store | FileTrail | None = None,
    auditor_groups: frozenset[str] = frozenset(),
    slack: SlackApprovals | None = None,
    console: bool = True,
    console_key: bytes | None = None,
    console_url: str | None = None,
    console_ttl: timedelta | None = None,
    sign_in: SignIn | None = None,
) -> FastAPI:
    """`access(principal)`: every grant in effect for the person (policies and store), for
    GET /v1/access. `check(principal, sql, db, instance, at)`: the proxy's dry run
    (ProxyContext.dry_run), for POST /v1/check. `on_change`: awaited after each write (the proxy refreshes its grants).
    `health()`: the upstream instances' and the store's state, for GET /healthz (no token:
    load balancers and monitors ask it; it names no host, user or credential).
    `audit_store`: a store object on the state store the `store` audit sink writes to, for
    GET /v1/audit and /v1/audit/chain (best not the sink's own object: a 10,000-event search
    would hold its connection while fail_closed statements wait for their batch), or a
    `FileTrail` over the file sink's JSON lines (anything with `search_audit` and
    `audit_chain`); None: those answer 404. `auditor_groups`: groups whose members may read
    the audit trail, besides admins. `slack`: approvals from Slack (POST /v1/slack/interactions,
    proxy.api.slack). `console`: the web console at /console (proxy.console), signed in with the
    same tokens; `console_key`: its session-signing key, the same in every worker
    (proxy.console.session_key; None: a random key, sessions end with this process);
    `console_url`: the address browsers reach this app at (config console_url(): the IdP's
    callback for the console's "Sign in with SSO"); `console_ttl`: a console session's longest
    life (console.session_ttl). `sign_in`: the IdP sign-in and session passwords (proxy.api.oidc,
    built by its `enable_sign_in`); with an IdP, the console offers its browser login too."""
    app = FastAPI(title="jitproxy admin API", version="1", docs_url="/docs", redoc_url=None)
    app.state.verifier = verifier
    auditors = frozenset(auditor_groups)

    async def run(fn: Callable[..., Any], *args: Any, write: bool = False, **kwargs: Any) -> Any:
        result = await asyncio.to_thread(fn, *args, **kwargs)
        if write and on_change is not None:
            await on_change()
        return result

    @app.exception_handler(WorkflowError)
    async def _workflow_error(_: Request, e: WorkflowError) -> JSONResponse:
        body: dict[str, Any] = {"detail": e.message}
        if e.existing is not None:  # what is already there (e.g. the grants already held)
            body["existing"] = e.existing
        return JSONResponse(body, status_code=e.status)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, e: StoreError) -> JSONResponse:
        return JSONResponse({"detail": "the state store is unavailable; try again"}, status_code=503)

    @app.exception_handler(TrailUnreadable)
    async def _trail_unreadable(_: Request, e: TrailUnreadable) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # The audit endpoints answer a wrong parameter with 400, as their own checks do.
        if request.url.path.startswith("/v1/audit"):
            return JSONResponse({"detail": _validation_detail(e)}, status_code=400)
        return await request_validation_exception_handler(request, e)

    def may_read_audit(who: Principal) -> bool:
        """Admins and members of `auditor_groups` (the API's rule, the console's too)."""
        return service.is_admin(who) or bool(auditors & set(who.groups))

    def audit_reader(who: Principal) -> Store | FileTrail:
        """The audit store, if `who` may read it (admins and auditors; else 403)."""
        if not may_read_audit(who):
            groups = ", ".join(sorted(auditors)) or "none configured"
            raise HTTPException(403, f"reading the audit trail is for admins and auditors (auditor groups: {groups}); "
                                     f"{who.user} is neither")
        if audit_store is None:
            raise HTTPException(404, "this proxy does not store its audit trail where it can search it (audit.sinks "
                                     "has no 'file' or 'store' sink); search your log system instead")
        return audit_store

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        """Always 200 while the proxy serves: a database that is down is reported ("degraded"),
        not a reason to restart the proxy."""
        return health() if health is not None else {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """200 when new sessions can be served (every database answers, the store reads), else
        503 with the reasons: for load balancers and orchestrators."""
        state = ready() if ready is not None else {"ready": True, "problems": []}
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus text format (no token, like /healthz: counts and states, no names of
        people, hosts or statements)."""
        if metrics is None:
            raise HTTPException(404, "metrics are not served by this process")
        from proxy.metrics import CONTENT_TYPE

        return Response(metrics(), media_type=CONTENT_TYPE)

    @app.get("/v1/whoami")
    async def whoami(who: Who) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "admin": service.is_admin(who),
                "token_expires_at": who.token_expires_at.isoformat() if who.token_expires_at else None}

    @app.post("/v1/requests", status_code=201)
    async def create_request(body: RequestIn, who: Who) -> Any:
        """201 with the new request; 200 with the person's pending request (`existing`: true)
        when it already asks for all of this; 409 with `existing` (the grants) when they already
        hold it all until the end asked for; 400 for a database or table the instance does not
        hold (naming the closest); 403 when no approval policy lets anyone ask for it (also `*`,
        every table, where the policy does not allow it); 503 when the instance's database cannot
        say what it holds (nothing is stored). With `break_glass`: 201 with the request approved
        at once (`review`: "pending"), or 403 naming why not (not on call there, a privilege the
        break-glass policy does not cover), 400 when longer than it allows."""
        r, created = await run(service.submit_request, who, body.db, body.tables, body.privileges, body.reason,
                               duration=_duration(body.duration), until=_until(body.until), instance=body.instance,
                               break_glass=body.break_glass, write=True)
        view = await run(service.view, r)
        return view if created else JSONResponse({**view, "existing": True}, status_code=200)

    @app.get("/v1/requests")
    async def list_requests(
        who: Who,
        status: RequestStatusName | None = None,
        mine: Annotated[bool, Query()] = False,
    ) -> list[dict[str, Any]]:
        return await run(service.list_requests, who, status, mine)

    @app.get("/v1/requests/{request_id}")
    async def get_request(request_id: str, who: Who) -> dict[str, Any]:
        return await run(lambda: service.view(service.get_request(who, request_id)))

    @app.post("/v1/requests/{request_id}/approve")
    async def approve(request_id: str, body: DecisionIn, who: Who) -> dict[str, Any]:
        return await run(lambda: service.view(service.approve(who, request_id, body.comment)), write=True)

    @app.post("/v1/requests/{request_id}/deny")
    async def deny(request_id: str, body: DecisionIn, who: Who) -> dict[str, Any]:
        return await run(lambda: service.view(service.deny(who, request_id, body.comment)), write=True)

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request_id: str, who: Who) -> dict[str, Any]:
        return await run(lambda: service.view(service.cancel(who, request_id)), write=True)

    @app.post("/v1/requests/{request_id}/release", summary="Give back an approved request's access early")
    async def release_request(request_id: str, body: ReasonIn, who: Who) -> dict[str, Any]:
        return await run(lambda: service.view(service.release_request(who, request_id, body.reason)), write=True)

    @app.post("/v1/grants", status_code=201)
    async def add_grants(body: GrantIn, who: Who) -> list[dict[str, Any]]:
        grants = await run(service.add_grants, who, body.subject, body.objects, body.privileges, body.reason,
                           duration=_duration(body.duration), until=_until(body.until), instance=body.instance,
                           break_glass=body.break_glass, write=True)
        return [stored_row(g, service.clock()) for g in grants]

    @app.get("/v1/grants")
    async def list_grants(who: Who, everyone: Annotated[bool, Query(alias="all")] = False) -> list[dict[str, Any]]:
        """Grants in effect (yours; admins with all=true: everyone's), the policy files' too,
        each with its `kind` (policy, request, grant) and `source`."""
        return await run(service.grant_rows, who, everyone)

    @app.delete("/v1/grants/{grant_id}", summary="Revoke a grant now (admins)")
    async def revoke(grant_id: str, who: Who,
                     reason: Annotated[str, Query(max_length=2000, description="why it ends early")] = "") -> dict[str, Any]:
        grant = await run(service.revoke_grant, who, grant_id, reason, write=True)
        return stored_row(grant, service.clock())

    @app.post("/v1/grants/{grant_id}/release", summary="Give back a grant you hold, early")
    async def release_grant(grant_id: str, body: ReasonIn, who: Who) -> dict[str, Any]:
        grant = await run(service.release_grant, who, grant_id, body.reason, write=True)
        return stored_row(grant, service.clock())

    @app.get("/v1/access")
    async def my_access(who: Who) -> list[dict[str, Any]]:
        return access(who) if access is not None else []

    @app.post("/v1/check", summary="What the proxy would decide for a statement (a dry run; nothing runs)")
    async def dry_run(body: CheckIn, who: Who) -> dict[str, Any]:
        """Your own statement (or, for admins, someone else's), decided as a session would at
        `at`: with the grants in effect then (policy files and store), the instance's views
        read as sessions read them; the grants that decide are named with their source."""
        if check is None:
            raise HTTPException(404, "dry runs are answered by a running proxy")
        person = _checked_person(who, body, service.is_admin(who))
        try:
            return await check(person, body.sql, body.db, body.instance, _until(body.at, "at"))
        except ValueError as e:
            raise HTTPException(400, str(e)) from None

    @app.get("/v1/audit", summary="Search the audit trail (admins and auditors)")
    async def audit_search(
        who: Who,
        user: Annotated[str | None, Query(description="the person (token subject)")] = None,
        since: Annotated[str | None, Query(description="from: 1h, 30m, 2d (ago), a day, HH:MM (the last one) or "
                                                       "an ISO-8601 time; without a zone: UTC")] = None,
        until: Annotated[str | None, Query(description="before: same forms as since")] = None,
        table: Annotated[str | None, Query(description="db.table (or db.*): events naming it")] = None,
        decision: Annotated[str | None, Query(description="allow or deny")] = None,
        event_type: Annotated[str | None, Query(alias="type", description=(
            "an event type (statement.denied) or a prefix (statement. or statement.*)"))] = None,
        instance: Annotated[str | None, Query(description="the upstream instance")] = None,
        session_id: str | None = None,
        proxy_instance: Annotated[str | None, Query(description="the proxy process (host:pid)")] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_MAX_LIMIT)] = AUDIT_DEFAULT_LIMIT,
        oldest_first: bool = False,
    ) -> dict[str, Any]:
        """Events matching every filter given, newest first (or oldest first): `{"events": [...]}`,
        each the event exactly as written."""
        store = audit_reader(who)
        try:
            query = build_query(now=datetime.now(UTC), user=user, since=since, until=until, table=table,
                                decision=decision, type=event_type, instance=instance, session_id=session_id,
                                proxy_instance=proxy_instance, limit=limit, oldest_first=oldest_first)
        except SearchError as e:
            raise HTTPException(400, str(e)) from None
        return {"events": await run(store.search_audit, query)}

    @app.get("/v1/audit/chain", summary="One proxy process's audit events in seq order (for verification)")
    async def audit_chain(
        who: Who,
        proxy_instance: Annotated[str, Query(description="the proxy process (host:pid)")],
        after_seq: Annotated[int, Query(ge=0, description="only events after this seq (paging)")] = 0,
        limit: Annotated[int, Query(ge=1, le=AUDIT_MAX_LIMIT)] = AUDIT_MAX_LIMIT,
    ) -> dict[str, Any]:
        """`{"events": [...]}` in seq order; fewer than `limit` means the chain's end. Page with
        after_seq = the last seq returned. Feed them to `jitproxy audit verify`."""
        store = audit_reader(who)
        try:
            name, after, count = chain_params(proxy_instance, after_seq, limit)
        except SearchError as e:
            raise HTTPException(400, str(e)) from None
        return {"events": await run(store.audit_chain, name, after, count)}

    if slack is not None:
        from proxy.api.slack import slack_routes

        app.include_router(slack_routes(slack, on_change))

    if console:
        from proxy.console import install_console  # Jinja2 only in processes that serve the API

        install_console(app, service, verifier, access=access, check=check, on_change=on_change,
                        audit_store=audit_store, may_read_audit=may_read_audit, key=console_key, ttl=console_ttl,
                        oidc=sign_in.oidc if sign_in is not None else None, public_url=console_url)

    if sign_in is not None:
        from proxy.api.oidc import sign_in_routes

        app.include_router(sign_in_routes(sign_in, principal))

    return app


def _validation_detail(e: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: "query.limit: Input should be ..."."""
    return "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())
