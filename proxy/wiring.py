"""Building a proxy from its configuration: the verifier, the audit trail, the instances, the
workflow and its notifiers, TLS contexts; what a reload may change. Used by `ProxyServer`
(server.py), `jitproxy serve` and the demo."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any


from proxy.audit.file_trail import trail_of_sinks
from proxy.audit.events import AuditEmitter, FileSink, Sink, StreamSink
from proxy.authz.masking import Masker
from proxy.store import open_store
from proxy.store.base import Store
from proxy.workflow.grants import EffectiveGrants
from proxy.workflow.service import AccessService, Limits
from proxy.config import Config
from proxy.environments import Environments
from proxy.identity.personal_tokens import IssuerConfig, TokenVerifier
from proxy.protocol.admission import Admission
from proxy.upstream.pool import UpstreamPool
from proxy.upstream.schema import SchemaCache, ViewCatalog

from proxy.authz.cache import AnalysisCache
from proxy.context import Clock, ProxyContext, utc_now
from proxy.upstream.instance import Instance, upstream_connector
from proxy.workflow.live_schema import LiveSchema
from proxy.workflow.policy_files import PolicyFiles

if TYPE_CHECKING:
    from proxy.notify.slack import SlackApprovals
    from proxy.notify.webhook import WebhookNotifier


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
    policy_files = PolicyFiles(cfg.policies.dirs, on_reload=lambda event, fields: audit.emit(event, None, **fields))
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
        console_url=cfg.console_url(),  # notifications link to the request's console page
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


def config_part(cfg: Config, key: str) -> Any:
    if key == "instances":  # what a live pool cannot change: where it connects and as whom
        return [(u.name, u.host, u.port, u.user, u.auth, u.tls, u.listen_port) for u in cfg.instances]
    if key == "environments":  # sessions, the workflow and the audit mode took them at start
        return [(u.name, u.environment, u.environments) for u in cfg.instances]
    if key.startswith("listen."):
        return getattr(cfg.listen, key.split(".", 1)[1])
    return getattr(cfg, key)


def merge_reloadable(old: Config, new: Config) -> Config:
    """The running config with what a reload may change taken from `new`: listen timeouts and
    limits, TLS files, limits, identity, authz, policies, log; the rest stays (see reload)."""
    listen = old.listen.model_copy(update={k: getattr(new.listen, k) for k in (
        "tls", "handshake_timeout_s", "idle_timeout_s", "max_packet_bytes", "max_handshake_packet_bytes",
        "max_connections")})
    return old.model_copy(update={"listen": listen, "limits": new.limits, "identity": new.identity,
                                  "authz": new.authz, "policies": new.policies, "log": new.log})
