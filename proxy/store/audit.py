"""The audit trail's rows and queries, for both dialects: turning sealed audit events into rows.

An event is stored twice over: its whole body as JSON text, exactly as given (what `search_audit`
and `audit_chain` return and what `audit verify` recomputes hashes from), and a few columns
copied out of it for the searches (person, instance, type, ...), plus one row per table it names
in `audit_event_tables`.

The copied columns are indexed, so they are made safe to index whatever an event holds: text
without NUL characters (PostgreSQL refuses them) or unpaired surrogates, at most
`MAX_COLUMN_CHARS` characters (a hostile statement's 10 kB "table name" must not make the batch
fail forever). Only the columns are cleaned; the body keeps every byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proxy.audit.chain import canonical_bytes
from proxy.audit.query import AUDIT_MAX_LIMIT, AuditQuery, event_tables
from proxy.store.common import utc, where

MAX_COLUMN_CHARS = 256


@dataclass(frozen=True)
class AuditRow:
    event_id: str
    time: datetime  # aware, UTC
    type: str
    person: str | None  # the event's "user"
    instance: str | None
    environment: str | None
    decision: str | None
    session_id: str | None
    proxy_instance: str | None
    seq: int | None
    tables: tuple[str, ...]  # "db.table" (or "db.*")
    body: str  # the event's JSON


def audit_rows(events: Iterable[Mapping[str, Any]]) -> list[AuditRow]:
    """The rows for `events`, in order; ValueError (naming the event) for one that lacks an
    `event_id`, a `type` or an ISO-8601 `time` with a zone."""
    return [_row(event, n) for n, event in enumerate(events)]


def _row(event: Mapping[str, Any], n: int) -> AuditRow:
    if not isinstance(event, Mapping):
        raise ValueError(f"audit event #{n} is a {type(event).__name__}, not a mapping")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_COLUMN_CHARS:
        raise ValueError(f"audit event #{n} has no usable event_id: {event_id!r:.80}")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"audit event {event_id} has no type")
    return AuditRow(
        event_id=_column(event_id) or event_id,
        time=_event_time(event.get("time"), event_id),
        type=_column(event_type) or event_type,
        person=_column(event.get("user")),
        instance=_column(event.get("instance")),
        environment=_column(event.get("environment")),
        decision=_column(event.get("decision")),
        session_id=_column(event.get("session_id")),
        proxy_instance=_column(event.get("proxy_instance")),
        seq=_int(event.get("seq")),
        tables=_tables(event),
        body=_body(event),
    )


def _event_time(value: Any, event_id: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"audit event {event_id} has no time")
    try:
        moment = datetime.fromisoformat(value)
        return utc(moment)
    except ValueError:
        raise ValueError(f"audit event {event_id}: time {value!r:.60} is not ISO-8601 with a zone") from None


def _int(value: Any) -> int | None:
    # bool is an int to Python, not a sequence number; bigint bounds for PostgreSQL.
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def _column(value: Any) -> str | None:
    """`value` as a searchable column: None stays None, other non-text is its str()."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return _clean(text)[:MAX_COLUMN_CHARS]


def _clean(text: str) -> str:
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # unpaired surrogates
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _tables(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The tables the event names (proxy.audit.query.event_tables), cleaned for the index; a
    longer name is no real table (it stays in the body)."""
    cleaned = (_clean(name) for name in event_tables(event))
    return tuple(dict.fromkeys(name for name in cleaned if len(name) <= MAX_COLUMN_CHARS))


def _body(event: Mapping[str, Any]) -> str:
    # The hash chain's serialization (in the event's key order), so the body hashes the same.
    return canonical_bytes(event, sort_keys=False).decode("utf-8")


def table_pairs(rows: Sequence[AuditRow]) -> list[tuple[str, str]]:
    """(event_id, table) for every table of every row."""
    return [(row.event_id, table) for row in rows for table in row.tables]


def parse_body(text: str) -> dict[str, Any]:
    body = json.loads(text)
    if not isinstance(body, dict):  # only append_audit writes the table
        raise ValueError("a stored audit body is not a JSON object")
    return body


# -- queries (both dialects: `?` placeholders, `when` makes a time parameter) -------------------

INSERT_COLUMNS = ("event_id", "time", "type", "person", "instance", "environment", "decision", "session_id",
                  "proxy_instance", "seq", "body")


def row_values(row: AuditRow, when: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """`row`'s values in INSERT_COLUMNS order."""
    return (row.event_id, when(row.time), row.type, row.person, row.instance, row.environment, row.decision,
            row.session_id, row.proxy_instance, row.seq, row.body)


def search_sql(query: AuditQuery, when: Callable[[datetime], Any]) -> tuple[str, list[Any]]:
    """The SELECT of bodies for `query`, and its parameters. With a table, the walk starts from
    audit_event_tables (its key is in time order), else from audit_events' time index."""
    if not isinstance(query, AuditQuery):
        raise TypeError(f"search_audit takes an AuditQuery, not {type(query).__name__}")
    conditions: list[str] = []
    args: list[Any] = []
    source = "audit_events e"
    at, order_id = "e.time", "e.id"
    if query.table is not None:
        source += " JOIN audit_event_tables t ON t.event_pk = e.id"
        at, order_id = "t.time", "t.event_pk"
        conditions.append("t.table_name = ?")
        args.append(query.table)
    if query.since is not None:
        conditions.append(f"{at} >= ?")
        args.append(when(query.since))
    if query.until is not None:
        conditions.append(f"{at} < ?")
        args.append(when(query.until))
    for column, value in (("person", query.user), ("decision", query.decision), ("instance", query.instance),
                          ("session_id", query.session_id), ("proxy_instance", query.proxy_instance)):
        if value is not None:
            conditions.append(f"e.{column} = ?")
            args.append(value)
    type_filter = query.type_filter()
    if type_filter is not None:
        text, prefix = type_filter
        if prefix:
            conditions.append("substr(e.type, 1, ?) = ?")
            args.extend((len(text), text))
        else:
            conditions.append("e.type = ?")
            args.append(text)
    direction = "" if query.oldest_first else " DESC"
    sql = (f"SELECT e.body FROM {source} {where(conditions)} "
           f"ORDER BY {at}{direction}, {order_id}{direction} LIMIT ?")
    return sql, [*args, query.limit]


def chain_sql(proxy_instance: str, after_seq: int, limit: int) -> tuple[str, list[Any]]:
    if not isinstance(proxy_instance, str) or not proxy_instance:
        raise ValueError("audit_chain needs a proxy_instance")
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise ValueError(f"after_seq must be an integer >= 0, got {after_seq!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= AUDIT_MAX_LIMIT:
        raise ValueError(f"limit must be 1..{AUDIT_MAX_LIMIT}, got {limit!r}")
    sql = "SELECT body FROM audit_events WHERE proxy_instance = ? AND seq > ? ORDER BY seq, id LIMIT ?"
    return sql, [proxy_instance, after_seq, limit]
