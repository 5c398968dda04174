"""Wiring and lifecycle: the shared per-process context, the listener, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
import re
import shlex
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from proxy.audit.file_trail import FileTrail, trail_of_sinks
from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo, Sink, StreamSink
from proxy.audit.normalize import fingerprint as audit_fingerprint
from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet
from proxy.authz.fingerprint import Fingerprint, fingerprint
from proxy.authz.masking import Masker
from proxy.store import open_store
from proxy.store.base import Store
from proxy.workflow import check
from proxy.workflow.approvals import ApprovalPolicies, NoApprovalPolicy, Plan, load_approval_policies
from proxy.workflow.runtime import ApiServer, EffectiveGrants, Poller
from proxy.workflow.service import AccessService, Limits, SchemaUnavailable
from proxy.authz.model import Analysis, Decision, Deny, DenyCode, Principal, Privilege, StatementKind
from proxy.authz.views import MAX_DEPTH as MAX_VIEW_DEPTH
from proxy.authz.policy import check_mask_overlaps, check_overlaps, load_policy_dir
from proxy.config import Config, LimitsConfig, UpstreamConfig
from proxy.environments import Environments, InstanceEnvironments
from proxy.identity.personal_tokens import IssuerConfig, TokenVerifier
from proxy.metrics import Stats
from proxy.protocol.admission import Admission
from proxy.protocol.connection import ProxyConnection
from proxy.protocol.errors import ER, ClientError
from proxy.protocol.session import ProxySession
from proxy.protocol.stream import ClientStream
from proxy.mysql import wire
from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError, UpstreamTarget, open_connection
from proxy.upstream.pool import Connector, UpstreamPool
from proxy.upstream.relay import Expect
from proxy.mysql.rows import text_rows
from proxy.upstream.schema import Rows, SchemaCache, ViewCatalog
from proxy.timespec import format_duration

if TYPE_CHECKING:
    from proxy.notify.slack import SlackApprovals
    from proxy.notify.webhook import WebhookNotifier

log = structlog.get_logger("jitproxy.server")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PolicyStore:
    """Grants, masks and approval policies from the policy directories, reloaded when a file
    changes (checked at most once a second, on the statement path: a stat per file). A broken
    edit keeps the last good policies."""

    def __init__(self, dirs: tuple[Path, ...], check_interval_s: float = 1.0,
                 on_reload: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        self.dirs = dirs
        self.on_reload = on_reload  # (event type, fields): policy.reloaded / policy.reload_failed
        self.check_interval_s = check_interval_s
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._checked = 0.0
        self.snapshot = GrantSet(())
        self.reload()

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for d in self.dirs:
            for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self) -> None:
        stamp = self._stat()
        grants, masks, digests = [], [], []
        for d in self.dirs:
            loaded = load_policy_dir(d)
            grants.extend(loaded.grants)
            masks.extend(loaded.masks)
            digests.append(loaded.digest)
        check_overlaps(grants)
        check_mask_overlaps(masks)
        approvals = load_approval_policies(self.dirs)
        self.snapshot = GrantSet(grants, version="-".join(digests), masks=masks)
        self.approvals = approvals
        self._stamp = stamp

    def _files(self) -> list[str]:
        return [path for path, _, _ in self._stamp]

    def _tell(self, event: str, **fields: Any) -> None:
        if self.on_reload is not None:
            self.on_reload(event, fields)

    def approval_policies(self) -> ApprovalPolicies:
        self()  # picks up an edited file, like the grants
        return self.approvals

    def __call__(self) -> GrantSet:
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self._checked = now
            self.check()
        return self.snapshot

    def check(self, force: bool = False) -> bool:
        """Reload when a file changed (or `force`, e.g. SIGHUP). False: the reload failed and
        the previous policies stay in effect."""
        if not force and self._stat() == self._stamp:
            return True
        before = self.snapshot.version
        try:
            self.reload()
        except Exception as e:  # noqa: BLE001 - keep serving with the last good policy
            self._stamp = self._stat()
            log.error("policy reload failed; keeping the previous grants", error=str(e))
            self._tell(EventType.POLICY_RELOAD_FAILED, version=before, error=str(e)[:1000], files=self._files())
            return False
        log.info("policies reloaded", grants=len(self.snapshot.grants), version=self.snapshot.version)
        self._tell(EventType.POLICY_RELOADED, previous_version=before, version=self.snapshot.version,
                   grants=len(self.snapshot.grants), masks=len(self.snapshot.masks), files=self._files())
        return True


class AnalysisCache:
    """analyze() results, two levels:
    - by exact statement text and current database (any statement kind);
    - by literal-normalized fingerprint and current database (proxy.authz.fingerprint), for
      QUERY analyses only, so `... WHERE id = 5` and `... WHERE id = 6` share one parse.
    Analyses do not depend on grants, so grant changes need no invalidation: every statement is
    still decided against the grants in effect. Bounded in entries and key size; cleared whole
    when full. `hits`/`fingerprint_hits`/`misses` are reported in the operator log."""

    def __init__(
        self,
        max_entries: int = 20000,
        max_statement_chars: int = 4096,
        max_statement_bytes: int = 1024 * 1024,
        thread_offload_bytes: int = 16 * 1024,
    ) -> None:
        self._entries: dict[tuple[str, str | None], Analysis] = {}
        self._shapes: dict[tuple[Fingerprint, str | None], Analysis] = {}
        self.max_entries = max_entries
        self.max_statement_chars = max_statement_chars
        self.max_statement_bytes = max_statement_bytes
        self.thread_offload_bytes = thread_offload_bytes
        self.hits = 0
        self.fingerprint_hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "fingerprint_hits": self.fingerprint_hits, "misses": self.misses}

    async def analyze_async(self, sql: str, size: int, db: str | None) -> Analysis:
        """Like calling the cache, for a statement of `size` bytes on the wire: too long is
        denied; long is analyzed off the event loop (parsing holds the GIL, but other sessions
        still get turns)."""
        if size > self.max_statement_bytes:
            return Analysis(
                kind=StatementKind.DENIED,
                statement_class="UNKNOWN",
                deny=Deny(
                    DenyCode.STATEMENT_TOO_LONG,
                    f"statement of {size} bytes is over jitproxy's limit of {self.max_statement_bytes}; split it",
                ),
            )
        if size > self.thread_offload_bytes:
            self.misses += 1
            return await asyncio.to_thread(analyze, sql, db)
        return self(sql, db)

    def __call__(self, sql: str, db: str | None) -> Analysis:
        key = (sql, db)
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        if len(sql) > self.max_statement_chars:
            self.misses += 1
            return analyze(sql, db)
        shape = fingerprint(sql)
        if shape is not None:
            hit = self._shapes.get((shape, db))
            if hit is not None:
                self.fingerprint_hits += 1
                self._remember(self._entries, key, hit)
                return hit
        self.misses += 1
        result = dataclasses.replace(analyze(sql, db), fingerprint=audit_fingerprint(sql))
        self._remember(self._entries, key, result)
        if shape is not None and result.kind is StatementKind.QUERY:
            self._remember(self._shapes, (shape, db), result)
        return result

    def _remember(self, table: dict, key: object, value: Analysis) -> None:
        if len(table) >= self.max_entries:
            table.clear()
        table[key] = value


# The command runs only with these set, and a person denied in a MySQL client has no other
# place to learn it from: the proxy cannot know their token's file or their API's name.
_RUN_WITH = ("To request access, with JITPROXY_API, JITPROXY_CA and JITPROXY_TOKEN set (the admin API's URL, "
             "its CA file, your token), run: ")


_HINT_SPAN = timedelta(hours=1)  # what the deny hint asks for, within the environment's maximum
PlanOf = Callable[[str, frozenset[Privilege]], Plan]  # (db, privileges) -> the approval rules, or NoApprovalPolicy


def request_hint(user: str, decision: Decision, instance: str | None = None, plan_of: PlanOf | None = None) -> str:
    """The exact command that asks for what the person was missing (one per database), for an
    hour or the most the database's environment allows; where no request can give it (`plan_of`,
    approvals.request_plan for the instance, raises NoApprovalPolicy), why instead of a command
    that would be refused. `instance`: named when the proxy has several (the request must say
    which)."""
    where = f" --instance {_shell_word(instance)}" if instance else ""
    wanted: dict[str, tuple[set[str], set[Privilege]]] = {}
    if decision.code is DenyCode.MISSING_GRANT and decision.missing:
        for r in decision.missing:
            tables, privileges = wanted.setdefault(r.target.db, (set(), set()))
            tables.add(r.target.table if r.target.table is not None else "*")
            privileges.add(r.privilege)
    elif decision.code is DenyCode.DATABASE_ACCESS:
        wanted[sorted(decision.analysis.database_access)[0]] = ({"<table>"}, set())
    commands, refusals = [], []
    for db, (tables, privileges) in sorted(wanted.items()):
        try:
            plan = plan_of(db, frozenset(privileges or {Privilege.SELECT})) if plan_of else None
        except NoApprovalPolicy as e:
            refusals.append(f"No request can give {', '.join(sorted(p.value for p in privileges)) or 'access'} on "
                            f"{db}: {e}; an admin can grant it (jitproxy grant add)")
            continue
        span = format_duration(min(_HINT_SPAN, plan.max_duration) if plan else _HINT_SPAN)
        args = " ".join(f"--table {t if t == '<table>' else _shell_word(t)}" for t in sorted(tables))
        args += "".join(f" --privilege {p}" for p in sorted(p.value for p in privileges))
        commands.append(f"jitproxy request create{where} --db {_shell_word(db)} {args} --for {span} --reason '...'")
    hint = _RUN_WITH + " ; ".join(commands) if commands else ""
    return " ".join([hint, *refusals]).strip()


def _shell_word(text: str) -> str:
    """Names are quoted for a POSIX shell only when they need it."""
    return text if re.fullmatch(r"[A-Za-z0-9_.$-]+", text) else shlex.quote(text)


@dataclass
class Instance:
    """One upstream database instance: its pool of shared-identity connections, its schema
    cache, and the environments of its databases (proxy.environments)."""

    name: str
    pool: UpstreamPool
    environments: InstanceEnvironments = field(default_factory=InstanceEnvironments)
    connect_timeout_s: float = 10.0
    schema: SchemaCache = field(default_factory=SchemaCache)
    views: ViewCatalog = field(default_factory=ViewCatalog)
    # matches the shared database account as error messages name it ('user'@'host')
    shared_account_pattern: re.Pattern[str] | None = None
    statement_timeout_s: float | None = None  # upstream.statement_timeout_s
    health_interval_s: float = 5.0
    health_timeout_s: float = 3.0

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in (self.pool.server_version or "").lower()

    @property
    def environment(self) -> str | None:
        """The instance's own environment (a database may be in another: `environments`)."""
        return self.environments.default

    async def expanded_views(self, analysis: Analysis) -> Analysis | None:
        """`analysis` with the views it names read as their definitions (proxy.authz.views), the
        views of its databases read first where not known (a few rounds: nested views may be
        elsewhere); None if they are still not known. Raises what side_rows raises."""
        for _ in range(MAX_VIEW_DEPTH + 2):
            expanded = self.views.expand(analysis)
            if not isinstance(expanded, frozenset):
                return expanded
            await self.views.load(expanded, self.side_rows)
        return None

    async def kill_query(self, thread_id: int, connection: bool = False, port: int | None = None) -> bool:
        """KILL QUERY (or KILL CONNECTION) on a side connection of the same instance, bounded by
        the health timeout: a database that does not answer is not waited for. A side
        connection is taken from the pool past its size limit (a cancel must never wait for the
        sessions it would free). With `port` (the killed connection's own end), the thread is
        killed only if the server's PROCESSLIST shows it connected from that port: after a
        restart or a failover the same thread id may be someone else's. False: not killed."""
        what = "CONNECTION" if connection else "QUERY"
        async with asyncio.timeout(max(self.health_timeout_s, 1.0) * 2):
            conn = await self.pool.acquire(_SIDE_PROFILE, None, side=True)
            reusable = False
            try:
                if port is not None:
                    host = await conn.query_scalar(
                        f"SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = {int(thread_id)}")
                    if host is None or not host.decode("utf-8", "replace").endswith(f":{int(port)}"):
                        reusable = True
                        return False  # gone already, or not ours
                try:
                    await conn.execute(f"KILL {what} {int(thread_id)}")
                except UpstreamError as e:
                    if "1094" not in e.detail:  # Unknown thread id: it had ended already
                        raise
                    reusable = True
                    return False
                reusable = True
                return True
            finally:
                self.pool.release(conn, reusable=reusable, side=True)

    async def side_rows(self, sql: str) -> Rows:
        """The rows of one of the proxy's own small queries (schema lookups), on a side connection
        in its default state (no person's session variables), bounded like kill_query."""
        async with asyncio.timeout(max(self.health_timeout_s, 1.0) * 2):
            conn = await self.pool.acquire(_SIDE_PROFILE, None, side=True)
            reusable = False
            try:
                payloads, outcome = await conn.fetch_payloads(wire.COM_QUERY, sql.encode("utf-8"))
                if outcome.error is not None:
                    raise UpstreamError("schema lookup failed", f"{outcome.error.code}: {outcome.error.message}")
                reusable = True
                return text_rows(payloads, conn.profile.deprecate_eof)
            finally:
                self.pool.release(conn, reusable=reusable, side=True)


