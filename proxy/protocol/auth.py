"""Token authentication on the client side.

The default plugin is a server-side `caching_sha2_password` that always asks for full
authentication: over TLS every common client then sends its password (our JWT) with no client
flags. `mysql_clear_password` is accepted for clients set up for it. Both run only inside TLS;
the connection refuses plaintext clients before any of this starts."""

from __future__ import annotations

from dataclasses import dataclass

from mysql_mimic import utils

from proxy.protocol.handshake import MAX_AUTH_BYTES, HandshakeError

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
    """The client answered an auth switch to caching_sha2_password with its scramble (its bytes
    are not used: the password is asked for next). Total: any bytes give a step, or
    HandshakeError when the reply is larger than any scramble or token (1043, closed)."""
    _bounded(reply, "auth switch reply")
    return AuthStep(more_data=PERFORM_FULL_AUTH)


def after_full_auth_request(reply: bytes) -> AuthStep:
    """The client answered PERFORM_FULL_AUTH: over TLS that is the password, NUL-terminated.
    Total, like after_switch: a step for any bytes up to MAX_AUTH_BYTES, else HandshakeError."""
    _bounded(reply, "full authentication reply")
    if reply == REQUEST_PUBLIC_KEY:
        return AuthStep(refused="RSA key exchange is not supported; connect with TLS")
    return AuthStep(password=_strip(reply))


def _bounded(reply: bytes, what: str) -> None:
    """The same bound as the handshake response's auth data: a token is a few KiB, and nothing
    larger is kept in memory (the stream already caps a packet before login)."""
    if len(reply) > MAX_AUTH_BYTES:
        raise HandshakeError(f"{what}: {len(reply)} bytes, over the limit of {MAX_AUTH_BYTES}")


def _strip(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\x00") else data
