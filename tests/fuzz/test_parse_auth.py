"""The replies of the authentication exchange (proxy/protocol/auth.py) are total: any bytes
give the next step, or HandshakeError (1043, the connection closes) for a reply larger than any
scramble or token could be."""

from __future__ import annotations

from hypothesis import given, strategies as st

from proxy.protocol import auth
from proxy.protocol.handshake import MAX_AUTH_BYTES, HandshakeError
from tests.fuzz.settings import fuzz

replies = st.binary(max_size=64) | st.builds(lambda n, b: b * n, st.integers(MAX_AUTH_BYTES - 2, MAX_AUTH_BYTES + 2),
                                           st.sampled_from([b"x", b"\x00"]))


@fuzz(300)
@given(st.none() | st.sampled_from([auth.SHA2, auth.CLEAR, "mysql_native_password", "", "\x00"]) | st.text(max_size=8),
       st.binary(max_size=64))
def test_first_step_is_total(plugin, response: bytes) -> None:
    step = auth.first_step(plugin, response)
    assert sum(x is not None for x in (step.more_data, step.switch_to, step.password, step.refused)) == 1


@fuzz(300)
@given(replies)
def test_replies_give_a_step_or_a_handshake_error(reply: bytes) -> None:
    for parse in (auth.after_switch, auth.after_full_auth_request):
        try:
            step = parse(reply)
        except HandshakeError as e:
            assert len(reply) > MAX_AUTH_BYTES and e.code == 1043 and not e.keep_connection
            continue
        assert len(reply) <= MAX_AUTH_BYTES
        assert sum(x is not None for x in (step.more_data, step.switch_to, step.password, step.refused)) == 1
        if step.password is not None:  # the token, without the NUL that ends it
            assert reply in (step.password, step.password + b"\x00")
