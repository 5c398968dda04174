"""Sign-in routes of the admin API: the IdP sign-in (proxy.identity.oidc) and session passwords
(proxy.identity.session_passwords).

    GET    /v1/login                    which flows this proxy offers (no token)
    POST   /v1/login/device             start the device flow: user code and URL (no token)
    POST   /v1/login/device/token       one poll: 202 pending, 200 with jitproxy's token
    GET    /v1/login/browser            302 to the IdP (authorization code + PKCE)
    GET    /v1/login/callback           the IdP's redirect: jitproxy's token
    POST   /v1/session-passwords        a short password for the caller's token (shown once)
    GET    /v1/session-passwords        the caller's active ones (never the secrets)
    DELETE /v1/session-passwords[/{id}] end one, or all of the caller's (`jitproxy logout`)

`enable_sign_in(cfg, ctx)` is the wiring: it puts the session-password verifier in front of the
context's token verifier (the proxy's login then takes both) and returns what `create_app`
mounts (its `sign_in=` argument); once the proxy listens, its ports go into `SignIn.ports`.
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from proxy.audit.events import AuditEmitter, EventType
from proxy.authz.model import Principal
from proxy.identity.oidc import OidcSignIn, Pending, SignedIn, SignInError, settings_from_config
from proxy.identity.personal_tokens import TokenIssuer
from proxy.identity.session_passwords import ANY_INSTANCE, LoginVerifier, SessionPasswords

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.store.base import SessionPassword


@dataclass
class SignIn:
    """What the sign-in routes need. `oidc` None: no IdP configured (session passwords only)."""

    passwords: SessionPasswords
    audit: AuditEmitter
    instances: tuple[str, ...]
    oidc: OidcSignIn | None = None
    mysql_host: str = "127.0.0.1"
    # instance -> the port clients connect to, for `jitproxy connect` (GET /v1/login); a port 0
    # in the config is known once the proxy listens: the server updates this then
    ports: dict[str, int] = field(default_factory=dict)


def enable_sign_in(cfg: "Config", ctx: Any) -> "SignIn":
    """Wire sign-in into a built ProxyContext: `ctx.verifier` becomes a LoginVerifier over the
    token verifier and the state store's session passwords, and the IdP sign-in is built when
    `oidc:` is configured. Call once, before the admin API is created; pass the result to
    `create_app(..., sign_in=...)`."""
    passwords = SessionPasswords(ctx.workflow.store, ctx.now)
    if not isinstance(ctx.verifier, LoginVerifier):
        ctx.verifier = LoginVerifier(ctx.verifier, passwords)
    sign_in = SignIn(passwords, ctx.audit, tuple(u.name for u in cfg.instances), mysql_host=cfg.listen.host,
                     ports={u.name: cfg.port_of(u) for u in cfg.instances if cfg.port_of(u)})
    if cfg.oidc is not None:
        signing = cfg.identity.signing
        assert signing is not None  # config.Config checks it
        issuer = TokenIssuer(signing.private_key_file.read_bytes(), issuer=signing.issuer,
                             audience=signing.audience, max_ttl=cfg.identity.max_token_ttl, clock=ctx.now)
        settings = settings_from_config(cfg.oidc, cfg.identity.leeway_s)
        sign_in.oidc = OidcSignIn(settings, issuer, clock=ctx.now, on_sign_in=_audit_sign_in(ctx.audit, settings.issuer))
    return sign_in


def _audit_sign_in(audit: AuditEmitter, idp: str) -> Any:
    def emit(signed_in: SignedIn, flow: str) -> None:
        audit.emit(EventType.IDENTITY_SIGNED_IN, None, user=signed_in.user, groups=list(signed_in.groups),
                   flow=flow, idp=idp, token_expires_at=signed_in.expires_at)

    return emit


class DeviceTokenIn(BaseModel):
    device_code: str = Field(min_length=1, max_length=2048)


class SessionPasswordIn(BaseModel):
    instance: str | None = Field(default=None, max_length=64, description=(
        "the instance it logs in to (default: any, with one instance: that one)"))
    bind_address: bool = Field(default=False, description=(
        "only from the address this request comes from"))


def sign_in_routes(sign_in: SignIn, principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    """The routes (mounted by proxy.api.app.create_app when it is given `sign_in`); `principal`
    is the API's dependency for the caller's verified token (passed in: no import cycle)."""
    router = APIRouter()
    Who = Annotated[Principal, Depends(principal)]  # noqa: N806 - the API's name for it

    def oidc() -> OidcSignIn:
        if sign_in.oidc is None:
            raise HTTPException(404, "sign-in with an IdP is not configured (oidc: in the proxy's config)")
        return sign_in.oidc

    @router.get("/v1/login", summary="The sign-in flows this proxy offers")
    async def login_info() -> dict[str, Any]:
        mysql = {"host": sign_in.mysql_host, "ports": dict(sign_in.ports)}
        if sign_in.oidc is None:
            return {"oidc": False, "mysql": mysql}
        s = sign_in.oidc.settings
        return {"oidc": True, "issuer": s.issuer, "device": True, "browser": bool(s.redirect_uri), "mysql": mysql}

    @router.post("/v1/login/device", summary="Start a device sign-in (RFC 8628)")
    async def device_start() -> dict[str, Any]:
        try:
            return await oidc().start_device()
        except SignInError as e:
            raise HTTPException(e.status, str(e)) from None

    @router.post("/v1/login/device/token", summary="Poll a device sign-in")
    async def device_token(body: DeviceTokenIn) -> Any:
        try:
            signed_in = await oidc().poll_device(body.device_code)
        except Pending as p:
            return JSONResponse({"status": "pending", "slow_down": p.slow_down}, status_code=202)
        except SignInError as e:
            raise HTTPException(e.status, str(e)) from None
        return signed_in.public()

    @router.get("/v1/login/browser", summary="Sign in with a browser (redirects to the IdP)")
    async def browser_start() -> RedirectResponse:
        try:
            return RedirectResponse(await oidc().start_browser(), status_code=302)
        except SignInError as e:
            raise HTTPException(e.status, str(e)) from None

    @router.get("/v1/login/callback", summary="The IdP's redirect after a browser sign-in")
    async def browser_callback(code: str, state: str) -> dict[str, Any]:
        try:
            return (await oidc().finish_browser(code, state)).public()
        except SignInError as e:
            raise HTTPException(e.status, str(e)) from None

    @router.post("/v1/session-passwords", status_code=201, summary="A short password for prompts and dialogs")
    async def issue_password(body: SessionPasswordIn, request: Request, who: Who) -> dict[str, Any]:
        instance = _instance(body.instance, sign_in.instances)
        address = request.client.host if body.bind_address and request.client else None
        try:
            secret, record = await asyncio.to_thread(sign_in.passwords.issue, who, instance=instance,
                                                     client_address=address)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        sign_in.audit.emit(EventType.SESSION_PASSWORD_ISSUED, None, user=who.user, groups=list(who.groups),
                           password_id=record.id, instance=record.instance, expires_at=record.expires_at,
                           bound_address=record.client_address, token_id=who.token_id)
        return {"password": secret, **_public(record)}

    @router.get("/v1/session-passwords", summary="Your active session passwords (never the secrets)")
    async def list_passwords(who: Who) -> dict[str, Any]:
        return {"session_passwords": [_public(r) for r in await asyncio.to_thread(sign_in.passwords.active, who.user)]}

    @router.delete("/v1/session-passwords", summary="End all your session passwords")
    async def revoke_all(who: Who) -> dict[str, Any]:
        return await _revoke(who, None)

    @router.delete("/v1/session-passwords/{password_id}", summary="End one of your session passwords")
    async def revoke_one(password_id: str, who: Who) -> dict[str, Any]:
        answer = await _revoke(who, password_id)
        if not answer["revoked"]:
            raise HTTPException(404, f"no active session password {password_id} of yours")
        return answer

    async def _revoke(who: Principal, password_id: str | None) -> dict[str, Any]:
        ended = await asyncio.to_thread(sign_in.passwords.revoke, who.user, who.user, password_id)
        if ended:
            sign_in.audit.emit(EventType.SESSION_PASSWORD_REVOKED, None, user=who.user, actor=who.user,
                               password_ids=[r.id for r in ended])
        return {"revoked": [r.id for r in ended]}

    return router


def _instance(asked: str | None, instances: tuple[str, ...]) -> str:
    if asked is None:
        return instances[0] if len(instances) == 1 else ANY_INSTANCE
    if asked not in instances:
        raise HTTPException(400, f"no instance {asked!r} (this proxy has: {', '.join(instances)})")
    return asked


def _public(record: "SessionPassword") -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {"id": record.id, "user": record.person, "groups": list(record.groups), "instance": record.instance,
            "bound_address": record.client_address, "expires_at": iso(record.expires_at),
            "created_at": iso(record.created_at)}
