"""What an audit search asks for, whoever answers it: the state store (`Store.search_audit`) or
the file sink's trail (file_trail.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# search_audit / audit_chain return at most this many events per call.
AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 10_000
AUDIT_DECISIONS = ("allow", "deny")


@dataclass(frozen=True)
class AuditQuery:
    """What `search_audit` looks for; every filter given must match (None: any).

    `since` <= time < `until` (aware datetimes). `table` is "db.table" (also "db.*"): events
    that name it, in `tables` (statements; a request's table names are qualified with its `db`)
    or as `object` (grants). `type` is one event type ("statement.denied"), or a prefix when it
    ends with "." or "*" ("statement." and "statement.*" match every statement event).
    Results are newest first (time, then insertion order), or oldest first."""

    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    table: str | None = None
    decision: str | None = None  # "allow" or "deny"
    type: str | None = None
    instance: str | None = None  # the upstream instance (its configured name)
    session_id: str | None = None
    proxy_instance: str | None = None  # the proxy process (host:pid) that wrote the event
    limit: int = AUDIT_DEFAULT_LIMIT
    oldest_first: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= AUDIT_MAX_LIMIT:
            raise ValueError(f"limit must be 1..{AUDIT_MAX_LIMIT}, got {self.limit!r}")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and (moment.tzinfo is None or moment.utcoffset() is None):
                raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
        if self.decision is not None and self.decision not in AUDIT_DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(AUDIT_DECISIONS)}, got {self.decision!r}")
        if self.type is not None and self.type in ("", "*", "."):
            raise ValueError("type must name an event type or a prefix such as statement.")

    def type_filter(self) -> tuple[str, bool] | None:
        """(text, is_prefix) for `type`, None when any type matches."""
        if self.type is None:
            return None
        if self.type.endswith("*"):
            return self.type[:-1], True
        return self.type, self.type.endswith(".")


def event_tables(event: Mapping[str, Any]) -> list[str]:
    """The tables an event names, as "db.table", in order and once each: its `tables`
    (statements name them qualified; a request names its `db`'s tables unqualified) and its
    `object` (grant events). What `AuditQuery.table` is matched against, by every answerer."""
    listed = event.get("tables")
    names: list[Any] = list(listed) if isinstance(listed, (list, tuple)) else []
    if isinstance(event.get("object"), str):
        names.append(event["object"])
    db = event.get("db")
    found: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            continue
        if "." not in name:
            if not isinstance(db, str) or not db:
                continue
            name = f"{db}.{name}"
        found[name] = None
    return list(found)
