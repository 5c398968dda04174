"""Tamper evidence: every event carries `seq`, `prev_hash` and `hash`, chaining it to the
previous event of the same proxy process (`proxy_instance`).

`hash` is the SHA-256 of the event's canonical JSON without `hash` (keys sorted, no spaces,
UTF-8, as `json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes
it), so anyone can recompute it from a JSON line or a stored body. `verify` walks events of
one or more proxy instances and reports every break: an edited event (its hash no longer
matches), a deleted one (a gap in `seq`, a `prev_hash` that points elsewhere), reordered ones
(the same, from both sides), an event after a seal.

Events cut from the end of a chain leave no break: the seal shows them. An emitter writes one
chain *segment* (seq 1, 2, ...) and ends it, when it closes, with an `audit.sealed` event; a
chain whose last segment has no seal was cut, or its proxy crashed (or still runs: a live
file). `audit.checkpoint` events, written every so often, say how much of an unsealed segment
is covered. A proxy restarted under the same `proxy_instance` (a container's pid 1) starts a
new segment at seq 1 in the same chain: after a sealed segment that is normal; after an
unsealed one it is a crash, reported as a warning (`crashed`), not as tampering.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = ""  # prev_hash of a segment's first event (seq 1)
CHECKPOINT = "audit.checkpoint"
SEALED = "audit.sealed"
_TRAIL = (CHECKPOINT, SEALED)
BREAKS = ("edited", "missing", "out_of_order", "duplicate", "malformed", "after_seal")
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
    kind: str  # a break: edited | missing | out_of_order | duplicate | malformed | after_seal; a warning: crashed
    detail: str


@dataclass
class Segment:
    """What one emitter wrote of a chain: seq `first_seq`..`last_seq`, ended by a seal or not."""

    proxy_instance: str
    first_seq: int
    last_seq: int
    emitter: str | None  # the event_id prefix every event of one emitter shares
    first_hash: str
    events: int = 0  # events in it, not counting checkpoints and the seal
    sealed_seq: int | None = None  # its audit.sealed event's seq
    seal_reason: str | None = None
    checkpoint_seq: int | None = None  # its last audit.checkpoint's seq
    after_checkpoint: int = 0  # events after that checkpoint (after the start without one)
    last_time: str | None = None
    last_event_id: str | None = None
    broken: bool = False  # a problem was found in it

    @property
    def sealed(self) -> bool:
        return self.sealed_seq is not None

    def span(self) -> str:
        return f"seq {self.first_seq}..{self.last_seq}"

    def coverage(self) -> str:
        """An unsealed segment: how much its checkpoints cover."""
        if self.checkpoint_seq is None:
            return f"no checkpoint: {self.events} event(s), none covered"
        return f"last checkpoint at seq {self.checkpoint_seq}, {self.after_checkpoint} event(s) after it"

    def status(self) -> str:
        if self.sealed:
            return "intact: sealed" + (f" ({self.seal_reason})" if self.seal_reason not in (None, "close") else "")
        return f"ends without a seal: truncated or crashed ({self.coverage()})"


@dataclass
class Report:
    events: int = 0
    chains: dict[str, int] = field(default_factory=dict)  # proxy_instance -> last seq seen
    problems: list[Problem] = field(default_factory=list)  # breaks: the trail was altered
    warnings: list[Problem] = field(default_factory=list)  # crashed segments: events may be missing
    segments: dict[str, list[Segment]] = field(default_factory=dict)  # proxy_instance -> its segments, in order

    @property
    def ok(self) -> bool:
        """No break (edited, missing, reordered, duplicated, malformed, after a seal). Says
        nothing of the end of each chain: see `open` and `intact`."""
        return not self.problems

    @property
    def open(self) -> list[Segment]:
        """The last segment of each chain, where it has no seal: cut, crashed, or still written."""
        return [segments[-1] for _, segments in sorted(self.segments.items()) if not segments[-1].sealed]

    @property
    def intact(self) -> bool:
        """No break, and every chain ends with a seal (crashed segments before are warnings)."""
        return self.ok and not self.open

    def chain_status(self, instance: str) -> str:
        """One line on one chain: its segments and how it ends (or where it breaks)."""
        segments = self.segments.get(instance, [])
        spans = ", then ".join(s.span() for s in segments) or "no event"
        if len(segments) > 1:
            spans += f" ({len(segments)} segments)"
        broken = [p for p in self.problems if p.proxy_instance == instance]
        if broken:
            first = broken[0]
            where = f"seq {first.seq}" if first.seq is not None else f"event {first.event_id or '?'}"
            return f"{instance}: {spans}: broken at {where} ({len(broken)} problem(s))"
        if not segments:
            return f"{instance}: no event"
        return f"{instance}: {spans}: {segments[-1].status()}"


def verify(events: Iterable[Mapping[str, Any]]) -> Report:
    """Check events in the order they were written (files in order, or the store by seq). Several
    proxy instances may be interleaved; each chain is checked on its own, segment by segment."""
    report = Report()
    last: dict[str, tuple[int, str]] = {}  # instance -> (seq, hash)
    for event in events:
        report.events += 1
        found = len(report.problems)
        instance = str(event.get("proxy_instance", "?"))
        seq, claimed, prev = event.get("seq"), event.get("hash"), event.get("prev_hash")
        event_id = event.get("event_id")
        if not isinstance(seq, int) or not isinstance(claimed, str) or not isinstance(prev, str):
            report.problems.append(Problem(instance, None, event_id, "malformed", "no seq/hash/prev_hash"))
            continue
        body = {k: v for k, v in event.items() if k != "hash"}
        if event_hash(canonical_bytes(body)) != claimed:
            report.problems.append(Problem(instance, seq, event_id, "edited", "the hash does not match the content"))
        segments = report.segments.setdefault(instance, [])
        segment = segments[-1] if segments else None
        emitter = event_id[:16] if isinstance(event_id, str) and len(event_id) == 32 else None
        if segment is not None and seq == 1 and prev == GENESIS and _another_emitter(segment, emitter, claimed):
            # A new segment: the proxy was restarted under the same proxy_instance.
            if not segment.sealed:
                report.warnings.append(Problem(
                    instance, segment.last_seq, segment.last_event_id, "crashed",
                    f"the segment {segment.span()} ends without a seal and a new segment follows: its proxy "
                    f"crashed or was killed ({segment.coverage()}; events after that may be missing)"))
            segment = None
        before = last.get(instance) if segment is not None else None
        if segment is None:
            if seq != 1:
                report.problems.append(Problem(instance, seq, event_id, "missing",
                                               f"the chain starts at seq {seq}: seq 1..{seq - 1} missing "
                                               "(a rotated file? verify its older files with it)"))
            elif prev != GENESIS:
                report.problems.append(Problem(instance, seq, event_id, "edited", "seq 1 with a prev_hash"))
            segment = Segment(instance, seq, seq, emitter, claimed)
            segments.append(segment)
        else:
            assert before is not None
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
            if segment.sealed and seq > before_seq:
                report.problems.append(Problem(instance, seq, event_id, "after_seal",
                                               f"an event after the seal at seq {segment.sealed_seq}"))
        segment.broken |= len(report.problems) > found
        _count(report, segment, event, seq, event_id)
        last[instance] = (seq, claimed)
        report.chains[instance] = max(seq, report.chains.get(instance, 0))
    return report


def _another_emitter(segment: Segment, emitter: str | None, claimed: str) -> bool:
    """Seq 1 again: another emitter's (a restart), not the segment's own first event repeated."""
    if emitter is not None and segment.emitter is not None:
        return emitter != segment.emitter
    return claimed != segment.first_hash


def _count(report: Report, segment: Segment, event: Mapping[str, Any], seq: int, event_id: Any) -> None:
    segment.last_seq = max(segment.last_seq, seq)
    segment.last_time = event.get("time") if isinstance(event.get("time"), str) else segment.last_time
    segment.last_event_id = event_id if isinstance(event_id, str) else None
    kind = event.get("type")
    if kind not in _TRAIL:
        segment.events += 1
        segment.after_checkpoint += 1
        return
    counted = event.get("events")
    if not segment.broken and segment.first_seq == 1 and isinstance(counted, int) and counted != segment.events:
        # What the emitter counted differs from what is here: events removed and the chain redone.
        report.problems.append(Problem(segment.proxy_instance, seq, event_id, "edited",
                                       f"the {kind} counts {counted} event(s) before it, the segment has "
                                       f"{segment.events}"))
    if kind == CHECKPOINT:
        segment.checkpoint_seq = seq
        segment.after_checkpoint = 0
    elif segment.sealed_seq is None:
        segment.sealed_seq = seq
        reason = event.get("reason")
        segment.seal_reason = reason if isinstance(reason, str) else None