_SIDE_PROFILE = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)


class LiveSchema:
    """What the instances' databases hold, read live for the workflow (requests are checked
    against it: proxy.workflow.service.Schema). The workflow runs in worker threads; each lookup
    runs on the proxy's event loop, on a side connection (Instance.side_rows, bounded). Nothing
    is cached: a request is rare, and one for a table created a second ago must be accepted."""

    def __init__(self, instances: Mapping[str, Instance], loop: asyncio.AbstractEventLoop) -> None:
        self._instances = instances
        self._loop = loop

    def databases(self, instance: str) -> frozenset[str]:
        return self._names(instance, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")

    def tables(self, instance: str, db: str) -> frozenset[str]:
        quoted = "'" + db.replace("\\", "\\\\").replace("'", "''") + "'"
        return self._names(instance, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {quoted}")

    def _names(self, name: str, sql: str) -> frozenset[str]:
        """The first column of `sql` on the instance ("*", every instance: on each of them)."""
        found: set[str] = set()
        for instance in [self._instances[name]] if name in self._instances else list(self._instances.values()):
            lookup = asyncio.run_coroutine_threadsafe(instance.side_rows(sql), self._loop)
            try:  # side_rows is bounded; this bound is for a loop that stopped meanwhile
                rows = lookup.result(timeout=max(instance.health_timeout_s, 1.0) * 2 + 1)
            except Exception as e:  # noqa: BLE001 - whatever kept the database from answering
                why = getattr(e, "public", None) or type(e).__name__
                raise SchemaUnavailable(f"the database of instance {instance.name} did not answer: {why}") from None
            found.update(row[0] for row in rows if row and row[0] is not None)
        return frozenset(found)


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


def upstream_ssl_context(upstream: UpstreamConfig) -> ssl.SSLContext | None:
    tls = upstream.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.verify_hostname
    return ctx


def listen_ssl_context(cfg: Config) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.listen.tls.cert_file), str(cfg.listen.tls.key_file))
    return ctx


