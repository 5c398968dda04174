"""Sign-in with the company's IdP: jitproxy is the OIDC relying party, then mints its own token.

Two flows, both through authlib's OAuth 2.0 client (`AsyncOAuth2Client`):
- the device authorization grant (RFC 8628) for terminals and SSH sessions: `start_device` asks the
  IdP for a user code, `poll_device` asks its token endpoint until the person has approved. The
  device code goes back to the CLI (it is the device's secret in RFC 8628), so nothing is kept
  here between the two calls and any API process may answer a poll;
- the authorization code flow with PKCE (S256) and a nonce for browsers: `start_browser` returns
  the IdP's URL, `finish_browser` exchanges the code (state, nonce and verifier are kept in memory
  for `pending_ttl`: a replica set needs sticky sessions for this flow).

The ID token is checked with authlib's `CodeIDToken` (issuer, audience = our client id, exp, iat,
nonce, at_hash) against the IdP's JWKS (fetched again once on an unknown key id: key rotation),
with only the asymmetric algorithms the IdP's discovery lists. Its user claim and groups claim
(names configurable, groups optionally mapped) become the person; the token jitproxy issues lives
no longer than `oidc.token_ttl`, `identity.max_token_ttl` or the ID token itself.

Nothing here logs a token, a code or a claim value; errors carry a short reason code.
"""

from __future__ import annotations

import math
import re
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

import httpx
from authlib.oidc.core import CodeIDToken
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError as JoserfcError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

with warnings.catch_warnings():  # authlib 1.9 prefers the httpx2 package; httpx is the project's
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from proxy.identity.personal_tokens import TokenIssuer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_ASYMMETRIC = re.compile(r"^(RS|PS|ES)(256|384|512)$|^EdDSA$|^ES256K$")
_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,80}")
MIN_TOKEN_TTL = timedelta(minutes=1)


class SignInError(Exception):
    """Sign-in refused. `code` is for the audit event and the API's answer; `status` its HTTP status."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class Pending(Exception):
    """The person has not approved the device code yet (RFC 8628 authorization_pending / slow_down)."""

    def __init__(self, slow_down: bool = False) -> None:
        super().__init__("authorization_pending")
        self.slow_down = slow_down


@dataclass(frozen=True)
class OidcSettings:
    """What the relying party needs (built from config.OidcConfig by `settings_from_config`)."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    group_map: Mapping[str, str] = field(default_factory=dict)
    only_mapped_groups: bool = False
    token_ttl: timedelta = timedelta(hours=8)
    redirect_uri: str | None = None
    timeout_s: float = 10.0
    leeway: timedelta = timedelta(seconds=30)
    pending_ttl: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if not _https_or_loopback(self.issuer):
            raise ValueError("oidc.issuer must be an https URL (plain http only on a loopback address)")
        if "openid" not in self.scopes:
            raise ValueError("oidc.scopes must include openid")
        for idp_group, group in self.group_map.items():
            if not _NAME_RE.fullmatch(group):
                raise ValueError(f"oidc.group_map: {idp_group!r} maps to {group!r}, not a group name "
                                 "(1-80 characters of A-Z a-z 0-9 . _ @ -)")


@dataclass(frozen=True)
class Identity:
    """Whom the IdP vouched for, mapped to jitproxy's names, and until when."""

    user: str
    groups: tuple[str, ...]
    id_token_expires_at: datetime


@dataclass(frozen=True)
class SignedIn:
    """The outcome of a sign-in: jitproxy's own token (a secret) and what it says."""

    token: str = field(repr=False)
    user: str = ""
    groups: tuple[str, ...] = ()
    expires_at: datetime = datetime.min.replace(tzinfo=timezone.utc)

    def public(self) -> dict[str, Any]:
        return {"token": self.token, "user": self.user, "groups": list(self.groups),
                "expires_at": self.expires_at.isoformat()}


@dataclass
class _BrowserLogin:
    nonce: str
    code_verifier: str = field(repr=False)
    started: float
    redirect_uri: str | None = None  # where the IdP sends this browser back (the token request names it again)


