"""A running admin API (uvicorn over TLS, the real service on a SQLite store whose audit trail is
its store sink, the policy files read by the real loaders, a live schema the tests set) and
browsers for it: httpx clients that keep cookies, signed in by pasting a token into the
console's sign-in form. `sso_console`: the same with the IdP's browser login, against the local
OIDC provider (jitproxy_demo.oidc_provider) on loopback."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.api.app import create_app
from proxy.api.oidc import SignIn
from proxy.api.audit_middleware import AuditMiddleware
from proxy.audit.events import AuditEmitter, EventType, MemorySink
from proxy.audit.store_sink import StoreSink
from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet
from proxy.authz.model import Principal
from proxy.authz.policy import load_policy_dir
from proxy.identity.oidc import OidcSettings, OidcSignIn
from proxy.identity.personal_tokens import TokenIssuer
from proxy.identity.session_passwords import SessionPasswords
from jitproxy_demo.certs import TlsFiles
from proxy.store import open_store
from proxy.store.base import Store
from jitproxy_demo.inprocess import MutableClock, write_keys
from jitproxy_demo.oidc_provider import LocalOidcProvider
from proxy.workflow import check as dry
from proxy.workflow.approvals import load_approval_policies
from proxy.workflow.grants import EffectiveGrants
from proxy.workflow.service import AccessService, SchemaUnavailable
from tests.audit.test_audit_cli import RunningApi
from tests.audit.test_search_api import Verifier
from tests.helpers import HR_ENVIRONMENTS, environments

POLICY = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:owner"], max_duration: 8h}
  - {environment: prod, privileges: [UPDATE], approvals: 2, approvers: ["group:owner", "group:dba"],
     require: ["group:dba"], max_duration: 2h}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
grants:
  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT]}
  - {subject: user:olga, grant: hr_prod.employee, privileges: [SELECT]}
"""
# Tokens of the test verifier: "user:group1,group2".
DEV, OWNER, ADMIN, AUDITOR = "dev:devs", "olga:owner", "ada:dba,owner", "ines:security"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
HOSTILE_TABLE = "<img src=x onerror=alert(2)>"  # MySQL allows any name in backquotes


class FakeSchema:
    """What the instance holds, as LiveSchema answers (proxy.workflow.service.Schema); `down`:
    its database does not answer."""

    def __init__(self) -> None:
        self.held = {"hr_prod": {"employee", "salary", "title", HOSTILE_TABLE}, "hr_test": {"employee"},
                     "mysql": {"user"}, "information_schema": {"TABLES"}}
        self.down = False

    def databases(self, instance: str) -> frozenset[str]:
        if self.down:
            raise SchemaUnavailable("the database of instance default did not answer: TimeoutError")
        return frozenset(self.held)

    def tables(self, instance: str, db: str) -> frozenset[str]:
        if self.down:
            raise SchemaUnavailable("the database of instance default did not answer: TimeoutError")
        return frozenset(self.held.get(db, ()))


@dataclass
class Console:
    api: RunningApi
    store: Store
    service: AccessService
    clock: MutableClock
    calls: list[dict[str, Any]]  # the API's own admin.api_call events (the audit middleware's)
    ca: str
    schema: FakeSchema
    idp: LocalOidcProvider | None = None
    browsers: list[httpx.Client] = field(default_factory=list)

    def browser(self) -> httpx.Client:
        """A client that keeps cookies, as a browser does (Secure cookies: HTTPS only); closed
        at the end (an open keep-alive connection would hold the server's stop)."""
        client = httpx.Client(base_url=self.api.url, verify=ssl.create_default_context(cafile=self.ca), timeout=30)
        self.browsers.append(client)
        return client

    def signed_in(self, token: str) -> httpx.Client:
        browser = self.browser()
        answer = sign_in(browser, token)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/requests", answer.text
        return browser


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def sign_in(browser: httpx.Client, token: str) -> httpx.Response:
    form = browser.get("/console/login")
    return browser.post("/console/login", data={"csrf": csrf_of(form.text), "token": token})