def build_verifier(cfg: Config, clock: Clock = utc_now) -> TokenVerifier:
    issuers = [
        IssuerConfig(
            issuer=i.issuer,
            audience=i.audience,
            algorithms=tuple(i.algorithms),
            public_key_pem=i.public_key_file.read_bytes() if i.public_key_file else None,
            jwks_uri=i.jwks_uri,
            groups_claim=i.groups_claim,
            user_claim=i.user_claim,
        )
        for i in cfg.identity.issuers
    ]
    return TokenVerifier(
        issuers,
        max_ttl=cfg.identity.max_token_ttl,
        leeway=timedelta(seconds=cfg.identity.leeway_s),
        clock=clock,
    )


def build_audit(cfg: Config, extra_sinks: list[Sink] | None = None, store: Store | None = None) -> AuditEmitter:
    """The emitter and its sinks. A `store` sink writes into `store` (the state store)."""
    sinks: list[Sink] = []
    for s in cfg.audit.sinks:
        if s.type == "stdout":
            sinks.append(StreamSink(required=s.required))
        elif s.type == "file":
            assert s.path is not None
            sinks.append(FileSink(s.path, max_bytes=s.max_bytes, backups=s.backups, fsync=s.fsync, required=s.required))
        else:
            from proxy.audit.store_sink import StoreSink

            if store is None:
                raise ValueError("audit.sinks: a store sink needs the state store")
            sinks.append(StoreSink(store, required=s.required))
    sinks.extend(extra_sinks or [])
    a = cfg.audit
    return AuditEmitter(sinks, instance=f"{socket.gethostname()}:{os.getpid()}", max_statement_chars=a.max_statement_chars,
                        max_event_bytes=a.max_event_bytes, redact_literals=a.redact_literals, mode=a.mode,
                        max_queue=a.max_queue, durable_timeout_s=a.durable_timeout_s,
                        checkpoint_interval_s=a.checkpoint_interval_s, checkpoint_events=a.checkpoint_events)


