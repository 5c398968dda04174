"""What every session of a proxy process shares (`ProxyContext`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import structlog

from proxy.audit.file_trail import FileTrail
from proxy.audit.events import AuditEmitter
from proxy.authz.masking import Masker
from proxy.store.base import Store
from proxy.workflow import check
from proxy.workflow.grants import EffectiveGrants
from proxy.workflow.service import AccessService
from proxy.authz.model import Analysis, Decision, Principal
from proxy.config import LimitsConfig
from proxy.identity.personal_tokens import TokenVerifier
from proxy.metrics import Stats
from proxy.protocol.admission import Admission
from proxy.protocol.errors import ER, ClientError
from proxy.protocol.session import ProxySession
from proxy.upstream.pool import UpstreamPool

from proxy.authz.cache import AnalysisCache
from proxy.upstream.instance import Instance
from proxy.workflow.hints import request_hint

if TYPE_CHECKING:
    from proxy.notify.slack import SlackApprovals
    from proxy.notify.webhook import WebhookNotifier

log = structlog.get_logger("jitproxy.server")


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ProxyContext:
    """Everything sessions share. Clock, audit, verifier and upstream are injected (tests swap them)."""

    verifier: TokenVerifier
    grants: EffectiveGrants
    instances: dict[str, Instance]  # by name, in configuration order
    audit: AuditEmitter
    analyze: AnalysisCache = field(default_factory=AnalysisCache)
    now: Clock = utc_now
    sessions: dict[int, ProxySession] = field(default_factory=dict)
    masker: Masker = field(default_factory=Masker)
    workflow: AccessService | None = None  # None: no state store (policy files only)
    notifier: WebhookNotifier | None = None  # proxy.notify (httpx) is imported only when configured
    slack: SlackApprovals | None = None  # approvals from Slack (the `slack:` section)
    on_expiry: str = "deny"  # or "disconnect" (authz.on_expiry)
    audit_store: Store | FileTrail | None = None  # searches (GET /v1/audit): the store sink's, else the file sink's
    fast_path: bool = True  # listen.fast_path (protocol/fastpath.py)
    fast_statements: int = 0  # statements handled on the fast path (stats)
    admission: Admission = field(default_factory=lambda: Admission(LimitsConfig(), 1000))
    on_token_expiry: str = "disconnect"  # identity.on_token_expiry
    token_leeway: timedelta = timedelta(seconds=30)  # identity.leeway_s

    cancels: set[asyncio.Task[None]] = field(default_factory=set)  # KILLs under way upstream
    stats: Stats = field(default_factory=Stats)  # counters for /metrics (proxy/metrics.py)

    def cancel_upstream(self, instance: Instance, thread_id: int, connection: bool, port: int | None) -> None:
        """KILL QUERY (a statement past its time limit) or KILL CONNECTION (a session that ended
        mid-statement: client gone, shutdown past its grace) on the database, in the background."""
        self.stats.cancel("session_ended_mid_statement" if connection else "statement_timeout")
        task = asyncio.get_running_loop().create_task(self._cancel(instance, thread_id, connection, port))
        self.cancels.add(task)
        task.add_done_callback(self.cancels.discard)

    async def _cancel(self, instance: Instance, thread_id: int, connection: bool, port: int | None) -> None:
        what = "connection" if connection else "query"
        try:
            killed = await instance.kill_query(thread_id, connection=connection, port=port)
        except Exception as e:  # noqa: BLE001 - logged: the operator must know a statement may still run
            log.warning("could not cancel upstream", kill=what, instance=instance.name, thread_id=thread_id,
                        error=getattr(e, "public", None) or type(e).__name__)
        else:
            log.info("cancelled upstream" if killed else "nothing to cancel upstream (ended, or the thread id "
                     "is no longer this proxy's connection)", kill=what, instance=instance.name, thread_id=thread_id)

    async def wait_for_cancels(self, timeout_s: float) -> None:
        """At shutdown: the KILLs under way get `timeout_s` to finish (each is bounded anyway)."""
        if self.cancels:
            _, pending = await asyncio.wait(list(self.cancels), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def pool(self) -> UpstreamPool:
        """The first instance's pool (one-instance deployments and tests)."""
        return next(iter(self.instances.values())).pool

    def request_hint(self, user: str, decision: Decision, instance: str | None = None) -> str:
        """The deny hint, for what a request on `instance` (the session's) could give there."""
        plan_of = None
        if self.workflow is not None and instance is not None:
            plan_of = functools.partial(self.workflow.plan_for, instance)
        return request_hint(user, decision, instance if len(self.instances) > 1 else None, plan_of)

    async def dry_run(self, who: Principal, sql: str, db: str | None, instance: str | None,
                      at: datetime | None) -> dict[str, Any]:
        """What a session of `who` on `instance` would decide for `sql` at `at` (None: now), with
        the grants in effect then and the views read as sessions read them (proxy.workflow.check).
        ValueError for an instance that is not configured."""
        target = self._instance_named(instance)
        at = at or self.now()
        stored = await asyncio.to_thread(check.stored_for, self.workflow.store, who) if self.workflow else []
        grants = check.grants_at(self.grants.policies(), stored, at).for_instance(target.name)
        analysis = await self.analyze.analyze_async(sql, len(sql.encode("utf-8")), db)
        decided, views = await _with_views(target, analysis)
        return check.run(sql, db, who, decided, grants, at, instance=target.name,
                         environment=target.environments.of_statement(analysis, db), views=views,
                         hint=lambda decision: self.request_hint(who.user, decision, target.name))

    def _instance_named(self, name: str | None) -> Instance:
        """The instance called `name`; with one instance, also None."""
        if name is None and len(self.instances) == 1:
            return next(iter(self.instances.values()))
        if name not in self.instances:
            raise ValueError(f"{'no instance ' + repr(name) if name else 'name the instance'}: "
                             f"one of {', '.join(self.instances)}")
        return self.instances[name]

    def sweep_sessions(self) -> list[int]:
        """on_expiry: disconnect — close the sessions of people who held a grant and now hold
        none. Returns the connection ids told to close."""
        if self.on_expiry != "disconnect":
            return []
        grants, now = self.grants(), self.now()
        ended = []
        for connection_id, session in list(self.sessions.items()):
            who = session.principal
            if who is None or session.connection is None or session.end_reason is not None:
                continue
            if grants.for_instance(session.instance.name).for_principal(who, now):
                session.held_grant = True
            elif session.held_grant:
                session.end_reason = "access_ended"
                session.connection.end(ClientError(
                    ER.CONNECTION_KILLED,
                    "jitproxy: your access has ended (grants expired or were revoked), so this "
                    "connection was closed. To ask again: jitproxy request create ...",
                    keep_connection=False,
                ))
                ended.append(connection_id)
        if ended:
            log.info("sessions closed: access ended", sessions=len(ended))
        return ended


async def _with_views(instance: Instance, analysis: Analysis) -> tuple[Analysis, str]:
    """(the analysis as a session decides it: its views read as their definitions, what a dry
    run says of them). A database that cannot say which names are views leaves the analysis as
    written, and the answer says the live proxy would refuse the statement meanwhile."""
    try:
        expanded = await instance.expanded_views(analysis)
    except Exception as e:  # noqa: BLE001 - reported in the answer, not a failure of the dry run
        problem = f"the database did not answer ({getattr(e, 'public', None) or type(e).__name__})"
    else:
        if expanded is not None:
            named = ", ".join(sorted(map(str, expanded.views)))
            return expanded, f"read as their definitions: {named}" if named else "none named"
        problem = "the database did not say which names are views"
    return analysis, f"{problem}: decided as tables here; the live proxy refuses a statement whose views it cannot read"
