"""One upstream database instance: its pool, what the proxy read of its schema, its side
connections (the proxy's own queries and KILLs), and the workflow's live view of it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


from proxy.authz.model import Analysis
from proxy.authz.views import MAX_DEPTH as MAX_VIEW_DEPTH
from proxy.config import UpstreamConfig
from proxy.environments import InstanceEnvironments
from proxy.mysql import wire
from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError, UpstreamTarget, open_connection
from proxy.upstream.pool import Connector, UpstreamPool
from proxy.mysql.rows import text_rows
from proxy.upstream.schema import Rows, SchemaCache, ViewCatalog


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
        async with self._side_connection() as conn:
            if port is not None:
                host = await conn.query_scalar(
                    f"SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = {int(thread_id)}")
                if host is None or not host.decode("utf-8", "replace").endswith(f":{int(port)}"):
                    return False  # gone already, or not ours
            try:
                await conn.execute(f"KILL {what} {int(thread_id)}")
            except UpstreamError as e:
                if "1094" not in e.detail:  # Unknown thread id: it had ended already
                    raise
                return False
            return True

    async def side_rows(self, sql: str) -> Rows:
        """The rows of one of the proxy's own small queries (schema lookups), on a side connection
        in its default state (no person's session variables)."""
        async with self._side_connection() as conn:
            payloads, outcome = await conn.fetch_payloads(wire.COM_QUERY, sql.encode("utf-8"))
            if outcome.error is not None:
                raise UpstreamError("schema lookup failed", f"{outcome.error.code}: {outcome.error.message}")
            return text_rows(payloads, conn.profile.deprecate_eof)

    @contextlib.asynccontextmanager
    async def _side_connection(self) -> AsyncIterator[UpstreamConnection]:
        """A connection for the proxy's own work, taken from the pool past its size limit (it must
        never wait for the sessions it may free), bounded by the health timeout (a database that
        does not answer is not waited for); reused afterwards unless the work failed."""
        async with asyncio.timeout(max(self.health_timeout_s, 1.0) * 2):
            conn = await self.pool.acquire(_SIDE_PROFILE, None, side=True)
            reusable = False
            try:
                yield conn
                reusable = True
            finally:
                self.pool.release(conn, reusable=reusable, side=True)


_SIDE_PROFILE = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)


def upstream_ssl_context(upstream: UpstreamConfig) -> ssl.SSLContext | None:
    tls = upstream.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.verify_hostname
    return ctx


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
