"""Token authentication on the client side (ARCHITECTURE.md decision 1).

The default plugin is a server-side `caching_sha2_password` that always asks for full
authentication: over TLS every common client then sends its password (our JWT) with no client
flags. `mysql_clear_password` is accepted for clients set up for it. Both run only inside TLS;
the connection refuses plaintext clients before any of this starts."""

from __future__ import annotations

from dataclasses import dataclass

from mysql_mimic import utils

SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"
PERFORM_FULL_AUTH = b"\x04"
REQUEST_PUBLIC_KEY = b"\x02"


def new_nonce() -> bytes:
    return utils.nonce(20) + b"\x00"


@dataclass(frozen=True)
class AuthStep:
    """What the connection must do next: send `packet` (AuthMoreData payload, or an auth switch
    to `switch_to`) and read the reply, or stop with the password (token) in hand."""

    more_data: bytes | None = None
    switch_to: str | None = None
    password: bytes | None = None
    refused: str | None = None


def first_step(client_plugin: str | None, auth_response: bytes) -> AuthStep:
    """The client answered the handshake with `client_plugin` and `auth_response`."""
    if client_plugin == CLEAR:
        return AuthStep(password=_strip(auth_response))
    if client_plugin == SHA2:
        # auth_response is a scramble of the password; ask for the password itself.
        return AuthStep(more_data=PERFORM_FULL_AUTH)
    # Another plugin (mysql_native_password, ed25519...): switch to caching_sha2_password.
    return AuthStep(switch_to=SHA2)


def after_switch(reply: bytes) -> AuthStep:
    """The client answered an auth switch to caching_sha2_password with its scramble."""
    return AuthStep(more_data=PERFORM_FULL_AUTH)


def after_full_auth_request(reply: bytes) -> AuthStep:
    """The client answered PERFORM_FULL_AUTH: over TLS that is the password, NUL-terminated."""
    if reply == REQUEST_PUBLIC_KEY:
        return AuthStep(refused="RSA key exchange is not supported; connect with TLS")
    return AuthStep(password=_strip(reply))


def _strip(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\x00") else data
