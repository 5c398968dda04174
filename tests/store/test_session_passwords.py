"""Session passwords in both store backends (migration 5), and proxy.identity.session_passwords
over them: only the hash is kept; the person, instance, address and the token's end bind it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from proxy.authz.model import Principal
from proxy.identity.personal_tokens import TokenError
from proxy.identity.session_passwords import (
    PASSWORD_CHARS, LoginVerifier, SessionPasswords, looks_like_session_password, secret_hash,
)
from proxy.store.base import Store
from tests.store.conftest import run_sql

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def principal(user: str = "alice") -> Principal:
    return Principal(user=user, groups=("eng",), token_expires_at=NOW + timedelta(hours=1), token_id="jti-1")


def test_issue_check_and_revoke(store: Store, store_url: str) -> None:
    clock = Clock()
    passwords = SessionPasswords(store, clock)
    secret, record = passwords.issue(principal(), instance="prod")
    assert looks_like_session_password(secret) and len(secret) == PASSWORD_CHARS < 79
    assert (record.person, record.groups, record.instance, record.expires_at) == ("alice", ("eng",), "prod", NOW + timedelta(hours=1))
    # only the hash is stored
    assert run_sql(store_url, "SELECT secret_hash FROM session_passwords") == [(secret_hash(secret),)]
    assert secret not in str(run_sql(store_url, "SELECT * FROM session_passwords"))

    who = passwords.check("alice", secret, instance="prod", address="10.0.0.1")
    assert (who.user, who.groups, who.token_id) == ("alice", ("eng",), record.id)
    for user, instance, code in (("bob", "prod", "user_mismatch"), ("alice", "test", "wrong_instance")):
        with pytest.raises(TokenError) as e:
            passwords.check(user, secret, instance=instance, address=None)
        assert e.value.code == code
    with pytest.raises(TokenError) as e:
        passwords.check("alice", "jp_" + "a" * 32, instance="prod", address=None)
    assert e.value.code == "unknown_session_password"

    assert [p.id for p in passwords.active("alice")] == [record.id]
    assert [p.id for p in passwords.revoke("alice", "alice")] == [record.id]
    assert passwords.revoke("alice", "alice") == []
    with pytest.raises(TokenError) as e:
        passwords.check("alice", secret, instance="prod", address=None)
    assert e.value.code == "session_password_revoked"


def test_it_ends_with_the_token_and_may_be_bound_to_an_address(store: Store) -> None:
    clock = Clock()
    passwords = SessionPasswords(store, clock)
    secret, _ = passwords.issue(principal(), client_address="10.0.0.1")
    with pytest.raises(TokenError) as e:
        passwords.check("alice", secret, instance=None, address="10.0.0.2")
    assert e.value.code == "wrong_address"
    assert passwords.check("alice", secret, instance=None, address="10.0.0.1").user == "alice"
    clock.now = NOW + timedelta(hours=1)
    with pytest.raises(TokenError) as e:
        passwords.check("alice", secret, instance=None, address="10.0.0.1")
    assert e.value.code == "expired"
    assert passwords.active("alice") == []
    with pytest.raises(ValueError):  # one session password cannot mint another
        passwords.issue(Principal(user="alice", token_expires_at=NOW + timedelta(hours=2), token_id="sp-1"))


def test_the_login_verifier_sends_tokens_on_and_refuses_passwords_as_bearers(store: Store) -> None:
    class Tokens:
        async def verify_async(self, username, token, *, instance=None, address=None):
            return Principal(user="from-token")

    verifier = LoginVerifier(Tokens(), SessionPasswords(store, Clock()))  # type: ignore[arg-type]
    secret, _ = verifier.passwords.issue(principal())
    assert asyncio.run(verifier.verify_async("alice", "eyJ.x.y")).user == "from-token"
    assert asyncio.run(verifier.verify_async("alice", secret.encode())).user == "alice"
    with pytest.raises(TokenError) as e:
        asyncio.run(verifier.verify_async(None, secret))
    assert e.value.code == "session_password_not_a_bearer"
