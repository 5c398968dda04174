"""The hash chain: `audit verify` catches one edited field, one deleted event, two swapped
events, and a forged hash; interleaved proxy instances are checked separately. (Each trail here
ends with the emitter's `audit.sealed` event: tests/audit/test_seal.py is about that one.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.chain import canonical, verify
from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo


def _trail(tmp_path: Path, count: int = 6, instance: str = "proxy-a:1") -> list[str]:
    path = tmp_path / f"{instance.replace(':', '_')}.jsonl"
    audit = AuditEmitter([FileSink(path, fsync=False)], instance=instance)
    session = SessionInfo(session_id="s1", client_addr="127.0.0.1:1", user="dev")
    for i in range(count):
        audit.emit(EventType.STATEMENT_DENIED, session, statement=f"SELECT * FROM hr_prod.salary WHERE id = {i}",
                   decision="deny", reason_code="missing_grant", tables=["hr_prod.salary"])
    audit.close()
    return path.read_text().splitlines()


def _check(lines: list[str]):
    return verify(json.loads(line) for line in lines)


def test_an_untouched_trail_verifies(tmp_path):
    report = _check(_trail(tmp_path))
    assert report.ok and report.events == 7 and report.chains == {"proxy-a:1": 7}  # 6 + the seal
    assert report.intact and not report.warnings


def test_lines_are_canonical_json_with_the_hash_last(tmp_path):
    line = _trail(tmp_path, 1)[0]
    event = json.loads(line)
    assert list(event)[-1] == "hash"
    assert line == canonical({k: v for k, v in event.items() if k != "hash"})[:-1] + f',"hash":"{event["hash"]}"}}'


@pytest.mark.parametrize("field, value", [("user", "someone-else"), ("decision", "allow"),
                                          ("statement", "SELECT 1"), ("time", "2020-01-01T00:00:00.000000+00:00")])
def test_one_edited_field_is_caught(tmp_path, field, value):
    lines = _trail(tmp_path)
    event = json.loads(lines[3])
    event[field] = value
    lines[3] = json.dumps(event)
    report = _check(lines)
    assert [(p.seq, p.kind) for p in report.problems] == [(4, "edited")]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(tmp_path):
    lines = _trail(tmp_path)
    event = json.loads(lines[2])
    event["user"] = "someone-else"
    from proxy.audit.chain import seal

    body = {k: v for k, v in event.items() if k not in ("hash", "seq", "prev_hash")}
    lines[2] = seal(body, event["seq"], event["prev_hash"])  # a forger who knows the scheme
    report = _check(lines)
    assert [(p.seq, p.kind) for p in report.problems] == [(4, "edited")]  # seq 4's prev_hash no longer matches


def test_one_deleted_event_is_caught(tmp_path):
    lines = _trail(tmp_path)
    del lines[2]
    report = _check(lines)
    assert [(p.seq, p.kind) for p in report.problems] == [(4, "missing")]


def test_two_swapped_events_are_caught(tmp_path):
    lines = _trail(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    report = _check(lines)
    assert {p.kind for p in report.problems} >= {"missing", "out_of_order"}


def test_interleaved_instances_are_chained_separately(tmp_path):
    a, b = _trail(tmp_path, 3, "proxy-a:1"), _trail(tmp_path, 3, "proxy-b:2")
    mixed = [a[0], b[0], b[1], a[1], a[2], b[2]]
    report = _check(mixed)
    assert report.ok and report.chains == {"proxy-a:1": 3, "proxy-b:2": 3}
    assert [s.proxy_instance for s in report.open] == ["proxy-a:1", "proxy-b:2"]  # their seals left out
    del mixed[1]  # proxy-b's first event
    assert [(p.proxy_instance, p.kind) for p in _check(mixed).problems] == [("proxy-b:2", "missing")]


def test_a_line_without_chain_fields_is_malformed(tmp_path):
    lines = _trail(tmp_path, 2)
    event = json.loads(lines[1])
    del event["hash"]
    lines[1] = json.dumps(event)
    # the malformed event's seq is not taken: the seal after it shows the gap
    assert [p.kind for p in _check(lines).problems] == ["malformed", "missing"]


# canonical() is orjson for speed; what it writes must stay what the documented form
# (json.dumps with sorted keys, compact separators, non-ASCII kept) writes, so anyone can
# recompute a hash with the standard library.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _JSON_VALUES, max_size=8))
def test_canonical_is_the_documented_json_form(event):
    documented = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        documented.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate: escaped to ASCII, and stable on re-reading
        assert canonical(event) == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert canonical(json.loads(canonical(event))) == canonical(event)
        return
    assert canonical(event) == documented


def test_canonical_escapes_control_characters_as_json_does():
    text = "".join(chr(c) for c in range(0, 0x80)) + "\u2028\u2029\ufeff\U0001f600 é"
    event = {"statement": text, "b": [text], "a": 1.5, "z": None}
    assert canonical(event) == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_values_json_lacks_are_written_as_text_and_verify():
    import datetime as dt

    event = {"when": dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc), "n": 2**70}
    text = canonical(event)
    assert json.loads(text)["when"] == "2026-11-21 12:00:00+00:00"  # str(), as json's default=str
    assert canonical(json.loads(text)) == text


@pytest.mark.parametrize("value", [1e-05, -1.5e-05, 1e-07, 1.234e-09, 5e-324, 0.0001, 1e16, -1.5e17, 0.0, 12.5])
def test_floats_orjson_writes_differently_take_the_documented_form(value):
    event = {"params": [value, "x"], "duration_ms": value}
    assert canonical(event) == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
