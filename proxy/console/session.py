"""Console sessions: who a browser is, carried in a signed cookie after one sign-in.

A person signs in once (a personal token pasted into the sign-in form, verified by the same
TokenVerifier as the API and MySQL logins; or the IdP's browser login, authorization code + PKCE:
`issue` is the hook both call with the Principal they verified). The browser then holds only a
session cookie:

- signed (HMAC-SHA256 with a key the browser never sees), so nobody forges or edits one;
- HttpOnly (no script reads it), Secure (HTTPS only), SameSite=Strict (no other site's page
  makes the browser send it), `__Host-` prefixed (no Domain, Path=/: no sibling host sets it);
- expiring: at the token's own expiry or after `ttl` (8 h), whichever comes first, checked
  on every request against the server's clock (the cookie's Max-Age only tidies the browser).

The token itself is never stored, put in a URL, logged or shown again: the cookie holds the
person's name, groups, the times, and a random CSRF secret (synchronizer token: every form
carries it, every POST must send it back; SameSite=Strict is the second line). Sessions are
stateless: signing out clears the cookie; a copied cookie lasts until its end. The key must
be the same in every process behind one address (`--workers N`): `session_key` derives it from
a secret they share.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from proxy.authz.model import Principal

__all__ = ["COOKIE", "FLASH_COOKIE", "LOGIN_COOKIE", "SSO_COOKIE", "ConsoleSession", "SessionExpired", "Sessions",
           "same_secret", "session_key"]

COOKIE = "__Host-jitproxy-console"
LOGIN_COOKIE = "__Host-jitproxy-console-login"  # the sign-in form's own CSRF secret, before a session
FLASH_COOKIE = "__Host-jitproxy-console-flash"  # what the last action did, shown once after its redirect
# The IdP sign-in's `state`, bound to the browser that started it (login CSRF: another person's
# callback URL must not sign this browser in). SameSite=Lax: the IdP's redirect back is a
# cross-site navigation, which a Strict cookie would not accompany.
SSO_COOKIE = "__Host-jitproxy-console-sso"
DEFAULT_TTL = timedelta(hours=8)
LOGIN_FORM_TTL = timedelta(minutes=15)
SSO_TTL = timedelta(minutes=10)  # as the relying party keeps a started browser login (OidcSettings.pending_ttl)
_MAX_COOKIE_CHARS = 3800  # browsers keep ~4 KB per cookie; a person with hundreds of groups is refused


class SessionExpired(Exception):
    """The cookie was genuine but its time is over (the page says so, rather than "sign in")."""


@dataclass(frozen=True)
class ConsoleSession:
    who: Principal
    csrf: str
    expires_at: datetime
    via: str  # "token" (pasted) or the sign-in hook's name (e.g. "oidc")


def session_key(secret_file: Path | str) -> bytes:
    """A session-signing key derived from a secret every worker of one proxy reads (the
    listener's TLS private key): the same in each process, never the secret itself, and a new
    one (everyone signed out) when that secret is replaced."""
    material = Path(secret_file).read_bytes()
    return hmac.new(material, b"jitproxy console session key v1", hashlib.sha256).digest()


class Sessions:
    """Issues and reads session cookies. `clock`: the service's (tests move it)."""

    def __init__(self, key: bytes | None = None, *, ttl: timedelta = DEFAULT_TTL,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self.ttl = ttl
        self.clock = clock

    # -- sessions ------------------------------------------------------------------------------

    def issue(self, who: Principal, via: str = "token") -> tuple[str, ConsoleSession]:
        """(cookie value, session) for a person whose identity was just verified: the sign-in
        hook for any login method. Ends at the token's expiry when that comes first."""
        now = self.clock()
        end = now + self.ttl
        if who.token_expires_at is not None:
            end = min(end, who.token_expires_at)
        session = ConsoleSession(Principal(who.user, tuple(who.groups)), secrets.token_urlsafe(24), end, via)
        body = {"u": who.user, "g": list(who.groups), "c": session.csrf, "e": int(end.timestamp()),
                "i": int(now.timestamp()), "v": via}
        value = self._sign("session", body)
        if len(value) > _MAX_COOKIE_CHARS:
            raise ValueError("too many groups to keep in a browser session")
        return value, session

    def read(self, value: str | None) -> ConsoleSession | None:
        """The session in a cookie; None when there is none or it is not genuine;
        SessionExpired when it was genuine and is over."""
        body = self._unsign("session", value)
        if body is None:
            return None
        try:
            end = datetime.fromtimestamp(int(body["e"]), UTC)
            who = Principal(str(body["u"]), tuple(str(g) for g in body["g"]))
            csrf, via = str(body["c"]), str(body["v"])
        except (KeyError, TypeError, ValueError):
            return None
        if self.clock() >= end:
            raise SessionExpired
        return ConsoleSession(who, csrf, end, via)

    def max_age(self, session: ConsoleSession) -> int:
        return max(0, int((session.expires_at - self.clock()).total_seconds()))

    # -- the sign-in form's CSRF secret --------------------------------------------------------

    def login_form(self) -> tuple[str, str]:
        """(cookie value, form field value) for the sign-in form: a POST to sign in must come
        from our own form too (login CSRF: another site signing a browser in as someone else)."""
        csrf = secrets.token_urlsafe(24)
        return self._sign("login", {"c": csrf, "e": int((self.clock() + LOGIN_FORM_TTL).timestamp())}), csrf

    def login_csrf(self, value: str | None) -> str | None:
        """The sign-in form's secret in its cookie, if genuine and recent."""
        body = self._unsign("login", value)
        if body is None or not isinstance(body.get("e"), int) or self.clock().timestamp() >= body["e"]:
            return None
        return str(body.get("c", "")) or None

    # -- the IdP sign-in's state ------------------------------------------------------------------

    def sso_started(self, state: str) -> str:
        """A cookie value binding an IdP sign-in's `state` to this browser (its digest: the
        state itself travels in the IdP's URLs)."""
        return self._sign("sso", {"s": _digest(state), "e": int((self.clock() + SSO_TTL).timestamp())})

    def sso_state_matches(self, value: str | None, state: str) -> bool:
        """Whether the callback's `state` is the one this browser started, recently."""
        body = self._unsign("sso", value)
        if body is None or not isinstance(body.get("e"), int) or self.clock().timestamp() >= body["e"] or not state:
            return False
        return same_secret(str(body.get("s", "")), _digest(state))

    # -- what the last action did ---------------------------------------------------------------

    def flash(self, text: str) -> str:
        """A cookie value carrying one line for the page an action redirects to (signed, so no
        other page can make the console say something)."""
        return self._sign("flash", {"m": text[:500], "e": int((self.clock() + timedelta(minutes=1)).timestamp())})

    def read_flash(self, value: str | None) -> str | None:
        body = self._unsign("flash", value)
        if body is None or not isinstance(body.get("e"), int) or self.clock().timestamp() >= body["e"]:
            return None
        return str(body.get("m", "")) or None

    # -- signing -------------------------------------------------------------------------------

    def _sign(self, purpose: str, body: dict[str, Any]) -> str:
        payload = _b64(orjson.dumps(body))
        return f"{payload}.{_b64(self._mac(purpose, payload))}"

    def _unsign(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        if not value or len(value) > _MAX_COOKIE_CHARS or value.count(".") != 1:
            return None
        payload, _, mac = value.partition(".")
        try:
            genuine = hmac.compare_digest(_unb64(mac), self._mac(purpose, payload))
            body = orjson.loads(_unb64(payload)) if genuine else None
        except (ValueError, orjson.JSONDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _mac(self, purpose: str, payload: str) -> bytes:
        """The purpose is signed too: a sign-in form's cookie is never taken for a session."""
        return hmac.new(self._key, f"{purpose}:{payload}".encode("ascii"), hashlib.sha256).digest()


def same_secret(sent: str | None, expected: str) -> bool:
    """A CSRF token as sent with a form, compared in constant time."""
    return bool(sent) and hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("utf-8"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
