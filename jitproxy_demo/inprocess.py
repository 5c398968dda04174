"""Run a real jitproxy in-process on its own event-loop thread, for tests, the demo and
benchmarks: synchronous MySQL drivers can then connect to it from the calling thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from proxy.audit.events import MemorySink, Sink
from proxy.config import Config, config_from_dict
from proxy.identity.personal_tokens import TokenIssuer, generate_ed25519_keypair
from proxy.context import ProxyContext
from proxy.server import ProxyServer
from proxy.wiring import build_context


class MutableClock:
    """The proxy's clock for grant expiry; tests move it instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def write_keys(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "token-signing.key", directory / "token-signing.pub"
    if not private.exists():
        generate_ed25519_keypair(private, public)
    return private, public


# The integration suite runs both ways in CI (scripts/test.sh): with the fast path (the default)
# and with JITPROXY_TEST_FAST_PATH=off, every statement on the command loop. Both executors run
# one plan (proxy/protocol/plan.py): the same tests must pass either way.
FAST_PATH = os.environ.get("JITPROXY_TEST_FAST_PATH", "on") != "off"


def proxy_config(
    directory: Path,
    *,
    upstream_host: str,
    upstream_port: int,
    upstream_user: str,
    upstream_password: str,
    cert_file: Path,
    key_file: Path,
    upstream_ca: Path | None,
    policies_dir: Path,
    port: int = 0,
    audit_file: Path | None = None,
    extra: dict[str, Any] | None = None,
    instances: list[dict[str, Any]] | None = None,
    upstream: dict[str, Any] | None = None,
) -> Config:
    """`upstream`: keys of the upstream section to change (a None value removes the key, e.g.
    `{"auth": "iam", "password": None, "iam": {...}}`). `instances`: several upstream
    instances, each the upstream with these keys changed (name, environment, listen_port...)."""
    private, public = write_keys(directory / "keys")
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
                   "fast_path": FAST_PATH},
        "identity": {
            "issuers": [{"issuer": "jitproxy", "audience": "jitproxy", "public_key_file": str(public)}],
            "signing": {"private_key_file": str(private)},
        },
        "upstream": {
            "host": upstream_host,
            "port": upstream_port,
            "user": upstream_user,
            "password": upstream_password,
            "tls": {"ca_file": str(upstream_ca)} if upstream_ca else None,
            # What the proxy read of the schema is cleared by DDL through it and re-read when a
            # statement names something new; a test proxy does not also re-read it on a timer,
            # so whether a statement takes the fast path never depends on how slow the machine is
            # (tests/unit/test_view_catalog.py tests the TTL).
            "schema_cache_ttl_s": 3600,
        },
        "policies": {"dirs": [str(policies_dir)]},
        "audit": {"sinks": [{"type": "file", "path": str(audit_file)}] if audit_file else []},
        "store": {"path": str(directory / "state" / "jitproxy.db")},
        "api": {"port": 0, "admin_groups": ["dba"]},
        # Every test client comes from 127.0.0.1, many tests send wrong tokens on purpose, and
        # some open many sessions as one person: a test proxy's limits stay out of their way
        # (tests/integration/test_limits.py sets and tests the real ones).
        "limits": {"max_handshakes": 1000, "max_handshakes_per_address": 1000,
                   "max_connections_per_address": 5000, "max_connections_per_user": 5000,
                   "login_failures": {"free": 1_000_000, "lockout_after": 1_000_000, "backoff_base_s": 0}},
    }
    raw["upstream"].update(upstream or {})
    raw["upstream"] = {k: v for k, v in raw["upstream"].items() if v is not None}
    if instances:
        base = raw.pop("upstream")
        raw["upstreams"] = [{**base, **changes} for changes in instances]
    for key, value in (extra or {}).items():
        raw.setdefault(key, {}).update(value)
    path = directory / "config.yaml"
    return config_from_dict(raw, path)


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class RunningProxy:
    """A started proxy. `stop()` shuts it down; `audit.events` holds every audit event."""

    def __init__(self, cfg: Config, extra_sinks: list[Sink] | None = None, clock: Callable[[], datetime] | None = None,
                 aws_session_factory: Any = None,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.cfg = cfg
        self._aws_session_factory = aws_session_factory
        self.memory = MemorySink()
        self.clock = clock or MutableClock()
        self._loop = loop_factory()  # `jitproxy serve` runs on uvloop: pass uvloop.new_event_loop to test on it
        self._thread = threading.Thread(target=self._loop.run_forever, name="jitproxy", daemon=True)
        self._thread.start()
        self.ctx: ProxyContext = self.call(self._build(cfg, [self.memory, *(extra_sinks or [])]))
        self.server = ProxyServer(cfg, self.ctx)
        self.call(self.server.start())
        assert self.server.port is not None
        self.port: int = self.server.port
        signing = cfg.identity.signing
        assert signing is not None
        self.issuer = TokenIssuer(
            signing.private_key_file.read_bytes(),
            issuer=signing.issuer,
            audience=signing.audience,
            max_ttl=cfg.identity.max_token_ttl,
        )

    async def _build(self, cfg: Config, sinks: list[Sink]) -> ProxyContext:
        return build_context(cfg, now=self.clock, aws_session_factory=self._aws_session_factory, extra_sinks=sinks)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def token(self, user: str, groups: tuple[str, ...] = (), ttl: timedelta = timedelta(hours=1)) -> str:
        return self.issuer.issue(user, groups, ttl=ttl)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event so far. A statement's closing event is emitted just after its last
        bytes are sent, so a client may have its answer first: let the proxy's loop run a few
        turns before reading (from any thread but the loop's)."""
        if threading.current_thread() is not self._thread and self._loop.is_running():
            self.call(_turns(3))
        return self.memory.events

    def stop(self) -> None:
        try:
            self.call(self.server.stop(grace_s=2))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
