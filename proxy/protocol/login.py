"""The login of a session: the token verified (a JWT or a short session password), the
limits on failed logins, the initial database decided, an upstream connection pinned; and the
end of a session whose token ended (identity.on_token_expiry: disconnect)."""

from __future__ import annotations

import asyncio
from datetime import timezone
from typing import Any

import structlog

from proxy.audit.events import EventType
from proxy.identity.personal_tokens import TokenError
from proxy.mysql import wire
from proxy.protocol.core import SessionCore, use_analysis
from proxy.protocol.errors import ER, ClientError
from proxy.upstream.connection import ClientProfile, UpstreamError
from proxy.upstream.relay import ProtocolViolation

log = structlog.get_logger("jitproxy.session")


class SessionLogin(SessionCore):
    def set_client_info(self, username: str, attrs: dict[str, str]) -> None:
        self.info.user = username  # claimed, until the token proves it
        self.info.client_program = attrs.get("program_name")
        self.info.client_name = attrs.get("_client_name")

    async def rejected(self, code: str, reason: str, **extra: Any) -> None:
        self.ctx.stats.login(code)
        self.ctx.audit.emit(EventType.SESSION_REJECTED, self.info, reason_code=code, reason=reason, **extra)
        self._ended = True

    async def login(
        self, username: str, token: bytes, database: str | None, collation_id: int
    ) -> ClientError | None:
        """Verify the token, check the initial database, pin an upstream connection.
        Returns the error to send instead of OK, or None when the session is ready."""
        denied = ClientError(
            ER.ACCESS_DENIED,
            f"Access denied for user '{username[:80]}': invalid or expired token",
            keep_connection=False,
        )
        admission = self.ctx.admission
        locked = admission.locked(self.address, username)
        if locked is not None:
            await self.rejected(locked.code, locked.error.message)
            return locked.error
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            await self._login_failed(username, "malformed", "token is not UTF-8")
            return denied
        try:
            principal = await self.ctx.verifier.verify_async(username, text, instance=self.instance.name,
                                                             address=self.address)
        except TokenError as e:
            await self._login_failed(username, e.code, "token rejected")
            if e.code == "truncated":  # says what to do instead; tells nothing about any token
                return ClientError(ER.ACCESS_DENIED, e.public_message, keep_connection=False)
            return denied
        finally:
            del text
        admission.succeeded(self.address, username)
        refusal = admission.login(self.address, principal.user)
        if refusal is not None:
            log.warning("connection refused", reason=refusal.code, user=principal.user, peer=self.info.client_addr)
            await self.rejected(refusal.code, refusal.error.message)
            return refusal.error
        self.admitted_user = principal.user
        if self.ctx.on_token_expiry == "disconnect" and principal.token_expires_at is not None:
            self.token_deadline = principal.token_expires_at + self.ctx.token_leeway
        self.principal = principal
        self.decider.principal = principal
        self.username = principal.user
        self.info.user = principal.user
        self.info.groups = principal.groups
        self.info.token_id = principal.token_id

        if database:
            decision = self.decider.decide(use_analysis(database))
            if not decision.allowed:
                await self.rejected(decision.code.value if decision.code else "denied", decision.reason)
                return self._deny_error(decision)

        assert self.connection is not None
        caps = self.connection.capabilities
        profile = ClientProfile(
            deprecate_eof=bool(caps & (1 << 24)),
            found_rows=bool(caps & 2),
            multi_results=bool(caps & (1 << 17)),
            ps_multi_results=bool(caps & (1 << 18)),
        )
        try:
            self.upstream = await self.instance.pool.acquire(profile, database or None)
            charset = self.connection.client_charset_name
            if charset != self.upstream.charset:
                await self.upstream.execute(f"SET NAMES {charset}")
                self.upstream.charset = charset
        except UpstreamError as e:
            if e.kind == "exhausted":  # logged by the pool
                await self.rejected("upstream_pool_exhausted", e.public)
                return ClientError(ER.TOO_MANY_CONNECTIONS, f"jitproxy: {e.public}", keep_connection=False)
            log.warning("upstream unavailable at login", detail=e.detail, instance=self.instance.name)
            code = "upstream_not_responding" if e.kind == "not_responding" else "upstream_unavailable"
            await self.rejected(code, e.public)
            return ClientError(ER.UPSTREAM_UNAVAILABLE, f"jitproxy: {e.public}", keep_connection=False)
        except (OSError, ProtocolViolation, asyncio.TimeoutError) as e:
            log.warning("upstream failed at login", error=type(e).__name__)
            await self.rejected("upstream_unavailable", "upstream failed")
            return ClientError(ER.UPSTREAM_UNAVAILABLE, "jitproxy: the database is unavailable", keep_connection=False)
        self.database = database or None
        self.held_grant = bool(self.decider.grants().for_principal(principal, self.ctx.now()))
        self.ctx.sessions[self.connection_id] = self
        self.ctx.stats.login("ok")
        self.ctx.audit.emit(
            EventType.SESSION_START,
            self.info,
            db=self.database,
            connection_id=self.connection_id,
            upstream_thread_id=self.upstream.thread_id,
            token_expires_at=principal.token_expires_at,
            # a short session password stands for a token (proxy.identity.session_passwords): which one
            **({"session_password": principal.token_id} if (principal.token_id or "").startswith("sp-") else {}),
        )
        return None

    async def _login_failed(self, username: str, code: str, reason: str) -> None:
        """A token that did not verify: counted per address and per person at the address; past
        `free` failures the answer waits (backoff), past `lockout_after` both lock for a while."""
        delay, locked_now = self.ctx.admission.failed(self.address, username)
        extra: dict[str, Any] = {}
        if locked_now:
            log.warning("failed logins: lockout", peer=self.info.client_addr, user=username[:80])
            extra["lockout"] = True
        elif delay:
            extra["backoff_s"] = round(delay, 3)
        await self.rejected(code, reason, **extra)
        if delay:
            await asyncio.sleep(delay)

    def _token_expired(self, command: int, payload: bytes) -> bool:
        """The first command after the token's end (+ leeway): refused, audited, session closed."""
        assert self.principal is not None and self.principal.token_expires_at is not None
        ended = self.principal.token_expires_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if command in (wire.COM_QUERY, wire.COM_STMT_PREPARE):
            self.ctx.stats.statement("deny", "denied", "token_expired", None)
            self.audit.statements += 1
            self.audit.denied += 1
            self.ctx.audit.emit(EventType.STATEMENT_DENIED, self.info,
                                command=wire.COMMAND_NAMES.get(command, str(command)),
                                statement=payload.decode("utf-8", "replace"), db=self.database, decision="deny",
                                reason_code="token_expired", reason=f"the token ended at {ended}")
        self.end_reason = "token_expired"
        log.info("session ended: token expired", session=self.info.session_id, user=self.username)
        raise ClientError(
            ER.ACCESS_DENIED,
            f"Access denied for user '{self.username}': your jitproxy token expired at {ended}, so this "
            "connection was closed (identity.on_token_expiry). Get a new token (jitproxy login, or ask for "
            "`jitproxy token issue`) and reconnect.",
            keep_connection=False,
        )
