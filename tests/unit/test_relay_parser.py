"""The response parser decides where a relayed upstream response ends. A wrong answer would
either hang a client or mix two responses, so every shape is covered, fed whole and byte by byte."""

import pytest

from proxy.mysql.wire import frame, lenenc_int
from proxy.upstream.relay import Expect, ProtocolViolation, ResponseParser

OK = b"\x00\x01\x05\x02\x00\x00\x00"  # affected 1, last id 5, autocommit, no warnings
ERR = b"\xff\x7a\x04#42S02Table 'x' doesn't exist"
EOF_PKT = b"\xfe\x00\x00\x02\x00"
OK_EOF = b"\xfe\x00\x00\x02\x00\x00\x00"
MORE = b"\xfe\x00\x00\x0a\x00"  # EOF with SERVER_MORE_RESULTS_EXISTS
COLDEF = b"\x03def\x00\x00\x00\x01a\x00\x0c\x21\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00"


def stream(*payloads: bytes) -> bytes:
    out = b""
    for seq, p in enumerate(payloads, start=1):
        out += frame(p, seq)
    return out


def run(expect: Expect, data: bytes, deprecate_eof: bool, bytewise: bool = False):
    parser = ResponseParser(expect, deprecate_eof)
    buf = bytearray()
    pos = 0
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for c in chunks:
        buf += c
        pos = parser.feed(buf, pos, len(buf))
        if parser.done:
            break
    return parser, pos


def result_set(rows: list[bytes], deprecate_eof: bool, terminator: bytes | None = None) -> bytes:
    head = [lenenc_int(1), COLDEF] + ([] if deprecate_eof else [EOF_PKT])
    term = terminator or (OK_EOF if deprecate_eof else EOF_PKT)
    return stream(*head, *rows, term)


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_result_set_ends_exactly_at_terminator(deprecate_eof, bytewise):
    rows = [b"\x01" + b"x", b"\xfb", b"\x02ab"]
    data = result_set(rows, deprecate_eof)
    parser, pos = run(Expect.RESULT, data + b"TRAILING", deprecate_eof, bytewise)
    assert parser.done and pos == len(data)
    assert parser.outcome.rows == 3 and parser.outcome.error is None


def test_ok_response_reports_affected_rows_and_insert_id():
    parser, pos = run(Expect.RESULT, stream(OK), False)
    assert parser.done and parser.outcome.affected_rows == 1 and parser.outcome.last_insert_id == 5


def test_error_response_keeps_code_and_sqlstate():
    parser, _ = run(Expect.RESULT, stream(ERR), True)
    assert parser.done
    assert (parser.outcome.error.code, parser.outcome.error.sqlstate) == (1146, "42S02")


def test_error_in_the_middle_of_rows_ends_the_response():
    data = stream(lenenc_int(1), COLDEF, EOF_PKT, b"\x01a", ERR)
    parser, pos = run(Expect.RESULT, data, False)
    assert parser.done and pos == len(data) and parser.outcome.rows == 1
    assert parser.outcome.error.code == 1146


def test_multiple_result_sets_continue_until_no_more_results_flag():
    first = [lenenc_int(1), COLDEF, EOF_PKT, b"\x01a", MORE]
    second = [lenenc_int(1), COLDEF, EOF_PKT, b"\x01b", EOF_PKT]
    data = stream(*first, *second)
    parser, pos = run(Expect.RESULT, data, False, bytewise=True)
    assert parser.done and pos == len(data) and parser.outcome.rows == 2 and parser.outcome.result_sets == 2


def test_row_starting_with_0xfe_is_a_row_when_the_packet_is_long():
    # a text row whose first value is >= 16 MiB starts with 0xFE: only a short 0xFE packet ends it
    big_value_row = b"\xfe" + (10).to_bytes(8, "little") + b"0123456789"
    data = result_set([big_value_row], deprecate_eof=False)
    parser, pos = run(Expect.RESULT, data, False)
    assert parser.done and parser.outcome.rows == 1 and pos == len(data)


def test_prepare_response_with_params_and_columns():
    prep_ok = b"\x00" + (7).to_bytes(4, "little") + (1).to_bytes(2, "little") + (2).to_bytes(2, "little") + b"\x00\x00\x00"
    for deprecate in (False, True):
        eof = [] if deprecate else [EOF_PKT]
        data = stream(prep_ok, COLDEF, COLDEF, *eof, COLDEF, *eof)
        parser, pos = run(Expect.PREPARE, data, deprecate)
        assert parser.done and pos == len(data)
        assert (parser.outcome.stmt_id, parser.outcome.num_params, parser.outcome.num_columns) == (7, 2, 1)


def test_prepare_without_params_or_columns_is_one_packet():
    prep_ok = b"\x00" + (9).to_bytes(4, "little") + b"\x00\x00\x00\x00\x00\x00\x00"
    parser, pos = run(Expect.PREPARE, stream(prep_ok), False)
    assert parser.done and parser.outcome.stmt_id == 9


def test_cursor_execute_response_stops_after_metadata():
    cursor_eof = b"\xfe\x00\x00\x42\x00"  # CURSOR_EXISTS | AUTOCOMMIT
    data = stream(lenenc_int(1), COLDEF, cursor_eof)
    parser, pos = run(Expect.RESULT, data, False)
    assert parser.done and pos == len(data)


def test_field_list_ends_at_eof():
    data = stream(COLDEF, COLDEF, EOF_PKT)
    parser, pos = run(Expect.FIELDS, data, False)
    assert parser.done and pos == len(data)


def test_local_infile_request_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        run(Expect.RESULT, stream(b"\xfb/etc/passwd"), False)


def test_payload_split_over_16mib_packets_counts_as_one_row():
    parser = ResponseParser(Expect.ROWS, False)
    max_header = (0xFFFFFF).to_bytes(3, "little") + b"\x01"
    # Build the continuation by hand: a full packet that happens to start with 0xFE, then a tail.
    data = max_header + b"\x05" + b"\xfe" * (0xFFFFFF - 1) + (3).to_bytes(3, "little") + b"\x02" + b"end" + frame(EOF_PKT, 3)
    buf = bytearray(data)
    pos = parser.feed(buf, 0, len(buf))
    assert parser.done and pos == len(buf) and parser.outcome.rows == 1