def post(browser: httpx.Client, path: str, page: str = "/console/requests", **fields: Any) -> httpx.Response:
    """Send a form as the page at `page` would, with its CSRF token."""
    return browser.post(path, data={"csrf": csrf_of(browser.get(page).text), **fields})


def _dry_run(policy: GrantSet, store: Store, clock: Callable[[], datetime]) -> Any:
    """The dry run of proxy.workflow.check on the policy files and the store (as the proxy's,
    without views): what the Policies page's "check a statement" box calls."""
    async def check(who: Principal, sql: str, db: str | None, instance: str | None,
                    at: datetime | None) -> dict[str, Any]:
        moment = at or clock()
        grants = dry.grants_at(policy, dry.stored_for(store, who), moment)
        return dry.run(sql, db, who, analyze(sql, db), grants, moment, instance=instance or "default",
                       environment=None, views=dry.VIEWS_NOT_READ, hint=lambda d: "")
    return check


def _running(tmp_path: Path, tls_files: TlsFiles, idp: LocalOidcProvider | None = None) -> Iterator[Console]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "base.yaml").write_text(POLICY)
    approvals, policy_grants = load_approval_policies([policies]), GrantSet(load_policy_dir(policies).grants)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = MutableClock()
    audit = AuditEmitter([StoreSink(store)], instance="test:1", clock=clock)
    schema = FakeSchema()
    service = AccessService(store, lambda: approvals, audit, clock, admin_groups=frozenset({"dba"}),
                            environments=environments(HR_ENVIRONMENTS), schema=schema,
                            console_url="https://jitproxy.example.com:8443")
    grants = EffectiveGrants(lambda: policy_grants, store, clock)
    calls = MemorySink()
    sign_in = None
    if idp is not None:  # the IdP's browser login, as proxy.api.oidc.enable_sign_in builds it
        private, _ = write_keys(tmp_path / "keys")
        issuer = TokenIssuer(private.read_bytes(), issuer="jitproxy", audience="jitproxy", max_ttl=timedelta(hours=12),
                             clock=clock)
        settings = OidcSettings(issuer=idp.issuer, client_id="jitproxy", redirect_uri="https://127.0.0.1:1/v1/login/"
                                "callback", group_map={"DB Admins": "dba"})
        sign_in = SignIn(SessionPasswords(store, clock), audit, (), oidc=OidcSignIn(
            settings, issuer, clock=clock, on_sign_in=lambda s, flow: audit.emit(
                EventType.IDENTITY_SIGNED_IN, None, user=s.user, groups=list(s.groups), flow=flow)))
    app = create_app(service, Verifier(), access=grants.held_by,  # type: ignore[arg-type]
                     check=_dry_run(policy_grants, store, clock), on_change=lambda: grants.refresh(force=True),
                     audit_store=store, auditor_groups=frozenset({"security"}), sign_in=sign_in)
    api = RunningApi(AuditMiddleware(app, AuditEmitter([calls], instance="api:1")), tls_files)
    asyncio.run_coroutine_threadsafe(grants.refresh(force=True), api.loop).result(10)
    running = Console(api, store, service, clock, calls.events, str(tls_files.ca_cert), schema, idp)
    yield running
    for browser in running.browsers:
        browser.close()
    api.stop()
    audit.close()
    store.close()


@pytest.fixture
def console(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Console]:
    yield from _running(tmp_path, tls_files)


@pytest.fixture
def sso_console(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Console]:
    """The console with "Sign in with SSO": the IdP signs in olga (its groups: owner) unless a
    test says otherwise (`console.idp.browser_user`)."""
    idp = LocalOidcProvider(users={"olga": {"groups": ["owner"]}, "dora": {"groups": ["DB Admins"]}},
                            browser_user="olga").start()
    try:
        yield from _running(tmp_path, tls_files, idp)
    finally:
        idp.stop()
