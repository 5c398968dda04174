"""The web console's pages, served by the admin API's app (same port, same identities): Requests,
Access, Audit and Policies, for approvers and auditors who work in a browser.

Server-rendered HTML (Jinja2, autoescaped everywhere) with htmx for the live parts (the
requests list and a request's own page poll every 5 s; the request form's tables are listed
from the live schema when a database is chosen; the chain check and the dry run answer in
place). Every form works without script too: a POST either redirects back with what it did (a
signed one-line flash) or shows the page again with why it was refused, with the workflow's own
status code.

Pages: Requests (/console/requests: the list, and a form to ask with a picker of the live
schema's databases and tables), a request's own page (/console/requests/{id}: everything about
it, the approvals so far, its grants, what you may do; notifications link here), Access
(yours, with Give back and Ask for more time; everyone's for admins, with Revoke and Extend
within policy), Audit (search, an event's full detail, export, the hash chains) and Policies.
Sign-in: a pasted personal token, or the IdP's browser login when OIDC is configured
(proxy.console.sso).

Who may do what is never decided here: every action calls the workflow service
(proxy.workflow.service: approve, deny, cancel, release, revoke, create) and shows its answer;
reading the audit trail asks the app's own rule (`may_read_audit`). Buttons are only shown
where they can work, as a courtesy; the service refuses the rest.

Security: sessions and CSRF in proxy.console.session; a strict Content-Security-Policy (scripts,
styles, everything from this origin only, no inline script or style, no framing); no token in
any URL, page, cookie or log (the sign-in form posts it once; it is verified and dropped).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from proxy.audit.chain import verify
from proxy.audit.export import render
from proxy.audit.query import AUDIT_MAX_LIMIT
from proxy.audit.search import SearchError, build_query
from proxy.authz.model import Principal, Privilege
from proxy.identity.personal_tokens import TokenError, TokenVerifier
from proxy.store.base import StoreError
from proxy.timespec import TimeSpecError, format_duration, parse_duration, parse_moment
from proxy.workflow.approvals import NoApprovalPolicy
from proxy.workflow.check import lines as check_lines
from proxy.workflow.grants import stored_row
from proxy.workflow.service import EXTENDS, AccessService, SchemaUnavailable, WorkflowError

from proxy.console.session import (
    COOKIE,
    FLASH_COOKIE,
    LOGIN_COOKIE,
    ConsoleSession,
    Sessions,
    SessionExpired,
    same_secret,
)

if TYPE_CHECKING:
    from proxy.audit.file_trail import FileTrail
    from proxy.identity.oidc import OidcSignIn
    from proxy.store.base import Store, StoredGrant

__all__ = ["CSP", "PREFIX", "mount_console"]

PREFIX = "/console"
HERE = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
_STATIC = {"htmx.min.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
           "htmx.LICENSE": "text/plain; charset=utf-8", "favicon.svg": "image/svg+xml"}
_MAX_FORM_BYTES = 256 * 1024
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Where a form sends the browser back to after its action: a page, or a request's own page.
_BACK = re.compile(r"^(requests|access|requests/[A-Za-z0-9_-]{1,64})$")
_EXTENDS = re.compile(re.escape(EXTENDS) + r"(g-[0-9a-f]+)\b")  # an extension's reason names the grant it extends
# The server's own databases: never something to ask access to, not offered by the picker.
SYSTEM_DATABASES = frozenset({"information_schema", "mysql", "performance_schema", "sys"})
POLL_SECONDS = 5
CHAIN_MAX_EVENTS = 200_000  # beyond this, the page sends people to `jitproxy audit verify`
# (person, sql, current db, instance, at) -> the dry run's report (as the API's `check`)
DryRun = Callable[[Principal, str, "str | None", "str | None", "datetime | None"], Awaitable[dict[str, Any]]]
Form = dict[str, list[str]]


class NeedSignIn(Exception):
    def __init__(self, expired: bool = False) -> None:
        super().__init__("sign in")
        self.expired = expired


class Refused(Exception):
    """A request the console answers with a page saying why (CSRF, a role, a wrong form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    env.filters["pretty"] = lambda event: json.dumps(event, indent=2, ensure_ascii=False, sort_keys=True)
    env.globals.update(prefix=PREFIX, poll_seconds=POLL_SECONDS, privileges=_PRIVILEGES, ask_again=_ask_again)
    return env


def _when(value: str | datetime | None) -> str:
    """An ISO time as people on call read it: UTC, to the second."""
    if not value:
        return "—"
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(value: int | float | timedelta | None) -> str:
    if value is None:
        return "—"
    return format_duration(value if isinstance(value, timedelta) else timedelta(seconds=value))


def _digest(rows: list[dict[str, Any]]) -> str:
    """What the requests list shows, in a few characters: the poll swaps the list only when
    this changed, so a comment being typed is not wiped every few seconds."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Console:
    """The pages and actions, over the same service, verifier and audit trail as the API."""

    def __init__(self, service: AccessService, verifier: TokenVerifier, sessions: Sessions, *,
                 access: Callable[[Principal], list[dict[str, Any]]] | None,
                 check: DryRun | None,
                 on_change: Callable[[], Awaitable[None]] | None,
                 audit_store: Store | FileTrail | None,
                 may_read_audit: Callable[[Principal], bool],
                 oidc: OidcSignIn | None = None,
                 public_url: str | None = None) -> None:
        self.service = service
        self.verifier = verifier
        self.sessions = sessions
        self.access = access
        self.check = check
        self.on_change = on_change
        self.audit_store = audit_store
        self.may_read_audit = may_read_audit
        self.oidc = oidc  # the IdP's browser login (proxy.console.sso), when OIDC is configured
        self.public_url = public_url.rstrip("/") if public_url else None
        self.templates = _templates()

    # -- plumbing ------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> Any:
        """A workflow call in a worker thread (they are store transactions), then the proxy's
        grants refresh after a write, as the API does."""
        result = await asyncio.to_thread(fn, *args)
        if write and self.on_change is not None:
            await self.on_change()
        return result

    def signed_in(self, request: Request) -> ConsoleSession:
        """The session of this browser (FastAPI dependency); NeedSignIn otherwise. The person is
        put where the audit middleware names them in `admin.api_call`."""
        try:
            session = self.sessions.read(request.cookies.get(COOKIE))
        except SessionExpired:
            raise NeedSignIn(expired=True) from None
        if session is None:
            raise NeedSignIn()
        request.state.principal = session.who
        return session

    async def posted(self, request: Request) -> tuple[ConsoleSession, Form]:
        """A signed-in POST with its form, after the CSRF checks: the form's token must be this
        session's, and a browser's Origin (when sent) this host."""
        session = self.signed_in(request)
        form = await read_form(request)
        _same_origin(request)
        if not same_secret(_one(form, "csrf"), session.csrf):
            raise Refused(403, "this form is stale or came from elsewhere (CSRF check failed): reload the page "
                               "and try again")
        return session, form

    def page(self, name: str, session: ConsoleSession | None, status: int = 200, request: Request | None = None,
             **context: Any) -> HTMLResponse:
        who = session.who if session else None
        flash = self.sessions.read_flash(request.cookies.get(FLASH_COOKIE)) if request is not None else None
        roles = self.roles(who) if who else {}
        html = self.templates.get_template(name).render(session=session, who=who, roles=roles, flash=flash,
                                                         sso=self.oidc is not None, **context)
        response = HTMLResponse(html, status_code=status, headers=_HEADERS)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    def roles(self, who: Principal) -> dict[str, bool]:
        """What the navigation shows (the service decides every action anyway)."""
        rules = self.service.policies().rules
        return {"admin": self.service.is_admin(who), "auditor": self.may_read_audit(who),
                "approver": any(r.counts(who) for r in rules if not r.auto_approve)}

    def done(self, where: str, message: str) -> RedirectResponse:
        """After an action: back to its page (303: the browser GETs it), saying what was done.
        `where`: a page (requests, access) or a request's own page (requests/<id>)."""
        response = RedirectResponse(f"{PREFIX}/{quote(where, safe='/')}", status_code=303, headers=_HEADERS)
        response.set_cookie(FLASH_COOKIE, self.sessions.flash(message), max_age=60, path="/", secure=True,
                            httponly=True, samesite="strict")
        return response

    async def act(self, request: Request, session: ConsoleSession, where: str, action: Callable[[], Any],
                  message: Callable[[Any], str], **again: Any) -> Response:
        """Run a workflow action; on refusal show its page again with the service's reason and
        status (403 not an approver or self-approval, 409 already decided, ...); `again`: what
        that page shows besides (the form as it was sent)."""
        try:
            result = await self.call(action, write=True)
        except WorkflowError as e:
            error, status = e.message, e.status
        except StoreError:
            error, status = "the state store is unavailable; try again", 503
        else:
            return self.done(where, message(result))
        try:
            return await self.show(where, request, session, error=error, status=status, **again)
        except Refused:  # that page is not this person's to see (a request of somebody else's)
            raise Refused(status, error) from None

    async def show(self, where: str, request: Request, session: ConsoleSession, **extra: Any) -> HTMLResponse:
        if where.startswith("requests/"):
            return await self.request_page(request, session, where.partition("/")[2], **extra)
        pages = {"requests": self.requests_page, "access": self.access_page, "policies": self.policies_page}
        return await pages[where](request, session, **extra)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A workflow read for a page: its refusal (404 not yours to see, ...) is the page's."""
        try:
            return await self.call(fn, *args)
        except WorkflowError as e:
            raise Refused(e.status, e.message) from None

    # -- sign-in -------------------------------------------------------------------------------

    def login_page(self, request: Request, error: str | None = None, status: int = 200,
                   expired: bool = False) -> HTMLResponse:
        cookie, csrf = self.sessions.login_form()
        response = self.page("login.html", None, status, csrf=csrf, error=error, expired=expired)
        response.set_cookie(LOGIN_COOKIE, cookie, max_age=900, path="/", secure=True, httponly=True,
                            samesite="strict")
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    async def login(self, request: Request) -> Response:
        """Verify the pasted token once and start a session; the token goes no further."""
        form = await read_form(request)
        _same_origin(request)
        expected = self.sessions.login_csrf(request.cookies.get(LOGIN_COOKIE))
        if expected is None or not same_secret(_one(form, "csrf"), expected):
            return self.login_page(request, "the sign-in form expired or came from elsewhere: try again", 403)
        token = _one(form, "token").strip()
        if not token:
            return self.login_page(request, "paste your personal token", 400)
        try:
            who = await self.verifier.verify_async(None, token)
        except TokenError as e:  # the code only (bad_signature, expired, ...): never the token
            return self.login_page(request, f"token rejected ({e.code})", 401)
        return self.start_session(request, who)

    def start_session(self, request: Request, who: Principal, via: str = "token") -> Response:
        """The sign-in hook: any login method that has verified a person (the pasted token here;
        the IdP's browser login, proxy.console.sso) calls this to hand the browser its session.
        After the IdP's redirect (a cross-site navigation) the browser would not send a
        SameSite=Strict cookie along the next redirect, so that sign-in answers with a page that
        moves on by itself (a same-site navigation) instead of a 303."""
        value, session = self.sessions.issue(who, via)
        request.state.principal = session.who
        if via == "token":
            response: Response = RedirectResponse(f"{PREFIX}/requests", status_code=303, headers=_HEADERS)
        else:
            response = self.page("signed_in.html", session, 200)
        response.set_cookie(COOKIE, value, max_age=self.sessions.max_age(session), path="/", secure=True,
                            httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- Requests ------------------------------------------------------------------------------

    async def requests_page(self, request: Request, session: ConsoleSession, error: str | None = None,
                            status: int = 200, form: Form | None = None) -> HTMLResponse:
        """The list and the form to ask; the form is filled from `form` (what was sent, shown
        again with why it was refused) or the query (?db=&tables=&privileges=&instance=: "ask
        for more time" links), its picker from the live schema."""
        rows = await self.request_rows(session.who)
        if form is None:
            try:
                form = parse_qs(request.url.query, max_num_fields=100)
            except ValueError:  # more fields than any form of ours has
                form = {}
        asked = _asked(form)
        picker = await self.picker(asked["instance"], asked["db"], asked["tables"])
        return self.page("requests.html", session, status, request, rows=rows, digest=_digest(rows), error=error,
                         instances=self.service.instances, asked=asked, **picker)

    async def requests_list(self, request: Request, session: ConsoleSession, seen: str = "",
                            request_id: str = "") -> Response:
        """The list alone, for the page's poll; 204 (nothing to swap) when it is as `seen`.
        With `request_id`: that request's live part, for its own page's poll."""
        if request_id:
            detail = await self.request_detail(session, request_id)
            if seen == detail["digest"]:
                return Response(status_code=204, headers=_HEADERS)
            return self.page("_request.html", session, **detail)
        rows = await self.request_rows(session.who)
        digest = _digest(rows)
        if seen == digest:
            return Response(status_code=204, headers=_HEADERS)
        return self.page("_requests.html", session, rows=rows, digest=digest)

    async def request_page(self, request: Request, session: ConsoleSession, request_id: str,
                           error: str | None = None, status: int = 200) -> HTMLResponse:
        """One request: everything about it, its approvals so far against the policy that
        applies, its grants (and those extending them), and what this person may do."""
        detail = await self.request_detail(session, request_id)
        return self.page("request.html", session, status, request, error=error, **detail)

    async def request_detail(self, session: ConsoleSession, request_id: str) -> dict[str, Any]:
        """What a request's page shows (the service says whether `who` may see it: 404 if not)."""
        who, service = session.who, self.service
        if len(request_id) > 64:
            raise Refused(404, "no such request")
        stored = await self.read(service.get_request, who, request_id)
        r = await self.call(service.view, stored)
        plan, policy = None, "no approval policy applies any more"
        try:
            plan = service.plan_for(stored.instance, stored.db, [Privilege.parse(p) for p in stored.privileges])
            policy = plan.describe()
        except (NoApprovalPolicy, ValueError):
            pass
        admin = service.is_admin(who)
        decider = r["requester"] != who.user and (admin or (plan is not None and plan.may_decide(who)))
        now = service.clock()
        held = await self.call(lambda: service.store.grants(subject=f"user:{r['requester']}")) if r["grant_ids"] else []
        grants = [stored_row(g, now) for g in _with_extensions(r["grant_ids"], held)]
        shown = {"r": r, "policy": policy, "grants": grants, "auto": bool(plan and plan.auto_approve)}
        return {**shown, "digest": _digest([shown]), "admin": admin,
                "may_decide": decider and r["status"] == "pending"
                and not any(a["approver"] == who.user for a in r["approvals"]),
                "may_cancel": r["status"] == "pending" and (r["requester"] == who.user or admin),
                "may_release": r["status"] == "approved" and r["requester"] == who.user,
                "may_extend": decider, "can_audit": self.may_read_audit(who)}

    async def request_rows(self, who: Principal) -> list[dict[str, Any]]:
        """The requests the service lets `who` see, pending first (oldest pending on top:
        it has waited longest), then the rest newest first."""
        rows = await self.call(self.service.list_requests, who)
        pending = sorted((r for r in rows if r["status"] == "pending"), key=lambda r: r["created_at"])
        return pending + [r for r in rows if r["status"] != "pending"]

    async def create_request(self, request: Request, session: ConsoleSession, form: Form) -> Response:
        try:
            duration, until = self.span(form)
        except ValueError as e:
            return await self.requests_page(request, session, error=str(e), status=400, form=form)
        asked = _asked(form)
        return await self.act(request, session, "requests", lambda: self.service.submit_request(
            session.who, asked["db"], asked["tables"], asked["privileges"] or ["SELECT"], asked["reason"],
            duration=duration, until=until, instance=asked["instance"] or None),
            lambda made: f"request {made[0].id}: " + ("filed" if made[1] else "you already asked for this"),
            form=form)  # refused: the form again, as it was filled

    # -- the request form's picker: the live schema ----------------------------------------------

    async def picker(self, instance: str, db: str, chosen: list[str]) -> dict[str, Any]:
        """The databases of the instance and the tables of `db`, read live (what exists, now);
        `databases` None when the proxy reads no live schema or it could not answer (the form
        then takes typed names, which the service checks when the request is filed)."""
        schema = self.service.schema
        found: dict[str, Any] = {"databases": None, "tables": None, "db": db, "chosen": chosen, "schema_error": None}
        if schema is None:
            return found
        target = instance or (self.service.instances[0] if len(self.service.instances) == 1 else "*")
        if target != "*" and target not in self.service.instances:
            return {**found, "schema_error": f"no instance {target[:80]!r}"}
        try:
            found["databases"] = sorted(await self.call(schema.databases, target) - SYSTEM_DATABASES)
            if db in found["databases"]:
                found["tables"] = sorted(await self.call(schema.tables, target, db))
        except SchemaUnavailable as e:
            return {**found, "databases": None, "schema_error": f"{e}: type the names instead"}
        return found

    def span(self, form: Form) -> tuple[timedelta | None, datetime | None]:
        """--for or --until, read by the same parsers as the API (a time without a zone: UTC)."""
        duration, until = _one(form, "duration").strip(), _one(form, "until").strip()
        try:
            return ((parse_duration(duration, "duration") if duration else None),
                    (parse_moment(until, datetime.now(UTC), UTC, "until").at if until else None))
        except TimeSpecError as e:
            raise ValueError(str(e)) from None

    # -- Access --------------------------------------------------------------------------------

    async def access_page(self, request: Request, session: ConsoleSession, error: str | None = None,
                          status: int = 200) -> HTMLResponse:
        who = session.who
        mine = await self.call(self.access, who) if self.access is not None else await self.call(
            self.service.grant_rows, who)
        everyone = await self.call(self.service.grant_rows, who, True) if self.service.is_admin(who) else None
        return self.page("access.html", session, status, request, mine=mine, everyone=everyone, error=error)

    async def extend(self, request: Request, session: ConsoleSession, grant_id: str, form: Form) -> Response:
        """Extend a grant within policy (AccessService.extend_grant): "New end" is a duration
        from now (4h) or a time (18:00 UTC, ISO)."""
        where = _back(form, "access")
        text = _one(form, "until").strip()
        if not text:
            return await self.show(where, request, session, error="give the new end: 4h (from now) or 18:00 (UTC)",
                                   status=400)
        try:
            duration = parse_duration(text, "new end") if ":" not in text else None
            until = parse_moment(text, datetime.now(UTC), UTC, "new end").at if duration is None else None
        except TimeSpecError as e:
            return await self.show(where, request, session, error=str(e), status=400)
        return await self.act(request, session, where, lambda: self.service.extend_grant(
            session.who, grant_id, _one(form, "reason"), duration=duration, until=until),
            lambda g: f"grant {grant_id} extended: {g.subject} holds {g.db}.{g.table} until {_when(g.expires_at)} "
                      f"(grant {g.id})")

    # -- Audit ---------------------------------------------------------------------------------

    def audit_reader(self, who: Principal) -> Store | FileTrail:
        if not self.may_read_audit(who):
            raise Refused(403, f"reading the audit trail is for admins and auditors; {who.user} is neither")
        if self.audit_store is None:
            raise Refused(404, "this proxy does not store its audit trail where it can search it (audit.sinks has "
                               "no 'file' or 'store' sink); search your log system instead")
        return self.audit_store

    async def audit_events(self, who: Principal, params: Mapping[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """(the filters as given, the events found) by proxy.audit.search, as GET /v1/audit."""
        store = self.audit_reader(who)
        filters = {k: params.get(k, "").strip() for k in ("user", "table", "decision", "type", "since", "until")}
        if "since" not in params:
            filters["since"] = "24h"
        limit = params.get("limit", "").strip() or "100"
        try:
            query = build_query(now=datetime.now(UTC), limit=limit, **filters)  # type: ignore[arg-type]
        except SearchError as e:
            raise Refused(400, str(e)) from None
        filters["limit"] = limit
        return filters, await self.call(store.search_audit, query)

    async def chain_state(self, who: Principal, proxy_instance: str) -> dict[str, Any]:
        """One proxy process's chain, read in seq order and verified (proxy.audit.chain)."""
        store = self.audit_reader(who)
        events: list[dict[str, Any]] = []
        while len(events) < CHAIN_MAX_EVENTS:
            page = await self.call(store.audit_chain, proxy_instance, events[-1]["seq"] if events else 0,
                                   AUDIT_MAX_LIMIT)
            events += page
            if len(page) < AUDIT_MAX_LIMIT:
                break
        else:
            return {"name": proxy_instance, "line": f"{proxy_instance}: over {CHAIN_MAX_EVENTS} events: verify it "
                    f"with jitproxy audit chain --proxy-instance {proxy_instance} | jitproxy audit verify -",
                    "ok": None, "problems": [], "warnings": []}
        report = verify(events)
        return {"name": proxy_instance, "line": report.chain_status(proxy_instance), "ok": report.ok,
                "open": bool(report.open), "problems": report.problems[:20], "warnings": report.warnings[:20]}

    # -- Policies ------------------------------------------------------------------------------

    async def policies_page(self, request: Request, session: ConsoleSession, error: str | None = None,
                            status: int = 200, report: dict[str, Any] | None = None,
                            checked: Mapping[str, str] | None = None) -> HTMLResponse:
        who = session.who
        grants = await self.call(self.service.grant_rows, who, self.service.is_admin(who))
        return self.page("policies.html", session, status, request, rules=self.service.policies().rules,
                         grants=grants, error=error, report=report, report_lines=check_lines(report) if report else [],
                         checked=checked or {}, can_check=self.check is not None, instances=self.service.instances)

    async def dry_run(self, session: ConsoleSession, form: Form) -> tuple[dict[str, str], dict[str, Any]]:
        """The proxy's dry run of the person's own statement, with their own groups (another
        person's, for admins: the API's POST /v1/check and `jitproxy check`)."""
        if self.check is None:
            raise Refused(404, "dry runs are answered by a running proxy")
        checked = {"sql": _one(form, "sql"), "db": _one(form, "db").strip(), "instance": _one(form, "instance")}
        if not checked["sql"].strip() or len(checked["sql"]) > 65536:
            raise Refused(400, "a statement of at most 64 KiB, please")
        try:
            report = await self.check(session.who, checked["sql"], checked["db"] or None,
                                      checked["instance"] or None, None)
        except ValueError as e:
            raise Refused(400, str(e)) from None
        return checked, report


def _with_extensions(grant_ids: list[str], held: list[StoredGrant]) -> list[StoredGrant]:
    """A request's grants and those extending them (AccessService.extend_grant: their reason
    begins "extends <grant id>"), in the order they were made."""
    ids = set(grant_ids)
    extends = {g.id: m.group(1) for g in held if (m := _EXTENDS.match(g.reason))}
    for _ in range(20):  # extensions of extensions, a few deep
        more = {extension for extension, extended in extends.items() if extended in ids} - ids
        if not more:
            break
        ids |= more
    return [g for g in held if g.id in ids]


def _asked(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """What a request form (or an "ask again" link's query) names: instance, db, tables (typed
    with spaces or commas, or ticked), privileges, duration, until, reason."""
    tables = [t for value in form.get("tables", []) for t in value.replace(",", " ").split() if t]
    return {"instance": _one(form, "instance").strip(), "db": _one(form, "db").strip(),  # type: ignore[arg-type]
            "tables": list(dict.fromkeys(tables))[:200],
            "privileges": [p for p in form.get("privileges", []) if p][:10],
            **{k: _one(form, k) for k in ("duration", "until", "reason")}}  # type: ignore[arg-type]


def _ask_again(grant: Mapping[str, Any]) -> str | None:
    """The query of a request form asking for the same access again (more time), for a grant
    of one's own from the store (a policy file's grant does not end; a group's is not one's own)."""
    if not grant.get("grant_id") or not str(grant.get("subject", "")).startswith("user:"):
        return None
    db, _, table = str(grant["object"]).partition(".")
    query = {"db": db, "tables": table, "privileges": list(grant.get("privileges") or [])}
    if grant.get("instance") not in (None, "*"):
        query["instance"] = grant["instance"]
    return urlencode(query, doseq=True)


def _back(form: Form, default: str) -> str:
    """The page a form sends the browser back to (`back`): one of ours only."""
    back = _one(form, "back")
    return back if _BACK.match(back) else default


# -- the routes --------------------------------------------------------------------------------------


def mount_console(app: FastAPI, service: AccessService, verifier: TokenVerifier, *,
                    access: Callable[[Principal], list[dict[str, Any]]] | None = None,
                    check: DryRun | None = None,
                    on_change: Callable[[], Awaitable[None]] | None = None,
                    audit_store: Store | FileTrail | None = None,
                    may_read_audit: Callable[[Principal], bool] | None = None,
                    key: bytes | None = None, ttl: timedelta | None = None,
                    oidc: OidcSignIn | None = None, public_url: str | None = None) -> Console:
    """Serve the console at /console on `app`. `key`: the session-signing key (proxy.console.
    session.session_key; None: a random one, so sessions last as long as this process and are
    not shared between workers); `ttl`: a session's longest life. `oidc`: the IdP's relying
    party (proxy.identity.oidc), for "Sign in with SSO" (its routes, proxy.console.sso, are
    added by proxy.console.install_console; its callback calls `Console.start_session`).
    `public_url`: the address browsers reach this app at (config.Config.console_url), for the
    IdP's callback; None: the address a browser used."""
    sessions = Sessions(key, clock=service.clock, **({"ttl": ttl} if ttl else {}))
    console = Console(service, verifier, sessions, access=access, check=check, on_change=on_change,
                      audit_store=audit_store, may_read_audit=may_read_audit or service.is_admin,
                      oidc=oidc, public_url=public_url)
    app.include_router(_router(console))
    app.add_exception_handler(NeedSignIn, _need_sign_in(console))  # type: ignore[arg-type]
    app.add_exception_handler(Refused, _refused(console))  # type: ignore[arg-type]
    app.state.console = console
    return console


def _need_sign_in(console: Console) -> Callable[[Request, NeedSignIn], Awaitable[Response]]:
    async def handler(request: Request, e: NeedSignIn) -> Response:
        """A page: the sign-in page (saying the session ended, if it did). A poll: htmx is told
        to load the sign-in page instead of swapping in a refusal."""
        if request.headers.get("hx-request") == "true":
            return Response(status_code=204, headers={**_HEADERS, "HX-Redirect": f"{PREFIX}/login"})
        if request.method == "GET" and not e.expired:
            return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=_HEADERS)
        message = "your session has ended: sign in again" if e.expired else "sign in first"
        return console.login_page(request, message, 401, expired=e.expired)
    return handler


def _refused(console: Console) -> Callable[[Request, Refused], Awaitable[Response]]:
    async def handler(request: Request, e: Refused) -> Response:
        session = None
        try:
            session = console.signed_in(request)
        except NeedSignIn:
            pass
        fragment = request.headers.get("hx-request") == "true"
        return console.page("_message.html" if fragment else "refused.html", session, e.status, message=e.message)
    return handler


def _signed_in(request: Request) -> ConsoleSession:
    console: Console = request.app.state.console
    return console.signed_in(request)


async def _posted(request: Request) -> tuple[ConsoleSession, Form]:
    console: Console = request.app.state.console
    return await console.posted(request)


# FastAPI dependencies (module level: annotations are read from this module's globals).
Session = Annotated[ConsoleSession, Depends(_signed_in)]
Posted = Annotated[tuple[ConsoleSession, Form], Depends(_posted)]


def _router(console: Console) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    @router.get("")
    @router.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/requests", status_code=303, headers=_HEADERS)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            return Response("not found", status_code=404, headers=_HEADERS)
        return Response((HERE / "static" / name).read_bytes(), media_type=_STATIC[name],
                        headers={**_HEADERS, "Cache-Control": "public, max-age=3600"})

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        try:
            console.signed_in(request)
        except NeedSignIn:
            return console.login_page(request)
        return RedirectResponse(f"{PREFIX}/requests", status_code=303, headers=_HEADERS)  # already signed in

    @router.post("/login")
    async def login(request: Request) -> Response:
        return await console.login(request)

    @router.post("/logout")
    async def logout(posted: Posted) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    @router.get("/requests")
    async def requests_page(request: Request, session: Session) -> HTMLResponse:
        return await console.requests_page(request, session)

    @router.get("/requests/list")
    async def requests_list(request: Request, session: Session, seen: str = "",
                            request_id: Annotated[str, Query(alias="id", max_length=64)] = "") -> Response:
        """The requests page's poll (or, with ?id=, a request's own page's): one quiet path
        for the audit middleware, which leaves polls out."""
        return await console.requests_list(request, session, seen, request_id)

    @router.get("/requests/{request_id}")
    async def request_page(request: Request, request_id: str, session: Session) -> HTMLResponse:
        return await console.request_page(request, session, request_id)

    @router.get("/schema/databases")
    async def schema_databases(session: Session, instance: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
        """The request form's database picker for an instance (htmx swaps it in)."""
        return console.page("_picker.html", session, instances=console.service.instances,
                            **await console.picker(instance, "", []))

    @router.get("/schema/tables")
    async def schema_tables(session: Session, instance: Annotated[str, Query(max_length=64)] = "",
                            db: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
        """The tables of the database chosen in the request form, as checkboxes."""
        return console.page("_tables.html", session, **await console.picker(instance, db, []))

    @router.post("/requests")
    async def create_request(request: Request, posted: Posted) -> Response:
        return await console.create_request(request, *posted)

    @router.post("/requests/{request_id}/{action}")
    async def decide(request: Request, request_id: str, action: str, posted: Posted) -> Response:
        session, form = posted
        where = _back(form, "requests")
        who, service, comment = session.who, console.service, _one(form, "comment")
        actions: dict[str, Callable[[], Any]] = {
            "approve": lambda: service.view(service.approve(who, request_id, comment)),
            "deny": lambda: service.view(service.deny(who, request_id, comment)),
            "cancel": lambda: service.view(service.cancel(who, request_id)),
            "release": lambda: service.view(service.release_request(who, request_id, comment)),
        }
        if action not in actions:
            raise Refused(404, f"no action {action[:40]!r} on requests")
        return await console.act(request, session, where, actions[action],
                                 lambda view: f"request {view['id']}: {view['status']}"
                                              + (f" ({view['progress']})" if view.get("progress") else ""))

    @router.get("/access")
    async def access_page(request: Request, session: Session) -> HTMLResponse:
        return await console.access_page(request, session)

    @router.post("/grants/{grant_id}/extend")
    async def extend_grant(request: Request, grant_id: str, posted: Posted) -> Response:
        return await console.extend(request, posted[0], grant_id, posted[1])

    @router.post("/grants/{grant_id}/{action}")
    async def end_grant(request: Request, grant_id: str, action: str, posted: Posted) -> Response:
        session, form = posted
        who, service, reason = session.who, console.service, _one(form, "reason")
        actions: dict[str, Callable[[], Any]] = {
            "revoke": lambda: service.revoke_grant(who, grant_id, reason),
            "release": lambda: service.release_grant(who, grant_id, reason),
        }
        if action not in actions:
            raise Refused(404, f"no action {action[:40]!r} on grants")
        word = "revoked" if action == "revoke" else "given back"
        return await console.act(request, session, _back(form, "access"), actions[action],
                                 lambda g: f"grant {g.id} ({g.subject} {g.db}.{g.table}): {word}")

    @router.get("/audit")
    async def audit_page(request: Request, session: Session) -> HTMLResponse:
        filters, events = await console.audit_events(session.who, request.query_params)
        chains = sorted({str(e["proxy_instance"]) for e in events if e.get("proxy_instance")})
        return console.page("audit.html", session, 200, request, filters=filters, events=events, chains=chains,
                            export=urlencode({k: v for k, v in filters.items() if v}))

    @router.get("/audit/event")
    async def audit_event(request: Request, session: Session, proxy_instance: Annotated[str, Query(max_length=256)],
                          seq: Annotated[int, Query(ge=1)]) -> HTMLResponse:
        """One event's full detail, by its place in its proxy process's chain (a permalink)."""
        found = await console.call(console.audit_reader(session.who).audit_chain, proxy_instance, seq - 1, 1)
        if not found or found[0].get("seq") != seq:
            raise Refused(404, f"no event {seq} of {proxy_instance} in the audit trail")
        return console.page("event.html", session, 200, request, event=found[0])

    @router.get("/audit/export.{fmt}")
    async def audit_export(request: Request, fmt: str, session: Session) -> Response:
        if fmt not in ("csv", "json", "jsonl"):
            raise Refused(404, "export as csv, json or jsonl")
        _, events = await console.audit_events(session.who, request.query_params)
        media = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson"}[fmt]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(render(events, fmt), media_type=f"{media}; charset=utf-8", headers={
            **_HEADERS, "Content-Disposition": f'attachment; filename="jitproxy-audit-{stamp}.{fmt}"'})

    @router.get("/audit/chain")
    async def audit_chain(request: Request, session: Session, proxy_instance: str = "") -> HTMLResponse:
        if not proxy_instance or len(proxy_instance) > 256:
            raise Refused(400, "name the proxy process (host:pid) whose chain to verify")
        chain = await console.chain_state(session.who, proxy_instance)
        fragment = request.headers.get("hx-request") == "true"
        return console.page("_chain.html" if fragment else "chain.html", session, chain=chain)

    @router.get("/policies")
    async def policies_page(request: Request, session: Session) -> HTMLResponse:
        return await console.policies_page(request, session)

    @router.post("/policies/check")
    async def check(request: Request, posted: Posted) -> HTMLResponse:
        session, form = posted
        checked, report = await console.dry_run(session, form)
        if request.headers.get("hx-request") == "true":
            return console.page("_check.html", session, report=report, report_lines=check_lines(report))
        return await console.policies_page(request, session, report=report, checked=checked)

    return router


# -- forms -------------------------------------------------------------------------------------------


async def read_form(request: Request) -> Form:
    """An HTML form's fields (application/x-www-form-urlencoded, at most 256 KiB): what every
    console form sends. Anything else is refused before it is read."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, "the console takes HTML forms only")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > _MAX_FORM_BYTES:
        raise Refused(413, "that form is too large")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise Refused(413, "that form is too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "that form could not be read") from None


def _one(form: Form, name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def _same_origin(request: Request) -> None:
    """A browser names the page a POST comes from (Origin); when it does, it must be this
    console's host (another line against CSRF besides the form token and SameSite)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin == "null" or origin.partition("://")[2] != host:
        raise Refused(403, "this form was sent from another site (Origin check failed)")