def upstream_connector(upstream: UpstreamConfig, session_factory: Any = None) -> Connector:
    """How new upstream connections authenticate: a fixed password, or a fresh IAM token for
    each connection (`session_factory`: tests inject boto3 sessions)."""
    target = UpstreamTarget(
        host=upstream.host,
        port=upstream.port,
        user=upstream.user,
        ssl_context=upstream_ssl_context(upstream),
        connect_timeout_s=upstream.connect_timeout_s,
    )
    if upstream.auth == "password":
        password = upstream.resolve_password()

        async def with_password(profile: ClientProfile) -> UpstreamConnection:
            return await open_connection(target, password, profile)

        return with_password

    from proxy.upstream.iam import IamTarget, IamTokenSource  # boto3 only when it is used

    assert upstream.iam is not None and target.ssl_context is not None
    iam = upstream.iam
    source = IamTokenSource(
        IamTarget(upstream.host, upstream.port, upstream.user, iam.region, iam.profile, iam.account_id, iam.resource_id),
        **({"session_factory": session_factory} if session_factory else {}),
    )

    async def with_iam_token(profile: ClientProfile) -> UpstreamConnection:
        token = await source.token()
        try:
            return await open_connection(target, token, profile)
        except UpstreamError as e:
            raise source.refused(e) if e.kind == "refused" else e from None
        finally:
            del token

    with_iam_token.tokens = source  # type: ignore[attr-defined]
    return with_iam_token


