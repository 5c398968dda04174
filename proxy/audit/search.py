"""Audit search parameters, as people type them (CLI flags, API query parameters), checked and
turned into a `proxy.audit.query.AuditQuery`. Pure: the caller passes `now`.

    since / until   what proxy.timespec.parse_past reads, like every other time a command
                    takes: 1h, 30m, 2d, 1w, 1h30m, 90s (that long before now), "now", a day
                    (2026-11-21 = its midnight), a clock time (14:50: the last one), or an
                    ISO-8601 time (2026-11-21T16:00:00Z); a time or day without a zone is read
                    in `naive_tz` (UTC unless the caller says otherwise)
    table           db.table or db.* (backquotes are dropped: `hr_prod`.`salary` works)
    decision        allow | deny
    type            an event type (statement.denied), or a prefix: statement. / statement.*;
                    a bare category (statement) means all of it (statement.)
    limit           1..10000 (default 100)

Every refusal is a `SearchError` (a ValueError) whose message says what is wrong and what
would be right; the API answers it with 400, the CLI prints it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any

from proxy.audit.query import AUDIT_DECISIONS, AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, AuditQuery
from proxy.timespec import TimeSpecError, parse_past

__all__ = ["SearchError", "build_query", "chain_params", "parse_since", "parse_time", "parse_until"]

MAX_NAME_CHARS = 256
_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*(?:\.|\.\*|\*)?")
_IDENTIFIER_MAX = 64  # MySQL's limit for database and table names


class SearchError(ValueError):
    pass


def parse_time(text: str, now: datetime, *, what: str = "since", naive_tz: tzinfo = UTC) -> datetime:
    """`text` as an aware datetime (proxy.timespec.parse_past); SearchError if it is none."""
    if not _given(text):
        raise SearchError(f"{what}: give a time, e.g. 1h, 30m, 2d or 2026-11-21T16:00:00Z")
    try:
        return parse_past(text, now, naive_tz, what).at
    except TimeSpecError as e:
        raise SearchError(str(e)) from None


def parse_since(text: str, now: datetime, *, naive_tz: tzinfo = UTC) -> datetime:
    return parse_time(text, now, what="since", naive_tz=naive_tz)


def parse_until(text: str, now: datetime, *, naive_tz: tzinfo = UTC) -> datetime:
    return parse_time(text, now, what="until", naive_tz=naive_tz)


def build_query(
    *,
    now: datetime,
    user: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    table: str | None = None,
    decision: str | None = None,
    type: str | None = None,  # noqa: A002 - the parameter's public name
    instance: str | None = None,
    session_id: str | None = None,
    proxy_instance: str | None = None,
    limit: int | str | None = None,
    oldest_first: bool = False,
    naive_tz: tzinfo = UTC,
) -> AuditQuery:
    """The AuditQuery for these parameters (None or "" = not given); SearchError if one is wrong."""
    start = _when(since, now, "since", naive_tz)
    end = _when(until, now, "until", naive_tz)
    if start is not None and end is not None and start >= end:
        raise SearchError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    return AuditQuery(
        user=_name(user, "user"),
        since=start,
        until=end,
        table=_table(table),
        decision=_decision(decision),
        type=_type(type),
        instance=_name(instance, "instance"),
        session_id=_name(session_id, "session_id"),
        proxy_instance=_name(proxy_instance, "proxy_instance"),
        limit=_limit(limit),
        oldest_first=bool(oldest_first),
    )


def chain_params(proxy_instance: str | None, after_seq: int | str | None = None,
                 limit: int | str | None = None) -> tuple[str, int, int]:
    """(proxy_instance, after_seq, limit) for `Store.audit_chain`; SearchError if one is wrong."""
    name = _name(proxy_instance, "proxy_instance")
    if name is None:
        raise SearchError("proxy_instance is required: the proxy process (host:pid) whose chain to read")
    after = _integer(after_seq, "after_seq", 0, 2**63 - 1, default=0)
    return name, after, _integer(limit, "limit", 1, AUDIT_MAX_LIMIT, default=AUDIT_MAX_LIMIT)


# -- one parameter each ---------------------------------------------------------------------------


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _when(value: str | datetime | None, now: datetime, what: str, naive_tz: tzinfo) -> datetime | None:
    if not _given(value):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=naive_tz)
    return parse_time(str(value), now, what=what, naive_tz=naive_tz)


def _name(value: str | None, what: str) -> str | None:
    if not _given(value):
        return None
    text = str(value).strip()
    if len(text) > MAX_NAME_CHARS:
        raise SearchError(f"{what}: at most {MAX_NAME_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise SearchError(f"{what}: control characters are not allowed")
    return text


def _table(value: str | None) -> str | None:
    if not _given(value):
        return None
    text = str(value).strip().replace("`", "")
    db, dot, table = text.partition(".")
    if not dot or not db or not table or "." in table or any(c.isspace() for c in text):
        raise SearchError(f"table: {value!r} is not db.table (e.g. hr_prod.salary, or hr_prod.* for the database)")
    if len(db) > _IDENTIFIER_MAX or len(table) > _IDENTIFIER_MAX:
        raise SearchError(f"table: database and table names have at most {_IDENTIFIER_MAX} characters")
    return f"{db}.{table}"


def _decision(value: str | None) -> str | None:
    if not _given(value):
        return None
    text = str(value).strip().lower()
    if text not in AUDIT_DECISIONS:
        raise SearchError(f"decision: {value!r} is not one of {', '.join(AUDIT_DECISIONS)}")
    return text


def _type(value: str | None) -> str | None:
    if not _given(value):
        return None
    text = str(value).strip().lower()
    if not _TYPE.fullmatch(text):
        raise SearchError(f"type: {value!r} is not an event type (statement.denied) or a prefix "
                          "(statement. or statement.*)")
    if text.endswith("*"):
        text = text[:-1]
    if "." not in text:  # a bare category: all of it
        text += "."
    return text


def _limit(value: int | str | None) -> int:
    return _integer(value, "limit", 1, AUDIT_MAX_LIMIT, default=AUDIT_DEFAULT_LIMIT)


def _integer(value: int | str | None, what: str, low: int, high: int, *, default: int) -> int:
    if not _given(value):
        return default
    if isinstance(value, bool):
        raise SearchError(f"{what}: a whole number, not {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise SearchError(f"{what}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise SearchError(f"{what}: {number} is not in {low}..{high}")
    return number
