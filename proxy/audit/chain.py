"""Tamper evidence: every event carries `seq`, `prev_hash` and `hash`, chaining it to the
previous event of the same proxy process (`proxy_instance`).

`hash` is the SHA-256 of the event's canonical JSON without `hash` (keys sorted, no spaces,
UTF-8, as `json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes
it), so anyone can recompute it from a JSON line or a stored body. `verify` walks events of
one or more proxy instances and reports every break: an edited event (its hash no longer
matches), a deleted one (a gap in `seq`, a `prev_hash` that points elsewhere), reordered ones
(the same, from both sides). What it cannot see: events cut from the end of a chain with
nothing after them — compare the last `seq` with the proxy's (it logs its last one at stop).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = ""  # prev_hash of an instance's first event
# orjson writes what json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) writes
# for JSON's own types, ~10x faster (tests/audit/test_chain.py compares them). Types JSON lacks
# go through str() as json's default=str did; datetimes and dataclasses too (orjson would
# format them itself).
_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)


def canonical_bytes(event: Mapping[str, Any], *, sort_keys: bool = True) -> bytes:
    """The bytes that are hashed: sorted keys, compact separators, non-ASCII kept (UTF-8).
    Text orjson refuses (an unpaired surrogate, an integer over 64 bits) is written by json,
    escaped to ASCII; verifying it takes the same path, so it hashes the same. `sort_keys=False`:
    the same text in the event's own key order (stored bodies)."""
    try:
        data = orjson.dumps(event, default=str, option=_OPTIONS if sort_keys else _OPTIONS ^ orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        data = None
    if data is not None and not ((b"0.0000" in data or b"e-" in data) and _ORJSON_ONLY_FLOAT.search(data)):
        return data
    text = json.dumps(event, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=True, default=str).encode()


# The only floats orjson writes differently from json: below 1e-4 (0.00001 for 1e-05, 1e-7
# for 1e-07). A match inside a string only sends the event down json's (slower) path.
_ORJSON_ONLY_FLOAT = re.compile(rb"0\.0000|\de-\d(?!\d)")


def canonical(event: Mapping[str, Any]) -> str:
    return canonical_bytes(event).decode("utf-8")


def event_hash(canonical_text: str | bytes) -> str:
    data = canonical_text if isinstance(canonical_text, bytes) else canonical_text.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def seal(event: dict[str, Any], seq: int, prev_hash: str) -> str:
    """Add seq, prev_hash and hash to `event`; return its JSON line (canonical order, with the
    hash as the last key), written as is by the file and stream sinks."""
    event["seq"] = seq
    event["prev_hash"] = prev_hash
    data = canonical_bytes(event)
    digest = hashlib.sha256(data).hexdigest()
    event["hash"] = digest
    return f'{data[:-1].decode("utf-8")},"hash":"{digest}"}}'


@dataclass
class Problem:
    proxy_instance: str
    seq: int | None
    event_id: str | None
    kind: str  # edited | missing | out_of_order | duplicate | malformed
    detail: str


@dataclass
class Report:
    events: int = 0
    chains: dict[str, int] = field(default_factory=dict)  # proxy_instance -> last seq seen
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(events: Iterable[Mapping[str, Any]]) -> Report:
    """Check events in the order they were written (a file, or the store by seq). Several
    proxy instances may be interleaved; each chain is checked on its own."""
    report = Report()
    last: dict[str, tuple[int, str]] = {}  # instance -> (seq, hash)
    for event in events:
        report.events += 1
        instance = str(event.get("proxy_instance", "?"))
        seq, claimed, prev = event.get("seq"), event.get("hash"), event.get("prev_hash")
        event_id = event.get("event_id")
        if not isinstance(seq, int) or not isinstance(claimed, str) or not isinstance(prev, str):
            report.problems.append(Problem(instance, None, event_id, "malformed", "no seq/hash/prev_hash"))
            continue
        body = {k: v for k, v in event.items() if k != "hash"}
        if event_hash(canonical_bytes(body)) != claimed:
            report.problems.append(Problem(instance, seq, event_id, "edited", "the hash does not match the content"))
        before = last.get(instance)
        if before is None:
            if seq != 1:
                report.problems.append(Problem(instance, seq, event_id, "missing",
                                               f"the chain starts at seq {seq}: seq 1..{seq - 1} missing "
                                               "(a rotated file? verify its older files with it)"))
            elif prev != GENESIS:
                report.problems.append(Problem(instance, seq, event_id, "edited", "seq 1 with a prev_hash"))
        else:
            before_seq, before_hash = before
            if seq == before_seq:
                report.problems.append(Problem(instance, seq, event_id, "duplicate", f"seq {seq} appears twice"))
            elif seq < before_seq:
                report.problems.append(Problem(instance, seq, event_id, "out_of_order",
                                               f"seq {seq} after seq {before_seq}"))
            elif seq > before_seq + 1:
                report.problems.append(Problem(instance, seq, event_id, "missing",
                                               f"seq {before_seq + 1}..{seq - 1} missing"))
            elif prev != before_hash:
                report.problems.append(Problem(instance, seq, event_id, "edited",
                                               f"prev_hash does not match the hash of seq {before_seq}"))
        last[instance] = (seq, claimed)
        report.chains[instance] = max(seq, report.chains.get(instance, 0))
    return report