def build_context(cfg: Config, audit: AuditEmitter | None = None, now: Clock = utc_now,
                  aws_session_factory: Any = None, extra_sinks: list[Sink] | None = None) -> ProxyContext:
    """Everything the proxy shares, built in its event loop (the workflow reads the live schema
    on it from worker threads)."""
    environments = Environments.from_config(cfg)
    instances = {
        u.name: Instance(
            name=u.name,
            environments=environments.instances[u.name],
            connect_timeout_s=u.connect_timeout_s,
            pool=UpstreamPool(
                upstream_connector(u, aws_session_factory),
                max_idle=u.pool.max_idle,
                max_size=u.pool.max_size,
                max_idle_time_s=u.pool.max_idle_time_s,
                ping_after_idle_s=u.pool.ping_after_idle_s,
                ping_timeout_s=u.pool.ping_timeout_s,
                connect_deadline_s=u.pool.connect_deadline_s,
                acquire_timeout_s=u.pool.acquire_timeout_s,
                name=u.name,
            ),
            shared_account_pattern=re.compile(rf"'{re.escape(u.user)}'@'[^']*'"),
            statement_timeout_s=u.statement_timeout_s,
            health_interval_s=u.health_interval_s,
            health_timeout_s=u.health_timeout_s,
            schema=SchemaCache(u.schema_cache_ttl_s),
            views=ViewCatalog(u.schema_cache_ttl_s),
        )
        for u in cfg.instances
    }
    store = open_configured_store(cfg)
    audit_store = None
    if any(s.type == "store" for s in cfg.audit.sinks):
        # Store objects of their own: the sink's batches, searches and the grant poll never
        # wait for each other on one connection.
        sink_store, audit_store = open_configured_store(cfg), open_configured_store(cfg)
    if audit is None:
        audit = build_audit(cfg, extra_sinks, sink_store if audit_store else None)
        if audit_store:
            audit.on_close.append(sink_store.close)
    if audit_store is None:  # no store sink: searches read the file sink's lines (proxy.audit.file_trail)
        audit_store = trail_of_sinks(cfg.audit.sinks)
    notifier = build_notifier(cfg)
    slack = build_slack(cfg)
    policy_files = PolicyStore(cfg.policies.dirs, on_reload=lambda event, fields: audit.emit(event, None, **fields))
    workflow = AccessService(
        store,
        policy_files.approval_policies,
        audit,
        now,
        admin_groups=frozenset(cfg.api.admin_groups),
        notify=_notify_all(notifier, slack),
        limits=Limits(pending_ttl=cfg.api.pending_ttl, max_grant_duration=cfg.api.max_grant_duration),
        # One `upstream:` keeps requests and grants for every instance ("*"): renaming it later
        # cannot orphan them. Several: each names its instance.
        instances=[u.name for u in cfg.upstreams],
        environments=environments,
        schema=LiveSchema(instances, asyncio.get_running_loop()),
    )
    if slack is not None:
        slack.bind(workflow)  # decisions from Slack go through the same service
    return ProxyContext(
        analyze=AnalysisCache(
            max_statement_bytes=cfg.authz.max_statement_bytes,
            thread_offload_bytes=cfg.authz.thread_offload_bytes,
        ),
        verifier=build_verifier(cfg, now),
        grants=EffectiveGrants(policy_files, store, now),
        instances=instances,
        audit=audit,
        now=now,
        masker=Masker(cfg.authz.resolve_mask_salt()),
        workflow=workflow,
        notifier=notifier,
        slack=slack,
        on_expiry=cfg.authz.on_expiry,
        audit_store=audit_store,
        fast_path=cfg.listen.fast_path,
        admission=Admission(cfg.limits, cfg.listen.max_connections),
        on_token_expiry=cfg.identity.on_token_expiry,
        token_leeway=timedelta(seconds=cfg.identity.leeway_s),
    )


def open_configured_store(cfg: Config) -> Store:
    if cfg.store.backend == "sqlite":
        cfg.store.path.parent.mkdir(parents=True, exist_ok=True)
    return open_store(cfg.store.url())


def build_slack(cfg: Config) -> SlackApprovals | None:
    """Approvals from Slack, when configured (slack_sdk is imported only then)."""
    if cfg.slack is None:
        return None
    from proxy.notify.slack import slack_from_config

    return slack_from_config(cfg.slack)


def _notify_all(*notifiers: Any) -> Callable[[str, dict[str, Any]], None]:
    """The workflow's one `notify`: each configured notifier in turn (each only queues)."""
    targets = [n.notify for n in notifiers if n is not None]

    def notify(event: str, body: dict[str, Any]) -> None:
        for target in targets:
            target(event, body)

    return notify


def build_notifier(cfg: Config) -> WebhookNotifier | None:
    if not cfg.notify.webhooks:
        return None
    from proxy.notify.webhook import WebhookNotifier, WebhookTarget

    targets = []
    for w in cfg.notify.webhooks:
        url = os.environ.get(w.url_env)
        if not url:
            raise ValueError(f"notify.webhooks[{w.name}]: environment variable {w.url_env} is not set")
        secret = os.environ.get(w.secret_env) if w.secret_env else None
        targets.append(WebhookTarget(url=url, format=w.format, events=frozenset(w.events), name=w.name, secret=secret))
    return WebhookNotifier(targets) if targets else None


def _config_part(cfg: Config, key: str) -> Any:
    if key == "instances":  # what a live pool cannot change: where it connects and as whom
        return [(u.name, u.host, u.port, u.user, u.auth, u.tls, u.listen_port) for u in cfg.instances]
    if key == "environments":  # sessions, the workflow and the audit mode took them at start
        return [(u.name, u.environment, u.environments) for u in cfg.instances]
    if key.startswith("listen."):
        return getattr(cfg.listen, key.split(".", 1)[1])
    return getattr(cfg, key)


def _merge_reloadable(old: Config, new: Config) -> Config:
    """The running config with what a reload may change taken from `new`: listen timeouts and
    limits, TLS files, limits, identity, authz, policies, log; the rest stays (see reload)."""
    listen = old.listen.model_copy(update={k: getattr(new.listen, k) for k in (
        "tls", "handshake_timeout_s", "idle_timeout_s", "max_packet_bytes", "max_handshake_packet_bytes",
        "max_connections")})
    return old.model_copy(update={"listen": listen, "limits": new.limits, "identity": new.identity,
                                  "authz": new.authz, "policies": new.policies, "log": new.log})


HOUSEKEEPING_S = 0.5  # how often idle connections and running statements are looked at


