"""Short session passwords: a password that fits a prompt or a dialog, standing for a personal token.

The `mariadb`/`mysql` CLI's interactive `-p` prompt keeps at most 79 characters and password
dialogs are made for passwords; a personal token is ~390. After sign-in a person may ask
(POST /v1/session-passwords, with the token) for `jp_` + 32 base32 characters: 160 random bits,
so online guessing under the login limits (protocol/admission.py) is hopeless.

What it stands for is fixed when it is issued: the person and groups of the token it was asked
with, an instance ("*": any), optionally the client address, and the token's own end, never
later. The store keeps only its SHA-256 (a 160-bit random secret needs no slow hash: there is
nothing to brute-force offline); the secret is shown once. It can be revoked (one, or all of a
person's: `jitproxy logout`). It is audited when issued (`session_password.issued`) and when used
(the `session.start` event's `session_password` is its `sp-…` id).

`LoginVerifier` is what the proxy's login calls: a `jp_` password is looked up here, anything
else goes to the personal-token verifier, so the password works wherever the token does. The
admin API does not take it as a bearer token: it stands for a database login only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from proxy.authz.model import Principal
from proxy.identity.personal_tokens import TokenError, TokenVerifier
from proxy.store.base import NewSessionPassword, SessionPassword, Store

PREFIX = "jp_"
SECRET_BYTES = 20  # 160 bits → 32 base32 characters
PASSWORD_CHARS = len(PREFIX) + 32
ANY_INSTANCE = "*"


def new_secret() -> str:
    """`jp_` + 32 lowercase base32 characters (35 in all: well under any prompt's limit)."""
    return PREFIX + base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").lower()


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_session_password(text: str) -> bool:
    return text.startswith(PREFIX) and len(text) == PASSWORD_CHARS


class SessionPasswords:
    """Issue, look up and revoke session passwords in the state store (blocking: call from a
    worker thread, as the admin API and `LoginVerifier` do)."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    def issue(self, principal: Principal, *, instance: str = ANY_INSTANCE,
              client_address: str | None = None) -> tuple[str, SessionPassword]:
        """A new password for the person behind `principal` (a verified token), ending with it.
        Returns (the secret, to show once; the stored record)."""
        if principal.token_expires_at is None:
            raise ValueError("a session password stands for a token with an end")
        if principal.token_id is not None and principal.token_id.startswith("sp-"):
            raise ValueError("a session password cannot be had with another session password")
        secret = new_secret()
        record = NewSessionPassword(
            id="sp-" + secrets.token_hex(8), secret_hash=secret_hash(secret), person=principal.user,
            groups=tuple(principal.groups), instance=instance, client_address=client_address,
            token_id=principal.token_id, expires_at=principal.token_expires_at,
        )
        return secret, self._store.add_session_password(record, self._clock())

    def check(self, username: str, secret: str, *, instance: str | None,
              address: str | None) -> Principal:
        """The principal the password stands for, or TokenError (the same codes as a token's)."""
        found = self._store.session_password_by_hash(secret_hash(secret))
        if found is None or not hmac.compare_digest(found.secret_hash, secret_hash(secret)):
            raise TokenError("unknown_session_password")
        if found.person != username:
            raise TokenError("user_mismatch")
        now = self._clock()
        if found.revoked_at is not None:
            raise TokenError("session_password_revoked")
        if now >= found.expires_at:
            raise TokenError("expired")
        if found.instance != ANY_INSTANCE and instance is not None and found.instance != instance:
            raise TokenError("wrong_instance")
        if found.client_address is not None and found.client_address != address:
            raise TokenError("wrong_address")
        return Principal(user=found.person, groups=found.groups, token_expires_at=found.expires_at,
                         token_id=found.id)

    def revoke(self, person: str, by: str, password_id: str | None = None) -> list[SessionPassword]:
        return self._store.revoke_session_passwords(person, by, self._clock(), password_id=password_id)

    def active(self, person: str) -> list[SessionPassword]:
        return self._store.session_passwords(person, active_at=self._clock())


class LoginVerifier:
    """The proxy login's verifier: session passwords here, everything else the token verifier's."""

    def __init__(self, tokens: TokenVerifier, passwords: SessionPasswords) -> None:
        self.tokens = tokens
        self.passwords = passwords

    def __repr__(self) -> str:
        return f"LoginVerifier({self.tokens!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokens, name)  # max_ttl, leeway, verify: the token verifier's

    async def verify_async(self, username: str | None, token: str | bytes, *,
                           instance: str | None = None, address: str | None = None) -> Principal:
        """Like TokenVerifier.verify_async; a `jp_` password needs the MySQL user name (the API's
        bearer tokens have none: they are refused)."""
        text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
        if not looks_like_session_password(text):
            return await self.tokens.verify_async(username, token, instance=instance, address=address)
        if username is None:
            raise TokenError("session_password_not_a_bearer")
        return await asyncio.to_thread(self.passwords.check, username, text, instance=instance, address=address)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
