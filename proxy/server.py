"""The proxy process: the listener, sessions, housekeeping, reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import ssl
import time
import uuid
from datetime import timedelta
from typing import Any

import structlog

from proxy.audit.events import EventType, SessionInfo
from proxy.workflow.runtime import ApiServer, Poller
from proxy.config import Config
from proxy.protocol.connection import ProxyConnection
from proxy.protocol.errors import ER, ClientError
from proxy.protocol.session import ProxySession
from proxy.protocol.stream import ClientStream
from proxy.mysql import wire
from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError
from proxy.upstream.relay import Expect

from proxy.context import ProxyContext
from proxy.upstream.instance import Instance
from proxy.wiring import config_part, listen_ssl_context, merge_reloadable


log = structlog.get_logger("jitproxy.server")


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
        self.sign_in: Any = None  # proxy.api.oidc.SignIn: session passwords, the IdP sign-in
        self.api: ApiServer | None = None
        self.poller: Poller | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._pingers: list[asyncio.Task[None]] = []
        self._refusal_log: dict[tuple[str, str], tuple[float, int]] = {}

    async def start(self) -> None:
        # Session passwords (and the IdP sign-in when `oidc:` is configured) need the state store:
        # on every replica, API or not, so a password issued by one is accepted by all.
        if self.ctx.workflow is not None:
            from proxy.api.oidc import enable_sign_in

            self.sign_in = enable_sign_in(self.cfg, self.ctx)
        for u in self.cfg.instances:
            instance = self.ctx.instances[u.name]
            server = await asyncio.start_server(
                functools.partial(self._accept, instance), host=self.cfg.listen.host, port=self.cfg.port_of(u),
                limit=2**20, reuse_port=self.reuse_port or None,
            )
            self._servers.append(server)
            self.ports[u.name] = server.sockets[0].getsockname()[1]
        self.port = next(iter(self.ports.values()))
        if self.sign_in is not None:  # (after binding: `jitproxy connect` asks which port a `0` became)
            self.sign_in.ports.update(self.ports)
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
            from proxy.console.session import session_key

            from proxy.metrics import renderer

            app = AuditMiddleware(create_app(workflow, self.ctx.verifier, access=self.ctx.grants.held_by,
                                             check=self.ctx.dry_run,
                                             on_change=lambda: self.ctx.grants.refresh(), health=self.health,
                                             ready=self.ready, metrics=renderer(self),
                                             audit_store=self.ctx.audit_store, slack=self.ctx.slack,
                                             auditor_groups=frozenset(self.cfg.api.auditor_groups),
                                             sign_in=self.sign_in, console=self.cfg.console.enabled,
                                             # every process signs console sessions alike (--workers)
                                             console_key=session_key(self.cfg.listen.tls.key_file),
                                             console_url=self.cfg.console_url(),
                                             console_ttl=self.cfg.console.session_ttl),
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
                   if config_part(self.cfg, key) != config_part(new, key)]
        self.cfg = merge_reloadable(self.cfg, new)
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