class ProxyServer:
    def __init__(self, cfg: Config, ctx: ProxyContext, reuse_port: bool = False) -> None:
        self.cfg = cfg
        self.reuse_port = reuse_port  # `serve --workers N`: N processes share each listening port
        self.ctx = ctx
        self.tls = listen_ssl_context(cfg)
        self._ids = itertools.count(1)
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[asyncio.Task[None], ProxyConnection] = {}
        self.port: int | None = None  # the first instance's
        self.ports: dict[str, int] = {}  # every instance's, by name
        self.api: ApiServer | None = None
        self.poller: Poller | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._pingers: list[asyncio.Task[None]] = []
        self._refusal_log: dict[tuple[str, str], tuple[float, int]] = {}

    async def start(self) -> None:
        for u in self.cfg.instances:
            instance = self.ctx.instances[u.name]
            server = await asyncio.start_server(
                functools.partial(self._accept, instance), host=self.cfg.listen.host, port=self.cfg.port_of(u),
                limit=2**20, reuse_port=self.reuse_port or None,
            )
            self._servers.append(server)
            self.ports[u.name] = server.sockets[0].getsockname()[1]
        self.port = next(iter(self.ports.values()))
        await asyncio.gather(*(self._probe_upstream(i) for i in self.ctx.instances.values()))
        await self._start_workflow()
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="jitproxy-housekeeping")
        self._pingers = [asyncio.create_task(self._health_pings(i), name=f"jitproxy-health-{i.name}")
                         for i in self.ctx.instances.values()]
        for name, port in self.ports.items():
            instance = self.ctx.instances[name]
            log.info("listening", host=self.cfg.listen.host, port=port, instance=name, environment=instance.environment,
                     upstream_version=instance.pool.server_version, api_port=self.api.port if self.api else None)

    async def _start_workflow(self) -> None:
        try:
            await self.ctx.grants.refresh(force=True)
        except Exception as e:  # noqa: BLE001 - the poller retries; policy-file grants work meanwhile
            log.error("state store unavailable at start", error=type(e).__name__)
        workflow = self.ctx.workflow
        self.poller = Poller(self.ctx.grants, self.cfg.store.poll_interval_s,
                             workflow.expire_pending if workflow else None, sweep=self.ctx.sweep_sessions)
        self.poller.start()
        if self.ctx.notifier is not None:
            await self.ctx.notifier.start()
        if self.ctx.slack is not None:
            self.ctx.slack.start()
        if self.cfg.api.enabled and workflow is not None:
            # FastAPI and uvicorn (~45 MB) only in processes that serve the API
            from proxy.api.app import create_app
            from proxy.api.audit_middleware import AuditMiddleware

            from proxy.metrics import renderer

            app = AuditMiddleware(create_app(workflow, self.ctx.verifier, access=self.ctx.grants.held_by,
                                             check=self.ctx.dry_run,
                                             on_change=lambda: self.ctx.grants.refresh(), health=self.health,
                                             ready=self.ready, metrics=renderer(self),
                                             audit_store=self.ctx.audit_store, slack=self.ctx.slack,
                                             auditor_groups=frozenset(self.cfg.api.auditor_groups)),
                                  self.ctx.audit)
            tls = self.cfg.listen.tls
            self.api = ApiServer(app, self.cfg.api.host, self.cfg.api.port, str(tls.cert_file), str(tls.key_file),
                                 reuse_port=self.reuse_port)
            await self.api.start()

    async def _housekeeping(self) -> None:
        """Per-connection timers, done once for all connections (a timer per statement costs
        more than the statement's authorization): close connections idle past
        listen.idle_timeout_s; write `statement.allowed` for best_effort statements still running."""
        idle_timeout_s = self.cfg.listen.idle_timeout_s
        interval = min(HOUSEKEEPING_S, idle_timeout_s / 4)
        turns = 0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            turns += 1
            if turns % 120 == 0:
                self.ctx.admission.prune()
            for instance in self.ctx.instances.values():
                if instance.pool.not_responding_since is not None:  # statements sent since: no wait
                    self._fail_waiting_statements(instance, grace_s=instance.health_timeout_s)
            for conn in list(self._connections.values()):
                try:
                    if conn.idle and now - conn.idle_since >= idle_timeout_s:
                        conn.time_out()
                    elif not conn.idle:
                        conn.session.announce_in_flight(now)
                        conn.session.check_statement_time(now)
                except Exception:  # noqa: BLE001 - housekeeping must outlive any one connection
                    log.exception("housekeeping failed for a connection", connection_id=conn.connection_id)

    def health(self) -> dict[str, Any]:
        """What /healthz answers: each upstream instance's pool state, the store poller's and the
        audit trail's (mode, events, refusals, each sink's state and counters). A failing audit
        sink makes it "degraded": fail_closed statements are refused meanwhile."""
        upstreams = {}
        for name, instance in self.ctx.instances.items():
            h = instance.pool.health()
            upstreams[name] = {"environment": instance.environment, **h}
        store = {"revision": self.ctx.grants.revision,
                 "poll_failures": self.poller.errors if self.poller else None}
        audit = self.ctx.audit.stats()
        for sink in audit["sinks"].values():
            del sink["last_error"]  # may name a path or a host: the proxy's log has it
        degraded = (any(u["state"] == "down" or not u["responding"] for u in upstreams.values())
                    or bool(store["poll_failures"])
                    or not all(sink["up"] for sink in audit["sinks"].values()))
        return {"status": "degraded" if degraded else "ok", "upstreams": upstreams, "store": store, "audit": audit,
                "connections": self.ctx.admission.stats()}

    def ready(self) -> dict[str, Any]:
        """What /readyz answers: ready to take sessions when every database answers (connects and
        health pings) and the state store can be read. Unlike /healthz, not ready is a 503:
        a load balancer sends new clients elsewhere meanwhile."""
        problems = []
        for name, instance in self.ctx.instances.items():
            h = instance.pool.health()
            if not h["responding"]:
                problems.append(f"{name}: the database is not responding")
            elif h["state"] == "down":
                problems.append(f"{name}: {h['last_error'] or 'the database is down'}")
        if self.poller is not None and self.poller.errors:
            problems.append("the state store cannot be read")
        return {"ready": not problems, "problems": problems}

    async def _probe_upstream(self, instance: Instance) -> None:
        """Open (and pool) one upstream connection at start: clients then see the database's own
        version from their first handshake. A database that is down does not stop the proxy."""
        profile = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)
        try:
            conn = await asyncio.wait_for(instance.pool.acquire(profile, None), instance.connect_timeout_s)
        except Exception as e:  # noqa: BLE001 - reported, retried by every new session
            log.warning("upstream unavailable at start", instance=instance.name,
                        error=getattr(e, "public", type(e).__name__), detail=getattr(e, "detail", ""))
            return
        instance.pool.release(conn)

    def _server_version(self, instance: Instance) -> str:
        if self.cfg.listen.server_version:
            return self.cfg.listen.server_version
        upstream = instance.pool.server_version
        return f"{upstream}-jitproxy" if upstream else "8.0.36-jitproxy"

    async def _accept(self, instance: Instance, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        connection_id = next(self._ids)
        stream = ClientStream(reader, writer, self.cfg.listen.max_packet_bytes)
        refusal = self.ctx.admission.connect(address)
        if refusal is not None:
            self._refused(refusal.code, address)
            try:
                await asyncio.wait_for(stream.write(wire.make_err(refusal.error.code, refusal.error.sqlstate,
                                                                  refusal.error.message)), 1)
            except Exception:  # noqa: BLE001 - a refused peer may be gone or never read
                pass
            writer.close()
            return
        self._tasks.add(task)
        session: ProxySession | None = None
        try:
            session = ProxySession(self.ctx, instance, connection_id, peer_text)
            conn = ProxyConnection(
                stream,
                session,
                self.tls,
                connection_id,
                peer_text,
                handshake_timeout_s=self.cfg.listen.handshake_timeout_s,
                idle_timeout_s=self.cfg.listen.idle_timeout_s,
                server_version=self._server_version(instance),
                max_handshake_packet_bytes=self.cfg.listen.max_handshake_packet_bytes,
            )
            session.connection = conn
            self._connections[task] = conn
            await conn.start()
        except asyncio.CancelledError:
            # Shutdown past its grace period. This task is the connection's top level: ending it
            # quietly keeps asyncio's stream callback from logging the cancellation as an error.
            return
        except Exception:  # noqa: BLE001 - one broken connection never takes the process down
            log.exception("connection failed", connection_id=connection_id)
        finally:
            self._tasks.discard(task)
            self._connections.pop(task, None)
            self.ctx.admission.disconnect(address, session.admitted_user if session is not None else None)
            writer.close()

    def _refused(self, code: str, address: str) -> None:
        """A connection refused by a limit: logged and audited (session.rejected) at most once
        per limit and address every 10 s, with the count of those refused since: a flood of
        connections must not become a flood of log lines and events."""
        now = time.monotonic()
        key = (code, address)
        last = self._refusal_log.get(key)
        if last is not None and now - last[0] < 10:
            self._refusal_log[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last else 0
        if len(self._refusal_log) > 10_000:
            self._refusal_log.clear()
        self._refusal_log[key] = (now, 0)
        log.warning("connection refused", reason=code, peer=address, refused_since_last=suppressed)
        self.ctx.audit.emit(EventType.SESSION_REJECTED, SessionInfo(session_id=uuid.uuid4().hex[:16], client_addr=address),
                            reason_code=code, reason="connection limit reached", refused_since_last=suppressed)

    async def _health_pings(self, instance: Instance) -> None:
        """A COM_PING every health_interval_s on a connection of the pinger's own. No answer
        within health_timeout_s (a hung or frozen database: it accepts, then says nothing) marks
        the instance not responding: /healthz degraded, new sessions fail at once, statements
        waiting on it fail; an answer marks it responding again."""
        pool = instance.pool
        profile = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)
        conn: UpstreamConnection | None = None
        try:
            while True:
                await asyncio.sleep(instance.health_interval_s)
                try:
                    async with asyncio.timeout(instance.health_timeout_s):
                        if conn is None or conn.closed:
                            conn = await pool.acquire(profile, None, side=True)
                        outcome = await conn.request(wire.COM_PING, b"", Expect.OK)
                    if outcome is None or outcome.error is not None:
                        raise UpstreamError("ping refused", outcome.error.message if outcome and outcome.error else "")
                except TimeoutError:
                    if conn is not None:
                        conn.close()
                        conn = None
                    first = pool.not_responding_since is None
                    pool.mark_not_responding(f"no answer to a ping within {instance.health_timeout_s:g} s")
                    if first:
                        self._fail_waiting_statements(instance)
                    continue
                except Exception as e:  # noqa: BLE001 - refused or unreachable: the pool reports that state
                    if conn is not None:
                        conn.close()
                        conn = None
                    log.debug("health ping failed", instance=instance.name,
                              error=getattr(e, "public", type(e).__name__))
                    pool.not_responding_since = None  # an answer, even a refusal, is not a hang
                    continue
                pool.mark_responding()
        finally:  # cancelled at shutdown, wherever it waited
            if conn is not None:
                conn.close()

    def _fail_waiting_statements(self, instance: Instance, grace_s: float = 0.0) -> None:
        """The database stopped answering: sessions waiting on it (for more than `grace_s`) are
        told so and closed (what their statement did is unknown, as after a lost connection)."""
        error = ClientError(
            ER.UPSTREAM_LOST,
            f"Lost connection to the database during query: jitproxy: the database '{instance.name}' is not "
            f"responding (no answer to a health ping within {instance.health_timeout_s:g} s); whether the "
            "statement ran is unknown",
            keep_connection=False,
        )
        failed = 0
        now = time.monotonic()
        for conn in list(self._connections.values()):
            session = conn.session
            since = session.running_since
            if (session.instance is instance and session.upstream is not None and session.upstream.busy
                    and not conn.killed and (grace_s == 0 or (since is not None and now - since >= grace_s))):
                session.end_reason = "upstream_not_responding"
                conn.kill_error = error
                conn.kill()
                failed += 1
        if failed:
            log.error("statements failed: database not responding", instance=instance.name, sessions=failed)

    def reload(self) -> bool:
        """SIGHUP: read the config file again and apply it, and reload the policy files, all or
        nothing: an invalid config or policy keeps what runs and says why (log + audit). Settings
        that need a new listener or store (ports, upstream address or account, store, API, audit
        sinks) are named in the log and take effect at the next restart."""
        from proxy.config import ConfigError, load_config

        if self.cfg.source is None:
            log.warning("reload: no config file to read (configured in code)")
            return False
        try:
            new = load_config(self.cfg.source)
            tls = listen_ssl_context(new)
            new.authz.resolve_mask_salt()
        except (ConfigError, ValueError, OSError, ssl.SSLError) as e:
            log.error("config reload failed; keeping the running config", error=str(e)[:2000])
            self.ctx.audit.emit(EventType.POLICY_RELOAD_FAILED, None, error=f"config: {str(e)[:1000]}",
                                files=[str(self.cfg.source)])
            return False
        policies = self.ctx.grants.policies
        if new.policies.dirs != policies.dirs:
            policies.dirs = new.policies.dirs
        if not policies.check(force=True):
            return False
        restart = [key for key in ("listen.host", "listen.port", "store", "api", "audit", "instances", "environments",
                                   "slack")
                   if _config_part(self.cfg, key) != _config_part(new, key)]
        self.cfg = _merge_reloadable(self.cfg, new)
        self.tls = tls
        self.ctx.admission.configure(new.limits, new.listen.max_connections)
        self.ctx.on_token_expiry = new.identity.on_token_expiry
        self.ctx.token_leeway = timedelta(seconds=new.identity.leeway_s)
        for u in new.instances:
            instance = self.ctx.instances.get(u.name)
            if instance is not None:
                instance.statement_timeout_s = u.statement_timeout_s
                instance.health_interval_s = u.health_interval_s
                instance.health_timeout_s = u.health_timeout_s
                instance.pool.acquire_timeout_s = u.pool.acquire_timeout_s
        log.info("config reloaded", source=str(self.cfg.source),
                 **({"needs_restart": restart} if restart else {}))
        return True

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; close idle sessions now; give sessions in the middle of a statement
        `grace_s` to finish it; then cancel what is left."""
        for server in self._servers:
            server.close()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for pinger in self._pingers:
            pinger.cancel()
        for task, conn in list(self._connections.items()):
            conn.stopping = True
            if conn.idle:
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Sessions cut off mid-statement have their upstream connections killed (KILL
        # CONNECTION on a side connection): nothing keeps running, or holding locks, after us.
        await self.ctx.wait_for_cancels(timeout_s=5)
        if self.api is not None:
            await self.api.stop()
        if self.poller is not None:
            await self.poller.stop()
        if self.ctx.notifier is not None:
            await self.ctx.notifier.close()
        if self.ctx.slack is not None:
            await asyncio.to_thread(self.ctx.slack.close)
        if self.ctx.grants.store is not None:
            self.ctx.grants.store.close()
        if self.ctx.audit_store is not None:
            self.ctx.audit_store.close()
        for instance in self.ctx.instances.values():
            await instance.pool.close()
        log.info("stopped", analysis_cache=self.ctx.analyze.stats(), audit=self.ctx.audit.stats(),
                 fast_path_statements=self.ctx.fast_statements,
                 upstream_connections_opened={i.name: i.pool.opened for i in self.ctx.instances.values()})
        self.ctx.audit.close()
