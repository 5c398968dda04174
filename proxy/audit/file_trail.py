"""Searching the audit trail where the `file` sink wrote it, for proxies without a `store` sink
(the demo, and every set-up that keeps the trail in files): GET /v1/audit and /v1/audit/chain,
and so `jitproxy audit search` and `audit chain`, read the JSON lines themselves.

Why read the file rather than turn the store sink on by default: the file already holds every
event exactly as sealed, so a search answers from the record itself, not a second copy that
could differ; and a default store sink would put a second required sink (an SQLite transaction
per batch) in front of every fail_closed statement, and grow the state store without bound,
for people who never search. The store sink remains the choice for several hosts (one place to
search) and for large trails (indexed); this reader scans.

What it reads: the file and its rotated predecessors (`audit.jsonl.N` ... `audit.jsonl.1`,
oldest first: `FileSink`'s numbered scheme). Several processes of one host (`serve --workers`)
append to the same file, so one search sees them all; another host's file is not seen (use the
store sink for that). A line that does not parse (cut short by a crash, or being written right
now) is skipped, as `audit verify` reports it.

The filters and the order are the store's (`proxy.store.audit.search_sql`): the same
`AuditQuery`, the same columns (the event's `user`, `instance`, `decision`, ...; its tables from
`tables`, qualified with its `db` when unqualified, and `object`), `since` <= time < `until`,
newest first by time then by position, `limit` at most. The cost is one pass over the files per
search, in a worker thread (0.8 s for 200,000 events, 130 MB, on a 2-core machine; about half
when the search names a person or a table: other lines are skipped unparsed); memory holds
`limit` events.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.audit.query import AUDIT_MAX_LIMIT, AuditQuery, event_tables

__all__ = ["FileTrail", "TrailUnreadable", "matches", "tables_of", "trail_of_sinks"]

_PLAIN = re.compile(r"[A-Za-z0-9_.:@-]+")
_COLUMNS = (("user", "user"), ("decision", "decision"), ("instance", "instance"),
            ("session_id", "session_id"), ("proxy_instance", "proxy_instance"))


class TrailUnreadable(Exception):
    """An audit file exists but cannot be read (permissions, I/O error): the API answers 503."""


@dataclass(frozen=True)
class FileTrail:
    """`search_audit` and `audit_chain` (the `Store` methods GET /v1/audit uses) over the JSON
    lines of a `file` sink at `path` with `backups` rotated files."""

    path: Path
    backups: int = 0

    def search_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        found = ((moment, n, event) for n, event in self._events(_needles(query))
                 if (moment := _time(event)) is not None and matches(event, query, moment))
        pick = heapq.nsmallest if query.oldest_first else heapq.nlargest
        return [event for _, _, event in pick(query.limit, found, key=lambda hit: (hit[0], hit[1]))]

    def audit_chain(self, proxy_instance: str, after_seq: int = 0, limit: int = AUDIT_MAX_LIMIT) -> list[dict[str, Any]]:
        if not isinstance(proxy_instance, str) or not proxy_instance:
            raise ValueError("audit_chain needs a proxy_instance")
        found = ((seq, n, event) for n, event in self._events()
                 if event.get("proxy_instance") == proxy_instance
                 and isinstance(seq := event.get("seq"), int) and not isinstance(seq, bool) and seq > after_seq)
        return [event for _, _, event in heapq.nsmallest(limit, found, key=lambda hit: (hit[0], hit[1]))]

    def close(self) -> None:
        """Nothing to close (files are opened per search); the API's owner calls it at stop."""

    def files(self) -> list[Path]:
        """The trail's files, oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.backups, 0, -1)]
        return [*rotated, self.path]

    def _events(self, needles: tuple[bytes, ...] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, event) for every event of every file, oldest file first; lines that lack
        one of `needles` are not parsed (they cannot match)."""
        n = 0
        for handle in self._open_all():
            with handle:
                for line in handle:
                    if needles and not all(needle in line for needle in needles):
                        n += 1  # positions are only compared, so a skipped line may take one
                        continue
                    event = _parse(line)
                    if event is not None:
                        n += 1
                        yield n, event

    def _open_all(self) -> list[IO[bytes]]:
        """Every file opened before any is read, newest first, then returned oldest first. A
        rotation during the search renames files under us: the handles keep what they opened,
        and a file reached twice by two names (the same inode) is read once."""
        handles: list[IO[bytes]] = []
        seen: set[tuple[int, int]] = set()
        try:
            for path in reversed(self.files()):
                handle = _open(path)
                if handle is None:
                    continue
                stat = os.fstat(handle.fileno())
                if (stat.st_dev, stat.st_ino) in seen:
                    handle.close()
                    continue
                seen.add((stat.st_dev, stat.st_ino))
                handles.append(handle)
        except BaseException:
            for handle in handles:
                handle.close()
            raise
        return handles[::-1]


def trail_of_sinks(sinks: Any) -> FileTrail | None:
    """The trail to search for these `audit.sinks` when none is a `store` sink: the first file
    sink's (every file sink holds the same events); None without one (stdout goes to a log
    system, which is where to search it)."""
    for sink in sinks:
        if sink.type == "file" and sink.path is not None:
            # Rotated files are read whoever rotated them (the sink's max_bytes, or logrotate's
            # numbered scheme with `rotate N` = backups); compressed ones (.gz) are not.
            return FileTrail(Path(sink.path), sink.backups)
    return None


def _open(path: Path) -> IO[bytes] | None:
    """The file opened for reading; None when it does not exist (not rotated that far yet)."""
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TrailUnreadable(f"the audit file {path.name} cannot be read: {e.strerror}") from None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _needles(query: AuditQuery) -> tuple[bytes, ...]:
    """Bytes a line must contain to match `query`: the plain values it asks for (names of
    letters, digits and `_.:@-`, which JSON writes as they are): a person, a decision... as a
    whole JSON string, a table's names as parts of one. Skipping other lines unparsed makes a
    selective search several times faster. Values that JSON would escape are left to the full
    check."""
    fields = [query.user, query.decision, query.instance, query.session_id, query.proxy_instance]
    needles = [f'"{v}"' for v in fields if v is not None and _PLAIN.fullmatch(v)]  # a whole string
    if query.table is not None:  # inside "db.table", or apart (a request's db and tables)
        needles.extend(part for part in query.table.split(".") if _PLAIN.fullmatch(part))
    return tuple(n.encode("ascii") for n in needles)


def _time(event: Mapping[str, Any]) -> datetime | None:
    """The event's time (aware, UTC); None for an event without one (the store refuses those)."""
    value = event.get("time")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    return moment.astimezone(UTC)


def matches(event: Mapping[str, Any], query: AuditQuery, moment: datetime) -> bool:
    """Whether `event` (at `moment`) passes every filter of `query`, as the store's search reads
    its columns."""
    if query.since is not None and moment < query.since:
        return False
    if query.until is not None and moment >= query.until:
        return False
    for field, attribute in _COLUMNS:
        wanted = getattr(query, attribute)
        if wanted is not None and _text(event.get(field)) != wanted:
            return False
    type_filter = query.type_filter()
    if type_filter is not None:
        text, prefix = type_filter
        kind = _text(event.get("type")) or ""
        if not (kind.startswith(text) if prefix else kind == text):
            return False
    return query.table is None or query.table in tables_of(event)


def _text(value: Any) -> str | None:
    """A field as the store's columns hold it: None stays None, other non-text is its str()."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def tables_of(event: Mapping[str, Any]) -> set[str]:
    """The tables an event names, as "db.table" (proxy.audit.query.event_tables)."""
    return set(event_tables(event))