def settings_from_config(oidc: Any, leeway_s: float) -> OidcSettings:
    """config.OidcConfig → OidcSettings (the secret read from its environment variable)."""
    return OidcSettings(
        issuer=oidc.issuer, client_id=oidc.client_id, client_secret=oidc.client_secret(),
        scopes=tuple(oidc.scopes), user_claim=oidc.user_claim, groups_claim=oidc.groups_claim,
        group_map=dict(oidc.group_map), only_mapped_groups=oidc.only_mapped_groups,
        token_ttl=oidc.token_ttl, redirect_uri=oidc.redirect_uri, timeout_s=oidc.timeout_s,
        leeway=timedelta(seconds=leeway_s),
    )


def _https_or_loopback(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return bool(parsed.hostname)
    return parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "::1", "localhost")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class OidcSignIn:
    """The relying party: discovery, the two flows, the ID token's checks, the token it mints."""

    def __init__(self, settings: OidcSettings, issuer: TokenIssuer,
                 clock: Callable[[], datetime] = _utc_now,
                 on_sign_in: Callable[[SignedIn, str], None] | None = None) -> None:
        self.settings = settings
        self._issuer = issuer
        self._clock = clock
        self._on_sign_in = on_sign_in
        self._metadata: dict[str, Any] | None = None
        self._jwks: KeySet | None = None
        self._browser: dict[str, _BrowserLogin] = {}

    def __repr__(self) -> str:
        return f"OidcSignIn(issuer={self.settings.issuer!r}, client_id={self.settings.client_id!r})"

    # -- discovery and keys -----------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The IdP's discovery document, fetched once. Its `issuer` must be the configured one
        exactly (OIDC Discovery §4.3): a document naming another issuer is refused."""
        if self._metadata is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._get_json(url, "discovery")
            if doc.get("issuer") != self.settings.issuer:
                raise SignInError("wrong_issuer", "the IdP's discovery document names another issuer", 502)
            for key in ("token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(key), str) or not _https_or_loopback(doc[key]):
                    raise SignInError("discovery", f"the IdP's discovery document has no usable {key}", 502)
            self._metadata = doc
        return self._metadata

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self.settings.timeout_s) as http:
                response = await http.get(url)
                response.raise_for_status()
                doc = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInError("idp_unavailable", f"the IdP's {what} could not be read", 502) from None
        if not isinstance(doc, dict):
            raise SignInError("idp_unavailable", f"the IdP's {what} is not a JSON object", 502)
        return doc

    async def _key_set(self, refresh: bool) -> KeySet:
        if self._jwks is None or refresh:
            meta = await self.metadata()
            try:
                self._jwks = KeySet.import_key_set(await self._get_json(meta["jwks_uri"], "JWKS"))  # type: ignore[arg-type]
            except (JoserfcError, ValueError, TypeError, KeyError):
                raise SignInError("idp_unavailable", "the IdP's JWKS holds no usable key", 502) from None
        return self._jwks

    def _client(self, meta: Mapping[str, Any], **kwargs: Any) -> AsyncOAuth2Client:
        s = self.settings
        return AsyncOAuth2Client(
            client_id=s.client_id, client_secret=s.client_secret, scope=" ".join(s.scopes),
            token_endpoint=meta["token_endpoint"], timeout=s.timeout_s,
            token_endpoint_auth_method="client_secret_basic" if s.client_secret else "none",
            **kwargs,
        )

    # -- the device flow (RFC 8628) ------------------------------------------------------------

    async def start_device(self) -> dict[str, Any]:
        """Ask the IdP for a device code. Returns RFC 8628's answer: `device_code` (the CLI's
        secret for polling), `user_code`, `verification_uri`[`_complete`], `expires_in`, `interval`."""
        meta = await self.metadata()
        endpoint = meta.get("device_authorization_endpoint")
        if not isinstance(endpoint, str) or not _https_or_loopback(endpoint):
            raise SignInError("no_device_flow", "the IdP offers no device authorization endpoint", 501)
        data = {"scope": " ".join(self.settings.scopes)}
        auth: Any = httpx.USE_CLIENT_DEFAULT
        if self.settings.client_secret:
            auth = httpx.BasicAuth(self.settings.client_id, self.settings.client_secret)
        else:
            data["client_id"] = self.settings.client_id
        async with self._client(meta) as client:
            try:
                response = await client.request("POST", endpoint, data=data, auth=auth, withhold_token=True)
                answer = response.json()
            except (httpx.HTTPError, ValueError):
                raise SignInError("idp_unavailable", "the IdP's device authorization failed", 502) from None
        if response.status_code != 200 or not isinstance(answer, dict) or "device_code" not in answer:
            raise SignInError("device_refused", "the IdP refused the device authorization", 502)
        keep = ("device_code", "user_code", "verification_uri", "verification_uri_complete",
                "expires_in", "interval")
        return {k: answer[k] for k in keep if k in answer}

    async def poll_device(self, device_code: str) -> SignedIn:
        """One poll of the IdP's token endpoint. Raises Pending until the person has approved,
        SignInError when the code is denied, expired or the ID token is refused."""
        meta = await self.metadata()
        async with self._client(meta) as client:
            try:
                token = await client.fetch_token(grant_type=DEVICE_GRANT, device_code=device_code)
            except OAuthError as e:
                if e.error in ("authorization_pending", "slow_down"):
                    raise Pending(slow_down=e.error == "slow_down") from None
                raise SignInError(e.error or "device_refused", "the IdP refused the sign-in", 401) from None
            except httpx.HTTPError:
                raise SignInError("idp_unavailable", "the IdP's token endpoint failed", 502) from None
        return await self._signed_in(token, nonce=None, flow="device")

    # -- the browser flow (authorization code + PKCE) ------------------------------------------

    async def start_browser(self, redirect_uri: str | None = None) -> str:
        """The IdP URL to send the browser to; state, nonce and the PKCE verifier stay here.
        `redirect_uri`: another callback than `settings.redirect_uri` (the web console's own,
        registered with the IdP too); `finish_browser` then names the same one."""
        meta = await self.metadata()
        redirect_uri = redirect_uri or self.settings.redirect_uri
        if not redirect_uri:
            raise SignInError("no_browser_flow", "oidc.redirect_uri is not configured", 501)
        endpoint = meta.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not _https_or_loopback(endpoint):
            raise SignInError("discovery", "the IdP's discovery document has no authorization_endpoint", 502)
        self._forget_stale()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        async with self._client(meta, redirect_uri=redirect_uri, code_challenge_method="S256") as client:
            url, _ = client.create_authorization_url(endpoint, state=state, nonce=nonce,
                                                     code_verifier=verifier)
        self._browser[state] = _BrowserLogin(nonce, verifier, time.monotonic(), redirect_uri)
        return url

    async def finish_browser(self, code: str, state: str) -> SignedIn:
        """The IdP redirected back: exchange the code (with the PKCE verifier), check the ID token."""
        self._forget_stale()
        login = self._browser.pop(state, None)
        if login is None:
            raise SignInError("unknown_state", "this sign-in was not started here or took too long", 400)
        meta = await self.metadata()
        async with self._client(meta, redirect_uri=login.redirect_uri, code_challenge_method="S256") as client:
            try:
                token = await client.fetch_token(code=code, code_verifier=login.code_verifier,
                                                 grant_type="authorization_code")
            except OAuthError as e:
                raise SignInError(e.error or "code_refused", "the IdP refused the code", 401) from None
            except httpx.HTTPError:
                raise SignInError("idp_unavailable", "the IdP's token endpoint failed", 502) from None
        return await self._signed_in(token, nonce=login.nonce, flow="browser")

    def _forget_stale(self) -> None:
        limit = time.monotonic() - self.settings.pending_ttl.total_seconds()
        for state in [s for s, login in self._browser.items() if login.started < limit]:
            del self._browser[state]

    # -- the ID token and jitproxy's token -----------------------------------------------------

    async def _signed_in(self, token: Mapping[str, Any], nonce: str | None, flow: str) -> SignedIn:
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignInError("no_id_token", "the IdP answered without an ID token (is `openid` a scope?)")
        claims = await self.verify_id_token(id_token, nonce=nonce, access_token=token.get("access_token"))
        identity = self.identity(claims)
        signed_in = self.issue(identity)
        if self._on_sign_in is not None:
            self._on_sign_in(signed_in, flow)
        return signed_in

    async def verify_id_token(self, id_token: str, *, nonce: str | None,
                              access_token: str | None = None) -> dict[str, Any]:
        """The ID token's claims once signature, issuer, audience, times, nonce and at_hash hold."""
        meta = await self.metadata()
        algorithms = [a for a in meta.get("id_token_signing_alg_values_supported", ["RS256"])
                      if isinstance(a, str) and _ASYMMETRIC.match(a)]
        if not algorithms:
            raise SignInError("algorithm", "the IdP lists no asymmetric ID token algorithm", 502)
        registry = JWSRegistry(algorithms=algorithms, strict_check_header=False)
        try:
            try:
                decoded = jose_jwt.decode(id_token, await self._key_set(refresh=False), registry=registry)
            except JoserfcError as e:
                if "key" not in type(e).__name__.lower():
                    raise
                decoded = jose_jwt.decode(id_token, await self._key_set(refresh=True), registry=registry)
        except (JoserfcError, ValueError, TypeError):
            raise SignInError("bad_id_token", "the ID token's signature or form is invalid") from None
        params: dict[str, Any] = {"client_id": self.settings.client_id, "nonce": nonce}
        if access_token:
            params["access_token"] = access_token
        options: dict[str, Any] = {"iss": {"essential": True, "value": self.settings.issuer},
                                   "aud": {"essential": True, "values": [self.settings.client_id]}}
        checked = CodeIDToken(decoded.claims, decoded.header, options, params)
        try:
            checked.validate(now=math.floor(self._clock().timestamp()),
                             leeway=int(self.settings.leeway.total_seconds()))
        except JoserfcError as e:
            raise SignInError(_id_token_code(e), "the ID token was refused") from None
        return dict(decoded.claims)

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """The IdP's user claim and groups claim as jitproxy names (group_map applied)."""
        s = self.settings
        user = claims.get(s.user_claim)
        if not isinstance(user, str) or not _NAME_RE.fullmatch(user):
            raise SignInError("user_claim", f"the ID token's {s.user_claim} claim is not a usable user name", 403)
        raw = claims.get(s.groups_claim) or []
        if not isinstance(raw, list):
            raise SignInError("groups_claim", f"the ID token's {s.groups_claim} claim is not a list", 403)
        return Identity(user, map_groups(raw, s.group_map, s.only_mapped_groups),
                        datetime.fromtimestamp(float(claims["exp"]), tz=timezone.utc))

    def issue(self, identity: Identity) -> SignedIn:
        """jitproxy's token for the person, living no longer than the ID token or the policy."""
        ttl = min(self.settings.token_ttl, self._issuer.max_ttl, identity.id_token_expires_at - self._clock())
        ttl = timedelta(seconds=math.floor(ttl.total_seconds()))
        if ttl < MIN_TOKEN_TTL:
            raise SignInError("idp_session_ending", "the IdP's session ends within a minute: sign in again")
        token = self._issuer.issue(identity.user, identity.groups, ttl=ttl)
        expires_at = self._clock().replace(microsecond=0) + ttl
        return SignedIn(token, identity.user, identity.groups, expires_at)


def map_groups(raw: Sequence[Any], group_map: Mapping[str, str], only_mapped: bool) -> tuple[str, ...]:
    """IdP groups → jitproxy groups: mapped names first-come, unmapped ones kept when they are
    valid names (and `only_mapped` is off). Names jitproxy cannot hold are dropped, not refused:
    one odd directory group must not lock a person out."""
    groups: dict[str, None] = {}
    for group in raw[:256]:
        if not isinstance(group, str):
            continue
        if group in group_map:
            groups[group_map[group]] = None
        elif not only_mapped and _NAME_RE.fullmatch(group):
            groups[group] = None
    return tuple(groups)


def _id_token_code(error: JoserfcError) -> str:
    """The claim check's error → the audit reason: expired, wrong_audience, wrong_issuer, bad_nonce..."""
    name = getattr(error, "error", "") or ""
    claim = getattr(error, "claim", None)
    if name == "expired_token":
        return "expired"
    if claim == "aud":
        return "wrong_audience"
    if claim == "iss":
        return "wrong_issuer"
    if claim in ("nonce", "at_hash", "iat", "exp", "azp"):
        return f"bad_{claim}"
    return "invalid_id_token"
