"""Hostile upstream bytes: the relay parser either ends a response or raises ProtocolViolation,
never anything else (which would surface as an internal error)."""

from hypothesis import given, settings, strategies as st

from proxy.mysql.wire import frame
from proxy.upstream.relay import Expect, ProtocolViolation, ResponseParser

payloads = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(payloads, st.sampled_from(list(Expect)), st.booleans(), st.integers(1, 7))
def test_parser_only_raises_protocol_violation(parts, expect, deprecate_eof, chunk):
    data = b"".join(frame(p, i + 1) for i, p in enumerate(parts))
    parser = ResponseParser(expect, deprecate_eof)
    buf = bytearray()
    pos = 0
    try:
        for i in range(0, len(data), chunk):
            buf += data[i : i + chunk]
            pos = parser.feed(buf, pos, len(buf))
            if parser.done:
                break
    except ProtocolViolation:
        return
    assert pos <= len(buf)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_raw_garbage_is_parsed_or_refused(data):
    parser = ResponseParser(Expect.RESULT, False)
    try:
        parser.feed(bytearray(data), 0, len(data))
    except ProtocolViolation:
        pass
